"""The impact computation over a snapshot: who waits on a fault, and the lock tree."""

from __future__ import annotations

import time

from dbchaos.observe.activity import Session, Snapshot, impact_of


def _session(pid: int, blocked_by: tuple[int, ...] = ()) -> Session:
    return Session(
        pid,
        "app",
        "app",
        "active",
        "LOCK TABLE items",
        "Lock" if blocked_by else None,
        None,
        1.0,
        1.0,
        None,
        blocked_by,
        "shop",
    )


def _count(nodes: list[dict[str, object]] | tuple[dict[str, object], ...]) -> int:
    return sum(1 + _count(n["waits"]) for n in nodes)  # type: ignore[arg-type,misc]


def test_a_queue_of_conflicting_waiters_is_a_tree_of_one_node_each() -> None:
    # pg_blocking_pids names the holder and every earlier conflicting waiter: pid p waits on 1..p-1
    n = 40
    sessions = [_session(1)] + [_session(p, tuple(range(1, p))) for p in range(2, n + 1)]
    snap = Snapshot(taken_at=0.0, sessions={s.pid: s for s in sessions})
    t0 = time.monotonic()
    impact = impact_of(snap, [1])
    assert time.monotonic() - t0 < 0.5
    assert impact.blocked_count == n - 1
    assert _count(impact.tree) == n
    assert {b.session.pid: b.depth for b in impact.blocked} == {p: 1 for p in range(2, n + 1)}


def test_a_chain_keeps_its_depth() -> None:
    sessions = [_session(1), _session(2, (1,)), _session(3, (2,)), _session(4, (3,)), _session(9)]
    impact = impact_of(Snapshot(0.0, {s.pid: s for s in sessions}), [1])
    assert [(b.session.pid, b.depth) for b in impact.blocked] == [(2, 1), (3, 2), (4, 3)]
    [root] = impact.tree
    assert root["waits"][0]["pid"] == 2 and root["waits"][0]["waits"][0]["waits"][0]["pid"] == 4
