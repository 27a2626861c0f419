"""``GET /metrics``: the Prometheus exposition, on real PostgreSQL."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator

import psycopg
import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

import dbchaos
from dbchaos.api.app import create_app
from dbchaos.api.auth import TokenScope, TokenStore, generate_token
from dbchaos.settings import Settings
from dbchaos.targets import Target
from tests.helpers import query, wait_for

BASE = "http://127.0.0.1:8080"

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


@pytest.fixture
def client(db: str) -> Iterator[TestClient]:
    with TestClient(create_app(Settings(), {"default": Target("default", db)}), base_url=BASE) as c:
        yield c


def scrape(client: TestClient, headers: dict[str, str] | None = None) -> Samples:
    resp = client.get("/metrics", headers=headers)
    assert resp.status_code == 200, resp.text
    assert resp.headers["content-type"].startswith("text/plain")
    out: Samples = {}
    for family in text_string_to_metric_families(resp.text):
        for s in family.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def value(samples: Samples, name: str, **labels: str) -> float | None:
    """The sum of the samples of ``name`` whose labels include ``labels``; None if there are none."""
    found = [v for (n, ls), v in samples.items() if n == name and set(labels.items()) <= ls]
    return sum(found) if found else None


def test_build_info_and_scrape_samples_are_there_from_the_start(client: TestClient) -> None:
    samples = scrape(client)
    assert value(samples, "dbchaos_build_info", version=dbchaos.__version__) == 1
    assert value(samples, "dbchaos_faults_active") is None  # no fault yet
    assert value(samples, "dbchaos_fault_blocked_sessions") is None
    assert value(samples, "dbchaos_journal_unreverted_entries", target="default") == 0
    assert all(name.startswith("dbchaos_") for name, _ in samples)


def test_a_lock_its_victim_and_its_abort(client: TestClient, db: str) -> None:
    body = {"kind": "table-lock", "params": {"tables": ["items"]}, "duration_s": 10}
    fault = client.post("/v1/faults", json=body).json()
    assert fault["state"] == "active", fault
    samples = scrape(client)
    assert value(samples, "dbchaos_faults_active", kind="table-lock", target="default") == 1
    assert value(samples, "dbchaos_inject_seconds_count", kind="table-lock") == 1

    done = threading.Event()

    def victim() -> None:
        with psycopg.connect(db, application_name="victim-app") as conn:
            conn.execute("SELECT count(*) FROM items")
        done.set()

    t = threading.Thread(target=victim)
    t.start()
    try:
        blocked = wait_for(
            lambda: value(scrape(client), "dbchaos_fault_blocked_sessions", fault_id=fault["id"], kind="table-lock"),
            5.0,
            what="a blocked session in /metrics",
        )
        assert blocked is not None and blocked >= 1
    finally:
        gone = client.delete(f"/v1/faults/{fault['id']}").json()
        t.join(5)
    assert gone["end_reason"] == "aborted" and done.is_set()

    samples = scrape(client)
    assert value(samples, "dbchaos_faults_active", kind="table-lock", target="default") == 0
    assert (
        value(
            samples,
            "dbchaos_faults_finished_total",
            kind="table-lock",
            target="default",
            state="reverted",
            end_reason="aborted",
        )
        == 1
    )
    assert value(samples, "dbchaos_faults_finished_total", end_reason="deadline") is None
    count = value(samples, "dbchaos_inject_seconds_count", kind="table-lock")
    assert count is not None and count >= 1
    count = value(samples, "dbchaos_revert_seconds_count", kind="table-lock")
    assert count is not None and count >= 1
    assert value(samples, "dbchaos_fault_blocked_sessions") is None  # gone with the fault


def test_a_journaled_fault_counts_as_unreverted_while_active(client: TestClient, db: str) -> None:
    with psycopg.connect(db, autocommit=True) as conn:
        conn.execute("CREATE TABLE alembic_version (version_num varchar(32) PRIMARY KEY)")
        conn.execute("INSERT INTO alembic_version VALUES ('abc123')")
    fault = client.post("/v1/faults", json={"kind": "missing-version", "params": {}, "duration_s": 10}).json()
    assert fault["state"] == "active", fault
    assert query(db, "SELECT count(*) FROM alembic_version") == [(0,)]
    assert value(scrape(client), "dbchaos_journal_unreverted_entries", target="default") == 1

    assert client.delete(f"/v1/faults/{fault['id']}").json()["state"] == "reverted"
    samples = scrape(client)
    assert value(samples, "dbchaos_journal_unreverted_entries", target="default") == 0
    assert value(samples, "dbchaos_faults_finished_total", kind="missing-version", end_reason="aborted") == 1


def _unreachable_dsn() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"postgresql://nobody@127.0.0.1:{port}/none?connect_timeout=1"


def test_a_down_target_loses_its_sample_not_the_scrape() -> None:
    app = create_app(Settings(), {"default": Target("default", _unreachable_dsn())}, recover_on_start=False)
    with TestClient(app, base_url=BASE) as client:
        samples = scrape(client)
    assert value(samples, "dbchaos_build_info") == 1
    assert value(samples, "dbchaos_journal_unreverted_entries") is None


def test_needs_the_read_scope_when_tokens_are_configured() -> None:
    read = generate_token(TokenScope.READ, "reader")
    store = TokenStore.parse(read.entry_toml())
    app = create_app(
        Settings(), {"default": Target("default", _unreachable_dsn())}, tokens=store, recover_on_start=False
    )
    with TestClient(app, base_url=BASE) as client:
        assert client.get("/metrics").status_code == 401
        assert value(scrape(client, {"Authorization": f"Bearer {read.secret}"}), "dbchaos_build_info") == 1


def test_each_app_has_its_own_registry(db: str) -> None:
    target = {"default": Target("default", db)}
    with TestClient(create_app(Settings(), target), base_url=BASE) as first:
        fault = first.post("/v1/faults", json={"kind": "table-lock", "params": {"tables": ["items"]}, "duration_s": 5})
        assert fault.status_code == 201, fault.text
        first.delete(f"/v1/faults/{fault.json()['id']}")
        assert value(scrape(first), "dbchaos_faults_finished_total") == 1
    with TestClient(create_app(Settings(), target), base_url=BASE) as second:
        assert value(scrape(second), "dbchaos_faults_finished_total") is None
