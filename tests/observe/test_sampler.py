"""The experiment observer against real PostgreSQL: what it reports is what a user would
see in ``pg_stat_activity``, ``pg_locks`` and ``pg_stat_database``."""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import psycopg
import pytest

from dbchaos.observe.activity import Session, Snapshot
from dbchaos.observe.sampler import Observer, Phase, Sample, WaitingSession, lock_trees, samples_in
from dbchaos.targets import Target
from tests.helpers import query


@asynccontextmanager
async def observer(dsn: str, **kwargs: Any) -> AsyncIterator[Observer]:
    obs = Observer(Target("t", dsn), instance="test", **kwargs)
    await obs.connect()
    try:
        yield obs
    finally:
        await obs.stop()


async def connect(dsn: str, name: str) -> psycopg.AsyncConnection[Any]:
    return await psycopg.AsyncConnection.connect(dsn, autocommit=True, application_name=name)


async def sample_until(obs: Observer, check: Callable[[Sample], bool], timeout: float = 5.0) -> Sample:
    deadline = time.monotonic() + timeout
    while True:
        s = await obs.sample()
        if s.ok and check(s):
            return s
        if time.monotonic() > deadline:
            raise AssertionError(f"no sample matched within {timeout}s; last: {s.as_dict()}")
        await asyncio.sleep(0.05)


async def in_background(stmt: Awaitable[Any]) -> asyncio.Task[Any]:
    task: asyncio.Task[Any] = asyncio.ensure_future(stmt)
    await asyncio.sleep(0)
    return task


def test_a_blocked_session_shows_as_waiting_with_a_growing_wait_and_a_lock_tree(db: str) -> None:
    async def scenario() -> None:
        holder = await connect(db, "holder")
        waiter = await connect(db, "waiter")
        try:
            await holder.execute("BEGIN; LOCK TABLE items IN ACCESS EXCLUSIVE MODE")
            blocked = await in_background(waiter.execute("SELECT count(*) FROM items"))
            async with observer(db) as obs:
                first = await sample_until(obs, lambda s: s.blocked_sessions == 1)
                await asyncio.sleep(0.3)
                second = await sample_until(obs, lambda s: s.blocked_sessions == 1)
            for s in (first, second):
                assert s.observation is not None
                [w] = s.observation.waiting
                assert w.pid == waiter.info.backend_pid and w.application_name == "waiter"
                assert w.blocked_by == (holder.info.backend_pid,)
                assert (w.locktype, w.mode, w.relation) == ("relation", "AccessShareLock", "public.items")
                [tree] = s.observation.lock_trees
                assert tree["pid"] == holder.info.backend_pid and tree["application_name"] == "holder"
                assert [c["pid"] for c in tree["waits"]] == [waiter.info.backend_pid]
            assert first.observation is not None and second.observation is not None
            grew = second.observation.waiting[0].wait_s - first.observation.waiting[0].wait_s
            assert grew >= 0.25, grew
            assert second.observation.max_wait_s == second.observation.waiting[0].wait_s
            await holder.execute("ROLLBACK")
            await asyncio.wait_for(blocked, 5)
        finally:
            await holder.close()
            await waiter.close()

    asyncio.run(scenario())


def test_idle_in_transaction_count_and_age_grow(db: str) -> None:
    async def scenario() -> None:
        idle = await connect(db, "idler")
        try:
            async with observer(db) as obs:
                before = await obs.sample()
                assert before.observation is not None
                assert before.observation.idle_in_transaction.count == 0
                assert before.observation.idle_in_transaction.oldest_xact_s is None
                await idle.execute("BEGIN")
                await idle.execute("SELECT 1")
                a = await sample_until(
                    obs, lambda s: s.observation is not None and s.observation.idle_in_transaction.count == 1
                )
                await asyncio.sleep(0.3)
                b = await obs.sample()
            assert a.observation is not None and b.observation is not None
            assert b.observation.idle_in_transaction.count == 1
            assert b.observation.sessions_by_state.get("idle in transaction") == 1
            age_a = a.observation.idle_in_transaction.oldest_xact_s
            age_b = b.observation.idle_in_transaction.oldest_xact_s
            assert age_a is not None and age_b is not None and age_b - age_a >= 0.25
            idle_b = b.observation.idle_in_transaction.longest_idle_s
            assert idle_b is not None and 0.25 <= idle_b <= age_b
        finally:
            await idle.close()

    asyncio.run(scenario())


def test_connection_counts_match_pg_stat_activity_without_the_observer(db: str) -> None:
    async def scenario() -> None:
        extra = [await connect(db, f"extra{i}") for i in range(3)]
        checker = await connect(db, "checker")  # one connection: no backend of ours comes or goes meanwhile
        try:
            async with observer(db) as obs:
                own = obs.backend_pid

                async def expected() -> tuple[int, int]:
                    # what a user counts in pg_stat_activity, leaving out the observer
                    cur = await checker.execute(
                        "SELECT count(*), count(*) FILTER (WHERE datname = current_database())"
                        " FROM pg_stat_activity WHERE backend_type = 'client backend' AND pid <> %s",
                        (own,),
                    )
                    row = await cur.fetchone()
                    assert row is not None
                    return int(row[0]), int(row[1])

                for _ in range(20):  # a backend of an earlier test may still be exiting: retry until stable
                    want_before = await expected()
                    s = await obs.sample()
                    want_after = await expected()
                    assert s.observation is not None
                    c = s.observation.connections
                    if want_before == want_after:
                        break
                    await asyncio.sleep(0.05)
                o = s.observation
                assert o is not None
                assert (c.used, c.database) == want_after
                assert c.database >= 4 and o.sessions == c.database
                assert own not in {w.pid for w in o.waiting}
                settings = query(
                    db,
                    "SELECT current_setting('max_connections')::int,"
                    " current_setting('superuser_reserved_connections')::int",
                )[0]
                assert (c.max, c.superuser_reserved) == settings
                assert c.available == c.max - c.superuser_reserved - c.reserved - c.used - 1
        finally:
            for conn in [*extra, checker]:
                await conn.close()

    asyncio.run(scenario())


def test_a_deadlock_increments_the_deadlocks_delta(db: str) -> None:
    async def scenario() -> None:
        async with observer(db) as obs:
            first = await obs.sample()
            assert first.observation is not None and first.observation.deltas is None  # nothing to diff yet
            a = await connect(db, "dl-a")
            b = await connect(db, "dl-b")
            try:
                await b.execute("SET deadlock_timeout = '100ms'")
                await a.execute("BEGIN; UPDATE items SET stock = stock + 1 WHERE id = 1")
                await b.execute("BEGIN; UPDATE items SET stock = stock + 1 WHERE id = 2")
                a_waits = await in_background(a.execute("UPDATE items SET stock = stock + 1 WHERE id = 2"))
                await sample_until(obs, lambda s: s.blocked_sessions == 1)
                with pytest.raises(psycopg.errors.DeadlockDetected):
                    await b.execute("UPDATE items SET stock = stock + 1 WHERE id = 1")
                await asyncio.wait_for(a_waits, 5)
                await a.execute("ROLLBACK")
            finally:
                await a.close()
                await b.close()  # a backend reports its statistics when it exits
            seen = {"deadlocks": 0, "xact_rollback": 0}

            def counted(s: Sample) -> bool:
                for k in seen:
                    seen[k] += (s.observation.deltas or {}).get(k, 0) if s.observation else 0
                # each backend reports when it exits, in its own time: wait for both
                return seen["deadlocks"] >= 1 and seen["xact_rollback"] >= 2

            await sample_until(obs, counted)
            assert seen == {"deadlocks": 1, "xact_rollback": 2}

    asyncio.run(scenario())


def test_a_rollback_increments_the_rollbacks_delta_and_commits_count_too(db: str) -> None:
    async def scenario() -> None:
        async with observer(db) as obs:
            await obs.sample()
            conn = await connect(db, "rollbacker")
            try:
                await conn.execute("BEGIN; INSERT INTO users (email, name) VALUES ('r@example.com', 'r')")
                await conn.execute("ROLLBACK")
                await conn.execute("UPDATE items SET stock = stock WHERE id = 1")  # one commit
            finally:
                await conn.close()
            rollbacks = 0

            def counted(s: Sample) -> bool:
                nonlocal rollbacks
                rollbacks += (s.observation.deltas or {}).get("xact_rollback", 0) if s.observation else 0
                return rollbacks >= 1

            await sample_until(obs, counted)
            assert rollbacks == 1
            deltas = [s.observation.deltas for s in obs.samples if s.observation and s.observation.deltas]
            assert sum(d["deadlocks"] for d in deltas) == 0
            assert sum(d["xact_commit"] for d in deltas) >= 1

    asyncio.run(scenario())


def test_the_loop_samples_at_its_rate_marks_phases_and_serialises_to_json(db: str) -> None:
    async def scenario() -> Observer:
        got: list[Sample] = []
        obs = Observer(Target("t", db), instance="loop", rate_hz=10, on_sample=got.append)
        async with obs:
            await asyncio.sleep(0.5)
            obs.mark(Phase.FAULT, label="pretend fault")
            await asyncio.sleep(0.5)
            obs.mark("recovery")
            await asyncio.sleep(0.5)
        assert not obs.running
        assert [s.seq for s in got] == [s.seq for s in obs.samples]
        return obs

    obs = asyncio.run(scenario())
    samples = obs.samples
    assert 10 <= len(samples) <= 20, len(samples)  # 1.5 s at 10/s, plus the first
    assert all(s.ok for s in samples)
    phases = [s.phase for s in samples]
    assert phases == sorted(phases, key=["baseline", "fault", "recovery"].index)
    assert all(len(samples_in(samples, p)) >= 3 for p in Phase)
    gaps = [b.mono - a.mono for a, b in itertools.pairwise(samples)]
    assert sorted(gaps)[len(gaps) // 2] == pytest.approx(0.1, abs=0.03)
    doc = json.loads(json.dumps(obs.as_dict()))
    assert doc["schema"] == "dbchaos.observer/1" and doc["rate_hz"] == 10
    assert [m["phase"] for m in doc["marks"]] == ["fault", "recovery"] and doc["marks"][0]["label"] == "pretend fault"
    last = doc["samples"][-1]
    assert set(last) == {
        "seq",
        "time",
        "t",
        "phase",
        "duration_ms",
        "error",
        "sessions",
        "waiting",
        "lock_trees",
        "lock_trees_omitted",
        "idle_in_transaction",
        "connections",
        "database",
    }
    assert last["time"].endswith("Z") and last["phase"] == "recovery"
    assert set(last["database"]) == {
        "xact_commit",
        "xact_rollback",
        "deadlocks",
        "conflicts",
        "temp_files",
        "temp_bytes",
    }


def test_samples_are_bounded_and_a_lost_connection_is_a_recorded_gap(db: str) -> None:
    async def scenario() -> None:
        async with observer(db, max_samples=3) as obs:
            for _ in range(5):
                await obs.sample()
            assert [s.seq for s in obs.samples] == [3, 4, 5] and obs.dropped == 2
            pid = obs.backend_pid
            query(db, "SELECT pg_terminate_backend(%s)", (pid,))
            broken = await obs.sample()
            assert not broken.ok and broken.error and broken.as_dict()["sessions"] is None
            again = await obs.sample()  # reconnects
            assert again.ok and obs.backend_pid != pid
            app = query(db, "SELECT application_name FROM pg_stat_activity WHERE pid = %s", (obs.backend_pid,))
            assert app == [("dbchaos:test:observer",)]
            conn = obs._s.conn  # the observer's own session is read-only
            assert conn is not None
            cur = await conn.execute("SHOW default_transaction_read_only")
            assert (await cur.fetchone()) == ("on",)

    asyncio.run(scenario())


def test_lock_trees_of_a_long_conflicting_queue_stay_linear_and_bounded() -> None:
    # holder 1; waiters 2..41 each blocked by the holder and by every earlier waiter (a queue
    # of ACCESS EXCLUSIVE requests): a path expansion would have 2**40 nodes
    def session(pid: int, blocked_by: tuple[int, ...]) -> Session:
        return Session(pid, None, f"s{pid}", "active", None, "Lock", "relation", 1.0, 1.0, None, blocked_by, None)

    sessions = {1: session(1, ())}
    waits = {}
    for pid in range(2, 42):
        sessions[pid] = session(pid, tuple(range(1, pid)))
        waits[pid] = WaitingSession(pid, f"s{pid}", None, 1.0, tuple(range(1, pid)), "relation", "x", "t", None)
    trees, omitted = lock_trees(Snapshot(0.0, sessions), waits, max_nodes=1000)
    assert omitted == 0
    [root] = trees
    assert root["pid"] == 1 and sorted(c["pid"] for c in root["waits"]) == list(range(2, 42))

    trees, omitted = lock_trees(Snapshot(0.0, sessions), waits, max_nodes=10)
    assert len(trees[0]["waits"]) == 9 and omitted == 31

    # a cycle (a deadlock before deadlock_timeout): no root, still shown
    cyc = {3: session(3, (4,)), 4: session(4, (3,))}
    trees, _ = lock_trees(Snapshot(0.0, cyc), {}, max_nodes=10)
    assert [t["pid"] for t in trees] == [3] and [c["pid"] for c in trees[0]["waits"]] == [4]
