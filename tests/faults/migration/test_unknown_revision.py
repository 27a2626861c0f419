"""unknown-revision with the real Alembic CLI — and the checks every version-row kind shares
(the other kinds' tests import the helpers below)."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections import Counter
from typing import Any

import pytest
from psycopg import sql

from dbchaos.engine.engine import Engine, FaultRequest
from dbchaos.engine.model import EndReason, FaultRecord, State
from dbchaos.errors import Conflict, InvalidInput
from dbchaos.faults.migration.graph import RevisionGraph
from tests.alembic_helpers import HEAD, INI, INVOICES, PROJECT, alembic, sqlalchemy_url
from tests.helpers import query, running_engine

# ---- shared helpers (used by every version-row kind's tests) ------------------------------

#: the real ``alembic`` entry point with INFO logging on (the test project's env.py configures
#: none), so a migration that runs shows "Running upgrade ..." and a no-op shows nothing
_ALEMBIC_WITH_INFO_LOG = (
    "import logging, sys; logging.basicConfig(level=logging.INFO, format='%(levelname)s [%(name)s] %(message)s'); "
    "from alembic.config import main; main(argv=sys.argv[1:], prog='alembic')"
)


def versions(dsn: str, table: str = "alembic_version", schema: str = "public") -> list[str]:
    rows = query(dsn, sql.SQL("SELECT version_num FROM {}").format(sql.Identifier(schema, table)).as_string())
    return sorted(str(r[0]) for r in rows)


def out(res: subprocess.CompletedProcess[str]) -> str:
    return res.stdout + res.stderr


async def alembic_async(dsn: str, *args: str) -> subprocess.CompletedProcess[str]:
    return await asyncio.to_thread(alembic, dsn, *args)


def alembic_logged(dsn: str, *args: str) -> subprocess.CompletedProcess[str]:
    """The real ``alembic`` CLI (as ``python -m alembic`` runs it), logging at INFO."""
    return subprocess.run(
        [sys.executable, "-c", _ALEMBIC_WITH_INFO_LOG, "-c", str(INI), *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=dict(os.environ, DBCHAOS_ALEMBIC_URL=sqlalchemy_url(dsn)),
        cwd=PROJECT,
    )


def assert_upgrade_is_a_noop(dsn: str) -> None:
    res = alembic_logged(dsn, "upgrade", "head")
    assert res.returncode == 0, out(res)
    assert "Running upgrade" not in out(res)
    assert "Context impl PostgresqlImpl" in out(res)  # the INFO log is on: the check above can fail


def journal(dsn: str) -> list[tuple[str, str, list[dict[str, Any]]]]:
    """(fault id, state, actions) of every journal entry; [] if there is no journal."""
    if query(dsn, "SELECT to_regclass('dbchaos.journal')")[0][0] is None:
        return []
    return [
        (str(r[0]), str(r[1]), list(r[2])) for r in query(dsn, "SELECT fault_id, state, actions FROM dbchaos.journal")
    ]


def assert_active_entry(dsn: str, rec: FaultRecord, before: list[str]) -> None:
    active = [e for e in journal(dsn) if e[1] == "active"]
    assert [e[0] for e in active] == [rec.id]
    assert sorted(active[0][2][0]["before"]) == sorted(before)


def assert_no_leftovers(dsn: str) -> None:
    """Nothing of dbchaos's is left but the journal schema."""
    assert [r[0] for r in query(dsn, "SELECT nspname FROM pg_namespace WHERE nspname ILIKE '%dbchaos%'")] == ["dbchaos"]
    tables = query(
        dsn,
        "SELECT relname FROM pg_class WHERE relnamespace = 'dbchaos'::regnamespace AND relkind NOT IN ('i', 'I')",
    )
    assert sorted(r[0] for r in tables) == ["journal", "opt_in"]
    others = query(
        dsn,
        "SELECT n.nspname, c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
        " WHERE c.relname ILIKE '%dbchaos%' AND n.nspname <> 'dbchaos'",
    )
    assert others == []
    columns = query(dsn, "SELECT attrelid::regclass::text, attname FROM pg_attribute WHERE attname ILIKE '%dbchaos%'")
    assert columns == []


async def ended(rec: FaultRecord, timeout: float = 15.0) -> FaultRecord:
    deadline = time.monotonic() + timeout
    while not rec.state.finished:
        assert time.monotonic() < deadline, f"fault {rec.id} still {rec.state} after {timeout}s"
        await asyncio.sleep(0.05)
    return rec


def assert_reverted(
    dsn: str,
    rec: FaultRecord,
    before: list[str],
    reason: EndReason = EndReason.ABORTED,
    *,
    table: str = "alembic_version",
    schema: str = "public",
) -> None:
    """Rows restored as a multiset, verified, journal entry closed, nothing else left."""
    assert rec.state is State.REVERTED, rec.error
    assert rec.end_reason is reason
    assert rec.details["verified"] is True
    assert Counter(versions(dsn, table, schema)) == Counter(before)
    assert [(e[0], e[1]) for e in journal(dsn)] == [(rec.id, "reverted")]
    assert_no_leftovers(dsn)


def assert_refused_and_unchanged(
    dsn: str, exc: pytest.ExceptionInfo[InvalidInput], field: str, before: list[str]
) -> None:
    assert exc.value.field == field, exc.value.message
    assert versions(dsn) == sorted(before)
    assert [e for e in journal(dsn) if e[1] == "active"] == []


async def create(engine: Engine, kind: str, duration_s: float = 30, **params: Any) -> FaultRecord:
    rec = await engine.create(FaultRequest(kind, params, duration_s=duration_s))
    assert rec.state is State.ACTIVE
    return rec


def add_row(dsn: str, revision: str, table: str = "alembic_version") -> list[str]:
    """A second row, as a multi-head app would have; returns the rows now stored."""
    query(dsn, sql.SQL("INSERT INTO {} VALUES (%s)").format(sql.Identifier(table)).as_string(), (revision,))
    return versions(dsn, table)


# ---- unknown-revision ---------------------------------------------------------------------


def test_alembic_cannot_locate_the_revision_and_revert_restores_it(alembic_db: str, graph: RevisionGraph) -> None:
    async def scenario() -> None:
        async with running_engine(alembic_db, graph) as engine:
            rec = await create(engine, "unknown-revision")
            (stored,) = versions(alembic_db)
            assert stored not in graph and not graph.prefix_clash(stored)
            assert len(stored) == len(HEAD) and set(stored) <= set("0123456789abcdef")
            assert rec.details["original_version"] == [HEAD] and rec.details["corrupted_version"] == [stored]
            assert_active_entry(alembic_db, rec, [HEAD])
            for args in (["current"], ["upgrade", "head"]):
                res = await alembic_async(alembic_db, *args)
                assert res.returncode != 0
                assert f"Can't locate revision identified by '{stored}'" in out(res)
            await engine.abort(rec.id)
            assert_reverted(alembic_db, rec, [HEAD])
        assert_upgrade_is_a_noop(alembic_db)

    asyncio.run(scenario())


def test_without_scripts_the_id_is_no_hex_prefix_and_the_deadline_reverts_it(alembic_db: str) -> None:
    async def scenario() -> None:
        async with running_engine(alembic_db) as engine:
            rec = await create(engine, "unknown-revision", duration_s=2)
            (stored,) = versions(alembic_db)
            assert stored.startswith("x")
            res = await alembic_async(alembic_db, "current")
            assert f"Can't locate revision identified by '{stored}'" in out(res)
            await ended(rec)
            assert_reverted(alembic_db, rec, [HEAD], EndReason.DEADLINE)
        assert_upgrade_is_a_noop(alembic_db)

    asyncio.run(scenario())


def test_two_rows_are_restored_whole_at_the_deadline(alembic_db: str, graph: RevisionGraph) -> None:
    before = add_row(alembic_db, INVOICES)

    async def scenario() -> None:
        async with running_engine(alembic_db, graph) as engine:
            rec = await create(engine, "unknown-revision", duration_s=1.5)
            assert len(versions(alembic_db)) == 1
            assert_active_entry(alembic_db, rec, before)
            await ended(rec)
            assert_reverted(alembic_db, rec, before, EndReason.DEADLINE)

    asyncio.run(scenario())


def test_stamp_purge_head_supersedes_the_fault(alembic_db: str, graph: RevisionGraph) -> None:
    async def scenario() -> None:
        async with running_engine(alembic_db, graph) as engine:
            rec = await create(engine, "unknown-revision")
            res = await alembic_async(alembic_db, "stamp", "--purge", "head")
            assert res.returncode == 0, out(res)
            await engine.abort(rec.id)
            assert rec.state is State.SUPERSEDED, rec.error
            assert rec.end_reason is EndReason.ABORTED
            assert rec.details["superseded"]["version_rows_found"] == [HEAD]
            assert versions(alembic_db) == [HEAD]  # the team's repair stays
            assert [(e[0], e[1]) for e in journal(alembic_db)] == [(rec.id, "superseded")]

    asyncio.run(scenario())


def test_a_second_fault_on_the_version_table_is_refused(alembic_db: str, graph: RevisionGraph) -> None:
    async def scenario() -> None:
        async with running_engine(alembic_db, graph) as engine:
            first = await create(engine, "unknown-revision")
            during = versions(alembic_db)
            for kind in ("unknown-revision", "missing-version", "future-revision"):
                with pytest.raises(Conflict) as exc:
                    await engine.create(FaultRequest(kind, {}, duration_s=30))
                assert exc.value.code == "object_under_fault"
                assert first.id in exc.value.message
            assert versions(alembic_db) == during
            assert [(e[0], e[1]) for e in journal(alembic_db)] == [(first.id, "active")]
            await engine.abort(first.id)
            assert_reverted(alembic_db, first, [HEAD])

    asyncio.run(scenario())


def test_custom_version_table_and_schema(
    alembic_db: str, graph: RevisionGraph, monkeypatch: pytest.MonkeyPatch
) -> None:
    schema, table = "Ops", "app Versions"  # names that need quoting
    query(alembic_db, sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(schema)).as_string())
    monkeypatch.setenv("DBCHAOS_ALEMBIC_VERSION_SCHEMA", schema)
    res = alembic(alembic_db, "stamp", "head", version_table=table)
    assert res.returncode == 0, out(res)
    assert versions(alembic_db, table, schema) == [HEAD]

    async def scenario() -> None:
        async with running_engine(alembic_db, graph) as engine:
            rec = await create(engine, "unknown-revision", version_table=table, version_table_schema=schema)
            (stored,) = versions(alembic_db, table, schema)
            assert stored != HEAD
            assert versions(alembic_db) == [HEAD]  # public.alembic_version untouched
            res = await asyncio.to_thread(alembic, alembic_db, "current", version_table=table)
            assert f"Can't locate revision identified by '{stored}'" in out(res)
            await engine.abort(rec.id)
            assert_reverted(alembic_db, rec, [HEAD], table=table, schema=schema)

    asyncio.run(scenario())


@pytest.mark.parametrize("kind", ["unknown-revision", "future-revision", "missing-version", "behind", "multiple-heads"])
def test_bad_version_table_is_refused_and_nothing_changes(alembic_db: str, graph: RevisionGraph, kind: str) -> None:
    query(alembic_db, "CREATE TABLE not_versions (id int)")
    bad: list[tuple[dict[str, Any], str, str | None]] = [
        ({"version_table": "no_such_table"}, "params.version_table", "unknown_table"),
        ({"version_table_schema": "no_such_schema"}, "params.version_table_schema", "unknown_schema"),
        ({"version_table": 'alembic_version"; DROP TABLE accounts; --'}, "params.version_table", "unknown_table"),
        ({"version_table": "public.alembic_version"}, "params.version_table", "unknown_table"),  # one exact name
        ({"version_table": "v" * 64}, "params.version_table", None),
        ({"version_table": "é" * 32}, "params.version_table", None),  # 64 bytes
        ({"version_table_schema": "s" * 64}, "params.version_table_schema", None),
        ({"version_table": ""}, "params.version_table", None),
        ({"version_table": "bad\x00name"}, "params.version_table", "invalid_text"),
        ({"version_table": "not_versions"}, "params.version_table", "not_a_version_table"),
        ({"version_table": 5}, "params.version_table", None),
    ]

    async def scenario() -> None:
        async with running_engine(alembic_db, graph) as engine:
            for params, field, code in bad:
                with pytest.raises(InvalidInput) as exc:
                    await engine.create(FaultRequest(kind, params, duration_s=30))
                assert_refused_and_unchanged(alembic_db, exc, field, [HEAD])
                if code is not None:
                    assert exc.value.code == code, (params, exc.value.code)
        assert query(alembic_db, "SELECT to_regclass('public.accounts') IS NOT NULL")[0][0]

    asyncio.run(scenario())


def test_a_repair_committed_while_the_revert_waits_is_kept(alembic_db: str, graph: RevisionGraph) -> None:
    """The revert locks the version table before it checks for drift, so a repair that
    commits while the revert waits is seen (superseded) and never overwritten."""
    import psycopg

    from tests.helpers import wait_for

    async def scenario() -> None:
        async with running_engine(alembic_db, graph) as engine:
            rec = await create(engine, "unknown-revision")
            (stored,) = versions(alembic_db)
            with psycopg.connect(alembic_db) as team:
                team.execute("UPDATE alembic_version SET version_num = %s WHERE version_num = %s", (INVOICES, stored))
                aborting = asyncio.create_task(engine.abort(rec.id))
                await asyncio.to_thread(
                    wait_for,
                    lambda: query(
                        alembic_db,
                        "SELECT 1 FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
                        " AND application_name LIKE 'dbchaos:%%' AND datname = current_database()",
                    ),
                    5.0,
                    what="the revert to wait for the team's transaction",
                )
                team.commit()
                await aborting
            assert rec.state is State.SUPERSEDED
            assert versions(alembic_db) == [INVOICES]

    asyncio.run(scenario())
