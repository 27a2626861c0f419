"""``dbchaos init``: opt a database in to dbchaos faults (or ``--revoke`` it).

Run by anyone who may create a schema in the database (a plain owner will do); it writes
the marker table ``dbchaos.opt_in`` (see :mod:`dbchaos.optin`). Non-interactive.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Annotated, Any, TypeVar

import psycopg
import typer

from dbchaos import errors, optin
from dbchaos.cli.common import emit_json, fail_with, stdout, target_or_name
from dbchaos.engine.pgerrors import translate
from dbchaos.settings import Settings
from dbchaos.targets import Target, check_target

T = TypeVar("T")


def init(
    target: Annotated[
        str | None,
        typer.Option(help="DSN of the database (or a target name of --targets-file).  [default: $DBCHAOS_TARGET_DSN]"),
    ] = None,
    revoke: Annotated[
        bool, typer.Option("--revoke", help="Remove the opt-in marker (refused while journaled faults are active).")
    ] = False,
    note: Annotated[str | None, typer.Option(help="A note stored with the marker (who asked, a ticket).")] = None,
    targets_file: Annotated[
        str | None, typer.Option(help="Targets file whose target --target names.  Env: DBCHAOS_TARGETS_FILE.")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """Opt a database in to dbchaos faults: creates the schema dbchaos (if missing) and the
    marker table dbchaos.opt_in. Without it, dbchaos refuses every fault there."""
    try:
        settings = Settings.from_env().with_overrides(targets_file=targets_file)
        tgt = target_or_name(target, settings)
        if revoke:
            removed = asyncio.run(revoke_target(tgt, connect_timeout_s=settings.connect_timeout_s))
            answer: dict[str, Any] = {"target": tgt.masked_dsn, "opted_in": False, "removed": removed}
            message = (
                "opt-in revoked: dbchaos refuses faults on this database now (the journal stays)"
                if removed
                else "this database had not opted in; nothing to revoke"
            )
        else:
            state, created = asyncio.run(opt_in_target(tgt, note, connect_timeout_s=settings.connect_timeout_s))
            answer = {"target": tgt.masked_dsn, **state.as_dict(), "created": created}
            since = f" since {state.opted_in_at:%Y-%m-%d %H:%M:%S %Z} by {state.by_role}" if state.opted_in_at else ""
            message = ("opted in" if created else "already opted in") + since + ": dbchaos may inject faults here"
    except errors.DbChaosError as exc:
        fail_with(exc, as_json=as_json)
    if as_json:
        emit_json(answer)
    else:
        stdout().print(f"{tgt.masked_dsn}: {message}")


async def _on(
    target: Target, connect_timeout_s: float, fn: Callable[[psycopg.AsyncConnection[Any]], Awaitable[T]]
) -> T:
    check = await check_target(target, connect_timeout_s=connect_timeout_s)
    check.raise_if_unusable()
    conn = await target.connect("dbchaos:init", connect_timeout_s=connect_timeout_s)
    try:
        await conn.execute("SET lock_timeout = '5s'; SET statement_timeout = '30s'")
        return await fn(conn)
    except psycopg.Error as exc:
        raise translate(exc, "dbchaos init") from exc
    finally:
        await conn.close()


async def opt_in_target(
    target: Target, note: str | None = None, *, connect_timeout_s: float = 3.0
) -> tuple[optin.OptIn, bool]:
    """Write the opt-in marker into ``target`` (idempotent); the state and whether it was new."""

    async def run(conn: psycopg.AsyncConnection[Any]) -> tuple[optin.OptIn, bool]:
        return await optin.opt_in(conn, note)

    return await _on(target, connect_timeout_s, run)


async def revoke_target(target: Target, *, connect_timeout_s: float = 3.0) -> bool:
    """Remove the marker from ``target``; ``Conflict`` while journaled faults are active."""
    return await _on(target, connect_timeout_s, optin.revoke)
