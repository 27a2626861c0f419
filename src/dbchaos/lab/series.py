"""The lab's time series: what the demo's users saw and what PostgreSQL showed, per second.

One bucket per wall-clock second, kept for a bounded time. A request is counted in the
second it *finished* (answered, failed or timed out), with its latency; requests still
waiting show up as ``in_flight``, sampled once a second. So a hang reads as throughput
falling to zero while ``in_flight`` climbs, then a burst of slow answers or errors.
"""

from __future__ import annotations

import math
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

#: seconds of history kept (15 minutes)
KEEP_S = 900


@dataclass
class Bucket:
    """Everything recorded during one second (``t`` = Unix time, whole seconds)."""

    t: int
    requests: int = 0
    ok: int = 0
    errors: int = 0
    timeouts: int = 0
    latencies: list[float] = field(default_factory=list)
    #: error kinds: ``pool_timeout``, ``sqlstate_55P03``, ``http_500``, ``timeout``, ``connect``...
    error_kinds: Counter[str] = field(default_factory=Counter)
    #: error kind -> the first message seen for it this second (e.g. the QueuePool text)
    error_details: dict[str, str] = field(default_factory=dict)
    #: endpoint -> [requests, errors]
    endpoints: dict[str, list[int]] = field(default_factory=dict)
    #: requests sent but not finished, sampled during this second
    in_flight: int | None = None
    #: sessions of the shop database waiting on a lock (all / not dbchaos's own)
    blocked: int | None = None
    blocked_app: int | None = None
    idle_in_transaction: int | None = None
    sessions: int | None = None
    #: client connections of the whole server, and its max_connections
    connections: int | None = None
    max_connections: int | None = None
    #: the longest current lock wait, seconds
    longest_wait_s: float | None = None

    def as_dict(self) -> dict[str, Any]:
        lat = sorted(self.latencies)
        return {
            "t": self.t,
            "requests": self.requests,
            "ok": self.ok,
            "errors": self.errors,
            "timeouts": self.timeouts,
            "error_rate": round(self.errors / self.requests, 4) if self.requests else None,
            "p50_ms": _ms(percentile(lat, 50)),
            "p95_ms": _ms(percentile(lat, 95)),
            "p99_ms": _ms(percentile(lat, 99)),
            "max_ms": _ms(lat[-1] if lat else None),
            "error_kinds": dict(self.error_kinds),
            "error_details": dict(self.error_details),
            "endpoints": {k: {"requests": v[0], "errors": v[1]} for k, v in self.endpoints.items()},
            "in_flight": self.in_flight,
            "blocked": self.blocked,
            "blocked_app": self.blocked_app,
            "idle_in_transaction": self.idle_in_transaction,
            "sessions": self.sessions,
            "connections": self.connections,
            "max_connections": self.max_connections,
            "longest_wait_s": None if self.longest_wait_s is None else round(self.longest_wait_s, 3),
        }


def percentile(sorted_values: list[float], p: float) -> float | None:
    """Nearest-rank percentile of an already sorted list (``None`` when empty)."""
    if not sorted_values:
        return None
    rank = max(1, math.ceil(p / 100 * len(sorted_values)))
    return sorted_values[min(rank, len(sorted_values)) - 1]


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 1)


class Series:
    """Per-second buckets, newest last, at most ``keep_s`` of them.

    Not thread-safe: the lab records from its event loop only."""

    def __init__(self, keep_s: int = KEEP_S, clock: Callable[[], float] = time.time) -> None:
        self._buckets: deque[Bucket] = deque(maxlen=keep_s)
        self._clock = clock

    def bucket(self, at: float | None = None) -> Bucket:
        """The bucket of second ``at`` (default: now), created if needed; seconds older than
        the newest bucket go into the newest (clocks do not run backwards here)."""
        t = int(self._clock() if at is None else at)
        if self._buckets and self._buckets[-1].t >= t:
            if self._buckets[-1].t == t:
                return self._buckets[-1]
            for b in reversed(self._buckets):
                if b.t == t:
                    return b
            return self._buckets[-1]
        last = self._buckets[-1].t if self._buckets else t - 1
        for missing in range(max(last + 1, t - 5), t):  # short gaps are shown as empty seconds
            self._buckets.append(Bucket(missing))
        b = Bucket(t)
        self._buckets.append(b)
        return b

    def record_request(
        self,
        endpoint: str,
        latency_s: float,
        *,
        error_kind: str | None,
        detail: str | None = None,
        timed_out: bool = False,
        at: float | None = None,
    ) -> None:
        b = self.bucket(at)
        b.requests += 1
        b.latencies.append(latency_s)
        counts = b.endpoints.setdefault(endpoint, [0, 0])
        counts[0] += 1
        if error_kind is None:
            b.ok += 1
            return
        b.errors += 1
        counts[1] += 1
        b.error_kinds[error_kind] += 1
        if detail and error_kind not in b.error_details:
            b.error_details[error_kind] = detail[:300]
        if timed_out:
            b.timeouts += 1

    def record_in_flight(self, count: int, at: float | None = None) -> None:
        b = self.bucket(at)
        b.in_flight = max(count, b.in_flight or 0)

    def record_database(
        self,
        *,
        blocked: int,
        blocked_app: int,
        idle_in_transaction: int,
        sessions: int,
        connections: int | None = None,
        max_connections: int | None = None,
        longest_wait_s: float | None = None,
        at: float | None = None,
    ) -> None:
        """One look at the database; several in one second keep the worst of each figure."""
        b = self.bucket(at)
        b.blocked = max(blocked, b.blocked or 0)
        b.blocked_app = max(blocked_app, b.blocked_app or 0)
        b.idle_in_transaction = max(idle_in_transaction, b.idle_in_transaction or 0)
        b.sessions = max(sessions, b.sessions or 0)
        if connections is not None:
            b.connections = max(connections, b.connections or 0)
        if max_connections is not None:
            b.max_connections = max_connections
        if longest_wait_s is not None:
            b.longest_wait_s = max(longest_wait_s, b.longest_wait_s or 0.0)

    def buckets(self, since: float | None = None, *, include_current: bool = False) -> list[Bucket]:
        """Buckets after second ``since`` (exclusive), the current, unfinished second only
        when asked."""
        now = int(self._clock())
        out: Iterable[Bucket] = self._buckets
        if since is not None:
            out = (b for b in out if b.t > since)
        return [b for b in out if include_current or b.t < now]
