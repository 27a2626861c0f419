"""The experiment observer: what PostgreSQL saw, sampled at a steady rate on one timeline.

While an experiment runs (a baseline before the faults, the fault windows, a recovery
window after), an :class:`Observer` samples the target database ``rate_hz`` times a second
(default 2) and keeps the :class:`Sample` records in memory (bounded). Each sample is **one
round trip**: a single prepared statement that returns one JSON object with

* sessions of the target database by state (``active``, ``idle``, ``idle in transaction``…),
  and how many of them are dbchaos's own;
* sessions waiting on a lock, how long each has waited (``pg_locks.waitstart``) and on whom
  (``pg_blocking_pids``), and the lock trees they form (blocker → waiters);
* idle-in-transaction sessions: how many, the oldest transaction, the longest idle time;
* connection slots in use (whole cluster) against ``max_connections`` and the reserved slots;
* the increase of the database's ``pg_stat_database`` counters (commits, rollbacks,
  deadlocks, conflicts, temp files/bytes) since the previous sample.

It reads ``pg_stat_get_activity(NULL)`` (the documented function behind ``pg_stat_activity``,
without the view's joins: half the server CPU per sample with 500 sessions, see
``docs/benchmarks.md``) and calls ``pg_blocking_pids`` only for sessions that wait on a lock.
The observer's own session is left out of every figure (it still occupies one slot: see
``Connections.available``). It runs on its own connection, tagged
``application_name = 'dbchaos:<instance>:observer'``, read-only, with its own
``statement_timeout`` and ``lock_timeout`` so a sample can never hang or block anyone, and an
``idle_session_timeout`` so PostgreSQL closes it if dbchaos freezes or dies (DESIGN §2).

Phases (``baseline`` → ``fault`` → ``recovery``) are marked from outside with
:meth:`Observer.mark`; every sample carries the phase in force when it started. A sample
that fails (timeout, lost connection) is kept, with ``error`` set and no figures: the
timeline shows the gap instead of hiding it. The JSON field names of
:meth:`Sample.as_dict` are a stable interface (documented in ``docs/experiments.md``).

Lock trees reuse :mod:`dbchaos.observe.activity` (its ``Session`` and ``Snapshot``), but are
rendered as a spanning tree — each waiter once, under the first blocker found from the
roots — with a node budget: with a queue of mutually conflicting waiters
``pg_blocking_pids`` reports every earlier waiter as a blocker, and a full path expansion
would grow exponentially with the queue length.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

import psycopg

from dbchaos.errors import InvalidInput, TargetUnreachable
from dbchaos.observe.activity import QUERY_TEXT_LIMIT, Session, Snapshot
from dbchaos.targets import Target

_log = logging.getLogger("dbchaos.observe.sampler")

#: version of the JSON shape of :meth:`Observer.as_dict` (bumped on any incompatible change)
SCHEMA = "dbchaos.observer/1"
DEFAULT_RATE_HZ = 2.0
MAX_RATE_HZ = 50.0
DEFAULT_STATEMENT_TIMEOUT_S = 1.0
#: one hour at the default rate
DEFAULT_MAX_SAMPLES = 7200
#: waiting sessions listed per sample (the longest waits first; the count is always complete)
DEFAULT_MAX_WAITERS = 100
#: nodes of all lock trees of one sample together
DEFAULT_MAX_TREE_NODES = 200

#: the ``pg_stat_database`` counters whose increase each sample reports
COUNTERS = ("xact_commit", "xact_rollback", "deadlocks", "conflicts", "temp_files", "temp_bytes")

SAMPLE_SQL = """
WITH act AS MATERIALIZED (
    SELECT a.pid, a.datid, a.usesysid, a.application_name, a.state, a.wait_event_type, a.wait_event,
           a.xact_start, a.state_change, a.query
    FROM pg_stat_get_activity(NULL) a
    WHERE a.backend_type = 'client backend' AND a.pid <> pg_backend_pid()
), here AS MATERIALIZED (
    SELECT * FROM act WHERE datid = (SELECT oid FROM pg_database WHERE datname = current_database())
), waiting AS MATERIALIZED (
    SELECT h.*, pg_blocking_pids(h.pid) AS blocked_by FROM here h WHERE h.wait_event_type = 'Lock'
), awaited AS MATERIALIZED (
    SELECT DISTINCT ON (l.pid) l.pid, l.locktype, l.mode, l.waitstart,
           CASE WHEN l.relation IS NOT NULL THEN coalesce(
               (SELECT n.nspname || '.' || c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
                WHERE c.oid = l.relation), l.relation::text) END AS relation
    FROM pg_locks l
    WHERE NOT l.granted AND l.pid IN (SELECT pid FROM waiting)
    ORDER BY l.pid, l.waitstart
), lock_sessions AS (
    SELECT w.pid, w.usesysid, w.application_name, w.state, w.query, w.wait_event_type, w.wait_event,
           w.state_change, w.xact_start, w.blocked_by, aw.locktype, aw.mode, aw.relation,
           coalesce(aw.waitstart, w.state_change) AS wait_start
    FROM waiting w LEFT JOIN awaited aw ON aw.pid = w.pid
    UNION ALL
    SELECT h.pid, h.usesysid, h.application_name, h.state, h.query, h.wait_event_type, h.wait_event,
           h.state_change, h.xact_start, NULL, NULL, NULL, NULL, NULL
    FROM here h  -- the blockers, once each (an array test: no rescan of waiting per session)
    WHERE h.pid = ANY ((SELECT array_agg(DISTINCT b) FROM waiting, unnest(waiting.blocked_by) AS b)::int[])
      AND h.pid NOT IN (SELECT pid FROM waiting)
)
SELECT json_build_object(
    'by_state', (SELECT coalesce(json_object_agg(s, n), '{}'::json)
                 FROM (SELECT coalesce(state, 'unknown') AS s, count(*) AS n FROM here GROUP BY 1) x),
    'dbchaos', (SELECT count(*) FROM here WHERE application_name LIKE 'dbchaos:%%'),
    'idle_in_transaction', (
        SELECT json_build_object(
            'count', count(*),
            'oldest_xact_s', max(greatest(0, extract(epoch FROM statement_timestamp() - xact_start)::float8)),
            'longest_idle_s', max(greatest(0, extract(epoch FROM statement_timestamp() - state_change)::float8)))
        FROM here WHERE state IN ('idle in transaction', 'idle in transaction (aborted)')),
    'connections', json_build_object(
        'used', (SELECT count(*) FROM act),
        'database', (SELECT count(*) FROM here),
        'max', current_setting('max_connections')::int,
        'superuser_reserved', current_setting('superuser_reserved_connections')::int,
        'reserved', coalesce(current_setting('reserved_connections', true)::int, 0)),
    'lock_sessions', CASE WHEN EXISTS (SELECT 1 FROM waiting) THEN (
        SELECT json_agg(json_build_object(
            'pid', s.pid, 'user', pg_get_userbyid(s.usesysid), 'application_name', s.application_name,
            'state', s.state, 'query', left(s.query, %(qlimit)s), 'wait_event_type', s.wait_event_type,
            'wait_event', s.wait_event,
            'state_age_s', greatest(0, extract(epoch FROM statement_timestamp() - s.state_change)::float8),
            'xact_age_s', greatest(0, extract(epoch FROM statement_timestamp() - s.xact_start)::float8),
            'blocked_by', s.blocked_by,
            'wait_s', CASE WHEN s.blocked_by IS NOT NULL
                THEN greatest(0, extract(epoch FROM statement_timestamp() - s.wait_start)::float8) END,
            'locktype', s.locktype, 'mode', s.mode, 'relation', s.relation))
        FROM lock_sessions s) END,
    'counters', (SELECT json_build_object(
            'xact_commit', d.xact_commit, 'xact_rollback', d.xact_rollback, 'deadlocks', d.deadlocks,
            'conflicts', d.conflicts, 'temp_files', d.temp_files, 'temp_bytes', d.temp_bytes,
            'stats_reset', extract(epoch FROM d.stats_reset)::float8)
        FROM pg_stat_database d WHERE d.datname = current_database())
)
"""


class Phase(StrEnum):
    """The part of an experiment a sample belongs to (set with :meth:`Observer.mark`)."""

    BASELINE = "baseline"
    FAULT = "fault"
    RECOVERY = "recovery"


def rfc3339(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _r(value: float | None, digits: int = 3) -> float | None:
    return None if value is None else round(value, digits)


# ---------------------------------------------------------------------------- records
@dataclass(frozen=True)
class WaitingSession:
    """A session of the target database waiting for a lock."""

    pid: int
    application_name: str
    user: str | None
    #: seconds since it started waiting for the lock it still waits for
    wait_s: float
    #: the pids in its way (``pg_blocking_pids``): holders and earlier conflicting waiters
    blocked_by: tuple[int, ...]
    locktype: str | None
    mode: str | None
    relation: str | None
    query: str | None

    def as_dict(self) -> dict[str, Any]:
        return {
            "pid": self.pid,
            "application_name": self.application_name,
            "user": self.user,
            "wait_s": _r(self.wait_s),
            "blocked_by": list(self.blocked_by),
            "lock": {"locktype": self.locktype, "mode": self.mode, "relation": self.relation},
            "query": self.query,
        }


@dataclass(frozen=True)
class IdleInTransaction:
    count: int
    #: age of the oldest idle-in-transaction session's transaction (``now - xact_start``)
    oldest_xact_s: float | None
    #: the longest time one of them has been idle (``now - state_change``)
    longest_idle_s: float | None

    def as_dict(self) -> dict[str, Any]:
        return {
            "count": self.count,
            "oldest_xact_s": _r(self.oldest_xact_s),
            "longest_idle_s": _r(self.longest_idle_s),
        }


@dataclass(frozen=True)
class Connections:
    """Connection slots. ``max_connections`` is per cluster, so ``used`` counts every client
    backend of the cluster (the observer's own excluded); ``database`` those of the target."""

    used: int
    database: int
    max: int
    superuser_reserved: int
    reserved: int

    @property
    def available(self) -> int:
        """Slots an ordinary role can still take (the observer's own slot subtracted)."""
        return max(0, self.max - self.superuser_reserved - self.reserved - self.used - 1)

    def as_dict(self) -> dict[str, Any]:
        return {
            "used": self.used,
            "database": self.database,
            "max": self.max,
            "superuser_reserved": self.superuser_reserved,
            "reserved": self.reserved,
            "available": self.available,
        }


@dataclass(frozen=True)
class Observation:
    """What one successful sample saw."""

    sessions_by_state: Mapping[str, int]
    dbchaos_sessions: int
    waiting: tuple[WaitingSession, ...]
    waiting_count: int
    max_wait_s: float | None
    lock_trees: tuple[dict[str, Any], ...]
    #: tree nodes left out (beyond ``max_tree_nodes``)
    lock_trees_omitted: int
    idle_in_transaction: IdleInTransaction
    connections: Connections
    #: increase of each counter of :data:`COUNTERS` since the previous sample; ``None`` on the
    #: first sample and after the statistics were reset
    deltas: Mapping[str, int] | None

    @property
    def sessions(self) -> int:
        return sum(self.sessions_by_state.values())


@dataclass(frozen=True)
class Sample:
    """One look at the target. ``observation`` is ``None`` when the sample failed (``error``)."""

    seq: int
    #: wall clock (seconds since the epoch) and ``time.monotonic()`` when the sample started
    time: float
    mono: float
    #: seconds since the observer started (monotonic)
    t: float
    phase: str
    #: how long the round trip took
    duration_ms: float
    error: str | None
    observation: Observation | None

    @property
    def ok(self) -> bool:
        return self.observation is not None

    @property
    def blocked_sessions(self) -> int | None:
        return None if self.observation is None else self.observation.waiting_count

    def as_dict(self) -> dict[str, Any]:
        """The stable JSON form (see ``docs/experiments.md``, "Observer samples")."""
        o = self.observation
        out: dict[str, Any] = {
            "seq": self.seq,
            "time": rfc3339(self.time),
            "t": round(self.t, 4),
            "phase": self.phase,
            "duration_ms": round(self.duration_ms, 3),
            "error": self.error,
        }
        if o is None:
            out.update(
                sessions=None,
                waiting=None,
                lock_trees=None,
                lock_trees_omitted=None,
                idle_in_transaction=None,
                connections=None,
                database=None,
            )
            return out
        out["sessions"] = {"total": o.sessions, "by_state": dict(o.sessions_by_state), "dbchaos": o.dbchaos_sessions}
        out["waiting"] = {
            "count": o.waiting_count,
            "max_wait_s": _r(o.max_wait_s),
            "sessions": [w.as_dict() for w in o.waiting],
            "truncated": o.waiting_count > len(o.waiting),
        }
        out["lock_trees"] = list(o.lock_trees)
        out["lock_trees_omitted"] = o.lock_trees_omitted
        out["idle_in_transaction"] = o.idle_in_transaction.as_dict()
        out["connections"] = o.connections.as_dict()
        out["database"] = dict(o.deltas) if o.deltas is not None else None
        return out


@dataclass(frozen=True)
class PhaseMark:
    """A phase change: samples started at or after ``mono`` carry ``phase``."""

    phase: str
    time: float
    mono: float
    label: str | None = None

    def as_dict(self, started_mono: float) -> dict[str, Any]:
        return {
            "phase": self.phase,
            "time": rfc3339(self.time),
            "t": round(self.mono - started_mono, 4),
            "label": self.label,
        }


# ---------------------------------------------------------------------------- lock trees
def lock_trees(
    snapshot: Snapshot,
    waits: Mapping[int, WaitingSession],
    max_nodes: int = DEFAULT_MAX_TREE_NODES,
) -> tuple[tuple[dict[str, Any], ...], int]:
    """The lock trees of ``snapshot`` (roots: blockers that wait for nobody) and how many
    nodes did not fit in ``max_nodes``.

    Each waiter appears once, under the blocker closest to a root (breadth first); its other
    blockers are in its ``blocked_by``. Waiters only reachable through a cycle (a deadlock
    before PostgreSQL's ``deadlock_timeout`` breaks it) hang under their smallest pid.
    """
    edges = snapshot.waiters_of()
    waiting = {pid for pid, s in snapshot.sessions.items() if s.blocked_by}
    roots = sorted({b for b in edges if b not in waiting})
    parent: dict[int, int | None] = dict.fromkeys(roots)
    children: dict[int, list[int]] = {}

    def spread(start: list[int]) -> None:
        frontier = start
        while frontier:
            nxt: list[int] = []
            for pid in frontier:
                for w in sorted(edges.get(pid, ())):
                    if w not in parent:
                        parent[w] = pid
                        children.setdefault(pid, []).append(w)
                        nxt.append(w)
            frontier = nxt

    spread(roots)
    for pid in sorted(waiting):  # cycles: no root reaches them
        if pid not in parent:
            parent[pid] = None
            roots.append(pid)
            spread([pid])

    rendered = [0]

    def node(pid: int) -> dict[str, Any] | None:
        if rendered[0] >= max_nodes:
            return None
        rendered[0] += 1
        s = snapshot.sessions.get(pid)
        w = waits.get(pid)
        kids = [n for n in (node(c) for c in children.get(pid, ())) if n is not None]
        return {
            "pid": pid,
            "application_name": s.application_name if s else None,
            "state": s.state if s else None,
            "query": s.query if s else None,
            "wait_s": _r(w.wait_s) if w else None,
            "mode": w.mode if w else None,
            "relation": w.relation if w else None,
            "blocked_by": list(s.blocked_by) if s else [],
            "waits": kids,
        }

    trees = tuple(n for n in (node(r) for r in roots) if n is not None)
    return trees, len(parent) - rendered[0]


# ---------------------------------------------------------------------------- parsing
def _session(d: Mapping[str, Any]) -> Session:
    return Session(
        pid=int(d["pid"]),
        user=d.get("user"),
        application_name=d.get("application_name") or "",
        state=d.get("state"),
        query=d.get("query"),
        wait_event_type=d.get("wait_event_type"),
        wait_event=d.get("wait_event"),
        state_age_s=d.get("state_age_s"),
        xact_age_s=d.get("xact_age_s"),
        backend_xmin=None,
        blocked_by=tuple(int(p) for p in (d.get("blocked_by") or ())),
        database=None,
    )


def _deltas(
    counters: Mapping[str, Any] | None, previous: Mapping[str, Any] | None
) -> tuple[dict[str, int] | None, Mapping[str, Any] | None]:
    if counters is None:
        return None, previous
    if previous is None or previous.get("stats_reset") != counters.get("stats_reset"):
        return None, counters
    out: dict[str, int] = {}
    for k in COUNTERS:
        cur, prev = counters.get(k), previous.get(k)
        if cur is None or prev is None or int(cur) < int(prev):
            return None, counters
        out[k] = int(cur) - int(prev)
    return out, counters


def parse_observation(
    row: Mapping[str, Any],
    previous_counters: Mapping[str, Any] | None,
    *,
    max_waiters: int = DEFAULT_MAX_WAITERS,
    max_tree_nodes: int = DEFAULT_MAX_TREE_NODES,
    taken_at: float | None = None,
) -> tuple[Observation, Mapping[str, Any] | None]:
    """Turn the JSON of :data:`SAMPLE_SQL` into an :class:`Observation`; also returns the raw
    counters to diff the next sample against."""
    lock_rows = list(row.get("lock_sessions") or ())
    sessions = {int(d["pid"]): _session(d) for d in lock_rows}
    waits = {
        int(d["pid"]): WaitingSession(
            pid=int(d["pid"]),
            application_name=d.get("application_name") or "",
            user=d.get("user"),
            wait_s=float(d.get("wait_s") or 0.0),
            blocked_by=tuple(int(p) for p in (d.get("blocked_by") or ())),
            locktype=d.get("locktype"),
            mode=d.get("mode"),
            relation=d.get("relation"),
            query=d.get("query"),
        )
        for d in lock_rows
        if d.get("wait_s") is not None
    }
    longest = sorted(waits.values(), key=lambda w: (-w.wait_s, w.pid))
    trees, omitted = lock_trees(Snapshot(taken_at or time.time(), sessions), waits, max_tree_nodes)
    iit = row.get("idle_in_transaction") or {}
    conn = row["connections"]
    deltas, counters = _deltas(row.get("counters"), previous_counters)
    obs = Observation(
        sessions_by_state={str(k): int(v) for k, v in sorted((row.get("by_state") or {}).items())},
        dbchaos_sessions=int(row.get("dbchaos") or 0),
        waiting=tuple(longest[:max_waiters]),
        waiting_count=len(waits),
        max_wait_s=longest[0].wait_s if longest else None,
        lock_trees=trees,
        lock_trees_omitted=omitted,
        idle_in_transaction=IdleInTransaction(
            count=int(iit.get("count") or 0),
            oldest_xact_s=iit.get("oldest_xact_s"),
            longest_idle_s=iit.get("longest_idle_s"),
        ),
        connections=Connections(
            used=int(conn["used"]),
            database=int(conn["database"]),
            max=int(conn["max"]),
            superuser_reserved=int(conn["superuser_reserved"]),
            reserved=int(conn["reserved"]),
        ),
        deltas=deltas,
    )
    return obs, counters


# ---------------------------------------------------------------------------- the observer
SampleCallback = Callable[[Sample], None]


@dataclass
class _State:
    conn: psycopg.AsyncConnection[Any] | None = None
    counters: Mapping[str, Any] | None = None
    seq: int = 0
    phase: str = Phase.BASELINE.value
    task: asyncio.Task[None] | None = None
    samples: deque[Sample] = field(default_factory=deque)
    marks: list[PhaseMark] = field(default_factory=list)
    dropped: int = 0
    started_mono: float | None = None


class Observer:
    """Samples one target database at a steady rate on its own connection.

    ::

        async with Observer(target, instance="a1b2c3") as obs:   # connects, starts sampling
            ...                                   # baseline
            obs.mark(Phase.FAULT, label="table-lock items")
            ...
            obs.mark(Phase.RECOVERY)
            ...
        journal = obs.as_dict()                   # every sample, JSON-ready

    ``sample()`` takes one sample now (the loop uses it; tests and benchmarks may too).
    ``on_sample`` is called with each sample the loop takes (e.g. to check halt
    conditions); it must be quick and must not raise (errors are logged and ignored).
    """

    def __init__(
        self,
        target: Target,
        *,
        instance: str,
        rate_hz: float = DEFAULT_RATE_HZ,
        statement_timeout_s: float = DEFAULT_STATEMENT_TIMEOUT_S,
        connect_timeout_s: float = 3.0,
        max_samples: int = DEFAULT_MAX_SAMPLES,
        max_waiters: int = DEFAULT_MAX_WAITERS,
        max_tree_nodes: int = DEFAULT_MAX_TREE_NODES,
        on_sample: SampleCallback | None = None,
    ) -> None:
        if not (isinstance(rate_hz, int | float) and math.isfinite(rate_hz) and 0 < rate_hz <= MAX_RATE_HZ):
            raise InvalidInput(
                f"the observer rate must be above 0 and at most {MAX_RATE_HZ:g} per second", field="observer.rate"
            )
        if not 0 < statement_timeout_s <= 60:
            raise InvalidInput("the observer statement_timeout must be within (0, 60] s", field="observer")
        if max_samples < 1:
            raise InvalidInput("max_samples must be at least 1", field="observer")
        self.target = target
        self.instance = instance
        self.rate_hz = float(rate_hz)
        self.statement_timeout_s = statement_timeout_s
        self.connect_timeout_s = connect_timeout_s
        self.max_samples = max_samples
        self.max_waiters = max_waiters
        self.max_tree_nodes = max_tree_nodes
        self.on_sample = on_sample
        self._s = _State(samples=deque(maxlen=max_samples))
        self._lock = asyncio.Lock()

    # ------------------------------------------------------------- properties
    @property
    def application_name(self) -> str:
        return f"dbchaos:{self.instance}:observer"[:63]

    @property
    def interval_s(self) -> float:
        return 1.0 / self.rate_hz

    @property
    def phase(self) -> str:
        return self._s.phase

    @property
    def samples(self) -> list[Sample]:
        """The samples kept (the oldest are dropped beyond ``max_samples``)."""
        return list(self._s.samples)

    @property
    def marks(self) -> list[PhaseMark]:
        return list(self._s.marks)

    @property
    def dropped(self) -> int:
        """Samples dropped from memory because more than ``max_samples`` were taken."""
        return self._s.dropped

    @property
    def running(self) -> bool:
        return self._s.task is not None and not self._s.task.done()

    @property
    def backend_pid(self) -> int | None:
        """The pid of the observer's backend (for measuring its cost), if connected."""
        conn = self._s.conn
        return None if conn is None or conn.closed else conn.info.backend_pid

    # ------------------------------------------------------------- lifecycle
    async def __aenter__(self) -> Observer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def connect(self) -> None:
        """Open the observer's connection (``TargetUnreachable`` if it cannot)."""
        if self._s.conn is not None and not self._s.conn.closed:
            return
        conn = await self.target.connect(self.application_name, connect_timeout_s=self.connect_timeout_s)
        try:
            timeout_ms = max(1, math.ceil(self.statement_timeout_s * 1000))
            # closed by PostgreSQL if dbchaos stops sampling for this long (frozen or gone)
            idle_ms = max(10_000, math.ceil(self.interval_s * 5000))
            await conn.execute(
                f"SET default_transaction_read_only = on; SET statement_timeout = {timeout_ms};"
                f" SET lock_timeout = {timeout_ms}; SET idle_session_timeout = {idle_ms};"
                " SET idle_in_transaction_session_timeout = 10000"
            )
        except psycopg.Error as exc:
            await conn.close()
            raise TargetUnreachable(self.target.unreachable_message(exc)) from exc
        self._s.conn = conn

    async def start(self) -> None:
        """Connect, take the first sample (the counters' starting point) and start the loop."""
        if self.running:
            return
        await self.connect()
        if self._s.started_mono is None:
            self._s.started_mono = time.monotonic()
        first = await self.sample()
        self._notify(first)
        self._s.task = asyncio.create_task(self._loop(), name=f"observer {self.target.name}")

    async def stop(self) -> None:
        """Stop sampling and close the connection. The samples stay available."""
        task, self._s.task = self._s.task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        conn, self._s.conn = self._s.conn, None
        if conn is not None:
            with contextlib.suppress(Exception):
                await conn.close()

    def mark(self, phase: Phase | str, label: str | None = None) -> PhaseMark:
        """From now on, samples belong to ``phase``."""
        value = Phase(phase).value
        m = PhaseMark(value, time.time(), time.monotonic(), label)
        self._s.phase = value
        self._s.marks.append(m)
        return m

    # ------------------------------------------------------------- sampling
    async def _loop(self) -> None:
        due = time.monotonic()
        while True:
            due += self.interval_s
            now = time.monotonic()
            if due < now:  # a slow sample: start the next one now, and keep the grid from there
                due = now
            await asyncio.sleep(due - now)
            self._notify(await self.sample())

    def _notify(self, sample: Sample) -> None:
        if self.on_sample is None:
            return
        try:
            self.on_sample(sample)
        except Exception:
            _log.exception("observer on_sample callback failed (ignored)")

    async def sample(self) -> Sample:
        """Take one sample now and keep it."""
        async with self._lock:
            if self._s.started_mono is None:
                self._s.started_mono = time.monotonic()
            phase = self._s.phase
            wall, mono = time.time(), time.monotonic()
            error: str | None = None
            obs: Observation | None = None
            try:
                await self.connect()
                assert self._s.conn is not None
                cur = await self._s.conn.execute(SAMPLE_SQL, {"qlimit": QUERY_TEXT_LIMIT}, prepare=True)
                row = await cur.fetchone()
                if row is None or not isinstance(row[0], dict):
                    raise RuntimeError("the sample query returned no row")
                obs, self._s.counters = parse_observation(
                    row[0],
                    self._s.counters,
                    max_waiters=self.max_waiters,
                    max_tree_nodes=self.max_tree_nodes,
                    taken_at=wall,
                )
            except TargetUnreachable as exc:
                error = exc.message
            except psycopg.Error as exc:
                error = _short_error(exc)
                conn = self._s.conn
                if conn is not None and (conn.closed or conn.broken):
                    self._s.conn = None
                    with contextlib.suppress(Exception):
                        await conn.close()
            duration = time.monotonic() - mono
            self._s.seq += 1
            s = Sample(
                seq=self._s.seq,
                time=wall,
                mono=mono,
                t=mono - self._s.started_mono,
                phase=phase,
                duration_ms=duration * 1000,
                error=error,
                observation=obs,
            )
            if len(self._s.samples) == self._s.samples.maxlen:
                self._s.dropped += 1
            self._s.samples.append(s)
            return s

    def as_dict(self) -> dict[str, Any]:
        """Every kept sample and phase mark in the stable JSON form."""
        started = self._s.started_mono if self._s.started_mono is not None else time.monotonic()
        return {
            "schema": SCHEMA,
            "rate_hz": self.rate_hz,
            "dropped": self._s.dropped,
            "marks": [m.as_dict(started) for m in self._s.marks],
            "samples": [s.as_dict() for s in self._s.samples],
        }


def _short_error(exc: psycopg.Error) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    state = f" [{exc.sqlstate}]" if exc.sqlstate else ""
    return f"{type(exc).__name__}{state}: {text[:200]}"


def samples_in(samples: Iterable[Sample], phase: Phase | str) -> list[Sample]:
    """The samples of one phase, in order."""
    value = Phase(phase).value
    return [s for s in samples if s.phase == value]
