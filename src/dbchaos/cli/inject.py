"""``dbchaos inject KIND``: one fault in the foreground, with a live view of its damage
(or, with ``--dry-run``, what it would run, lock and block)."""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import Callable
from typing import Annotated, Any

import typer
from rich.console import Group, RenderableType
from rich.live import Live
from rich.table import Table
from rich.text import Text

from dbchaos import errors
from dbchaos.api.schemas import fault_view
from dbchaos.cli import exits
from dbchaos.cli.common import emit_json, fail_with, resolve_target, stderr, stdout
from dbchaos.cli.parsing import parse_duration, parse_params
from dbchaos.cli.render import blocked_lines, live_view, summary
from dbchaos.engine.engine import Engine, FaultRequest
from dbchaos.engine.model import FaultRecord, State
from dbchaos.faults.registry import default_registry
from dbchaos.observe.activity import Impact
from dbchaos.settings import Settings

Show = Callable[[FaultRecord, Impact | None], None]

REFRESH_S = 0.5


def inject(
    kind: Annotated[str, typer.Argument(help="Fault kind (see `dbchaos kinds`).")],
    target: Annotated[str | None, typer.Option(help="Target DSN or name.  [default: $DBCHAOS_TARGET_DSN]")] = None,
    duration: Annotated[str, typer.Option("--for", help="How long to hold it: 500ms, 30s, 5m, 1h.")] = "60s",
    param: Annotated[
        list[str] | None, typer.Option("--param", "-p", help="key=value (JSON where it parses; repeat for lists).")
    ] = None,
    params_json: Annotated[str | None, typer.Option(help="All parameters as one JSON object.")] = None,
    acquire_timeout: Annotated[str, typer.Option(help="How long to wait for the lock (0 = don't wait).")] = "5s",
    as_json: Annotated[bool, typer.Option("--json", help="Print the final fault as JSON.")] = False,
    dry_run: Annotated[
        bool,
        typer.Option("--dry-run", help="Check the request and show the SQL, locks and blast radius; change nothing."),
    ] = False,
) -> None:
    """Inject one fault, show what it holds and whom it blocks, and revert it at the
    deadline or on Ctrl-C. With --dry-run, only show what it would do."""
    registry = default_registry()
    try:
        settings = Settings.from_env()
        tgt = resolve_target(target, settings)
        cls = registry.get(kind)
        params = parse_params(param or [], params_json, cls.params_model.model_json_schema())
        req = FaultRequest(
            kind,
            params,
            parse_duration(duration, "--for"),
            tgt.name,
            parse_duration(acquire_timeout, "--acquire-timeout"),
        )
    except errors.DbChaosError as exc:
        fail_with(exc, as_json=as_json)
    engine = Engine(settings, {tgt.name: tgt}, registry)
    if dry_run:
        try:
            plan = asyncio.run(_dry_run(engine, req))
        except errors.DbChaosError as exc:
            fail_with(exc, as_json=as_json)
        if as_json:
            emit_json(plan)
        else:
            stdout().print(dry_run_view(plan))
        return
    try:
        rec = asyncio.run(_run(engine, req, as_json))
    except errors.DbChaosError as exc:
        fail_with(exc, as_json=as_json)
    if as_json:
        emit_json(fault_view(rec))
    else:
        stdout().print(summary(rec))
    if rec.state is State.FAILED:
        raise typer.Exit(exits.UNREACHABLE if rec.error_code == "target_unreachable" else exits.FAILED)
    if rec.state is State.LOST:
        raise typer.Exit(exits.FAILED)


async def _dry_run(engine: Engine, req: FaultRequest) -> dict[str, Any]:
    try:
        return (await engine.dry_run(req)).as_dict()
    finally:
        await engine.close()


def _table(title: str, *columns: str) -> Table:
    table = Table(title=title, title_justify="left", show_edge=False)
    for col in columns:
        table.add_column(col)
    return table


def _on(lock: dict[str, Any]) -> str:
    if lock.get("relation"):
        rows = f" ({lock['rows']} rows)" if lock["locktype"] == "rows" else ""
        return str(lock["relation"]) + rows
    if "key" in lock:
        return f"key {lock['key']}"
    if "count" in lock:
        return f"{lock['count']} slots"
    return ""


def _parties(title: str, parties: list[dict[str, Any]]) -> RenderableType:
    if not parties:
        return Text(f"{title}: none")
    table = _table(f"{title}: {len(parties)}", "pid", "application", "user", "state", "mode", "certainty", "query")
    for p in parties:
        table.add_row(
            str(p["pid"]),
            p.get("application_name") or "",
            p.get("user") or "",
            p.get("state") or "",
            p.get("mode") or "",
            p["certainty"],
            (p.get("query") or "")[:60],
        )
    return table


def dry_run_view(plan: dict[str, Any]) -> RenderableType:
    """A dry run for a terminal: what would run, what it would lock, who is in the way."""
    params = ", ".join(f"{k}={v}" for k, v in plan["params"].items())
    parts: list[RenderableType] = [
        Text.assemble(
            ("dry run: ", "bold"),
            f"{plan['kind']} on {plan['target']!r} ({params}) for {plan['duration_s']:g}s",
            ("  nothing was changed", "green"),
        )
    ]
    statements = _table("statements", "#", "session", "phase", "sql")
    for i, st in enumerate(plan["statements"], 1):
        session = st["session"] + (f" x{st['sessions']}" if st.get("sessions") else "")
        statements.add_row(str(i), session, st["phase"], st["sql"])
    parts.append(statements)
    locks = _table("locks", "phase", "session", "lock", "mode", "on", "note")
    for lk in plan["locks"][:50]:
        mode = lk["mode"] + ("" if lk.get("granted", True) else " (queued)")
        locks.add_row(lk["phase"], lk["session"], lk["locktype"], mode, _on(lk), lk.get("note") or "")
    if len(plan["locks"]) > 50:
        locks.add_row("…", "", f"{len(plan['locks']) - 50} more", "", "", "")
    parts.append(locks)
    radius = plan["blast_radius"]
    parts.append(_parties("in the way now (the inject would wait for them)", radius["in_the_way"]))
    parts.append(_parties("would block", radius["would_block"]))
    for c in radius.get("clients") or []:
        parts.append(Text(f"connected: {c['sessions']} x {c['application_name']!r} ({c['user']}@{c['database']})"))
    for note in [*radius["notes"], *plan["notes"]]:
        parts.append(Text(f"note: {note}", style="dim"))
    return Group(*parts)


async def _run(engine: Engine, req: FaultRequest, quiet: bool) -> FaultRecord:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    err = stderr()
    try:
        rec = await engine.create(req, wait=False)
        if not quiet:
            err.print(f"injecting {rec.kind} ({rec.id}) …")
        if err.is_terminal and not quiet:
            with Live(live_view(rec, None), console=err, refresh_per_second=4, transient=True) as live:
                await _watch(engine, rec, stop, lambda r, i: live.update(live_view(r, i)), quiet)
        else:
            seen: set[int] = set()

            def plain(r: FaultRecord, impact: Impact | None) -> None:
                # not a terminal (a pipe, a log, CI): print each newly blocked session once
                if quiet or impact is None:
                    return
                for b, line in zip(impact.blocked, blocked_lines(impact), strict=True):
                    if b.session.pid not in seen:
                        seen.add(b.session.pid)
                        err.print(line)

            await _watch(engine, rec, stop, plain, quiet)
        return rec
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
        await engine.close()


async def _watch(engine: Engine, rec: FaultRecord, stop: asyncio.Event, show: Show, quiet: bool) -> None:
    announced = False
    while not rec.state.finished:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(REFRESH_S):
                await stop.wait()
        if stop.is_set():
            await engine.abort(rec.id)
            break
        if rec.state is State.ACTIVE and not announced and not quiet:
            announced = True
            stderr().print(f"active: {rec.kind} holds for {rec.duration_s:g}s; Ctrl-C reverts now")
        impact = (await engine.impacts([rec])).get(rec.id)
        show(rec, impact)
