"""``dbchaos inject KIND``: one fault in the foreground, with a live view of its damage."""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import Callable
from typing import Annotated

import typer
from rich.live import Live

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
) -> None:
    """Inject one fault, show what it holds and whom it blocks, and revert it at the
    deadline or on Ctrl-C."""
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
