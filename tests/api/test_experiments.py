"""Experiments over the API: start, watch, stop; SQL probes against the target itself."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from dbchaos.api.app import create_app
from dbchaos.settings import Settings
from dbchaos.targets import Target
from tests.helpers import no_dbchaos_sessions, relation_locks, wait_for

BASE = "http://127.0.0.1:8080"

EXPERIMENT = """
name: api-run
target: default
baseline: 1s
recovery: 1s
probes:
  - name: count-items
    type: sql
    statement: SELECT count(*) FROM items
    rate: 10/s
    concurrency: 5
    lock_timeout: 200ms
hypothesis:
  - tolerance: errors == 0
    phase: during
method:
  - kind: table-lock
    params: {tables: [items]}
    duration: 2s
"""


@pytest.fixture
def client(db: str) -> Iterator[TestClient]:
    with TestClient(create_app(Settings(), {"default": Target("default", db)}), base_url=BASE) as c:
        yield c


def test_an_experiment_runs_in_the_background_and_deviates(client: TestClient, db: str) -> None:
    resp = client.post("/v1/experiments", json={"experiment": EXPERIMENT, "labels": {"ticket": "OPS-1"}})
    assert resp.status_code == 202, resp.text
    run = resp.json()
    assert run["state"] == "running" and run["labels"] == {"ticket": "OPS-1"}
    wait_for(lambda: relation_locks(db, "items") != [], timeout=10, what="the experiment's lock")
    done = wait_for(
        lambda: (r := client.get(f"/v1/experiments/{run['id']}").json())["state"] != "running" and r,
        timeout=20,
        interval=0.2,
        what="the experiment to finish",
    )
    assert done["state"] == "deviated"  # the probe's 200 ms lock_timeout fails while the lock holds
    j = done["journal"]
    errors = [r for r in j["probes"][0]["results"] if not r["ok"]]
    assert errors and all(r["sqlstate"] == "55P03" for r in errors)
    assert j["faults"][0]["state"] == "reverted"
    report = client.get(f"/v1/experiments/{run['id']}/report")
    assert report.status_code == 200 and "api-run" in report.text
    assert [e["id"] for e in client.get("/v1/experiments").json()["experiments"]] == [run["id"]]
    assert no_dbchaos_sessions(db)


def test_delete_stops_and_reverts(client: TestClient, db: str) -> None:
    long = EXPERIMENT.replace("duration: 2s", "duration: 60s")
    run = client.post("/v1/experiments", json={"experiment": long}).json()
    wait_for(lambda: relation_locks(db, "items") != [], timeout=10, what="the experiment's lock")
    assert client.delete(f"/v1/experiments/{run['id']}").json()["id"] == run["id"]
    done = wait_for(
        lambda: (r := client.get(f"/v1/experiments/{run['id']}").json())["state"] != "running" and r,
        timeout=15,
        interval=0.2,
        what="the stopped experiment to finish",
    )
    assert done["state"] == "halted"
    assert done["journal"]["faults"][0]["end_reason"] == "halted"
    assert relation_locks(db, "items") == []


@pytest.mark.parametrize(
    ("doc", "status", "code"),
    [
        ("name: x\ntarget: default\nmethod:\n  - kind: nope\n    duration: 1s\n", 422, "invalid_experiment"),
        (
            "name: x\ntarget: 'host=10.0.0.1 dbname=x'\nmethod:\n  - kind: table-lock\n    params: {tables: [items]}\n"
            "    duration: 1s\n",
            403,
            "ad_hoc_target_refused",
        ),
        (
            "name: x\ntarget: default\nreport: {json: /etc/x.json}\nmethod:\n  - kind: table-lock\n"
            "    params: {tables: [items]}\n    duration: 1s\n",
            422,
            "invalid_input",
        ),
    ],
    ids=["unknown-kind", "dsn-target", "report-path"],
)
def test_bad_experiments_are_refused_and_change_nothing(
    client: TestClient, db: str, doc: str, status: int, code: str
) -> None:
    resp = client.post("/v1/experiments", json={"experiment": doc})
    assert resp.status_code == status, resp.text
    assert resp.json()["code"] == code
    assert client.get("/v1/experiments").json()["experiments"] == []
    assert relation_locks(db, "items") == []


def test_unknown_experiment_is_404(client: TestClient) -> None:
    assert client.get("/v1/experiments/nope").status_code == 404


def test_events_announce_the_experiment(client: TestClient, db: str) -> None:
    seen: list[str] = []
    stop = threading.Event()

    def listen() -> None:
        with client.stream("GET", "/v1/events") as resp:
            for line in resp.iter_lines():
                if line.startswith("event: experiment"):
                    seen.append(line)
                if stop.is_set() or len(seen) >= 2:
                    return

    t = threading.Thread(target=listen, daemon=True)
    t.start()
    run = client.post("/v1/experiments", json={"experiment": EXPERIMENT}).json()
    wait_for(lambda: len(seen) >= 2, timeout=20, interval=0.2, what="started and finished events")
    stop.set()
    assert client.get(f"/v1/experiments/{run['id']}").json()["state"] == "deviated"
