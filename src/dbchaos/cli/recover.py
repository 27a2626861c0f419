"""``dbchaos recover``: revert what crashed dbchaos instances left in a target's journal."""

from __future__ import annotations

import asyncio
from typing import Annotated

import typer

from dbchaos import errors
from dbchaos.api.schemas import fault_view
from dbchaos.cli import exits
from dbchaos.cli.common import emit_json, fail_with, resolve_target, stdout
from dbchaos.engine.engine import Engine
from dbchaos.engine.model import FaultRecord, State
from dbchaos.faults.registry import default_registry
from dbchaos.settings import Settings


def recover(
    target: Annotated[str | None, typer.Option(help="Target DSN or name.  [default: $DBCHAOS_TARGET_DSN]")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """Restore and verify every journal entry whose owner instance is gone.

    Faults of a dbchaos instance that is still running are never touched."""
    try:
        settings = Settings.from_env()
        tgt = resolve_target(target, settings)
        recs = asyncio.run(_recover(Engine(settings, {tgt.name: tgt}, default_registry())))
    except errors.DbChaosError as exc:
        fail_with(exc, as_json=as_json)
    if as_json:
        emit_json({"recovered": [fault_view(r) for r in recs]})
    else:
        out = stdout()
        if not recs:
            out.print("nothing to recover")
        for r in recs:
            out.print(f"{r.id} ({r.kind}): {r.state.value}" + (f" — {r.error}" if r.error else ""))
    if any(r.state is State.FAILED for r in recs):
        raise typer.Exit(exits.FAILED)


async def _recover(engine: Engine) -> list[FaultRecord]:
    try:
        return await engine.recover()
    finally:
        await engine.close()
