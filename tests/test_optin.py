"""Opt-in: dbchaos refuses every fault on a database without the marker (403
``target_not_opted_in``, with the instructions), serves it anyway, and reports it in
``/v1/health``; the loud bypass flag's setting; the marker's reading rules."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from fastapi.testclient import TestClient
from psycopg import conninfo, sql

from dbchaos import optin
from dbchaos.api.app import create_app
from dbchaos.cli.init import opt_in_target, revoke_target
from dbchaos.engine.engine import Engine, FaultRequest
from dbchaos.errors import Conflict, Forbidden
from dbchaos.faults.registry import default_registry
from dbchaos.settings import Settings
from dbchaos.targets import Target
from tests.helpers import query, relation_locks
from tests.pg import ALEMBIC_TEMPLATE_DB, PgServer, fresh_database, unprivileged_role

BASE = "http://127.0.0.1:8080"
LOCK = {"kind": "table-lock", "params": {"tables": ["items"]}, "duration_s": 5}


def fault_sessions(dsn: str) -> list[tuple[Any, ...]]:
    """dbchaos's fault sessions (``dbchaos:<uuid>``) connected to this very database."""
    return query(
        dsn,
        "SELECT pid, application_name FROM pg_stat_activity WHERE datname = current_database()"
        " AND application_name ~ '^dbchaos:[0-9a-f-]{36}$'",
    )


def never_opted_in(dsn: str) -> str:
    query(dsn, "DROP SCHEMA dbchaos CASCADE")
    return dsn


@pytest.fixture
def bare_db(pg: PgServer) -> Iterator[str]:
    """A fresh sample database that never opted in (no dbchaos schema at all)."""
    with fresh_database(pg) as dsn:
        yield never_opted_in(dsn)


def client_for(dsn: str, settings: Settings | None = None) -> TestClient:
    return TestClient(create_app(settings or Settings(), {"default": Target("default", dsn)}), base_url=BASE)


async def status(dsn: str) -> optin.OptIn:
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        return await optin.status(conn)


def test_the_test_databases_opted_in_and_health_says_so(db: str) -> None:
    assert asyncio.run(status(db)).opted_in is True
    assert query(db, "SELECT by_role, note FROM dbchaos.opt_in") == [("postgres", "the test template")]
    with client_for(db) as client:
        target = client.get("/v1/health").json()["target"]
    assert target["opted_in"] is True
    assert target["opt_in_required"] is True
    assert "opt_in_hint" not in target


def test_a_database_that_never_opted_in_is_served_but_every_fault_refused(bare_db: str) -> None:
    with client_for(bare_db) as client:
        health = client.get("/v1/health")
        assert health.status_code == 200
        target = health.json()["target"]
        assert target["usable"] is True and target["opted_in"] is False
        assert "dbchaos init --target" in target["opt_in_hint"]

        for body in (
            LOCK,
            {"kind": "advisory-lock", "params": {"keys": [5]}},
            {"kind": "connection-exhaustion", "params": {"connections": 1}},
        ):
            resp = client.post("/v1/faults", json=body)
            assert resp.status_code == 403, resp.text
            err = resp.json()
            assert err["code"] == "target_not_opted_in"
            assert err["field"] == "target"
            masked = Target("default", bare_db).masked_dsn
            assert f"dbchaos init --target '{masked}'" in err["detail"]
        assert client.get("/v1/faults").json()["faults"] == []
        assert relation_locks(bare_db, "items") == []
        assert fault_sessions(bare_db) == []
        # the refusal is not cached: once the database opts in, faults work at once
        asyncio.run(opt_in_target(Target("default", bare_db), "from the test"))
        resp = client.post("/v1/faults", json=LOCK)
        assert resp.status_code == 201, resp.text
        assert relation_locks(bare_db, "items")
        assert client.get("/v1/health").json()["target"]["opted_in"] is True
        client.delete(f"/v1/faults/{resp.json()['id']}")
    assert relation_locks(bare_db, "items") == []


def test_the_refusal_never_shows_the_password(pg: PgServer, bare_db: str) -> None:
    dbname = str(conninfo.conninfo_to_dict(bare_db)["dbname"])
    with unprivileged_role(pg, dbname, password="Pw-Of-The-Optin-Test-1") as role_dsn, client_for(role_dsn) as client:
        resp = client.post("/v1/faults", json=LOCK)
        health = client.get("/v1/health")
    assert resp.status_code == 403
    assert "Pw-Of-The-Optin-Test-1" not in resp.text + health.text
    assert "password=***" in resp.json()["detail"]


def test_the_dangerous_bypass_setting_injects_without_opt_in(bare_db: str) -> None:
    assert Settings.from_env({"DBCHAOS_ALLOW_NOT_OPTED_IN": "1"}).allow_not_opted_in is False  # a flag, never env
    with client_for(bare_db, Settings(allow_not_opted_in=True)) as client:
        target = client.get("/v1/health").json()["target"]
        assert target["opted_in"] is False and target["opt_in_required"] is False
        resp = client.post("/v1/faults", json=LOCK)
        assert resp.status_code == 201, resp.text
        client.delete(f"/v1/faults/{resp.json()['id']}")


def test_marker_rules_empty_table_unreadable_table_and_idempotent_opt_in(pg: PgServer, bare_db: str) -> None:
    target = Target("default", bare_db)
    state, created = asyncio.run(opt_in_target(target, "first"))
    assert created is True and state.opted_in and state.note == "first" and state.by_role == "postgres"
    again, created = asyncio.run(opt_in_target(target, "second"))
    assert created is False and again.note == "first" and again.opted_in_at == state.opted_in_at
    assert query(bare_db, "SELECT count(*) FROM dbchaos.opt_in") == [(1,)]

    dbname = str(conninfo.conninfo_to_dict(bare_db)["dbname"])
    with unprivileged_role(pg, dbname) as role_dsn:
        # the role may not read dbchaos.opt_in: the marker's existence (in the catalog) counts
        seen = asyncio.run(status(role_dsn))
        assert seen.opted_in is True and seen.by_role is None

    query(bare_db, "DELETE FROM dbchaos.opt_in")
    assert asyncio.run(status(bare_db)).opted_in is False  # an empty marker table is no opt-in

    async def refused() -> None:
        eng = Engine(Settings(), {"default": target}, default_registry())
        try:
            with pytest.raises(Forbidden) as info:
                await eng.create(FaultRequest("advisory-lock", {"keys": [9]}, duration_s=1))
            assert info.value.code == "target_not_opted_in"
            assert eng.all() == []
        finally:
            await eng.close()

    asyncio.run(refused())


def test_revoke_is_refused_while_a_journaled_fault_is_active(pg: PgServer) -> None:
    with fresh_database(pg, ALEMBIC_TEMPLATE_DB) as dsn:
        target = Target("default", dsn)

        async def scenario() -> Any:
            eng = Engine(Settings(), {"default": target}, default_registry())
            try:
                rec = await eng.create(FaultRequest("missing-version", {}, duration_s=20))
                with pytest.raises(Conflict, match=rec.id) as info:
                    await revoke_target(target)
                assert info.value.code == "faults_unreverted"
                assert (await status(dsn)).opted_in is True
                await eng.abort(rec.id)
                assert await revoke_target(target) is True
                assert await revoke_target(target) is False  # nothing left to revoke
                assert not (await status(dsn)).opted_in
                # the journal stays; an engine that has not just seen the marker refuses the next fault
                assert query(dsn, "SELECT count(*) FROM dbchaos.journal") == [(1,)]
            finally:
                await eng.close()
            fresh = Engine(Settings(), {"default": target}, default_registry())
            try:
                with pytest.raises(Forbidden, match="has not opted in"):
                    await fresh.create(FaultRequest("missing-version", {}, duration_s=2))
            finally:
                await fresh.close()

        asyncio.run(scenario())
        assert query(dsn, "SELECT count(*) FROM alembic_version") == [(1,)]


def test_the_opt_in_check_is_cached_for_a_few_seconds(db: str, monkeypatch: pytest.MonkeyPatch) -> None:
    async def scenario() -> None:
        eng = Engine(Settings(), {"default": Target("default", db)}, default_registry())
        try:
            rec = await eng.create(FaultRequest("advisory-lock", {"keys": [11]}, duration_s=1))
            await eng.abort(rec.id)
            calls: list[str] = []
            original = optin.status

            async def counting(conn: psycopg.AsyncConnection[Any]) -> optin.OptIn:
                calls.append("status")
                return await original(conn)

            monkeypatch.setattr(optin, "status", counting)
            for key in (12, 13):
                r = await eng.create(FaultRequest("advisory-lock", {"keys": [key]}, duration_s=1))
                await eng.abort(r.id)
            assert calls == []  # seen opted in a moment ago: no query
        finally:
            await eng.close()

    asyncio.run(scenario())


def test_system_schemas_stay_refused(db: str) -> None:
    with client_for(db) as client:
        resp = client.post("/v1/faults", json={**LOCK, "params": {"tables": ["dbchaos.opt_in"]}})
    assert resp.status_code == 403 and resp.json()["code"] == "system_object"
    assert query(db, sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier("dbchaos", "opt_in")).as_string()) == [
        (1,)
    ]
