"""Compat: the previous chaos server's failed-migration attacks (``/api/v1/break/migrations``).

Each attack is one journaled engine fault (its id is the attack id): ``invalid_version`` is
``unknown-revision``, ``missing_version`` is ``missing-version``, ``future_version`` is
``future-revision`` and ``db_behind_code`` is ``behind`` one step. Parameters are query
parameters, times are Unix seconds, states are the old server's (``reference/compat-api.md``).
The versions come from the fault's journaled record, so a multi-row version table is
reported (comma-separated) and restored whole. ``target_api_base_url`` is recorded and
never fetched. No answer ever contains the database URL.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal
from urllib.parse import urlsplit, urlunsplit

from fastapi import APIRouter, Depends, Query
from fastapi.responses import JSONResponse

from dbchaos import errors
from dbchaos.api.compat import (
    MAX_DURATION_S,
    MIN_DURATION_S,
    check_target_url,
    migration_state,
    recall,
    remember,
    rename_field,
    target_compat_duration,
    unix,
)
from dbchaos.api.context import AppContext, get_context
from dbchaos.api.errors import error_response
from dbchaos.engine.engine import FaultRequest
from dbchaos.engine.model import EndReason, FaultRecord, State

router = APIRouter(prefix="/api/v1/break/migrations", tags=["compat"])
Ctx = Annotated[AppContext, Depends(get_context)]

FAMILY = "migrations"
NOUN = "migration"
FailureType = Literal["invalid_version", "missing_version", "future_version", "db_behind_code"]
KINDS: dict[str, str] = {
    "invalid_version": "unknown-revision",
    "missing_version": "missing-version",
    "future_version": "future-revision",
    "db_behind_code": "behind",
}
MAX_URL_CHARS = 2048
NEEDS_SCRIPTS = (
    "db_behind_code needs the application's Alembic scripts to find an older revision, and this server has "
    "none for the target: start dbchaos with --alembic-ini PATH (or set DBCHAOS_ALEMBIC_INI). dbchaos never "
    "asks target_api_base_url for revisions"
)
_FIELDS = {"duration_s": "duration_seconds", "kind": "failure_type", "target": "target_database_url"}


@router.post("", summary="Start a failed-migration attack (compat)")
async def start_attack(
    ctx: Ctx,
    failure_type: Annotated[FailureType, Query(description="The broken-deploy state to set")] = "invalid_version",
    duration_seconds: Annotated[
        int | None,
        Query(
            ge=MIN_DURATION_S,
            le=MAX_DURATION_S,
            description="How long to keep it; absent: until stopped (bounded by the server's maximum duration)",
        ),
    ] = None,
    target_database_url: Annotated[
        str | None, Query(description="Only the server's configured target is accepted")
    ] = None,
    target_api_base_url: Annotated[
        str | None,
        Query(max_length=MAX_URL_CHARS, description="Recorded, never fetched (revisions come from --alembic-ini)"),
    ] = None,
    dry_run: Annotated[
        bool, Query(description="dbchaos extension: check and plan only, change nothing (docs/dry-run.md)")
    ] = False,
) -> dict[str, Any]:
    """Answers at once with the attack id; the version table is changed in the background.
    With ``dry_run=true``: ``{"status": "dry_run", ...}`` and the plan, no attack."""
    target = check_target_url(ctx, target_database_url)
    duration = target_compat_duration(duration_seconds, ctx, target)
    if failure_type == "db_behind_code" and ctx.engine.graphs.get(ctx.target(target).name) is None:
        raise errors.InvalidInput(NEEDS_SCRIPTS, code="scripts_not_configured", field="failure_type")
    req = FaultRequest(KINDS[failure_type], {}, duration, target)
    try:
        if dry_run:
            return {"status": "dry_run", **(await ctx.engine.dry_run(req)).as_dict()}
        rec = await ctx.engine.create(req, wait=False)
    except errors.DbChaosError as exc:
        raise rename_field(exc, _FIELDS) from None
    remember(
        ctx,
        rec.id,
        FAMILY,
        {
            "failure_type": failure_type,
            "duration_seconds": duration_seconds,
            "target_api_base_url": target_api_base_url,
        },
    )
    return {"status": "started", "attack_id": rec.id}


@router.get("/{attack_id}", summary="Status of a failed-migration attack (compat)")
async def attack_status(attack_id: str, ctx: Ctx) -> dict[str, Any]:
    rec, facts = recall(ctx, attack_id, FAMILY, NOUN)
    return _status(rec, facts)


@router.post("/{attack_id}/stop", summary="Stop a failed-migration attack and restore the version (compat)")
async def stop_attack(attack_id: str, ctx: Ctx) -> Any:
    rec, facts = recall(ctx, attack_id, FAMILY, NOUN)
    duration_given = facts["duration_seconds"] is not None
    if not rec.state.finished:
        rec = await ctx.engine.abort(attack_id)
        state = migration_state(rec, duration_given=duration_given)
        if rec.end_reason is EndReason.ABORTED and state == "rolled_back":
            body = {"status": "rolled_back", "attack_id": rec.id, "restored_version": _restored(rec)}
            note = _note(rec)
            return {**body, "note": note} if note else body
        if rec.end_reason is EndReason.ABORTED and state == "rollback_failed":
            return error_response(
                409,
                f"the roll-back of attack {rec.id} failed: {rec.error}",
                "rollback_failed",
                attack_id=rec.id,
                state=state,
            )
    state = migration_state(rec, duration_given=duration_given)
    if state == "rolled_back":
        return {"status": "already_rolled_back", "attack_id": rec.id}
    if state == "rollback_failed":
        return _bad_request(rec, f"attack {rec.id} ended rollback_failed: {rec.error}", "rollback_failed")
    return _bad_request(rec, f"attack {rec.id} failed, so there is nothing to roll back: {rec.error}", "attack_failed")


def _bad_request(rec: FaultRecord, detail: str, code: str) -> JSONResponse:
    state = migration_state(rec, duration_given=True)
    return error_response(400, detail, code, attack_id=rec.id, state=state)


def _versions(rows: Any) -> str | None:
    """Revision ids as the old interface shows them: comma-separated, ``None`` for no rows."""
    if not isinstance(rows, list) or not rows:
        return None
    return ",".join(str(r) for r in rows)


def _restored(rec: FaultRecord) -> str | None:
    if rec.state is State.SUPERSEDED:
        found = rec.details.get("superseded") or {}
        return _versions(found.get("version_rows_found"))
    if rec.state is State.REVERTED:
        return _versions(rec.details.get("restored_version_rows"))
    return None


def _note(rec: FaultRecord) -> str | None:
    if rec.state is not State.SUPERSEDED:
        return None
    return (
        "the version table had been changed by someone else (e.g. `alembic stamp`) before the roll-back, "
        f"so dbchaos kept their state instead of restoring the original: {rec.error}"
    )


def _public_url(url: str | None) -> str | None:
    """The recorded ``target_api_base_url`` without any user or password in it."""
    if url is None:
        return None
    try:
        parts = urlsplit(url)
        if parts.username is None and parts.password is None:
            return url
        host = parts.hostname or ""
        netloc = f"***@{host}" + (f":{parts.port}" if parts.port else "")
        return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))
    except ValueError:
        return "<unparseable URL>"


def _status(rec: FaultRecord, facts: dict[str, Any]) -> dict[str, Any]:
    state = migration_state(rec, duration_given=facts["duration_seconds"] is not None)
    body: dict[str, Any] = {
        "id": rec.id,
        "state": state,
        "failure_type": facts["failure_type"],
        "duration_seconds": facts["duration_seconds"],
        "created_at": unix(rec.created_at),
        "started_at": unix(rec.created_at),  # the engine starts as soon as it accepts
        "original_version": _versions(rec.details.get("original_version")),
        "corrupted_version": _versions(rec.details.get("corrupted_version")),
        "corrupted_at": unix(rec.activated_at),
        "finished_at": unix(rec.ended_at),
        "rolled_back_at": unix(rec.ended_at) if state == "rolled_back" else None,
        "restored_version": _restored(rec),
        "error": rec.error if state == "failed" else None,
        "rollback_error": rec.error if state == "rollback_failed" else None,
        "ends_at": unix(rec.deadline),
        "end_reason": rec.end_reason.value if rec.end_reason is not None else None,
        "target_api_base_url": _public_url(facts.get("target_api_base_url")),
    }
    note = _note(rec)
    if note:
        body["note"] = note
    return body
