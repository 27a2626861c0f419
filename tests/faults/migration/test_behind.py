"""behind with the real Alembic CLI: an older real revision stored, so ``upgrade`` re-runs
DDL already applied."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from dbchaos.engine.model import EndReason
from dbchaos.errors import Conflict, InvalidInput
from dbchaos.faults.migration.graph import RevisionGraph
from tests.alembic_helpers import BASE, BRANCH_A, BRANCH_B, HEAD, INVOICES, MERGE, alembic
from tests.faults.migration.test_unknown_revision import (
    add_row,
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


@pytest.mark.parametrize(
    ("params", "stored", "path", "runs", "error"),
    [
        ({}, MERGE, [HEAD, MERGE], f"{MERGE} -> {HEAD}", 'DuplicateTable) relation "refunds" already exists'),
        # at the merge, the first parent: upgrade then applies the other branch first
        (
            {"steps": 2},
            BRANCH_A,
            [HEAD, MERGE, BRANCH_A],
            f"{INVOICES} -> {BRANCH_B}",
            'DuplicateTable) relation "ix_invoices_account_id" already exists',
        ),
        (
            {"steps": 2, "parent": 1},
            BRANCH_B,
            [HEAD, MERGE, BRANCH_B],
            f"{INVOICES} -> {BRANCH_A}",
            'DuplicateColumn) column "email" of relation "accounts" already exists',
        ),
        ({"revision": BASE}, BASE, None, f"{BASE} -> {INVOICES}", 'DuplicateTable) relation "invoices" already exists'),
    ],
    ids=["steps-1", "steps-2", "steps-2-parent-1", "revision"],
)
def test_upgrade_reruns_applied_ddl_and_revert_restores_head(
    alembic_db: str,
    graph: RevisionGraph,
    params: dict[str, Any],
    stored: str,
    path: list[str] | None,
    runs: str,
    error: str,
) -> None:
    async def scenario() -> None:
        async with running_engine(alembic_db, graph) as engine:
            rec = await create(engine, "behind", **params)
            assert versions(alembic_db) == [stored]
            assert rec.details["corrupted_version"] == [stored]
            assert rec.details.get("path") == path
            assert_active_entry(alembic_db, rec, [HEAD])
            res = await asyncio.to_thread(alembic, alembic_db, "current")
            assert res.returncode == 0 and res.stdout.split()[0] == stored, out(res)
            res = await asyncio.to_thread(alembic_logged, alembic_db, "upgrade", "head")
            assert res.returncode != 0
            assert f"Running upgrade {runs}" in out(res)
            assert error in out(res)
            assert versions(alembic_db) == [stored]  # the failed upgrade rolled back
            await engine.abort(rec.id)
            assert_reverted(alembic_db, rec, [HEAD])
        if not params:
            assert_upgrade_is_a_noop(alembic_db)

    asyncio.run(scenario())


def test_two_rows_are_restored_whole_at_the_deadline(alembic_db: str, graph: RevisionGraph) -> None:
    before = add_row(alembic_db, INVOICES)

    async def scenario() -> None:
        async with running_engine(alembic_db, graph) as engine:
            with pytest.raises(Conflict) as exc:  # steps need one stored revision to walk back from
                await create(engine, "behind")
            assert exc.value.code == "version_table_state"
            rec = await create(engine, "behind", duration_s=1.5, revision=BASE)
            assert versions(alembic_db) == [BASE]
            assert_active_entry(alembic_db, rec, before)
            await ended(rec)
            assert_reverted(alembic_db, rec, before, EndReason.DEADLINE)

    asyncio.run(scenario())


def test_an_explicit_revision_works_without_scripts(alembic_db: str) -> None:
    async def scenario() -> None:
        async with running_engine(alembic_db) as engine:
            rec = await create(engine, "behind", revision=MERGE)
            assert versions(alembic_db) == [MERGE]
            await engine.abort(rec.id)
            assert_reverted(alembic_db, rec, [HEAD])

    asyncio.run(scenario())


def test_bad_input_is_refused_and_nothing_changes(alembic_db: str, graph: RevisionGraph) -> None:
    bad: list[tuple[dict[str, Any], str, str | None]] = [
        ({"revision": "0123456789ab"}, "params.revision", "unknown_revision"),
        ({"revision": HEAD[:4]}, "params.revision", "unknown_revision"),  # a prefix is no revision name
        ({"revision": HEAD}, "params.revision", "already_stored"),
        ({"revision": ""}, "params.revision", None),
        ({"revision": "x" * 33}, "params.revision", None),
        ({"steps": 5}, "params.steps", "beyond_base"),
        ({"steps": 0}, "params.steps", None),
        ({"steps": "2"}, "params.steps", None),
        ({"steps": 2, "parent": 2}, "params.parent", None),
        ({"nonsense": 1}, "params.nonsense", None),
    ]

    async def scenario() -> None:
        async with running_engine(alembic_db, graph) as engine:
            for params, field, code in bad:
                with pytest.raises(InvalidInput) as exc:
                    await create(engine, "behind", **params)
                assert_refused_and_unchanged(alembic_db, exc, field, [HEAD])
                if code is not None:
                    assert exc.value.code == code, (params, exc.value.code)

    asyncio.run(scenario())


def test_a_revision_newer_than_the_stored_one_is_not_behind(alembic_db: str, graph: RevisionGraph) -> None:
    query(alembic_db, "UPDATE alembic_version SET version_num = %s", (BRANCH_A,))

    async def scenario() -> None:
        async with running_engine(alembic_db, graph) as engine:
            for rev in (HEAD, BRANCH_B):  # a descendant, a sibling
                with pytest.raises(InvalidInput) as exc:
                    await create(engine, "behind", revision=rev)
                assert exc.value.code == "not_an_ancestor"
                assert_refused_and_unchanged(alembic_db, exc, "params.revision", [BRANCH_A])

    asyncio.run(scenario())


def test_without_scripts_it_says_how_to_configure_them(alembic_db: str) -> None:
    async def scenario() -> None:
        async with running_engine(alembic_db) as engine:
            for params in ({}, {"steps": 2}):
                with pytest.raises(InvalidInput) as exc:
                    await create(engine, "behind", **params)
                assert exc.value.code == "scripts_not_configured"
                assert "--alembic-ini" in exc.value.message
                assert_refused_and_unchanged(alembic_db, exc, "params.revision", [HEAD])

    asyncio.run(scenario())
