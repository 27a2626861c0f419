"""`dbchaos run` end to end: a real victim app (the lab's demo shop), real PostgreSQL, real faults.

Acceptance of the experiment issue: the same experiment (20 concurrent probes, ACCESS EXCLUSIVE
on the victim's table for 10 s, "p95 < 2s during the fault, recovers within 2 s") deviates
against the naive configuration and holds against the hardened one.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from dbchaos.reports import figures
from dbchaos.reports.journal import load_journal
from tests.helpers import dbchaos_lock_count, no_dbchaos_sessions, query
from tests.lab.demo_proc import demo_shop
from tests.pg import PgServer


def run_cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "dbchaos", "run", *args], capture_output=True, text=True, timeout=timeout
    )


def experiment(
    tmp: Path, dsn: str, url: str, *, duration: str = "10s", halt: str = "", name: str = "items-lock"
) -> Path:
    path = tmp / f"{name}.yaml"
    path.write_text(
        f"""
name: {name}
target: "{dsn}"
baseline: 2s
recovery: 4s
probes:
  - name: get-items
    type: http
    url: {url}/items?limit=5
    timeout: 8s
    rate: 20/s
    concurrency: 20
    expect_status: [200]
  - name: place-order
    type: http
    method: POST
    url: {url}/orders
    json: {{customer_id: 1, lines: [{{item_id: 2, qty: 1}}]}}
    timeout: 2s
    rate: 4/s
    concurrency: 10
    expect_status: [201]
    committed_check: "{url}/orders/by-request/{{request_id}}"
hypothesis:
  - tolerance: p95 < 2s
    phase: during
  - recovers within 2s
{halt}
method:
  - name: lock-items
    kind: table-lock
    params:
      tables: [items]
      mode: ACCESS EXCLUSIVE
    duration: {duration}
report:
  json: {tmp / (name + ".json")}
  html: {tmp / (name + ".html")}
"""
    )
    return path


def _only_pg18(pg: PgServer) -> None:
    if pg.label == "pg15":
        pytest.skip("a 20 s end-to-end run; the runner's database work is covered on 15 by the unit tests")


@pytest.mark.drill  # two 16 s runs against the shop: with the slow drills, not in the fast suite
def test_naive_deviates_and_hardened_holds(pg: PgServer, victim_db: str, tmp_path: Path) -> None:
    _only_pg18(pg)
    with demo_shop(victim_db, tmp_path, pool_timeout=5) as naive:
        res = run_cli(str(experiment(tmp_path, victim_db, naive.url, name="naive")))
    assert res.returncode == 1, res.stdout + res.stderr
    j = load_journal(tmp_path / "naive.json")
    assert j.verdict == "deviated"
    during = figures.phase_stats(j, "during")
    assert during.p95_ms is not None and during.p95_ms > 2000
    errors = [r.error or "" for p in j.probes for r in p.results if not r.ok]
    assert any("QueuePool limit" in e for e in errors), errors[:5]
    assert j.faults[0].state == "reverted"
    assert j.faults[0].max_blocked >= 1
    assert max(s.blocked for s in j.samples) >= 1
    # the shop went on waiting for the lock after the client gave up: those orders were placed
    orders = next(p for p in j.probes if p.name == "place-order").results
    late = [r for r in orders if r.timed_out and r.committed]
    assert late, "some timed-out orders committed once the lock was released"
    for r in late:
        assert query(victim_db, "SELECT count(*) FROM orders WHERE request_id = %s", (r.request_id,)) == [(1,)]
    assert any("committed later" in f for f in j.findings)
    html = (tmp_path / "naive.html").read_text()
    assert "QueuePool limit" in html and 'data-verdict="deviated"' in html

    with demo_shop(victim_db, tmp_path, mode="hardened") as hardened:
        res = run_cli(str(experiment(tmp_path, victim_db, hardened.url, name="hardened")))
    assert res.returncode == 0, res.stdout + res.stderr
    j = load_journal(tmp_path / "hardened.json")
    assert j.verdict == "held"
    assert all(t.held for t in j.tolerances)
    # hardened fails fast: errors (503) during the fault, but no hanging request
    during = figures.phase_stats(j, "during")
    assert during.errors > 0
    assert during.p95_ms is not None and during.p95_ms < 2000
    hardened_orders = next(p for p in j.probes if p.name == "place-order").results
    assert not any(r.committed for r in hardened_orders), "a 503 order rolled back"
    assert no_dbchaos_sessions(victim_db)
    assert dbchaos_lock_count(victim_db) == 0


def test_a_tripped_halt_condition_stops_early_reverts_and_exits_4(pg: PgServer, victim_db: str, tmp_path: Path) -> None:
    _only_pg18(pg)
    halt = "halt:\n  - blocked_sessions > 3\n"
    with demo_shop(victim_db, tmp_path, pool_timeout=5) as naive:
        t0 = time.monotonic()
        res = run_cli(str(experiment(tmp_path, victim_db, naive.url, duration="60s", halt=halt, name="halt")))
        elapsed = time.monotonic() - t0
    assert res.returncode == 4, res.stdout + res.stderr
    assert elapsed < 30, "halted long before the 60 s fault's deadline"
    j = load_journal(tmp_path / "halt.json")
    assert j.verdict == "halted"
    assert j.halted is not None and j.halted.condition == "blocked_sessions > 3"
    assert j.faults[0].end_reason == "halted"
    assert no_dbchaos_sessions(victim_db)
    assert dbchaos_lock_count(victim_db) == 0


@pytest.mark.parametrize(
    ("body", "line", "needle"),
    [
        ("name: x\ntarget: '{dsn}'\nmethod:\n  - kind: table-lok\n    duration: 5s\n", 4, "table-lok"),
        (
            "name: x\ntarget: '{dsn}'\nmethod:\n  - kind: table-lock\n    params: {{tables: [items]}}\n"
            "    duration: 5 parsecs\n",
            6,
            "duration",
        ),
        ("name: x\nmethod:\n  - kind: table-lock\n    params: {{tables: [items]}}\n    duration: 5s\n", 1, "target"),
        ("name: x\ntarget: '{dsn}'\nmethod: [\n  - kind\n", 4, ""),
    ],
    ids=["unknown-kind", "bad-duration", "missing-target", "yaml-syntax"],
)
def test_bad_files_name_the_line_and_inject_nothing(db: str, tmp_path: Path, body: str, line: int, needle: str) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(body.format(dsn=db))
    res = run_cli(str(path), "--json")
    assert res.returncode == 2, res.stdout + res.stderr
    err = json.loads(res.stdout)["error"]
    assert f"bad.yaml:{line}:" in err["detail"]
    assert needle in err["detail"]
    assert query(db, "SELECT count(*) FROM pg_stat_activity WHERE application_name LIKE 'dbchaos:%'") == [(0,)]


def test_an_unreachable_target_exits_3(tmp_path: Path) -> None:
    path = tmp_path / "x.yaml"
    path.write_text(
        "name: x\ntarget: 'host=127.0.0.1 port=1 dbname=nope connect_timeout=2'\n"
        "method:\n  - kind: table-lock\n    params: {tables: [items]}\n    duration: 5s\n"
    )
    res = run_cli(str(path))
    assert res.returncode == 3, res.stdout + res.stderr
    assert "unreachable" in res.stderr
