"""Halt rules: parsing (targets file, settings), evaluation on snapshots, and on real
PostgreSQL every fault on a target reverted with end reason ``halted`` once a rule trips,
while another target's faults carry on."""

from __future__ import annotations

import asyncio
import concurrent.futures
import time
from pathlib import Path
from typing import Any

import psycopg
import pytest
from fastapi.testclient import TestClient

from dbchaos.api.app import create_app
from dbchaos.engine.engine import FaultRequest
from dbchaos.engine.halt import Trip, effective_rules, evaluate
from dbchaos.engine.model import EndReason, FaultRecord, State
from dbchaos.errors import InvalidInput
from dbchaos.observe.activity import Session, Snapshot
from dbchaos.settings import Settings
from dbchaos.targets import HaltRules, Target, TargetPolicy
from dbchaos.targetsfile import load_targets_file
from tests.helpers import query, relation_locks, running_engine, wait_for
from tests.pg import PgServer, fresh_database

BASE = "http://127.0.0.1:8080"

# ---- parsing ---------------------------------------------------------------------------


def _file(tmp_path: Path, halt: str) -> Path:
    path = tmp_path / "targets.toml"
    path.write_text(f'[targets.staging]\ndsn = "host=db.internal dbname=shop"\n\n[targets.staging.halt]\n{halt}\n')
    return path


def test_the_halt_table_of_a_target(tmp_path: Path) -> None:
    found = load_targets_file(
        _file(
            tmp_path,
            "max_blocked_sessions = 50\nmax_blocked_for_s = 30\nmax_fault_age_s = 600.5\nmax_connections_used_pct = 95",
        )
    )
    assert found.targets["staging"].policy.halt == HaltRules(50, 30.0, 600.5, 95.0)


def test_a_target_without_a_halt_table_has_no_rules(tmp_path: Path) -> None:
    path = tmp_path / "targets.toml"
    path.write_text('[targets.staging]\ndsn = "host=db.internal dbname=shop"\n')
    rules = load_targets_file(path).targets["staging"].policy.halt
    assert rules == HaltRules() and not rules.any


@pytest.mark.parametrize(
    ("halt", "key", "says"),
    [
        ("max_blocked = 3", "max_blocked", "is not a known rule"),
        ("max_blocked_sessions = -1", "max_blocked_sessions", "0 or more"),
        ("max_blocked_sessions = 2.5", "max_blocked_sessions", "whole number"),
        ("max_blocked_sessions = true", "max_blocked_sessions", "whole number"),
        ('max_blocked_for_s = "30s"', "max_blocked_for_s", "positive number of seconds"),
        ("max_blocked_for_s = 0", "max_blocked_for_s", "positive number of seconds"),
        ("max_fault_age_s = nan", "max_fault_age_s", "positive number of seconds"),
        ("max_connections_used_pct = 101", "max_connections_used_pct", "at most 100"),
        ("max_connections_used_pct = 0", "max_connections_used_pct", "above 0"),
    ],
)
def test_halt_rule_errors_name_the_target_and_the_key(tmp_path: Path, halt: str, key: str, says: str) -> None:
    with pytest.raises(InvalidInput) as err:
        load_targets_file(_file(tmp_path, halt))
    assert err.value.code == "invalid_targets_file"
    assert err.value.field == f"targets.staging.halt.{key}"
    assert f"target 'staging': halt.{key}" in err.value.message and says in err.value.message


def test_halt_must_be_a_table(tmp_path: Path) -> None:
    path = tmp_path / "targets.toml"
    path.write_text('[targets.staging]\ndsn = "host=db.internal dbname=shop"\nhalt = 5\n')
    with pytest.raises(InvalidInput) as err:
        load_targets_file(path)
    assert err.value.field == "targets.staging.halt" and "must be a table" in err.value.message


def test_server_wide_rules_fill_what_a_target_leaves_unset() -> None:
    settings = Settings.from_env({"DBCHAOS_HALT_MAX_BLOCKED_SESSIONS": "10", "DBCHAOS_HALT_MAX_FAULT_AGE_S": "300"})
    assert settings.halt_max_blocked_sessions == 10 and settings.halt_max_fault_age_s == 300.0
    own = HaltRules(max_blocked_sessions=2)
    assert effective_rules(own, settings) == HaltRules(max_blocked_sessions=2, max_fault_age_s=300.0)
    assert effective_rules(HaltRules(), Settings()) == HaltRules()


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("halt_max_blocked_sessions", -1),
        ("halt_max_blocked_for_s", 0.0),
        ("halt_max_fault_age_s", float("inf")),
        ("halt_max_connections_used_pct", 150.0),
    ],
)
def test_bad_server_wide_rules_are_refused(field: str, value: Any) -> None:
    with pytest.raises(InvalidInput) as err:
        Settings(**{field: value}).validate()
    assert err.value.field == field


# ---- evaluation ------------------------------------------------------------------------


def _session(pid: int, blocked_by: tuple[int, ...] = (), waited: float | None = 0.5) -> Session:
    return Session(
        pid=pid,
        user="app",
        application_name="app",
        state="active",
        query="SELECT 1",
        wait_event_type="Lock" if blocked_by else None,
        wait_event="relation" if blocked_by else None,
        state_age_s=waited,
        xact_age_s=waited,
        backend_xmin=None,
        blocked_by=blocked_by,
        database="shop",
    )


def _record(pids: list[int], activated_ago: float = 1.0, now: float = 1000.0) -> FaultRecord:
    return FaultRecord(
        id="f",
        kind="table-lock",
        target="default",
        params={},
        duration_s=60,
        acquire_timeout_s=5,
        labels={},
        created_at=now - activated_ago - 0.1,
        state=State.ACTIVE,
        activated_at=now - activated_ago,
        pids=pids,
    )


def _snapshot(*sessions: Session) -> Snapshot:
    return Snapshot(taken_at=1000.0, sessions={s.pid: s for s in sessions})


def test_blocked_sessions_are_counted_once_across_faults_and_transitively() -> None:
    # 10 and 11 are two faults' sessions; 20 waits on both, 21 on 20, 22 on 11; 23 is unrelated
    snap = _snapshot(
        _session(10),
        _session(11),
        _session(20, (10, 11), waited=4.0),
        _session(21, (20,), waited=9.5),
        _session(22, (11,)),
        _session(23),
    )
    faults = [_record([10]), _record([11])]
    assert evaluate(HaltRules(max_blocked_sessions=3), snap, faults, now=1000.0, max_connections=None) is None
    trip = evaluate(HaltRules(max_blocked_sessions=2), snap, faults, now=1000.0, max_connections=None)
    assert trip == Trip("max_blocked_sessions", 2, 3)
    assert evaluate(HaltRules(max_blocked_for_s=9.5), snap, faults, now=1000.0, max_connections=None) is None
    trip = evaluate(HaltRules(max_blocked_for_s=9.0), snap, faults, now=1000.0, max_connections=None)
    assert trip is not None and trip.as_dict() == {"rule": "max_blocked_for_s", "limit": 9.0, "observed": 9.5}


def test_a_faults_own_sessions_are_not_blocked_sessions() -> None:
    # a migration-lock-queue fault: its second session (11) waits on its first (10)
    snap = _snapshot(_session(10), _session(11, (10,)))
    trip = evaluate(HaltRules(max_blocked_sessions=0), snap, [_record([10, 11])], now=1000.0, max_connections=None)
    assert trip is None


def test_fault_age_and_connections_used() -> None:
    snap = _snapshot(*(_session(p) for p in range(1, 10)))  # 9 others + the observer = 10 connections
    faults = [_record([1], activated_ago=30.0), _record([2], activated_ago=5.0)]
    assert evaluate(HaltRules(max_fault_age_s=30.0), snap, faults, now=1000.0, max_connections=20) is None
    assert evaluate(HaltRules(max_fault_age_s=29.0), snap, faults, now=1000.0, max_connections=20) == Trip(
        "max_fault_age_s", 29.0, 30.0
    )
    assert evaluate(HaltRules(max_connections_used_pct=50), snap, faults, now=1000.0, max_connections=20) is None
    assert evaluate(HaltRules(max_connections_used_pct=49), snap, faults, now=1000.0, max_connections=20) == Trip(
        "max_connections_used_pct", 49, 50.0
    )
    # max_connections unknown: that rule cannot be judged, and does not trip
    assert evaluate(HaltRules(max_connections_used_pct=1), snap, faults, now=1000.0, max_connections=None) is None


def test_the_first_rule_in_order_is_reported() -> None:
    snap = _snapshot(_session(10), _session(20, (10,)), _session(21, (10,)))
    rules = HaltRules(max_blocked_sessions=1, max_fault_age_s=1.0)
    trip = evaluate(rules, snap, [_record([10], activated_ago=100.0)], now=1000.0, max_connections=None)
    assert trip is not None and trip.rule == "max_blocked_sessions"
    assert "max_blocked_sessions tripped on target 'default': 2 sessions blocked" in trip.describe("default")


# ---- on real PostgreSQL ----------------------------------------------------------------


def _blocked_reader(dsn: str, name: str) -> int:
    """A client of the application: reads items (waits while a fault holds the table)."""
    with psycopg.connect(dsn, application_name=name, autocommit=True) as conn:
        conn.execute("SET statement_timeout = '20s'")
        row = conn.execute("SELECT count(*) FROM items").fetchone()
        assert row is not None
        return int(row[0])


def _waiting(dsn: str) -> int:
    rows = query(
        dsn,
        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
        " AND application_name LIKE 'victim-%' AND wait_event_type = 'Lock'",
    )
    return int(rows[0][0])


def test_too_many_blocked_sessions_halt_every_fault_on_the_target(pg: PgServer, db: str) -> None:
    with fresh_database(pg) as other_db:
        targets = {
            "default": Target("default", db, TargetPolicy(halt=HaltRules(max_blocked_sessions=2))),
            "other": Target("other", other_db),
        }
        app = create_app(Settings(), targets, recover_on_start=False)
        with (
            TestClient(app, base_url=BASE) as client,
            concurrent.futures.ThreadPoolExecutor(3) as pool,
        ):
            lock = {"kind": "table-lock", "params": {"tables": ["items"]}, "duration_s": 30}
            first = client.post("/v1/faults", json=lock)
            assert first.status_code == 201, first.text
            second = client.post(
                "/v1/faults", json={"kind": "advisory-lock", "params": {"keys": [42]}, "duration_s": 30}
            ).json()
            elsewhere = client.post("/v1/faults", json={**lock, "target": "other"}).json()
            assert second.get("state") == elsewhere.get("state") == "active", (second, elsewhere)

            readers = [pool.submit(_blocked_reader, db, f"victim-{i}") for i in range(2)]
            wait_for(lambda: _waiting(db) == 2, what="two blocked readers")
            time.sleep(2.5)  # two monitor rounds: at the limit, nothing halts
            assert client.get(f"/v1/faults/{first.json()['id']}").json()["state"] == "active"

            readers.append(pool.submit(_blocked_reader, db, "victim-2"))
            wait_for(lambda: _waiting(db) == 3 or not relation_locks(db, "items"), what="a third blocked reader")
            started = time.monotonic()

            def halted() -> list[dict[str, Any]]:
                views = [client.get(f"/v1/faults/{f}").json() for f in (first.json()["id"], second["id"])]
                return views if all(v["state"] == "reverted" for v in views) else []

            views = wait_for(halted, timeout=6.0, interval=0.05, what="both faults on the target to be halted")
            took = time.monotonic() - started
            print(f"halted {took:.2f} s after the third session blocked")
            assert took < 4.0
            for v in views:
                assert v["end_reason"] == "halted"
                assert v["halted_by"] == {"rule": "max_blocked_sessions", "limit": 2, "observed": 3}
            assert relation_locks(db, "items") == []
            assert query(db, "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND objid = 42") == [(0,)]
            # the application's sessions proceed, and read every row
            items = query(db, "SELECT count(*) FROM items")[0][0]
            assert [r.result(timeout=10) for r in readers] == [items] * 3

            # the other target's fault is untouched
            other = client.get(f"/v1/faults/{elsewhere['id']}").json()
            assert other["state"] == "active" and other["halted_by"] is None
            assert relation_locks(other_db, "items")

            metrics = client.get("/metrics").text
            assert 'dbchaos_halts_total{rule="max_blocked_sessions",target="default"} 1.0' in metrics
            events = [e for e in client.get("/v1/audit").json()["events"] if e.get("type") == "halt"]
            assert len(events) == 1
            assert events[0]["target"] == "default" and events[0]["observed"] == 3
            assert sorted(events[0]["fault_ids"]) == sorted([first.json()["id"], second["id"]])

            client.delete(f"/v1/faults/{elsewhere['id']}")
            assert relation_locks(other_db, "items") == []


def test_a_server_wide_fault_age_limit_halts(db: str) -> None:
    async def scenario() -> FaultRecord:
        async with running_engine(db, halt_max_fault_age_s=1.0) as engine:
            rec = await engine.create(FaultRequest("table-lock", {"tables": ["orders"]}, duration_s=30))
            deadline = time.monotonic() + 6
            while not rec.state.finished and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            assert relation_locks(db, "orders") == []
            return rec

    rec = asyncio.run(scenario())
    assert rec.state is State.REVERTED and rec.end_reason is EndReason.HALTED
    assert rec.halted_by is not None and rec.halted_by["rule"] == "max_fault_age_s"
    assert rec.halted_by["limit"] == 1.0 and rec.halted_by["observed"] > 1.0
