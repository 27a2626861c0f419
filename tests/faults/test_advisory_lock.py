"""advisory-lock against real PostgreSQL: what pg_locks shows, who is kept out, and release."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import psycopg
import pytest

from dbchaos.engine.engine import Engine, FaultRequest
from dbchaos.engine.model import EndReason, State
from dbchaos.errors import InvalidInput, LockNotAcquired
from dbchaos.faults.registry import default_registry
from dbchaos.settings import Settings
from dbchaos.targets import Target
from tests.helpers import query, wait_for


@asynccontextmanager
async def engine_for(dsn: str) -> AsyncIterator[Engine]:
    engine = Engine(Settings(), {"default": Target("default", dsn)}, default_registry())
    try:
        yield engine
    finally:
        await engine.close()


def advisory_locks(dsn: str, pid: int) -> set[tuple[Any, ...]]:
    """(classid, objid, objsubid, mode, granted) of the advisory locks held or awaited by ``pid``."""
    rows = query(
        dsn,
        "SELECT classid::bigint, objid::bigint, objsubid::int, mode, granted FROM pg_locks"
        " WHERE locktype = 'advisory' AND pid = %s",
        (pid,),
    )
    return set(rows)


def try_lock(dsn: str, call: str) -> bool:
    """Run ``SELECT <call>`` (a pg_try_advisory_lock* call) in a new session, which then ends."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute(f"SELECT {call}").fetchone()
        assert row is not None
        return bool(row[0])


def test_exclusive_keys_are_held_keep_others_out_and_are_released_on_abort(db: str) -> None:
    async def scenario() -> None:
        async with engine_for(db) as engine:
            rec = await engine.create(FaultRequest("advisory-lock", {"keys": [101, [1, 2]]}, duration_s=30))
            assert rec.state is State.ACTIVE
            pid = rec.pids[0]
            assert advisory_locks(db, pid) == {(0, 101, 1, "ExclusiveLock", True), (1, 2, 2, "ExclusiveLock", True)}
            assert rec.details["key_count"] == 2
            assert rec.details["keys"] == [101, [1, 2]]
            assert rec.params == {"keys": [101, [1, 2]], "shared": False}
            assert try_lock(db, "pg_try_advisory_lock(101)") is False
            assert try_lock(db, "pg_try_advisory_lock_shared(101)") is False
            assert try_lock(db, "pg_try_advisory_lock(1, 2)") is False
            assert try_lock(db, "pg_try_advisory_lock(102)") is True  # only the listed keys

            done = await engine.abort(rec.id)
            assert done.state is State.REVERTED
            assert done.end_reason is EndReason.ABORTED
            # Unlocked before revert returns: no polling needed.
            assert try_lock(db, "pg_try_advisory_lock(101)") is True
            assert try_lock(db, "pg_try_advisory_lock(1, 2)") is True
            await asyncio.to_thread(wait_for, lambda: not advisory_locks(db, pid), 5.0, what="locks gone")

    asyncio.run(scenario())


def test_shared_keys_admit_shared_holders_and_end_at_the_deadline(db: str) -> None:
    async def scenario() -> None:
        async with engine_for(db) as engine:
            rec = await engine.create(
                FaultRequest("advisory-lock", {"keys": [202, [-7, 8]], "shared": True}, duration_s=1.5)
            )
            pid = rec.pids[0]
            assert advisory_locks(db, pid) == {
                (0, 202, 1, "ShareLock", True),
                (2**32 - 7, 8, 2, "ShareLock", True),  # pg_locks shows the int4 as an unsigned oid
            }
            assert rec.details["mode"] == "ShareLock"
            assert try_lock(db, "pg_try_advisory_lock_shared(202)") is True
            assert try_lock(db, "pg_try_advisory_lock_shared(-7, 8)") is True
            assert try_lock(db, "pg_try_advisory_lock(202)") is False
            assert try_lock(db, "pg_try_advisory_lock(-7, 8)") is False

            await asyncio.to_thread(wait_for, lambda: rec.state.finished, 10.0, what="the deadline")
            assert rec.state is State.REVERTED
            assert rec.end_reason is EndReason.DEADLINE
            await asyncio.to_thread(wait_for, lambda: not advisory_locks(db, pid), 5.0, what="locks gone")
            assert try_lock(db, "pg_try_advisory_lock(202)") is True

    asyncio.run(scenario())


def test_a_conflicting_holder_fails_the_fault_which_then_holds_nothing(db: str) -> None:
    async def scenario() -> None:
        with psycopg.connect(db, autocommit=True) as holder:
            holder.execute("SELECT pg_advisory_lock(303)")
            async with engine_for(db) as engine:
                with pytest.raises(LockNotAcquired):
                    await engine.create(
                        FaultRequest("advisory-lock", {"keys": [304, 303]}, duration_s=5, acquire_timeout_s=0.5)
                    )
                (rec,) = engine.all()
                assert rec.state is State.FAILED
                assert rec.end_reason is EndReason.ERROR
                assert rec.failed_during == "inject"
                assert holder.info.backend_pid in [b["pid"] for b in rec.blockers]
                # 304 was granted before 303 timed out; the failed statement and the closed
                # session gave it back.
                await asyncio.to_thread(
                    wait_for,
                    lambda: (
                        not query(
                            db,
                            "SELECT 1 FROM pg_locks l JOIN pg_stat_activity a USING (pid)"
                            " WHERE l.locktype = 'advisory' AND a.application_name = %s",
                            (f"dbchaos:{rec.id}",),
                        )
                    ),
                    5.0,
                    what="no locks held by the failed fault",
                )
                assert try_lock(db, "pg_try_advisory_lock(304)") is True

    asyncio.run(scenario())


def test_many_keys_in_one_statement(db: str) -> None:
    keys: list[Any] = list(range(1000, 3000)) + [[5, i] for i in range(500)]

    async def scenario() -> None:
        async with engine_for(db) as engine:
            rec = await engine.create(FaultRequest("advisory-lock", {"keys": keys}, duration_s=30))
            rows = query(
                db,
                "SELECT count(*), count(*) FILTER (WHERE objsubid = 2) FROM pg_locks"
                " WHERE locktype = 'advisory' AND pid = %s AND granted",
                (rec.pids[0],),
            )
            assert rows == [(2500, 500)]
            assert rec.details["key_count"] == 2500

    asyncio.run(scenario())


@pytest.mark.parametrize(
    ("keys", "field", "code"),
    [
        ([], "params.keys", "invalid_key"),
        ("42", "params.keys", "invalid_key"),
        ([1, "2"], "params.keys.1", "invalid_key"),
        ([1.5], "params.keys.0", "invalid_key"),
        ([True], "params.keys.0", "invalid_key"),
        ([None], "params.keys.0", "invalid_key"),
        ([2**63], "params.keys.0", "key_out_of_range"),
        ([-(2**63) - 1], "params.keys.0", "key_out_of_range"),
        ([[1, 2, 3]], "params.keys.0", "invalid_key"),
        ([[1]], "params.keys.0", "invalid_key"),
        ([[1, 2**31]], "params.keys.0.1", "key_out_of_range"),
        ([["a", 1]], "params.keys.0.0", "invalid_key"),
        ([7, [1, 2], 7], "params.keys.2", "duplicate_key"),
        ([[1, 2], [1, 2]], "params.keys.1", "duplicate_key"),
        (list(range(10_001)), "params.keys", "invalid_key"),
    ],
)
def test_bad_keys_are_invalid_input_naming_the_item(keys: Any, field: str, code: str) -> None:
    with pytest.raises(InvalidInput) as info:
        default_registry().build("advisory-lock", {"keys": keys})
    assert info.value.field == field
    assert info.value.code == code


def test_extreme_keys_are_accepted() -> None:
    fault = default_registry().build("advisory-lock", {"keys": [-(2**63), 2**63 - 1, [-(2**31), 2**31 - 1]]})
    assert fault.describe_params()["keys"] == [-(2**63), 2**63 - 1, [-(2**31), 2**31 - 1]]


def test_shared_must_be_a_boolean() -> None:
    with pytest.raises(InvalidInput) as info:
        default_registry().build("advisory-lock", {"keys": [1], "shared": "yes"})
    assert info.value.field == "params.shared"
