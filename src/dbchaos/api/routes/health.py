"""``GET /v1/health``: is dbchaos fine, and can it use its target?"""

from __future__ import annotations

import asyncio
from typing import Annotated, Any

import psycopg
from fastapi import APIRouter, Depends

import dbchaos
from dbchaos import errors, optin, privileges
from dbchaos.api.context import AppContext, get_context
from dbchaos.targets import Target, TargetCheck, check_target

router = APIRouter()

#: how long health waits for the privilege check (on the control connection, which a fault's
#: catalog look-ups may hold for a moment); past it the answer says so and the check finishes alone
PRIVILEGES_WAIT_S = 3.0


@router.get("/v1/health", summary="dbchaos's own health and its target's condition")
async def health(ctx: Annotated[AppContext, Depends(get_context)]) -> dict[str, Any]:
    """Always 200 while dbchaos itself works; ``target`` says whether faults can run there
    (``usable``), whether the database opted in to them (``opted_in``) and what the target
    role may do (``privileges``: per kind ``ok``, ``missing`` grants and ``degraded``
    observation; docs/least-privilege.md)."""
    target = ctx.target()
    check = await check_target(
        target,
        connect_timeout_s=ctx.settings.connect_timeout_s,
        cursor_factory=ctx.audit.cursor_factory("check", target.name),
    )
    body = check.as_dict()
    body["opt_in_required"] = not ctx.settings.allow_not_opted_in
    if check.opted_in is False:
        body["opt_in_hint"] = optin.not_opted_in_message(target.name, target.masked_dsn)
    body["privileges"] = await _privileges(ctx, target, check)
    return {
        "status": "ok",
        "version": dbchaos.__version__,
        "target": body,
    }


def _retrieve(task: asyncio.Task[dict[str, Any]]) -> None:
    if not task.cancelled():
        task.exception()


async def _privileges(ctx: AppContext, target: Target, check: TargetCheck) -> dict[str, Any] | None:
    """The target role's capabilities (role-level facts and one aggregate over the tables),
    read on the engine's control connection: no extra connection, so it answers even while
    connection-exhaustion holds every ordinary slot."""
    if not check.reachable or not check.usable:
        return None
    task = asyncio.ensure_future(ctx.engine.channel(target).run(privileges.capabilities))
    task.add_done_callback(_retrieve)
    done, _ = await asyncio.wait({task}, timeout=PRIVILEGES_WAIT_S)
    if not done:
        return {"error": f"not checked: the control connection was busy for {PRIVILEGES_WAIT_S:g} s"}
    try:
        return task.result()
    except errors.DbChaosError as exc:
        return {"error": exc.message}
    except psycopg.Error as exc:
        return {"error": f"could not read the role's privileges [{exc.sqlstate or 'no SQLSTATE'}]"}
