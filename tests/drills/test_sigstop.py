"""Drill: dbchaos frozen (SIGSTOP) while faults of every lock kind are active.

PostgreSQL must end every fault session by itself shortly after the deadline plus the grace
period; once thawed (SIGCONT), dbchaos must report each fault ``lost`` or ``reverted`` —
never ``active`` — and revert the journaled fault it could not touch while frozen.
tests/engine/test_crash.py covers one table lock; this covers every lock kind, sessions
that came from the warm spares and sessions opened for the fault, and the API after the thaw.
"""

from __future__ import annotations

import signal
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.alembic_helpers import HEAD, INI
from tests.helpers import query, wait_for
from tests.server_proc import dbchaos_server

DURATION_S = 2.0
GRACE_S = 2.0  # Settings.server_side_grace_s (default)
SLACK_S = 2.0

FAULTS: list[dict[str, Any]] = [
    {"kind": "table-lock", "params": {"tables": ["items"]}},
    {"kind": "row-lock", "params": {"table": "orders", "limit": 5}},
    {"kind": "advisory-lock", "params": {"keys": [77, [1, 2]]}},
    {"kind": "idle-transaction", "params": {"tables": ["users"]}},
    {"kind": "connection-exhaustion", "params": {"connections": 2}},
    {"kind": "table-lock", "params": {"tables": ["accounts"], "mode": "SHARE"}},
    {"kind": "unknown-revision", "params": {}},
]


def fault_locks(dsn: str) -> list[tuple[Any, ...]]:
    """Locks held or awaited by fault sessions (``dbchaos:<uuid>``)."""
    return query(
        dsn,
        "SELECT a.pid, a.application_name, l.locktype, l.mode, l.relation::regclass::text"
        " FROM pg_locks l JOIN pg_stat_activity a USING (pid)"
        " WHERE a.application_name ~ '^dbchaos:[0-9a-f-]{36}$' AND l.locktype <> 'virtualxid'"
        " AND a.datname = current_database()",
    )


def versions(dsn: str) -> list[str]:
    return sorted(r[0] for r in query(dsn, "SELECT version_num FROM alembic_version"))


@pytest.mark.drill
def test_sigstop_postgresql_releases_every_lock_and_the_thawed_server_never_says_active(
    alembic_db: str, tmp_path: Path
) -> None:
    args = ["--target", alembic_db, "--alembic-ini", str(INI)]
    with dbchaos_server(args, tmp_path) as server, server.client() as client:
        deadlines: dict[str, float] = {}
        kinds: dict[str, str] = {}
        for body in FAULTS:
            resp = client.post("/v1/faults", json={**body, "duration_s": DURATION_S})
            assert resp.status_code == 201, resp.text
            deadlines[resp.json()["id"]] = time.monotonic() + DURATION_S
            kinds[resp.json()["id"]] = body["kind"]
        held = fault_locks(alembic_db)
        assert {r[4] for r in held if r[2] == "relation"} >= {"items", "orders", "users", "accounts"}, held
        assert versions(alembic_db) != [HEAD]

        server.proc.send_signal(signal.SIGSTOP)
        try:
            wait_for(
                lambda: not fault_locks(alembic_db),
                DURATION_S + GRACE_S + SLACK_S + 3.0,
                0.1,
                what="PostgreSQL to release every lock of the frozen dbchaos",
            )
            late = time.monotonic() - (max(deadlines.values()) + GRACE_S)
            assert late < SLACK_S, f"the last lock went {late:.1f}s past deadline + grace"
            # the journaled change stays while its owner is frozen (its owner lock is held: no
            # other instance may take it over), and is reverted once the owner runs again
            assert versions(alembic_db) != [HEAD]
        finally:
            server.proc.send_signal(signal.SIGCONT)

        seen: dict[str, set[str]] = {fid: set() for fid in deadlines}

        def all_ended() -> bool:
            try:
                faults = client.get("/v1/faults").json()["faults"]
            except httpx.HTTPError:
                return False
            for f in faults:
                if f["id"] in seen:
                    seen[f["id"]].add(f["state"])
            return all(f["state"] in ("lost", "reverted") for f in faults if f["id"] in seen)

        wait_for(all_ended, 10.0, 0.05, what="the thawed server to report every fault ended")
        for fid, states in seen.items():
            assert "active" not in states, f"{kinds[fid]} {fid} reported active after the thaw: {states}"
        wait_for(lambda: versions(alembic_db) == [HEAD], 5.0, what="the journaled fault's revert")
        final = {f["id"]: f for f in client.get("/v1/faults").json()["faults"]}
        unknown = next(fid for fid, k in kinds.items() if k == "unknown-revision")
        assert final[unknown]["state"] == "reverted", final[unknown]
