"""row-lock against real PostgreSQL: which rows it locks, what that blocks, and that it lets go."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import psycopg
import pytest
from psycopg import sql

from dbchaos.engine.engine import Engine, FaultRequest
from dbchaos.engine.model import EndReason, State
from dbchaos.errors import Forbidden, InvalidInput, LockNotAcquired
from dbchaos.faults.registry import default_registry
from dbchaos.settings import Settings
from dbchaos.targets import Target
from tests.helpers import query, statement_waits, wait_for
from tests.pg import PgServer, unprivileged_role

STRENGTHS = ("FOR KEY SHARE", "FOR SHARE", "FOR NO KEY UPDATE", "FOR UPDATE")
# PostgreSQL's row-level lock conflict table ("Conflicting Row-Level Locks" in the docs),
# written out here independently of dbchaos: requested strength -> held strengths it waits for.
ROW_CONFLICTS: dict[str, set[str]] = {
    "FOR KEY SHARE": {"FOR UPDATE"},
    "FOR SHARE": {"FOR NO KEY UPDATE", "FOR UPDATE"},
    "FOR NO KEY UPDATE": {"FOR SHARE", "FOR NO KEY UPDATE", "FOR UPDATE"},
    "FOR UPDATE": set(STRENGTHS),
}
# A user with no orders (so DELETE can proceed), created by the test; and what each statement
# takes on its row: UPDATE of a non-key column -> FOR NO KEY UPDATE, DELETE -> FOR UPDATE, the
# foreign-key check of a child INSERT -> FOR KEY SHARE on the parent row.
FRESH_USER = 5001
OPERATIONS: dict[str, tuple[str, str]] = {
    "UPDATE": (f"UPDATE users SET name = name || '!' WHERE id = {FRESH_USER}", "FOR NO KEY UPDATE"),
    "DELETE": (f"DELETE FROM users WHERE id = {FRESH_USER}", "FOR UPDATE"),
    "SELECT FOR SHARE": (f"SELECT id FROM users WHERE id = {FRESH_USER} FOR SHARE", "FOR SHARE"),
    "INSERT child": (f"INSERT INTO orders (user_id, item_id, quantity) VALUES ({FRESH_USER}, 1, 1)", "FOR KEY SHARE"),
}
MATRIX = [
    pytest.param(held, op, OPERATIONS[op][1] in ROW_CONFLICTS[held], id=f"{held}-{op}")
    for held in STRENGTHS
    for op in OPERATIONS
]
PGROWLOCKS_MODE = {s: s.title() for s in STRENGTHS}  # "For No Key Update"...


@asynccontextmanager
async def engine_for(dsn: str, settings: Settings | None = None) -> AsyncIterator[Engine]:
    engine = Engine(settings or Settings(), {"default": Target("default", dsn)}, default_registry())
    try:
        yield engine
    finally:
        await engine.close()


def free_rows(dsn: str, table: str, where: str) -> int:
    """How many rows matching ``where`` nobody holds a row lock on (FOR UPDATE conflicts with all four)."""
    stmt = sql.SQL("SELECT count(*) FROM (SELECT 1 FROM {} WHERE {} FOR UPDATE SKIP LOCKED) AS s").format(
        sql.Identifier(table),
        sql.SQL(where),  # test constants only
    )
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute(stmt).fetchone()
    assert row is not None
    return int(row[0])


def row_locks(dsn: str, table: str, key: str = "id") -> list[tuple[Any, ...]]:
    """(key, modes, pids) of every locked row of ``table``, from pgrowlocks, in key order."""
    stmt = sql.SQL(
        "SELECT t.{key}, r.modes, r.pids FROM pgrowlocks({name}) AS r JOIN {table} AS t ON t.ctid = r.locked_row "
        "ORDER BY t.{key}"
    ).format(key=sql.Identifier(key), name=sql.Literal(table), table=sql.Identifier(table))
    with psycopg.connect(dsn, autocommit=True) as conn:
        return conn.execute(stmt).fetchall()


def dbchaos_sessions_here(dsn: str) -> list[tuple[Any, ...]]:
    return query(
        dsn,
        "SELECT pid, application_name FROM pg_stat_activity"
        " WHERE application_name LIKE 'dbchaos:%%' AND datname = current_database()",
    )


@pytest.mark.parametrize(
    ("spelling", "strength"),
    [
        (None, "FOR UPDATE"),
        ("no key update", "FOR NO KEY UPDATE"),
        ("FOR_SHARE", "FOR SHARE"),
        ("KeyShare", "FOR KEY SHARE"),
    ],
)
def test_locks_the_first_rows_in_key_order_and_only_those(db: str, spelling: str | None, strength: str) -> None:
    params: dict[str, Any] = {"table": "items"} | ({"strength": spelling} if spelling else {})

    async def scenario() -> None:
        async with engine_for(db) as engine:
            rec = await engine.create(FaultRequest("row-lock", params, duration_s=30))
            assert rec.state is State.ACTIVE
            assert rec.params == {"table": "public.items", "strength": strength, "where": None, "limit": 10}
            assert rec.details["locked_rows"] == 10
            assert rec.details["key_columns"] == ["id"]
            assert rec.details["first_keys"] == [1, 2, 3, 4, 5]
            assert row_locks(db, "items") == [(i, [PGROWLOCKS_MODE[strength]], rec.pids) for i in range(1, 11)]
            assert free_rows(db, "items", "id <= 10") == 0
            assert free_rows(db, "items", "id BETWEEN 11 AND 20") == 10
            ended = await engine.abort(rec.id)
            assert ended.state is State.REVERTED and ended.end_reason is EndReason.ABORTED
            assert row_locks(db, "items") == []

    asyncio.run(scenario())


@pytest.mark.parametrize(("held", "operation", "waits"), MATRIX)
def test_strength_blocks_exactly_the_conflicting_statements(db: str, held: str, operation: str, waits: bool) -> None:
    query(db, "INSERT INTO users (id, email, name) VALUES (%s, 'fresh@example.com', 'Fresh')", (FRESH_USER,))
    statement = OPERATIONS[operation][0]

    async def scenario() -> None:
        async with engine_for(db) as engine:
            params = {"table": "users", "where": {"id": [FRESH_USER]}, "strength": held}
            rec = await engine.create(FaultRequest("row-lock", params, duration_s=30))
            assert rec.details["locked_rows"] == 1
            assert await asyncio.to_thread(statement_waits, db, statement) is waits, f"{operation} under {held}"
            await engine.abort(rec.id)
        # once released, every statement proceeds (rolled back by statement_waits)
        assert await asyncio.to_thread(statement_waits, db, statement) is False

    asyncio.run(scenario())
    assert query(db, "SELECT name FROM users WHERE id = %s", (FRESH_USER,)) == [("Fresh",)]


@pytest.mark.parametrize(
    ("where", "limit", "expected_sql"),
    [
        ({"user_id": [5, 7]}, 3, "SELECT id FROM orders WHERE user_id IN (5, 7) ORDER BY id LIMIT 3"),
        ({"user_id": [5, 7], "quantity": [5]}, 100, "SELECT id FROM orders WHERE user_id IN (5, 7) AND quantity = 5"),
        ({"id": ["20", 10, 4999]}, 2, "SELECT id FROM orders WHERE id IN (10, 20)"),
    ],
    ids=["in-with-limit", "and-across-columns", "values-cast-by-postgres"],
)
def test_where_and_limit_pick_exactly_the_expected_rows(
    db: str, where: dict[str, list[Any]], limit: int, expected_sql: str
) -> None:
    expected = sorted(r[0] for r in query(db, expected_sql))
    assert expected  # the sample data must have some

    async def scenario() -> None:
        async with engine_for(db) as engine:
            params = {"table": "public.orders", "where": where, "limit": limit, "strength": "FOR UPDATE"}
            rec = await engine.create(FaultRequest("row-lock", params, duration_s=30))
            assert [r[0] for r in row_locks(db, "orders")] == expected
            assert rec.details["locked_rows"] == len(expected)
            assert rec.details["first_keys"] == expected[:5]
            assert rec.params["where"] == where and rec.params["limit"] == limit

    asyncio.run(scenario())


def test_table_without_primary_key_locks_in_ctid_order(db: str) -> None:
    # v descending in physical order: ctid order locks 10, 9, 8; value order would lock 1, 2, 3
    query(db, "CREATE TABLE nopk (v int); INSERT INTO nopk SELECT g FROM generate_series(10, 1, -1) AS g")

    async def scenario() -> None:
        async with engine_for(db) as engine:
            rec = await engine.create(FaultRequest("row-lock", {"table": "nopk", "limit": 3}, duration_s=30))
            assert rec.details["key_columns"] == ["ctid"]
            assert rec.details["first_keys"] == ["(0,1)", "(0,2)", "(0,3)"]
            assert [r[0] for r in row_locks(db, "nopk", key="v")] == [8, 9, 10]
            assert free_rows(db, "nopk", "true") == 7

    asyncio.run(scenario())


@pytest.mark.parametrize("ending", ["deadline", "abort"])
def test_deadline_and_abort_release_the_rows(db: str, ending: str) -> None:
    async def scenario() -> None:
        # a long server-side grace: the rows must come back from dbchaos's own revert, well
        # before PostgreSQL's idle_in_transaction_session_timeout would end the session
        async with engine_for(db, Settings(server_side_grace_s=60)) as engine:
            duration = 1.0 if ending == "deadline" else 30.0
            rec = await engine.create(FaultRequest("row-lock", {"table": "items"}, duration_s=duration))
            assert free_rows(db, "items", "id <= 10") == 0
            if ending == "abort":
                await engine.abort(rec.id)
            await asyncio.to_thread(
                wait_for, lambda: free_rows(db, "items", "id <= 10") == 10, 5.0, 0.05, "the rows to be released"
            )
            await asyncio.to_thread(wait_for, lambda: rec.state.finished, 5.0, 0.05, "the fault to finish")
            assert rec.state is State.REVERTED
            assert rec.end_reason is (EndReason.DEADLINE if ending == "deadline" else EndReason.ABORTED)
            assert [r for r in dbchaos_sessions_here(db) if r[1] == f"dbchaos:{rec.id}"] == []

    asyncio.run(scenario())


@pytest.mark.parametrize(
    ("params", "field", "code"),
    [
        ({"table": "no_such_table"}, "params.table", "unknown_table"),
        ({"table": "items; DROP TABLE users"}, "params.table", "invalid_identifier"),
        ({"table": "items", "where": {"nope": [1]}}, "params.where.nope", "unknown_column"),
        ({"table": "items", "where": {"id; DROP TABLE users": [1]}}, "params.where.id; DROP TABLE users", None),
        ({"table": "items", "strength": "exclusive"}, "params.strength", "unknown_strength"),
        ({"table": "items", "limit": 0}, "params.limit", None),
        ({"table": "items", "limit": 1_000_001}, "params.limit", None),
        ({"table": "items", "where": {"id": ["abc"]}}, "params.where.id", "invalid_value"),
        ({"table": "items", "where": {"id": [True]}}, "params.where.id", "invalid_value"),
        ({"table": "items", "where": {"updated_at": ["not a date"]}}, "params.where.updated_at", "invalid_value"),
        ({"table": "items", "where": {"id": []}}, "params.where.id", None),
        ({"table": "items", "where": {"id": [99_999_999]}}, "params.where", "no_rows"),
    ],
    ids=[
        "unknown-table",
        "semicolon-in-table",
        "unknown-column",
        "semicolon-in-column",
        "bad-strength",
        "limit-0",
        "limit-too-big",
        "text-for-bigint",
        "bool-for-bigint",
        "bad-timestamp",
        "no-values",
        "no-rows",
    ],
)
def test_bad_input_is_refused_on_its_field_and_leaves_nothing(
    db: str, params: dict[str, Any], field: str, code: str | None
) -> None:
    async def scenario() -> InvalidInput:
        async with engine_for(db) as engine:
            with pytest.raises(InvalidInput) as info:
                await engine.create(FaultRequest("row-lock", params, duration_s=2))
            assert engine.all() == []
            return info.value

    err = asyncio.run(scenario())
    assert err.field == field
    if code is not None:
        assert err.code == code
    wait_for(lambda: dbchaos_sessions_here(db) == [], 5.0, 0.05, "dbchaos sessions to go away")
    assert query(db, "SELECT count(*) FROM users") == [(1000,)]
    assert row_locks(db, "items") == []


def test_rows_held_by_someone_else_fail_with_lock_not_acquired_and_hold_nothing(db: str) -> None:
    async def scenario() -> None:
        async with await psycopg.AsyncConnection.connect(db) as blocker:
            # the blocker holds row 5 of the 10 the fault wants: the fault locks 1-4, then waits
            await blocker.execute("SELECT id FROM items WHERE id = 5 FOR UPDATE")
            async with engine_for(db) as engine:
                with pytest.raises(LockNotAcquired) as info:
                    await engine.create(FaultRequest("row-lock", {"table": "items"}, duration_s=2, acquire_timeout_s=1))
                rec = engine.get(info.value.extra["fault_id"])
                assert rec.state is State.FAILED
                assert blocker.info.backend_pid in [b["pid"] for b in rec.blockers]
                await asyncio.to_thread(
                    wait_for,
                    lambda: not [r for r in dbchaos_sessions_here(db) if r[1] == f"dbchaos:{rec.id}"],
                    5.0,
                    0.05,
                    "the fault's session to go away",
                )
                # only the blocker's row is locked: rows 1-4 were released with the failed transaction
                assert [(r[0], r[2]) for r in row_locks(db, "items")] == [(5, [blocker.info.backend_pid])]
                assert free_rows(db, "items", "id <= 10") == 9
            await blocker.rollback()
        assert free_rows(db, "items", "id <= 10") == 10

    asyncio.run(scenario())


def test_a_table_locked_against_readers_is_reported_by_acquisition_not_by_the_checks(db: str) -> None:
    # the row check in prepare gives up after a short lock_timeout; the fault then waits its
    # acquire_timeout like any lock and fails with who was in the way
    async def scenario() -> None:
        async with await psycopg.AsyncConnection.connect(db) as blocker:
            await blocker.execute("LOCK TABLE items IN ACCESS EXCLUSIVE MODE")
            async with engine_for(db) as engine:
                with pytest.raises(LockNotAcquired) as info:
                    await engine.create(FaultRequest("row-lock", {"table": "items"}, duration_s=2, acquire_timeout_s=1))
                rec = engine.get(info.value.extra["fault_id"])
                assert rec.state is State.FAILED
                assert blocker.info.backend_pid in [b["pid"] for b in rec.blockers]
            await blocker.rollback()

    asyncio.run(scenario())


def test_a_role_without_update_privilege_is_refused_before_anything_is_held(pg: PgServer, db: str) -> None:
    dbname = psycopg.conninfo.conninfo_to_dict(db)["dbname"]
    assert isinstance(dbname, str)
    with unprivileged_role(pg, dbname) as role_dsn:
        role = psycopg.conninfo.conninfo_to_dict(role_dsn)["user"]
        assert isinstance(role, str)
        query(db, sql.SQL("REVOKE UPDATE ON items FROM {}").format(sql.Identifier(role)).as_string())

        async def scenario() -> None:
            async with engine_for(role_dsn) as engine:
                with pytest.raises(Forbidden) as info:
                    await engine.create(FaultRequest("row-lock", {"table": "items"}, duration_s=2))
                assert info.value.code == "insufficient_privilege"
                assert engine.all() == []

        asyncio.run(scenario())
    assert row_locks(db, "items") == []
