"""multiple-heads with the real Alembic CLI: an overlapping ancestor next to the head, or
the tips of two parallel branches."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from dbchaos.engine.model import EndReason
from dbchaos.errors import Conflict, InvalidInput
from dbchaos.faults.migration.graph import RevisionGraph
from tests.alembic_helpers import BASE, BRANCH_A, BRANCH_B, HEAD, INVOICES, MERGE
from tests.faults.migration.test_unknown_revision import (
    add_row,
    alembic_async,
    alembic_logged,
    assert_active_entry,
    assert_refused_and_unchanged,
    assert_reverted,
    assert_upgrade_is_a_noop,
    create,
    ended,
    out,
    versions,
)
from tests.helpers import query, running_engine


def test_overlap_looks_fine_to_current_but_upgrade_refuses(alembic_db: str, graph: RevisionGraph) -> None:
    async def scenario() -> None:
        async with running_engine(alembic_db, graph) as engine:
            rec = await create(engine, "multiple-heads")
            assert versions(alembic_db) == sorted([HEAD, MERGE])
            assert rec.details["corrupted_version"] == [HEAD, MERGE]
            assert_active_entry(alembic_db, rec, [HEAD])
            res = await alembic_async(alembic_db, "current")
            assert res.returncode == 0, out(res)
            assert res.stdout.split() == [HEAD, "(head)"]  # only the head: looks fine
            res = await alembic_async(alembic_db, "upgrade", "head")
            assert res.returncode != 0
            assert f"Requested revision {HEAD} overlaps with other requested revisions {MERGE}" in out(res)
            await engine.abort(rec.id)
            assert_reverted(alembic_db, rec, [HEAD])
        assert_upgrade_is_a_noop(alembic_db)

    asyncio.run(scenario())


def test_branches_make_upgrade_ambiguous_and_rerun_ddl(alembic_db: str, graph: RevisionGraph) -> None:
    async def scenario() -> None:
        async with running_engine(alembic_db, graph) as engine:
            rec = await create(engine, "multiple-heads", variant="branches")
            assert versions(alembic_db) == sorted([BRANCH_A, BRANCH_B])
            assert_active_entry(alembic_db, rec, [HEAD])
            res = await alembic_async(alembic_db, "current")
            assert res.returncode == 0, out(res)
            assert sorted(res.stdout.split()) == sorted([BRANCH_A, BRANCH_B])
            res = await alembic_async(alembic_db, "upgrade", "+1")
            assert res.returncode != 0
            assert "Ambiguous upgrade from multiple current revisions" in out(res)
            res = await asyncio.to_thread(alembic_logged, alembic_db, "upgrade", "head")
            assert res.returncode != 0
            # the merge runs, and fails on its own CREATE TABLE (payments exists already)
            assert f"Running upgrade {BRANCH_A}, {BRANCH_B} -> {MERGE}" in out(res)
            assert 'DuplicateTable) relation "payments" already exists' in out(res)
            assert versions(alembic_db) == sorted([BRANCH_A, BRANCH_B])  # rolled back
            await engine.abort(rec.id)
            assert_reverted(alembic_db, rec, [HEAD])

    asyncio.run(scenario())


def test_overlap_with_a_named_ancestor_restores_two_rows_at_the_deadline(alembic_db: str, graph: RevisionGraph) -> None:
    before = add_row(alembic_db, INVOICES)

    async def scenario() -> None:
        async with running_engine(alembic_db, graph) as engine:
            with pytest.raises(Conflict) as exc:  # the default ancestor needs one stored head
                await create(engine, "multiple-heads")
            assert exc.value.code == "version_table_state"
            rec = await create(engine, "multiple-heads", duration_s=1.5, revision=BASE)
            assert versions(alembic_db) == sorted([HEAD, INVOICES, BASE])
            assert_active_entry(alembic_db, rec, before)
            await ended(rec)
            assert_reverted(alembic_db, rec, before, EndReason.DEADLINE)

    asyncio.run(scenario())


def test_bad_input_is_refused_and_nothing_changes(alembic_db: str, graph: RevisionGraph) -> None:
    bad: list[tuple[dict[str, Any], str, str | None]] = [
        ({"revision": "0123456789ab"}, "params.revision", "unknown_revision"),
        ({"revision": HEAD}, "params.revision", None),  # already stored
        ({"revision": ""}, "params.revision", None),
        ({"variant": "branches", "revision": BASE}, "params.revision", None),
        ({"variant": "sideways"}, "params.variant", None),
    ]

    async def scenario() -> None:
        async with running_engine(alembic_db, graph) as engine:
            for params, field, code in bad:
                with pytest.raises(InvalidInput) as exc:
                    await create(engine, "multiple-heads", **params)
                assert_refused_and_unchanged(alembic_db, exc, field, [HEAD])
                if code is not None:
                    assert exc.value.code == code, (params, exc.value.code)

    asyncio.run(scenario())


def test_branches_need_a_merge_and_overlap_an_ancestor(alembic_db: str, graph: RevisionGraph) -> None:
    query(alembic_db, "UPDATE alembic_version SET version_num = %s", (BRANCH_A,))

    async def scenario() -> None:
        async with running_engine(alembic_db, graph) as engine:
            with pytest.raises(InvalidInput) as exc:
                await create(engine, "multiple-heads", variant="branches")
            assert exc.value.code == "no_branches"
            assert_refused_and_unchanged(alembic_db, exc, "params.variant", [BRANCH_A])
            for rev in (HEAD, BRANCH_B):  # a descendant, a sibling: no overlap
                with pytest.raises(InvalidInput) as exc:
                    await create(engine, "multiple-heads", revision=rev)
                assert exc.value.code == "not_an_ancestor"
                assert_refused_and_unchanged(alembic_db, exc, "params.revision", [BRANCH_A])

    asyncio.run(scenario())


def test_without_scripts_it_says_how_to_configure_them(alembic_db: str) -> None:
    async def scenario() -> None:
        async with running_engine(alembic_db) as engine:
            cases: list[tuple[dict[str, Any], str]] = [
                ({}, "params.revision"),
                ({"variant": "branches"}, "params.variant"),
            ]
            for params, field in cases:
                with pytest.raises(InvalidInput) as exc:
                    await create(engine, "multiple-heads", **params)
                assert exc.value.code == "scripts_not_configured"
                assert "--alembic-ini" in exc.value.message
                assert_refused_and_unchanged(alembic_db, exc, field, [HEAD])
            rec = await create(engine, "multiple-heads", revision=MERGE)  # named: no scripts needed
            assert versions(alembic_db) == sorted([HEAD, MERGE])
            await engine.abort(rec.id)
            assert_reverted(alembic_db, rec, [HEAD])

    asyncio.run(scenario())
