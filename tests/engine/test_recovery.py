"""Crash safety of journaled (migration) faults: kill -9 at any moment, and the next
dbchaos — a restarted server or `dbchaos recover` — restores and verifies every state;
a live instance's faults are never touched."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from tests.alembic_helpers import HEAD, INI
from tests.helpers import query, wait_for
from tests.server_proc import ServerProcess, dbchaos_server

VERSION_KINDS = ["unknown-revision", "future-revision", "missing-version", "behind", "multiple-heads"]
# every journaled kind, with parameters that fit the test Alembic project's schema
JOURNALED: list[tuple[str, dict[str, Any]]] = [
    *((k, {}) for k in VERSION_KINDS),
    ("missing-table", {}),
    ("hidden-object", {"table": "invoices"}),
    ("hidden-object", {"table": "accounts", "column": "email"}),
    ("conflicting-object", {"object": "table", "table": "audit_log"}),
    ("conflicting-object", {"object": "column", "table": "payments", "column": "note", "type": "text"}),
    (
        "conflicting-object",
        {"object": "index", "index": "ix_refunds_reason", "table": "refunds", "columns": ["reason"]},
    ),
]


def schema_snapshot(dsn: str) -> list[Any]:
    """Columns, indexes and constraints of every user table (what a revert must restore)."""
    return query(
        dsn,
        """
        SELECT 'col', table_schema || '.' || table_name, column_name, data_type, is_nullable, column_default
        FROM information_schema.columns WHERE table_schema NOT IN ('pg_catalog', 'information_schema', 'dbchaos')
        UNION ALL
        SELECT 'idx', schemaname || '.' || tablename, indexname, indexdef, NULL, NULL
        FROM pg_indexes WHERE schemaname NOT IN ('pg_catalog', 'dbchaos')
        UNION ALL
        SELECT 'con', conrelid::regclass::text, conname, pg_get_constraintdef(oid), NULL, NULL
        FROM pg_constraint WHERE connamespace = 'public'::regnamespace
        ORDER BY 1, 2, 3
        """,
    )


def versions(dsn: str) -> list[str] | None:
    exists = query(dsn, "SELECT to_regclass('public.alembic_version') IS NOT NULL")[0][0]
    if not exists:
        return None
    return sorted(r[0] for r in query(dsn, "SELECT version_num FROM alembic_version"))


def active_entries(dsn: str) -> int:
    if not query(dsn, "SELECT to_regclass('dbchaos.journal') IS NOT NULL")[0][0]:
        return 0
    return int(query(dsn, "SELECT count(*) FROM dbchaos.journal WHERE state = 'active'")[0][0])


def restored(dsn: str, baseline: list[Any]) -> bool:
    return active_entries(dsn) == 0 and versions(dsn) == [HEAD] and schema_snapshot(dsn) == baseline


def serve_args(dsn: str) -> list[str]:
    return ["--target", dsn, "--alembic-ini", str(INI)]


def kill(server: ServerProcess) -> None:
    server.proc.send_signal(signal.SIGKILL)
    server.proc.wait(5)


def recover_cli(dsn: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "dbchaos", "recover", "--target", dsn, "--json"],
        capture_output=True,
        text=True,
        timeout=60,
        env=dict(os.environ),
    )


@pytest.mark.parametrize(("kind", "params"), JOURNALED, ids=[f"{k}-{i}" for i, (k, _) in enumerate(JOURNALED)])
def test_kill_9_after_inject_then_a_restarted_server_restores_within_10s(
    alembic_db: str, tmp_path: Path, kind: str, params: dict[str, Any]
) -> None:
    baseline = schema_snapshot(alembic_db)
    with dbchaos_server(serve_args(alembic_db), tmp_path) as first, first.client() as client:
        resp = client.post("/v1/faults", json={"kind": kind, "params": params, "duration_s": 300})
        assert resp.status_code == 201, resp.text
        fault_id = resp.json()["id"]
        kill(first)
    assert not restored(alembic_db, baseline) and active_entries(alembic_db) == 1

    with dbchaos_server(serve_args(alembic_db), tmp_path) as second, second.client() as client:
        started = time.monotonic()
        wait_for(lambda: restored(alembic_db, baseline), 10.0, 0.1, what="the restarted server to restore")
        assert time.monotonic() - started < 10.0
        rec = wait_for(lambda: _get(client, fault_id), 5.0, 0.1, what="the recovered fault to be listed")
        assert rec is not None
        assert rec["state"] == "reverted" and rec["end_reason"] == "recovered"
        assert rec["details"]["verified"] is True
    outcome = query(alembic_db, "SELECT state, end_reason FROM dbchaos.journal WHERE fault_id = %s", (fault_id,))
    assert outcome == [("reverted", "recovered")]


def _get(client: Any, fault_id: str) -> dict[str, Any] | None:
    resp = client.get(f"/v1/faults/{fault_id}")
    return resp.json() if resp.status_code == 200 else None


def test_dbchaos_recover_from_another_process(alembic_db: str, tmp_path: Path) -> None:
    baseline = schema_snapshot(alembic_db)
    with dbchaos_server(serve_args(alembic_db), tmp_path) as server, server.client() as client:
        assert client.post("/v1/faults", json={"kind": "missing-version", "duration_s": 300}).status_code == 201
        kill(server)
    res = recover_cli(alembic_db)
    assert res.returncode == 0, res.stderr
    import json

    (rec,) = json.loads(res.stdout)["recovered"]
    assert rec["kind"] == "missing-version" and rec["state"] == "reverted" and rec["end_reason"] == "recovered"
    assert restored(alembic_db, baseline)
    assert json.loads(recover_cli(alembic_db).stdout)["recovered"] == []


def test_a_second_live_instance_never_reverts_the_first_ones_faults(alembic_db: str, tmp_path: Path) -> None:
    baseline = schema_snapshot(alembic_db)
    with dbchaos_server(serve_args(alembic_db), tmp_path) as first, first.client() as client:
        fault = client.post("/v1/faults", json={"kind": "unknown-revision", "duration_s": 300}).json()
        corrupted = versions(alembic_db)
        assert corrupted != [HEAD]
        # another server starts on the same target (its start-up recovery runs) ...
        with dbchaos_server(serve_args(alembic_db), tmp_path) as second, second.client() as other:
            assert other.get("/v1/faults").json()["faults"] == []
            # ... and an explicit recovery from a third process finds nothing it may touch
            res = recover_cli(alembic_db)
            assert res.returncode == 0 and '"recovered": []' in res.stdout
        assert versions(alembic_db) == corrupted and active_entries(alembic_db) == 1
        assert client.delete(f"/v1/faults/{fault['id']}").json()["state"] == "reverted"
    assert restored(alembic_db, baseline)


@pytest.mark.drill
@pytest.mark.timeout(300)  # 22 server restarts: over the default 120 s on a busy 2-core machine
def test_kill_9_at_random_moments_across_inject_active_and_revert(alembic_db: str, tmp_path: Path) -> None:
    """≥ 20 kill points: each cycle injects with a short deadline and kills at a random
    moment (during inject, while active, or while the deadline's revert runs); recovery
    alternates between a restarted server and `dbchaos recover`."""
    baseline = schema_snapshot(alembic_db)
    rng = random.Random(int(os.environ.get("DBCHAOS_DRILL_SEED", "1234")))
    kills = 0
    for cycle in range(22):
        kind, params = JOURNALED[cycle % len(JOURNALED)]
        with dbchaos_server(serve_args(alembic_db), tmp_path) as server, server.client() as client:
            delay = rng.uniform(0.0, 0.9)
            sent = time.monotonic()
            resp = client.post("/v1/faults?wait=false", json={"kind": kind, "params": params, "duration_s": 0.4})
            assert resp.status_code == 202, resp.text
            time.sleep(max(0.0, delay - (time.monotonic() - sent)))
            kill(server)
            kills += 1
        if cycle % 2:
            res = recover_cli(alembic_db)
            assert res.returncode == 0, res.stderr
            assert restored(alembic_db, baseline), f"cycle {cycle} ({kind}, kill at {delay:.2f}s)"
        else:
            with dbchaos_server(serve_args(alembic_db), tmp_path):
                wait_for(lambda: restored(alembic_db, baseline), 10.0, 0.1, what=f"recovery in cycle {cycle}")
    assert kills >= 20
    states = query(alembic_db, "SELECT state, count(*) FROM dbchaos.journal GROUP BY state ORDER BY 1")
    assert all(state in ("reverted",) for state, _ in states), states
