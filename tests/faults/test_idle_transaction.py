"""idle-transaction against real PostgreSQL: the idle session, its snapshot, its locks, its end."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest

from dbchaos.engine.engine import Engine, FaultRequest
from dbchaos.engine.model import EndReason, State
from dbchaos.errors import InvalidInput
from dbchaos.faults.registry import default_registry
from dbchaos.settings import Settings
from dbchaos.targets import Target
from tests.helpers import query, statement_waits, wait_for


@asynccontextmanager
async def engine_for(dsn: str) -> AsyncIterator[Engine]:
    engine = Engine(Settings(), {"default": Target("default", dsn)}, default_registry())
    try:
        yield engine
    finally:
        await engine.close()


def activity(dsn: str, pid: int) -> tuple[Any, ...] | None:
    """(state, backend_xmin is not null, xact_start is not null) of ``pid``, or None if it is gone."""
    rows = query(
        dsn,
        "SELECT state, backend_xmin IS NOT NULL, xact_start IS NOT NULL FROM pg_stat_activity WHERE pid = %s",
        (pid,),
    )
    return rows[0] if rows else None


def table_locks(dsn: str, pid: int) -> set[tuple[Any, ...]]:
    rows = query(
        dsn,
        "SELECT relation::regclass::text, mode, granted FROM pg_locks"
        " WHERE pid = %s AND locktype = 'relation' AND relation IN ('items'::regclass, 'orders'::regclass)",
        (pid,),
    )
    return set(rows)


@pytest.mark.parametrize(
    ("isolation", "shown", "holds_xmin"),
    [
        (None, "REPEATABLE READ", True),
        ("read committed", "READ COMMITTED", False),
        ("REPEATABLE_READ", "REPEATABLE READ", True),
        ("Serializable", "SERIALIZABLE", True),
    ],
)
def test_the_session_sits_idle_in_transaction_holding_a_snapshot_only_above_read_committed(
    db: str, isolation: str | None, shown: str, holds_xmin: bool
) -> None:
    params: dict[str, Any] = {"tables": ["items"]}
    if isolation is not None:
        params["isolation"] = isolation

    async def scenario() -> None:
        async with engine_for(db) as engine:
            rec = await engine.create(FaultRequest("idle-transaction", params, duration_s=30))
            assert rec.state is State.ACTIVE
            assert rec.params == {"tables": ["public.items"], "isolation": shown}
            assert rec.details["holds_snapshot"] is holds_xmin
            pid = rec.pids[0]
            assert activity(db, pid) == ("idle in transaction", holds_xmin, True)
            expected = {("items", "AccessShareLock", True)}
            if shown == "SERIALIZABLE":  # its read also left a predicate (SIRead) lock on the table
                expected.add(("items", "SIReadLock", True))
            assert table_locks(db, pid) == expected

    asyncio.run(scenario())


def test_ddl_queues_behind_it_while_writes_pass_and_abort_ends_it(db: str) -> None:
    async def scenario() -> None:
        async with engine_for(db) as engine:
            rec = await engine.create(
                FaultRequest("idle-transaction", {"tables": ["items", "public.orders"]}, duration_s=30)
            )
            pid = rec.pids[0]
            assert table_locks(db, pid) == {("items", "AccessShareLock", True), ("orders", "AccessShareLock", True)}
            for table in ("items", "orders"):
                alter = f"ALTER TABLE {table} ADD COLUMN tmp_col int"
                assert await asyncio.to_thread(statement_waits, db, alter) is True
            assert await asyncio.to_thread(statement_waits, db, "UPDATE items SET stock = stock WHERE id = 1") is False
            assert await asyncio.to_thread(statement_waits, db, "DELETE FROM orders WHERE id = 1") is False

            done = await engine.abort(rec.id)
            assert done.state is State.REVERTED
            assert done.end_reason is EndReason.ABORTED
            await asyncio.to_thread(wait_for, lambda: activity(db, pid) is None, 5.0, what="session gone")
            alter = "ALTER TABLE items ADD COLUMN tmp_col int"
            assert await asyncio.to_thread(statement_waits, db, alter) is False

    asyncio.run(scenario())


def test_without_tables_it_still_takes_a_snapshot_and_ends_at_the_deadline(db: str) -> None:
    async def scenario() -> None:
        async with engine_for(db) as engine:
            rec = await engine.create(FaultRequest("idle-transaction", {}, duration_s=1.5))
            pid = rec.pids[0]
            assert activity(db, pid) == ("idle in transaction", True, True)
            assert rec.params == {"tables": [], "isolation": "REPEATABLE READ"}
            await asyncio.to_thread(wait_for, lambda: rec.state.finished, 10.0, what="the deadline")
            assert rec.state is State.REVERTED
            assert rec.end_reason is EndReason.DEADLINE
            await asyncio.to_thread(wait_for, lambda: activity(db, pid) is None, 5.0, what="session gone")

    asyncio.run(scenario())


@pytest.mark.parametrize(
    ("table", "code"), [("nope", "unknown_table"), ("items; drop table users", "invalid_identifier")]
)
def test_a_bad_table_is_invalid_input_and_nothing_starts(db: str, table: str, code: str) -> None:
    async def scenario() -> None:
        async with engine_for(db) as engine:
            with pytest.raises(InvalidInput) as info:
                await engine.create(FaultRequest("idle-transaction", {"tables": ["items", table]}, duration_s=1))
            assert info.value.field == "params.tables.1"
            assert info.value.code == code
            assert engine.all() == []

    asyncio.run(scenario())


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"isolation": "snapshot"}, "params.isolation"),
        ({"isolation": 3}, "params.isolation"),
        ({"tables": "items"}, "params.tables"),
        ({"mode": "x"}, "params.mode"),
    ],
)
def test_bad_params_are_invalid_input(params: dict[str, Any], field: str) -> None:
    with pytest.raises(InvalidInput) as info:
        default_registry().build("idle-transaction", params)
    assert info.value.field == field
