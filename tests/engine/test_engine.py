"""Engine lifecycle against real PostgreSQL: failure reports, independence, reset, caps."""

from __future__ import annotations

import asyncio
import time

import psycopg
import pytest

from dbchaos.engine.engine import Engine, FaultRequest
from dbchaos.engine.model import EndReason, State
from dbchaos.errors import CapacityReached, LockNotAcquired, TargetUnreachable
from dbchaos.faults.registry import default_registry
from dbchaos.settings import Settings
from dbchaos.targets import Target
from tests.helpers import no_dbchaos_sessions, relation_locks, wait_for


def make_engine(dsn: str, **settings: float) -> Engine:
    return Engine(Settings(**settings), {"default": Target("default", dsn)}, default_registry())  # type: ignore[arg-type]


def test_a_lock_held_by_someone_else_fails_the_fault_and_names_the_holder(db: str) -> None:
    blocker = psycopg.connect(db, application_name="nightly-report")
    blocker.execute("LOCK TABLE items IN ACCESS EXCLUSIVE MODE")

    async def scenario() -> None:
        engine = make_engine(db)
        try:
            started = time.monotonic()
            with pytest.raises(LockNotAcquired) as info:
                await engine.create(FaultRequest("table-lock", {"tables": ["items"]}, acquire_timeout_s=0.6))
            assert 0.5 < time.monotonic() - started < 3
            assert "nightly-report" in info.value.message
            (rec,) = engine.all()
            assert rec.state is State.FAILED and rec.end_reason is EndReason.ERROR
            assert rec.blockers and rec.blockers[0]["application_name"] == "nightly-report"
            assert no_dbchaos_sessions(db)
        finally:
            await engine.close()

    try:
        asyncio.run(scenario())
    finally:
        blocker.close()


def test_acquire_timeout_zero_does_not_wait(db: str) -> None:
    blocker = psycopg.connect(db)
    blocker.execute("LOCK TABLE items IN ROW EXCLUSIVE MODE")

    async def scenario() -> None:
        engine = make_engine(db)
        try:
            started = time.monotonic()
            with pytest.raises(LockNotAcquired):
                await engine.create(FaultRequest("table-lock", {"tables": ["items"]}, acquire_timeout_s=0))
            assert time.monotonic() - started < 1.0
        finally:
            await engine.close()

    try:
        asyncio.run(scenario())
    finally:
        blocker.close()


def test_a_waiting_fault_slows_neither_the_api_nor_another_fault(db: str) -> None:
    blocker = psycopg.connect(db)
    blocker.execute("LOCK TABLE items IN ACCESS EXCLUSIVE MODE")

    async def scenario() -> None:
        engine = make_engine(db)
        try:
            waiting = await engine.create(
                FaultRequest("table-lock", {"tables": ["items"]}, acquire_timeout_s=5), wait=False
            )
            assert waiting.state is State.PENDING
            await asyncio.to_thread(
                wait_for,
                lambda: [r for r in relation_locks(db, "items") if not r[2]],
                3.0,
                what="the fault's lock request to queue",
            )
            started = time.monotonic()
            other = await engine.create(FaultRequest("table-lock", {"tables": ["users"]}, duration_s=5))
            listed = engine.all()
            impacts = await engine.impacts(listed)
            assert time.monotonic() - started < 1.0
            assert other.state is State.ACTIVE and waiting.state is State.PENDING
            assert other.id in impacts
            await engine.abort(waiting.id)
            assert waiting.state is State.REVERTED and waiting.end_reason is EndReason.ABORTED
            assert relation_locks(db, "items") == []
        finally:
            await engine.close()

    try:
        asyncio.run(scenario())
    finally:
        blocker.close()


def test_reset_ends_every_fault(db: str) -> None:
    async def scenario() -> None:
        engine = make_engine(db)
        try:
            recs = [
                await engine.create(FaultRequest("table-lock", {"tables": [t]}, duration_s=30))
                for t in ("items", "users", "orders")
            ]
            started = time.monotonic()
            ended = await engine.reset()
            assert time.monotonic() - started < 2.0
            assert {r.id for r in ended} == {r.id for r in recs}
            assert all(r.state is State.REVERTED and r.end_reason is EndReason.RESET for r in recs)
            assert no_dbchaos_sessions(db)
        finally:
            await engine.close()

    asyncio.run(scenario())


def test_per_target_cap(db: str) -> None:
    async def scenario() -> None:
        engine = make_engine(db, max_faults_per_target=2)
        try:
            await engine.create(FaultRequest("table-lock", {"tables": ["items"], "mode": "ACCESS SHARE"}))
            await engine.create(FaultRequest("table-lock", {"tables": ["users"], "mode": "ACCESS SHARE"}))
            with pytest.raises(CapacityReached):
                await engine.create(FaultRequest("table-lock", {"tables": ["orders"], "mode": "ACCESS SHARE"}))
            assert len(engine.all()) == 2
        finally:
            await engine.close()

    asyncio.run(scenario())


def test_a_session_ended_by_someone_else_is_reported_lost(db: str) -> None:
    async def scenario() -> None:
        engine = make_engine(db)
        try:
            rec = await engine.create(FaultRequest("table-lock", {"tables": ["items"]}, duration_s=30))
            with psycopg.connect(db, autocommit=True) as admin:
                admin.execute("SELECT pg_terminate_backend(%s)", (rec.pids[0],))
            await asyncio.to_thread(wait_for, lambda: rec.state.finished, 5.0, what="loss to be noticed")
            assert rec.state is State.LOST
        finally:
            await engine.close()

    asyncio.run(scenario())


def test_unreachable_target_is_a_target_error() -> None:
    async def scenario() -> None:
        engine = make_engine("postgresql://u:pw@127.0.0.1:1/x", connect_timeout_s=1)
        try:
            with pytest.raises(TargetUnreachable) as info:
                await engine.create(FaultRequest("table-lock", {"tables": ["items"]}))
            assert "pw@" not in info.value.message
        finally:
            await engine.close()

    asyncio.run(scenario())
