"""Running an experiment: baseline, method, recovery — observed, probed, judged, always reverted.

::

    baseline_s        method (faults at their offsets)          recovery_s
    |-----------------|------------------------------------------|-------------|
    probes + observer run throughout; halt conditions checked 4 times a second

Every fault goes through the engine (the same path as ``POST /v1/faults``), so deadlines,
journaling and crash safety are the engine's; the runner only decides *when*. Whatever happens
— a halt, Ctrl-C, an exception — every fault the run created is reverted before ``run`` returns.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
import psycopg

from dbchaos import errors
from dbchaos.engine.engine import Engine, FaultRequest
from dbchaos.engine.model import EndReason, FaultRecord
from dbchaos.experiments.conditions import Condition
from dbchaos.experiments.spec import Experiment, FaultStep
from dbchaos.experiments.verdict import evaluate, observer_metric, probe_metric
from dbchaos.observe.sampler import Observer
from dbchaos.observe.sampler import Phase as ObsPhase
from dbchaos.observe.sampler import Sample as ObsSample
from dbchaos.probes.base import Probe, ProbeRun
from dbchaos.probes.base import ProbeResult as RawResult
from dbchaos.reports.findings import all_findings
from dbchaos.reports.html import render_html
from dbchaos.reports.journal import (
    FaultWindow,
    Halt,
    Phase,
    ProbeInfo,
    ProbeResult,
    RunJournal,
    Sample,
    ToleranceResult,
)
from dbchaos.targets import Target

_log = logging.getLogger("dbchaos.experiments")

HALT_CHECK_INTERVAL_S = 0.25
#: a halt condition on a probe metric without ``over``: the last this many seconds of requests
DEFAULT_HALT_WINDOW_S = 5.0
#: how long stopping probes wait for requests still in flight
PROBE_DRAIN_S = 10.0
#: committed checks: at most this many failed requests per probe, this many at once
MAX_COMMIT_CHECKS = 1000
COMMIT_CHECK_CONCURRENCY = 10
COMMIT_CHECK_TIMEOUT_S = 5.0


@dataclass(frozen=True)
class Progress:
    """What the runner reports as it goes (for a progress display, or events)."""

    t: float
    total_s: float
    phase: str
    message: str | None = None
    requests: int = 0
    errors: int = 0
    blocked: int = 0


ProgressCallback = Callable[[Progress], None]


@dataclass
class _Live:
    results: list[tuple[float, RawResult]] = field(default_factory=list)
    errors: int = 0
    samples: list[ObsSample] = field(default_factory=list)


class ExperimentRunner:
    """One run of one experiment against one target, through ``engine``."""

    def __init__(
        self,
        experiment: Experiment,
        engine: Engine,
        target: Target,
        *,
        run_id: str | None = None,
        progress: ProgressCallback | None = None,
    ) -> None:
        self.experiment = experiment
        self.engine = engine
        self.target = target
        self.id = run_id or uuid.uuid4().hex[:12]
        self.progress = progress
        self.phase = "pending"
        self._stop = asyncio.Event()
        self._halt: Halt | None = None
        self._t0 = 0.0
        self._wall0 = 0.0
        self._live = _Live()
        self._faults: dict[int, FaultRecord] = {}
        self._fault_errors: dict[int, str] = {}

    # ------------------------------------------------------------------ control
    def stop(self, reason: str = "stopped by the operator") -> None:
        """End the run early (everything is reverted); the journal records it as a halt."""
        if self._halt is None:
            self._halt = Halt(reason, 0.0, self._now())
        self._stop.set()

    def _now(self) -> float:
        return time.monotonic() - self._t0 if self._t0 else 0.0

    async def _sleep_until(self, t: float) -> None:
        delay = t - self._now()
        if delay > 0 and not self._stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), delay)

    def _tell(self, message: str | None = None) -> None:
        if self.progress is None:
            return
        blocked = 0
        if self._live.samples and self._live.samples[-1].observation is not None:
            blocked = self._live.samples[-1].observation.waiting_count
        try:
            self.progress(
                Progress(
                    self._now(),
                    self.experiment.total_s,
                    self.phase,
                    message,
                    len(self._live.results),
                    self._live.errors,
                    blocked,
                )
            )
        except Exception:
            _log.exception("progress callback failed (ignored)")

    # ------------------------------------------------------------------ run
    async def preflight(self) -> None:
        """Refuse before anything starts where no fault could run (a target that has not opted in)."""
        await self.engine.require_opt_in(self.target, self.engine.channel(self.target))

    async def run(self) -> RunJournal:
        """Run the experiment and return its journal (also written where the file says)."""
        exp = self.experiment
        await self.preflight()
        probes: list[Probe] = [p.build(self.target.dsn) for p in exp.probes]
        observer = Observer(
            self.target,
            instance=self.engine.instance,
            rate_hz=exp.observer_rate_hz,
            on_sample=self._live.samples.append,
        )
        self._t0, self._wall0 = time.monotonic(), time.time()
        probe_stop = asyncio.Event()
        opened: list[Probe] = []
        probe_tasks: list[asyncio.Task[ProbeRun]] = []
        fault_tasks: list[asyncio.Task[None]] = []
        halt_task: asyncio.Task[None] | None = None
        obs_started = False
        runs: list[ProbeRun] = []
        try:
            await observer.start()
            obs_started = True
            for p in probes:
                await p.open()
                opened.append(p)
            for p in probes:
                probe_tasks.append(
                    asyncio.create_task(
                        p.run(stop=probe_stop, on_result=self._on_result, drain_timeout_s=PROBE_DRAIN_S)
                    )
                )
            halt_task = asyncio.create_task(self._watch_halts())
            self.phase = "baseline"
            self._tell("baseline")
            await self._sleep_until(exp.baseline_s)
            if not self._stop.is_set():
                self.phase = "method"
                observer.mark(ObsPhase.FAULT, label="method")
                self._tell("method")
                fault_tasks = [asyncio.create_task(self._fault(step)) for step in exp.method]
                waiter: asyncio.Future[Any] = asyncio.gather(*fault_tasks)
                stopper: asyncio.Future[Any] = asyncio.ensure_future(self._stop.wait())
                await asyncio.wait([waiter, stopper], return_when=asyncio.FIRST_COMPLETED)
                stopper.cancel()
            await self._revert_all()
            if fault_tasks:
                await asyncio.gather(*fault_tasks, return_exceptions=True)
            self.phase = "recovery"
            observer.mark(ObsPhase.RECOVERY)
            self._tell("recovery")
            if not self._stop.is_set():
                end = max((self._end_t(i) or 0.0 for i in self._faults), default=self._now())
                await self._sleep_until(end + exp.recovery_s)
        finally:
            if halt_task is not None:
                halt_task.cancel()
            for task in fault_tasks:
                task.cancel()
            await self._revert_all()
            probe_stop.set()
            for probe_task in probe_tasks:
                with contextlib.suppress(Exception):
                    runs.append(await probe_task)
            for p in opened:
                with contextlib.suppress(Exception):
                    await p.close()
            if obs_started:
                with contextlib.suppress(Exception):
                    await observer.stop()
        self.phase = "done"
        committed = await self._check_commits(runs)
        journal = self._journal(runs, probes, committed)
        self._tell(journal.verdict)
        if exp.report_json is not None:
            journal.save(exp.report_json)
        if exp.report_html is not None:
            exp.report_html.parent.mkdir(parents=True, exist_ok=True)
            exp.report_html.write_text(render_html(journal))
        return journal

    def _on_result(self, r: RawResult) -> None:
        self._live.results.append((r.started_mono - self._t0, r))
        if not r.ok:
            self._live.errors += 1

    async def _fault(self, step: FaultStep) -> None:
        await self._sleep_until(self.experiment.baseline_s + step.at_s)
        if self._stop.is_set():
            return
        req = FaultRequest(
            step.kind,
            dict(step.params),
            step.duration_s,
            self.target.name,
            step.acquire_timeout_s,
            labels={"experiment": self.experiment.name, "run": self.id, **dict(step.labels)},
        )
        try:
            rec = await self.engine.create(req, wait=True)
        except errors.DbChaosError as exc:
            self._fault_errors[step.index] = str(exc)
            self._tell(f"fault {step.name} failed: {exc}")
            return
        self._faults[step.index] = rec
        self._tell(f"fault {step.name} {rec.state.value}")
        while not rec.state.finished:
            if self._stop.is_set():
                return
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), 0.1)
            rec = self.engine.get(rec.id)
            self._faults[step.index] = rec
        self._tell(f"fault {step.name} {rec.state.value}")

    async def _revert_all(self) -> None:
        reason = EndReason.HALTED if self._halt is not None else EndReason.ABORTED
        for idx, rec in list(self._faults.items()):
            current = self.engine.get(rec.id)
            if not current.state.finished:
                try:
                    self._faults[idx] = await self.engine.abort(rec.id, reason=reason)
                except errors.DbChaosError:
                    _log.exception("experiment %s: could not revert fault %s", self.id, rec.id)
            else:
                self._faults[idx] = current

    # ------------------------------------------------------------------ halts
    async def _watch_halts(self) -> None:
        while not self._stop.is_set():
            await asyncio.sleep(HALT_CHECK_INTERVAL_S)
            for h in self.experiment.halt:
                observed = self._halt_value(h.condition, h.probes)
                if observed is not None and h.condition.holds(observed):
                    self._halt = Halt(h.text, observed, self._now())
                    self._tell(f"halted: {h.text} (observed {h.condition.format_value(observed)})")
                    self._stop.set()
                    return

    def _halt_value(self, cond: Condition, probes: tuple[str, ...]) -> float | None:
        now = self._now()
        if cond.is_observer_metric:
            window = cond.window_s
            recent = [s for s in self._live.samples if s.observation is not None]
            recent = [s for s in recent if window is not None and s.mono - self._t0 >= now - window] or recent[-1:]
            return observer_metric(cond, [_sample(s, self._t0) for s in recent])
        since = now - (cond.window_s or DEFAULT_HALT_WINDOW_S)
        chosen = [_result(r, t) for t, r in self._live.results if t >= since and (not probes or r.probe in probes)]
        return probe_metric(cond, chosen)

    # ------------------------------------------------------------------ journal
    def _rel(self, wall: float | None) -> float | None:
        return None if wall is None else wall - self._wall0

    def _end_t(self, idx: int) -> float | None:
        rec = self._faults.get(idx)
        return None if rec is None or rec.activated_at is None else self._rel(rec.ended_at)

    async def _check_commits(self, runs: list[ProbeRun]) -> dict[str, bool]:
        """For probes with a ``committed_check``: did each failed request's write commit anyway?"""
        out: dict[str, bool] = {}
        by_name = {r.probe: r for r in runs}
        for spec in self.experiment.probes:
            run = by_name.get(spec.name)
            if spec.committed_check is None or run is None:
                continue
            ids = [r.request_id for r in run.results if not r.ok][:MAX_COMMIT_CHECKS]
            if not ids:
                continue
            try:
                if spec.type == "http":
                    out |= await _http_commits(spec.committed_check, ids)
                else:
                    dsn = self.target.dsn if spec.uses_target_dsn else getattr(spec.config, "dsn", self.target.dsn)
                    out |= await _sql_commits(dsn, spec.committed_check, ids)
            except (httpx.HTTPError, psycopg.Error) as exc:
                _log.warning("experiment %s: committed_check of probe %s failed: %s", self.id, spec.name, exc)
        return out

    def _journal(self, runs: list[ProbeRun], probes: list[Probe], committed: dict[str, bool]) -> RunJournal:
        exp = self.experiment
        end_t = self._now()
        windows: list[FaultWindow] = []
        for step in exp.method:
            rec = self._faults.get(step.index)
            w = FaultWindow(step.name, step.kind, dict(step.params), step.at_s + exp.baseline_s, step.duration_s)
            if rec is not None:
                w.id, w.state, w.max_blocked = rec.id, rec.state.value, rec.max_blocked
                w.end_reason = rec.end_reason.value if rec.end_reason else None
                w.error = rec.error
                if rec.activated_at is not None:
                    w.start_t, w.end_t = self._rel(rec.activated_at), self._rel(rec.ended_at) or end_t
            else:
                w.state = "failed" if step.index in self._fault_errors else "not started"
                w.error = self._fault_errors.get(step.index)
            windows.append(w)
        held = [w for w in windows if w.start_t is not None]
        first = min((w.start_t for w in held if w.start_t is not None), default=exp.baseline_s)
        last = max((w.end_t for w in held if w.end_t is not None), default=first)
        phases = [Phase("baseline", 0.0, first), Phase("during", first, last), Phase("after", last, max(end_t, last))]
        infos = []
        by_name = {r.probe: r for r in runs}
        for spec, probe in zip(exp.probes, probes, strict=True):
            run = by_name.get(spec.name)
            results = [_result(r, r.started_mono - self._t0) for r in (run.results if run else [])]
            for res in results:
                if res.request_id is not None:
                    res.committed = committed.get(res.request_id)
            timeout = getattr(spec.config, "timeout_s", None) or 0.0
            infos.append(ProbeInfo(spec.name, spec.type, _describe_target(probe), float(timeout), results))
        samples = [_sample(s, self._t0) for s in self._live.samples if s.observation is not None]
        journal = RunJournal(
            id=self.id,
            title=exp.name,
            target=self.target.name,
            started_at=self._wall0,
            ended_at=self._wall0 + end_t,
            phases=phases,
            faults=windows,
            probes=infos,
            samples=samples,
            halted=self._halt,
            experiment_file=exp.source,
        )
        tolerances: list[ToleranceResult] = []
        for tol in exp.hypothesis:
            tolerances += evaluate(journal, tol.condition, tol.probes, tol.phase)
        for w in windows:
            if w.start_t is None:
                tolerances.append(
                    ToleranceResult(
                        f"fault {w.name} holds", False, None, 0, "", None, "during", w.error or w.state or ""
                    )
                )
        journal.tolerances = tolerances
        journal.findings = all_findings(journal)
        return journal


async def _http_commits(template: str, ids: list[str]) -> dict[str, bool]:
    sem = asyncio.Semaphore(COMMIT_CHECK_CONCURRENCY)
    out: dict[str, bool] = {}
    async with httpx.AsyncClient(timeout=COMMIT_CHECK_TIMEOUT_S) as client:

        async def one(rid: str) -> None:
            async with sem:
                resp = await client.get(template.replace("{request_id}", rid))
                if resp.is_success or resp.status_code == 404:
                    out[rid] = resp.is_success

        await asyncio.gather(*(one(rid) for rid in ids))
    return out


async def _sql_commits(dsn: str, query: str, ids: list[str]) -> dict[str, bool]:
    out: dict[str, bool] = {}
    async with await psycopg.AsyncConnection.connect(
        dsn, autocommit=True, connect_timeout=5, application_name="dbchaos-committed-check"
    ) as conn:
        for rid in ids:
            cur = await conn.execute(query, {"request_id": rid})
            out[rid] = (await cur.fetchone()) is not None
    return out


def _describe_target(probe: Probe) -> str:
    d = probe.describe()
    if "url" in d:
        return f"{d.get('method', 'GET')} {d['url']}"
    return str(d.get("statement", ""))


def _result(r: RawResult, t: float) -> ProbeResult:
    return ProbeResult(
        t=round(t, 4),
        latency_ms=round(r.latency_s * 1000, 3),
        ok=r.ok,
        status=r.status,
        sqlstate=r.sqlstate,
        error=r.error,
        timed_out=r.timed_out,
        request_id=r.request_id,
    )


def _sample(s: ObsSample, t0: float) -> Sample:
    o = s.observation
    assert o is not None
    deltas: dict[str, Any] = dict(o.deltas or {})
    return Sample(
        t=round(s.mono - t0, 4),
        blocked=o.waiting_count,
        longest_wait_s=o.max_wait_s or 0.0,
        connections=o.connections.used,
        max_connections=o.connections.max,
        idle_in_transaction=o.idle_in_transaction.count,
        oldest_idle_in_transaction_s=o.idle_in_transaction.oldest_xact_s or 0.0,
        rollbacks=int(deltas.get("xact_rollback", 0)),
        deadlocks=int(deltas.get("deadlocks", 0)),
        lock_tree=list(o.lock_trees),
    )
