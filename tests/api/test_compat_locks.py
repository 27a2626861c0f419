"""The previous chaos server's long-transaction interface (``/api/v1/break/long_transactions``),
through HTTP, against a real PostgreSQL."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar
from urllib.parse import quote

import psycopg
import pytest
from fastapi.testclient import TestClient

from dbchaos.api.app import create_app
from dbchaos.api.compat import long_transaction_state, migration_state
from dbchaos.api.context import AppContext
from dbchaos.engine.model import EndReason, FaultRecord, State
from dbchaos.settings import Settings
from dbchaos.targets import Target, parse_dsn

BASE = "http://127.0.0.1:8080"
URL = "/api/v1/break/long_transactions"
T = TypeVar("T")

STATUS_KEYS = {
    "id",
    "state",
    "lock_type",
    "target_table",
    "lock_count",
    "advisory_lock_id",
    "duration_seconds",
    "backend_pid",
    "blocked_count",
    "blocked_queries",
    "elapsed_seconds",
    "created_at",
    "started_at",
    "lock_acquired_at",
    "finished_at",
    "error",
    "ends_at",
    "end_reason",
}


@contextmanager
def serve(dsn: str, settings: Settings | None = None) -> Iterator[tuple[TestClient, AppContext]]:
    app = create_app(settings or Settings(), {"default": Target("default", dsn)})
    with TestClient(app, base_url=BASE) as client:
        ctx = app.state.ctx
        assert isinstance(ctx, AppContext)
        yield client, ctx


def wait_for(fn: Callable[[], T | None], what: str, timeout: float = 10.0) -> T:
    deadline = time.monotonic() + timeout
    while True:
        value = fn()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(0.05)


def start(client: TestClient, **params: Any) -> str:
    resp = client.post(URL, params=params)
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["status"] == "started"
    assert set(body) == {"status", "attack_id"}
    return str(uuid.UUID(body["attack_id"]))


def status(client: TestClient, attack_id: str) -> dict[str, Any]:
    resp = client.get(f"{URL}/{attack_id}")
    assert resp.status_code == 200, resp.text
    body: dict[str, Any] = resp.json()
    return body


def wait_state(client: TestClient, attack_id: str, state: str, timeout: float = 10.0) -> dict[str, Any]:
    def check() -> dict[str, Any] | None:
        body = status(client, attack_id)
        assert body["state"] not in {s for s in ("failed", "rolled_back", "completed") if s != state}, body
        return body if body["state"] == state else None

    return wait_for(check, f"state {state!r}", timeout)


def table_locks(dsn: str, table: str = "items") -> list[tuple[int, str]]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT pid, mode FROM pg_locks WHERE relation = to_regclass(%s) AND pid <> pg_backend_pid() "
            "AND database = (SELECT oid FROM pg_database WHERE datname = current_database())",
            (table,),
        ).fetchall()
    return [(int(r[0]), str(r[1])) for r in rows]


def dbchaos_sessions(dsn: str, ctx: AppContext) -> list[str]:
    """Fault sessions (``dbchaos:<fault id>``) in this database; the engine's control,
    recovery and warm spare sessions are not faults."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT application_name FROM pg_stat_activity WHERE datname = current_database() "
            "AND application_name ~ '^dbchaos:[0-9a-f-]{36}$'",
        ).fetchall()
    return [str(r[0]) for r in rows]


def require_kind(ctx: AppContext, kind: str) -> None:
    if kind not in ctx.engine.registry.names:
        pytest.skip(f"fault kind {kind!r} is not registered yet (being written in parallel)")


def test_table_lock_blocks_a_reader_then_completes(db: str) -> None:
    query = "SELECT count(*) FROM items"
    with serve(db) as (client, _):
        attack = start(client, duration_seconds=3)
        body = wait_state(client, attack, "running")
        assert set(body) == STATUS_KEYS
        assert body["lock_type"] == "table_lock"
        assert body["target_table"] == "items"
        assert body["duration_seconds"] == 3
        assert body["advisory_lock_id"] is None
        assert isinstance(body["backend_pid"], int)
        assert body["ends_at"] == pytest.approx(body["lock_acquired_at"] + 3, abs=0.05)
        assert (body["backend_pid"], "AccessExclusiveLock") in table_locks(db)

        done: list[tuple[int, float]] = []

        def reader() -> None:
            with psycopg.connect(db, autocommit=True, options="-c statement_timeout=20s") as conn:
                row = conn.execute(query).fetchone()
                assert row is not None
                done.append((int(row[0]), time.time()))

        thread = threading.Thread(target=reader)
        thread.start()
        try:

            def blocked() -> dict[str, Any] | None:
                b = status(client, attack)
                hits = [q for q in b["blocked_queries"] if q["blocked_query"] == query]
                return b if hits and "LOCK TABLE" in (hits[0]["blocking_query"] or "") else None

            seen = wait_for(blocked, "the reader to show as blocked", timeout=2.5)
            assert not done, "the reader should still be waiting"
            assert seen["blocked_count"] >= 1
            entry = next(q for q in seen["blocked_queries"] if q["blocked_query"] == query)
            assert entry["blocked_state"] == "active"
            assert entry["blocked_user"] == parse_dsn(db).get("user", entry["blocked_user"])
            assert isinstance(entry["blocked_pid"], int)

            final = wait_state(client, attack, "completed")
        finally:
            thread.join(timeout=15)
        assert not thread.is_alive()
        assert done and done[0][0] == 10_000
        assert done[0][1] >= final["lock_acquired_at"] + 2.5, "the reader finished before the lock was released"
        assert final["end_reason"] == "deadline"
        assert final["blocked_count"] == 0
        assert final["finished_at"] >= final["lock_acquired_at"] >= final["started_at"]
        assert table_locks(db) == []

        resp = client.post(f"{URL}/{attack}/stop")
        assert resp.json() == {"status": "already_completed", "attack_id": attack, "state": "completed"}


def test_stop_rolls_back_and_a_second_stop_says_so(db: str) -> None:
    with serve(db, Settings(max_duration_s=600)) as (client, _):
        attack = start(client)  # no duration: until stopped, bounded by the server's maximum
        body = wait_state(client, attack, "running")
        assert body["duration_seconds"] is None
        assert body["ends_at"] == pytest.approx(body["lock_acquired_at"] + 600, abs=0.05)
        pid = body["backend_pid"]
        assert (pid, "AccessExclusiveLock") in table_locks(db)

        resp = client.post(f"{URL}/{attack}/stop")
        assert resp.status_code == 200
        stopped = resp.json()
        assert stopped["status"] == "rolled_back"
        assert stopped["attack_id"] == attack
        assert 0 < stopped["elapsed_seconds"] < 30
        assert table_locks(db) == []

        again = client.post(f"{URL}/{attack}/stop").json()
        assert again == {"status": "already_rolled_back", "attack_id": attack, "state": "rolled_back"}
        final = status(client, attack)
        assert final["state"] == "rolled_back"
        assert final["end_reason"] == "aborted"
        assert final["finished_at"] is not None


def test_force_kill_stop_releases_the_lock(db: str) -> None:
    with serve(db) as (client, _):
        attack = start(client, duration_seconds=20)  # stopped long before
        pid = wait_state(client, attack, "running")["backend_pid"]
        resp = client.post(f"{URL}/{attack}/stop", params={"force_kill": "true"})
        body = resp.json()
        assert body["status"] in ("rolled_back", "force_killed"), body
        if body["status"] == "force_killed":
            assert body["backend_pid"] == pid
        assert table_locks(db) == []
        assert status(client, attack)["state"] == body["status"]


def test_stop_while_starting_ends_rolled_back(db: str) -> None:
    with serve(db) as (client, ctx), psycopg.connect(db) as holder:
        holder.execute("SELECT 1 FROM items LIMIT 1")  # ACCESS SHARE in an open transaction
        attack = start(client, duration_seconds=2)

        def waiting() -> bool:
            with psycopg.connect(db, autocommit=True) as conn:
                row = conn.execute(
                    "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s AND wait_event_type = 'Lock'",
                    (f"dbchaos:{attack}",),
                ).fetchone()
            return row is not None and row[0] == 1

        wait_for(waiting, "the attack's LOCK TABLE to wait")
        assert status(client, attack)["state"] == "starting"
        resp = client.post(f"{URL}/{attack}/stop").json()
        assert resp["status"] == "rolled_back"
        assert status(client, attack)["state"] == "rolled_back"
        assert status(client, attack)["lock_acquired_at"] is None
        wait_for(lambda: not dbchaos_sessions(db, ctx), "the attack's session to go away", timeout=5)


def test_an_attack_that_cannot_acquire_fails_with_an_error(db: str) -> None:
    with serve(db, Settings(default_acquire_timeout_s=0.5)) as (client, _), psycopg.connect(db) as holder:
        holder.execute("SELECT 1 FROM items LIMIT 1")
        attack = start(client, duration_seconds=2)
        body = wait_state(client, attack, "failed")
        assert body["error"]
        assert body["lock_acquired_at"] is None
        again = client.post(f"{URL}/{attack}/stop").json()
        assert again == {"status": "already_failed", "attack_id": attack, "state": "failed"}


def test_row_lock_reports_locked_rows(db: str) -> None:
    with serve(db) as (client, ctx):
        require_kind(ctx, "row-lock")
        attack = start(client, lock_type="row_lock", lock_count=5, duration_seconds=20)
        body = wait_state(client, attack, "running")
        assert set(body) == STATUS_KEYS | {"locked_rows"}
        assert body["locked_rows"] == 5
        assert body["lock_count"] == 5
        with psycopg.connect(db, autocommit=True) as conn:
            row = conn.execute("SELECT count(*) FROM pgrowlocks('items')").fetchone()
        assert row is not None and row[0] == 5
        assert client.post(f"{URL}/{attack}/stop").json()["status"] == "rolled_back"
        with psycopg.connect(db, autocommit=True) as conn:
            rows = conn.execute(
                "SELECT r.locker, r.pids, r.modes, (SELECT array_agg(a.application_name || '/' || a.state) "
                "FROM pg_stat_activity a WHERE a.pid = ANY(r.pids)) FROM pgrowlocks('items') r"
            ).fetchall()
        assert rows == [], (body["backend_pid"], rows, status(client, attack))


def advisory_keys(dsn: str) -> set[int]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT (classid::bigint << 32) | objid::bigint FROM pg_locks "
            "WHERE locktype = 'advisory' AND objsubid = 1 AND granted "
            "AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"
        ).fetchall()
    return {int(r[0]) for r in rows}


def test_advisory_lock_holds_consecutive_keys(db: str) -> None:
    with serve(db) as (client, ctx):
        require_kind(ctx, "advisory-lock")
        attack = start(client, lock_type="advisory_lock", advisory_lock_id=4242, lock_count=3, duration_seconds=20)
        body = wait_state(client, attack, "running")
        assert body["advisory_lock_id"] == 4242
        assert "locked_rows" not in body
        assert advisory_keys(db) == {4242, 4243, 4244}
        assert client.post(f"{URL}/{attack}/stop").json()["status"] == "rolled_back"
        assert advisory_keys(db) == set()

        random_attack = start(client, lock_type="advisory_lock", lock_count=1, duration_seconds=20)
        key = wait_state(client, random_attack, "running")["advisory_lock_id"]
        assert isinstance(key, int)
        assert advisory_keys(db) == {key}


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"lock_type": "page_lock"}, "lock_type"),
        ({"target_table": "no_such_table"}, "target_table"),
        ({"target_table": "items; DROP TABLE items"}, "target_table"),
        ({"lock_type": "row_lock", "target_table": "items;"}, "target_table"),
        ({"lock_type": "row_lock", "target_table": "nope"}, "target_table"),
        ({"duration_seconds": 0}, "duration_seconds"),
        ({"duration_seconds": 3601}, "duration_seconds"),
        ({"lock_count": 0}, "lock_count"),
        ({"lock_count": 10_001}, "lock_count"),
        ({"lock_type": "advisory_lock", "advisory_lock_id": (1 << 63) - 2, "lock_count": 3}, "advisory_lock_id"),
        ({"advisory_lock_id": 1 << 63}, "advisory_lock_id"),
        ({"target_database_url": "not a url = = ="}, "target_database_url"),
    ],
)
def test_invalid_parameters_answer_422_and_start_nothing(db: str, params: dict[str, Any], field: str | None) -> None:
    with serve(db) as (client, ctx):
        resp = client.post(URL, params=params)
        assert resp.status_code == 422, resp.text
        body = resp.json()
        assert isinstance(body["detail"], str) and body["detail"]
        if field is not None:
            assert body["field"] == field
        assert ctx.engine.all() == []
        assert ctx.compat_attacks == {}
        # a warm session bound early to the refused fault is closed; its backend exits a moment later
        wait_for(lambda: not dbchaos_sessions(db, ctx), "no fault session", timeout=3)
        assert table_locks(db) == []


def test_unknown_ids_answer_404_including_native_faults(db: str) -> None:
    with serve(db) as (client, _):
        unknown = str(uuid.uuid4())
        for resp in (client.get(f"{URL}/{unknown}"), client.post(f"{URL}/{unknown}/stop")):
            assert resp.status_code == 404
            assert unknown in resp.json()["detail"]
        native = client.post(
            "/v1/faults", json={"kind": "table-lock", "params": {"tables": ["users"]}, "duration_s": 5}
        )
        assert native.status_code == 201, native.text
        native_id = native.json()["id"]
        assert client.get(f"{URL}/{native_id}").status_code == 404
        assert client.post(f"{URL}/{native_id}/stop").status_code == 404
        assert client.get(f"/v1/faults/{native_id}").json()["state"] == "active"


def uri_of(dsn: str) -> str:
    p = parse_dsn(dsn)
    assert set(p) <= {"host", "port", "user", "password", "dbname"}, p
    auth = quote(p.get("user", ""), safe="") + (":" + quote(p["password"], safe="") if "password" in p else "")
    host = quote(p.get("host", ""), safe="")
    port = f":{p['port']}" if "port" in p else ""
    return f"postgresql://{auth}@{host}{port}/{quote(p.get('dbname', ''), safe='')}"


def test_target_url_must_be_the_configured_target_and_is_never_shown(db: str) -> None:
    dbname = parse_dsn(db)["dbname"]
    same = uri_of(db)
    assert parse_dsn(same) == parse_dsn(db)
    with serve(db) as (client, ctx):
        attack = start(client, target_database_url=same, duration_seconds=20)
        running = client.get(f"{URL}/{attack}")
        assert running.json()["state"] in ("starting", "running")
        stopped = client.post(f"{URL}/{attack}/stop")
        for resp in (running, stopped, client.get(f"{URL}/{attack}")):
            assert db not in resp.text
            assert same not in resp.text
            assert dbname not in resp.text

        other_db = uri_of(psycopg.conninfo.make_conninfo(db, dbname="postgres"))
        elsewhere = "postgresql://intruder:Other-Secret-9@db.example.com:5432/prod"
        for url in (other_db, elsewhere):
            resp = client.post(URL, params={"target_database_url": url, "duration_seconds": 2})
            assert resp.status_code == 403, resp.text
            assert resp.json()["code"] == "ad_hoc_target_refused"
            assert "ad-hoc targets are not allowed" in resp.json()["detail"]
            assert url not in resp.text
            assert "Other-Secret-9" not in resp.text
        assert [r.id for r in ctx.engine.all()] == [attack]


@pytest.mark.parametrize(
    ("state", "reason", "failed_during", "long_tx", "migration_with", "migration_without"),
    [
        (State.PENDING, None, None, "starting", "starting", "starting"),
        (State.ACTIVE, None, None, "running", "running", "completed"),
        (State.REVERTED, EndReason.DEADLINE, None, "completed", "rolled_back", "rolled_back"),
        (State.REVERTED, EndReason.ABORTED, None, "rolled_back", "rolled_back", "rolled_back"),
        (State.REVERTED, EndReason.SHUTDOWN, None, "rolled_back", "rolled_back", "rolled_back"),
        (State.REVERTED, EndReason.KILLED, None, "force_killed", "rolled_back", "rolled_back"),
        (State.SUPERSEDED, EndReason.ABORTED, None, "rolled_back", "rolled_back", "rolled_back"),
        (State.FAILED, EndReason.ERROR, "inject", "failed", "failed", "failed"),
        (State.LOST, EndReason.ERROR, None, "failed", "failed", "failed"),
        (State.FAILED, EndReason.ERROR, "revert", "failed", "rollback_failed", "rollback_failed"),
    ],
)
def test_state_mapping_follows_the_compat_table(
    state: State,
    reason: EndReason | None,
    failed_during: str | None,
    long_tx: str,
    migration_with: str,
    migration_without: str,
) -> None:
    rec = FaultRecord("x", "table-lock", "default", {}, 1.0, 1.0, {}, 0.0, state=state, end_reason=reason)
    rec.failed_during = failed_during
    assert long_transaction_state(rec) == long_tx
    assert migration_state(rec, duration_given=True) == migration_with
    assert migration_state(rec, duration_given=False) == migration_without
