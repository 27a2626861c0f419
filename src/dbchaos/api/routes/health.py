"""``GET /v1/health``: is dbchaos fine, and can it use its target?"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends

import dbchaos
from dbchaos import optin
from dbchaos.api.context import AppContext, get_context
from dbchaos.targets import check_target

router = APIRouter()


@router.get("/v1/health", summary="dbchaos's own health and its target's condition")
async def health(ctx: Annotated[AppContext, Depends(get_context)]) -> dict[str, Any]:
    """Always 200 while dbchaos itself works; ``target`` says whether faults can run there
    (``usable``) and whether the database opted in to them (``opted_in``)."""
    target = ctx.target()
    check = await check_target(target, connect_timeout_s=ctx.settings.connect_timeout_s)
    body = check.as_dict()
    body["opt_in_required"] = not ctx.settings.allow_not_opted_in
    if check.opted_in is False:
        body["opt_in_hint"] = optin.not_opted_in_message(target.name, target.masked_dsn)
    return {
        "status": "ok",
        "version": dbchaos.__version__,
        "target": body,
    }
