"""The audit trail: requests and statements, in a JSON-lines file and ``GET /v1/audit``."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from dbchaos.api.app import create_app
from dbchaos.api.auth import TokenScope, TokenStore, generate_token
from dbchaos.audit import AuditLog, redact, scrub_text
from dbchaos.settings import Settings
from dbchaos.targets import Target

BASE = "http://127.0.0.1:8080"
LOCK_SQL = 'LOCK TABLE "public"."items" IN ACCESS EXCLUSIVE MODE'


@pytest.fixture
def log_path(tmp_path: Path) -> Path:
    return tmp_path / "audit.jsonl"


@pytest.fixture
def client(db: str, log_path: Path) -> Iterator[TestClient]:
    settings = Settings(audit_log=str(log_path))
    with TestClient(create_app(settings, {"default": Target("default", db)}), base_url=BASE) as c:
        yield c


def _lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _events(client: TestClient, **params: Any) -> list[dict[str, Any]]:
    resp = client.get("/v1/audit", params=params)
    assert resp.status_code == 200, resp.text
    events: list[dict[str, Any]] = resp.json()["events"]
    return events


def test_fault_requests_and_statements_are_recorded(client: TestClient, log_path: Path) -> None:
    body = {"kind": "table-lock", "params": {"tables": ["items"]}, "duration_s": 10}
    created = client.post("/v1/faults", json=body)
    assert created.status_code == 201, created.text
    fault_id = created.json()["id"]
    size_after_create = log_path.stat().st_size
    before = log_path.read_bytes()
    assert client.delete(f"/v1/faults/{fault_id}").status_code == 200

    events = _events(client, fault_id=fault_id)
    requests = [e for e in events if e["type"] == "request"]
    assert [(r["method"], r["path"]) for r in requests] == [
        ("POST", "/v1/faults"),
        ("DELETE", f"/v1/faults/{fault_id}"),
    ]
    post, delete = requests
    assert post["kind"] == "table-lock" and post["params"] == {"tables": ["items"]}
    assert post["target"] == "default" and post["principal"] is None
    assert post["outcome"] == {"status": 201, "fault_id": fault_id}
    assert delete["outcome"] == {"status": 200, "fault_id": fault_id}
    assert post["time"].endswith("Z")

    statements = [e["sql"] for e in events if e["type"] == "statement"]
    assert any(LOCK_SQL in s for s in statements), statements
    assert "ROLLBACK" in statements
    assert all(e["target"] == "default" for e in events if e["type"] == "statement")
    # the control session's look-ups are recorded too, under "control"
    assert any(e["type"] == "statement" and e["fault_id"] == "control" for e in _events(client))

    # the file holds the same events and was only appended to
    data = log_path.read_bytes()
    assert data.startswith(before) and len(before) == size_after_create
    in_file = [e for e in _lines(log_path) if e.get("fault_id") == fault_id]
    assert in_file == events


def test_limit(client: TestClient) -> None:
    client.post("/v1/reset")
    assert len(_events(client, limit=1)) == 1
    assert client.get("/v1/audit", params={"limit": 0}).status_code == 422


def test_no_secret_from_a_compat_url(client: TestClient, log_path: Path) -> None:
    resp = client.post(
        "/api/v1/break/long_transactions",
        params={"lock_type": "table_lock", "target_database_url": "postgresql://u:SECRETPW@h/db"},
    )
    assert resp.status_code >= 400
    events = _events(client)
    request = [e for e in events if e["type"] == "request"][-1]
    assert request["path"] == "/api/v1/break/long_transactions"
    assert request["query"]["lock_type"] == "table_lock"
    assert request["query"]["target_database_url"] == "<redacted>"
    assert request["outcome"]["status"] == resp.status_code
    assert "SECRETPW" not in log_path.read_text()
    assert "SECRETPW" not in client.get("/v1/audit").text


def test_injection_is_refused_before_any_statement(client: TestClient, log_path: Path) -> None:
    body = {"kind": "table-lock", "params": {"tables": ["items; DROP TABLE users"]}, "duration_s": 5}
    resp = client.post("/v1/faults", json=body)
    assert resp.status_code == 422, resp.text
    request = [e for e in _events(client) if e["type"] == "request"][-1]
    assert request["outcome"]["status"] == 422 and request["outcome"]["fault_id"] is None
    assert request["params"] == {"tables": ["items; DROP TABLE users"]}
    statements = [e["sql"] for e in _lines(log_path) if e["type"] == "statement"]
    assert not [s for s in statements if "DROP TABLE" in s.upper()]


def test_principal_is_the_token_name_and_refusals_are_recorded(db: str, log_path: Path) -> None:
    token = generate_token(TokenScope.INJECT, "ci-bot")
    store = TokenStore.parse(token.entry_toml())
    app = create_app(Settings(audit_log=str(log_path)), {"default": Target("default", db)}, tokens=store)
    with TestClient(app, base_url=BASE) as c:
        auth = {"Authorization": f"Bearer {token.secret}"}
        assert c.delete("/v1/faults/no-such-fault", headers=auth).status_code == 404
        assert c.post("/v1/reset").status_code == 401
        events = c.get("/v1/audit", headers=auth).json()["events"]
    requests = [e for e in events if e["type"] == "request"]
    assert [(r["principal"], r["outcome"]["status"]) for r in requests] == [("ci-bot", 404), (None, 401)]
    assert token.secret not in log_path.read_text()


def test_appends_to_an_existing_file(log_path: Path) -> None:
    log_path.write_text('{"type":"old"}\n')
    audit = AuditLog(log_path, memory=2)
    for i in range(3):
        audit.record({"type": "request", "n": i})
    audit.close()
    assert [e.get("n") for e in _lines(log_path)] == [None, 0, 1, 2]
    assert [e["n"] for e in audit.events()] == [1, 2]


def test_redaction() -> None:
    assert scrub_text("host=h password=hunter2 dbname=x") == "host=h password=<redacted> dbname=x"
    assert "hunter2" not in scrub_text("postgresql://me:hunter2@db/app")
    assert redact({"dsn": "x", "nested": [{"api_token": "y"}], "tables": ["items"]}) == {
        "dsn": "<redacted>",
        "nested": [{"api_token": "<redacted>"}],
        "tables": ["items"],
    }
