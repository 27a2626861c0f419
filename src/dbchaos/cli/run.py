"""``dbchaos run FILE``: run an experiment in the foreground and judge it.

Exit codes (DESIGN §3): 0 the hypothesis held, 1 it deviated (or a fault could not be
injected), 2 a bad file or flag, 3 the target is unreachable, 4 the run was halted (a halt
condition tripped, or Ctrl-C / SIGTERM). Every fault is reverted before it exits.
"""

from __future__ import annotations

import asyncio
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape

from dbchaos import errors
from dbchaos.cli import exits
from dbchaos.cli.common import emit_json, fail, fail_with, stderr, stdout
from dbchaos.engine.engine import Engine
from dbchaos.experiments.runner import ExperimentRunner, Progress
from dbchaos.experiments.spec import Experiment, ExperimentFileError, validate_experiment
from dbchaos.faults.migration.graph import RevisionGraph
from dbchaos.faults.registry import default_registry
from dbchaos.reports.journal import RunJournal
from dbchaos.settings import Settings
from dbchaos.targets import Target, check_target, describe_dsn
from dbchaos.targetsfile import load_targets_file


def run(
    file: Annotated[Path, typer.Argument(help="The experiment file (YAML).", show_default=False)],
    targets_file: Annotated[
        str | None, typer.Option(help="Targets file naming the experiment's target. Env: DBCHAOS_TARGETS_FILE.")
    ] = None,
    alembic_ini: Annotated[
        str | None, typer.Option(help="The application's alembic.ini (for migration faults on a DSN target).")
    ] = None,
    check: Annotated[bool, typer.Option("--check", help="Only validate the file; inject nothing.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the run journal as JSON at the end.")] = False,
) -> None:
    """Run an experiment: probes and an observer around a method of faults; judge the hypothesis."""
    settings = Settings.from_env()
    try:
        targets, graphs = _targets(targets_file or settings.targets_file, alembic_ini or settings.alembic_ini)
        exp = validate_experiment(file, known_targets=list(targets) or None, max_duration_s=settings.max_duration_s)
        target = _resolve(exp, targets, settings)
    except ExperimentFileError as exc:
        if as_json:
            emit_json({"error": {"detail": str(exc), "code": exc.code, "problems": exc.extra.get("problems")}})
        else:
            stderr().print(f"[red]error:[/red] {escape(str(exc))}")
        raise typer.Exit(exits.USAGE) from None
    except errors.DbChaosError as exc:
        fail_with(exc, as_json=as_json)
    if check:
        if as_json:
            emit_json({"ok": True, "experiment": exp.describe()})
        else:
            stdout().print(f"{escape(str(file))}: ok ({len(exp.method)} faults, {exp.total_s:g} s)")
        return
    graph = graphs.get(target.name)
    journal = asyncio.run(_run(exp, target, settings, graph, quiet=as_json))
    if as_json:
        emit_json(journal.to_dict())
    else:
        _summary(journal, exp)
    raise typer.Exit({"held": exits.OK, "deviated": exits.FAILED, "halted": exits.HALTED}[journal.verdict])


def _targets(path: str | None, alembic_ini: str | None) -> tuple[dict[str, Target], dict[str, RevisionGraph]]:
    if path:
        tf = load_targets_file(path)
        return dict(tf.targets), tf.load_graphs()
    graphs = {}
    if alembic_ini:
        graphs["default"] = RevisionGraph.from_alembic_ini(Path(alembic_ini))
    return {}, graphs


def _resolve(exp: Experiment, targets: dict[str, Target], settings: Settings) -> Target:
    ref = exp.target
    if ref.dsn is not None:
        return Target(settings.target_name, ref.dsn)
    if ref.name is not None and ref.name in targets:
        return targets[ref.name]
    if ref.name == settings.target_name and settings.target_dsn:
        return Target(settings.target_name, settings.target_dsn)
    raise errors.InvalidInput(
        f"{exp.source}:{ref.line or 1}: unknown target {ref.name!r}: give a DSN, or a name from --targets-file",
        field="target",
    )


async def _run(
    exp: Experiment, target: Target, settings: Settings, graph: RevisionGraph | None, *, quiet: bool
) -> RunJournal:
    check = await check_target(target)
    where = describe_dsn(target.dsn)
    if not check.reachable:
        fail(
            f"target {where} is unreachable: {check.problem}",
            exits.UNREACHABLE,
            as_json=quiet,
            error_code="target_unreachable",
        )
    if not check.usable:
        code = check.problem_code or "target_unusable"
        fail(f"target {where}: {check.problem}", exits.UNREACHABLE, as_json=quiet, error_code=code)
    engine = Engine(settings, {target.name: target}, default_registry(), graphs={target.name: graph} if graph else None)
    console = Console(stderr=True, highlight=False)
    runner = ExperimentRunner(exp, engine, target, progress=None if quiet else _printer(console))
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, runner.stop, f"stopped by {signal.Signals(sig).name}")
    try:
        return await runner.run()
    except errors.DbChaosError as exc:
        fail_with(exc, as_json=quiet)
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
        await engine.close()


def _printer(console: Console) -> Callable[[Progress], None]:
    last = {"phase": ""}

    def show(p: Progress) -> None:
        head = f"[{p.t:6.1f}s/{p.total_s:.0f}s] {p.phase:<9}"
        if p.message and p.message != last["phase"]:
            console.print(
                f"{head} {escape(p.message)}  (requests {p.requests}, errors {p.errors}, blocked {p.blocked})"
            )
        last["phase"] = p.message or last["phase"]

    return show


def _summary(journal: RunJournal, exp: Experiment) -> None:
    out = stdout()
    colour = {"held": "green", "deviated": "red", "halted": "yellow"}[journal.verdict]
    out.print(
        f"[bold]{escape(journal.title)}[/bold]: [{colour}]{journal.verdict}[/{colour}] ({journal.duration_s:.1f} s)"
    )
    for t in journal.tolerances:
        mark = "[green]✓[/green]" if t.held else "[red]✗[/red]"
        obs = "n/a" if t.observed is None else f"{t.observed:g}{t.unit}"
        who = t.probe or "database"
        out.print(f"  {mark} {escape(t.text)} [{t.phase}, {escape(who)}]: observed {obs} {escape(t.detail)}")
    for f in journal.findings:
        out.print(f"  • {escape(f)}")
    for path in (exp.report_json, exp.report_html):
        if path is not None:
            out.print(f"  report: {escape(str(path))}")
    sys.stdout.flush()
