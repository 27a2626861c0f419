"""Fast regression tests (not drills) for what the drills found, so the fast suite guards
them too: idle timers after a pipeline, reverts through a silent network, and the audit
trail's record of the transaction control psycopg sends by itself."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import psycopg
import pytest
from psycopg import conninfo

from dbchaos.audit import AuditedConnection, AuditLog
from dbchaos.engine import session as session_module
from dbchaos.engine.session import FaultSession
from tests.drills.tcpproxy import tcp_proxy
from tests.helpers import query

IDLE_MS = 400


def alive(dsn: str, pid: int) -> bool:
    return bool(query(dsn, "SELECT 1 FROM pg_stat_activity WHERE pid = %s", (pid,)))


async def idle_after(dsn: str, wrapped: bool) -> tuple[int, bool]:
    """Open a transaction in a pipeline, as row-lock does, then go idle: is the backend still
    there well past idle_in_transaction_session_timeout?"""
    conn = await psycopg.AsyncConnection.connect(
        dsn, autocommit=True, options=f"-c idle_in_transaction_session_timeout={IDLE_MS}"
    )
    s = FaultSession(conn, conn.info.backend_pid)
    pipeline = s.pipeline() if wrapped else conn.pipeline()
    async with pipeline:
        await s.execute("BEGIN")
        await s.execute("SELECT count(*) FROM (SELECT id FROM items ORDER BY id LIMIT %s FOR UPDATE) AS l", [3])
    await asyncio.sleep(IDLE_MS / 1000 * 4)
    still = alive(dsn, s.pid)
    await conn.close()
    return s.pid, still


def test_idle_timers_still_end_a_session_left_idle_after_a_pipeline(db: str) -> None:
    # psycopg ends a pipeline with Sync then Flush; a Flush that reaches the backend after it
    # armed its idle timers disarms them (a race: a plain pipeline is ended by the timeout only
    # sometimes, so only the wrapped one is asserted). FaultSession.pipeline re-arms them.
    _, still_there = asyncio.run(idle_after(db, wrapped=True))
    assert not still_there, "the session outlived idle_in_transaction_session_timeout"


def test_release_gives_up_a_session_the_network_no_longer_answers(db: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(session_module, "RELEASE_TIMEOUT_S", 0.5)
    params = conninfo.conninfo_to_dict(db)

    async def run(port: int, cut: Any) -> tuple[bool, float, int]:
        conn = await psycopg.AsyncConnection.connect(
            conninfo.make_conninfo(db, host="127.0.0.1", port=str(port)), autocommit=True
        )
        s = FaultSession(conn, conn.info.backend_pid)
        await s.execute("BEGIN; LOCK TABLE items IN ACCESS SHARE MODE")
        cut()
        started = time.monotonic()
        answered = await s.release()
        return answered, time.monotonic() - started, s.pid

    with tcp_proxy(str(params.get("host", "127.0.0.1")), int(params.get("port") or 5432)) as proxy:
        answered, took, pid = asyncio.run(run(proxy.port, lambda: proxy.cut("blackhole")))
    assert answered is False  # given up as lost: PostgreSQL's own timers end it
    assert took < 0.5 + 1.5, f"release waited {took:.1f}s for a session that could not answer"
    query(db, "SELECT pg_terminate_backend(%s)", (pid,))


def test_the_audit_trail_records_the_transaction_control_psycopg_sends(db: str) -> None:
    audit = AuditLog()

    async def run() -> None:
        conn = await AuditedConnection.connect(db, autocommit=True, cursor_factory=audit.cursor_factory("f1", "t"))
        async with conn.transaction():
            await conn.execute("SELECT 1")
            async with conn.transaction():
                await conn.execute("SELECT 2")
        await conn.close()

    asyncio.run(run())
    sqls = [e["sql"] for e in audit.events() if e["type"] == "statement" and e["fault_id"] == "f1"]
    assert sqls[0] == "BEGIN" and sqls[-1] == "COMMIT", sqls
    assert "SELECT 1" in sqls and "SELECT 2" in sqls
    assert any(s.startswith("SAVEPOINT") for s in sqls) and any(s.startswith("RELEASE") for s in sqls), sqls
