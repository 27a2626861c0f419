"""The lab's JSON API under ``/lab/api/`` (read routes are GETs; the chaos server's Host and
Origin guard and token rules apply as to every route).

Faults themselves are started and stopped through the ordinary ``/v1/faults`` API; the
migration panel reads ``/v1/targets/shop/migrations``. These routes add what only the lab
has: the scenarios, the traffic series, the demo's configuration, the deploy, the lock tree
of the shop database and ending one of its sessions.
"""

from __future__ import annotations

import time
from typing import Annotated, Any

import psycopg
from fastapi import APIRouter, Depends, Query, Request
from pydantic import BaseModel, ConfigDict, Field
from starlette.routing import NoMatchFound

from dbchaos import errors
from dbchaos.api.context import AppContext, get_context
from dbchaos.api.schemas import rfc3339
from dbchaos.lab import deploy as deploys
from dbchaos.lab.context import Lab, get_lab
from dbchaos.lab.demo.config import Mode
from dbchaos.lab.democonfig import demo_admin, set_mode
from dbchaos.lab.scenarios import catalogue
from dbchaos.lab.shopdb import TARGET_NAME
from dbchaos.targets import mask_dsn

router = APIRouter(prefix="/lab/api", tags=["lab"])
LabDep = Annotated[Lab, Depends(get_lab)]
Ctx = Annotated[AppContext, Depends(get_context)]
#: the route listing issue 7's experiments (GET /v1/experiments), when the server has it
EXPERIMENTS_ROUTE = "list_experiments"


class ConfigIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    mode: Mode = Field(description="naive or hardened")


class AlembicIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    command: str = Field(description="current, history, heads or stamp (alembic stamp --purge head)")


def fault_windows(ctx: AppContext, since: float | None = None) -> list[dict[str, Any]]:
    """When each fault on the shop held (activated → ended, ``end`` null while active)."""
    out: list[dict[str, Any]] = []
    for rec in ctx.engine.all():
        if rec.target != TARGET_NAME or rec.activated_at is None:
            continue
        if since is not None and rec.ended_at is not None and rec.ended_at < since:
            continue
        out.append(
            {
                "id": rec.id,
                "kind": rec.kind,
                "state": rec.state.value,
                "start": rec.activated_at,
                "end": rec.ended_at,
                "end_reason": rec.end_reason.value if rec.end_reason else None,
            }
        )
    out.sort(key=lambda w: float(w["start"]))
    return out


@router.get("/scenarios", summary="The scenario catalogue, grouped")
async def scenarios() -> dict[str, Any]:
    return catalogue()


@router.get("/runs", summary="Whether this server runs experiments (and where their list is)")
async def runs(request: Request) -> dict[str, Any]:
    """The dashboard's runs-and-reports section asks here first, so a server without
    experiments is a plain answer rather than a failed request."""
    try:
        path = str(request.app.url_path_for(EXPERIMENTS_ROUTE))
    except NoMatchFound:
        return {"available": False, "path": None}
    return {"available": True, "path": path}


@router.get("/status", summary="The lab: its database, demo shop and traffic")
async def status(lab: LabDep) -> dict[str, Any]:
    demo = lab.demo
    return {
        "target": TARGET_NAME,
        "server_version": lab.server_version,
        "psql": lab.shop.admin_dsn,
        "app_dsn": mask_dsn(lab.shop.app_dsn),
        "demo": {
            "url": demo.url,
            "pid": demo.pid,
            "running": demo.running,
            "mode": demo.mode.value,
            "pool_timeout_s": demo.pool_timeout_s,
            "restarts": demo.restarts,
            "started_at": rfc3339(demo.started_at),
        },
        "traffic": lab.traffic.describe() if lab.traffic else {"running": False},
        "watch_error": lab.watch.last_error,
        "deploy_running": lab.deploy_lock.locked(),
    }


@router.get("/traffic", summary="The per-second series: the demo's traffic and the shop's blocked sessions")
async def traffic(
    lab: LabDep,
    ctx: Ctx,
    since: Annotated[float | None, Query(description="Only seconds after this Unix time")] = None,
    window_s: Annotated[int, Query(ge=10, le=900, description="At most this many seconds back")] = 300,
) -> dict[str, Any]:
    now = time.time()
    floor = now - window_s
    start = floor if since is None else max(since, floor)
    return {
        "now": now,
        "traffic": lab.traffic.describe() if lab.traffic else {"running": False},
        "mode": lab.demo.mode.value,
        "buckets": [b.as_dict() for b in lab.series.buckets(start)],
        "faults": fault_windows(ctx, floor),
        "events": [e for e in lab.events if e["t"] >= floor],
    }


@router.get("/config", summary="The demo shop's configuration (naive or hardened) and pool")
async def get_config(lab: LabDep) -> dict[str, Any]:
    answer = await demo_admin(lab, "GET")
    return {"mode": lab.demo.mode.value, **answer}


@router.put("/config", summary="Switch the demo shop between naive and hardened (at run time, no restart)")
async def put_config(body: ConfigIn, lab: LabDep) -> dict[str, Any]:
    return await set_mode(lab, body.mode)


@router.post("/deploy", summary="Deploy: the demo's real `alembic upgrade head`, then a restart of the shop")
async def deploy(lab: LabDep) -> dict[str, Any]:
    return await deploys.deploy(lab)


@router.get("/deploy", summary="The last deploy's result (null before the first)")
async def last_deploy(lab: LabDep) -> dict[str, Any]:
    return {"running": lab.deploy_lock.locked(), "last": lab.last_deploy}


@router.post("/alembic", summary="Run one Alembic command on the shop: current, history, heads, stamp")
async def alembic(body: AlembicIn, lab: LabDep) -> dict[str, Any]:
    return await deploys.alembic_command(lab, body.command)


@router.get("/locks", summary="The shop database's live lock tree, blocked queries and idle transactions")
async def locks(lab: LabDep) -> dict[str, Any]:
    try:
        return await lab.watch.lock_tree()
    except (psycopg.Error, OSError) as exc:
        raise errors.TargetUnreachable(f"could not read the shop's sessions: {exc}") from None


@router.post("/sessions/{pid}/terminate", summary="End a session of the shop database (pg_terminate_backend)")
async def terminate(pid: int, lab: LabDep) -> dict[str, Any]:
    try:
        result = await lab.watch.terminate(pid)
    except (psycopg.Error, OSError) as exc:
        raise errors.TargetUnreachable(f"could not end session {pid}: {exc}") from None
    if result is None:
        raise errors.NotFound(f"no client session {pid} in the shop database", code="unknown_session")
    lab.event("terminate", f"ended session {pid} ({result['application_name'] or 'no name'})", pid=pid)
    return result


# ---------------------------------------------------------------- game days
@router.get("/gamedays", summary="The guided game days, and the one being played")
async def gamedays(lab: LabDep, ctx: Ctx) -> dict[str, Any]:
    return {"gamedays": lab.gamedays.catalogue(), "current": await lab.gamedays.current(lab, ctx)}


@router.get("/gamedays/current", summary="The game day being played (its current step is checked now)")
async def gameday_current(lab: LabDep, ctx: Ctx) -> dict[str, Any]:
    return {"current": await lab.gamedays.current(lab, ctx)}


@router.post("/gamedays/{gameday_id}/start", summary="Start a game day (injects its fault)")
async def gameday_start(gameday_id: str, lab: LabDep, ctx: Ctx) -> dict[str, Any]:
    return {"current": await lab.gamedays.start(gameday_id, lab, ctx)}


@router.post("/gamedays/current/continue", summary="Go on from an observe step")
async def gameday_continue(lab: LabDep, ctx: Ctx) -> dict[str, Any]:
    return {"current": await lab.gamedays.proceed(lab, ctx)}


@router.post("/gamedays/current/abort", summary="Stop the game day (its fault is reverted) and clear it")
async def gameday_abort(lab: LabDep, ctx: Ctx) -> dict[str, Any]:
    return {"aborted": await lab.gamedays.abort(lab, ctx)}
