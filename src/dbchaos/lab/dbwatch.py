"""What PostgreSQL shows about the shop, for the dashboard: its figures once a second, the
live lock tree on request, and ending a session (the game days' "find the blocker").

The per-second figures (sessions waiting on a lock, idle transactions, connection slots)
come from the experiment observer (:class:`dbchaos.observe.sampler.Observer`, one round
trip per sample, on its own bounded connection). The lock tree is read on request with
:mod:`dbchaos.observe.activity` (who waits on whom, what the roots hold) and drawn as the
observer draws it (:func:`dbchaos.observe.sampler.lock_trees`: each waiter once, with a node
budget, so a long queue of mutually conflicting waiters stays small). Those reads and
``pg_terminate_backend`` use one more connection (``application_name = 'dbchaos-lab:watch'``,
never ``dbchaos:<uuid>``, which names fault sessions), bounded by server-side timeouts and
reopened after an error.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

import psycopg

from dbchaos.errors import TargetUnreachable
from dbchaos.lab.series import Series
from dbchaos.observe.activity import Snapshot, take_snapshot
from dbchaos.observe.sampler import Observer, Sample, lock_trees
from dbchaos.targets import Target

log = logging.getLogger(__name__)

APPLICATION_NAME = "dbchaos-lab:watch"
FAULT_PREFIX = "dbchaos:"
#: lock tree nodes drawn at most (the rest are counted in ``omitted``)
MAX_TREE_NODES = 200
OBSERVER_INSTANCE = "lab"
_OPTIONS = "-c statement_timeout=5000 -c lock_timeout=1000 -c idle_in_transaction_session_timeout=10000"

_TERMINATE_SQL = """
SELECT pg_terminate_backend(pid), application_name, state
FROM pg_stat_activity
WHERE pid = %s AND datname = current_database() AND backend_type = 'client backend' AND pid <> pg_backend_pid()
"""


def fault_id_of(application_name: str | None) -> str | None:
    """The dbchaos fault id of a fault session (``dbchaos:<uuid>``), else ``None``."""
    if application_name and application_name.startswith(FAULT_PREFIX):
        rest = application_name[len(FAULT_PREFIX) :]
        return rest if len(rest) == 36 else None
    return None


def _decorate(node: dict[str, Any]) -> dict[str, Any]:
    node["fault_id"] = fault_id_of(node.get("application_name"))
    for child in node.get("waits", ()):
        _decorate(child)
    return node


def lock_tree(snapshot: Snapshot, database: str) -> dict[str, Any]:
    """Who blocks whom in ``database``: the roots (sessions others wait on that wait on
    nobody in turn), each with what it holds and the tree of its waiters, and every waiting
    session as a flat list."""
    sessions = {pid: s for pid, s in snapshot.sessions.items() if s.database == database}
    waiting = [s for s in sessions.values() if s.blocked_by]
    trees, omitted = lock_trees(Snapshot(snapshot.taken_at, sessions, snapshot.locks), {}, MAX_TREE_NODES)
    roots = []
    for tree in trees:
        s = sessions.get(tree["pid"])
        roots.append(
            _decorate(tree)
            | {
                "user": s.user if s else None,
                "xact_age_s": round(s.xact_age_s, 3) if s and s.xact_age_s is not None else None,
                "state_age_s": round(s.state_age_s, 3) if s and s.state_age_s is not None else None,
                "locks": [lk.as_dict() for lk in snapshot.locks.get(tree["pid"], ())],
            }
        )
    return {
        "taken_at": snapshot.taken_at,
        "database": database,
        "roots": roots,
        "omitted": omitted,
        "blocked": [
            {
                "pid": s.pid,
                "application_name": s.application_name,
                "state": s.state,
                "query": s.query,
                "wait_event": s.wait_event,
                "wait_s": round(s.state_age_s, 3) if s.state_age_s is not None else None,
                "blocked_by": list(s.blocked_by),
                "fault_id": fault_id_of(s.application_name),
            }
            for s in sorted(waiting, key=lambda s: -(s.state_age_s or 0.0))
        ],
        "idle_in_transaction": [
            {
                "pid": s.pid,
                "application_name": s.application_name,
                "xact_age_s": round(s.xact_age_s, 3) if s.xact_age_s is not None else None,
                "query": s.query,
                "fault_id": fault_id_of(s.application_name),
            }
            for s in sessions.values()
            if (s.state or "").startswith("idle in transaction")
        ],
    }


class DbWatch:
    """The lab's observer connection to the shop database."""

    def __init__(self, dsn: str, series: Series, *, interval_s: float = 1.0) -> None:
        self.dsn = dsn
        self.series = series
        self.interval_s = interval_s
        self._conn: psycopg.AsyncConnection[Any] | None = None
        self._lock = asyncio.Lock()
        self.database: str | None = None
        self.last_error: str | None = None

    async def _connection(self) -> psycopg.AsyncConnection[Any]:
        if self._conn is None or self._conn.closed:
            self._conn = await psycopg.AsyncConnection.connect(
                self.dsn, autocommit=True, application_name=APPLICATION_NAME, options=_OPTIONS, connect_timeout=3
            )
            cur = await self._conn.execute("SELECT current_database()")
            row = await cur.fetchone()
            self.database = str(row[0]) if row else None
        return self._conn

    async def _call(self, fn: Any) -> Any:
        """Run ``fn(conn)`` under the lock; drop the connection after an error."""
        async with self._lock:
            try:
                conn = await self._connection()
                result = await fn(conn)
                self.last_error = None
                return result
            except psycopg.Error as exc:
                self.last_error = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                await self._drop()
                raise

    async def _drop(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(Exception):
                await conn.close()

    def record(self, sample: Sample) -> None:
        """One observer sample into the series (a failed sample leaves the second empty)."""
        o = sample.observation
        if o is None:
            self.last_error = sample.error
            return
        self.last_error = None
        listed_faults = sum(1 for w in o.waiting if w.application_name.startswith(FAULT_PREFIX))
        self.series.record_database(
            blocked=o.waiting_count,
            blocked_app=max(0, o.waiting_count - listed_faults),
            idle_in_transaction=o.idle_in_transaction.count,
            sessions=o.sessions,
            connections=o.connections.used,
            max_connections=o.connections.max,
            longest_wait_s=o.max_wait_s,
            at=sample.time,
        )

    async def run(self) -> None:
        """Sample once a second until cancelled; an unreachable database is retried."""
        target = Target("shop", self.dsn)
        while True:
            observer = Observer(
                target,
                instance=OBSERVER_INSTANCE,
                rate_hz=1.0 / self.interval_s,
                max_samples=120,
                on_sample=self.record,
            )
            try:
                await observer.start()
                while observer.running:
                    await asyncio.sleep(1.0)
            except TargetUnreachable as exc:
                self.last_error = exc.message
            finally:
                await observer.stop()
            await asyncio.sleep(self.interval_s)

    async def lock_tree(self) -> dict[str, Any]:
        async def tree(conn: psycopg.AsyncConnection[Any]) -> dict[str, Any]:
            first = await take_snapshot(conn)
            database = self.database or ""
            blockers = {b for s in first.sessions.values() if s.database == database for b in s.blocked_by}
            snap = await take_snapshot(conn, blockers) if blockers else first
            return lock_tree(snap, database)

        result: dict[str, Any] = await self._call(tree)
        return result

    async def terminate(self, pid: int) -> dict[str, Any] | None:
        """``pg_terminate_backend(pid)`` for a client session of the shop database (``None``
        when there is no such session)."""

        async def term(conn: psycopg.AsyncConnection[Any]) -> dict[str, Any] | None:
            cur = await conn.execute(_TERMINATE_SQL, (pid,))
            row = await cur.fetchone()
            if row is None:
                return None
            return {"pid": pid, "terminated": bool(row[0]), "application_name": row[1], "state": row[2]}

        result: dict[str, Any] | None = await self._call(term)
        return result

    async def close(self) -> None:
        async with self._lock:
            await self._drop()
