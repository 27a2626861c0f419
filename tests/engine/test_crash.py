"""Killing or freezing dbchaos never leaves a lock behind: PostgreSQL itself ends its sessions."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import httpx
import psycopg

from tests.helpers import dbchaos_sessions, no_dbchaos_sessions, query, relation_locks, wait_for
from tests.server_proc import dbchaos_server


def warm_spares(client: httpx.Client, db: str) -> None:
    """Make the server keep warm sessions, so the next fault runs on a spare bound to it
    (its bounds then come from set_config, not from the startup packet)."""
    fault = client.post("/v1/faults", json={"kind": "table-lock", "params": {"tables": ["orders"]}}).json()
    client.delete(f"/v1/faults/{fault['id']}")
    wait_for(
        lambda: len(query(db, "SELECT 1 FROM pg_stat_activity WHERE application_name LIKE 'dbchaos:%:spare'")) >= 2,
        5.0,
        what="warm spare sessions",
    )


def test_kill_9_with_faults_held_leaves_no_lock(db: str, tmp_path: Path) -> None:
    with dbchaos_server(["--target", db], tmp_path) as server, server.client() as client:
        for table in ("items", "users"):
            resp = client.post(
                "/v1/faults", json={"kind": "table-lock", "params": {"tables": [table]}, "duration_s": 60}
            )
            assert resp.status_code == 201, resp.text
        assert len(relation_locks(db, "items")) == 1
        server.proc.kill()
        server.proc.wait(5)
        killed_at = time.monotonic()
        wait_for(lambda: not dbchaos_sessions(db) and not relation_locks(db, "items"), 3.0, what="locks to go")
        assert time.monotonic() - killed_at < 3.0


def test_kill_9_while_the_lock_request_waits_leaves_no_queued_request(db: str, tmp_path: Path) -> None:
    blocker = psycopg.connect(db)
    blocker.execute("LOCK TABLE items IN ACCESS SHARE MODE")
    try:
        with dbchaos_server(["--target", db], tmp_path) as server, server.client() as client:
            warm_spares(client, db)
            resp = client.post(
                "/v1/faults?wait=false",
                json={"kind": "table-lock", "params": {"tables": ["items"]}, "acquire_timeout_s": 60, "duration_s": 60},
            )
            assert resp.status_code == 202, resp.text
            wait_for(lambda: [r for r in relation_locks(db, "items") if not r[2]], 5.0, what="the request to queue")
            server.proc.kill()
            server.proc.wait(5)
            # the blocker still holds its lock: only client_connection_check_interval can end the waiter
            wait_for(lambda: not relation_locks(db, "items") and not dbchaos_sessions(db), 3.0, what="queue to clear")
        # and a reader queued behind nothing gets through at once
        with psycopg.connect(db) as reader:
            reader.execute("SET lock_timeout = 500")
            reader.execute("SELECT count(*) FROM items")
    finally:
        blocker.close()


def test_sigstop_postgresql_drops_the_locks_after_the_deadline(db: str, tmp_path: Path) -> None:
    with dbchaos_server(["--target", db], tmp_path) as server, server.client() as client:
        warm_spares(client, db)
        resp = client.post("/v1/faults", json={"kind": "table-lock", "params": {"tables": ["items"]}, "duration_s": 2})
        assert resp.status_code == 201, resp.text
        deadline = time.monotonic() + 2.0
        server.proc.send_signal(signal.SIGSTOP)
        try:
            wait_for(lambda: not relation_locks(db, "items"), 10.0, 0.1, what="PostgreSQL to drop the lock")
            assert time.monotonic() - deadline < 5.0
            assert no_dbchaos_sessions(db)
        finally:
            server.proc.send_signal(signal.SIGCONT)
        # once thawed, the server does not claim the fault is still active
        fault_id = resp.json()["id"]
        state = wait_for(
            lambda: (s := client.get(f"/v1/faults/{fault_id}").json()["state"]) in ("lost", "reverted") and s,
            5.0,
            0.1,
            what="the fault to be reported ended",
        )
        assert state in ("lost", "reverted")
