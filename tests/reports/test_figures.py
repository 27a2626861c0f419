"""Report figures against the same figures computed by hand from the raw data."""

from __future__ import annotations

import math

from hypothesis import given
from hypothesis import strategies as st

from dbchaos.reports import figures
from dbchaos.reports.journal import ProbeResult
from tests.reports.sample_journal import synthetic_journal


def by_hand_p(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[math.ceil(q / 100 * len(ordered)) - 1]


def test_phase_figures_match_the_raw_results() -> None:
    j = synthetic_journal()
    raw = j.probes[0].results
    during = [r for r in raw if 5 <= r.t < 15]
    s = figures.phase_stats(j, "during", "GET /items")
    assert s.count == len(during) == 200
    assert s.errors == sum(not r.ok for r in during)
    assert s.timeouts == sum(r.timed_out for r in during)
    assert s.p95_ms == by_hand_p([r.latency_ms for r in during], 95)
    assert s.p50_ms == by_hand_p([r.latency_ms for r in during], 50)
    assert s.max_ms == max(r.latency_ms for r in during)
    assert s.committed_after_failure == sum(1 for r in during if not r.ok and r.committed)
    overall = figures.phase_stats(j, "overall")
    assert overall.count == 400


def test_recovery_is_measured_from_the_real_end_of_the_fault() -> None:
    j = synthetic_journal()
    # requests fail until t < 15.6, the first ok one after the fault's end (15.0) starts at 15.6
    rec = figures.recovery_s(j, "GET /items")
    assert rec is not None
    assert abs(rec - 0.6) < 1e-9


def test_not_recovered_when_the_last_request_failed() -> None:
    j = synthetic_journal()
    j.probes[0].results.append(ProbeResult(19.99, 5.0, False, 500))
    assert figures.recovery_s(j) is None


def test_timeline_buckets_partition_the_requests() -> None:
    j = synthetic_journal()
    buckets = figures.timeline(j.probes[0].results, 20.0)
    assert len(buckets) == 20
    assert sum(b.count for b in buckets) == 400
    b7 = buckets[7]
    raw7 = [r for r in j.probes[0].results if 7 <= r.t < 8]
    assert b7.errors == sum(not r.ok for r in raw7)
    assert b7.p95_ms == by_hand_p([r.latency_ms for r in raw7], 95)


def test_worst_sample_is_the_first_with_most_blocked() -> None:
    j = synthetic_journal()
    worst = figures.worst_sample(j.samples)
    assert worst is not None
    assert worst.blocked == 15
    assert worst.t == min(s.t for s in j.samples if s.blocked == 15)


@given(st.lists(st.floats(0, 1e6, allow_nan=False), min_size=1, max_size=200), st.floats(0.01, 100))
def test_percentile_is_a_member_and_ranks_right(values: list[float], q: float) -> None:
    p = figures.percentile(values, q)
    assert p in values
    assert sum(v <= p for v in values) >= math.ceil(q / 100 * len(values))
    assert sum(v < p for v in values) < max(1, math.ceil(q / 100 * len(values)))
