"""The typed client (sync and async) against a real ``dbchaos serve`` and a real target."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
import pytest

from dbchaos.client import (
    AsyncDbChaosClient,
    DbChaosApiError,
    DbChaosClient,
    DbChaosUnreachable,
    Event,
    Fault,
)
from dbchaos.errors import DbChaosError
from tests.helpers import relation_locks, wait_for
from tests.server_proc import ServerProcess, dbchaos_server, free_port

ITEMS = {"tables": ["items"]}


@pytest.fixture
def server(db: str, tmp_path: Path) -> Iterator[ServerProcess]:
    with dbchaos_server(["--target", db], tmp_path) as served:
        yield served


def blocked_reader(db: str) -> threading.Thread:
    """A session that blocks on ``items`` until the fault ends (as an app's query would)."""

    def run() -> None:
        with psycopg.connect(db, application_name="victim") as conn:
            conn.execute("SELECT count(*) FROM items")

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def test_the_sync_client_drives_a_fault_end_to_end(db: str, server: ServerProcess) -> None:
    with DbChaosClient(server.url) as chaos:
        assert chaos.health().status == "ok"
        assert "table-lock" in {k.kind for k in chaos.kinds()}
        fault = chaos.inject("table-lock", ITEMS, duration_s=30, labels={"ticket": "OPS-1"})
        assert isinstance(fault, Fault)
        assert fault.state == "active" and fault.labels == {"ticket": "OPS-1"}
        assert fault.activated_at is not None and fault.deadline is not None
        assert fault.deadline.tzinfo is not None
        assert relation_locks(db, "items")

        reader = blocked_reader(db)
        seen = wait_for(lambda: chaos.get(fault.id).blocked_count >= 1, 5, what="the blocked reader")
        assert seen
        victim = chaos.get(fault.id).impact
        assert victim is not None and victim.blocked[0].application_name == "victim"
        assert [f.id for f in chaos.list()] == [fault.id]
        assert [f.id for f in chaos.list(state="active")] == [fault.id]

        moved = chaos.extend(fault.id, extend_by_s=10)
        assert moved.duration_s == pytest.approx(40)
        moved = chaos.extend(fault.id, deadline=datetime.now(UTC) + timedelta(seconds=20))
        assert moved.duration_s < 40

        ended = chaos.abort(fault.id)
        assert ended.finished and ended.state == "reverted" and ended.end_reason == "aborted"
        reader.join(5)
        assert not reader.is_alive()

        again = chaos.inject("table-lock", ITEMS, duration_s=30)
        assert [f.id for f in chaos.reset()] == [again.id]
        assert chaos.wait(again.id, timeout_s=5).state == "reverted"
        assert relation_locks(db, "items") == []


def test_errors_carry_the_apis_status_code_detail_and_field(db: str, server: ServerProcess) -> None:
    with DbChaosClient(server.url) as chaos:
        with pytest.raises(DbChaosApiError) as bad:
            chaos.inject("table-lock", {"tables": ["nope"]})
        assert bad.value.status == 422 and bad.value.code == "unknown_table"
        assert bad.value.field is not None and bad.value.field.startswith("params.tables")
        assert "nope" in bad.value.detail
        assert isinstance(bad.value, DbChaosError)

        with pytest.raises(DbChaosApiError) as missing:
            chaos.get("00000000-0000-0000-0000-000000000000")
        assert missing.value.status == 404 and missing.value.code == "unknown_fault"

        fault = chaos.inject("table-lock", ITEMS, duration_s=30)
        with pytest.raises(DbChaosApiError) as too_long:
            chaos.extend(fault.id, duration_s=10**6)
        assert too_long.value.status == 422 and too_long.value.body["max_duration_s"] > 0

        with psycopg.connect(db, application_name="nightly-report") as holder:
            holder.execute("LOCK TABLE users IN ACCESS EXCLUSIVE MODE")
            with pytest.raises(DbChaosApiError) as busy:
                chaos.inject("table-lock", {"tables": ["users"]}, acquire_timeout_s=0.3)
            assert busy.value.status == 409 and busy.value.code == "lock_not_acquired"
            failed = busy.value.fault
            assert failed is not None and failed.state == "failed"
            assert failed.blockers and failed.blockers[0]["application_name"] == "nightly-report"
        chaos.abort(fault.id)

    with DbChaosClient(f"http://127.0.0.1:{free_port()}", timeout=2) as nobody:
        with pytest.raises(DbChaosUnreachable) as down:
            nobody.health()
        assert down.value.status is None and down.value.code == "server_unreachable"


def test_wait_false_and_dry_run(db: str, server: ServerProcess) -> None:
    with DbChaosClient(server.url) as chaos:
        pending = chaos.inject("table-lock", ITEMS, duration_s=30, wait=False)
        assert pending.state in ("pending", "active")
        wait_for(lambda: chaos.get(pending.id).state == "active", 5)
        chaos.abort(pending.id)
        plan = chaos.inject("table-lock", ITEMS, dry_run=True)
        assert plan.dry_run and plan.kind == "table-lock"
        assert plan.statements and plan.locks and plan.session_settings
        assert [f.state for f in chaos.list()] == ["reverted"]  # only the first fault: the dry run made none
        assert relation_locks(db, "items") == []


def test_the_event_streams(db: str, server: ServerProcess) -> None:
    with DbChaosClient(server.url) as chaos, chaos.events(["fault"], max_s=10) as stream:
        fault = chaos.inject("table-lock", ITEMS, duration_s=30)
        chaos.abort(fault.id)
        got: list[Event] = []
        for event in stream:
            got.append(event)
            if event.event == "reverted":
                break
    assert [e.event for e in got] == ["created", "active", "reverting", "reverted"]
    assert {e.id for e in got} == {fault.id} and {e.topic for e in got} == {"fault"}

    async def scenario() -> list[str | None]:
        async with AsyncDbChaosClient(server.url) as chaos, chaos.events(fault_id=None, max_s=10) as stream:
            other = await chaos.inject("table-lock", ITEMS, duration_s=30)
            await chaos.abort(other.id)
            states = []
            async for event in stream:
                states.append(event.state)
                if event.event == "reverted":
                    break
            return states

    assert asyncio.run(scenario()) == ["pending", "active", "reverting", "reverted"]


def test_the_async_client(db: str, server: ServerProcess) -> None:
    async def scenario() -> None:
        async with AsyncDbChaosClient(server.url) as chaos:
            assert (await chaos.health()).status == "ok"
            faults = await asyncio.gather(
                chaos.inject("table-lock", {"tables": ["users"]}, duration_s=30),
                chaos.inject("row-lock", {"table": "orders", "where": {"id": [1]}}, duration_s=30),
            )
            assert {f.state for f in faults} == {"active"}
            assert len(await chaos.list(state="active")) == 2
            moved = await chaos.extend(faults[0].id, duration_s=45)
            assert moved.duration_s == pytest.approx(45)
            with pytest.raises(DbChaosApiError) as bad:
                await chaos.inject("no-such-kind")
            assert bad.value.status == 422 and bad.value.field == "kind"
            reverted = await chaos.reset()
            assert {f.id for f in reverted} == {f.id for f in faults}
            assert (await chaos.wait(faults[1].id, timeout_s=5)).state == "reverted"

    asyncio.run(scenario())
    assert relation_locks(db, "users") == []


def test_from_env() -> None:
    client = DbChaosClient.from_env({"DBCHAOS_URL": "http://chaos.staging:8080/", "DBCHAOS_TOKEN": "dbc_x"})
    try:
        assert client.base_url == "http://chaos.staging:8080"
        assert client._http.headers["Authorization"] == "Bearer dbc_x"
    finally:
        client.close()
    default = DbChaosClient.from_env({})
    assert default.base_url == "http://127.0.0.1:8080" and "Authorization" not in default._http.headers
    default.close()
