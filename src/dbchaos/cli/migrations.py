"""``dbchaos migrations status``: diagnose a target's Alembic version table, in words or JSON."""

from __future__ import annotations

import asyncio
from typing import Annotated

import typer
from rich.markup import escape

from dbchaos import errors
from dbchaos.cli.common import emit_json, fail_with, load_graphs, resolve_target, stdout
from dbchaos.faults.migration.diagnosis import Diagnosis, diagnose
from dbchaos.settings import Settings

app = typer.Typer(
    name="migrations",
    help="Diagnose Alembic migration state on a target.",
    no_args_is_help=True,
    add_completion=False,
)


@app.command("status")
def status(
    target: Annotated[str | None, typer.Option(help="Target DSN or name.  [default: $DBCHAOS_TARGET_DSN]")] = None,
    alembic_ini: Annotated[
        str | None,
        typer.Option(
            help="The application's alembic.ini, to compare with the code's heads.  [default: $DBCHAOS_ALEMBIC_INI]"
        ),
    ] = None,
    version_table: Annotated[str, typer.Option(help="Alembic's version table.")] = "alembic_version",
    version_table_schema: Annotated[str, typer.Option(help="Its schema.")] = "public",
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """Stored revision(s), the code's head(s), the state (at head, behind by N, unknown revision,
    overlapping revisions, branch heads, empty version table, version table missing, locked), the
    repair a human would run, and the dbchaos faults that set it."""
    try:
        settings = Settings.from_env().with_overrides(alembic_ini=alembic_ini)
        tgt = resolve_target(target, settings)
        graph = load_graphs(settings).get(settings.target_name)
        found = asyncio.run(
            diagnose(
                tgt,
                graph,
                version_table=version_table,
                version_table_schema=version_table_schema,
                connect_timeout_s=settings.connect_timeout_s,
            )
        )
    except errors.DbChaosError as exc:
        fail_with(exc, as_json=as_json)
    if as_json:
        emit_json(found.as_dict())
        return
    _print(found)


def _print(d: Diagnosis) -> None:
    out = stdout()
    out.print(f"[bold]{escape(d.version_table)}[/bold]: {escape(', '.join(d.states))}")
    if not d.table_exists:
        out.print("  stored:  (the table does not exist)")
    elif d.stored is None:
        out.print("  stored:  (could not be read: locked)")
    else:
        out.print(f"  stored:  {escape(', '.join(d.stored) or '(no rows)')}")
    heads = ", ".join(d.heads) if d.heads is not None else "(unknown: pass --alembic-ini)"
    out.print(f"  heads:   {escape(heads)}")
    if d.pending:
        out.print(f"  pending: {escape(', '.join(d.pending))}")
    for lk in d.locks:
        who = "a prepared transaction" if lk.pid is None else f"pid {lk.pid}"
        verb = "holds" if lk.granted else "waits for"
        about = ", ".join(x for x in (lk.application_name, lk.session_state) if x)
        query = f": {(lk.query or '')[:80]}" if lk.query else ""
        out.print(f"  lock:    {escape(f'{who} {verb} {lk.mode} ({about}){query}')}")
    for f in d.findings:
        out.print(f"\n[bold]{escape(f.state)}[/bold]: {escape(f.detail)}")
    for j in d.dbchaos_faults:
        owner = "owner alive" if j.owner_alive else "owner gone: `dbchaos recover` restores it"
        where = "" if j.on_this_table else " (another object)"
        out.print(f"\ndbchaos fault {j.fault_id} ({j.kind}{where}, since {j.created_at}, {owner}):")
        for c in j.changes:
            out.print(f"  {escape(c)}")
    if d.repair:
        out.print("\n[bold]repair[/bold]:")
        for r in d.repair:
            out.print(f"  - {escape(r)}")
    else:
        out.print("\nnothing to repair")
