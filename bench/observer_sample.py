"""Cost of one experiment-observer sample with 10, 100 and 500 sessions on the target.

For each session count N the script opens N client sessions on the bench database: one
holds ``ACCESS EXCLUSIVE`` on a table ``bench_obs``, 10 % (at least one) wait for it with a
``SELECT`` (blocked, so every sample builds a lock tree and reads ``pg_locks``), one sits
idle in transaction, the rest are idle. Then, interleaved (observer, raw, observer, raw…):

* **observer** — ``Observer.sample()`` (``dbchaos.observe.sampler``): the one-round-trip
  sample statement, its JSON decoded, the dataclasses and lock trees built, the counters
  diffed; timed from the call to its return;
* **raw** — the same statement (same parameters, prepared, the JSON decoded by psycopg) on
  a plain psycopg connection of its own: the floor any implementation of that query pays.

Samples are taken back to back (a 2 ms pause), not at the observer's 2/s, to keep the
benchmark short. Server load: CPU time (user + system, from ``/proc/<pid>/stat`` via
psutil) of the observer's backend and of the raw connection's backend over all their
samples, divided by the number of samples; at the default rate of 2 samples/s the load
is twice that per second. Needs the server on this machine (else the CPU columns are n/a).

The shared bench server has ``max_connections`` 300, so for 500 sessions the script starts
its own embedded PostgreSQL with ``max_connections`` 700 (stopped afterwards), unless the
bench server already allows enough connections.

    python -m bench.observer_sample [--samples 200] [--sessions 10,100,500]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import sys
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import psutil
import psycopg

from bench.common import (
    STAT_HEADER,
    Check,
    Database,
    median,
    print_checks,
    print_table,
    standalone,
    stat_row,
)
from dbchaos.embedded.sample import create_sample_database
from dbchaos.embedded.server import EmbeddedPostgres
from dbchaos.observe.activity import QUERY_TEXT_LIMIT
from dbchaos.observe.sampler import SAMPLE_SQL, Observer
from dbchaos.targets import Target

TABLE = "bench_obs"
LIMIT_MS = 5.0  # per sample at 100 sessions (median)
PAUSE_S = 0.002
CONNECT_BATCH = 25
OWN_MAX_CONNECTIONS = 700
OWN_DATABASE = "dbchaos_bench_observer"


@dataclass
class Series:
    observer: list[float] = field(default_factory=list)
    raw: list[float] = field(default_factory=list)
    observer_cpu_s: float = math.nan
    raw_cpu_s: float = math.nan
    blocked_seen: int = 0
    sessions_seen: int = 0
    tree_nodes: int = 0
    json_bytes: int = 0


def _cpu_s(pid: int | None) -> float:
    if pid is None:
        return math.nan
    try:
        t = psutil.Process(pid).cpu_times()
    except (psutil.Error, OSError):
        return math.nan
    return float(t.user + t.system)


def _nodes(tree: dict[str, Any]) -> int:
    return 1 + sum(_nodes(c) for c in tree.get("waits", ()))


@contextlib.asynccontextmanager
async def sessions(dsn: str, n: int) -> AsyncIterator[int]:
    """N sessions: 1 lock holder, ~10 % blocked, 1 idle in transaction, the rest idle.
    Yields the number of blocked sessions."""
    blocked_n = max(1, n // 10)
    idle_n = n - 2 - blocked_n
    conns: list[psycopg.AsyncConnection[Any]] = []

    async def connect(name: str) -> psycopg.AsyncConnection[Any]:
        return await psycopg.AsyncConnection.connect(dsn, autocommit=True, application_name=name)

    names = (
        ["holder", "idle-in-xact"] + [f"blocked-{i}" for i in range(blocked_n)] + [f"idle-{i}" for i in range(idle_n)]
    )
    try:
        for i in range(0, len(names), CONNECT_BATCH):
            conns += await asyncio.gather(*(connect(nm) for nm in names[i : i + CONNECT_BATCH]))
        holder, idle_xact, blocked = conns[0], conns[1], conns[2 : 2 + blocked_n]
        await holder.execute(f"BEGIN; LOCK TABLE {TABLE} IN ACCESS EXCLUSIVE MODE")
        await idle_xact.execute("BEGIN")
        await idle_xact.execute("SELECT 1")
        waits = [asyncio.ensure_future(c.execute(f"SELECT count(*) FROM {TABLE}")) for c in blocked]
        await _wait_blocked(holder, blocked_n)
        try:
            yield blocked_n
        finally:
            await holder.execute("ROLLBACK")
            await asyncio.wait_for(asyncio.gather(*waits, return_exceptions=True), 30)
    finally:
        for i in range(0, len(conns), CONNECT_BATCH):
            await asyncio.gather(*(c.close() for c in conns[i : i + CONNECT_BATCH]), return_exceptions=True)


async def _wait_blocked(conn: psycopg.AsyncConnection[Any], n: int) -> None:
    deadline = time.monotonic() + 30
    while True:
        cur = await conn.execute(
            "SELECT count(*) FROM pg_locks WHERE NOT granted AND relation = %s::regclass", (TABLE,)
        )
        row = await cur.fetchone()
        if row is not None and int(row[0]) >= n:
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"only {row[0] if row else 0} of {n} sessions are waiting")
        await asyncio.sleep(0.05)


async def measure(dsn: str, n: int, samples: int, warmup: int = 10) -> Series:
    series = Series()
    async with sessions(dsn, n) as blocked_n:
        obs = Observer(Target("bench", dsn), instance="bench", max_samples=samples + warmup + 1)
        await obs.connect()
        raw = await psycopg.AsyncConnection.connect(dsn, autocommit=True, application_name="bench-raw-sample")
        try:
            params = {"qlimit": QUERY_TEXT_LIMIT}

            async def raw_sample() -> Any:
                cur = await raw.execute(SAMPLE_SQL, params, prepare=True)
                return await cur.fetchone()

            for _ in range(warmup):
                await obs.sample()
                await raw_sample()
            obs_pid, raw_pid = obs.backend_pid, raw.info.backend_pid
            obs_cpu0, raw_cpu0 = _cpu_s(obs_pid), _cpu_s(raw_pid)
            for _ in range(samples):
                t0 = time.perf_counter()
                s = await obs.sample()
                series.observer.append(time.perf_counter() - t0)
                if s.observation is None:
                    raise RuntimeError(f"observer sample failed: {s.error}")
                await asyncio.sleep(PAUSE_S)
                t0 = time.perf_counter()
                row = await raw_sample()
                series.raw.append(time.perf_counter() - t0)
                await asyncio.sleep(PAUSE_S)
            series.observer_cpu_s = (_cpu_s(obs_pid) - obs_cpu0) / samples
            series.raw_cpu_s = (_cpu_s(raw_pid) - raw_cpu0) / samples
            o = s.observation
            assert o is not None
            series.blocked_seen = o.waiting_count
            series.sessions_seen = o.sessions
            series.tree_nodes = sum((_nodes(t) for t in o.lock_trees), 0)
            series.json_bytes = len(str(row[0])) if row else 0
            if o.waiting_count != blocked_n:
                raise RuntimeError(f"the observer saw {o.waiting_count} blocked sessions, expected {blocked_n}")
        finally:
            await raw.close()
            await obs.stop()
    return series


@contextlib.contextmanager
def server_for(db: Database, most: int) -> Iterator[tuple[str, str]]:
    """The bench database if its server allows ``most`` sessions (+ margin), else a database on
    an embedded PostgreSQL of our own with ``max_connections`` 700. Yields (dsn, description)."""
    free = _free_slots(db.dsn)
    if free >= most + 10:
        yield db.dsn, f"the bench server ({db.source})"
        return
    if "embedded" not in db.source:
        yield db.dsn, f"the bench server ({db.source}; {free} free slots: larger session counts are skipped)"
        return
    print(f"starting an embedded PostgreSQL with max_connections {OWN_MAX_CONNECTIONS} …", file=sys.stderr)
    embedded = EmbeddedPostgres(max_connections=OWN_MAX_CONNECTIONS).start()
    try:
        dsn = create_sample_database(embedded.dsn, OWN_DATABASE)
        yield (
            dsn,
            f"an embedded PostgreSQL {embedded.binaries.version} of its own, max_connections {OWN_MAX_CONNECTIONS}",
        )
    finally:
        print("stopping it …", file=sys.stderr)
        embedded.stop()


def _free_slots(dsn: str) -> int:
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute(
            "SELECT current_setting('max_connections')::int - current_setting('superuser_reserved_connections')::int"
            " - (SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend')"
        ).fetchone()
    return int(row[0]) if row else 0


def run(db: Database, samples: int = 200, counts: Sequence[int] = (10, 100, 500)) -> list[Check]:
    print(f"\n[observer sample] {samples} samples at each of {', '.join(map(str, counts))} sessions …", flush=True)
    results: dict[int, Series] = {}
    skipped: list[int] = []
    with server_for(db, max(counts)) as (dsn, where):
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(f"DROP TABLE IF EXISTS {TABLE}")
            conn.execute(f"CREATE TABLE {TABLE} (id int PRIMARY KEY)")
        try:
            for n in counts:
                if n + 5 > _free_slots(dsn):
                    skipped.append(n)
                    continue
                results[n] = asyncio.run(measure(dsn, n, samples))
        finally:
            with psycopg.connect(dsn, autocommit=True) as conn:
                conn.execute(f"DROP TABLE IF EXISTS {TABLE}")

    rows: list[list[str]] = []
    notes: list[str] = [f"server: {where}"]
    for n, s in results.items():
        rows.append(stat_row(f"{n} sessions: observer sample", s.observer))
        rows.append(stat_row(f"{n} sessions: raw psycopg, same SQL", s.raw))
        cpu = (
            "n/a (server not on this machine)"
            if math.isnan(s.observer_cpu_s)
            else f"{s.observer_cpu_s * 1000:.2f} ms (raw: {s.raw_cpu_s * 1000:.2f} ms) = "
            f"{s.observer_cpu_s * 2 * 100:.2f} % of one core at 2 samples/s"
        )
        notes.append(
            f"{n} sessions: backend CPU per sample {cpu}; the sample saw {s.sessions_seen} sessions, "
            f"{s.blocked_seen} blocked, a lock tree of {s.tree_nodes} nodes, {s.json_bytes / 1024:.1f} KiB of JSON; "
            f"observer/raw median {median(s.observer) / median(s.raw):.2f}×"
        )
    for n in skipped:
        notes.append(f"{n} sessions: skipped, not enough free connection slots on this server")
    print_table("observer sample: call → return (observer) / execute + fetch (raw)", STAT_HEADER, rows, notes)
    checks: list[Check] = []
    if 100 in results:
        checks.append(
            Check("observer sample median at 100 sessions", median(results[100].observer) * 1000, LIMIT_MS, "ms")
        )
    return checks


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--samples", type=int, default=200)
    ap.add_argument("--sessions", default="10,100,500", help="comma-separated session counts")
    args = ap.parse_args()
    counts = [int(c) for c in args.sessions.split(",") if c.strip()]
    with standalone() as db:
        print_checks(run(db, args.samples, counts))


if __name__ == "__main__":
    main()
