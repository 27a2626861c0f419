"""Fault states, end reasons and the record the engine keeps for each fault."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any


class State(StrEnum):
    PENDING = "pending"
    ACTIVE = "active"
    REVERTING = "reverting"
    REVERTED = "reverted"
    FAILED = "failed"
    LOST = "lost"
    SUPERSEDED = "superseded"

    @property
    def finished(self) -> bool:
        return self in _FINISHED


_FINISHED = frozenset({State.REVERTED, State.FAILED, State.LOST, State.SUPERSEDED})


class EndReason(StrEnum):
    DEADLINE = "deadline"
    ABORTED = "aborted"
    KILLED = "killed"
    RESET = "reset"
    HALTED = "halted"
    SHUTDOWN = "shutdown"
    RECOVERED = "recovered"
    ERROR = "error"


@dataclass
class FaultRecord:
    """Everything known about one fault; times are Unix seconds (UTC)."""

    id: str
    kind: str
    target: str
    params: dict[str, Any]
    duration_s: float
    acquire_timeout_s: float
    labels: dict[str, str]
    created_at: float
    state: State = State.PENDING
    end_reason: EndReason | None = None
    activated_at: float | None = None
    deadline: float | None = None
    ended_at: float | None = None
    error: str | None = None
    #: the error's code (``lock_not_acquired``, ``target_unreachable``...) when it failed
    error_code: str | None = None
    #: phase in which it failed: "inject" or "revert"
    failed_during: str | None = None
    pids: list[int] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)
    #: sessions that were in the way when acquisition failed
    blockers: list[dict[str, Any]] = field(default_factory=list)
    #: highest number of sessions seen blocked while active
    max_blocked: int = 0
    #: the halt rule that ended it (``{"rule", "limit", "observed"}``; docs/guard-rails.md)
    halted_by: dict[str, Any] | None = None
