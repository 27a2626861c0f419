"""missing-version with the real Alembic CLI: the version rows deleted, the table kept."""

from __future__ import annotations

import asyncio

from dbchaos.engine.model import EndReason, State
from dbchaos.faults.migration.graph import RevisionGraph
from tests.alembic_helpers import HEAD, INVOICES
from tests.faults.migration.test_unknown_revision import (
    add_row,
    alembic_async,
    assert_active_entry,
    assert_reverted,
    assert_upgrade_is_a_noop,
    create,
    ended,
    journal,
    out,
    versions,
)
from tests.helpers import query, running_engine


def test_current_prints_nothing_and_upgrade_replays_from_base(alembic_db: str, graph: RevisionGraph) -> None:
    async def scenario() -> None:
        async with running_engine(alembic_db, graph) as engine:
            rec = await create(engine, "missing-version")
            assert versions(alembic_db) == []
            assert rec.details["original_version"] == [HEAD] and rec.details["corrupted_version"] == []
            assert_active_entry(alembic_db, rec, [HEAD])
            res = await alembic_async(alembic_db, "current")
            assert res.returncode == 0, out(res)
            assert res.stdout.strip() == ""
            assert HEAD not in out(res)
            res = await alembic_async(alembic_db, "upgrade", "head")
            assert res.returncode != 0
            assert "DuplicateTable" in out(res) and 'relation "accounts" already exists' in out(res)
            # the failed upgrade rolled back: the table is still there, the version table still empty
            assert query(alembic_db, "SELECT to_regclass('public.accounts') IS NOT NULL")[0][0]
            assert versions(alembic_db) == []
            await engine.abort(rec.id)
            assert_reverted(alembic_db, rec, [HEAD])
        assert_upgrade_is_a_noop(alembic_db)

    asyncio.run(scenario())


def test_two_rows_are_restored_whole_at_the_deadline(alembic_db: str, graph: RevisionGraph) -> None:
    before = add_row(alembic_db, INVOICES)

    async def scenario() -> None:
        async with running_engine(alembic_db, graph) as engine:
            rec = await create(engine, "missing-version", duration_s=1.5)
            assert versions(alembic_db) == []
            assert_active_entry(alembic_db, rec, before)
            await ended(rec)
            assert_reverted(alembic_db, rec, before, EndReason.DEADLINE)

    asyncio.run(scenario())


def test_stamp_head_supersedes_the_fault_at_the_deadline(alembic_db: str, graph: RevisionGraph) -> None:
    async def scenario() -> None:
        async with running_engine(alembic_db, graph) as engine:
            rec = await create(engine, "missing-version", duration_s=2)
            res = await alembic_async(alembic_db, "stamp", "head")
            assert res.returncode == 0, out(res)
            assert versions(alembic_db) == [HEAD]
            await ended(rec)
            assert rec.state is State.SUPERSEDED, rec.error
            assert rec.end_reason is EndReason.DEADLINE
            assert rec.details["superseded"]["version_rows_found"] == [HEAD]
            assert versions(alembic_db) == [HEAD]
            assert [(e[0], e[1]) for e in journal(alembic_db)] == [(rec.id, "superseded")]

    asyncio.run(scenario())


def test_an_empty_version_table_stays_empty_after_revert(alembic_db: str, graph: RevisionGraph) -> None:
    query(alembic_db, "DELETE FROM alembic_version")

    async def scenario() -> None:
        async with running_engine(alembic_db, graph) as engine:
            rec = await create(engine, "unknown-revision")
            assert len(versions(alembic_db)) == 1
            await engine.abort(rec.id)
            assert_reverted(alembic_db, rec, [])

    asyncio.run(scenario())
