"""Acceptance 3: the same fault (ACCESS EXCLUSIVE on items for 6 s) against the lab's demo shop
under steady traffic, first naive, then hardened; asserted from the lab's recorded traffic:
the naive shop hangs and exhausts its pool, the hardened one fails fast and recovers."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest

from tests.helpers import wait_for
from tests.lab.lab_proc import LabProcess, dbchaos_lab, private_tmp

LOCK_S = 6.0
#: the naive shop's pool timeout: well inside the lock, so its QueuePool errors show in a short run
POOL_TIMEOUT_S = 3.0
pytestmark = pytest.mark.drill  # two faults under live traffic: about 40 s


@pytest.fixture
def lab() -> Iterator[LabProcess]:
    with private_tmp() as tmp, dbchaos_lab(tmp, "--pool-timeout", str(POOL_TIMEOUT_S)) as running:
        yield running


def _lock_items(lab: LabProcess) -> dict[str, Any]:
    res = lab.send("POST", "/v1/faults", {"kind": "table-lock", "params": {"tables": ["items"]}, "duration_s": LOCK_S})
    assert res.status_code == 201, res.text
    fault: dict[str, Any] = res.json()
    return fault


def _window(lab: LabProcess, fault_id: str, after_s: float) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The fault's window (once ended) and the buckets up to ``after_s`` past its end."""

    def ended() -> dict[str, Any] | None:
        data: dict[str, Any] = lab.get("/lab/api/traffic?window_s=300")
        (w,) = [w for w in data["faults"] if w["id"] == fault_id]
        if w["end"] is None or data["buckets"][-1]["t"] < w["end"] + after_s:
            return None
        return data

    data = wait_for(ended, LOCK_S + after_s + 10, 0.5, what="the fault to end and the recovery to be recorded")
    assert data is not None
    (w,) = [w for w in data["faults"] if w["id"] == fault_id]
    return w, data["buckets"]


def _between(buckets: list[dict[str, Any]], start: float, end: float) -> list[dict[str, Any]]:
    return [b for b in buckets if start <= b["t"] < end]


def _sum(buckets: list[dict[str, Any]], key: str) -> int:
    return sum(int(b[key]) for b in buckets)


def _kinds(buckets: list[dict[str, Any]]) -> dict[str, int]:
    out: dict[str, int] = {}
    for b in buckets:
        for k, n in b["error_kinds"].items():
            out[k] = out.get(k, 0) + n
    return out


def test_naive_hangs_and_exhausts_its_pool_hardened_fails_fast_and_recovers(lab: LabProcess) -> None:
    wait_for(lambda: len(lab.get("/lab/api/traffic")["buckets"]) >= 6, 15, 0.5, what="a few seconds of traffic")
    assert lab.get("/lab/api/config")["mode"] == "naive"

    # ---- naive
    naive_fault = _lock_items(lab)
    w, buckets = _window(lab, naive_fault["id"], after_s=4)
    before = _between(buckets, w["start"] - 6, w["start"] - 1)
    during = _between(buckets, int(w["start"]) + 1, int(w["end"]))
    after = _between(buckets, w["end"] + 1, w["end"] + 4)
    baseline_rate = _sum(before, "ok") / len(before)
    assert baseline_rate >= 10 and _sum(before, "errors") == 0, before
    # hanging: almost nothing is answered while the lock is held, requests pile up waiting
    assert _sum(during, "ok") / len(during) < 0.2 * baseline_rate, during
    assert max(b["in_flight"] or 0 for b in during) >= 30
    # exhausted: the pool's 15 connections wait on the lock, the next requests get QueuePool errors
    assert max(b["blocked"] or 0 for b in during) >= 15
    naive_errors = _kinds([*during, *_between(buckets, int(w["end"]), w["end"] + 2)])
    assert naive_errors.get("pool_timeout", 0) >= 5, naive_errors
    details = [b["error_details"].get("pool_timeout", "") for b in during + after]
    assert any("QueuePool limit of size 5 overflow 10 reached" in d for d in details), details
    # the requests that waited were answered seconds late once the lock went
    assert max(b["max_ms"] or 0 for b in _between(buckets, int(w["end"]), w["end"] + 3)) >= 4000
    print(
        f"\nnaive: {baseline_rate:.0f}/s before; during the lock {_sum(during, 'ok')} answered, errors {naive_errors}"
    )

    # ---- hardened
    res = lab.send("PUT", "/lab/api/config", {"mode": "hardened"})
    assert res.status_code == 200 and res.json()["config"]["mode"] == "hardened", res.text
    time.sleep(4)  # let the naive backlog drain and a clean baseline build up
    hardened_fault = _lock_items(lab)
    w, buckets = _window(lab, hardened_fault["id"], after_s=5)
    during = _between(buckets, int(w["start"]) + 1, int(w["end"]))
    hardened_errors = _kinds(during)
    # fast 503s: the lock_timeout (55P03), answered at once; p95 of everything answered stays low
    assert hardened_errors.get("sqlstate_55P03", 0) >= 10, hardened_errors
    assert "pool_timeout" not in hardened_errors and "timeout" not in hardened_errors, hardened_errors
    assert all(b["p95_ms"] is not None and b["p95_ms"] < 1500 for b in during), [b["p95_ms"] for b in during]
    assert _sum(during, "ok") > 0  # what does not touch items keeps working
    assert max(b["in_flight"] or 0 for b in during) < 30
    # recovery: errors back to zero within a few seconds of the release
    after = _between(buckets, int(w["end"]), w["end"] + 5)
    clean = [b["t"] for b in after if b["errors"] == 0 and b["requests"] > 0]
    assert clean and clean[0] - w["end"] <= 3, after
    assert all(b["errors"] == 0 for b in after if b["t"] >= clean[0]), after
    print(
        f"hardened: during the lock {_sum(during, 'ok')} answered, errors {hardened_errors}, recovered after "
        f"{clean[0] - w['end']:.1f} s"
    )
