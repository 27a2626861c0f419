"""migration-lock-queue: one idle read plus a waiting ACCESS EXCLUSIVE request stop every query."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import psycopg
import pytest

from dbchaos.engine.engine import Engine, FaultRequest
from dbchaos.engine.model import EndReason, FaultRecord, State
from dbchaos.errors import DbChaosError
from dbchaos.observe.activity import Blocked
from tests.helpers import (
    dbchaos_lock_count,
    query,
    relation_locks,
    running_engine,
    statement_waits,
    wait_for,
)
from tests.server_proc import dbchaos_server

KIND = "migration-lock-queue"
SELECT = "SELECT count(*) FROM items"


def fault_sessions(dsn: str) -> list[tuple[Any, ...]]:
    """dbchaos fault sessions connected to this test's database (other tests may share the server)."""
    return [
        r
        for r in query(
            dsn,
            "SELECT pid, application_name, state, backend_start, left(query, 80) FROM pg_stat_activity"
            " WHERE application_name LIKE 'dbchaos:%' AND datname = current_database()",
        )
        if len(str(r[1])) == len("dbchaos:") + 36
    ]


def no_fault_sessions_left(dsn: str) -> None:
    """Wait (briefly) until no fault session is connected: a backend leaves pg_stat_activity a
    moment after its client closed the connection."""
    wait_for(lambda: not fault_sessions(dsn), 3.0, 0.02, what="fault sessions to end")


def item_locks(dsn: str) -> list[tuple[int, str, bool]]:
    return sorted((p, m, g) for p, m, g, _ in relation_locks(dsn, "items"))


def queue_of(rec: FaultRecord) -> list[tuple[int, str, bool]]:
    return sorted(
        [
            (rec.details["reader_pid"], "AccessShareLock", True),
            (rec.details["migration_pid"], "AccessExclusiveLock", False),
        ]
    )


async def blocked_in_impact(engine: Engine, rec: FaultRecord, pid: int, timeout: float = 10.0) -> Blocked:
    deadline = time.monotonic() + timeout
    while True:
        imp = (await engine.impacts([rec]))[rec.id]
        found = [b for b in imp.blocked if b.session.pid == pid]
        if found:
            return found[0]
        assert time.monotonic() < deadline, f"pid {pid} never showed up as blocked: {imp.as_dict()}"
        await asyncio.sleep(0.05)


def test_a_plain_select_queues_behind_the_waiting_migration(db: str) -> None:
    async def scenario() -> None:
        async with running_engine(db) as engine:
            rec = await engine.create(FaultRequest(KIND, {"table": "items"}, duration_s=30))
            assert rec.state is State.ACTIVE
            assert rec.params == {"table": "public.items"}
            reader, migration = rec.details["reader_pid"], rec.details["migration_pid"]
            assert sorted(rec.pids) == sorted([reader, migration])
            assert rec.details["migration_request"] == "waiting"
            # only a read is held; the "migration" holds nothing yet, it waits
            assert item_locks(db) == queue_of(rec)
            states = dict(query(db, "SELECT pid, state FROM pg_stat_activity WHERE pid = ANY(%s)", (rec.pids,)))
            assert states[reader] == "idle in transaction"
            assert query(
                db, "SELECT wait_event_type, pg_blocking_pids(pid) FROM pg_stat_activity WHERE pid = %s", (migration,)
            ) == [("Lock", [reader])]
            # ... and yet a plain SELECT waits; other tables do not
            assert await asyncio.to_thread(statement_waits, db, SELECT)
            assert not await asyncio.to_thread(statement_waits, db, "SELECT count(*) FROM users")

            # the impact shows an app's SELECT stuck behind the fault
            app = await psycopg.AsyncConnection.connect(db, autocommit=True)
            try:
                await app.execute("SET lock_timeout = '20s'")
                pending = asyncio.create_task(app.execute(SELECT))
                blocked = await blocked_in_impact(engine, rec, app.info.backend_pid)
                assert blocked.depth >= 1 and migration in blocked.session.blocked_by
                assert not pending.done()
                await engine.abort(rec.id)
                # the queue drains as soon as the fault ends
                cur = await asyncio.wait_for(pending, 5.0)
                assert await cur.fetchone() == (10_000,)
            finally:
                await app.close()
            assert rec.state is State.REVERTED and rec.end_reason is EndReason.ABORTED
            assert rec.details["migration_request_at_revert"] == "waiting"
        assert item_locks(db) == []
        no_fault_sessions_left(db)
        assert not statement_waits(db, SELECT)
        # the pretend migration never ran: nothing was altered
        assert query(db, "SELECT count(*) FROM items") == [(10_000,)]

    asyncio.run(scenario())


def test_the_migration_waits_past_the_acquire_timeout_and_the_deadline_clears_it(db: str) -> None:
    async def scenario() -> None:
        async with running_engine(db) as engine:
            table = {"schema": "public", "name": "orders"}
            rec = await engine.create(FaultRequest(KIND, {"table": table}, duration_s=2, acquire_timeout_s=0.3))
            migration = rec.details["migration_pid"]
            assert rec.details["migration_lock_timeout_ms"] >= 2000
            # well past the session's startup lock_timeout (the acquire timeout), it still waits
            await asyncio.sleep(1.0)
            locks = [(p, m, g) for p, m, g, _ in relation_locks(db, "orders")]
            assert (migration, "AccessExclusiveLock", False) in locks
            assert await asyncio.to_thread(statement_waits, db, "SELECT count(*) FROM orders")
            await asyncio.to_thread(wait_for, lambda: rec.state.finished, 5.0, 0.05, "the deadline")
            assert rec.state is State.REVERTED and rec.end_reason is EndReason.DEADLINE
            assert rec.details["migration_request_at_revert"] == "waiting"
            assert rec.ended_at is not None and rec.deadline is not None
            assert rec.ended_at - rec.deadline < 2.0
        assert relation_locks(db, "orders") == []
        no_fault_sessions_left(db)
        assert not statement_waits(db, "SELECT count(*) FROM orders")

    asyncio.run(scenario())


def test_ending_the_reader_lets_the_migration_through_and_the_queue_drains(
    db: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # the engine's monitor would notice the ended reader and revert; keep it out of the way so
    # that what frees the table here is the fault's own migration finishing
    monkeypatch.setattr("dbchaos.engine.engine.MONITOR_INTERVAL_S", 60.0)

    async def scenario() -> None:
        async with running_engine(db) as engine:
            rec = await engine.create(FaultRequest(KIND, {"table": "items"}, duration_s=30))
            assert await asyncio.to_thread(statement_waits, db, SELECT)
            # the fix a team would practise: end the idle transaction
            query(db, "SELECT pg_terminate_backend(%s)", (rec.details["reader_pid"],))
            # the pretend migration gets its lock and finishes at once: nothing holds the table
            await asyncio.to_thread(wait_for, lambda: not item_locks(db), 3.0, 0.02, "the table to be free")
            assert not await asyncio.to_thread(statement_waits, db, SELECT)
            assert rec.state is State.ACTIVE
            await engine.abort(rec.id)
            assert rec.state is State.LOST
            assert rec.details["migration_request_at_revert"] == "granted"
        no_fault_sessions_left(db)

    asyncio.run(scenario())


def test_kill_9_leaves_neither_the_queued_request_nor_the_reader(db: str, tmp_path: Path) -> None:
    with dbchaos_server(["--target", db], tmp_path) as server, server.client() as client:
        resp = client.post("/v1/faults", json={"kind": KIND, "params": {"table": "items; DROP TABLE users"}})
        assert resp.status_code == 422 and resp.json()["field"] == "params.table", resp.text
        resp = client.post("/v1/faults", json={"kind": KIND, "params": {"table": "items"}, "duration_s": 2})
        assert resp.status_code == 201, resp.text
        body: dict[str, Any] = resp.json()
        activated = time.monotonic()
        assert body["state"] == "active"
        assert [g for _, m, g in item_locks(db) if m == "AccessExclusiveLock"] == [False]
        server.proc.kill()
        server.proc.wait(5)
        killed_at = time.monotonic()
        # the waiting request notices its client died (client_connection_check_interval)
        wait_for(lambda: all(m != "AccessExclusiveLock" for _, m, _ in item_locks(db)), 3.0, what="the request to go")
        assert time.monotonic() - killed_at < 3.0
        # the reader alone no longer stops readers
        assert not statement_waits(db, SELECT)
        # and it ends by idle_in_transaction_session_timeout (duration + grace)
        wait_for(lambda: not fault_sessions(db) and not item_locks(db), 10.0, 0.1, what="the reader to go")
        assert time.monotonic() - activated < 2 + 2 + 3


@pytest.mark.parametrize(
    ("params", "field", "code"),
    [
        ({"table": "nope"}, "params.table", "unknown_table"),
        ({"table": "items; DROP TABLE users"}, "params.table", "invalid_identifier"),
        ({"table": 'items"'}, "params.table", "invalid_identifier"),
        ({"table": "a" * 64}, "params.table", "identifier_too_long"),
        ({}, "params.table", "invalid_input"),
        ({"table": "items", "mode": "SHARE"}, "params.mode", "invalid_input"),
    ],
)
def test_bad_input_is_refused_with_its_field_and_leaves_nothing(
    db: str, params: dict[str, object], field: str, code: str
) -> None:
    async def scenario() -> DbChaosError:
        async with running_engine(db) as engine:
            with pytest.raises(DbChaosError) as info:
                await engine.create(FaultRequest(KIND, params, duration_s=5))
            assert engine.all() == []
            return info.value

    err = asyncio.run(scenario())
    assert (err.field, err.code) == (field, code)
    no_fault_sessions_left(db)
    assert dbchaos_lock_count(db) == 0
