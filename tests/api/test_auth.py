"""Bearer tokens: the tokens file, the store, and every endpoint x every scope (docs/security.md)."""

from __future__ import annotations

import hmac
import logging
import re
import socket
from typing import Any

import pytest
from fastapi import FastAPI, Request
from fastapi.routing import iter_route_contexts
from fastapi.testclient import TestClient

from dbchaos.api.app import create_app
from dbchaos.api.auth import (
    Principal,
    TokenScope,
    TokenStore,
    bearer_secret,
    generate_token,
    is_loopback_host,
    required_scope,
)
from dbchaos.errors import InvalidInput
from dbchaos.settings import Settings
from dbchaos.targets import Target

BASE = "http://127.0.0.1:8080"
ALL_INTERFACES = "0.0.0.0"  # noqa: S104 - an address under test, not a bind
SECRETS = {scope: generate_token(scope, f"{scope.value}-user") for scope in TokenScope}
TOKENS_TOML = "\n".join(t.entry_toml() for t in SECRETS.values())
#: Calls dbchaos answers with these codes are refused by auth, whatever the route does.
AUTH_CODES = frozenset({"unauthorized", "insufficient_scope"})

#: The documented table (docs/security.md): route -> the lowest scope that may call it; None: public.
DOCUMENTED: dict[tuple[str, str], TokenScope | None] = {
    ("GET", "/v1/health"): None,
    ("GET", "/v1/faults"): TokenScope.READ,
    ("GET", "/v1/faults/{fault_id}"): TokenScope.READ,
    ("GET", "/v1/kinds"): TokenScope.READ,
    ("GET", "/v1/targets/{name}/migrations"): TokenScope.READ,
    ("POST", "/v1/faults"): TokenScope.INJECT,
    ("DELETE", "/v1/faults/{fault_id}"): TokenScope.INJECT,
    ("PATCH", "/v1/faults/{fault_id}"): TokenScope.INJECT,
    ("GET", "/v1/events"): TokenScope.READ,
    ("POST", "/v1/reset"): TokenScope.ADMIN,
    ("GET", "/v1/experiments"): TokenScope.READ,
    ("GET", "/v1/experiments/{run_id}"): TokenScope.READ,
    ("GET", "/v1/experiments/{run_id}/report"): TokenScope.READ,
    ("POST", "/v1/experiments"): TokenScope.INJECT,
    ("DELETE", "/v1/experiments/{run_id}"): TokenScope.INJECT,
    ("POST", "/api/v1/break/long_transactions"): TokenScope.INJECT,
    ("GET", "/api/v1/break/long_transactions/{attack_id}"): TokenScope.READ,
    ("POST", "/api/v1/break/long_transactions/{attack_id}/stop"): TokenScope.INJECT,
    ("POST", "/api/v1/break/migrations"): TokenScope.INJECT,
    ("GET", "/api/v1/break/migrations/{attack_id}"): TokenScope.READ,
    ("POST", "/api/v1/break/migrations/{attack_id}/stop"): TokenScope.INJECT,
    ("GET", "/docs"): TokenScope.READ,
    ("GET", "/openapi.json"): TokenScope.READ,
}


def _unreachable_dsn() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"postgresql://nobody@127.0.0.1:{port}/none?connect_timeout=1"


def _app(dsn: str, store: TokenStore | None = None, **settings: Any) -> FastAPI:
    tokens = TokenStore.parse(TOKENS_TOML) if store is None else store
    return create_app(Settings(**settings), {"default": Target("default", dsn)}, tokens=tokens, recover_on_start=False)


@pytest.fixture
def client() -> TestClient:
    """Tokens configured; the target is never contacted (no lifespan, routes that need no database)."""
    return TestClient(_app(_unreachable_dsn()), base_url=BASE)


def _bearer(scope: TokenScope) -> dict[str, str]:
    return {"Authorization": f"Bearer {SECRETS[scope].secret}"}


# --- the tokens file -------------------------------------------------------------------------------------------------


def test_a_generated_token_authenticates_as_its_entry_and_nothing_else() -> None:
    store = TokenStore.parse(TOKENS_TOML)
    for scope, token in SECRETS.items():
        assert token.secret.startswith("dbc_") and len(token.secret) >= 40
        assert store.authenticate(token.secret) == Principal(f"{scope.value}-user", scope)
    assert store.authenticate(SECRETS[TokenScope.READ].secret + "x") is None
    assert store.authenticate(SECRETS[TokenScope.READ].sha256) is None  # the hash is not the secret
    assert store.authenticate("") is None
    assert store.authenticate("x" * 10_000) is None
    assert generate_token(TokenScope.READ).secret != generate_token(TokenScope.READ).secret


def test_scopes_are_ordered() -> None:
    read, inject, admin = TokenScope.READ, TokenScope.INJECT, TokenScope.ADMIN
    assert admin.allows(inject) and admin.allows(read) and inject.allows(read)
    assert not read.allows(inject) and not inject.allows(admin) and not read.allows(admin)


def test_every_stored_hash_is_compared_in_constant_time(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[bytes, bytes]] = []
    real = hmac.compare_digest

    def counting(a: bytes, b: bytes) -> bool:
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(hmac, "compare_digest", counting)  # what dbchaos.api.auth calls
    store = TokenStore.parse(TOKENS_TOML)
    for secret in (SECRETS[TokenScope.READ].secret, SECRETS[TokenScope.ADMIN].secret, "dbc_nope"):
        calls.clear()
        store.authenticate(secret)
        # no early exit on the first match, and every comparison is between digests
        assert len(calls) == len(SECRETS)
        assert all(len(a) == len(b) == 32 for a, b in calls)


def test_no_tokens_file_means_an_empty_store() -> None:
    assert not TokenStore.load(None)
    assert not TokenStore.parse("")


def test_a_tokens_file_is_read_from_disk(tmp_path: Any) -> None:
    path = tmp_path / "tokens.toml"
    path.write_text(TOKENS_TOML)
    assert len(TokenStore.load(path).entries) == 3
    with pytest.raises(InvalidInput, match="cannot read the tokens file") as exc:
        TokenStore.load(tmp_path / "missing.toml")
    assert exc.value.code == "invalid_tokens_file" and exc.value.field == "tokens_file"


_GOOD = 'name = "ci"\nscope = "inject"\nsha256 = "' + "ab" * 32 + '"\n'


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[[token]]\n" + _GOOD + 'nmae = "x"\n', r"\[\[token\]\] #1 \('ci'\): unknown key\(s\) 'nmae'"),
        ("[[token]]\n" + _GOOD.replace('"inject"', '"root"'), r"#1 \('ci'\): scope must be one of read, inject, admin"),
        ("[[token]]\n" + _GOOD.replace('"inject"', "2"), r"#1 \('ci'\): 'scope' must be a string"),
        ('[[token]]\nname = "ci"\nscope = "read"\n', r"#1 \('ci'\): missing 'sha256'"),
        ("[[token]]\n" + _GOOD.replace("ab" * 32, "ab" * 31), r"#1 \('ci'\): 'sha256' must be the 64 hex digits"),
        ("[[token]]\n" + _GOOD.replace("ab" * 32, "zz" * 32), r"'sha256' must be the 64 hex digits"),
        ("[[token]]\n" + _GOOD.replace('"ci"', '"c i"'), r"#1 \('c i'\): name 'c i' must be 1-64 characters"),
        (
            "[[token]]\n" + _GOOD + "[[token]]\n" + _GOOD.replace("ab", "cd"),
            r"the token name 'ci' is used more than once",
        ),
        (
            "[[token]]\n" + _GOOD + "[[token]]\n" + _GOOD.replace('"ci"', '"cd"'),
            r"#2 \('cd'\) has the same sha256 as an earlier token",
        ),
        ("[[tokens]]\n" + _GOOD, r"unknown top-level key\(s\) 'tokens'"),
        ('token = "abc"\n', r"'token' must be an array of tables"),
        ("token = [1]\n", r"\[\[token\]\] #1 must be a table"),
        ("[[token]\n" + _GOOD, r"not valid TOML: .*line 1"),
    ],
)
def test_a_bad_tokens_file_is_refused_with_the_entry_named(text: str, message: str) -> None:
    with pytest.raises(InvalidInput, match=message) as exc:
        TokenStore.parse(text, "/etc/dbchaos/tokens.toml")
    assert exc.value.message.startswith("/etc/dbchaos/tokens.toml: ")
    assert exc.value.code == "invalid_tokens_file"


def test_the_sha256_may_be_written_in_upper_case() -> None:
    token = SECRETS[TokenScope.READ]
    store = TokenStore.parse(token.entry_toml().replace(token.sha256, token.sha256.upper()))
    assert store.authenticate(token.secret) == Principal("read-user", TokenScope.READ)


# --- the rules, decided before routing ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path", "scope"),
    [
        ("GET", "/v1/health", None),
        ("HEAD", "/v1/health", None),
        ("GET", "/v1/health/", None),
        ("POST", "/v1/health", TokenScope.INJECT),
        ("GET", "/v1/faults", TokenScope.READ),
        ("OPTIONS", "/v1/faults", TokenScope.READ),
        ("GET", "/nowhere", TokenScope.READ),
        ("POST", "/v1/faults", TokenScope.INJECT),
        ("PUT", "/v1/faults", TokenScope.INJECT),
        ("PATCH", "/v1/faults", TokenScope.INJECT),
        ("DELETE", "/v1/faults/x", TokenScope.INJECT),
        ("POST", "/v1/reset", TokenScope.ADMIN),
        ("POST", "/v1/reset/", TokenScope.ADMIN),
        ("post", "/v1/reset", TokenScope.ADMIN),
        ("GET", "/v1/reset", TokenScope.READ),
    ],
)
def test_required_scope(method: str, path: str, scope: TokenScope | None) -> None:
    assert required_scope(method, path) == scope


@pytest.mark.parametrize(
    ("header", "secret"),
    [
        (None, None),
        ("Bearer abc", "abc"),
        ("bearer abc", "abc"),
        ("BEARER   abc  ", "abc"),
        ("Basic abc", None),
        ("Bearer", None),
        ("Bearer ", None),
        ("Bearer a b", None),
        ("abc", None),
    ],
)
def test_bearer_header_parsing(header: str | None, secret: str | None) -> None:
    assert bearer_secret(header) == secret


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.1.2.3", True),
        ("::1", True),
        ("[::1]", True),
        ("localhost", True),
        ("LOCALHOST", True),
        (ALL_INTERFACES, False),
        ("::", False),
        ("10.1.2.3", False),
        ("db.example.com", False),
        ("", False),
    ],
)
def test_loopback_addresses(host: str, loopback: bool) -> None:
    assert is_loopback_host(host) is loopback


def test_the_app_refuses_a_non_loopback_address_without_tokens() -> None:
    with pytest.raises(InvalidInput, match="dbchaos token create") as exc:
        _app(_unreachable_dsn(), TokenStore(), host=ALL_INTERFACES)
    assert exc.value.code == "tokens_required" and exc.value.field == "host"
    _app(_unreachable_dsn(), host=ALL_INTERFACES)  # with tokens it builds
    _app(_unreachable_dsn(), TokenStore(), host="::1")


def test_the_app_reads_settings_tokens_file(tmp_path: Any) -> None:
    path = tmp_path / "tokens.toml"
    path.write_text(TOKENS_TOML)
    app = create_app(
        Settings(tokens_file=str(path)), {"default": Target("default", _unreachable_dsn())}, recover_on_start=False
    )
    c = TestClient(app, base_url=BASE)
    assert c.get("/v1/kinds").status_code == 401
    assert c.get("/v1/kinds", headers=_bearer(TokenScope.READ)).status_code == 200
    path.write_text("[[token]]\nscope = 'read'\n")
    with pytest.raises(InvalidInput, match="missing 'name'"):
        create_app(Settings(tokens_file=str(path)), {"default": Target("default", _unreachable_dsn())})


# --- HTTP behaviour --------------------------------------------------------------------------------------------------


def test_no_token_is_401_with_a_bearer_challenge(client: TestClient) -> None:
    resp = client.get("/v1/kinds")
    assert resp.status_code == 401
    assert resp.headers["www-authenticate"] == 'Bearer realm="dbchaos"'
    assert resp.json() == {
        "detail": "this server requires a token: send the header 'Authorization: Bearer <token>'",
        "code": "unauthorized",
        "field": None,
    }


@pytest.mark.parametrize(
    ("header", "error"),
    [("Bearer dbc_not-a-real-token", "invalid_token"), ("Basic dXNlcjpwdw==", "invalid_request"), ("Bearer", None)],
)
def test_a_bad_or_malformed_token_is_401(client: TestClient, header: str, error: str | None) -> None:
    resp = client.get("/v1/kinds", headers={"Authorization": header})
    assert resp.status_code == 401
    assert resp.json()["code"] == "unauthorized"
    challenge = resp.headers["www-authenticate"]
    assert challenge.startswith("Bearer ")
    assert f'error="{error or "invalid_request"}"' in challenge


def test_a_low_scope_is_403_insufficient_scope(client: TestClient) -> None:
    resp = client.post("/v1/reset", headers=_bearer(TokenScope.INJECT))
    assert resp.status_code == 403
    body = resp.json()
    assert body["code"] == "insufficient_scope" and body["field"] is None
    assert body["required_scope"] == "admin"
    assert "'inject-user' has scope 'inject'" in body["detail"]
    assert 'error="insufficient_scope"' in resp.headers["www-authenticate"]
    assert client.post("/v1/reset", headers=_bearer(TokenScope.ADMIN)).status_code == 200
    assert client.post("/v1/reset/", headers=_bearer(TokenScope.INJECT)).status_code == 403


def test_health_needs_no_token_and_ignores_a_bad_one(client: TestClient) -> None:
    assert client.get("/v1/health").status_code == 200
    assert client.get("/v1/health", headers={"Authorization": "Bearer wrong"}).status_code == 200
    assert client.post("/v1/health").status_code == 401


def test_docs_and_openapi_need_read(client: TestClient) -> None:
    for path in ("/docs", "/openapi.json", "/redoc"):
        assert client.get(path).status_code == 401
        assert client.get(path, headers=_bearer(TokenScope.READ)).status_code == 200, path
    assert "/v1/faults" in client.get("/openapi.json", headers=_bearer(TokenScope.READ)).json()["paths"]


def test_unknown_routes_do_not_leak_without_a_token(client: TestClient) -> None:
    assert client.get("/v1/nowhere").status_code == 401
    assert client.post("/v1/nowhere").status_code == 401
    assert client.get("/v1/nowhere", headers=_bearer(TokenScope.READ)).status_code == 404
    assert client.post("/v1/nowhere", headers=_bearer(TokenScope.READ)).status_code == 403
    assert client.post("/v1/nowhere", headers=_bearer(TokenScope.INJECT)).status_code == 404


def test_the_host_guard_still_answers_first(client: TestClient) -> None:
    resp = client.get("/v1/kinds", headers={"Host": "evil.example:8080"})
    assert resp.status_code == 403 and resp.json()["code"] == "foreign_host"


def test_the_principal_is_on_request_state() -> None:
    seen: list[Any] = []

    def attach(app: FastAPI) -> TestClient:
        async def whoami(request: Request) -> dict[str, str]:
            seen.append(request.state.principal)
            return {}

        app.add_api_route("/v1/test-whoami", whoami, methods=["GET", "POST"])
        return TestClient(app, base_url=BASE)

    with_tokens = attach(_app(_unreachable_dsn()))
    assert with_tokens.get("/v1/test-whoami", headers=_bearer(TokenScope.READ)).status_code == 200
    assert with_tokens.post("/v1/test-whoami", headers=_bearer(TokenScope.ADMIN)).status_code == 200
    without = attach(_app(_unreachable_dsn(), TokenStore()))
    assert without.post("/v1/test-whoami").status_code == 200
    assert seen == [Principal("read-user", TokenScope.READ), Principal("admin-user", TokenScope.ADMIN), None]


def test_without_tokens_nothing_asks_for_one() -> None:
    c = TestClient(_app(_unreachable_dsn(), TokenStore()), base_url=BASE)
    assert c.get("/v1/kinds").status_code == 200
    assert c.get("/docs").status_code == 200
    assert c.post("/v1/reset").status_code == 200
    assert c.post("/v1/reset", headers={"Authorization": "Bearer junk"}).status_code == 200


def test_no_secret_is_ever_logged(client: TestClient, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    wrong = "dbc_wrong-secret-value-123"
    client.get("/v1/kinds", headers={"Authorization": f"Bearer {wrong}"})
    client.post("/v1/reset", headers=_bearer(TokenScope.READ))
    client.get("/v1/kinds", headers=_bearer(TokenScope.READ))
    assert "refused" in caplog.text  # refusals are logged ...
    assert wrong not in caplog.text  # ... but never the token
    for token in SECRETS.values():
        assert token.secret not in caplog.text


# --- every endpoint x every scope ------------------------------------------------------------------------------------

_PARAM = re.compile(r"\{([^}:]+)(?::[^}]+)?\}")
CALLERS: dict[str, dict[str, str]] = {
    "no token": {},
    "bad token": {"Authorization": "Bearer dbc_this-is-not-a-configured-token"},
    "malformed": {"Authorization": "Token abc"},
    **{scope.value: _bearer(scope) for scope in TokenScope},
}


def _endpoints(app: FastAPI) -> list[tuple[str, str]]:
    """(method, path template) of every route, included routers flattened."""
    found = []
    for context in iter_route_contexts(app.routes):
        assert context.path is not None and context.methods, f"a route the matrix cannot call: {context.route!r}"
        for method in sorted(context.methods):
            found.append((method, context.path))
    return found


def _expected(method: str, template: str) -> TokenScope | None:
    key = ("GET" if method == "HEAD" else method, template)
    if key in DOCUMENTED:
        return DOCUMENTED[key]
    # a route added later: the general rule (docs/security.md)
    return TokenScope.READ if method in ("GET", "HEAD", "OPTIONS") else TokenScope.INJECT


def _call(client: TestClient, method: str, template: str, headers: dict[str, str]) -> Any:
    path = _PARAM.sub("00000000-0000-0000-0000-000000000000", template)
    if method in ("GET", "HEAD", "OPTIONS"):
        # the event stream would never end: ask it to end at once
        params = {"max_s": "0"} if template == "/v1/events" else None
        return client.request(method, path, headers=headers, params=params)
    # invalid input on purpose: a call that passes auth must not start a fault
    return client.request(
        method, path, headers=headers, params={"duration_seconds": "-1", "lock_count": "-1"}, json={"kind": ""}
    )


def _body(resp: Any) -> dict[str, Any]:
    """The JSON object of an answer; {} for anything else (HTML docs, a list, no body)."""
    try:
        value = resp.json()
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def test_every_endpoint_for_every_caller(db: str) -> None:
    app = _app(db)
    endpoints = _endpoints(app)
    for method, template in DOCUMENTED:
        assert (method, template) in endpoints, f"documented but gone: {method} {template}"
    outcomes: list[str] = []
    with TestClient(app, base_url=BASE) as client:
        for method, template in endpoints:
            needed = _expected(method, template)
            for caller, headers in CALLERS.items():
                resp = _call(client, method, template, headers)
                what = f"{method} {template} as {caller}: {resp.status_code} {resp.text[:200]}"
                outcomes.append(what)
                if needed is None:
                    assert resp.status_code == 200, what
                elif caller in ("no token", "bad token", "malformed"):
                    assert resp.status_code == 401, what
                    assert resp.headers["www-authenticate"].startswith("Bearer"), what
                    if method != "HEAD":
                        assert _body(resp)["code"] == "unauthorized", what
                elif TokenScope(caller).allows(needed):
                    assert resp.status_code not in (401, 500), what
                    if method == "HEAD":
                        assert resp.status_code != 403, what
                    else:
                        assert _body(resp).get("code") not in AUTH_CODES, what
                else:
                    assert resp.status_code == 403, what
                    if method != "HEAD":
                        assert _body(resp)["code"] == "insufficient_scope", what
                        assert _body(resp)["required_scope"] == needed.value, what
        assert client.get("/v1/faults", headers=_bearer(TokenScope.READ)).json()["faults"] == [], "a fault started"
    assert len(outcomes) == len(endpoints) * len(CALLERS) >= len(DOCUMENTED) * len(CALLERS)
