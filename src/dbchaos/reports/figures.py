"""Figures computed from a run journal's raw data — the only place a report's numbers come from.

Conventions (docs/reports.md):
* latency counts every request, failed or timed out, as the time until it ended (a timed-out
  request counts as its timeout): a fault that makes requests hang must raise the percentiles;
* percentiles use the nearest-rank method on the requests that *started* in the window;
* a request is ``ok`` when it got an expected answer before its timeout;
* recovery is measured from the moment the last fault really ended (its lock was released) to the
  start of the first request after which every request in the run was ok.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from dbchaos.reports.journal import Phase, ProbeInfo, ProbeResult, RunJournal, Sample


def percentile(values: Sequence[float], q: float) -> float | None:
    """Nearest-rank percentile (``q`` in 0..100) of ``values``; None when empty."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


@dataclass(frozen=True)
class ProbeStats:
    count: int
    errors: int
    timeouts: int
    committed_after_failure: int
    p50_ms: float | None
    p95_ms: float | None
    p99_ms: float | None
    max_ms: float | None

    @property
    def error_rate(self) -> float | None:
        """Share of requests that were not ok, 0..1; None without requests."""
        return self.errors / self.count if self.count else None


def stats(results: Sequence[ProbeResult]) -> ProbeStats:
    lat = [r.latency_ms for r in results]
    return ProbeStats(
        count=len(results),
        errors=sum(not r.ok for r in results),
        timeouts=sum(r.timed_out for r in results),
        committed_after_failure=sum(bool(r.committed) for r in results if not r.ok),
        p50_ms=percentile(lat, 50),
        p95_ms=percentile(lat, 95),
        p99_ms=percentile(lat, 99),
        max_ms=max(lat) if lat else None,
    )


def phase(journal: RunJournal, name: str) -> Phase | None:
    return next((p for p in journal.phases if p.name == name), None)


def in_window(results: Iterable[ProbeResult], start: float, end: float) -> list[ProbeResult]:
    return [r for r in results if start <= r.t < end]


def probe_results(journal: RunJournal, probe: str | None) -> list[ProbeResult]:
    """Results of one probe, or of every probe (``None``), in start order."""
    chosen = [p for p in journal.probes if probe is None or p.name == probe]
    return sorted((r for p in chosen for r in p.results), key=lambda r: r.t)


def phase_stats(journal: RunJournal, phase_name: str, probe: str | None = None) -> ProbeStats:
    """Stats of the requests that started in a phase (``overall``: the whole run)."""
    results = probe_results(journal, probe)
    if phase_name == "overall":
        return stats(results)
    ph = phase(journal, phase_name)
    return stats(in_window(results, ph.start_t, ph.end_t) if ph else [])


def faults_end_t(journal: RunJournal) -> float | None:
    """When the last fault really ended (None if none ever held)."""
    ends = [f.end_t for f in journal.faults if f.end_t is not None and f.start_t is not None]
    return max(ends) if ends else None


def recovery_s(journal: RunJournal, probe: str | None = None) -> float | None:
    """Seconds from the last fault's end to the first request after which all were ok.

    None when no fault held, when no request started after it, or when the run ended while
    requests were still failing (not recovered).
    """
    end = faults_end_t(journal)
    if end is None:
        return None
    after = [r for r in probe_results(journal, probe) if r.t >= end]
    if not after or not after[-1].ok:
        return None
    first_good = len(after) - 1
    while first_good > 0 and after[first_good - 1].ok:
        first_good -= 1
    return max(0.0, after[first_good].t - end)


@dataclass(frozen=True)
class Bucket:
    t: float
    count: int
    errors: int
    p95_ms: float | None

    @property
    def error_rate(self) -> float | None:
        return self.errors / self.count if self.count else None


def timeline(results: Sequence[ProbeResult], until: float, bucket_s: float = 1.0) -> list[Bucket]:
    """Per-bucket request count, errors and p95 latency, by start time, from 0 to ``until``."""
    n = max(1, math.ceil(until / bucket_s))
    groups: list[list[ProbeResult]] = [[] for _ in range(n)]
    for r in results:
        i = int(r.t // bucket_s)
        if 0 <= i < n:
            groups[i].append(r)
    return [
        Bucket(i * bucket_s, len(g), sum(not r.ok for r in g), percentile([r.latency_ms for r in g], 95))
        for i, g in enumerate(groups)
    ]


def worst_sample(samples: Sequence[Sample]) -> Sample | None:
    """The sample with the most blocked sessions (the earliest of equals); None if nothing blocked."""
    worst: Sample | None = None
    for s in samples:
        if s.blocked > 0 and (worst is None or s.blocked > worst.blocked):
            worst = s
    return worst


def probe_names(journal: RunJournal) -> list[str]:
    return [p.name for p in journal.probes]


def probe_info(journal: RunJournal, name: str) -> ProbeInfo | None:
    return next((p for p in journal.probes if p.name == name), None)
