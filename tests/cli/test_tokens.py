"""``dbchaos token create`` and ``dbchaos serve`` with and without tokens, as real processes."""

from __future__ import annotations

import json
import os
import re
import stat
import subprocess
import sys
from pathlib import Path

import httpx

from dbchaos.api.auth import Principal, TokenScope, TokenStore, hash_secret
from tests.server_proc import dbchaos_server, free_port

ALL_INTERFACES = "0.0.0.0"  # noqa: S104 - bound only on a free port, for seconds
_CLEARED = frozenset({"DBCHAOS_TARGET_DSN", "DBCHAOS_TOKENS_FILE", "DBCHAOS_TOKEN", "DBCHAOS_HOST"})


def dbchaos(*args: str, timeout: float = 60, **env: str) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if k not in _CLEARED}
    environ.update(COLUMNS="200", **env)
    return subprocess.run(
        [sys.executable, "-m", "dbchaos", *args], capture_output=True, text=True, timeout=timeout, env=environ
    )


def _unused_dsn() -> str:
    return f"postgresql://nobody@127.0.0.1:{free_port()}/none"


def test_token_create_prints_the_secret_once_and_a_working_entry() -> None:
    run = dbchaos("token", "create", "--scope", "inject", "--name", "ci-pipeline")
    assert run.returncode == 0, run.stderr
    (secret,) = re.findall(r"^dbc_[A-Za-z0-9_-]{43}$", run.stdout, re.MULTILINE)
    assert run.stdout.count(secret) == 1
    entry = run.stdout[run.stdout.index("[[token]]") :]
    assert hash_secret(secret) in entry
    store = TokenStore.parse(entry)
    assert store.authenticate(secret) == Principal("ci-pipeline", TokenScope.INJECT)


def test_token_create_json_and_the_default_name() -> None:
    run = dbchaos("token", "create", "--scope", "admin", "--json")
    assert run.returncode == 0, run.stderr
    body = json.loads(run.stdout)
    assert body["scope"] == "admin" and body["sha256"] == hash_secret(body["secret"])
    assert body["name"] == f"admin-{body['sha256'][:8]}"
    assert TokenStore.parse(body["entry"]).authenticate(body["secret"]) == Principal(body["name"], TokenScope.ADMIN)


def test_token_create_refuses_a_bad_scope_or_name() -> None:
    run = dbchaos("token", "create", "--scope", "root")
    assert run.returncode == 2
    assert "scope must be one of read, inject, admin" in run.stderr
    assert "dbc_" not in run.stdout
    run = dbchaos("token", "create", "--scope", "read", "--name", "two words")
    assert run.returncode == 2 and "--name" in run.stderr


def test_token_create_appends_to_a_tokens_file(tmp_path: Path) -> None:
    path = tmp_path / "tokens.toml"
    first = json.loads(
        dbchaos("token", "create", "--scope", "read", "--name", "a", "--tokens-file", str(path), "--json").stdout
    )
    second = json.loads(
        dbchaos("token", "create", "--scope", "admin", "--name", "b", "--tokens-file", str(path), "--json").stdout
    )
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    store = TokenStore.load(path)
    assert store.authenticate(first["secret"]) == Principal("a", TokenScope.READ)
    assert store.authenticate(second["secret"]) == Principal("b", TokenScope.ADMIN)
    before = path.read_text()
    again = dbchaos("token", "create", "--scope", "read", "--name", "a", "--tokens-file", str(path))
    assert again.returncode == 2
    assert "'a' is used more than once" in again.stderr
    assert path.read_text() == before


def test_serve_on_a_public_address_without_tokens_exits_2_before_anything_else() -> None:
    run = dbchaos("serve", "--host", ALL_INTERFACES, "--port", str(free_port()), "--target", _unused_dsn(), timeout=30)
    assert run.returncode == 2, run.stdout + run.stderr
    message = " ".join(run.stderr.split())
    assert "refusing to listen on 0.0.0.0 without tokens" in message
    assert "dbchaos token create" in message and "--tokens-file" in message
    assert "serving" not in run.stdout


def test_serve_refuses_a_broken_tokens_file_naming_the_entry(tmp_path: Path) -> None:
    path = tmp_path / "tokens.toml"
    path.write_text('[[token]]\nname = "ci"\nscope = "superuser"\nsha256 = "' + "0" * 64 + '"\n')
    run = dbchaos(
        "serve", "--tokens-file", str(path), "--port", str(free_port()), "--target", _unused_dsn(), timeout=30
    )
    assert run.returncode == 2, run.stdout + run.stderr
    message = " ".join(run.stderr.split())
    assert f"{path}: [[token]] #1 ('ci'): scope must be one of read, inject, admin, not 'superuser'" in message
    run = dbchaos("serve", "--port", str(free_port()), "--target", _unused_dsn(), DBCHAOS_TOKENS_FILE=str(path))
    assert run.returncode == 2 and "superuser" in run.stderr


def test_tokens_end_to_end_on_a_public_address(db: str, tmp_path: Path) -> None:
    path = tmp_path / "tokens.toml"
    tokens = {}
    for scope in ("read", "inject", "admin"):
        run = dbchaos("token", "create", "--scope", scope, "--name", f"{scope}-bot", "--json")
        body = json.loads(run.stdout)
        tokens[scope] = body["secret"]
        with path.open("a") as f:
            f.write(body["entry"] + "\n")

    # 0.0.0.0 on a free port, only for the seconds of this test; all traffic below is loopback
    with dbchaos_server(["--target", db, "--host", ALL_INTERFACES, "--tokens-file", str(path)], tmp_path) as server:
        assert "auth: 3 token(s)" in server.output()
        assert all(t not in server.output() for t in tokens.values())

        def get(path: str, token: str | None = None) -> httpx.Response:
            headers = {"Authorization": f"Bearer {token}"} if token else {}
            return httpx.get(server.url + path, headers=headers, timeout=10)

        assert get("/v1/health").status_code == 200
        assert get("/v1/faults").status_code == 401
        assert get("/v1/faults", tokens["read"]).json() == {"faults": []}
        created = httpx.post(
            server.url + "/v1/faults",
            json={"kind": "advisory-lock", "params": {"keys": [424242]}, "duration_s": 5},
            headers={"Authorization": f"Bearer {tokens['read']}"},
            timeout=10,
        )
        assert created.status_code == 403 and created.json()["code"] == "insufficient_scope"

        url = ["--server", server.url]
        no_token = dbchaos("status", *url)
        assert no_token.returncode == 1
        assert "DBCHAOS_TOKEN" in no_token.stderr and "HTTP 401" in no_token.stderr
        assert dbchaos("status", *url, "--json", DBCHAOS_TOKEN=tokens["read"]).returncode == 0
        assert dbchaos("status", *url, "--token", tokens["read"]).returncode == 0
        low = dbchaos("reset", *url, DBCHAOS_TOKEN=tokens["inject"])
        assert low.returncode == 1 and "needs a token with scope 'admin'" in " ".join(low.stderr.split())
        assert dbchaos("reset", *url, "--token", tokens["admin"]).returncode == 0
        gone = dbchaos("abort", "no-such-fault", *url, "--token", tokens["inject"])
        assert gone.returncode == 1 and "HTTP 404" in gone.stderr
        assert all(t not in server.output() for t in tokens.values())
