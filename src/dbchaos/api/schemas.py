"""Request and answer models of the native API (``/v1``)."""

from __future__ import annotations

import functools
from datetime import UTC, datetime
from typing import Any

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

from dbchaos.engine.model import FaultRecord
from dbchaos.observe.activity import Impact


class FaultCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    kind: str = Field(description="A fault kind from GET /v1/kinds", examples=["table-lock"])
    params: dict[str, Any] = Field(default_factory=dict, examples=[{"tables": ["items"], "mode": "ACCESS EXCLUSIVE"}])
    duration_s: float | None = Field(default=None, description="How long the fault holds once active (default 60)")
    target: str | None = Field(default=None, description="Target name (default: the default target)")
    acquire_timeout_s: float | None = Field(
        default=None, description="How long to wait for the lock (default 5; 0 = do not wait)"
    )
    labels: dict[str, str] | None = Field(default=None, description="Free-form labels: owner, reason, ticket")


class FaultPatch(BaseModel):
    """``PATCH /v1/faults/{id}``: move an active fault's deadline; give exactly one field."""

    model_config = ConfigDict(extra="forbid")

    duration_s: float | None = Field(
        default=None, description="The fault's new duration, counted from when it became active", examples=[120]
    )
    extend_by_s: float | None = Field(
        default=None, description="Seconds to add to the current deadline (negative: shorten)", examples=[60]
    )
    deadline: AwareDatetime | None = Field(
        default=None,
        description="The new deadline, an RFC 3339 time with its offset",
        examples=["2025-01-31T12:00:00Z"],
    )


def rfc3339(ts: float | None) -> str | None:
    return None if ts is None else _rfc3339(ts)


@functools.lru_cache(maxsize=16_384)
def _rfc3339(ts: float) -> str:
    """Memoised: a fault's times never change, and status calls show them again and again."""
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def fault_view(rec: FaultRecord, impact: Impact | None = None) -> dict[str, Any]:
    """The API's representation of a fault (DESIGN §3)."""
    return {
        "id": rec.id,
        "kind": rec.kind,
        "target": rec.target,
        "state": rec.state.value,
        "end_reason": rec.end_reason.value if rec.end_reason else None,
        "params": rec.params,
        "duration_s": rec.duration_s,
        "acquire_timeout_s": rec.acquire_timeout_s,
        "labels": rec.labels,
        "created_at": rfc3339(rec.created_at),
        "activated_at": rfc3339(rec.activated_at),
        "deadline": rfc3339(rec.deadline),
        "ended_at": rfc3339(rec.ended_at),
        "error": rec.error,
        "details": rec.details,
        "blockers": rec.blockers,
        "halted_by": rec.halted_by,
        "impact": impact.as_dict() if impact is not None else None,
    }


class ErrorBody(BaseModel):
    """Every error answer (``api/errors.py``): one human sentence, a stable code, the field at
    fault; some add keys (``fault``, ``required_scope``, ``max_duration_s``...)."""

    model_config = ConfigDict(extra="allow")

    detail: str = Field(description="One human sentence")
    code: str = Field(description="A stable snake_case code, e.g. unknown_table")
    field: str | None = Field(description="The input field at fault (a dotted path), or null")


def _error(description: str) -> dict[str, Any]:
    return {"model": ErrorBody, "description": description}


#: The error answers every route may give, declared in the OpenAPI schema (DESIGN §3).
ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    400: _error("The body could not be parsed; compat: stopping a migration attack that failed"),
    401: _error("No token, or an unknown or malformed one (only when tokens are configured)"),
    403: _error("Not allowed: token scope, foreign Host or Origin, target not opted in, denied object"),
    404: _error("Unknown route, fault id, attack id or target"),
    409: _error("Conflicts with the database's or dbchaos's current state (e.g. the lock could not be acquired)"),
    422: _error("Invalid input, with the field at fault"),
    429: _error("The cap on concurrent faults is reached"),
    502: _error("The target is unreachable or cannot run faults (replica, read-only, unsupported version)"),
}


class DryRunStatement(BaseModel):
    model_config = ConfigDict(extra="allow")

    session: str = Field(description="Which of the fault's sessions sends it (fault, reader, migration...)")
    phase: str = Field(description="connect (a session opens, with its settings), inject or revert")
    sql: str | None = Field(description="The statement as text, bound values inlined")


class DryRunLock(BaseModel):
    model_config = ConfigDict(extra="allow")

    locktype: str = Field(description="relation, rows, advisory or connection_slots")
    mode: str = Field(description="SQL spelling: ACCESS EXCLUSIVE, FOR UPDATE, EXCLUSIVE...")
    phase: str = Field(description="held (for the duration), inject (one short transaction) or revert")


class DryRunBlastRadius(BaseModel):
    model_config = ConfigDict(extra="allow")

    in_the_way: list[dict[str, Any]] = Field(description="Sessions holding conflicting locks: the inject would wait")
    would_block: list[dict[str, Any]] = Field(description="Sessions using those objects in a conflicting mode")
    row_locks: str | None = Field(description="How row locks were judged: pgrowlocks, relation, or null")
    notes: list[str]


class DryRunAnswer(BaseModel):
    """``POST /v1/faults?dry_run=true``: what the request would do; nothing was changed (docs/dry-run.md)."""

    model_config = ConfigDict(extra="allow")

    dry_run: bool = Field(description="Always true")
    kind: str
    target: str
    params: dict[str, Any] = Field(description="The parameters, normalised as a real fault would show them")
    duration_s: float
    acquire_timeout_s: float
    session_settings: dict[str, Any] = Field(description="application_name and the server-side bounds of each session")
    statements: list[DryRunStatement]
    locks: list[DryRunLock]
    blast_radius: DryRunBlastRadius
    details: dict[str, Any]
    notes: list[str]
