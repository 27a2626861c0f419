"""The ``dbchaos`` command."""

from __future__ import annotations

import typer

from dbchaos.cli import cleanup, init, inject, kinds, lab, migrations, recover, remote, report, run, serve, tokens

app = typer.Typer(
    name="dbchaos",
    help="A chaos server for PostgreSQL-backed services: bounded, observable, reversible faults.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
app.command("serve")(serve.serve)
app.command("lab")(lab.lab)
app.command("inject")(inject.inject)
app.command("kinds")(kinds.kinds)
app.command("status")(remote.status)
app.command("abort")(remote.abort)
app.command("reset")(remote.reset)
app.command("recover")(recover.recover)
app.command("cleanup")(cleanup.cleanup)
app.command("run")(run.run)
app.command("report")(report.report)
app.command("init")(init.init)
app.add_typer(migrations.app, name="migrations")
app.add_typer(tokens.app, name="token")


@app.callback()
def _root() -> None:
    """dbchaos: inject the database faults behind real outages, and put everything back."""


def main() -> None:
    app()
