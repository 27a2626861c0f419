"""The SQL probe against real PostgreSQL: timeouts, SQLSTATEs and request ids as an app sees them."""

from __future__ import annotations

import asyncio
import itertools
import statistics
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import psycopg
import pytest

from dbchaos.errors import InvalidInput, TargetUnreachable
from dbchaos.probes import ProbeRun, SqlProbe, SqlProbeConfig
from tests.helpers import query, wait_for


def run_probe(cfg: SqlProbeConfig, duration_s: float, **kwargs: Any) -> ProbeRun:
    async def scenario() -> ProbeRun:
        async with SqlProbe(cfg) as probe:
            return await probe.run(duration_s=duration_s, **kwargs)

    return asyncio.run(scenario())


@contextmanager
def table_lock(dsn: str, mode: str) -> Iterator[int]:
    """Hold ``LOCK TABLE items IN <mode> MODE`` in an open transaction; yields the holder's pid."""
    with psycopg.connect(dsn, autocommit=True, application_name="test-holder") as conn:
        conn.execute(f"BEGIN; LOCK TABLE items IN {mode} MODE")
        try:
            yield conn.info.backend_pid
        finally:
            conn.execute("ROLLBACK")


def probe_sessions(dsn: str, name: str) -> list[tuple[Any, ...]]:
    return query(dsn, "SELECT pid, state FROM pg_stat_activity WHERE application_name = %s", (f"dbchaos-probe:{name}",))


def test_statements_succeed_on_a_small_pool_of_tagged_connections(db: str) -> None:
    cfg = SqlProbeConfig("count", db, "SELECT count(*) FROM items", rate_hz=20, concurrency=3)
    seen: list[int] = []

    async def scenario() -> ProbeRun:
        async with SqlProbe(cfg) as probe:
            run = await probe.run(duration_s=0.5, on_result=lambda r: seen.append(len(probe_sessions(db, "count"))))
            assert 1 <= len(probe_sessions(db, "count")) <= 3
            return run

    run = asyncio.run(scenario())
    assert run.started == 10 and len(run.results) == 10
    assert all(r.ok and r.sqlstate is None and not r.timed_out for r in run.results)
    assert max(seen) <= 3
    wait_for(lambda: probe_sessions(db, "count") == [], what="the probe's connections to close")


def test_lock_timeout_gives_55P03_and_statement_timeout_gives_57014(db: str) -> None:
    base = {"statement": "SELECT count(*) FROM items", "rate_hz": 10, "concurrency": 5}
    with table_lock(db, "ACCESS EXCLUSIVE"):
        by_lock = run_probe(SqlProbeConfig("lt", db, lock_timeout_s=0.2, **base), 0.3)  # type: ignore[arg-type]
        by_stmt = run_probe(SqlProbeConfig("st", db, statement_timeout_s=0.2, **base), 0.3)  # type: ignore[arg-type]
    for run, state, cls in ((by_lock, "55P03", "LockNotAvailable"), (by_stmt, "57014", "QueryCanceled")):
        assert len(run.results) == 3
        for r in run.results:
            assert (r.ok, r.timed_out, r.sqlstate, r.error_class) == (False, True, state, cls)
            assert 0.18 <= r.latency_s < 1.5
    after = run_probe(SqlProbeConfig("lt", db, lock_timeout_s=0.2, **base), 0.2)  # type: ignore[arg-type]
    assert all(r.ok for r in after.results)


def test_an_ordinary_error_keeps_its_sqlstate_and_is_not_a_timeout(db: str) -> None:
    run = run_probe(SqlProbeConfig("bad", db, "SELECT * FROM no_such_table", rate_hz=10, concurrency=1), 0.2)
    assert run.results and all(
        (r.ok, r.timed_out, r.sqlstate, r.error_class) == (False, False, "42P01", "UndefinedTable") for r in run.results
    )
    assert run.results[0].error and "no_such_table" in run.results[0].error


def test_request_ids_reach_the_database_and_a_client_timeout_can_still_commit_later(db: str) -> None:
    query(db, "CREATE TABLE probe_log (request_id text PRIMARY KEY, at timestamptz DEFAULT clock_timestamp())")
    stmt = "INSERT INTO probe_log (request_id) SELECT %(request_id)s FROM items WHERE id = 1 FOR UPDATE"
    fast = run_probe(SqlProbeConfig("log", db, stmt, rate_hz=20, concurrency=2), 0.2)
    assert all(r.ok for r in fast.results)
    assert {r[0] for r in query(db, "SELECT request_id FROM probe_log")} == {r.request_id for r in fast.results}

    # the app gives up after 0.3 s but does not cancel: the INSERTs wait for the lock, then commit
    cfg = SqlProbeConfig("log", db, stmt, rate_hz=10, concurrency=5, timeout_s=0.3)

    async def scenario() -> tuple[ProbeRun, int]:
        holder = await psycopg.AsyncConnection.connect(db, autocommit=True)
        try:
            await holder.execute("BEGIN; SELECT * FROM items WHERE id = 1 FOR UPDATE")
            async with SqlProbe(cfg) as probe:
                run = await probe.run(duration_s=0.3)
                left = probe.abandoned
                assert query(db, "SELECT count(*) FROM probe_log")[0][0] == len(fast.results)  # still waiting
                await holder.execute("COMMIT")
                await asyncio.sleep(0)
                for _ in range(100):
                    if probe.abandoned == 0:
                        break
                    await asyncio.sleep(0.02)
                return run, left
        finally:
            await holder.close()

    run, left = asyncio.run(scenario())
    assert len(run.results) == 3 and left == 3
    for r in run.results:
        assert (r.ok, r.timed_out, r.error_class, r.sqlstate) == (False, True, "ClientTimeout", None)
    committed = {r[0] for r in query(db, "SELECT request_id FROM probe_log")}
    assert {r.request_id for r in run.results} <= committed  # timed out, yet committed later
    wait_for(lambda: probe_sessions(db, "log") == [], what="abandoned connections to close")


def test_open_loop_rate_holds_when_every_statement_takes_a_second(db: str) -> None:
    cfg = SqlProbeConfig("sleep", db, "SELECT pg_sleep(1)", rate_hz=10, concurrency=12)
    run = run_probe(cfg, 2.0)
    assert run.planned == 20 and run.started == 20 and not run.skipped
    assert len(run.results) == 20 and all(r.ok for r in run.results)
    starts = sorted(r.started_mono for r in run.results)
    assert statistics.median(b - a for a, b in itertools.pairwise(starts)) == pytest.approx(0.1, abs=0.02)
    assert starts[-1] - starts[0] == pytest.approx(1.9, abs=0.2)


def test_stop_event_ends_the_run_and_unfinished_statements_are_recorded(db: str) -> None:
    cfg = SqlProbeConfig("hang", db, "SELECT pg_sleep(30)", rate_hz=10, concurrency=2)

    async def scenario() -> ProbeRun:
        stop = asyncio.Event()
        async with SqlProbe(cfg) as probe:
            task = asyncio.create_task(probe.run(stop=stop, drain_timeout_s=0.2))
            await asyncio.sleep(0.5)
            stop.set()
            return await asyncio.wait_for(task, 5)

    run = asyncio.run(scenario())
    assert run.started == 2 and len(run.skipped) >= 2
    assert [r.error_class for r in run.results] == ["Unfinished", "Unfinished"]
    wait_for(lambda: probe_sessions(db, "hang") == [], what="the cancelled statements' connections to close")


def test_an_unreachable_database_fails_at_open_without_the_password() -> None:
    dsn = "postgresql://someone:hunter2@127.0.0.1:1/nope"
    with pytest.raises(TargetUnreachable) as info:
        run_probe(SqlProbeConfig("down", dsn, "SELECT 1", connect_timeout_s=1), 0.1)
    assert "hunter2" not in str(info.value) and "127.0.0.1:1/nope" in str(info.value)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"statement": "  "}, "statement"),
        ({"dsn": "host='unterminated"}, "dsn"),
        ({"lock_timeout_s": 0}, "lock_timeout"),
        ({"rate_hz": float("inf")}, "probe 'p'.rate"),
    ],
)
def test_bad_settings_are_refused(kwargs: dict[str, object], field: str) -> None:
    args: dict[str, object] = {"name": "p", "dsn": "dbname=x", "statement": "SELECT 1"} | kwargs
    with pytest.raises(InvalidInput) as info:
        SqlProbeConfig(**args)  # type: ignore[arg-type]
    assert info.value.field == field
