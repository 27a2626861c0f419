"""Drill: the target PostgreSQL restarts while faults hold locks.

PostgreSQL's fast shutdown ends every session, so every lock fault ends ``lost`` (PostgreSQL
released what it held); ``/v1/health`` keeps answering 200 (reporting the target unreachable
while it is down); once the target is back, new faults work without restarting dbchaos.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from tests.drills.private_pg import private_pg
from tests.helpers import query, wait_for
from tests.pg import server_labels
from tests.server_proc import dbchaos_server

FAULTS: list[dict[str, Any]] = [
    {"kind": "table-lock", "params": {"tables": ["items"]}},
    {"kind": "row-lock", "params": {"table": "orders", "limit": 5}},
    {"kind": "advisory-lock", "params": {"keys": [99]}},
    {"kind": "idle-transaction", "params": {"tables": ["users"]}},
    {"kind": "connection-exhaustion", "params": {"connections": 2}},
]


def fault_locks(dsn: str) -> list[tuple[Any, ...]]:
    return query(
        dsn,
        "SELECT a.application_name, l.locktype, l.mode, l.relation::regclass::text"
        " FROM pg_locks l JOIN pg_stat_activity a USING (pid)"
        " WHERE a.application_name ~ '^dbchaos:[0-9a-f-]{36}$' AND l.locktype <> 'virtualxid'"
        " AND a.datname = current_database()",
    )


@pytest.mark.drill
@pytest.mark.parametrize("label", server_labels())
def test_target_restart_mid_fault_faults_end_lost_and_new_ones_work(label: str, tmp_path: Path) -> None:
    with (
        private_pg(label) as target,
        dbchaos_server(["--target", target.dsn], tmp_path) as server,
        server.client() as client,
    ):
        ids = []
        for body in FAULTS:
            resp = client.post("/v1/faults", json={**body, "duration_s": 60})
            assert resp.status_code == 201, resp.text
            ids.append(resp.json()["id"])
        assert fault_locks(target.dsn)

        target.stop()
        down = []
        for _ in range(10):  # while the target is down: dbchaos is fine, the target is not
            resp = client.get("/v1/health")
            assert resp.status_code == 200, resp.text
            down.append(resp.json()["target"]["reachable"])
            time.sleep(0.1)
        assert down[-1] is False, down

        # every fault noticed its session is gone (PostgreSQL ended it): none is left active
        def states() -> dict[str, str]:
            return {i: client.get(f"/v1/faults/{i}").json()["state"] for i in ids}

        wait_for(
            lambda: all(v not in ("active", "pending", "reverting") for v in states().values()),
            10.0,
            0.2,
            what="the faults to end while the target is down",
        )
        final = states()
        assert set(final.values()) == {"lost"}, final
        resp = client.post("/v1/faults", json={**FAULTS[0], "duration_s": 5})
        assert resp.status_code == 502, resp.text  # the target is unreachable: not a 500
        assert resp.json()["code"] == "target_unreachable", resp.text

        target.start()
        wait_for(
            lambda: client.get("/v1/health").json()["target"]["reachable"], 10.0, 0.2, what="health to see it back"
        )
        assert not fault_locks(target.dsn)
        for body in FAULTS:
            resp = client.post("/v1/faults", json={**body, "duration_s": 30})
            assert resp.status_code == 201, f"after the restart: {resp.text}"
        held = fault_locks(target.dsn)
        assert {r[3] for r in held if r[1] == "relation"} >= {"items", "orders", "users"}, held
        assert client.post("/v1/reset").status_code == 200
        wait_for(lambda: not fault_locks(target.dsn), 5.0, what="the reset to release every lock")
