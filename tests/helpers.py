"""Small helpers shared by the database tests: polling and what PostgreSQL shows."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any, TypeVar

import psycopg

from dbchaos.engine.engine import Engine
from dbchaos.faults.migration.graph import RevisionGraph
from dbchaos.faults.registry import default_registry
from dbchaos.settings import Settings
from dbchaos.targets import Target

T = TypeVar("T")


def wait_for(condition: Callable[[], T], timeout: float = 5.0, interval: float = 0.02, what: str = "condition") -> T:
    """Poll ``condition`` until it returns something truthy; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def query(dsn: str, sql: str, params: Any = None) -> list[tuple[Any, ...]]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        cur = conn.execute(sql, params)
        return cur.fetchall() if cur.description is not None else []


def dbchaos_sessions(dsn: str, *, include_control: bool = False) -> list[tuple[Any, ...]]:
    """Fault sessions (``dbchaos:<uuid>``) still connected to this database."""
    rows = query(
        dsn, "SELECT pid, application_name, state FROM pg_stat_activity WHERE application_name LIKE 'dbchaos:%'"
    )
    if include_control:
        return rows
    return [r for r in rows if len(str(r[1])) == len("dbchaos:") + 36]


def no_dbchaos_sessions(dsn: str, timeout: float = 3.0) -> bool:
    """True once no fault session is connected to this database (a closed connection's
    backend may take a moment to exit, so this polls)."""
    deadline = time.monotonic() + timeout
    while dbchaos_sessions(dsn):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def relation_locks(dsn: str, table: str) -> list[tuple[Any, ...]]:
    """(pid, mode, granted, application_name) of locks on ``table`` held or awaited by dbchaos sessions."""
    return query(
        dsn,
        "SELECT l.pid, l.mode, l.granted, a.application_name FROM pg_locks l JOIN pg_stat_activity a USING (pid)"
        " WHERE l.locktype = 'relation' AND l.relation = to_regclass(%s) AND a.application_name LIKE 'dbchaos:%%'"
        " AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())",
        (table,),
    )


def statement_waits(dsn: str, statement: str, lock_timeout_ms: int = 300) -> bool:
    """Run ``statement`` in a transaction that is rolled back; True if it hit lock_timeout."""
    with psycopg.connect(dsn) as conn:
        conn.execute(f"SET lock_timeout = {int(lock_timeout_ms)}")
        try:
            conn.execute(statement)
        except psycopg.errors.LockNotAvailable:
            return True
        finally:
            conn.rollback()
    return False


def dbchaos_lock_count(dsn: str) -> int:
    """Locks (of any kind) held or awaited by dbchaos sessions connected to this database."""
    rows = query(
        dsn,
        "SELECT count(*) FROM pg_locks l JOIN pg_stat_activity a USING (pid)"
        " WHERE a.application_name LIKE 'dbchaos:%' AND l.locktype <> 'virtualxid' AND a.datname = current_database()",
    )
    return int(rows[0][0])


@asynccontextmanager
async def running_engine(dsn: str, graph: RevisionGraph | None = None, **settings: Any) -> AsyncIterator[Engine]:
    """An engine on ``dsn`` (target ``default``), closed (everything reverted) afterwards."""
    engine = Engine(
        Settings(**settings),
        {"default": Target("default", dsn)},
        default_registry(),
        graphs={"default": graph} if graph is not None else None,
    )
    try:
        yield engine
    finally:
        await engine.close()
