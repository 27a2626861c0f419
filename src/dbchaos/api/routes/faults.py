"""The native fault API: create, list, show, revert, reset, kinds."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query
from fastapi.responses import JSONResponse

from dbchaos import errors
from dbchaos.api.context import AppContext, get_context
from dbchaos.api.errors import error_response, status_for
from dbchaos.api.schemas import DryRunAnswer, FaultCreate, FaultPatch, fault_view
from dbchaos.engine.engine import FaultRequest

router = APIRouter(prefix="/v1")
Ctx = Annotated[AppContext, Depends(get_context)]


@router.post(
    "/faults",
    status_code=201,
    summary="Inject a fault",
    responses={
        202: {"description": "With ?wait=false: accepted, the fault is still pending"},
        200: {"model": DryRunAnswer, "description": "With ?dry_run=true: what it would do; nothing changed"},
    },
)
async def create_fault(
    body: FaultCreate,
    ctx: Ctx,
    wait: Annotated[bool, Query(description="Wait until active")] = True,
    dry_run: Annotated[
        bool, Query(description="Check and plan only: statements, locks, blast radius; change nothing")
    ] = False,
) -> JSONResponse:
    """Waits until the fault holds (201, `active`), or answers 409 with the failed fault
    and who was in the way. With `?wait=false`, answers 202 with state `pending` at once.
    With `?dry_run=true`, answers 200 with the plan after the same checks (docs/dry-run.md)."""
    req = FaultRequest(body.kind, body.params, body.duration_s, body.target, body.acquire_timeout_s, body.labels)
    if dry_run:
        return JSONResponse((await ctx.engine.dry_run(req)).as_dict(), status_code=200)
    try:
        rec = await ctx.engine.create(req, wait=wait)
    except errors.DbChaosError as exc:
        fault_id = exc.extra.get("fault_id")
        if fault_id is None:
            raise
        rec = ctx.engine.get(str(fault_id))
        extra = {k: v for k, v in exc.extra.items() if k != "fault_id"}  # e.g. the missing grants (403)
        return error_response(status_for(exc), exc.message, exc.code, exc.field, **{**extra, "fault": fault_view(rec)})
    impacts = await ctx.engine.impacts([rec])
    return JSONResponse(fault_view(rec, impacts.get(rec.id)), status_code=201 if wait else 202)


@router.get("/faults", summary="List faults (active first), with live impact")
async def list_faults(
    ctx: Ctx, state: Annotated[str | None, Query(description="Only faults in this state")] = None
) -> dict[str, Any]:
    recs = ctx.engine.all()
    if state is not None:
        recs = [r for r in recs if r.state.value == state]
    impacts = await ctx.engine.impacts(recs)
    recs.sort(key=lambda r: (r.state.finished, -r.created_at))
    return {"faults": [fault_view(r, impacts.get(r.id)) for r in recs]}


@router.get("/faults/{fault_id}", summary="One fault, with its live impact")
async def get_fault(fault_id: str, ctx: Ctx) -> dict[str, Any]:
    rec = ctx.engine.get(fault_id)
    impacts = await ctx.engine.impacts([rec])
    view = fault_view(rec, impacts.get(rec.id))
    drift = await ctx.engine.drift(rec)
    if drift:
        view["drift"] = drift  # the team changed the state dbchaos set; revert will keep theirs
    return view


@router.patch("/faults/{fault_id}", summary="Extend or shorten an active fault")
async def patch_fault(fault_id: str, body: FaultPatch, ctx: Ctx) -> dict[str, Any]:
    """Moves the deadline of an active fault, and the server-side timeouts of its sessions
    with it (docs/events.md). 422 beyond the maximum (the answer says it), 409 if the fault
    is not active."""
    rec = await ctx.engine.extend(
        fault_id,
        duration_s=body.duration_s,
        extend_by_s=body.extend_by_s,
        deadline=body.deadline.timestamp() if body.deadline is not None else None,
    )
    impacts = await ctx.engine.impacts([rec])
    return fault_view(rec, impacts.get(rec.id))


@router.delete("/faults/{fault_id}", summary="Revert a fault now")
async def delete_fault(fault_id: str, ctx: Ctx) -> dict[str, Any]:
    rec = await ctx.engine.abort(fault_id)
    return fault_view(rec)


@router.post("/reset", summary="Revert every fault this server holds")
async def reset(ctx: Ctx) -> dict[str, Any]:
    recs = await ctx.engine.reset()
    return {"reverted": [fault_view(r) for r in recs]}


@router.get("/kinds", summary="Fault kinds with their parameter schemas")
async def kinds(ctx: Ctx) -> dict[str, Any]:
    return {"kinds": ctx.engine.registry.describe()}
