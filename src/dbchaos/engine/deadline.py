"""Moving a running fault's deadline (``PATCH /v1/faults/{id}``): which moves are allowed.

The new deadline is checked against the same maximum as a new fault of that length (the
server's, or the target's if lower), counted from the moment the fault became active. A
fault whose session has a statement in flight (``migration-lock-queue``'s queued ``LOCK``)
cannot outlive the timeouts that statement was sent with, so its maximum is the duration it
started with. A deadline already in the past is refused: ``DELETE`` ends a fault now.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from dbchaos import errors
from dbchaos.engine.model import FaultRecord, State


@dataclass(frozen=True)
class NewDeadline:
    deadline: float
    #: seconds from activation to ``deadline``
    duration_s: float


def check_movable(rec: FaultRecord, *, stopping: bool) -> None:
    """409 ``fault_not_active`` unless the fault is active and not being stopped."""
    if rec.state is not State.ACTIVE or stopping or rec.deadline is None or rec.activated_at is None:
        state = "ending" if rec.state is State.ACTIVE else rec.state.value
        raise errors.Conflict(
            f"fault {rec.id} is {state}: only an active fault's deadline can move", code="fault_not_active"
        )


def held_statement_why(duration_s: float) -> str:
    return (
        f"this fault's session has a statement in flight whose server-side timeouts were set for {duration_s:g} s "
        "when it was sent, so it cannot be extended past its original duration"
    )


def _number(value: object, field: str) -> float:
    if not isinstance(value, int | float) or isinstance(value, bool) or not math.isfinite(value):
        raise errors.InvalidInput(f"{field} must be a finite number of seconds", field=field)
    return float(value)


def moved_deadline(
    rec: FaultRecord,
    *,
    duration_s: float | None,
    extend_by_s: float | None,
    deadline: float | None,
    now: float,
    max_duration_s: float,
    why_max: str | None = None,
) -> NewDeadline:
    """The deadline asked for, checked; ``InvalidInput`` naming the field otherwise."""
    given = [
        (k, v)
        for k, v in (("duration_s", duration_s), ("extend_by_s", extend_by_s), ("deadline", deadline))
        if v is not None
    ]
    if len(given) != 1:
        raise errors.InvalidInput(
            "give exactly one of duration_s (seconds from activation), extend_by_s (seconds to add; negative "
            "shortens) or deadline (an RFC 3339 time)",
            code="invalid_deadline_change",
        )
    field, value = given[0]
    assert rec.activated_at is not None and rec.deadline is not None
    number = _number(value, field)
    if field == "duration_s":
        if number <= 0:
            raise errors.InvalidInput("duration_s must be a positive number of seconds", field=field)
        new = rec.activated_at + number
    elif field == "extend_by_s":
        new = rec.deadline + number
    else:
        new = number
    duration = new - rec.activated_at
    if duration > max_duration_s + 1e-6:
        why = why_max or "the server's or the target's maximum"
        raise errors.InvalidInput(
            f"that makes the fault last {duration:g} s from activation, over its maximum of {max_duration_s:g} s "
            f"({why})",
            code="duration_too_long",
            field=field,
            extra={"max_duration_s": max_duration_s},
        )
    if new <= now:
        raise errors.InvalidInput(
            f"that deadline is {now - new:.3g} s in the past; to end the fault now, DELETE it",
            code="deadline_in_past",
            field=field,
        )
    return NewDeadline(new, duration)
