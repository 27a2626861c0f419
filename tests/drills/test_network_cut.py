"""Drill: the network between dbchaos and its target is cut while faults hold locks.

dbchaos reaches PostgreSQL through a TCP proxy the test controls (tests/drills/tcpproxy.py);
the test watches ``pg_locks`` over its own, direct connection. Whatever the cut looks like —
bytes silently dropped, nothing read any more, or the connections closed — PostgreSQL must end
the fault sessions by itself shortly after the deadline plus the grace period
(``idle_in_transaction_session_timeout`` / ``idle_session_timeout``, see engine/session.py).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
from psycopg import conninfo

from tests.drills.tcpproxy import Mode, tcp_proxy
from tests.helpers import query, wait_for
from tests.server_proc import dbchaos_server

DURATION_S = 2.0
GRACE_S = 2.0  # Settings.server_side_grace_s (default)
#: how late PostgreSQL may be, past deadline + grace (its timers, our polling, a busy machine)
SLACK_S = 2.0
#: engine/session.py RELEASE_TIMEOUT_S: a revert gives up a session that does not answer
REVERT_GIVE_UP_S = 5.0

FAULTS: list[dict[str, Any]] = [
    {"kind": "table-lock", "params": {"tables": ["items"]}},
    {"kind": "row-lock", "params": {"table": "orders", "limit": 5}},
    {"kind": "advisory-lock", "params": {"keys": [4242]}},
    {"kind": "connection-exhaustion", "params": {"connections": 2}},
]


def fault_locks(dsn: str) -> list[tuple[Any, ...]]:
    """Locks held by fault sessions (``dbchaos:<uuid>``), read directly from PostgreSQL."""
    return query(
        dsn,
        "SELECT a.pid, a.application_name, a.state, l.locktype, l.mode, l.relation::regclass::text"
        " FROM pg_locks l JOIN pg_stat_activity a USING (pid)"
        " WHERE a.application_name ~ '^dbchaos:[0-9a-f-]{36}$' AND l.locktype <> 'virtualxid'"
        " AND a.datname = current_database()",
    )


def fault_sessions(dsn: str) -> list[tuple[Any, ...]]:
    return query(
        dsn,
        "SELECT pid, application_name, state, wait_event, left(query, 60), now() - state_change FROM pg_stat_activity"
        " WHERE application_name ~ '^dbchaos:[0-9a-f-]{36}$' AND datname = current_database()",
    )


@pytest.mark.drill
@pytest.mark.parametrize("mode", ["blackhole", "freeze", "close"])
def test_postgresql_drops_the_locks_after_the_deadline_when_the_network_is_cut(
    db: str, tmp_path: Path, mode: Mode
) -> None:
    params = conninfo.conninfo_to_dict(db)
    with tcp_proxy(str(params.get("host", "127.0.0.1")), int(params.get("port") or 5432)) as proxy:
        proxied = conninfo.make_conninfo(db, host="127.0.0.1", port=str(proxy.port))
        with dbchaos_server(["--target", proxied], tmp_path) as server, server.client() as client:
            deadlines: dict[str, float] = {}  # fault id -> its deadline (at the latest)
            for body in FAULTS:
                resp = client.post("/v1/faults", json={**body, "duration_s": DURATION_S})
                assert resp.status_code == 201, resp.text
                deadlines[resp.json()["id"]] = time.monotonic() + DURATION_S
            held = fault_locks(db)
            assert {r[5] for r in held if r[3] == "relation"} >= {"items", "orders"}, held
            assert any(r[3] == "advisory" for r in held), held
            assert len(fault_sessions(db)) == len(FAULTS) + 1  # connection-exhaustion holds two

            proxy.cut(mode)
            cut_at = time.monotonic()
            last_seen: dict[str, tuple[float, Any]] = {}  # fault id -> (when, its session as last seen)

            def gone() -> bool:
                rows = fault_sessions(db)
                now = time.monotonic()
                for r in rows:
                    last_seen[r[1].removeprefix("dbchaos:")] = (now, r[2:])
                return not rows and not fault_locks(db)

            wait_for(gone, DURATION_S + GRACE_S + SLACK_S + 5.0, 0.1, what=f"fault sessions to end ({mode} cut)")
            for fault_id, deadline in deadlines.items():
                seen_at, session = last_seen.get(fault_id, (cut_at, None))
                late = seen_at - (deadline + GRACE_S)
                assert late < SLACK_S, (
                    f"{mode} cut: PostgreSQL ended fault {fault_id}'s session {late:.1f}s past deadline + grace "
                    f"(state, wait event, last statement, time in state: {session})"
                )
                if mode != "close":  # PostgreSQL's timers ended it, not the cut
                    assert seen_at > deadline - 0.5, f"{mode} cut: {fault_id} ended {deadline - seen_at:.1f}s early"

            # dbchaos, cut off, gives the sessions up (lost) rather than wait for them for ever
            def states() -> dict[str, str]:
                return {i: client.get(f"/v1/faults/{i}").json()["state"] for i in deadlines}

            wait_for(
                lambda: all(s in ("lost", "reverted") for s in states().values()),
                REVERT_GIVE_UP_S + SLACK_S,
                0.2,
                what=f"dbchaos to report the faults ended after a {mode} cut",
            )
