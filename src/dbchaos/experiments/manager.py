"""Experiments run by the server (``POST /v1/experiments``): started in the background,
listed, stopped, and announced on the engine's event bus (topic ``experiment``)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

from dbchaos import errors
from dbchaos.engine.engine import Engine
from dbchaos.events import TOPIC_EXPERIMENT
from dbchaos.experiments.runner import ExperimentRunner, Progress
from dbchaos.experiments.spec import Experiment
from dbchaos.reports.journal import RunJournal
from dbchaos.targets import Target

_log = logging.getLogger("dbchaos.experiments")

#: finished runs kept for GET (oldest dropped first)
MAX_FINISHED = 50
#: experiments running at once on one server
MAX_RUNNING = 4


@dataclass
class ExperimentRun:
    runner: ExperimentRunner
    labels: dict[str, str]
    created_at: float = field(default_factory=time.time)
    state: str = "running"  # running | held | deviated | halted | failed
    error: str | None = None
    journal: RunJournal | None = None
    last_progress: Progress | None = None
    task: asyncio.Task[None] | None = None

    @property
    def id(self) -> str:
        return self.runner.id

    def view(self, *, full: bool = False) -> dict[str, Any]:
        exp = self.runner.experiment
        out: dict[str, Any] = {
            "id": self.id,
            "name": exp.name,
            "target": self.runner.target.name,
            "state": self.state,
            "labels": self.labels,
            "created_at": self.created_at,
            "error": self.error,
            "total_s": exp.total_s,
        }
        p = self.last_progress
        if p is not None:
            out["progress"] = {
                "t": round(p.t, 2),
                "phase": p.phase,
                "requests": p.requests,
                "errors": p.errors,
                "blocked": p.blocked,
            }
        if self.journal is not None:
            out["verdict"] = self.journal.verdict
            out["findings"] = self.journal.findings
            if full:
                out["journal"] = self.journal.to_dict()
        return out


class ExperimentManager:
    """The server's experiments; one per app (never module state)."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._runs: OrderedDict[str, ExperimentRun] = OrderedDict()

    def get(self, run_id: str) -> ExperimentRun:
        run = self._runs.get(run_id)
        if run is None:
            raise errors.NotFound(f"no experiment with id {run_id!r}", code="unknown_experiment")
        return run

    def all(self) -> list[ExperimentRun]:
        return list(reversed(self._runs.values()))

    async def start(self, experiment: Experiment, target: Target, labels: dict[str, str]) -> ExperimentRun:
        running = sum(r.state == "running" for r in self._runs.values())
        if running >= MAX_RUNNING:
            raise errors.CapacityReached(
                f"{running} experiments are already running (at most {MAX_RUNNING}); stop one first",
                code="too_many_experiments",
            )
        run = ExperimentRun(ExperimentRunner(experiment, self.engine, target), labels)
        run.runner.progress = lambda p: self._progress(run, p)
        await run.runner.preflight()  # 403 now, not in the background, for a target that has not opted in
        self._runs[run.id] = run
        self._trim()
        self._publish(run, "started")
        run.task = asyncio.create_task(self._run(run), name=f"experiment {run.id}")
        return run

    async def _run(self, run: ExperimentRun) -> None:
        try:
            run.journal = await run.runner.run()
            run.state = run.journal.verdict
        except errors.DbChaosError as exc:
            run.state, run.error = "failed", exc.message
        except Exception as exc:  # the run must end in a state, whatever went wrong
            _log.exception("experiment %s failed", run.id)
            run.state, run.error = "failed", f"{type(exc).__name__}: {exc}"
        self._publish(run, run.state)

    def stop(self, run_id: str) -> ExperimentRun:
        run = self.get(run_id)
        if run.state == "running":
            run.runner.stop("stopped through the API")
        return run

    def _progress(self, run: ExperimentRun, p: Progress) -> None:
        previous = run.last_progress
        run.last_progress = p
        if p.message and (previous is None or previous.message != p.message) and p.message.startswith("halted"):
            self._publish(run, "halted", message=p.message)

    def _publish(self, run: ExperimentRun, event: str, **extra: Any) -> None:
        data = {"event": event, **run.view(), **extra}
        self.engine.events.publish(TOPIC_EXPERIMENT, data)

    def _trim(self) -> None:
        finished = [k for k, r in self._runs.items() if r.state != "running"]
        for k in finished[: max(0, len(finished) - MAX_FINISHED)]:
            del self._runs[k]

    async def close(self) -> None:
        """Stop every running experiment and wait for it to revert (server shutdown)."""
        for run in self._runs.values():
            if run.state == "running":
                run.runner.stop("the server is shutting down")
        tasks = [r.task for r in self._runs.values() if r.task is not None and not r.task.done()]
        if tasks:
            with contextlib.suppress(Exception):
                await asyncio.wait(tasks, timeout=30)
