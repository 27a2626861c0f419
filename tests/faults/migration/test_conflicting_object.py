"""conflicting-object with the real Alembic CLI: a pending migration meets the object it
is about to create."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from dbchaos.engine.engine import FaultRequest
from dbchaos.engine.model import EndReason, State
from dbchaos.errors import InvalidInput
from dbchaos.faults.migration.graph import RevisionGraph
from tests.alembic_helpers import BRANCH_A, BRANCH_B, HEAD, MERGE, alembic, last_line, migrate
from tests.faults.migration.test_hidden_object import catalog, journal, leftovers
from tests.helpers import query, running_engine


def fingerprint(dsn: str, table: str) -> list[Any]:
    """Columns (name, type, nullability) and indexes of ``table``."""
    return [
        query(
            dsn,
            "SELECT attname, format_type(atttypid, atttypmod), attnotnull FROM pg_attribute"
            " WHERE attrelid = %s::regclass AND attnum > 0 AND NOT attisdropped ORDER BY attnum",
            (table,),
        ),
        query(
            dsn, "SELECT indexrelid::regclass::text FROM pg_index WHERE indrelid = %s::regclass ORDER BY 1", (table,)
        ),
    ]


def conflict_then_revert(
    dsn: str, graph: RevisionGraph, params: dict[str, Any], pending_at: str, *errors: str
) -> dict[str, Any]:
    """Inject, check that ``upgrade head`` fails with ``errors`` and changes nothing, revert."""

    async def scenario() -> dict[str, Any]:
        async with running_engine(dsn, graph) as engine:
            rec = await engine.create(FaultRequest("conflicting-object", params, duration_s=30))
            assert rec.state is State.ACTIVE
            res = await asyncio.to_thread(alembic, dsn, "upgrade", "head")
            out = res.stdout + res.stderr
            assert res.returncode != 0
            for e in errors:
                assert e in out, out[-2000:]
            res = await asyncio.to_thread(alembic, dsn, "current")
            assert pending_at in last_line(res)  # the failed upgrade rolled back whole
            await engine.abort(rec.id)
            assert rec.state is State.REVERTED and rec.end_reason is EndReason.ABORTED, rec.error
            assert rec.details["verified"] is True
            return dict(rec.details)

    details = asyncio.run(scenario())
    assert leftovers(dsn) == []
    assert [r[2] for r in journal(dsn)] == ["reverted"]
    return details


def upgrade_succeeds(dsn: str) -> None:
    res = alembic(dsn, "upgrade", "head")
    assert res.returncode == 0, res.stdout + res.stderr
    assert HEAD in last_line(alembic(dsn, "current"))


def test_table_a_pending_migration_creates_fails_with_duplicate_table(alembic_db: str, graph: RevisionGraph) -> None:
    # one revision behind head for real: refunds (created by the head revision) is not there
    query(alembic_db, "DROP TABLE refunds")
    assert alembic(alembic_db, "stamp", MERGE).returncode == 0
    details = conflict_then_revert(
        alembic_db,
        graph,
        {"object": "table", "table": "refunds"},
        MERGE,
        "DuplicateTable",
        'relation "refunds" already exists',
    )
    assert details["created"] == "table public.refunds"
    assert query(alembic_db, "SELECT to_regclass('public.refunds')") == [(None,)]
    upgrade_succeeds(alembic_db)


def test_column_a_pending_migration_adds_fails_with_duplicate_column(db: str, graph: RevisionGraph) -> None:
    migrate(db, BRANCH_B)  # a1, b2 and d4 applied: c3 (adds accounts.email) is pending
    before = fingerprint(db, "accounts")
    details = conflict_then_revert(
        db,
        graph,
        {"object": "column", "table": "accounts", "column": "email", "type": "text"},
        BRANCH_B,
        "DuplicateColumn",
        'column "email" of relation "accounts" already exists',
    )
    assert details["created"] == "column email text on public.accounts"
    assert fingerprint(db, "accounts") == before
    upgrade_succeeds(db)


def test_index_a_pending_migration_creates_fails_with_duplicate_table(db: str, graph: RevisionGraph) -> None:
    migrate(db, BRANCH_A)  # a1, b2 and c3 applied: d4 (ix_invoices_account_id) is pending
    before = fingerprint(db, "invoices")
    details = conflict_then_revert(
        db,
        graph,
        {"object": "index", "table": "invoices", "index": "ix_invoices_account_id", "columns": ["account_id"]},
        BRANCH_A,
        # an index is a relation: PostgreSQL reports 42P07 (DuplicateTable), not DuplicateObject
        "DuplicateTable",
        'relation "ix_invoices_account_id" already exists',
    )
    assert details["created"] == "index public.ix_invoices_account_id on public.invoices (account_id)"
    assert fingerprint(db, "invoices") == before
    upgrade_succeeds(db)


def test_dropping_the_conflict_and_upgrading_supersedes_the_fault(db: str, graph: RevisionGraph) -> None:
    """The team's repair: drop the stray column and run the migration; their column stays."""
    migrate(db, BRANCH_B)

    async def scenario() -> None:
        async with running_engine(db, graph) as engine:
            rec = await engine.create(
                FaultRequest(
                    "conflicting-object",
                    {"object": "column", "table": "accounts", "column": "email", "type": "text"},
                    duration_s=30,
                )
            )
            query(db, "ALTER TABLE accounts DROP COLUMN email")
            res = await asyncio.to_thread(alembic, db, "upgrade", "head")
            assert res.returncode == 0, res.stdout + res.stderr
            await engine.abort(rec.id)
            assert rec.state is State.SUPERSEDED and "re-created" in (rec.error or "")

    asyncio.run(scenario())
    assert query(db, "SELECT 1 FROM pg_attribute WHERE attrelid = 'accounts'::regclass AND attname = 'email'") == [
        (1,)
    ]  # the column the migration re-created is theirs and stays
    assert HEAD in last_line(alembic(db, "current"))


BAD_INPUT: list[tuple[dict[str, Any], str]] = [
    ({"object": "table", "table": "accounts"}, "params.table"),  # exists
    ({"object": "table", "table": "nope.refunds2"}, "params.table"),  # unknown schema
    ({"object": "table", "table": "refunds2; DROP TABLE accounts"}, "params.table"),
    ({"object": "table", "table": "r" * 64}, "params.table"),
    ({"object": "column", "table": "accounts", "column": "name", "type": "text"}, "params.column"),
    ({"object": "column", "table": "nope", "column": "x", "type": "text"}, "params.table"),
    ({"object": "column", "table": "accounts", "column": "x", "type": "no_such_type"}, "params.type"),
    ({"object": "column", "table": "accounts", "column": "x", "type": "text; DROP TABLE accounts"}, "params.type"),
    ({"object": "column", "table": "accounts", "column": "x", "type": "void"}, "params.type"),
    ({"object": "column", "table": "accounts", "column": "x"}, "params.type"),
    ({"object": "column", "table": "accounts", "column": "x;y", "type": "text"}, "params.column"),
    ({"object": "index", "table": "invoices", "index": "invoices_pkey", "columns": ["id"]}, "params.index"),
    ({"object": "index", "table": "invoices", "index": "accounts", "columns": ["id"]}, "params.index"),
    ({"object": "index", "table": "invoices", "index": "ix_new", "columns": ["nope"]}, "params.columns.0"),
    ({"object": "index", "table": "invoices", "index": "i" * 64, "columns": ["id"]}, "params.index"),
    ({"object": "table", "table": "refunds2", "columns": ["id"]}, "params.columns"),
    ({"object": "view", "table": "refunds2"}, "params.object"),
]


def test_bad_input_is_rejected_and_changes_nothing(alembic_db: str, graph: RevisionGraph) -> None:
    before = catalog(alembic_db)

    async def scenario() -> None:
        async with running_engine(alembic_db, graph) as engine:
            for params, field in BAD_INPUT:
                with pytest.raises(InvalidInput) as err:
                    await engine.create(FaultRequest("conflicting-object", params, duration_s=5))
                assert err.value.field == field, (params, err.value.message)

    asyncio.run(scenario())
    assert catalog(alembic_db) == before
    assert journal(alembic_db) == []
