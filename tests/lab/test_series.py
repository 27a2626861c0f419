"""The lab's per-second series and the traffic's error classification (no database needed)."""

from __future__ import annotations

import random

import httpx

from dbchaos.lab.dbwatch import MAX_TREE_NODES, lock_tree
from dbchaos.lab.series import Series, percentile
from dbchaos.lab.traffic import classify, next_call
from dbchaos.observe.activity import HeldLock, Session, Snapshot


class Clock:
    def __init__(self, t: float) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def test_percentiles_are_nearest_rank() -> None:
    values = sorted(float(v) for v in range(1, 101))
    assert percentile(values, 50) == 50 and percentile(values, 95) == 95 and percentile(values, 99) == 99
    assert percentile([], 95) is None and percentile([7.0], 99) == 7.0


def test_requests_count_in_the_second_they_finish_and_only_finished_seconds_are_served() -> None:
    clock = Clock(1000.2)
    series = Series(keep_s=10, clock=clock)
    series.record_request("GET /items", 0.010, error_kind=None)
    series.record_request("GET /items", 0.020, error_kind="pool_timeout", detail="QueuePool limit of size 5 ...")
    series.record_in_flight(3)
    series.record_database(
        blocked=2,
        blocked_app=1,
        idle_in_transaction=1,
        sessions=9,
        connections=12,
        max_connections=300,
        longest_wait_s=1.5,
    )
    assert series.buckets() == []  # second 1000 is not over yet
    clock.t = 1003.5  # two quiet seconds are shown as empty ones
    series.record_request("GET /items/{id}", 5.0, error_kind="timeout", timed_out=True)
    done = [b.as_dict() for b in series.buckets()]
    assert [b["t"] for b in done] == [1000, 1001, 1002]
    first = done[0]
    assert (first["requests"], first["ok"], first["errors"], first["error_rate"]) == (2, 1, 1, 0.5)
    assert first["error_kinds"] == {"pool_timeout": 1}
    assert first["error_details"]["pool_timeout"].startswith("QueuePool limit")
    assert (first["in_flight"], first["blocked"], first["blocked_app"]) == (3, 2, 1)
    assert (first["connections"], first["max_connections"], first["longest_wait_s"]) == (12, 300, 1.5)
    assert done[1]["requests"] == 0 and done[1]["p95_ms"] is None
    current = series.buckets(since=1002, include_current=True)
    assert [b.t for b in current] == [1003] and current[0].timeouts == 1


def test_the_series_is_bounded() -> None:
    clock = Clock(0.0)
    series = Series(keep_s=5, clock=clock)
    for t in range(20):
        clock.t = float(t)
        series.record_request("GET /items", 0.01, error_kind=None)
    assert [b.t for b in series.buckets(include_current=True)] == [15, 16, 17, 18, 19]


def test_errors_are_classified_from_the_demo_answers() -> None:
    pool = httpx.Response(500, json={"error": "pool_timeout", "detail": "QueuePool limit of size 5 overflow 10"})
    assert classify(pool) == ("pool_timeout", "QueuePool limit of size 5 overflow 10")
    lock = httpx.Response(503, json={"error": "database_error", "sqlstate": "55P03", "detail": "lock timeout"})
    assert classify(lock) == ("sqlstate_55P03", "lock timeout")
    assert classify(httpx.Response(502, text="bad gateway")) == ("http_502", None)
    assert classify(httpx.Response(404, json={"detail": "no item"})) == (None, None)


def test_the_mix_covers_the_four_endpoints_and_orders_carry_a_request_id() -> None:
    rng = random.Random(1)
    calls = [next_call(rng) for _ in range(400)]
    assert {c.endpoint for c in calls} == {
        "GET /items",
        "GET /items/{id}",
        "POST /orders",
        "GET /customers/{id}/orders",
    }
    orders = [c for c in calls if c.method == "POST"]
    assert all(c.headers and len(c.headers["X-Request-Id"]) == 32 for c in orders)
    assert all(c.json and 1 <= c.json["lines"][0]["item_id"] <= 10 for c in orders)


def _session(pid: int, app: str, state: str, blocked_by: tuple[int, ...] = (), database: str = "shop") -> Session:
    return Session(
        pid,
        "shop",
        app,
        state,
        f"query of {pid}",
        "Lock" if blocked_by else None,
        None,
        1.0,
        2.0,
        None,
        blocked_by,
        database,
    )


def test_the_lock_tree_has_its_roots_their_locks_and_every_waiter_once() -> None:
    fault = "dbchaos:0d1e2f3a-0000-4000-8000-00000000abcd"
    sessions = {
        10: _session(10, fault, "idle in transaction"),
        # a queue of mutually conflicting waiters: each is also blocked by every earlier one
        **{p: _session(p, "shop-demo", "active", (10, *range(11, p))) for p in range(11, 41)},
        50: _session(50, "elsewhere", "active", (10,), database="other"),
    }
    lock = HeldLock(10, "relation", "AccessExclusiveLock", True, "public.items", None)
    tree = lock_tree(Snapshot(0.0, sessions, {10: (lock,)}), "shop")
    (root,) = tree["roots"]
    assert root["pid"] == 10 and root["fault_id"] == fault[len("dbchaos:") :]
    assert root["locks"] == [
        {"locktype": "relation", "mode": "AccessExclusiveLock", "granted": True, "relation": "public.items"}
    ]

    def pids(node: dict[str, object]) -> list[int]:
        out = [int(node["pid"])]  # type: ignore[call-overload]
        for child in node["waits"]:  # type: ignore[attr-defined]
            out += pids(child)
        return out

    drawn = pids(root)
    assert sorted(drawn) == [10, *range(11, 41)]  # each once: no path explosion, other databases left out
    assert len(drawn) <= MAX_TREE_NODES and tree["omitted"] == 0
    assert [b["pid"] for b in tree["blocked"]] == list(range(11, 41))
    assert [i["pid"] for i in tree["idle_in_transaction"]] == [10]
