"""Compat: the previous chaos server's long-transaction attacks (``/api/v1/break/long_transactions``).

Each attack is one engine fault (its id is the attack id): ``table_lock`` is ``table-lock``
in ACCESS EXCLUSIVE mode, ``row_lock`` is ``row-lock`` ``FOR UPDATE`` on ``lock_count`` rows,
``advisory_lock`` is ``advisory-lock`` on ``lock_count`` consecutive keys. Parameters are
query parameters, times are Unix seconds, states are the old server's (see
``reference/compat-api.md``). No answer ever contains the database URL.
"""

from __future__ import annotations

import secrets
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Query

from dbchaos import errors
from dbchaos.api.compat import (
    MAX_DURATION_S,
    MIN_DURATION_S,
    check_target_url,
    elapsed,
    long_transaction_state,
    recall,
    remember,
    rename_field,
    target_compat_duration,
    unix,
)
from dbchaos.api.context import AppContext, get_context
from dbchaos.engine.engine import FaultRequest
from dbchaos.engine.model import EndReason, FaultRecord
from dbchaos.observe.activity import Impact, Session

router = APIRouter(prefix="/api/v1/break/long_transactions", tags=["compat"])
Ctx = Annotated[AppContext, Depends(get_context)]

FAMILY = "long_transactions"
NOUN = "long-transaction"
LockType = Literal["table_lock", "row_lock", "advisory_lock"]
MAX_LOCK_COUNT = 10_000
BIGINT_MIN = -(1 << 63)
BIGINT_MAX = (1 << 63) - 1
#: Random advisory keys stay below 2**53 so that JavaScript clients read them exactly.
RANDOM_KEY_LIMIT = 1 << 53
FORCE_KILL_AFTER_S = 2.0

#: Native parameter paths -> the compat query parameter they came from, per lock type.
_FIELDS: dict[str, dict[str, str]] = {
    "table_lock": {"params.tables": "target_table"},
    "row_lock": {"params.table": "target_table", "params.limit": "lock_count"},
    "advisory_lock": {"params.keys.": "advisory_lock_id", "params.keys": "lock_count"},
}
_COMMON_FIELDS = {"duration_s": "duration_seconds", "kind": "lock_type", "target": "target_database_url"}


def _request(lock_type: str, target_table: str, lock_count: int, first_key: int | None) -> tuple[str, dict[str, Any]]:
    if lock_type == "table_lock":
        return "table-lock", {"tables": [target_table], "mode": "ACCESS EXCLUSIVE"}
    if lock_type == "row_lock":
        return "row-lock", {"table": target_table, "strength": "FOR UPDATE", "limit": lock_count}
    assert first_key is not None
    return "advisory-lock", {"keys": list(range(first_key, first_key + lock_count))}


def _advisory_first_key(advisory_lock_id: int | None, lock_count: int) -> int:
    if advisory_lock_id is None:
        return secrets.randbelow(RANDOM_KEY_LIMIT - lock_count) + 1
    if advisory_lock_id + lock_count - 1 > BIGINT_MAX:
        raise errors.InvalidInput(
            f"advisory_lock_id {advisory_lock_id} with lock_count {lock_count} runs past the largest bigint "
            f"({BIGINT_MAX}); the keys are advisory_lock_id .. advisory_lock_id + lock_count - 1",
            code="advisory_key_out_of_range",
            field="advisory_lock_id",
        )
    return advisory_lock_id


@router.post("", summary="Start a long-transaction attack (compat)")
async def start_attack(
    ctx: Ctx,
    lock_type: Annotated[LockType, Query(description="What to hold")] = "table_lock",
    duration_seconds: Annotated[
        int | None,
        Query(
            ge=MIN_DURATION_S,
            le=MAX_DURATION_S,
            description="How long to hold; absent: until stopped (bounded by the server's maximum duration)",
        ),
    ] = None,
    target_table: Annotated[str, Query(description="Table for table_lock and row_lock")] = "items",
    lock_count: Annotated[
        int, Query(ge=1, le=MAX_LOCK_COUNT, description="Rows (row_lock) or consecutive keys (advisory_lock)")
    ] = 10,
    advisory_lock_id: Annotated[
        int | None, Query(ge=BIGINT_MIN, le=BIGINT_MAX, description="First advisory key (random when absent)")
    ] = None,
    target_database_url: Annotated[
        str | None,
        Query(description="A configured target's URL; others only where the targets file allows ad-hoc targets"),
    ] = None,
    dry_run: Annotated[
        bool, Query(description="dbchaos extension: check and plan only, change nothing (docs/dry-run.md)")
    ] = False,
) -> dict[str, Any]:
    """Answers at once with the attack id; the lock is acquired in the background.
    With ``dry_run=true``: ``{"status": "dry_run", ...}`` and the plan, no attack."""
    target = check_target_url(ctx, target_database_url)
    duration = target_compat_duration(duration_seconds, ctx, target)
    first_key = _advisory_first_key(advisory_lock_id, lock_count) if lock_type == "advisory_lock" else None
    kind, params = _request(lock_type, target_table, lock_count, first_key)
    req = FaultRequest(kind, params, duration, target)
    try:
        if dry_run:
            return {"status": "dry_run", **(await ctx.engine.dry_run(req)).as_dict()}
        rec = await ctx.engine.create(req, wait=False)
    except errors.DbChaosError as exc:
        raise rename_field(exc, {**_FIELDS[lock_type], **_COMMON_FIELDS}) from None
    remember(
        ctx,
        rec.id,
        FAMILY,
        {
            "lock_type": lock_type,
            "target_table": target_table,
            "lock_count": lock_count,
            "advisory_lock_id": first_key if first_key is not None else advisory_lock_id,
            "duration_seconds": duration_seconds,
        },
    )
    return {"status": "started", "attack_id": rec.id}


@router.get("/{attack_id}", summary="Status of a long-transaction attack (compat)")
async def attack_status(attack_id: str, ctx: Ctx) -> dict[str, Any]:
    rec, facts = recall(ctx, attack_id, FAMILY, NOUN)
    impacts = await ctx.engine.impacts([rec])
    return _status(rec, facts, impacts.get(rec.id))


@router.post("/{attack_id}/stop", summary="Stop a long-transaction attack (compat)")
async def stop_attack(
    attack_id: str,
    ctx: Ctx,
    force_kill: Annotated[
        bool, Query(description="Terminate the holding backend if the rollback has not finished within 2 s")
    ] = False,
) -> dict[str, Any]:
    rec, _ = recall(ctx, attack_id, FAMILY, NOUN)
    if not rec.state.finished:
        rec = await ctx.engine.abort(attack_id, force_kill_after_s=FORCE_KILL_AFTER_S if force_kill else None)
        if rec.end_reason is EndReason.KILLED:
            return {"status": "force_killed", "attack_id": rec.id, "backend_pid": _backend_pid(rec)}
        if rec.end_reason is EndReason.ABORTED and long_transaction_state(rec) == "rolled_back":
            return {
                "status": "rolled_back",
                "attack_id": rec.id,
                "elapsed_seconds": elapsed(rec.created_at, rec.ended_at),
            }
    # it had ended already (or ended another way while we stopped it: deadline, failure)
    state = long_transaction_state(rec)
    return {"status": f"already_{state}", "attack_id": rec.id, "state": state}


def _backend_pid(rec: FaultRecord) -> int | None:
    return rec.pids[0] if rec.pids else None


def _blocked_queries(impact: Impact | None) -> list[dict[str, Any]]:
    """Each session the attack blocks (directly or through a queue), with the query of the
    session it waits on (preferring the attack's own session)."""
    if impact is None:
        return []
    holders = {s.pid: s for s in impact.holder_sessions}
    known: dict[int, Session] = {**{b.session.pid: b.session for b in impact.blocked}, **holders}
    out = []
    for b in impact.blocked:
        s = b.session
        blocker = next((holders[p] for p in s.blocked_by if p in holders), None) or next(
            (known[p] for p in s.blocked_by if p in known), None
        )
        out.append(
            {
                "blocked_pid": s.pid,
                "blocked_user": s.user,
                "blocked_query": s.query,
                "blocked_state": s.state,
                "blocking_query": blocker.query if blocker is not None else None,
            }
        )
    return out


def _status(rec: FaultRecord, facts: dict[str, Any], impact: Impact | None) -> dict[str, Any]:
    blocked = _blocked_queries(impact)
    body: dict[str, Any] = {
        "id": rec.id,
        "state": long_transaction_state(rec),
        "lock_type": facts["lock_type"],
        "target_table": facts["target_table"],
        "lock_count": facts["lock_count"],
        "advisory_lock_id": facts["advisory_lock_id"],
        "duration_seconds": facts["duration_seconds"],
        "backend_pid": _backend_pid(rec),
        "blocked_count": len(blocked),
        "blocked_queries": blocked,
        "elapsed_seconds": elapsed(rec.created_at, rec.ended_at),
        "created_at": unix(rec.created_at),
        "started_at": unix(rec.created_at),  # the engine starts acquiring as soon as it accepts
        "lock_acquired_at": unix(rec.activated_at),
        "finished_at": unix(rec.ended_at),
        "error": rec.error,
        "ends_at": unix(rec.deadline),
        "end_reason": rec.end_reason.value if rec.end_reason is not None else None,
    }
    if facts["lock_type"] == "row_lock":
        body["locked_rows"] = rec.details.get("locked_rows")
    return body
