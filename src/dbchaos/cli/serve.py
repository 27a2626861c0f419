"""``dbchaos serve``: the HTTP server, on a given target or on the embedded default."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
from dataclasses import replace
from types import FrameType
from typing import Annotated, NoReturn

import typer
import uvicorn
from rich.console import Console
from rich.markup import escape

from dbchaos import errors
from dbchaos.api.app import create_app
from dbchaos.api.auth import TokenStore, require_tokens_off_loopback
from dbchaos.cli import exits
from dbchaos.cli.common import load_graphs
from dbchaos.cli.init import opt_in_target
from dbchaos.cli.parsing import parse_duration
from dbchaos.embedded.sample import create_sample_database
from dbchaos.embedded.server import EmbeddedPostgres
from dbchaos.engine.model import EndReason
from dbchaos.settings import Settings
from dbchaos.targets import Target, describe_dsn, mask_dsn
from dbchaos.targetsfile import TargetsFile, load_targets_file
from dbchaos.webhooks import check_webhook_url


class _Terminated(Exception):
    """SIGTERM or SIGINT arrived outside the HTTP server's run: unwind so every ``finally``
    (embedded server stop) runs."""


class _Signals:
    """Signal policy of ``dbchaos serve``. The first SIGTERM or SIGINT stops it gracefully:
    every fault is reverted, then it exits 0. A second one while that is still going exits
    at once with 128 + the signal number (143 for SIGTERM, 130 for SIGINT), without waiting
    for a revert stuck behind someone's lock: PostgreSQL's server-side timeouts end the
    fault sessions, and the journal keeps what migration faults changed, which the next
    dbchaos to start on that database (or ``dbchaos recover``) reverts. An embedded
    PostgreSQL gets SIGQUIT from the kernel when dbchaos exits."""

    def __init__(self) -> None:
        self.stopping = False

    def first(self, signum: int) -> None:
        self.stopping = True
        _say(
            f"dbchaos: {signal.Signals(signum).name} received: reverting every fault before exiting "
            "(send it again to exit at once)"
        )

    def force(self, signum: int) -> NoReturn:
        _say(
            f"dbchaos: second {signal.Signals(signum).name}: exiting now (status {128 + signum}) without "
            "finishing the revert; PostgreSQL's timeouts end dbchaos's sessions, and the next dbchaos started on "
            "the target (or `dbchaos recover --target DSN`) reverts what the journal still holds"
        )
        os._exit(128 + signum)

    def handle(self, signum: int, frame: FrameType | None) -> None:
        """The handler outside uvicorn's run (start-up, embedded PostgreSQL stop)."""
        if self.stopping:
            self.force(signum)
        self.first(signum)
        raise _Terminated()


def _say(line: str) -> None:
    """One line on stderr from a signal handler: a raw write (no buffer, no lock to re-enter)."""
    with contextlib.suppress(OSError):
        os.write(2, (line + "\n").encode())


class _Server(uvicorn.Server):
    """uvicorn, with :class:`_Signals` deciding what a signal does."""

    def __init__(self, config: uvicorn.Config, signals: _Signals) -> None:
        super().__init__(config)
        self.signals = signals

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if self.signals.stopping:
            self.signals.force(sig)
        self.signals.first(sig)
        # not super(): uvicorn would re-raise the signal once it stopped, and a second SIGINT
        # would only skip waiting for open connections, not for the revert
        self.should_exit = True


def serve(
    target: Annotated[
        str | None,
        typer.Option(
            help="DSN of the target database (with --targets-file: a target's name). "
            "Default: start an embedded PostgreSQL with sample data."
        ),
    ] = None,
    host: Annotated[str | None, typer.Option(help="Address to listen on.  [default: 127.0.0.1]")] = None,
    port: Annotated[int | None, typer.Option(help="Port to listen on.  [default: 8080]")] = None,
    alembic_ini: Annotated[
        str | None, typer.Option(help="The application's alembic.ini (its revision graph, for migration faults).")
    ] = None,
    tokens_file: Annotated[
        str | None,
        typer.Option(
            help="TOML file of bearer tokens (make entries with 'dbchaos token create'); "
            "required to listen on a non-loopback address. Env: DBCHAOS_TOKENS_FILE.",
        ),
    ] = None,
    audit_log: Annotated[
        str | None,
        typer.Option(
            help="Append the audit trail (JSON lines: requests and statements, docs/audit.md) to this file; "
            "without it only the last events are kept, in memory (GET /v1/audit). Env: DBCHAOS_AUDIT_LOG.",
        ),
    ] = None,
    targets_file: Annotated[
        str | None,
        typer.Option(
            help="TOML file of named targets and their limits (docs/targets.md); --target then picks the default "
            "by name. Env: DBCHAOS_TARGETS_FILE.",
        ),
    ] = None,
    webhook: Annotated[
        list[str] | None,
        typer.Option(
            "--webhook",
            help="POST every fault (and experiment) event as JSON to this URL (repeatable; docs/events.md). "
            "Env: DBCHAOS_WEBHOOKS (space-separated).",
        ),
    ] = None,
    halt_max_blocked: Annotated[
        int | None,
        typer.Option(
            help="Halt rule (docs/guard-rails.md): revert every fault on a target once more than N sessions are "
            "blocked behind its faults. For targets without their own [targets.NAME.halt] value. "
            "Env: DBCHAOS_HALT_MAX_BLOCKED_SESSIONS.",
            min=0,
        ),
    ] = None,
    halt_max_blocked_for: Annotated[
        str | None,
        typer.Option(
            help="Halt rule: revert every fault on a target once a session has waited longer than this on one of "
            "them (e.g. 30s). Env: DBCHAOS_HALT_MAX_BLOCKED_FOR_S (seconds).",
        ),
    ] = None,
    halt_max_fault_age: Annotated[
        str | None,
        typer.Option(
            help="Halt rule: revert every fault on a target once one of them has been active longer than this "
            "(e.g. 10m). Env: DBCHAOS_HALT_MAX_FAULT_AGE_S (seconds).",
        ),
    ] = None,
    halt_max_connections_pct: Annotated[
        float | None,
        typer.Option(
            help="Halt rule: revert every fault on a target once more than this percentage of the server's "
            "max_connections is in use. Env: DBCHAOS_HALT_MAX_CONNECTIONS_USED_PCT.",
        ),
    ] = None,
    dangerously_skip_opt_in: Annotated[
        bool,
        typer.Option(
            "--dangerously-skip-opt-in",
            help="DANGEROUS: inject faults into databases that never opted in with 'dbchaos init'.",
        ),
    ] = False,
) -> None:
    """Serve the dbchaos HTTP API (docs at /docs). SIGTERM or Ctrl-C reverts every fault, then exits 0;
    a second one exits at once (status 143 / 130), leaving the rest to PostgreSQL's timeouts and the journal."""
    err = Console(stderr=True, soft_wrap=True)
    out = Console(soft_wrap=True, highlight=False)
    try:
        settings = Settings.from_env().with_overrides(
            host=host,
            port=port,
            target_dsn=target,
            alembic_ini=alembic_ini,
            tokens_file=tokens_file,
            audit_log=audit_log,
            halt_max_blocked_sessions=halt_max_blocked,
            halt_max_blocked_for_s=None
            if halt_max_blocked_for is None
            else parse_duration(halt_max_blocked_for, "halt_max_blocked_for"),
            halt_max_fault_age_s=None
            if halt_max_fault_age is None
            else parse_duration(halt_max_fault_age, "halt_max_fault_age"),
            halt_max_connections_used_pct=halt_max_connections_pct,
            webhooks=tuple(webhook) if webhook else None,
        )
        settings.validate()
        for url in settings.webhooks:
            check_webhook_url(url)
        tokens = TokenStore.load(settings.tokens_file)
        require_tokens_off_loopback(settings.host, tokens)
        settings, file_targets = _targets_file(settings.with_overrides(targets_file=targets_file), target)
        if dangerously_skip_opt_in:
            settings = settings.with_overrides(allow_not_opted_in=True)
        graphs = {**load_graphs(settings), **(file_targets.load_graphs() if file_targets else {})}
    except errors.DbChaosError as exc:
        err.print(f"[red]error:[/red] {escape(exc.message)}")
        raise typer.Exit(exits.USAGE) from None

    signals = _Signals()
    previous = {s: signal.signal(s, signals.handle) for s in (signal.SIGTERM, signal.SIGINT)}
    embedded: EmbeddedPostgres | None = None
    try:
        dsn = file_targets.targets[settings.target_name].dsn if file_targets else settings.target_dsn
        if dsn is None:
            err.print("starting the embedded PostgreSQL …")
            embedded = EmbeddedPostgres().start()
            dsn = create_sample_database(embedded.dsn)
            err.print(
                f"embedded PostgreSQL {embedded.binaries.version} ready on "
                f"127.0.0.1:{embedded.port} with sample tables items, users, orders"
            )
            asyncio.run(opt_in_target(Target(settings.target_name, dsn), "the embedded default (dbchaos serve)"))
        targets = (
            dict(file_targets.targets) if file_targets else {settings.target_name: Target(settings.target_name, dsn)}
        )
        if settings.allow_not_opted_in:
            err.print(
                "[bold red]WARNING: --dangerously-skip-opt-in: dbchaos will inject faults into databases that never "
                "opted in (no dbchaos.opt_in marker). Use it only on a database you own.[/bold red]"
            )
            logging.getLogger("dbchaos").warning("--dangerously-skip-opt-in: the opt-in check is off")
        app = create_app(settings, targets, graphs=graphs, tokens=tokens)
        err.print(
            f"auth: {len(tokens.entries)} token(s) from {escape(str(settings.tokens_file))}; "
            "every endpoint but /v1/health needs one"
            if tokens
            else "auth: off (no tokens configured; loopback only)"
        )
        asyncio.run(_serve(app, settings, dsn, out, embedded is not None, signals))
    except (KeyboardInterrupt, _Terminated):
        pass
    except errors.DbChaosError as exc:
        err.print(f"[red]error:[/red] {exc.message}")
        raise typer.Exit(exits.code_for(exc)) from None
    finally:
        if embedded is not None:
            err.print("stopping the embedded PostgreSQL …")
            embedded.stop()
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def _targets_file(settings: Settings, target: str | None) -> tuple[Settings, TargetsFile | None]:
    """Settings and targets from the targets file, if one is configured; ``--target`` then
    names the default target (a DSN with a targets file is a usage error)."""
    if not settings.targets_file:
        return settings, None
    if settings.target_dsn is not None and target is None:
        raise errors.InvalidInput("both DBCHAOS_TARGET_DSN and a targets file are set; unset one", field="target")
    found = load_targets_file(settings.targets_file)
    default = found.default
    if target is not None:
        if target not in found.targets:
            raise errors.InvalidInput(
                f"with --targets-file, --target names one of its targets ({', '.join(sorted(found.targets))})",
                field="target",
            )
        default = target
    chosen = replace(
        settings,
        target_dsn=None,
        target_name=default,
        allow_ad_hoc_targets=found.allow_ad_hoc_targets,
        webhooks=settings.webhooks + found.webhooks,
    )
    return chosen, found


async def _serve(app: object, settings: Settings, dsn: str, out: Console, embedded: bool, signals: _Signals) -> None:
    config = uvicorn.Config(
        app,  # type: ignore[arg-type]
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        access_log=False,
        lifespan="on",
    )
    server = _Server(config, signals)
    task = asyncio.create_task(server.serve())
    streams = asyncio.create_task(_end_streams_on_exit(server, app))
    while not server.started and not task.done():
        await asyncio.sleep(0.05)
    if server.started:
        url = f"http://{settings.host}:{settings.port}"
        out.print(f"dbchaos serving on [bold]{url}[/bold]  (API docs: {url}/docs)")
        out.print(f"target {settings.target_name!r}: {mask_dsn(dsn)}")
        if embedded:
            out.print(f"  connect with: psql '{dsn}'")
        out.print(f"try:  curl {url}/v1/health")
        out.print("Ctrl-C stops the server" + (" and the embedded PostgreSQL" if embedded else ""))
        logging.getLogger("dbchaos").info("target %s", describe_dsn(dsn))
    await task
    streams.cancel()
    if not server.started:
        sys.exit(exits.FAILED)


async def _end_streams_on_exit(server: uvicorn.Server, app: object) -> None:
    """Once the server is asked to stop, revert every fault, then end the open
    ``/v1/events`` streams. uvicorn waits for every open response before the lifespan
    shutdown (which would revert the faults), so an event stream must end first; reverting
    before that lets the streams carry each fault's final ``shutdown`` event."""
    while not server.should_exit:
        await asyncio.sleep(0.1)
    state = getattr(app, "state", None)
    ctx = getattr(state, "ctx", None)
    if ctx is not None:
        try:
            await ctx.engine.reset(EndReason.SHUTDOWN)
        finally:
            ctx.engine.events.end_streams()
