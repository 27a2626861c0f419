"""``dbchaos lab``: the chaos lab on this machine (embedded PostgreSQL, demo shop, traffic,
chaos server and dashboard), until Ctrl-C."""

from __future__ import annotations

import sys
from typing import Annotated

import typer
from rich.markup import escape

from dbchaos import errors
from dbchaos.cli import exits
from dbchaos.cli.common import fail_with, stderr
from dbchaos.lab.demo.config import Mode
from dbchaos.lab.runner import DEFAULT_PORT, LAB_POOL_TIMEOUT_S, LabOptions, run_lab


def lab(
    port: Annotated[int, typer.Option(help="Port of the dashboard and the chaos API.")] = DEFAULT_PORT,
    no_traffic: Annotated[
        bool, typer.Option("--no-traffic", help="Do not send synthetic traffic to the demo shop.")
    ] = False,
    mode: Annotated[Mode, typer.Option(help="The demo shop's configuration at start.")] = Mode.NAIVE,
    pool_timeout: Annotated[
        float,
        typer.Option(help="The naive shop's pool timeout in seconds (SQLAlchemy's default is 30).", min=0.1, max=300),
    ] = LAB_POOL_TIMEOUT_S,
    rate: Annotated[float, typer.Option(help="Traffic: requests per second.", min=0.5, max=200)] = 20.0,
    die_with_lab: Annotated[
        bool,
        typer.Option(hidden=True, help="Children get SIGKILL/SIGQUIT from the kernel when the lab dies (tests only)."),
    ] = True,
) -> None:
    """Start the chaos lab: an embedded PostgreSQL with a demo shop under steady traffic, the
    chaos server, and a dashboard to break it, watch it and repair it. Ctrl-C stops everything."""
    err = stderr()
    options = LabOptions(
        port=port,
        traffic=not no_traffic,
        mode=mode,
        pool_timeout_s=pool_timeout,
        rate=rate,
        die_with_lab=die_with_lab,
    )

    def say(line: str) -> None:
        err.print(escape(line))

    def announce(line: str) -> None:
        sys.stdout.write(line + "\n")
        sys.stdout.flush()

    try:
        run_lab(options, say, announce)
    except errors.DbChaosError as exc:
        fail_with(exc)
    except SystemExit as exc:  # uvicorn could not serve (it logged why)
        raise typer.Exit(exits.FAILED) from exc
