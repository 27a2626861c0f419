"""``dbchaos init`` as a user runs it (a plain database owner, no superuser), and
``dbchaos serve`` with a targets file, the bypass flag and the embedded default."""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from psycopg import sql

from dbchaos.engine.engine import Engine, FaultRequest
from dbchaos.engine.model import State
from dbchaos.errors import Forbidden
from dbchaos.faults.registry import default_registry
from dbchaos.settings import Settings
from dbchaos.targets import Target
from tests.helpers import query, relation_locks, wait_for
from tests.pg import PgServer, fresh_database, unprivileged_role
from tests.server_proc import dbchaos_server, free_port

PASSWORD = "Owner-Pw-Kept-Secret-3"


def dbchaos(*args: str, timeout: float = 60, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    full = dict(os.environ, COLUMNS="200", **(env or {}))
    full.pop("DBCHAOS_TARGET_DSN", None)
    return subprocess.run(
        [sys.executable, "-m", "dbchaos", *args], capture_output=True, text=True, timeout=timeout, env=full
    )


@pytest.fixture
def owned_db(pg: PgServer) -> Iterator[str]:
    """DSN of a new database owned by a new non-superuser role (connecting as that role),
    with a table ``t`` and an Alembic version table made by the owner."""
    role, name = f"own_{secrets.token_hex(4)}", f"owned_{secrets.token_hex(4)}"
    with psycopg.connect(pg.admin_dsn, autocommit=True) as conn:
        conn.execute(
            sql.SQL("CREATE ROLE {} LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE PASSWORD {}").format(
                sql.Identifier(role), sql.Literal(PASSWORD)
            )
        )
        conn.execute(sql.SQL("CREATE DATABASE {} OWNER {}").format(sql.Identifier(name), sql.Identifier(role)))
    dsn = pg.dsn(name, user=role, password=PASSWORD)
    query(
        dsn,
        "CREATE TABLE t (id int PRIMARY KEY); INSERT INTO t VALUES (1);"
        "CREATE TABLE alembic_version (version_num varchar(32) NOT NULL PRIMARY KEY);"
        "INSERT INTO alembic_version VALUES ('f6b8da4c5006')",
    )
    try:
        yield dsn
    finally:
        with psycopg.connect(pg.admin_dsn, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
            conn.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(role)))


async def create(dsn: str, kind: str, params: dict[str, Any], duration_s: float = 20) -> tuple[Engine, Any]:
    eng = Engine(Settings(), {"default": Target("default", dsn)}, default_registry())
    try:
        return eng, await eng.create(FaultRequest(kind, params, duration_s=duration_s))
    except BaseException:
        await eng.close()
        raise


def refused(dsn: str) -> Forbidden:
    async def go() -> Forbidden:
        eng = Engine(Settings(), {"default": Target("default", dsn)}, default_registry())
        try:
            with pytest.raises(Forbidden) as info:
                await eng.create(FaultRequest("table-lock", {"tables": ["t"]}, duration_s=5))
            assert eng.all() == []
            return info.value
        finally:
            await eng.close()

    return asyncio.run(go())


def test_a_plain_database_owner_opts_in_then_faults_work_and_revoke_waits_for_the_journal(
    pg: PgServer, owned_db: str
) -> None:
    assert query(owned_db, "SELECT rolsuper FROM pg_roles WHERE rolname = current_user") == [(False,)]
    err = refused(owned_db)
    assert err.code == "target_not_opted_in" and "dbchaos init --target" in err.message

    res = dbchaos("init", "--target", owned_db, "--note", "game day 12", "--json")
    assert res.returncode == 0, res.stderr
    body = json.loads(res.stdout)
    role = query(owned_db, "SELECT current_user")[0][0]
    assert body["opted_in"] is True and body["created"] is True
    assert body["by_role"] == role and body["note"] == "game day 12"
    assert PASSWORD not in res.stdout + res.stderr
    assert query(owned_db, "SELECT by_role, note FROM dbchaos.opt_in") == [(role, "game day 12")]
    again = dbchaos("init", "--target", owned_db)
    assert again.returncode == 0 and "already opted in" in again.stdout
    assert PASSWORD not in again.stdout + again.stderr

    async def scenario() -> None:
        eng, lock = await create(owned_db, "table-lock", {"tables": ["t"]})
        try:
            assert lock.state is State.ACTIVE
            assert relation_locks(owned_db, "t")
            journaled = await eng.create(FaultRequest("missing-version", {}, duration_s=30))
            assert journaled.state is State.ACTIVE
            assert query(owned_db, "SELECT count(*) FROM alembic_version") == [(0,)]

            res = await asyncio.to_thread(dbchaos, "init", "--revoke", "--target", owned_db)
            assert res.returncode == 1, res.stdout + res.stderr
            assert "not reverted" in res.stderr and journaled.id in res.stderr
            assert query(owned_db, "SELECT count(*) FROM dbchaos.opt_in") == [(1,)]

            await eng.abort(journaled.id)
            await eng.abort(lock.id)
        finally:
            await eng.close()

    asyncio.run(scenario())
    assert query(owned_db, "SELECT count(*) FROM alembic_version") == [(1,)]
    res = dbchaos("init", "--revoke", "--target", owned_db, "--json")
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout) == {"target": Target("x", owned_db).masked_dsn, "opted_in": False, "removed": True}
    assert query(owned_db, "SELECT to_regclass('dbchaos.journal') IS NOT NULL") == [(True,)]  # the journal stays
    assert refused(owned_db).code == "target_not_opted_in"


def test_a_role_that_may_not_create_a_schema_gets_a_clear_error(pg: PgServer, db: str) -> None:
    query(db, "DROP SCHEMA dbchaos CASCADE")
    dbname = str(psycopg.conninfo.conninfo_to_dict(db)["dbname"])
    with unprivileged_role(pg, dbname) as role_dsn:
        res = dbchaos("init", "--target", role_dsn)
    assert res.returncode == 1
    assert "cannot write the opt-in marker" in res.stderr and "permission denied" in res.stderr
    assert query(db, "SELECT count(*) FROM pg_namespace WHERE nspname = 'dbchaos'") == [(0,)]


def test_usage_and_unreachable_exit_codes() -> None:
    assert dbchaos("init", "--target", "postgresql://a@h/x?foo=bar").returncode == 2
    unreachable = dbchaos("init", "--target", f"postgresql://app:Pw-9@127.0.0.1:{free_port()}/x")
    assert unreachable.returncode == 3
    assert "Pw-9" not in unreachable.stderr
    assert dbchaos("init").returncode == 2  # no target


def test_serve_with_a_targets_file_and_the_loud_bypass_flag(pg: PgServer, db: str, tmp_path: Path) -> None:
    with fresh_database(pg) as bare:
        query(bare, "DROP SCHEMA dbchaos CASCADE")
        (tmp_path / "bare.dsn").write_text(bare)
        targets = tmp_path / "targets.toml"
        targets.write_text(
            f'[targets.main]\ndsn = "{db}"\ndefault = true\nmax_duration_s = 30\n\n'
            '[targets.bare]\ndsn_file = "bare.dsn"\n'
        )
        lock = {"kind": "table-lock", "params": {"tables": ["items"]}, "duration_s": 10}
        with dbchaos_server(["--targets-file", str(targets)], tmp_path) as server, server.client() as client:
            health = client.get("/v1/health").json()["target"]
            assert health["name"] == "main" and health["opted_in"] is True
            ok = client.post("/v1/faults", json=lock)
            assert ok.status_code == 201 and ok.json()["target"] == "main"
            no = client.post("/v1/faults", json={**lock, "target": "bare"})
            assert no.status_code == 403 and no.json()["code"] == "target_not_opted_in"
            long = client.post("/v1/faults", json={**lock, "duration_s": 31})
            assert long.status_code == 422 and "maximum of 30 s" in long.json()["detail"]
            client.delete(f"/v1/faults/{ok.json()['id']}")
        with (
            dbchaos_server(
                ["--targets-file", str(targets), "--target", "bare", "--dangerously-skip-opt-in"], tmp_path
            ) as server,
            server.client() as client,
        ):
            health = client.get("/v1/health").json()["target"]
            assert health["name"] == "bare" and health["opted_in"] is False and health["opt_in_required"] is False
            ok = client.post("/v1/faults", json=lock)
            assert ok.status_code == 201, ok.text
            assert relation_locks(bare, "items")
            client.delete(f"/v1/faults/{ok.json()['id']}")
            assert "WARNING: --dangerously-skip-opt-in" in server.output()
        assert relation_locks(bare, "items") == []
        bad = dbchaos("serve", "--targets-file", str(targets), "--target", db, "--port", str(free_port()))
        assert bad.returncode == 2 and "names one of its targets" in bad.stderr


def test_the_embedded_default_opts_itself_in() -> None:
    folder = Path(tempfile.mkdtemp(prefix="dbchaos-init-test-"))
    folder.chmod(0o711)
    try:
        port = free_port()
        env = dict(os.environ, TMPDIR=str(folder), PYTHONUNBUFFERED="1")
        env.pop("DBCHAOS_TARGET_DSN", None)
        proc = subprocess.Popen(
            [sys.executable, "-m", "dbchaos", "serve", "--port", str(port)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env=env,
        )
        try:
            url = f"http://127.0.0.1:{port}"

            def health() -> Any:
                assert proc.poll() is None
                try:
                    return httpx.get(f"{url}/v1/health", timeout=2).json()
                except httpx.HTTPError:
                    return None

            body = wait_for(health, 60.0, 0.1, what="the embedded default")
            assert body["target"]["opted_in"] is True
            resp = httpx.post(
                f"{url}/v1/faults",
                json={"kind": "table-lock", "params": {"tables": ["items"]}, "duration_s": 5},
                timeout=15,
            )
            assert resp.status_code == 201, resp.text
        finally:
            proc.terminate()
            proc.wait(30)
    finally:
        subprocess.run(["rm", "-rf", str(folder)], check=False)
