"""future-revision with the real Alembic CLI: an id shaped like the app's own, absent from
its code (a newer deploy migrated, then the code was rolled back)."""

from __future__ import annotations

import asyncio

from dbchaos.engine.model import EndReason
from dbchaos.faults.migration.graph import RevisionGraph
from tests.alembic_helpers import BRANCH_A, BRANCH_B, HEAD
from tests.faults.migration.test_unknown_revision import (
    add_row,
    alembic_async,
    assert_active_entry,
    assert_reverted,
    assert_upgrade_is_a_noop,
    create,
    ended,
    out,
    versions,
)
from tests.helpers import query, running_engine

HEX = set("0123456789abcdef")


def test_alembic_cannot_locate_the_future_revision_and_revert_restores_it(
    alembic_db: str, graph: RevisionGraph
) -> None:
    async def scenario() -> None:
        async with running_engine(alembic_db, graph) as engine:
            rec = await create(engine, "future-revision")
            (stored,) = versions(alembic_db)
            assert len(stored) == len(HEAD) and set(stored) <= HEX  # shaped like the app's ids
            assert stored not in graph and not graph.prefix_clash(stored)
            assert rec.details["corrupted_version"] == [stored]
            assert_active_entry(alembic_db, rec, [HEAD])
            for args in (["current"], ["upgrade", "head"]):
                res = await alembic_async(alembic_db, *args)
                assert res.returncode != 0
                assert f"Can't locate revision identified by '{stored}'" in out(res)
            await engine.abort(rec.id)
            assert_reverted(alembic_db, rec, [HEAD])
        assert_upgrade_is_a_noop(alembic_db)

    asyncio.run(scenario())


def test_without_scripts_the_id_is_shaped_like_the_stored_one(alembic_db: str) -> None:
    async def scenario() -> None:
        async with running_engine(alembic_db) as engine:
            rec = await create(engine, "future-revision")
            (stored,) = versions(alembic_db)
            assert stored != HEAD and len(stored) == len(HEAD) and set(stored) <= HEX
            await engine.abort(rec.id)
            assert_reverted(alembic_db, rec, [HEAD])

    asyncio.run(scenario())


def test_two_rows_are_restored_whole_at_the_deadline(alembic_db: str, graph: RevisionGraph) -> None:
    # the tips of two branches, as an app with two heads stores them
    query(alembic_db, "UPDATE alembic_version SET version_num = %s", (BRANCH_A,))
    before = add_row(alembic_db, BRANCH_B)
    assert before == sorted([BRANCH_A, BRANCH_B])

    async def scenario() -> None:
        async with running_engine(alembic_db, graph) as engine:
            rec = await create(engine, "future-revision", duration_s=1.5)
            (stored,) = versions(alembic_db)
            assert stored not in before
            assert_active_entry(alembic_db, rec, before)
            await ended(rec)
            assert_reverted(alembic_db, rec, before, EndReason.DEADLINE)

    asyncio.run(scenario())
