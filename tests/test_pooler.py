"""A pooling proxy between dbchaos and PostgreSQL is detected and every fault refused,
with Debian's real PgBouncer in front of the test PostgreSQL (tests/pgbouncer.py)."""

from __future__ import annotations

import asyncio

import psycopg
import pytest
from fastapi.testclient import TestClient

from dbchaos.api.app import create_app
from dbchaos.faults.migration.journal import OWNER_LOCK_CLASS
from dbchaos.settings import Settings
from dbchaos.targets import POOLER_DETECTED, Target, check_target
from tests.helpers import query, relation_locks
from tests.pgbouncer import pgbouncer

BASE = "http://127.0.0.1:8080"


def _owner_locks(dsn: str) -> int:
    rows = query(
        dsn, "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND classid::bigint = %s", (OWNER_LOCK_CLASS,)
    )
    return int(rows[0][0])


def test_a_direct_connection_is_no_pooler(db: str) -> None:
    check = asyncio.run(check_target(Target("default", db)))
    assert check.usable and check.pooler is None and check.problem_code is None
    assert check.max_connections is not None and check.max_connections > 0


@pytest.mark.parametrize("mode", ["transaction", "statement"])
def test_a_transaction_pooler_is_detected_and_every_fault_refused(db: str, mode: str) -> None:
    with pgbouncer(db, mode) as through:
        check = asyncio.run(check_target(Target("default", through)))
        assert not check.usable and check.reachable
        assert check.pooler == mode and check.problem_code == POOLER_DETECTED
        assert check.problem is not None
        assert f"{mode}-pooling proxy" in check.problem and "Point dbchaos at PostgreSQL itself" in check.problem

        app = create_app(Settings(), {"default": Target("default", through)})
        with TestClient(app, base_url=BASE) as client:
            health = client.get("/v1/health")
            assert health.status_code == 200
            target = health.json()["target"]
            assert target["usable"] is False and target["pooler"] == mode
            assert target["problem_code"] == POOLER_DETECTED

            for body in (
                {"kind": "table-lock", "params": {"tables": ["items"]}, "duration_s": 5},
                {"kind": "advisory-lock", "params": {"keys": [7]}, "duration_s": 5},
            ):
                resp = client.post("/v1/faults", json=body)
                assert resp.status_code == 502, resp.text
                err = resp.json()
                assert err["code"] == POOLER_DETECTED and "pooler" in err["detail"]
            assert client.get("/v1/faults").json()["faults"] == []

        # nothing was left on the server behind the pooler: no lock, no owner lock, and no
        # session setting that the pooler's next client would inherit
        assert relation_locks(db, "items") == []
        assert _owner_locks(db) == 0
        if mode == "transaction":
            with psycopg.connect(through, autocommit=True) as app_conn:
                settings = app_conn.execute(
                    "SELECT current_setting('statement_timeout'), current_setting('lock_timeout')"
                ).fetchone()
            assert settings == ("0", "0")


def test_a_session_pooler_is_told_apart_but_still_refused(db: str) -> None:
    """PgBouncer in session mode keeps each client on one backend (the probe says so), but it
    answers the connect with a made-up backend pid: dbchaos could neither watch nor end its
    own sessions, so it refuses here too, saying why."""
    with pgbouncer(db, "session") as through:
        check = asyncio.run(check_target(Target("default", through)))
        assert check.reachable and not check.usable
        assert check.pooler == "session" and check.problem_code == POOLER_DETECTED
        assert check.problem is not None and "session pooling" in check.problem and "pid" in check.problem
        assert "transaction" not in check.problem
        assert _owner_locks(db) == 0
