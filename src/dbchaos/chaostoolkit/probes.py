"""Chaos Toolkit probes: what dbchaos faults are doing to the target right now.

``blocked_sessions`` is the one to put next to your application's own probes: how many
sessions wait behind the fault (read from ``pg_locks`` / ``pg_blocking_pids()`` by the
server). With ``at_least``, it waits up to ``timeout_s`` for that many to show, so a method
step can assert the fault really bit without a fixed pause.
"""

from __future__ import annotations

import time
from typing import Any

from dbchaos.chaostoolkit._common import Configuration, Secrets, client, has_labels, select

__all__ = ["active_faults", "blocked_sessions", "fault_state"]

POLL_INTERVAL_S = 0.2


def fault_state(
    fault_id: str | None = None,
    labels: dict[str, str] | None = None,
    configuration: Configuration = None,
    secrets: Secrets = None,
) -> str:
    """The state (``pending``, ``active``, ``reverted``...) of the fault ``fault_id``, or of the
    newest fault carrying ``labels``; ``none`` when there is no such fault."""
    with client(configuration, secrets) as chaos:
        found = select(chaos, fault_id, labels, unfinished_only=False)
    return found[0].state if found else "none"


def blocked_sessions(
    fault_id: str | None = None,
    labels: dict[str, str] | None = None,
    at_least: int | None = None,
    timeout_s: float = 10.0,
    configuration: Configuration = None,
    secrets: Secrets = None,
) -> int:
    """Sessions blocked behind the fault ``fault_id`` (or behind every unfinished fault carrying
    ``labels``), counted once each. With ``at_least``: poll until that many are blocked or
    ``timeout_s`` passed, and return the last count."""
    deadline = time.monotonic() + timeout_s
    with client(configuration, secrets) as chaos:
        while True:
            pids: set[int] = set()
            for fault in select(chaos, fault_id, labels, unfinished_only=True):
                if fault.impact is not None:
                    pids.update(b.pid for b in fault.impact.blocked)
            if at_least is None or len(pids) >= at_least or time.monotonic() >= deadline:
                return len(pids)
            time.sleep(POLL_INTERVAL_S)


def active_faults(
    labels: dict[str, str] | None = None,
    kind: str | None = None,
    target: str | None = None,
    configuration: Configuration = None,
    secrets: Secrets = None,
) -> int:
    """How many faults are active now (optionally: carrying ``labels``, of ``kind``, on ``target``).
    A steady-state hypothesis of ``0`` says "no fault of ours is running"."""
    with client(configuration, secrets) as chaos:
        faults: list[Any] = chaos.list(state="active")
    return sum(
        1
        for f in faults
        if has_labels(f, labels) and (kind is None or f.kind == kind) and (target is None or f.target == target)
    )
