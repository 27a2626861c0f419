"""Measuring a tolerance or a halt condition against a run's data.

Probe metrics are measured per probe over the requests that *started* in the phase (see
:mod:`dbchaos.reports.figures`); a tolerance naming no probe must hold for every probe.
Observer metrics take the worst sample of the phase (the maximum), except ``deadlocks`` and
``rollbacks``, which add up the increases the samples saw.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from dbchaos.experiments.conditions import Condition, ValueKind
from dbchaos.reports import figures
from dbchaos.reports.journal import ProbeResult, RunJournal, Sample, ToleranceResult

_UNIT = {ValueKind.DURATION: "s", ValueKind.COUNT: "", ValueKind.FRACTION: "%"}


def probe_metric(cond: Condition, results: Sequence[ProbeResult]) -> float | None:
    """The value of a probe metric over ``results`` (seconds, a fraction or a count); None if no request."""
    if not results:
        return None
    lat_s = [r.latency_ms / 1000 for r in results]
    if cond.percentile is not None:
        value = figures.percentile(lat_s, cond.percentile)
        return None if value is None else value
    if cond.metric == "mean":
        return sum(lat_s) / len(lat_s)
    if cond.metric == "max":
        return max(lat_s)
    failed = sum(not r.ok for r in results) if cond.metric == "errors" else sum(r.timed_out for r in results)
    return failed / len(results) if cond.value_kind is ValueKind.FRACTION else float(failed)


def observer_metric(cond: Condition, samples: Sequence[Sample]) -> float | None:
    if not samples:
        return None
    m = cond.metric
    if m == "blocked_sessions":
        return float(max(s.blocked for s in samples))
    if m == "longest_wait":
        return max(s.longest_wait_s for s in samples)
    if m == "idle_in_transaction":
        return float(max(s.idle_in_transaction for s in samples))
    if m == "oldest_idle_transaction":
        return max(s.oldest_idle_in_transaction_s for s in samples)
    if m == "connections":
        if cond.value_kind is ValueKind.FRACTION:
            return (
                max(s.connections / s.max_connections for s in samples if s.max_connections)
                if any(s.max_connections for s in samples)
                else None
            )
        return float(max(s.connections for s in samples))
    if m == "deadlocks":
        return float(sum(s.deadlocks for s in samples))
    if m == "rollbacks":
        return float(sum(s.rollbacks for s in samples))
    raise ValueError(f"not an observer metric: {m}")


def _window(journal: RunJournal, phase: str) -> tuple[float, float]:
    if phase == "overall":
        return (-math.inf, math.inf)
    ph = figures.phase(journal, phase)
    return (ph.start_t, ph.end_t) if ph else (0.0, 0.0)


def _display(cond: Condition, value: float) -> tuple[float, str]:
    if cond.value_kind is ValueKind.FRACTION:
        return round(value * 100, 3), "%"
    if cond.value_kind is ValueKind.DURATION:
        return round(value, 4), "s"
    return value, ""


def evaluate(journal: RunJournal, cond: Condition, probes: Sequence[str], phase: str) -> list[ToleranceResult]:
    """One result per probe for probe metrics (every probe when ``probes`` is empty), one for
    the database for observer metrics."""
    start, end = _window(journal, phase)
    limit, unit = _display(cond, cond.value)
    if cond.is_observer_metric:
        samples = [s for s in journal.samples if start <= s.t < end]
        measured = observer_metric(cond, samples)
        return [_result(cond, None, phase, measured, limit, unit, "no observer sample in the phase")]
    names = list(probes) or figures.probe_names(journal)
    out = []
    for name in names:
        if cond.is_recovery:
            rec = figures.recovery_s(journal, name)
            if figures.faults_end_t(journal) is None:
                out.append(_result(cond, name, phase, None, limit, unit, "no fault held, nothing to recover from"))
                continue
            measured = math.inf if rec is None else rec
            detail = "still failing when the run ended" if rec is None else ""
            out.append(_result(cond, name, "after", measured, limit, unit, detail))
            continue
        results = [r for r in figures.probe_results(journal, name) if start <= r.t < end]
        out.append(_result(cond, name, phase, probe_metric(cond, results), limit, unit, "no request in the phase"))
    return out


def _result(
    cond: Condition, probe: str | None, phase: str, measured: float | None, limit: float, unit: str, missing: str
) -> ToleranceResult:
    if measured is None:
        return ToleranceResult(cond.text, False, None, limit, unit, probe, phase, missing)
    held = cond.holds(measured)
    shown, _ = _display(cond, measured) if math.isfinite(measured) else (measured, unit)
    return ToleranceResult(cond.text, held, shown if math.isfinite(shown) else None, limit, unit, probe, phase)
