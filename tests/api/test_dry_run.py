"""``?dry_run=true`` over HTTP, on real PostgreSQL: the plan, the same refusals as a real
request, nothing left behind, and the audit trail."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from fastapi.testclient import TestClient

from dbchaos.api.app import create_app
from dbchaos.faults.migration.graph import RevisionGraph
from dbchaos.settings import Settings
from dbchaos.targets import Target, TargetPolicy
from tests.helpers import dbchaos_sessions, query, wait_for

BASE = "http://127.0.0.1:8080"


def make_client(dsn: str, graph: RevisionGraph | None = None, **settings: Any) -> TestClient:
    policy = settings.pop("policy", TargetPolicy())
    app = create_app(
        Settings(**settings),
        {"default": Target("default", dsn, policy)},
        graphs={"default": graph} if graph is not None else None,
        recover_on_start=False,
    )
    return TestClient(app, base_url=BASE)


@pytest.fixture
def client(db: str) -> Iterator[TestClient]:
    with make_client(db, policy=TargetPolicy(deny_tables=("public.users",))) as c:
        yield c


def no_sessions_left(dsn: str) -> bool:
    wait_for(lambda: not dbchaos_sessions(dsn, include_control=True), 3.0, what="dbchaos sessions to close")
    return True


def test_dry_run_answers_the_plan_and_creates_no_fault(client: TestClient, db: str) -> None:
    holder = psycopg.connect(db, application_name="batch-job")
    try:
        holder.execute("SELECT count(*) FROM items")
        body = {"kind": "table-lock", "params": {"tables": ["items"]}, "duration_s": 20, "labels": {"ticket": "X-1"}}
        resp = client.post("/v1/faults?dry_run=true", json=body)
        assert resp.status_code == 200, resp.text
        plan = resp.json()
        assert plan["dry_run"] is True and plan["kind"] == "table-lock" and plan["labels"] == {"ticket": "X-1"}
        assert plan["params"] == {"tables": ["public.items"], "mode": "ACCESS EXCLUSIVE"}
        assert 'LOCK TABLE "public"."items" IN ACCESS EXCLUSIVE MODE' in plan["statements"][1]["sql"]
        (party,) = plan["blast_radius"]["in_the_way"]
        assert party["pid"] == holder.info.backend_pid and party["application_name"] == "batch-job"
    finally:
        holder.close()
    assert client.get("/v1/faults").json() == {"faults": []}
    assert no_sessions_left(db)
    events = client.get("/v1/audit").json()["events"]
    (dry,) = [e for e in events if e["type"] == "dry_run"]
    assert dry["outcome"] == "dry_run" and dry["kind"] == "table-lock" and dry["fault_id"] is None
    (request,) = [e for e in events if e["type"] == "request"]
    assert request["query"] == {"dry_run": "true"} and request["outcome"]["status"] == 200
    assert request["outcome"]["fault_id"] is None


BAD: list[tuple[str, dict[str, Any], int, str]] = [  # (case, body, status, code)
    ("unknown kind", {"kind": "table-smash", "params": {}}, 422, "unknown_kind"),
    ("unknown table", {"kind": "table-lock", "params": {"tables": ["nope"]}}, 422, "unknown_table"),
    (
        "bad mode",
        {"kind": "table-lock", "params": {"tables": ["items"], "mode": "VERY EXCLUSIVE"}},
        422,
        "unknown_mode",
    ),
    ("injection", {"kind": "row-lock", "params": {"table": "items; DROP TABLE items"}}, 422, "invalid_identifier"),
    ("denied table", {"kind": "row-lock", "params": {"table": "users"}}, 403, "denied_object"),
    ("system table", {"kind": "table-lock", "params": {"tables": ["pg_catalog.pg_class"]}}, 403, "system_object"),
    (
        "too long",
        {"kind": "table-lock", "params": {"tables": ["items"]}, "duration_s": 10**6},
        422,
        "duration_too_long",
    ),
    ("no rows", {"kind": "row-lock", "params": {"table": "items", "where": {"id": [-5]}}}, 422, "no_rows"),
    ("bad value", {"kind": "row-lock", "params": {"table": "items", "where": {"id": ["x"]}}}, 422, "invalid_value"),
    (
        "no slots",
        {"kind": "connection-exhaustion", "params": {"connections": 99999}},
        409,
        "not_enough_connection_slots",
    ),
    ("unknown target", {"kind": "table-lock", "params": {"tables": ["items"]}, "target": "prod"}, 422, "invalid_input"),
]


@pytest.mark.parametrize(("case", "body", "status", "code"), BAD, ids=[b[0] for b in BAD])
def test_bad_input_gets_the_same_answer_as_a_real_request(
    client: TestClient, db: str, case: str, body: dict[str, Any], status: int, code: str
) -> None:
    real = client.post("/v1/faults", json=body)
    dry = client.post("/v1/faults?dry_run=true", json=body)
    assert (real.status_code, real.json()["code"]) == (status, code), real.text
    if case == "no slots":  # the counts in the message include the dry run's own session
        assert (dry.status_code, dry.json()["code"]) == (status, code)
    else:
        assert (dry.status_code, dry.json()) == (real.status_code, real.json())
    assert client.get("/v1/faults").json() == {"faults": []}


def test_not_opted_in_and_cap_are_refused_alike(db: str) -> None:
    body = {"kind": "table-lock", "params": {"tables": ["items"]}, "duration_s": 20}
    with make_client(db, max_faults_per_target=1) as c:
        assert c.post("/v1/faults", json=body).status_code == 201
        real, dry = c.post("/v1/faults", json=body), c.post("/v1/faults?dry_run=true", json=body)
        assert real.status_code == dry.status_code == 429 and real.json() == dry.json()
        c.post("/v1/reset")
    query(db, "DROP TABLE dbchaos.opt_in")
    with make_client(db) as c:
        real, dry = c.post("/v1/faults", json=body), c.post("/v1/faults?dry_run=true", json=body)
        assert real.status_code == dry.status_code == 403 and real.json() == dry.json()
        assert dry.json()["code"] == "target_not_opted_in"
    assert no_sessions_left(db)


def test_compat_long_transactions_dry_run(client: TestClient, db: str) -> None:
    url = "/api/v1/break/long_transactions"
    resp = client.post(f"{url}?lock_type=row_lock&lock_count=4&dry_run=true")
    assert resp.status_code == 200, resp.text
    plan = resp.json()
    assert plan["status"] == "dry_run" and plan["kind"] == "row-lock" and "attack_id" not in plan
    (rows,) = [lk for lk in plan["locks"] if lk["locktype"] == "rows"]
    assert rows["rows"] == 4 and rows["mode"] == "FOR UPDATE"
    refused = client.post(f"{url}?lock_type=table_lock&target_table=missing&dry_run=true")
    assert refused.status_code == 422 and refused.json()["field"] == "target_table"
    assert client.get("/v1/faults").json() == {"faults": []}
    assert no_sessions_left(db)


def test_compat_migrations_dry_run(alembic_db: str, graph: RevisionGraph) -> None:
    before = query(alembic_db, "SELECT version_num FROM alembic_version")
    with make_client(alembic_db, graph) as c:
        resp = c.post("/api/v1/break/migrations?failure_type=db_behind_code&dry_run=true")
        assert resp.status_code == 200, resp.text
        plan = resp.json()
        assert plan["status"] == "dry_run" and plan["kind"] == "behind"
        assert any(s["sql"].startswith('INSERT INTO "public"."alembic_version"') for s in plan["statements"])
        assert c.get("/v1/faults").json() == {"faults": []}
    assert query(alembic_db, "SELECT version_num FROM alembic_version") == before
    assert query(alembic_db, "SELECT to_regclass('dbchaos.journal')") == [(None,)]
