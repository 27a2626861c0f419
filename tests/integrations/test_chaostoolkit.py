"""A real ``chaos run`` (Chaos Toolkit from PyPI) of an experiment that uses the dbchaos
extension against a real ``dbchaos serve`` with tokens (issue 7, Acceptance 3)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import uuid
from pathlib import Path
from typing import Any

import psycopg
import pytest

from dbchaos.api.auth import TokenScope, generate_token
from tests.helpers import no_dbchaos_sessions, relation_locks, wait_for
from tests.server_proc import dbchaos_server

CHAOS = Path(sys.executable).with_name("chaos")
pytestmark = pytest.mark.skipif(not CHAOS.exists(), reason="chaostoolkit is not installed (pip install -e '.[dev]')")


def provider(module: str, func: str, **arguments: Any) -> dict[str, Any]:
    return {
        "type": "python",
        "module": f"dbchaos.chaostoolkit.{module}",
        "func": func,
        "arguments": arguments,
        "secrets": ["dbchaos"],
    }


def experiment(url: str, run: str) -> dict[str, Any]:
    """Steady state: no session waits behind our faults. Method: lock ``items``, and see the
    app's query blocked behind it; by the end of the pause the app gave up (its lock_timeout),
    so the steady state holds again. Rollback: end the fault."""
    labels = {"experiment": "items-lock", "run": run}
    return {
        "version": "1.0.0",
        "title": "A table lock on items blocks the app's reads, and the app gives up by itself",
        "description": "dbchaos extension acceptance test",
        "tags": ["dbchaos", "postgresql"],
        "configuration": {"dbchaos_url": url, "dbchaos_timeout_s": 20},
        "secrets": {"dbchaos": {"dbchaos_token": {"type": "env", "key": "DBCHAOS_TEST_TOKEN"}}},
        "steady-state-hypothesis": {
            "title": "Nobody waits behind a dbchaos fault",
            "probes": [
                {
                    "type": "probe",
                    "name": "no-blocked-sessions",
                    "tolerance": 0,
                    "provider": provider("probes", "blocked_sessions", labels=labels),
                }
            ],
        },
        "method": [
            {
                "type": "action",
                "name": "lock-items",
                "provider": provider(
                    "actions",
                    "inject_fault",
                    kind="table-lock",
                    params={"tables": ["items"], "mode": "ACCESS EXCLUSIVE"},
                    duration_s=60,
                    labels=labels,
                ),
            },
            {
                "type": "probe",
                "name": "the-app-is-blocked",
                "provider": provider("probes", "blocked_sessions", labels=labels, at_least=1, timeout_s=15),
                "pauses": {"after": 4},
            },
            {
                "type": "probe",
                "name": "the-fault-still-holds",
                "provider": provider("probes", "fault_state", labels=labels),
            },
        ],
        "rollbacks": [
            {"type": "action", "name": "end-the-lock", "provider": provider("actions", "abort_fault", labels=labels)}
        ],
    }


def test_chaos_run_injects_sees_the_blocked_session_and_reverts(db: str, tmp_path: Path) -> None:
    token = generate_token(TokenScope.INJECT, "chaostoolkit")
    tokens = tmp_path / "tokens.toml"
    tokens.write_text(token.entry_toml())
    run = uuid.uuid4().hex[:8]
    app_errors: list[str] = []

    def app_query() -> None:
        """The application: reads items with a 2 s lock_timeout, as a hardened service would."""
        with psycopg.connect(db, application_name="the-app") as conn:
            conn.execute("SET lock_timeout = '2s'")
            try:
                conn.execute("SELECT count(*) FROM items")
            except psycopg.errors.LockNotAvailable as exc:
                app_errors.append(exc.sqlstate or "")

    with dbchaos_server(["--target", db, "--tokens-file", str(tokens)], tmp_path) as server:
        source = tmp_path / "experiment.json"
        source.write_text(json.dumps(experiment(server.url, run), indent=2))
        journal = tmp_path / "journal.json"
        env = dict(os.environ, DBCHAOS_TEST_TOKEN=token.secret)
        env.pop("DBCHAOS_URL", None)
        env.pop("DBCHAOS_TOKEN", None)
        cmd = [
            str(CHAOS),
            "--no-version-check",
            "--log-file",
            str(tmp_path / "chaostoolkit.log"),
            "--settings",
            str(tmp_path / "settings.yaml"),
            "run",
            "--journal-path",
            str(journal),
            str(source),
        ]
        chaos = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        try:
            wait_for(lambda: any(granted for _, _, granted, _ in relation_locks(db, "items")), 30, 0.05, "the lock")
            app = threading.Thread(target=app_query)
            app.start()
            out, _ = chaos.communicate(timeout=90)
            app.join(10)
        finally:
            if chaos.poll() is None:
                chaos.kill()
        log = out.decode(errors="replace")
        assert chaos.returncode == 0, log

        ran = json.loads(journal.read_text())
        assert ran["status"] == "completed" and ran["deviated"] is False, log
        assert ran["steady_states"]["before"]["steady_state_met"] is True
        assert ran["steady_states"]["after"]["steady_state_met"] is True
        steps = {r["activity"]["name"]: r for r in ran["run"]}
        injected = steps["lock-items"]
        assert injected["status"] == "succeeded", injected
        assert injected["output"]["state"] == "active" and injected["output"]["labels"]["run"] == run
        seen = steps["the-app-is-blocked"]
        assert seen["status"] == "succeeded" and seen["output"] >= 1, seen  # the probe saw the app's session
        assert steps["the-fault-still-holds"]["output"] == "active"
        (rollback,) = ran["rollbacks"]
        assert rollback["status"] == "succeeded", rollback
        (ended,) = rollback["output"]
        assert ended["id"] == injected["output"]["id"]
        assert ended["state"] == "reverted" and ended["end_reason"] == "aborted"
        assert app_errors == ["55P03"]  # the app's read gave up on its lock_timeout

        assert relation_locks(db, "items") == []
        assert no_dbchaos_sessions(db)
        with server.client() as client:
            fault = client.get(f"/v1/faults/{ended['id']}", headers={"Authorization": f"Bearer {token.secret}"}).json()
            assert fault["state"] == "reverted"


def test_the_extension_imports_without_chaostoolkit(tmp_path: Path) -> None:
    """``dbchaos.chaostoolkit`` must not need ``chaoslib`` (only ``discover`` does)."""
    shadow = tmp_path / "shadow"
    (shadow / "chaoslib").mkdir(parents=True)
    (shadow / "chaoslib" / "__init__.py").write_text("raise ImportError('chaostoolkit is not installed here')\n")
    code = (
        "import dbchaos.chaostoolkit, dbchaos.chaostoolkit.actions as a, dbchaos.chaostoolkit.probes as p; "
        "print(sorted(a.__all__ + p.__all__))"
    )
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(shadow), os.environ.get("PYTHONPATH", "")]))
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=False)
    assert res.returncode == 0, res.stderr
    assert "blocked_sessions" in res.stdout and "inject_fault" in res.stdout


def test_chaos_discover_lists_the_activities(tmp_path: Path) -> None:
    res = subprocess.run(
        [str(CHAOS), "--no-version-check", "--no-log-file", "discover", "--no-install", "--no-system-info", "dbchaos"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=False,
    )
    assert res.returncode == 0, res.stdout + res.stderr
    found = json.loads((tmp_path / "discovery.json").read_text())
    names = {(a["type"], a["name"]) for a in found["activities"]}
    assert {("action", "inject_fault"), ("action", "abort_fault"), ("action", "reset")} <= names
    assert {("probe", "fault_state"), ("probe", "blocked_sessions"), ("probe", "active_faults")} <= names
