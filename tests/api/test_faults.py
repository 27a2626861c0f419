"""The native fault API over HTTP, on real PostgreSQL."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from fastapi.testclient import TestClient

from dbchaos.api.app import create_app
from dbchaos.settings import Settings
from dbchaos.targets import Target
from tests.helpers import no_dbchaos_sessions, query, relation_locks, wait_for

BASE = "http://127.0.0.1:8080"


@pytest.fixture
def client(db: str) -> Iterator[TestClient]:
    with TestClient(create_app(Settings(), {"default": Target("default", db)}), base_url=BASE) as c:
        yield c


def _lock(client: TestClient, **extra: Any) -> Any:
    body = {"kind": "table-lock", "params": {"tables": ["items"]}, "duration_s": 10, **extra}
    return client.post("/v1/faults", json=body)


def test_create_show_list_and_delete(client: TestClient, db: str) -> None:
    resp = _lock(client, labels={"owner": "sre"})
    assert resp.status_code == 201, resp.text
    fault = resp.json()
    assert fault["state"] == "active" and fault["kind"] == "table-lock"
    assert fault["params"] == {"tables": ["public.items"], "mode": "ACCESS EXCLUSIVE"}
    assert fault["labels"] == {"owner": "sre"}
    for key in ("created_at", "activated_at", "deadline"):
        assert fault[key].endswith("Z")
    assert fault["impact"]["locks"][0]["mode"] == "AccessExclusiveLock"
    assert relation_locks(db, "items")

    listed = client.get("/v1/faults").json()["faults"]
    assert [f["id"] for f in listed] == [fault["id"]]

    gone = client.delete(f"/v1/faults/{fault['id']}").json()
    assert gone["state"] == "reverted" and gone["end_reason"] == "aborted"
    assert relation_locks(db, "items") == []
    assert client.get(f"/v1/faults/{fault['id']}").json()["state"] == "reverted"


def test_impact_shows_a_blocked_session_and_the_lock_tree(client: TestClient, db: str) -> None:
    fault = _lock(client).json()
    done = threading.Event()

    def victim() -> None:
        with psycopg.connect(db, application_name="victim-app") as conn:
            conn.execute("SELECT count(*) FROM items")
        done.set()

    t = threading.Thread(target=victim)
    t.start()
    try:
        shown = wait_for(
            lambda: (b := client.get(f"/v1/faults/{fault['id']}").json()["impact"])["blocked_count"] >= 1 and b,
            5.0,
            what="the victim to show as blocked",
        )
        (blocked,) = shown["blocked"]
        assert blocked["application_name"] == "victim-app"
        assert blocked["query"] == "SELECT count(*) FROM items"
        assert blocked["depth"] == 1 and fault["impact"]["pids"][0] in blocked["blocked_by"]
        assert shown["lock_tree"][0]["waits"][0]["application_name"] == "victim-app"
        assert not done.is_set()
    finally:
        client.post("/v1/reset")
        t.join(5)
    assert done.is_set()


def test_wait_false_answers_202_pending(client: TestClient) -> None:
    resp = client.post("/v1/faults?wait=false", json={"kind": "table-lock", "params": {"tables": ["items"]}})
    assert resp.status_code == 202
    assert resp.json()["state"] in ("pending", "active")
    fault_id = resp.json()["id"]
    wait_for(lambda: client.get(f"/v1/faults/{fault_id}").json()["state"] == "active", 5.0, what="activation")


def test_conflict_answers_409_with_the_failed_fault(client: TestClient, db: str) -> None:
    with psycopg.connect(db, application_name="long-report") as blocker:
        blocker.execute("LOCK TABLE items IN SHARE MODE")
        # a second of waiting: time for dbchaos to see who is in the way, even on a busy machine
        resp = _lock(client, acquire_timeout_s=1.0)
    assert resp.status_code == 409
    body = resp.json()
    assert body["code"] == "lock_not_acquired"
    assert "long-report" in body["detail"]
    assert body["fault"]["state"] == "failed"
    assert no_dbchaos_sessions(db)


def test_reset_and_kinds(client: TestClient, db: str) -> None:
    _lock(client)
    _lock(client, params={"tables": ["users"]})
    reverted = client.post("/v1/reset").json()["reverted"]
    assert len(reverted) == 2 and {f["end_reason"] for f in reverted} == {"reset"}
    assert no_dbchaos_sessions(db)
    kinds = {k["kind"]: k for k in client.get("/v1/kinds").json()["kinds"]}
    assert "table-lock" in kinds
    assert "tables" in kinds["table-lock"]["params_schema"]["properties"]


@pytest.mark.parametrize(
    ("body", "field", "code"),
    [
        ({"kind": "no-such-kind"}, "kind", "unknown_kind"),
        ({"kind": "table-lock", "params": {"tables": ["nope"]}}, "params.tables.0", "unknown_table"),
        ({"kind": "table-lock", "params": {"tables": ["items"], "mode": "huge"}}, "params.mode", "unknown_mode"),
        ({"kind": "table-lock", "params": {"tables": ["items"]}, "duration_s": 0}, "duration_s", "invalid_input"),
        (
            {"kind": "table-lock", "params": {"tables": ["items"]}, "duration_s": 99999},
            "duration_s",
            "duration_too_long",
        ),
        ({"kind": "table-lock", "params": {"tables": ["it;ems"]}}, "params.tables.0", "invalid_identifier"),
        ({"kind": "table-lock", "params": {"tables": ["x" * 70]}}, "params.tables.0", "identifier_too_long"),
        ({"kind": "table-lock", "params": {"tables": ["items"]}, "target": "prod"}, "target", "invalid_input"),
        ({"params": {}}, "kind", "invalid_input"),
        ({"kind": "table-lock", "duration_s": "soon"}, "duration_s", "invalid_input"),
    ],
)
def test_bad_input_is_422_with_field_and_changes_nothing(
    client: TestClient, db: str, body: dict[str, Any], field: str, code: str
) -> None:
    resp = client.post("/v1/faults", json=body)
    assert resp.status_code == 422, resp.text
    err = resp.json()
    assert err["field"] == field and err["code"] == code
    assert client.get("/v1/faults").json()["faults"] == []
    assert no_dbchaos_sessions(db)


def test_a_body_that_is_not_json_is_422(client: TestClient) -> None:
    resp = client.post("/v1/faults", content=b"{not json", headers={"content-type": "application/json"})
    assert resp.status_code == 422
    assert resp.json()["code"] == "invalid_input" and "JSON" in resp.json()["detail"]


def test_unknown_fault_id_is_404(client: TestClient) -> None:
    for resp in (client.get("/v1/faults/nope"), client.delete("/v1/faults/nope")):
        assert resp.status_code == 404 and resp.json()["code"] == "unknown_fault"


def test_unreachable_target_is_502(tmp_path: Any) -> None:
    app = create_app(Settings(connect_timeout_s=1), {"default": Target("default", "postgresql://u:pw@127.0.0.1:1/x")})
    with TestClient(app, base_url=BASE) as c:
        resp = c.post("/v1/faults", json={"kind": "table-lock", "params": {"tables": ["items"]}})
    assert resp.status_code == 502 and resp.json()["code"] == "target_unreachable"
    assert "pw@" not in resp.text


def test_read_only_target_is_502(db: str) -> None:
    dbname = query(db, "SELECT current_database()")[0][0]
    query(db, f'ALTER DATABASE "{dbname}" SET default_transaction_read_only = on')
    with TestClient(create_app(Settings(), {"default": Target("default", db)}), base_url=BASE) as c:
        resp = c.post("/v1/faults", json={"kind": "table-lock", "params": {"tables": ["items"]}})
    assert resp.status_code == 502 and resp.json()["code"] == "target_unusable"
    assert "read-only" in resp.json()["detail"]
