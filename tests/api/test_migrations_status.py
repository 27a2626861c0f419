"""``GET /v1/targets/{name}/migrations``: the diagnosis of the version table, checked against
real states (set by hand, by the real Alembic CLI and by dbchaos faults)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import psycopg
import pytest
from fastapi.testclient import TestClient

from dbchaos.api.app import create_app
from dbchaos.faults.migration.graph import RevisionGraph
from dbchaos.settings import Settings
from dbchaos.targets import Target
from tests.alembic_helpers import BRANCH_A, BRANCH_B, HEAD, INVOICES, MERGE, alembic, migrate
from tests.helpers import query, wait_for

BASE = "http://127.0.0.1:8080"
URL = "/v1/targets/default/migrations"


@contextmanager
def serve(dsn: str, graph: RevisionGraph | None = None) -> Iterator[TestClient]:
    app = create_app(
        Settings(), {"default": Target("default", dsn)}, graphs={"default": graph} if graph is not None else None
    )
    with TestClient(app, base_url=BASE) as client:
        yield client


def diagnose(client: TestClient, **params: str) -> dict[str, Any]:
    resp = client.get(URL, params=params)
    assert resp.status_code == 200, resp.text
    body: dict[str, Any] = resp.json()
    return body


def set_rows(dsn: str, *revs: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn, conn.transaction():
        conn.execute("DELETE FROM alembic_version")
        for r in revs:
            conn.execute("INSERT INTO alembic_version VALUES (%s)", (r,))


def test_row_states_and_their_repairs(alembic_db: str, graph: RevisionGraph) -> None:
    with serve(alembic_db, graph) as client:
        body = diagnose(client)
        assert body["state"] == "at head" and body["states"] == ["at head"]
        assert body["stored"] == [HEAD] and body["heads"] == [HEAD]
        assert body["behind_by"] == 0 and body["repair"] == []
        assert body["locks"] == [] and body["dbchaos_faults"] == []

        set_rows(alembic_db, "0123abcd9999")
        body = diagnose(client)
        assert body["state"] == "unknown revision"
        assert "Can't locate revision identified by '0123abcd9999'" in body["summary"]
        assert any("alembic stamp --purge head" in r for r in body["repair"])

        set_rows(alembic_db, MERGE)
        body = diagnose(client)
        assert body["state"] == "behind by 1"
        assert body["pending"] == [HEAD]
        assert any("alembic upgrade head" in r for r in body["repair"])

        set_rows(alembic_db, BRANCH_A, BRANCH_B)
        body = diagnose(client)
        assert body["state"] == "branch heads"
        assert body["behind_by"] == 2 and body["pending"] == [MERGE, HEAD]
        assert "Ambiguous upgrade" in body["summary"]

        set_rows(alembic_db, HEAD[:4])  # Alembic resolves a unique prefix
        body = diagnose(client)
        assert body["state"] == "at head"
        assert "prefix" in body["summary"]

        set_rows(alembic_db)
        body = diagnose(client)
        assert body["state"] == "empty version table"
        assert body["stored"] == [] and body["table_exists"] is True
        assert any("alembic stamp head" in r for r in body["repair"])

        set_rows(alembic_db, INVOICES, HEAD)
        body = diagnose(client)
        assert body["state"] == "overlapping revisions"
        # the words are Alembic's own
        res = alembic(alembic_db, "upgrade", "head")
        assert res.returncode != 0
        assert f"Requested revision {HEAD} overlaps with other requested revisions {INVOICES}" in body["summary"]
        assert f"Requested revision {HEAD} overlaps with other requested revisions {INVOICES}" in (
            res.stdout + res.stderr
        )
        assert any("alembic stamp --purge head" in r for r in body["repair"])

        query(alembic_db, "ALTER TABLE alembic_version RENAME TO alembic_version_old")
        body = diagnose(client)
        assert body["state"] == "version table missing"
        assert body["table_exists"] is False and body["stored"] is None
        assert any("alembic stamp head" in r for r in body["repair"])

        body = diagnose(client, version_table="alembic_version_old")  # Alembic's version_table setting
        assert body["version_table"] == "public.alembic_version_old"
        assert body["state"] == "overlapping revisions"


def test_behind_counts_what_alembic_upgrade_would_apply(db: str, graph: RevisionGraph) -> None:
    migrate(db, BRANCH_A)  # genuinely behind: branch B, the merge and the head never ran
    with serve(db, graph) as client:
        body = diagnose(client)
        assert body["state"] == "behind by 3"
        assert body["pending"] == [BRANCH_B, MERGE, HEAD]
        # exactly what `upgrade head` then creates: d4's index, e5's payments, f6's refunds
        made = ("ix_invoices_account_id", "payments", "refunds")
        assert [query(db, "SELECT to_regclass(%s)", (n,))[0][0] for n in made] == [None, None, None]
        res = alembic(db, "upgrade", "head")
        assert res.returncode == 0, res.stderr
        assert all(query(db, "SELECT to_regclass(%s)", (n,))[0][0] for n in made)
        assert diagnose(client)["state"] == "at head"


def test_without_scripts_the_heads_are_unknown(alembic_db: str) -> None:
    with serve(alembic_db) as client:
        body = diagnose(client)
        assert body["state"] == "heads unknown"
        assert body["heads"] is None and body["scripts"] is False and body["stored"] == [HEAD]
        assert any("--alembic-ini" in r for r in body["repair"])


@pytest.mark.parametrize(("mode", "readable"), [("ACCESS EXCLUSIVE", False), ("SHARE", True)])
def test_a_lock_that_stops_migrations_is_reported(
    alembic_db: str, graph: RevisionGraph, mode: str, readable: bool
) -> None:
    with serve(alembic_db, graph) as client, psycopg.connect(alembic_db, application_name="deploy-script") as holder:
        pid = holder.info.backend_pid
        holder.execute("SELECT 1 FROM alembic_version")  # ACCESS SHARE alone blocks no migration
        assert diagnose(client)["state"] == "at head"
        holder.execute(f"LOCK TABLE alembic_version IN {mode} MODE")
        started = time.monotonic()
        body = diagnose(client)
        assert time.monotonic() - started < 5  # reported, never waited on
        assert body["state"] == "locked"
        assert body["states"] == ["locked", "at head" if readable else "rows unreadable"]
        assert body["readable"] is readable
        (lock,) = body["locks"]
        assert lock["pid"] == pid and lock["mode"] == mode and lock["granted"] is True
        assert lock["application_name"] == "deploy-script" and lock["dbchaos_fault"] is None
        assert any("pg_stat_activity" in r and str(pid) in r for r in body["repair"])
        holder.rollback()
        assert diagnose(client)["state"] == "at head"


def test_lists_the_dbchaos_fault_that_set_the_state(alembic_db: str, graph: RevisionGraph) -> None:
    with serve(alembic_db, graph) as client:
        resp = client.post("/api/v1/break/migrations", params={"failure_type": "invalid_version"})
        attack = resp.json()["attack_id"]

        def running() -> bool:
            return bool(client.get(f"/api/v1/break/migrations/{attack}").json()["state"] == "completed")

        wait_for(running, what="the attack to be in place")
        body = diagnose(client)
        assert body["state"] == "unknown revision"
        (fault,) = body["dbchaos_faults"]
        assert fault["fault_id"] == attack and fault["kind"] == "unknown-revision"
        assert fault["on_this_table"] is True and fault["owner_alive"] is True and fault["this_server"] is True
        assert f"dbchaos fault {attack}" in body["findings"][0]["detail"]
        assert any(f"dbchaos abort {attack}" in r for r in body["repair"])
        assert any("alembic stamp --purge head" in r for r in body["repair"])
        assert client.post(f"/api/v1/break/migrations/{attack}/stop").status_code == 200
        body = diagnose(client)
        assert body["state"] == "at head" and body["dbchaos_faults"] == []


def test_bad_names_and_unknown_targets(alembic_db: str) -> None:
    with serve(alembic_db) as client:
        resp = client.get(URL, params={"version_table": "x" * 64})
        assert resp.status_code == 422
        assert resp.json()["field"] == "version_table"
        resp = client.get(URL, params={"version_table": "items"})
        assert resp.status_code == 422
        assert resp.json()["code"] == "not_a_version_table"
        resp = client.get("/v1/targets/elsewhere/migrations")
        assert resp.status_code == 404
