"""The CLI end to end, as a user runs it: real processes, real PostgreSQL."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import psycopg
import pytest

from tests.helpers import no_dbchaos_sessions, relation_locks, wait_for
from tests.server_proc import dbchaos_server, free_port


def dbchaos(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, COLUMNS="200")
    env.pop("DBCHAOS_TARGET_DSN", None)
    return subprocess.run(
        [sys.executable, "-m", "dbchaos", *args], capture_output=True, text=True, timeout=timeout, env=env
    )


def test_inject_shows_the_blocked_session_and_ctrl_c_reverts_fast(db: str, tmp_path: Path) -> None:
    err_log = tmp_path / "inject.err"
    with err_log.open("w") as err:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "dbchaos",
                "inject",
                "table-lock",
                "--target",
                db,
                "--for",
                "60s",
                "-p",
                "tables=items",
            ],
            stdout=subprocess.PIPE,
            stderr=err,
            text=True,
        )
    victim_done = threading.Event()

    def victim() -> None:
        with psycopg.connect(db, application_name="checkout-service") as conn:
            conn.execute("SELECT count(*) FROM items")
        victim_done.set()

    try:
        wait_for(lambda: "active:" in err_log.read_text(), 15.0, 0.05, what="the fault to be active")
        t = threading.Thread(target=victim)
        t.start()
        wait_for(lambda: "checkout-service" in err_log.read_text(), 5.0, 0.05, what="the live view to show the victim")
        assert "SELECT count(*) FROM items" in err_log.read_text()
        assert not victim_done.is_set()
        sent = time.monotonic()
        proc.send_signal(signal.SIGINT)
        wait_for(lambda: not relation_locks(db, "items"), 2.0, 0.02, what="the lock to go after Ctrl-C")
        assert time.monotonic() - sent < 2.0
        out, _ = proc.communicate(timeout=10)
        assert proc.returncode == 0
        assert "reverted (aborted)" in out
        t.join(5)
        assert victim_done.is_set()
        assert no_dbchaos_sessions(db)
    finally:
        if proc.poll() is None:
            proc.kill()


def test_inject_json_runs_to_the_deadline(db: str) -> None:
    res = dbchaos("inject", "advisory-lock", "--target", db, "--for", "500ms", "-p", "keys=[7,8]", "--json")
    assert res.returncode == 0, res.stderr
    fault = json.loads(res.stdout)
    assert fault["state"] == "reverted" and fault["end_reason"] == "deadline"
    assert fault["kind"] == "advisory-lock"


def test_exit_codes(db: str) -> None:
    with psycopg.connect(db) as blocker:
        blocker.execute("LOCK TABLE items IN ACCESS EXCLUSIVE MODE")
        failed = dbchaos("inject", "table-lock", "--target", db, "-p", "tables=items", "--acquire-timeout", "200ms")
    assert failed.returncode == 1, failed.stderr
    assert "not granted" in failed.stdout + failed.stderr

    usage = [
        dbchaos("inject", "no-such-kind", "--target", db),
        dbchaos("inject", "table-lock", "--target", db, "-p", "tables=items", "--for", "soon"),
        dbchaos("inject", "table-lock", "--target", db, "-p", "tables=nope"),
        dbchaos("inject"),
        dbchaos("bogus-command"),
    ]
    for res in usage:
        assert res.returncode == 2, (res.args, res.stderr)
        assert res.stderr.strip()

    unreachable = dbchaos(
        "inject", "table-lock", "--target", f"postgresql://u@127.0.0.1:{free_port()}/x", "-p", "tables=t"
    )
    assert unreachable.returncode == 3, unreachable.stderr
    assert "cannot connect" in unreachable.stderr

    for cmd in (["status"], ["abort", "x"], ["reset"]):
        res = dbchaos(*cmd, "--server", f"http://127.0.0.1:{free_port()}")
        assert res.returncode == 3, res.stderr
        assert "cannot reach the dbchaos server" in res.stderr
    as_json = dbchaos("status", "--server", f"http://127.0.0.1:{free_port()}", "--json")
    assert json.loads(as_json.stdout)["error"]["code"] == "server_unreachable"


def test_status_abort_and_reset_against_a_server(db: str, tmp_path: Path) -> None:
    with dbchaos_server(["--target", db], tmp_path) as server, server.client() as client:
        a = client.post("/v1/faults", json={"kind": "table-lock", "params": {"tables": ["items"]}}).json()
        b = client.post("/v1/faults", json={"kind": "table-lock", "params": {"tables": ["users"]}}).json()
        listed = dbchaos("status", "--server", server.url, "--json")
        assert listed.returncode == 0
        assert {f["id"] for f in json.loads(listed.stdout)["faults"]} == {a["id"], b["id"]}
        human = dbchaos("status", "--server", server.url)
        assert a["id"] in human.stdout and "active" in human.stdout

        one = dbchaos("status", a["id"], "--server", server.url, "--json")
        assert json.loads(one.stdout)["id"] == a["id"]
        assert dbchaos("status", "nope", "--server", server.url).returncode == 1

        aborted = dbchaos("abort", a["id"], "--server", server.url, "--json")
        assert aborted.returncode == 0 and json.loads(aborted.stdout)["state"] == "reverted"
        assert relation_locks(db, "items") == []

        reset = dbchaos("reset", "--server", server.url)
        assert reset.returncode == 0 and "reverted 1 fault" in reset.stdout
        assert relation_locks(db, "users") == []


def test_kinds_lists_every_kind_with_its_parameters() -> None:
    res = dbchaos("kinds", "--json")
    assert res.returncode == 0
    kinds = {k["kind"]: k for k in json.loads(res.stdout)["kinds"]}
    assert {"table-lock", "row-lock", "advisory-lock", "idle-transaction", "connection-exhaustion"} <= set(kinds)
    human = dbchaos("kinds")
    assert "table-lock" in human.stdout and "mode" in human.stdout


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["-p", "tables=items", "-p", "tables=users"], ["items", "users"]),
        (["-p", "tables=items"], ["items"]),
        (["--params-json", '{"tables": ["orders"]}'], ["orders"]),
    ],
)
def test_param_parsing(db: str, args: list[str], expected: list[str]) -> None:
    res = dbchaos("inject", "table-lock", "--target", db, "--for", "200ms", "--json", *args)
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout)["params"]["tables"] == [f"public.{t}" for t in expected]
