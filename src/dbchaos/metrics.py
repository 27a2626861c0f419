"""Prometheus metrics, one registry per server (never the process-wide default).

The engine calls the hooks (``activated``, ``reverted``, ``finished``) as faults change
state; blocked sessions per fault and unreverted journal entries are read from the targets
when ``/metrics`` is scraped. A target that is down only loses its samples: a scrape
never fails because of it. Every name starts with ``dbchaos_``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import psycopg
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from dbchaos import errors
from dbchaos.engine.model import FaultRecord
from dbchaos.faults.migration import journal

if TYPE_CHECKING:
    from dbchaos.engine.engine import Engine

_log = logging.getLogger("dbchaos.metrics")

#: inject (create → active) and revert (stop → finished) latency buckets, in seconds
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
#: how long a scrape waits for one target's journal count before it skips the sample
JOURNAL_TIMEOUT_S = 5.0
#: the ``Content-Type`` of ``/metrics``
CONTENT_TYPE = CONTENT_TYPE_LATEST


@dataclass(frozen=True)
class ScrapeSamples:
    """Values read from the targets for one scrape."""

    #: (fault id, kind, target) → sessions blocked behind the fault
    blocked: Mapping[tuple[str, str, str], int] = field(default_factory=dict)
    #: target → ``active`` entries in ``dbchaos.journal``
    unreverted: Mapping[str, int] = field(default_factory=dict)


class _ScrapeCollector(Collector):
    """Exposes the samples the last ``Metrics.render`` read (set just before generating)."""

    def __init__(self) -> None:
        self.samples = ScrapeSamples()

    def collect(self) -> Iterator[Metric]:
        blocked = GaugeMetricFamily(
            "dbchaos_fault_blocked_sessions",
            "Sessions currently blocked behind an active fault (read at scrape time)",
            labels=["fault_id", "kind", "target"],
        )
        for (fault_id, kind, target), count in sorted(self.samples.blocked.items()):
            blocked.add_metric([fault_id, kind, target], count)
        yield blocked
        journal = GaugeMetricFamily(
            "dbchaos_journal_unreverted_entries",
            "Entries in the target's dbchaos.journal still in state 'active' (read at scrape time)",
            labels=["target"],
        )
        for target, count in sorted(self.samples.unreverted.items()):
            journal.add_metric([target], count)
        yield journal

    def describe(self) -> Iterable[Metric]:
        return []


async def _count_unreverted(conn: psycopg.AsyncConnection[Any]) -> int:
    cur = await conn.execute(journal.EXISTS_SQL)
    row = await cur.fetchone()
    if not (row and row[0]):
        return 0
    cur = await conn.execute("SELECT count(*) FROM dbchaos.journal WHERE state = 'active'")
    row = await cur.fetchone()
    return int(row[0]) if row else 0


class Metrics:
    """The metrics of one dbchaos server; ``render(engine)`` gives the exposition text."""

    def __init__(self, version: str) -> None:
        self.registry = CollectorRegistry()
        build = Gauge("dbchaos_build_info", "dbchaos build information", ["version"], registry=self.registry)
        build.labels(version).set(1)
        self.faults_active = Gauge(
            "dbchaos_faults_active", "Faults currently active", ["kind", "target"], registry=self.registry
        )
        self.faults_finished = Counter(
            "dbchaos_faults_finished",
            "Faults that finished, by final state and end reason",
            ["kind", "target", "state", "end_reason"],
            registry=self.registry,
        )
        self.inject_seconds = Histogram(
            "dbchaos_inject_seconds",
            "Time from a fault's creation to it being active",
            ["kind"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.revert_seconds = Histogram(
            "dbchaos_revert_seconds",
            "Time from a fault's stop (deadline, abort...) to it being finished",
            ["kind"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.halts = Counter(
            "dbchaos_halts",
            "Times a halt rule tripped and dbchaos reverted every fault on the target (docs/guard-rails.md)",
            ["target", "rule"],
            registry=self.registry,
        )
        self._scrape = _ScrapeCollector()
        self.registry.register(self._scrape)

    # ---- engine hooks --------------------------------------------------------------
    def activated(self, rec: FaultRecord) -> None:
        """A fault became active."""
        self.faults_active.labels(rec.kind, rec.target).inc()
        if rec.activated_at is not None:
            self.inject_seconds.labels(rec.kind).observe(max(0.0, rec.activated_at - rec.created_at))

    def reverted(self, rec: FaultRecord, seconds: float) -> None:
        """An active fault's revert took ``seconds`` from its stop."""
        self.revert_seconds.labels(rec.kind).observe(max(0.0, seconds))

    def finished(self, rec: FaultRecord) -> None:
        """A fault reached a final state (call once, after the record says so)."""
        if rec.activated_at is not None:
            self.faults_active.labels(rec.kind, rec.target).dec()
        reason = rec.end_reason.value if rec.end_reason is not None else ""
        self.faults_finished.labels(rec.kind, rec.target, rec.state.value, reason).inc()

    def halted(self, target: str, rule: str) -> None:
        """A halt rule tripped on ``target`` (its faults are being reverted, end reason ``halted``)."""
        self.halts.labels(target, rule).inc()

    # ---- scrape --------------------------------------------------------------------
    async def read_targets(self, engine: Engine) -> ScrapeSamples:
        """Blocked sessions per active fault and unreverted journal entries per target;
        a target that cannot be read is left out."""
        active = engine.unfinished()
        impacts = await engine.impacts(active)
        blocked = {(r.id, r.kind, r.target): impacts[r.id].blocked_count for r in active if r.id in impacts}

        async def journal(name: str) -> tuple[str, int | None]:
            try:
                async with asyncio.timeout(JOURNAL_TIMEOUT_S):
                    return name, await engine.channel(engine.target(name)).run(_count_unreverted)
            except (errors.DbChaosError, psycopg.Error, OSError, TimeoutError) as exc:
                _log.info("no journal metric for target %s: %s", name, getattr(exc, "message", exc))
                return name, None

        counts = await asyncio.gather(*(journal(name) for name in list(engine.targets)))
        return ScrapeSamples(blocked, {name: n for name, n in counts if n is not None})

    async def render(self, engine: Engine) -> bytes:
        """The Prometheus text exposition, with fresh samples from the targets."""
        samples = await self.read_targets(engine)
        self._scrape.samples = samples  # no await between setting and generating
        return generate_latest(self.registry)
