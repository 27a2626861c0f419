"""hidden-object with the real Alembic CLI: the schema lags the recorded revision."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import psycopg
import pytest

from dbchaos.engine.engine import FaultRequest
from dbchaos.engine.model import EndReason, State
from dbchaos.errors import InvalidInput, LockNotAcquired
from dbchaos.faults.migration.graph import RevisionGraph
from dbchaos.faults.migration.hidden_object import hidden_name
from tests.alembic_helpers import HEAD, alembic, last_line
from tests.helpers import query, running_engine, wait_for


def leftovers(dsn: str) -> list[Any]:
    """Anything dbchaos made that is not its journal schema, and its sessions."""
    rows = query(
        dsn,
        "SELECT n.nspname || '.' || c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
        " WHERE n.nspname <> 'dbchaos' AND c.relname LIKE '%dbchaos%'"
        " UNION ALL SELECT attrelid::regclass::text || '.' || attname FROM pg_attribute"
        " WHERE attname LIKE '%dbchaos%' AND NOT attisdropped"
        " UNION ALL SELECT description FROM pg_description WHERE description LIKE 'dbchaos %'"
        " UNION ALL SELECT nspname FROM pg_namespace WHERE nspname LIKE '%dbchaos%' AND nspname <> 'dbchaos'",
    )

    def sessions() -> list[tuple[Any, ...]]:  # fault sessions of this database (closing ones may linger briefly)
        return query(
            dsn,
            "SELECT application_name FROM pg_stat_activity WHERE datname = current_database()"
            " AND application_name ~ '^dbchaos:[0-9a-f-]{36}$'",
        )

    deadline = time.monotonic() + 3.0
    while sessions() and time.monotonic() < deadline:
        time.sleep(0.05)
    return [r[0] for r in rows + sessions()]


def catalog(dsn: str) -> list[Any]:
    """Tables of schema public with their oids, columns and indexes (to prove nothing changed)."""
    return query(
        dsn,
        "SELECT c.oid::bigint, c.relname, c.relkind,"
        " (SELECT array_agg(attname::text ORDER BY attnum) FROM pg_attribute"
        "   WHERE attrelid = c.oid AND attnum > 0 AND NOT attisdropped)"
        " FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = 'public' ORDER BY 1",
    )


def journal(dsn: str) -> list[tuple[Any, ...]]:
    if not query(dsn, "SELECT to_regclass('dbchaos.journal')")[0][0]:
        return []
    return query(dsn, "SELECT fault_id::text, kind, state, outcome FROM dbchaos.journal ORDER BY created_at")


def seed(dsn: str) -> None:
    query(
        dsn,
        "INSERT INTO accounts (id, name, email) VALUES (1, 'ada', 'ada@example.com'), (2, 'bob', NULL),"
        " (3, 'cy', 'cy@example.com');"
        " INSERT INTO invoices (id, account_id, amount) VALUES (1, 1, 10.50), (2, 1, 3.00), (3, 3, 99.99)",
    )


def snapshot(dsn: str) -> list[Any]:
    return [
        query(dsn, "SELECT id, name, email FROM accounts ORDER BY id"),
        query(dsn, "SELECT id, account_id, amount FROM invoices ORDER BY id"),
    ]


def test_hidden_name_fits_63_bytes() -> None:
    assert hidden_name("accounts", "0123abcd") == "accounts_dbchaos_0123abcd"
    long = hidden_name("x" * 63, "0123abcd")
    assert len(long.encode()) == 63 and long.endswith("_dbchaos_0123abcd")
    multi = hidden_name("é" * 31, "0123abcd", 2)  # 62 bytes of 2-byte characters: cut at a boundary
    assert len(multi.encode()) <= 63 and multi.endswith("_dbchaos_0123abcd_2")
    multi.encode().decode()


def test_hidden_table_fails_with_undefined_table_and_reverts(alembic_db: str, graph: RevisionGraph) -> None:
    seed(alembic_db)
    before = snapshot(alembic_db)
    oid = query(alembic_db, "SELECT 'invoices'::regclass::oid::bigint")[0][0]

    async def scenario() -> None:
        async with running_engine(alembic_db, graph) as engine:
            rec = await engine.create(FaultRequest("hidden-object", {"table": "invoices"}, duration_s=30))
            assert rec.state is State.ACTIVE
            hidden = rec.details["hidden_as"]
            assert hidden.startswith("invoices_dbchaos_") and rec.details["recorded_revision"] == [HEAD]
            with pytest.raises(psycopg.errors.UndefinedTable):
                query(alembic_db, "SELECT * FROM invoices")
            assert query(alembic_db, f'SELECT count(*) FROM "{hidden}"')[0][0] == 3  # data untouched
            # its explicitly named index is hidden too (a re-created table would not collide)
            assert query(alembic_db, "SELECT to_regclass('ix_invoices_account_id')")[0][0] is None
            res = await asyncio.to_thread(alembic, alembic_db, "current")
            assert res.returncode == 0 and HEAD in last_line(res)
            await engine.abort(rec.id)
            assert rec.state is State.REVERTED and rec.end_reason is EndReason.ABORTED
            assert rec.details["verified"] is True

    asyncio.run(scenario())
    assert query(alembic_db, "SELECT 'invoices'::regclass::oid::bigint")[0][0] == oid
    assert (
        query(
            alembic_db, "SELECT indrelid::bigint FROM pg_index WHERE indexrelid = 'ix_invoices_account_id'::regclass"
        )[0][0]
        == oid
    )
    assert snapshot(alembic_db) == before
    res = alembic(alembic_db, "upgrade", "head")
    assert res.returncode == 0 and "Running upgrade" not in res.stdout + res.stderr
    assert leftovers(alembic_db) == []
    assert [r[2] for r in journal(alembic_db)] == ["reverted"]


def test_hidden_column_fails_with_undefined_column_and_reverts(alembic_db: str, graph: RevisionGraph) -> None:
    seed(alembic_db)
    before = snapshot(alembic_db)

    async def scenario() -> None:
        async with running_engine(alembic_db, graph) as engine:
            rec = await engine.create(
                FaultRequest("hidden-object", {"table": "accounts", "column": "email"}, duration_s=30)
            )
            assert rec.state is State.ACTIVE
            assert rec.details["hidden_as"].startswith("email_dbchaos_")
            with pytest.raises(psycopg.errors.UndefinedColumn):
                query(alembic_db, "SELECT email FROM accounts")
            assert query(alembic_db, "SELECT count(*) FROM accounts")[0][0] == 3
            res = await asyncio.to_thread(alembic, alembic_db, "current")
            assert res.returncode == 0 and HEAD in last_line(res)
            await engine.abort(rec.id)
            assert rec.state is State.REVERTED and rec.details["verified"] is True

    asyncio.run(scenario())
    assert snapshot(alembic_db) == before
    assert leftovers(alembic_db) == []


def test_inject_behind_a_reader_fails_cleanly_and_never_queues(alembic_db: str, graph: RevisionGraph) -> None:
    before = catalog(alembic_db)
    reader = psycopg.connect(alembic_db)
    try:
        reader.execute("SELECT count(*) FROM accounts")  # ACCESS SHARE, held while the transaction is open

        async def scenario() -> float:
            async with running_engine(alembic_db, graph) as engine:
                started = time.monotonic()
                with pytest.raises(LockNotAcquired):
                    await engine.create(
                        FaultRequest(
                            "hidden-object",
                            {"table": "accounts", "column": "email"},
                            duration_s=5,
                            acquire_timeout_s=0.3,
                        )
                    )
                return time.monotonic() - started

        elapsed = asyncio.run(scenario())
        assert elapsed < 8, elapsed
        waiting = "SELECT count(*) FROM pg_locks l JOIN pg_stat_activity a USING (pid) WHERE NOT l.granted"
        assert query(alembic_db, waiting + " AND a.datname = current_database()")[0][0] == 0
    finally:
        reader.close()
    assert catalog(alembic_db) == before
    assert journal(alembic_db) == []
    assert leftovers(alembic_db) == []


def test_revert_retries_while_a_reader_holds_the_table(alembic_db: str, graph: RevisionGraph) -> None:
    seed(alembic_db)
    before = snapshot(alembic_db)

    def waiting() -> list[tuple[Any, ...]]:
        """When the revert's waiting statement started (one row while it waits for its lock)."""
        return query(
            alembic_db,
            "SELECT a.query_start FROM pg_locks l JOIN pg_stat_activity a USING (pid) WHERE NOT l.granted"
            " AND l.relation = 'accounts'::regclass AND a.application_name LIKE 'dbchaos:%%'",
        )

    async def scenario() -> None:
        async with running_engine(alembic_db, graph) as engine:
            rec = await engine.create(
                FaultRequest("hidden-object", {"table": "accounts", "column": "email"}, duration_s=30)
            )
            reader = await psycopg.AsyncConnection.connect(alembic_db)
            try:
                await reader.execute("SELECT count(*) FROM accounts")
                abort = asyncio.create_task(engine.abort(rec.id))
                first = await asyncio.to_thread(wait_for, waiting, 10.0, 0.02, "the revert waiting for its lock")
                await asyncio.to_thread(
                    wait_for, lambda: (w := waiting()) and w != first, 10.0, 0.02, "a second attempt of the revert"
                )
                assert not abort.done()
                await reader.commit()
                await asyncio.wait_for(abort, 20)
            finally:
                await reader.close()
            assert rec.state is State.REVERTED and rec.details["verified"] is True

    asyncio.run(scenario())
    assert snapshot(alembic_db) == before
    assert leftovers(alembic_db) == []


BAD_INPUT: list[tuple[dict[str, Any], str]] = [
    ({"table": "nope"}, "params.table"),
    ({"table": "accounts", "column": "nope"}, "params.column"),
    ({"table": "accounts; DROP TABLE invoices"}, "params.table"),
    ({"table": "accounts", "column": "email; DROP TABLE invoices"}, "params.column"),
    ({"table": "a" * 64}, "params.table"),
    ({"table": "accounts", "column": "e" * 64}, "params.column"),
    ({"table": "alembic_version"}, "params.table"),
    ({"table": "accounts", "version_table": "v" * 64}, "params.version_table"),
]


def test_bad_input_is_rejected_and_changes_nothing(alembic_db: str, graph: RevisionGraph) -> None:
    before = catalog(alembic_db)

    async def scenario() -> None:
        async with running_engine(alembic_db, graph) as engine:
            for params, field in BAD_INPUT:
                with pytest.raises(InvalidInput) as err:
                    await engine.create(FaultRequest("hidden-object", params, duration_s=5))
                assert err.value.field == field, (params, err.value.message)

    asyncio.run(scenario())
    assert catalog(alembic_db) == before
    assert journal(alembic_db) == []


def test_overlapping_faults_on_a_foreign_key_pair_both_revert_verified(alembic_db: str, graph: RevisionGraph) -> None:
    """invoices.account_id references accounts(id). With accounts.id hidden, the foreign key's text
    names the hidden column; invoices' own revert must still verify (the fingerprint records the
    key by the referenced table's oid and column number, not by its text)."""
    seed(alembic_db)
    before = snapshot(alembic_db)
    cat = catalog(alembic_db)

    async def scenario() -> None:
        async with running_engine(alembic_db, graph) as engine:
            tab = await engine.create(FaultRequest("hidden-object", {"table": "invoices"}, duration_s=30))
            # hidden after invoices was recorded: the text of invoices' foreign key changes now
            col = await engine.create(
                FaultRequest("hidden-object", {"table": "accounts", "column": "id"}, duration_s=30)
            )
            assert col.state is State.ACTIVE and tab.state is State.ACTIVE
            await engine.abort(tab.id)  # reverted while accounts.id is still hidden
            assert tab.state is State.REVERTED and tab.details["verified"] is True, tab.error
            await engine.abort(col.id)
            assert col.state is State.REVERTED and col.details["verified"] is True, col.error

    asyncio.run(scenario())
    assert snapshot(alembic_db) == before
    assert catalog(alembic_db) == cat
    assert journal(alembic_db) and all(state == "reverted" for _, _, state, _ in journal(alembic_db))
    assert leftovers(alembic_db) == []
