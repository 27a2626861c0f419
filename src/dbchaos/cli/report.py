"""``dbchaos report RUN.json``: re-render a run's HTML report from its journal."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from dbchaos import errors
from dbchaos.cli.common import fail_with, stdout
from dbchaos.reports.html import render_html
from dbchaos.reports.journal import load_journal


def report(
    journal: Annotated[Path, typer.Argument(help="A run journal (JSON) written by 'dbchaos run'.", show_default=False)],
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="Where to write the HTML.  [default: RUN.html beside it]")
    ] = None,
) -> None:
    """Render the self-contained HTML report of a run journal."""
    try:
        run = load_journal(journal)
    except errors.DbChaosError as exc:
        fail_with(exc)
    out = output or journal.with_suffix(".html")
    out.write_text(render_html(run))
    stdout().print(
        f"{escape(str(out))}: {run.verdict} ({len(run.tolerances)} tolerances, {len(run.findings)} findings)"
    )
