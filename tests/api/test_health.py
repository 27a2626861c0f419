from __future__ import annotations

import logging
import socket

import pytest
from fastapi.testclient import TestClient

import dbchaos
from dbchaos.api.app import create_app
from dbchaos.settings import Settings
from dbchaos.targets import Target
from tests.pg import PgServer, unprivileged_role

BASE = "http://127.0.0.1:8080"


def client_for(dsn: str) -> TestClient:
    settings = Settings()
    return TestClient(create_app(settings, {"default": Target("default", dsn)}), base_url=BASE)


def test_health_reports_a_usable_target(pg: PgServer, db: str) -> None:
    body = client_for(db).get("/v1/health").json()
    assert body["status"] == "ok"
    assert body["version"] == dbchaos.__version__
    target = body["target"]
    assert target["name"] == "default"
    assert target["reachable"] is True
    assert target["usable"] is True
    assert target["server_version_num"] // 10000 == pg.version


def test_health_stays_200_and_names_an_unreachable_target(caplog: pytest.LogCaptureFixture) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    caplog.set_level(logging.DEBUG)
    resp = client_for(f"postgresql://app:Hidden-Pw-9@127.0.0.1:{port}/x").get("/v1/health")
    assert resp.status_code == 200
    target = resp.json()["target"]
    assert target["reachable"] is False
    assert "cannot connect to target 'default'" in target["problem"]
    assert "Hidden-Pw-9" not in resp.text
    assert "Hidden-Pw-9" not in caplog.text


def test_password_of_a_protected_role_never_appears(pg: PgServer, db: str, caplog: pytest.LogCaptureFixture) -> None:
    dbname = db.rsplit("dbname=", 1)[-1].split()[0]
    caplog.set_level(logging.DEBUG)
    with unprivileged_role(pg, dbname, password="Pw-Never-Shown-7") as dsn:
        resp = client_for(dsn).get("/v1/health")
    assert resp.json()["target"]["usable"] is True
    assert "Pw-Never-Shown-7" not in resp.text
    assert "Pw-Never-Shown-7" not in caplog.text
    assert "***" in resp.json()["target"]["dsn"]
