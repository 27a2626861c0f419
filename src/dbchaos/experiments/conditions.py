"""The small language of tolerances and halt conditions: ``p95 < 300ms``, ``errors < 1%``,
``timeouts == 0``, ``blocked_sessions > 50``, ``errors > 50% over 10s``, ``recovers within 5s``.

Grammar (case-insensitive; spaces between tokens are optional)::

    condition  := comparison | recovery
    comparison := metric op value [ "over" duration ]     ("over" only in halt conditions)
    recovery   := "recovers within" duration              (tolerances only)
    op         := "<" | "<=" | ">" | ">=" | "==" | "!="
    value      := number [ unit ]
    duration   := number ( "ms" | "s" | "m" | "h" )

Metrics, and the values they take:

==========================  ==================================  ========================
metric                      what                                value
==========================  ==================================  ========================
``p<N>`` (``p50``, ``p95``,  latency percentile of a probe's      duration (unit required)
``p99``, ``p99.9``),         requests (nearest rank)
``median``, ``mean``,
``max``
``errors``                   failed requests (timeouts count)    ``N%`` of requests, or
                                                                 a count
``timeouts``                 requests that timed out             ``N%`` or a count
``blocked_sessions``         sessions waiting on a lock          count
``longest_wait``             the longest current lock wait       duration
``idle_in_transaction``      idle-in-transaction sessions        count
``oldest_idle_transaction``  the oldest of their transactions    duration
``connections``              connection slots in use (cluster)   count, or ``N%`` of
                                                                 ``max_connections``
``deadlocks``, ``rollbacks`` increase of the database counters   count
==========================  ==================================  ========================

The first five rows are **probe metrics** (measured per probe), the rest **observer
metrics** (measured from the observer's samples). What a value is compared with (which
requests, which samples) is the runner's business: see ``docs/experiments.md``.
"""

from __future__ import annotations

import math
import operator
import re
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum

from dbchaos.cli.parsing import parse_duration
from dbchaos.errors import InvalidInput


class ValueKind(StrEnum):
    DURATION = "duration"  # seconds
    COUNT = "count"
    FRACTION = "fraction"  # a percentage, stored as 0..1


PROBE_METRICS = frozenset({"median", "mean", "max", "errors", "timeouts"})  # and p<N>
#: observer metrics and the value kinds each accepts
OBSERVER_METRICS: dict[str, frozenset[ValueKind]] = {
    "blocked_sessions": frozenset({ValueKind.COUNT}),
    "longest_wait": frozenset({ValueKind.DURATION}),
    "idle_in_transaction": frozenset({ValueKind.COUNT}),
    "oldest_idle_transaction": frozenset({ValueKind.DURATION}),
    "connections": frozenset({ValueKind.COUNT, ValueKind.FRACTION}),
    "deadlocks": frozenset({ValueKind.COUNT}),
    "rollbacks": frozenset({ValueKind.COUNT}),
}
_RATE_METRICS = frozenset({"errors", "timeouts"})
RECOVERS = "recovers_within"

OPS: dict[str, Callable[[float, float], bool]] = {
    "<": operator.lt,
    "<=": operator.le,
    ">": operator.gt,
    ">=": operator.ge,
    "==": operator.eq,
    "!=": operator.ne,
}
_UNIT_S = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}

_METRIC = re.compile(r"[a-z_][a-z0-9_.]*")
_PERCENTILE = re.compile(r"p(\d+(?:\.\d+)?)")
_OP = re.compile(r"<=|>=|==|!=|=<|=>|<|>|=")
_NUMBER = re.compile(r"\d+(?:\.\d+)?|\.\d+")
_UNIT = re.compile(r"%|[a-z]+")
_RECOVERS = re.compile(r"recovers?[ \t]+within\b")
_OVER = re.compile(r"over\b")


class ConditionError(InvalidInput):
    """A condition that does not parse; ``offset`` is the character where the problem is."""

    code = "invalid_condition"

    def __init__(self, message: str, offset: int) -> None:
        super().__init__(message, extra={"offset": offset})
        self.offset = offset


@dataclass(frozen=True)
class Condition:
    """One parsed condition. ``value`` is in seconds (durations), a fraction 0..1
    (percentages) or a number (counts)."""

    text: str
    metric: str
    op: str
    value: float
    value_kind: ValueKind
    #: for ``p<N>``, ``median``: the percentile (0 < N <= 100)
    percentile: float | None = None
    #: halt conditions: the trailing window the metric is measured over (``over 10s``)
    window_s: float | None = None

    @property
    def is_recovery(self) -> bool:
        return self.metric == RECOVERS

    @property
    def is_probe_metric(self) -> bool:
        return self.is_recovery or self.percentile is not None or self.metric in PROBE_METRICS

    @property
    def is_observer_metric(self) -> bool:
        return self.metric in OBSERVER_METRICS

    def holds(self, measured: float) -> bool:
        """Does ``measured`` (same unit as ``value``) satisfy the condition? ``recovers within
        D`` takes the measured recovery time (``inf`` if it never recovered)."""
        if math.isnan(measured):
            return False
        return OPS[self.op](measured, self.value)

    def format_value(self, value: float | None = None) -> str:
        """``value`` (default: the threshold) written the way the condition writes it."""
        v = self.value if value is None else value
        if self.value_kind is ValueKind.DURATION:
            return format_duration(v)
        if self.value_kind is ValueKind.FRACTION:
            return f"{v * 100:g}%"
        return f"{v:g}"


def format_duration(seconds: float) -> str:
    if math.isinf(seconds):
        return "never"
    if seconds < 1:
        return f"{seconds * 1000:.4g}ms"
    return f"{seconds:.4g}s"


def _skip(text: str, i: int) -> int:
    while i < len(text) and text[i] in " \t":
        i += 1
    return i


@dataclass(frozen=True)
class _Num:
    number: float
    text: str
    unit: str | None
    at: int
    unit_at: int
    end: int


def _number(text: str, i: int) -> _Num | None:
    """A number and the word right after it (its unit), unless that word is ``over``."""
    m = _NUMBER.match(text, i)
    if not m:
        return None
    k = _skip(text, m.end())
    u = _UNIT.match(text, k)
    if u and u.group(0) != "over":
        return _Num(float(m.group(0)), m.group(0), u.group(0), i, k, u.end())
    return _Num(float(m.group(0)), m.group(0), None, i, i, m.end())


def _duration(text: str, i: int, what: str) -> tuple[float, int]:
    n = _number(text, i)
    if n is None:
        raise ConditionError(f"expected a duration such as 300ms or 5s for {what}", i)
    if n.unit is None:
        raise ConditionError(f"{n.text} needs a unit: ms, s, m or h", i)
    if n.unit not in _UNIT_S:
        raise ConditionError(f"{n.unit!r} is not a unit of time; use ms, s, m or h", n.unit_at)
    return parse_duration(n.text + n.unit), n.end


def parse_condition(text: str, *, allow_window: bool = False, allow_recovery: bool = True) -> Condition:
    """Parse one condition (see the module docstring); ``ConditionError`` points at the
    offending character."""
    if not isinstance(text, str):
        raise ConditionError("a condition must be a string such as 'p95 < 300ms'", 0)
    low = text.lower()
    i = _skip(low, 0)
    if i == len(low):
        raise ConditionError("the condition is empty; write e.g. 'p95 < 300ms'", 0)
    if low.startswith("recover", i):
        m = _RECOVERS.match(low, i)
        if not m:
            raise ConditionError("write 'recovers within <duration>', e.g. 'recovers within 5s'", i)
        if not allow_recovery:
            raise ConditionError("'recovers within' is a tolerance, not a halt condition", i)
        seconds, j = _duration(low, _skip(low, m.end()), "'recovers within'")
        _end(low, j)
        return Condition(text.strip(), RECOVERS, "<=", seconds, ValueKind.DURATION)

    m = _METRIC.match(low, i)
    if not m:
        raise ConditionError("expected a metric such as p95, errors, timeouts or blocked_sessions", i)
    metric, metric_at = m.group(0), i
    percentile: float | None = None
    pm = _PERCENTILE.fullmatch(metric)
    if pm:
        percentile = float(pm.group(1))
        if not 0 < percentile <= 100:
            raise ConditionError(f"{metric}: a percentile must be above 0 and at most 100", metric_at)
    elif metric == "median":
        percentile = 50.0
    elif metric not in PROBE_METRICS and metric not in OBSERVER_METRICS:
        known = ["p50", "p95", "p99", *sorted(PROBE_METRICS), *OBSERVER_METRICS]
        raise ConditionError(f"unknown metric {metric!r}; known: {', '.join(known)}", metric_at)

    i = _skip(low, m.end())
    om = _OP.match(low, i)
    if not om:
        raise ConditionError(f"expected a comparison (<, <=, >, >=, ==, !=) after {metric!r}", i)
    op = om.group(0)
    if op == "=":
        raise ConditionError("use == to compare for equality", i)
    if op in ("=<", "=>"):
        raise ConditionError(f"write {op[::-1]} instead of {op}", i)

    i = _skip(low, om.end())
    n = _number(low, i)
    if n is None:
        raise ConditionError(f"expected a number after {op!r}", i)
    kind, value = _value(metric, percentile, n.number, n.unit, n.at, n.unit_at)
    j = n.end

    window: float | None = None
    k = _skip(low, j)
    if k < len(low) and _OVER.match(low, k):
        if not allow_window:
            raise ConditionError("'over <duration>' belongs to halt conditions only", k)
        window, j = _duration(low, _skip(low, k + len("over")), "'over'")
        if window <= 0:
            raise ConditionError("the window after 'over' must be longer than 0", k)
    _end(low, j)
    return Condition(text.strip(), metric, op, value, kind, percentile, window)


def _value(
    metric: str, percentile: float | None, number: float, unit: str | None, at: int, unit_at: int
) -> tuple[ValueKind, float]:
    if percentile is not None or metric in ("mean", "max"):
        allowed = frozenset({ValueKind.DURATION})
    elif metric in _RATE_METRICS:
        allowed = frozenset({ValueKind.COUNT, ValueKind.FRACTION})
    else:
        allowed = OBSERVER_METRICS[metric]
    if unit == "%":
        if ValueKind.FRACTION not in allowed:
            raise ConditionError(f"{metric} is not compared with a percentage", unit_at)
        if number > 100:
            raise ConditionError("a percentage is at most 100%", at)
        return ValueKind.FRACTION, number / 100
    if unit is not None:
        if unit not in _UNIT_S:
            raise ConditionError(f"{unit!r} is not a unit; use ms, s, m or h (or % for a share)", unit_at)
        if ValueKind.DURATION not in allowed:
            raise ConditionError(f"{metric} is a count, not a duration: drop the unit", unit_at)
        return ValueKind.DURATION, number * _UNIT_S[unit]
    if ValueKind.DURATION in allowed:
        raise ConditionError(f"{number:g} needs a unit: ms, s, m or h", at)
    if number != int(number):
        raise ConditionError(f"{metric} counts whole things: {number:g} is not a whole number", at)
    return ValueKind.COUNT, number


def _end(text: str, i: int) -> None:
    i = _skip(text, i)
    if i < len(text):
        raise ConditionError(f"unexpected {text[i:].strip()!r} at the end of the condition", i)
