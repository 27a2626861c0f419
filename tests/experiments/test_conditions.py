"""The tolerance / halt-condition grammar."""

from __future__ import annotations

import math

import pytest

from dbchaos.experiments.conditions import ConditionError, ValueKind, parse_condition


@pytest.mark.parametrize(
    ("text", "metric", "op", "value", "kind", "percentile"),
    [
        ("p95 < 300ms", "p95", "<", 0.3, ValueKind.DURATION, 95.0),
        ("p99 <= 1s", "p99", "<=", 1.0, ValueKind.DURATION, 99.0),
        ("P99.9<2 s", "p99.9", "<", 2.0, ValueKind.DURATION, 99.9),
        ("median < 1.5m", "median", "<", 90.0, ValueKind.DURATION, 50.0),
        ("max < .5s", "max", "<", 0.5, ValueKind.DURATION, None),
        ("errors < 1%", "errors", "<", 0.01, ValueKind.FRACTION, None),
        ("errors <= 0.5 %", "errors", "<=", 0.005, ValueKind.FRACTION, None),
        ("timeouts == 0", "timeouts", "==", 0.0, ValueKind.COUNT, None),
        ("errors != 3", "errors", "!=", 3.0, ValueKind.COUNT, None),
        ("blocked_sessions > 50", "blocked_sessions", ">", 50.0, ValueKind.COUNT, None),
        ("connections >= 90%", "connections", ">=", 0.9, ValueKind.FRACTION, None),
        ("connections >= 250", "connections", ">=", 250.0, ValueKind.COUNT, None),
        ("longest_wait > 30s", "longest_wait", ">", 30.0, ValueKind.DURATION, None),
        ("recovers within 5s", "recovers_within", "<=", 5.0, ValueKind.DURATION, None),
        ("  Recover within 250ms ", "recovers_within", "<=", 0.25, ValueKind.DURATION, None),
    ],
)
def test_valid_conditions(
    text: str, metric: str, op: str, value: float, kind: ValueKind, percentile: float | None
) -> None:
    c = parse_condition(text)
    assert (c.metric, c.op, c.value_kind, c.percentile) == (metric, op, kind, percentile)
    assert c.value == pytest.approx(value) and c.text == text.strip() and c.window_s is None


def test_windows_in_halt_conditions() -> None:
    c = parse_condition("errors > 50% over 10s", allow_window=True)
    assert (c.value, c.window_s) == (0.5, 10.0)
    c = parse_condition("blocked_sessions > 50 over 500ms", allow_window=True)
    assert (c.value, c.window_s) == (50.0, 0.5)


@pytest.mark.parametrize(
    ("text", "message", "offset"),
    [
        ("", "the condition is empty", 0),
        ("p95 < 300", "300 needs a unit", 6),
        ("p95 = 1s", "use == to compare", 4),
        ("p95 =< 1s", "write <= instead of =<", 4),
        ("p95 1s", "expected a comparison", 4),
        ("p95 <", "expected a number after '<'", 5),
        ("latency < 1s", "unknown metric 'latency'", 0),
        ("p0 < 1s", "a percentile must be above 0", 0),
        ("p101 < 1s", "a percentile must be above 0 and at most 100", 0),
        ("errors < 1.5", "not a whole number", 9),
        ("errors < 150%", "at most 100%", 9),
        ("errors < 1s", "errors is a count, not a duration", 10),
        ("p95 < 5%", "p95 is not compared with a percentage", 7),
        ("blocked_sessions > 5s", "blocked_sessions is a count, not a duration", 20),
        ("p95 < 3 parsecs", "'parsecs' is not a unit", 8),
        ("p95 < 1s and more", "unexpected 'and more'", 9),
        ("recovers in 5s", "write 'recovers within <duration>'", 0),
        ("recovers within 5", "5 needs a unit", 16),
        ("errors > 5% over 10s", "belongs to halt conditions only", 12),
    ],
)
def test_invalid_conditions_point_at_the_problem(text: str, message: str, offset: int) -> None:
    with pytest.raises(ConditionError) as info:
        parse_condition(text)
    assert message in info.value.message
    assert info.value.offset == offset


def test_recovery_is_not_a_halt_condition_and_windows_need_a_length() -> None:
    with pytest.raises(ConditionError, match="is a tolerance, not a halt condition"):
        parse_condition("recovers within 5s", allow_window=True, allow_recovery=False)
    with pytest.raises(ConditionError, match="longer than 0"):
        parse_condition("errors > 5 over 0s", allow_window=True)


def test_holds_and_formatting() -> None:
    p95 = parse_condition("p95 < 300ms")
    assert p95.holds(0.299) and not p95.holds(0.3) and not p95.holds(math.nan)
    assert p95.is_probe_metric and not p95.is_observer_metric
    assert p95.format_value() == "300ms" and p95.format_value(5.0) == "5s"
    rec = parse_condition("recovers within 2s")
    assert rec.is_recovery and rec.is_probe_metric and rec.holds(1.9) and not rec.holds(math.inf)
    assert rec.format_value(math.inf) == "never"
    errs = parse_condition("errors < 1%")
    assert errs.holds(0.009) and errs.format_value() == "1%"
    blocked = parse_condition("blocked_sessions > 50")
    assert blocked.is_observer_metric and blocked.holds(51) and blocked.format_value() == "50"
