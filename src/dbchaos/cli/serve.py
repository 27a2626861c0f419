"""``dbchaos serve``: the HTTP server, on a given target or on the embedded default."""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
from types import FrameType
from typing import Annotated

import typer
import uvicorn
from rich.console import Console

from dbchaos import errors
from dbchaos.api.app import create_app
from dbchaos.cli import exits
from dbchaos.cli.common import load_graphs
from dbchaos.embedded.sample import create_sample_database
from dbchaos.embedded.server import EmbeddedPostgres
from dbchaos.settings import Settings
from dbchaos.targets import Target, describe_dsn, mask_dsn


class _Terminated(Exception):
    """SIGTERM arrived: unwind so every ``finally`` (embedded server stop) runs."""


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise _Terminated()


def serve(
    target: Annotated[
        str | None,
        typer.Option(help="DSN of the target database. Default: start an embedded PostgreSQL with sample data."),
    ] = None,
    host: Annotated[str | None, typer.Option(help="Address to listen on.  [default: 127.0.0.1]")] = None,
    port: Annotated[int | None, typer.Option(help="Port to listen on.  [default: 8080]")] = None,
    alembic_ini: Annotated[
        str | None, typer.Option(help="The application's alembic.ini (its revision graph, for migration faults).")
    ] = None,
) -> None:
    """Serve the dbchaos HTTP API (docs at /docs)."""
    err = Console(stderr=True, soft_wrap=True)
    out = Console(soft_wrap=True, highlight=False)
    try:
        settings = Settings.from_env().with_overrides(host=host, port=port, target_dsn=target, alembic_ini=alembic_ini)
        settings.validate()
        graphs = load_graphs(settings)
    except errors.DbChaosError as exc:
        err.print(f"[red]error:[/red] {exc.message}")
        raise typer.Exit(exits.USAGE) from None

    previous = signal.signal(signal.SIGTERM, _on_sigterm)
    embedded: EmbeddedPostgres | None = None
    try:
        dsn = settings.target_dsn
        if dsn is None:
            err.print("starting the embedded PostgreSQL …")
            embedded = EmbeddedPostgres().start()
            dsn = create_sample_database(embedded.dsn)
            err.print(
                f"embedded PostgreSQL {embedded.binaries.version} ready on "
                f"127.0.0.1:{embedded.port} with sample tables items, users, orders"
            )
        targets = {settings.target_name: Target(settings.target_name, dsn)}
        app = create_app(settings, targets, graphs=graphs)
        asyncio.run(_serve(app, settings, dsn, out, embedded is not None))
    except (KeyboardInterrupt, _Terminated):
        pass
    except errors.DbChaosError as exc:
        err.print(f"[red]error:[/red] {exc.message}")
        raise typer.Exit(exits.code_for(exc)) from None
    finally:
        if embedded is not None:
            err.print("stopping the embedded PostgreSQL …")
            embedded.stop()
        signal.signal(signal.SIGTERM, previous)


async def _serve(app: object, settings: Settings, dsn: str, out: Console, embedded: bool) -> None:
    config = uvicorn.Config(
        app,  # type: ignore[arg-type]
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        access_log=False,
        lifespan="on",
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
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
    if not server.started:
        sys.exit(exits.FAILED)
