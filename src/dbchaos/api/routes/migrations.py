"""``GET /v1/targets/{name}/migrations``: the diagnosis of a target's Alembic version table."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query

from dbchaos import errors
from dbchaos.api.context import AppContext, get_context
from dbchaos.faults.migration.diagnosis import diagnose

router = APIRouter(prefix="/v1")
Ctx = Annotated[AppContext, Depends(get_context)]


@router.get("/targets/{name}/migrations", summary="Diagnose a target's Alembic version table")
async def migrations_status(
    name: str,
    ctx: Ctx,
    version_table: Annotated[str, Query(max_length=63, description="Alembic's version table")] = "alembic_version",
    version_table_schema: Annotated[str, Query(max_length=63, description="Its schema")] = "public",
) -> dict[str, Any]:
    """The stored revision(s), the code's head(s) when the target's Alembic scripts are
    configured, the state (`at head`, `behind by N`, `unknown revision`, `overlapping revisions`,
    `branch heads`, `empty version table`, `version table missing`, `locked`), the repair a
    human would run, and the dbchaos faults that set the state and are not yet reverted."""
    if name not in ctx.targets:
        raise errors.NotFound(
            f"no target named {name!r}; known: {', '.join(sorted(ctx.targets))}", code="unknown_target"
        )
    target = ctx.target(name)
    diagnosis = await diagnose(
        target,
        ctx.engine.graphs.get(target.name),
        version_table=version_table,
        version_table_schema=version_table_schema,
        connect_timeout_s=ctx.settings.connect_timeout_s,
        cursor_factory=ctx.audit.cursor_factory("diagnose", target.name),
    )
    body = diagnosis.as_dict()
    for fault in body["dbchaos_faults"]:
        fault["this_server"] = fault["owner"] == ctx.engine.instance
    return body
