"""``GET /v1/health``: is dbchaos fine, and can it use its target?"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends

import dbchaos
from dbchaos.api.context import AppContext, get_context
from dbchaos.targets import check_target

router = APIRouter()


@router.get("/v1/health", summary="dbchaos's own health and its target's condition")
async def health(ctx: Annotated[AppContext, Depends(get_context)]) -> dict[str, Any]:
    """Always 200 while dbchaos itself works; ``target`` says whether faults can run there."""
    target = ctx.target()
    check = await check_target(target, connect_timeout_s=ctx.settings.connect_timeout_s)
    return {
        "status": "ok",
        "version": dbchaos.__version__,
        "target": check.as_dict(),
    }
