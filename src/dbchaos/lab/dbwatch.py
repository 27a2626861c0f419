"""What PostgreSQL shows about the shop, for the dashboard: blocked sessions once a second,
the live lock tree on request, and ending a session (the game days' "find the blocker").

One connection of its own (``application_name = 'dbchaos-lab:watch'``, never ``dbchaos:…``,
which names fault sessions), bounded by server-side timeouts, reopened after an error.
The lock tree is built with :mod:`dbchaos.observe.activity`, the same code that computes a
fault's impact.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any

import psycopg

from dbchaos.lab.series import Series
from dbchaos.observe.activity import Snapshot, impact_of, take_snapshot

log = logging.getLogger(__name__)

APPLICATION_NAME = "dbchaos-lab:watch"
FAULT_PREFIX = "dbchaos:"
_OPTIONS = "-c statement_timeout=5000 -c lock_timeout=1000 -c idle_in_transaction_session_timeout=10000"

_COUNTS_SQL = """
SELECT count(*) FILTER (WHERE wait_event_type = 'Lock'),
       count(*) FILTER (WHERE wait_event_type = 'Lock' AND application_name NOT LIKE 'dbchaos:%%'),
       count(*) FILTER (WHERE state LIKE 'idle in transaction%%'),
       count(*)
FROM pg_stat_activity
WHERE datname = current_database() AND backend_type = 'client backend' AND pid <> pg_backend_pid()
"""

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


def lock_tree(snapshot: Snapshot, database: str) -> dict[str, Any]:
    """Who blocks whom in ``database``: the roots (sessions others wait on that wait on
    nobody in turn), each with what it holds and the tree of its waiters, and every waiting
    session as a flat list."""
    sessions = {pid: s for pid, s in snapshot.sessions.items() if s.database == database}
    waiting = [s for s in sessions.values() if s.blocked_by]
    blockers = {b for s in waiting for b in s.blocked_by}
    roots = sorted(b for b in blockers if not (sessions.get(b) and sessions[b].blocked_by))
    if not roots and waiting:  # a cycle (deadlock about to be detected): show every blocker
        roots = sorted(blockers)
    impact = impact_of(snapshot, roots)
    locks: dict[int, list[dict[str, Any]]] = {}
    for lk in impact.locks:
        locks.setdefault(lk.pid, []).append(lk.as_dict())
    out_roots = []
    for node in impact.tree:
        pid = node["pid"]
        s = sessions.get(pid) or snapshot.sessions.get(pid)
        out_roots.append(
            node
            | {
                "fault_id": fault_id_of(s.application_name if s else None),
                "user": s.user if s else None,
                "xact_age_s": round(s.xact_age_s, 3) if s and s.xact_age_s is not None else None,
                "state_age_s": round(s.state_age_s, 3) if s and s.state_age_s is not None else None,
                "locks": locks.get(pid, []),
            }
        )
    return {
        "taken_at": snapshot.taken_at,
        "database": database,
        "roots": out_roots,
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

    async def sample(self) -> None:
        async def counts(conn: psycopg.AsyncConnection[Any]) -> tuple[int, int, int, int]:
            cur = await conn.execute(_COUNTS_SQL)
            row = await cur.fetchone()
            assert row is not None
            return int(row[0]), int(row[1]), int(row[2]), int(row[3])

        blocked, blocked_app, idle, total = await self._call(counts)
        self.series.record_database(blocked=blocked, blocked_app=blocked_app, idle_in_transaction=idle, sessions=total)

    async def run(self) -> None:
        """Sample until cancelled (errors are kept in :attr:`last_error`, sampling goes on)."""
        try:
            while True:
                started = time.monotonic()
                with contextlib.suppress(psycopg.Error, OSError):
                    await self.sample()
                await asyncio.sleep(max(0.05, self.interval_s - (time.monotonic() - started)))
        finally:
            await self._drop()

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
