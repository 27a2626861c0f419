"""table-lock against real PostgreSQL: the whole conflict matrix, as a user would check it."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest

from dbchaos.engine.engine import Engine, FaultRequest
from dbchaos.engine.model import EndReason, FaultRecord, State
from dbchaos.errors import InvalidInput
from dbchaos.faults.registry import default_registry
from dbchaos.settings import Settings
from dbchaos.targets import Target
from tests.helpers import relation_locks, statement_waits, wait_for

# What each statement takes, and which held modes make it wait: PostgreSQL's documented
# table-level lock conflicts, written out here independently of dbchaos's own table.
STATEMENTS = {
    "SELECT": "SELECT count(*) FROM items",
    "INSERT": "INSERT INTO items (sku, name, price) VALUES ('T-1', 't', 1)",
    "UPDATE": "UPDATE items SET stock = stock + 1 WHERE id = 1",
    "CREATE INDEX": "CREATE INDEX items_stock_tmp ON items (stock)",
    "ALTER TABLE": "ALTER TABLE items ADD COLUMN tmp_col int",
}
BLOCKED_BY = {
    "ACCESS SHARE": {"ALTER TABLE"},
    "ROW SHARE": {"ALTER TABLE"},
    "ROW EXCLUSIVE": {"CREATE INDEX", "ALTER TABLE"},
    "SHARE UPDATE EXCLUSIVE": {"CREATE INDEX", "ALTER TABLE"},
    "SHARE": {"INSERT", "UPDATE", "ALTER TABLE"},
    "SHARE ROW EXCLUSIVE": {"INSERT", "UPDATE", "CREATE INDEX", "ALTER TABLE"},
    "EXCLUSIVE": {"INSERT", "UPDATE", "CREATE INDEX", "ALTER TABLE"},
    "ACCESS EXCLUSIVE": {"SELECT", "INSERT", "UPDATE", "CREATE INDEX", "ALTER TABLE"},
}
PG_LOCKS_NAME = {m: "".join(w.capitalize() for w in m.split()) + "Lock" for m in BLOCKED_BY}


@asynccontextmanager
async def engine_for(dsn: str, **settings: float) -> AsyncIterator[Engine]:
    engine = Engine(Settings(**settings), {"default": Target("default", dsn)}, default_registry())  # type: ignore[arg-type]
    try:
        yield engine
    finally:
        await engine.close()


@pytest.mark.parametrize("mode", list(BLOCKED_BY))
def test_each_mode_holds_its_lock_and_blocks_exactly_the_conflicting_statements(db: str, mode: str) -> None:
    async def scenario() -> None:
        async with engine_for(db) as engine:
            rec = await engine.create(FaultRequest("table-lock", {"tables": ["items"], "mode": mode}, duration_s=30))
            assert rec.state is State.ACTIVE
            assert rec.params["mode"] == mode
            locks = relation_locks(db, "items")
            assert [(pid, m, g) for pid, m, g, _ in locks] == [(rec.pids[0], PG_LOCKS_NAME[mode], True)]
            for name, statement in STATEMENTS.items():
                waited = await asyncio.to_thread(statement_waits, db, statement)
                assert waited == (name in BLOCKED_BY[mode]), f"{name} under {mode}"
            await engine.abort(rec.id)
            assert rec.state is State.REVERTED and rec.end_reason is EndReason.ABORTED
            assert relation_locks(db, "items") == []

    asyncio.run(scenario())


@pytest.mark.parametrize(
    "spelling", ["access exclusive", "ACCESS_EXCLUSIVE", "AccessExclusiveLock", "access-exclusive"]
)
def test_mode_spellings_are_normalised(db: str, spelling: str) -> None:
    async def scenario() -> FaultRecord:
        async with engine_for(db) as engine:
            return await engine.create(
                FaultRequest("table-lock", {"tables": ["items"], "mode": spelling}, duration_s=1)
            )

    assert asyncio.run(scenario()).params["mode"] == "ACCESS EXCLUSIVE"


def test_several_tables_and_a_partitioned_table(db: str) -> None:
    from tests.helpers import query

    query(db, "CREATE TABLE events (id int, at date) PARTITION BY RANGE (at)")
    query(db, "CREATE TABLE events_2026 PARTITION OF events FOR VALUES FROM ('2026-01-01') TO ('2027-01-01')")

    async def scenario() -> None:
        async with engine_for(db) as engine:
            rec = await engine.create(FaultRequest("table-lock", {"tables": ["users", "public.events"]}, duration_s=5))
            assert rec.params["tables"] == ["public.users", "public.events"]
            assert await asyncio.to_thread(statement_waits, db, "SELECT * FROM users LIMIT 1")
            # LOCK TABLE on a partitioned table locks its partitions too
            assert await asyncio.to_thread(statement_waits, db, "SELECT * FROM events_2026")
            assert not await asyncio.to_thread(statement_waits, db, "SELECT * FROM items LIMIT 1")

    asyncio.run(scenario())


def test_quoted_names_work(db: str) -> None:
    from tests.helpers import query

    query(db, 'CREATE TABLE "user" (id int primary key)')
    query(db, 'CREATE TABLE "Items" (id int primary key)')

    async def scenario() -> None:
        async with engine_for(db) as engine:
            rec = await engine.create(
                FaultRequest("table-lock", {"tables": ['"user"', 'public."Items"', {"name": "user"}]}, duration_s=5)
            )
            assert rec.params["tables"] == ["public.user", "public.Items", "public.user"]
            assert await asyncio.to_thread(statement_waits, db, 'SELECT * FROM "Items"')

    asyncio.run(scenario())


@pytest.mark.parametrize(
    ("params", "field", "code"),
    [
        ({"tables": ["nope"]}, "params.tables.0", "unknown_table"),
        ({"tables": ["items; DROP TABLE users"]}, "params.tables.0", "invalid_identifier"),
        ({"tables": ['items"']}, "params.tables.0", "invalid_identifier"),
        ({"tables": ["items -- x"]}, "params.tables.0", "invalid_identifier"),
        ({"tables": ["items/*x*/"]}, "params.tables.0", "invalid_identifier"),
        ({"tables": ["a" * 64]}, "params.tables.0", "identifier_too_long"),
        ({"tables": ["items"], "mode": "super exclusive"}, "params.mode", "unknown_mode"),
        ({"tables": []}, "params.tables", "invalid_input"),
        ({"tables": ["items"], "bogus": 1}, "params.bogus", "invalid_input"),
        ({"tables": ["pg_catalog.pg_class"]}, "params.tables.0", "system_object"),
    ],
)
def test_bad_input_is_refused_with_its_field_and_leaves_nothing(
    db: str, params: dict[str, object], field: str, code: str
) -> None:
    from dbchaos.errors import DbChaosError
    from tests.helpers import dbchaos_lock_count, no_dbchaos_sessions

    async def scenario() -> DbChaosError:
        async with engine_for(db) as engine:
            with pytest.raises(DbChaosError) as info:
                await engine.create(FaultRequest("table-lock", params, duration_s=5))
            assert engine.all() == []
            return info.value

    err = asyncio.run(scenario())
    assert err.field == field
    assert err.code == code
    assert no_dbchaos_sessions(db)
    assert dbchaos_lock_count(db) == 0


@pytest.mark.parametrize(
    ("duration", "ok"), [(0, False), (-1, False), (3601, False), (float("nan"), False), (0.5, True)]
)
def test_duration_bounds(db: str, duration: float, ok: bool) -> None:
    async def scenario() -> None:
        async with engine_for(db) as engine:
            req = FaultRequest("table-lock", {"tables": ["items"]}, duration_s=duration)
            if ok:
                assert (await engine.create(req)).state is State.ACTIVE
            else:
                with pytest.raises(InvalidInput) as info:
                    await engine.create(req)
                assert info.value.field == "duration_s"

    asyncio.run(scenario())


def test_deadline_releases_the_lock(db: str) -> None:
    async def scenario() -> None:
        async with engine_for(db) as engine:
            rec = await engine.create(FaultRequest("table-lock", {"tables": ["items"]}, duration_s=1))
            assert relation_locks(db, "items")
            await asyncio.to_thread(wait_for, lambda: rec.state.finished, 3.0, what="the deadline")
            assert rec.end_reason is EndReason.DEADLINE and rec.state is State.REVERTED
            assert rec.ended_at is not None and rec.deadline is not None
            assert rec.ended_at - rec.deadline < 2.0
            assert relation_locks(db, "items") == []

    asyncio.run(scenario())
