"""Every scenario of the lab's catalogue starts with its default parameters on a real shop
database (migrated by the demo's Alembic scripts) and reverts cleanly (Acceptance 4)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient

from dbchaos.cli.init import opt_in_target
from dbchaos.faults.registry import default_registry
from dbchaos.lab.app import build_app
from dbchaos.lab.demo.migrate import revision_graph
from dbchaos.lab.scenarios import SCENARIOS, Group, catalogue
from dbchaos.lab.shopdb import TARGET_NAME
from dbchaos.settings import Settings
from dbchaos.targets import Target
from tests.helpers import no_dbchaos_sessions, query

BASE = "http://127.0.0.1:8080"

_SCHEMA_SQL = """
SELECT 'column', c.table_name || '.' || c.column_name || ' ' || c.data_type || ' ' || c.is_nullable
FROM information_schema.columns c WHERE c.table_schema = 'public'
UNION ALL
SELECT 'index', indexname || ': ' || indexdef FROM pg_indexes WHERE schemaname = 'public'
UNION ALL
SELECT 'table', tablename FROM pg_tables WHERE schemaname = 'public'
ORDER BY 1, 2
"""


def _state(dsn: str) -> dict[str, Any]:
    """What a team would compare before and after: schema, version rows, row counts."""
    return {
        "schema": query(dsn, _SCHEMA_SQL),
        "versions": query(dsn, "SELECT version_num FROM alembic_version ORDER BY 1"),
        "rows": query(dsn, "SELECT (SELECT count(*) FROM items), (SELECT count(*) FROM customers)"),
    }


@pytest.fixture
def lab_client(shop_db: str) -> Iterator[TestClient]:
    asyncio.run(opt_in_target(Target(TARGET_NAME, shop_db), "lab scenario test"))
    with TestClient(build_app(Settings(), shop_db), base_url=BASE) as client:
        yield client


def test_the_catalogue_covers_every_kind_in_two_groups() -> None:
    kinds = {k["kind"] for k in default_registry().describe()}
    assert sorted(s.kind for s in SCENARIOS) == sorted(kinds)
    groups = catalogue()["groups"]
    assert [g["id"] for g in groups] == [Group.LONG_TRANSACTIONS.value, Group.FAILED_MIGRATIONS.value]
    for group in groups:
        for s in group["scenarios"]:
            assert all(len(text) > 40 for text in s["text"].values()), s["kind"]
    lock_kinds = {"table-lock", "row-lock", "advisory-lock", "idle-transaction", "connection-exhaustion"}
    assert {s["kind"] for s in groups[0]["scenarios"]} == lock_kinds


def test_the_catalogue_is_served_and_lab_only_routes_say_no_lab(lab_client: TestClient) -> None:
    served = lab_client.get("/lab/api/scenarios").json()
    assert served == catalogue()
    res = lab_client.get("/lab/api/traffic")
    assert res.status_code == 404 and res.json()["code"] == "lab_not_running"
    page = lab_client.get("/lab/")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]


def test_every_scenario_starts_with_its_defaults_and_reverts_cleanly(lab_client: TestClient, shop_db: str) -> None:
    before = _state(shop_db)
    assert before["versions"] == [(h,) for h in revision_graph().heads]
    for scenario in SCENARIOS:
        body = {"kind": scenario.kind, "params": scenario.as_dict()["params"], "duration_s": scenario.duration_s}
        res = lab_client.post("/v1/faults", json=body)
        assert res.status_code == 201, (scenario.kind, res.text)
        fault = res.json()
        assert fault["state"] == "active" and fault["target"] == TARGET_NAME
        gone = lab_client.delete(f"/v1/faults/{fault['id']}").json()
        assert gone["state"] == "reverted", (scenario.kind, gone)
        assert no_dbchaos_sessions(shop_db, timeout=10), scenario.kind
        assert _state(shop_db) == before, scenario.kind
