"""Reused sessions for journaled faults (dbchaos.engine.reuse): reset between faults, bounded
while idle, never reused dirty, and really reused by inject and revert."""

from __future__ import annotations

import asyncio
from typing import Any

import psycopg

from dbchaos.engine.engine import FaultRequest
from dbchaos.engine.model import State
from dbchaos.engine.reuse import ReusePool
from dbchaos.targets import Target
from tests.helpers import no_dbchaos_sessions, query, running_engine, wait_for

INSTANCE = "0123456789ab"
POOL_NAME = f"dbchaos:{INSTANCE}:journal"


async def _show(conn: psycopg.AsyncConnection[Any], setting: str) -> str:
    row = await (await conn.execute(f"SHOW {setting}")).fetchone()
    assert row is not None
    return str(row[0])


async def _nothing(conn: psycopg.AsyncConnection[Any]) -> None:
    await conn.execute("SELECT 1")


async def _idle_soon(pool: ReusePool, count: int) -> None:
    for _ in range(250):
        if pool.idle == count:
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"the pool kept {pool.idle} idle sessions, expected {count}")


def test_a_session_given_back_is_reset_to_its_startup_name_and_bounds(db: str) -> None:
    async def scenario() -> None:
        pool = ReusePool(Target("default", db), INSTANCE)
        try:
            conn = await pool.take(_nothing)
            pid = conn.info.backend_pid
            assert await _show(conn, "application_name") == POOL_NAME
            assert await _show(conn, "idle_session_timeout") == "1min"
            # what a fault's bind does: its name and its bounds, for the session
            await conn.execute(
                "SELECT set_config('application_name', 'dbchaos:someone', false),"
                " set_config('idle_session_timeout', '3600000', false), set_config('statement_timeout', '1234', false)"
            )
            pool.give_back(conn)
            await _idle_soon(pool, 1)
            again = await pool.take(_nothing)
            assert again.info.backend_pid == pid  # the same backend, not a new one
            assert await _show(again, "application_name") == POOL_NAME
            assert await _show(again, "idle_session_timeout") == "1min"
            assert await _show(again, "statement_timeout") == "0"
            seen = query(db, "SELECT application_name FROM pg_stat_activity WHERE pid = %s", (pid,))
            assert seen == [(POOL_NAME,)]
            pool.give_back(again)
            await _idle_soon(pool, 1)
        finally:
            await pool.close()
        assert pool.idle == 0
        wait_for(lambda: not query(db, "SELECT 1 FROM pg_stat_activity WHERE pid = %s", (pid,)), 3.0, what="close")

    asyncio.run(scenario())


def test_a_session_given_back_inside_a_transaction_is_closed_not_kept(db: str) -> None:
    async def scenario() -> None:
        pool = ReusePool(Target("default", db), INSTANCE)
        try:
            conn = await pool.take(_nothing)
            pid = conn.info.backend_pid
            await conn.execute("BEGIN")
            await conn.execute("LOCK TABLE items IN ACCESS SHARE MODE")
            pool.give_back(conn)
            await asyncio.to_thread(
                wait_for,
                lambda: not query(db, "SELECT 1 FROM pg_stat_activity WHERE pid = %s", (pid,)),
                3.0,
                what="the session to be closed",
            )
            assert pool.idle == 0
            assert not query(db, "SELECT 1 FROM pg_locks WHERE pid = %s", (pid,))
        finally:
            await pool.close()

    asyncio.run(scenario())


def test_postgresql_ends_an_idle_pooled_session_by_itself_even_after_a_pipeline(db: str) -> None:
    """While it waits in the pool, a session must still time out on the server (dbchaos frozen):
    a pipeline's final Flush disarms PostgreSQL's idle timers, the reset re-arms them."""

    async def scenario() -> None:
        pool = ReusePool(Target("default", db), INSTANCE, idle_session_timeout_ms=400)
        try:
            conn = await pool.take(_nothing)
            pid = conn.info.backend_pid
            async with conn.pipeline():
                await conn.execute("SELECT 1")
                await conn.execute("SELECT 2")
            pool.give_back(conn)
            await _idle_soon(pool, 1)
            await asyncio.to_thread(
                wait_for,
                lambda: not query(db, "SELECT 1 FROM pg_stat_activity WHERE pid = %s", (pid,)),
                5.0,
                what="PostgreSQL to end the idle session",
            )
            # the pool notices when it is next asked (the bind meets a closed connection), and opens a new one
            fresh = await pool.take(_nothing)
            assert fresh.info.backend_pid != pid
            pool.give_back(fresh)
        finally:
            await pool.close()

    asyncio.run(scenario())


def test_journaled_faults_inject_and_revert_on_one_reused_session(alembic_db: str) -> None:
    async def scenario() -> None:
        async with running_engine(alembic_db) as engine:
            pool_sessions = (
                "SELECT pid, state FROM pg_stat_activity WHERE application_name = %s AND datname = current_database()"
            )
            name = f"dbchaos:{engine.instance}:journal"
            first = await engine.create(FaultRequest(kind="unknown-revision", duration_s=30))
            await engine.abort(first.id)
            assert first.state is State.REVERTED and first.details.get("verified") is True
            (pid, _), *more = await asyncio.to_thread(wait_for, lambda: query(alembic_db, pool_sessions, (name,)), 3.0)
            assert not more
            hide = FaultRequest(kind="hidden-object", params={"table": "accounts"}, duration_s=30)
            second = await engine.create(hide)
            assert second.state is State.ACTIVE
            assert query(alembic_db, "SELECT to_regclass('public.accounts')") == [(None,)]
            await engine.abort(second.id)
            assert second.state is State.REVERTED and second.details.get("verified") is True
            # both faults' transactions ran on that one backend: no other journal session was opened
            assert await asyncio.to_thread(wait_for, lambda: query(alembic_db, pool_sessions, (name,))) == [
                (pid, "idle")
            ]
            assert no_dbchaos_sessions(alembic_db)  # no session still carries a fault's name
        assert not query(alembic_db, "SELECT 1 FROM pg_stat_activity WHERE application_name = %s", (name,))

    asyncio.run(scenario())


def test_a_pooled_session_ended_by_someone_else_is_replaced_without_failing_the_next_fault(alembic_db: str) -> None:
    async def scenario() -> None:
        async with running_engine(alembic_db) as engine:
            name = f"dbchaos:{engine.instance}:journal"
            first = await engine.create(FaultRequest(kind="missing-version", duration_s=30))
            await engine.abort(first.id)
            find = "SELECT pid FROM pg_stat_activity WHERE application_name = %s"
            pids = await asyncio.to_thread(wait_for, lambda: query(alembic_db, find, (name,)))
            query(alembic_db, "SELECT pg_terminate_backend(%s)", (pids[0][0],))  # a DBA, or a restart
            second = await engine.create(FaultRequest(kind="missing-version", duration_s=30))
            assert second.state is State.ACTIVE, second.error
            assert query(alembic_db, "SELECT count(*) FROM alembic_version") == [(0,)]
            await engine.abort(second.id)
            assert second.state is State.REVERTED and second.details.get("verified") is True
            assert query(alembic_db, "SELECT count(*) FROM alembic_version") == [(1,)]

    asyncio.run(scenario())
