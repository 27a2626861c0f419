"""missing-table with the real Alembic CLI: the version table renamed out of the way."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from dbchaos.engine.engine import FaultRequest
from dbchaos.engine.model import EndReason, State
from dbchaos.errors import Conflict, InvalidInput
from dbchaos.faults.migration.graph import RevisionGraph
from tests.alembic_helpers import HEAD, alembic, last_line
from tests.faults.migration.test_hidden_object import catalog, journal, leftovers
from tests.helpers import query, running_engine


def version_table_oid(dsn: str) -> int | None:
    row = query(dsn, "SELECT to_regclass('public.alembic_version')::oid::bigint")[0][0]
    return None if row is None else int(row)


def versions(dsn: str) -> list[str]:
    return sorted(r[0] for r in query(dsn, "SELECT version_num FROM alembic_version"))


def test_alembic_sees_no_table_upgrade_rolls_back_and_revert_restores_it(alembic_db: str, graph: RevisionGraph) -> None:
    oid = version_table_oid(alembic_db)
    assert oid is not None

    async def scenario() -> None:
        async with running_engine(alembic_db, graph) as engine:
            rec = await engine.create(FaultRequest("missing-table", {}, duration_s=30))
            assert rec.state is State.ACTIVE
            hidden = rec.details["hidden_as"]
            assert hidden.startswith("alembic_version_dbchaos_") and rec.details["original_version"] == [HEAD]
            # the primary key is hidden too, else Alembic's CREATE TABLE ... alembic_version_pkc would collide
            assert rec.details["hidden_indexes"]["alembic_version_pkc"].startswith("alembic_version_pkc_dbchaos_")
            assert version_table_oid(alembic_db) is None
            res = await asyncio.to_thread(alembic, alembic_db, "current")
            assert res.returncode == 0 and res.stdout.strip() == "" and HEAD not in res.stdout + res.stderr
            res = await asyncio.to_thread(alembic, alembic_db, "upgrade", "head")
            out = res.stdout + res.stderr
            assert res.returncode != 0
            assert "DuplicateTable" in out and 'relation "accounts" already exists' in out
            assert version_table_oid(alembic_db) is None  # the failed upgrade rolled back its CREATE TABLE
            await engine.abort(rec.id)
            assert rec.state is State.REVERTED and rec.end_reason is EndReason.ABORTED
            assert rec.details["verified"] is True and rec.details["restored_version_rows"] == [HEAD]

    asyncio.run(scenario())
    assert version_table_oid(alembic_db) == oid
    assert versions(alembic_db) == [HEAD]
    assert query(alembic_db, "SELECT conrelid::bigint FROM pg_constraint WHERE conname = 'alembic_version_pkc'") == [
        (oid,)
    ]
    res = alembic(alembic_db, "upgrade", "head")
    assert res.returncode == 0 and "Running upgrade" not in res.stdout + res.stderr
    assert HEAD in last_line(alembic(alembic_db, "current"))
    assert leftovers(alembic_db) == []


def test_stamp_during_the_fault_supersedes_it_and_the_hidden_copy_is_dropped(
    alembic_db: str, graph: RevisionGraph
) -> None:
    oid = version_table_oid(alembic_db)

    async def scenario() -> None:
        async with running_engine(alembic_db, graph) as engine:
            rec = await engine.create(FaultRequest("missing-table", {}, duration_s=30))
            hidden = rec.details["hidden_as"]
            res = await asyncio.to_thread(alembic, alembic_db, "stamp", "head")  # the team's repair
            assert res.returncode == 0, res.stdout + res.stderr
            await engine.abort(rec.id)
            assert rec.state is State.SUPERSEDED, rec.error
            assert "exists again" in (rec.error or "")
            dropped = rec.details["superseded"]["dropped_hidden_copy"]
            assert dropped == {"table": f"public.{hidden}", "rows": [HEAD]}

    asyncio.run(scenario())
    new_oid = version_table_oid(alembic_db)
    assert new_oid is not None and new_oid != oid  # the team's table stays
    assert versions(alembic_db) == [HEAD]
    ((state, outcome),) = [(r[2], r[3]) for r in journal(alembic_db)]
    assert state == "superseded" and outcome["dropped_hidden_copy"]["rows"] == [HEAD]
    assert outcome["version_rows_found"] == [HEAD]
    res = alembic(alembic_db, "upgrade", "head")
    assert res.returncode == 0 and "Running upgrade" not in res.stdout + res.stderr
    assert leftovers(alembic_db) == []  # the hidden copy (and its hidden primary key) are gone


def test_a_second_fault_on_the_version_table_is_refused(alembic_db: str, graph: RevisionGraph) -> None:
    async def scenario() -> None:
        async with running_engine(alembic_db, graph) as engine:
            rec = await engine.create(FaultRequest("unknown-revision", {}, duration_s=30))
            with pytest.raises(Conflict) as err:
                await engine.create(FaultRequest("missing-table", {}, duration_s=30, acquire_timeout_s=1))
            assert err.value.code == "object_under_fault"
            assert version_table_oid(alembic_db) is not None
            assert rec.state is State.ACTIVE
            await engine.abort(rec.id)
            assert rec.state is State.REVERTED

    asyncio.run(scenario())
    assert versions(alembic_db) == [HEAD]
    assert leftovers(alembic_db) == []


BAD_INPUT: list[tuple[dict[str, Any], str]] = [
    ({"version_table": "nope"}, "params.version_table"),
    ({"version_table": "v" * 64}, "params.version_table"),
    ({"version_table": "accounts"}, "params.version_table"),  # no version_num column
    ({"version_table_schema": "nope"}, "params.version_table_schema"),
]


def test_bad_input_is_rejected_and_changes_nothing(alembic_db: str, graph: RevisionGraph) -> None:
    before = catalog(alembic_db)

    async def scenario() -> None:
        async with running_engine(alembic_db, graph) as engine:
            for params, field in BAD_INPUT:
                with pytest.raises(InvalidInput) as err:
                    await engine.create(FaultRequest("missing-table", params, duration_s=5))
                assert err.value.field == field, (params, err.value.message)

    asyncio.run(scenario())
    assert catalog(alembic_db) == before
    assert journal(alembic_db) == []
