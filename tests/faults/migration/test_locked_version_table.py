"""locked-version-table with the real Alembic CLI: which commands hang under which mode."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from typing import Any

import pytest

from dbchaos.engine.engine import FaultRequest
from dbchaos.engine.model import EndReason, State
from dbchaos.errors import DbChaosError
from dbchaos.faults.migration.graph import RevisionGraph
from tests.alembic_helpers import HEAD, INI, MERGE, PROJECT, alembic, last_line, sqlalchemy_url
from tests.helpers import (
    dbchaos_lock_count,
    query,
    relation_locks,
    running_engine,
    statement_waits,
    wait_for,
)

KIND = "locked-version-table"
LOCK_TIMEOUT_MS = 500


def fault_sessions(dsn: str) -> list[tuple[Any, ...]]:
    """dbchaos fault sessions connected to this test's database (other tests may share the server)."""
    return [
        r
        for r in query(
            dsn,
            "SELECT pid, application_name, state, backend_start, left(query, 80) FROM pg_stat_activity"
            " WHERE application_name LIKE 'dbchaos:%' AND datname = current_database()",
        )
        if len(str(r[1])) == len("dbchaos:") + 36
    ]


def no_fault_sessions_left(dsn: str) -> None:
    """Wait (briefly) until no fault session is connected: a backend leaves pg_stat_activity a
    moment after its client closed the connection."""
    wait_for(lambda: not fault_sessions(dsn), 3.0, 0.02, what="fault sessions to end")


def _alembic_env(dsn: str, *, lock_timeout: bool, version_table: str | None, schema: str | None) -> dict[str, str]:
    env = dict(os.environ, DBCHAOS_ALEMBIC_URL=sqlalchemy_url(dsn))
    env.pop("PGOPTIONS", None)
    if lock_timeout:  # what a careful deploy sets: fail fast instead of hanging (libpq reads PGOPTIONS)
        env["PGOPTIONS"] = f"-c lock_timeout={LOCK_TIMEOUT_MS}"
    if version_table:
        env["DBCHAOS_ALEMBIC_VERSION_TABLE"] = version_table
    if schema:
        env["DBCHAOS_ALEMBIC_VERSION_SCHEMA"] = schema
    return env


def alembic_lt(
    dsn: str, *args: str, version_table: str | None = None, schema: str | None = None
) -> subprocess.CompletedProcess[str]:
    """The real ``alembic`` with ``lock_timeout`` set in its session."""
    return subprocess.run(
        [sys.executable, "-m", "alembic", "-c", str(INI), *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=_alembic_env(dsn, lock_timeout=True, version_table=version_table, schema=schema),
        cwd=PROJECT,
    )


def hit_lock_timeout(res: subprocess.CompletedProcess[str]) -> bool:
    out = res.stdout + res.stderr
    return res.returncode != 0 and "LockNotAvailable" in out and "lock timeout" in out


def version_waiters(dsn: str) -> int:
    """Sessions waiting for a lock on alembic_version."""
    rows = query(
        dsn,
        "SELECT count(*) FROM pg_locks WHERE locktype = 'relation' AND NOT granted"
        " AND relation = to_regclass('public.alembic_version')"
        " AND database = (SELECT oid FROM pg_database WHERE datname = current_database())",
    )
    return int(rows[0][0])


def versions(dsn: str) -> list[str]:
    return sorted(r[0] for r in query(dsn, "SELECT version_num FROM alembic_version"))


def one_behind_head(dsn: str) -> None:
    """Stamp the merge and drop what the head revision creates: ``upgrade head`` has work to do."""
    res = alembic(dsn, "stamp", MERGE)
    assert res.returncode == 0, res.stdout + res.stderr
    query(dsn, "DROP TABLE refunds")


def test_access_exclusive_makes_every_alembic_command_wait(alembic_db: str, graph: RevisionGraph) -> None:
    async def scenario() -> None:
        async with running_engine(alembic_db, graph) as engine:
            rec = await engine.create(FaultRequest(KIND, {}, duration_s=30))
            assert rec.state is State.ACTIVE
            assert rec.params == {
                "version_table": "alembic_version",
                "version_table_schema": "public",
                "mode": "ACCESS EXCLUSIVE",
                "tables": [],
            }
            assert rec.details["blocks_alembic_current"] is True
            assert rec.details["blocks_upgrade_with_work"] is True
            locks = relation_locks(alembic_db, "alembic_version")
            assert [(p, m, g) for p, m, g, _ in locks] == [(rec.pids[0], "AccessExclusiveLock", True)]
            # with lock_timeout in the deploy's session: a clean, fast failure
            for args in (["current"], ["upgrade", "head"]):
                res = await asyncio.to_thread(alembic_lt, alembic_db, *args)
                assert hit_lock_timeout(res), (args, res.stdout + res.stderr)
            # without it: the command simply hangs on the lock, until the fault ends
            proc = subprocess.Popen(
                [sys.executable, "-m", "alembic", "-c", str(INI), "current"],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                env=_alembic_env(alembic_db, lock_timeout=False, version_table=None, schema=None),
                cwd=PROJECT,
            )
            try:
                await asyncio.to_thread(wait_for, lambda: version_waiters(alembic_db), 20.0, 0.05, "alembic to wait")
                assert proc.poll() is None
                await engine.abort(rec.id)
                out, err = await asyncio.to_thread(proc.communicate, timeout=30)
            finally:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
            assert proc.returncode == 0, out + err
            assert HEAD in out
            assert rec.state is State.REVERTED and rec.end_reason is EndReason.ABORTED
        assert relation_locks(alembic_db, "alembic_version") == []
        no_fault_sessions_left(alembic_db)
        assert versions(alembic_db) == [HEAD]

    asyncio.run(scenario())


@pytest.mark.parametrize(("mode", "upgrade_waits"), [("SHARE", True), ("row share", False)])
def test_weaker_modes_stop_only_an_upgrade_with_work_to_do(
    alembic_db: str, graph: RevisionGraph, mode: str, upgrade_waits: bool
) -> None:
    async def scenario() -> None:
        async with running_engine(alembic_db, graph) as engine:
            # at head: nothing to write, so nothing waits
            rec = await engine.create(FaultRequest(KIND, {"mode": mode}, duration_s=30))
            assert rec.details["blocks_alembic_current"] is False
            assert rec.details["blocks_upgrade_with_work"] is upgrade_waits
            res = await asyncio.to_thread(alembic_lt, alembic_db, "current")
            assert res.returncode == 0 and HEAD in res.stdout, res.stdout + res.stderr
            res = await asyncio.to_thread(alembic_lt, alembic_db, "upgrade", "head")
            assert res.returncode == 0, res.stdout + res.stderr
            await engine.abort(rec.id)

            # one revision behind: the upgrade must UPDATE the version table (ROW EXCLUSIVE)
            await asyncio.to_thread(one_behind_head, alembic_db)
            rec = await engine.create(FaultRequest(KIND, {"mode": mode}, duration_s=30))
            pg_mode = "".join(w.capitalize() for w in rec.params["mode"].split()) + "Lock"
            locks = relation_locks(alembic_db, "alembic_version")
            assert [(p, m, g) for p, m, g, _ in locks] == [(rec.pids[0], pg_mode, True)]
            res = await asyncio.to_thread(alembic_lt, alembic_db, "current")
            assert res.returncode == 0 and MERGE in res.stdout, res.stdout + res.stderr
            res = await asyncio.to_thread(alembic_lt, alembic_db, "upgrade", "head")
            if upgrade_waits:
                assert hit_lock_timeout(res), res.stdout + res.stderr
                assert "UPDATE alembic_version" in res.stdout + res.stderr  # it waited on the version table
                assert versions(alembic_db) == [MERGE]  # the failed upgrade rolled back
            else:
                assert res.returncode == 0, res.stdout + res.stderr
                assert versions(alembic_db) == [HEAD]
            await engine.abort(rec.id)
            assert rec.state is State.REVERTED
        res = alembic(alembic_db, "upgrade", "head")
        assert res.returncode == 0, res.stdout + res.stderr
        assert HEAD in last_line(alembic(alembic_db, "current"))

    asyncio.run(scenario())


def test_extra_tables_and_a_custom_version_table(alembic_db: str) -> None:
    query(alembic_db, "CREATE SCHEMA ops")
    res = alembic_lt(alembic_db, "stamp", HEAD, version_table="deploy_version", schema="ops")
    assert res.returncode == 0, res.stdout + res.stderr

    async def scenario() -> None:
        async with running_engine(alembic_db) as engine:
            params = {
                "version_table": "deploy_version",
                "version_table_schema": "ops",
                "mode": "share_lock",
                "tables": ["accounts", "ops.deploy_version", {"schema": "public", "name": "accounts"}],
            }
            rec = await engine.create(FaultRequest(KIND, params, duration_s=30))
            assert rec.params["mode"] == "SHARE"
            assert rec.params["tables"] == ["public.accounts"]  # the version table and duplicates once
            assert rec.details["version_table"] == "ops.deploy_version"
            for table in ("ops.deploy_version", "accounts"):
                locks = relation_locks(alembic_db, table)
                assert [(p, m, g) for p, m, g, _ in locks] == [(rec.pids[0], "ShareLock", True)], table
            assert await asyncio.to_thread(statement_waits, alembic_db, "UPDATE accounts SET id = id")
            assert not await asyncio.to_thread(statement_waits, alembic_db, "SELECT count(*) FROM accounts")
            # the default version table is not locked, the configured one is
            assert relation_locks(alembic_db, "alembic_version") == []
            res = await asyncio.to_thread(
                alembic_lt, alembic_db, "stamp", MERGE, version_table="deploy_version", schema="ops"
            )
            assert hit_lock_timeout(res), res.stdout + res.stderr
        assert dbchaos_lock_count(alembic_db) == 0

    asyncio.run(scenario())


@pytest.mark.parametrize(
    ("params", "field", "code"),
    [
        ({"version_table": "nope"}, "params.version_table", "unknown_table"),
        ({"version_table": "alembic_version; DROP TABLE accounts"}, "params.version_table", "unknown_table"),
        ({"version_table": "items"}, "params.version_table", "not_a_version_table"),
        ({"version_table_schema": "nope"}, "params.version_table_schema", "unknown_schema"),
        ({"mode": "super exclusive"}, "params.mode", "unknown_mode"),
        ({"tables": ["nope"]}, "params.tables.0", "unknown_table"),
        ({"tables": ["items; DROP TABLE accounts"]}, "params.tables.0", "invalid_identifier"),
        ({"tables": ["pg_catalog.pg_class"]}, "params.tables.0", "system_object"),
        ({"table": "items"}, "params.table", "invalid_input"),
    ],
)
def test_bad_input_is_refused_with_its_field_and_leaves_nothing(
    alembic_db: str, params: dict[str, object], field: str, code: str
) -> None:
    async def scenario() -> DbChaosError:
        async with running_engine(alembic_db) as engine:
            with pytest.raises(DbChaosError) as info:
                await engine.create(FaultRequest(KIND, params, duration_s=5))
            assert engine.all() == []
            return info.value

    err = asyncio.run(scenario())
    assert (err.field, err.code) == (field, code)
    no_fault_sessions_left(alembic_db)
    assert dbchaos_lock_count(alembic_db) == 0
    assert query(alembic_db, "SELECT to_regclass('accounts') IS NOT NULL") == [(True,)]
