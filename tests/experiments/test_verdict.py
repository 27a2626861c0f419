"""Tolerances measured against a journal: every metric against the raw data by hand."""

from __future__ import annotations

import math

import pytest

from dbchaos.experiments.conditions import parse_condition
from dbchaos.experiments.verdict import evaluate
from tests.reports.sample_journal import synthetic_journal


def _during(j: object) -> list[float]:
    from dbchaos.reports.journal import RunJournal

    assert isinstance(j, RunJournal)
    return [r.latency_ms / 1000 for r in j.probes[0].results if 5 <= r.t < 15]


def test_percentile_tolerance_per_probe_and_phase() -> None:
    j = synthetic_journal()
    lat = sorted(_during(j))
    p95 = lat[math.ceil(0.95 * len(lat)) - 1]
    [res] = evaluate(j, parse_condition("p95 < 2s"), (), "during")
    assert res.probe == "GET /items" and res.phase == "during"
    assert res.observed == pytest.approx(p95)
    assert res.held is (p95 < 2)
    [base] = evaluate(j, parse_condition("p95 < 300ms"), ("GET /items",), "baseline")
    assert base.held


def test_error_rate_and_counts() -> None:
    j = synthetic_journal()
    during = [r for r in j.probes[0].results if 5 <= r.t < 15]
    failed = sum(not r.ok for r in during)
    [rate] = evaluate(j, parse_condition("errors < 1%"), (), "during")
    assert rate.observed == pytest.approx(round(failed / len(during) * 100, 3))
    assert rate.unit == "%" and not rate.held
    [count] = evaluate(j, parse_condition("timeouts == 0"), (), "baseline")
    assert count.observed == 0 and count.held


def test_recovery_and_observer_metrics() -> None:
    j = synthetic_journal()
    [rec] = evaluate(j, parse_condition("recovers within 1s"), (), "overall")
    assert rec.observed == pytest.approx(0.6) and rec.held
    [slow] = evaluate(j, parse_condition("recovers within 500ms"), (), "overall")
    assert not slow.held
    [blocked] = evaluate(j, parse_condition("blocked_sessions <= 10"), (), "during")
    assert blocked.probe is None and blocked.observed == 15 and not blocked.held
    [conns] = evaluate(j, parse_condition("connections < 50%"), (), "overall")
    assert conns.observed == pytest.approx(20.0) and conns.held


def test_a_phase_without_requests_does_not_hold() -> None:
    j = synthetic_journal()
    j.probes[0].results = [r for r in j.probes[0].results if r.t < 5]
    [res] = evaluate(j, parse_condition("p95 < 2s"), (), "during")
    assert not res.held and res.observed is None and "no request" in res.detail
