"""The error shape of DESIGN §3 and the Host / Origin guard."""

from __future__ import annotations

from fastapi.testclient import TestClient

from dbchaos.api.app import create_app
from dbchaos.settings import Settings
from dbchaos.targets import Target

BASE = "http://127.0.0.1:8080"


def _client() -> TestClient:
    # no database is needed: these requests never reach one
    return TestClient(
        create_app(Settings(), {"default": Target("default", "postgresql://u@127.0.0.1:1/x")}), base_url=BASE
    )


def _assert_shape(body: dict[str, object]) -> None:
    assert set(body) >= {"detail", "code", "field"}
    assert isinstance(body["detail"], str)
    assert body["detail"]
    assert isinstance(body["code"], str)
    assert body["code"].islower()


def test_unknown_route_is_404_in_the_error_shape() -> None:
    resp = _client().get("/v1/no-such-thing")
    assert resp.status_code == 404
    _assert_shape(resp.json())
    assert resp.json()["code"] == "not_found"


def test_wrong_method_is_405_in_the_error_shape() -> None:
    resp = _client().delete("/v1/health")
    assert resp.status_code == 405
    _assert_shape(resp.json())
    assert resp.json()["code"] == "method_not_allowed"


def test_foreign_host_is_refused() -> None:
    resp = _client().get("/v1/health", headers={"Host": "evil.example:8080"})
    assert resp.status_code == 403
    _assert_shape(resp.json())
    assert resp.json()["code"] == "foreign_host"


def test_localhost_names_are_accepted_as_host() -> None:
    client = _client()
    for host in ("localhost:8080", "127.0.0.1:8080", "[::1]:8080"):
        assert client.get("/v1/no-such", headers={"Host": host}).json()["code"] == "not_found"


def test_state_changing_request_with_foreign_origin_is_refused_even_without_a_route() -> None:
    client = _client()
    for method in ("POST", "PUT", "PATCH", "DELETE"):
        resp = client.request(method, "/v1/anything", headers={"Origin": "https://evil.example"})
        assert resp.status_code == 403, method
        assert resp.json()["code"] == "foreign_origin"


def test_same_origin_and_reads_with_foreign_origin_pass_the_guard() -> None:
    client = _client()
    assert client.post("/v1/anything", headers={"Origin": BASE}).status_code == 404
    assert client.get("/v1/no-such", headers={"Origin": "https://evil.example"}).status_code == 404


def test_openapi_docs_are_served() -> None:
    client = _client()
    assert client.get("/docs").status_code == 200
    assert client.get("/openapi.json").json()["info"]["title"] == "dbchaos"


def test_a_wildcard_bind_answers_to_this_machines_names_but_not_others() -> None:
    import socket

    from dbchaos.api.guard import allowed_hosts_for

    hosts = allowed_hosts_for("0.0.0.0", 8080)  # noqa: S104 - no socket is bound here
    assert f"{socket.gethostname().lower()}:8080" in hosts
    assert "localhost:8080" in hosts
    assert "evil.example:8080" not in hosts
    assert allowed_hosts_for("127.0.0.1", 8080) >= {"127.0.0.1:8080", "localhost:8080"}
    assert f"{socket.gethostname().lower()}:8080" not in allowed_hosts_for("127.0.0.1", 8080)
