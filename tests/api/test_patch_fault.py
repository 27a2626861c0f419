"""``PATCH /v1/faults/{id}``: extend or shorten a running fault, on dbchaos's side and on
PostgreSQL's (the sessions' own timeouts move too, so a frozen dbchaos still cannot leave a
lock held past the new deadline, nor lose an extended one early)."""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from dbchaos.api.app import create_app
from dbchaos.engine.engine import FaultRequest
from dbchaos.engine.model import EndReason, State
from dbchaos.errors import InvalidInput
from dbchaos.faults.migration.graph import RevisionGraph
from dbchaos.settings import Settings
from dbchaos.targets import Target, TargetPolicy
from tests.helpers import no_dbchaos_sessions, query, relation_locks, running_engine, wait_for
from tests.server_proc import ServerProcess, dbchaos_server

BASE = "http://127.0.0.1:8080"


def lock(table: str = "items", **extra: Any) -> dict[str, Any]:
    return {"kind": "table-lock", "params": {"tables": [table]}, **extra}


def parse(ts: str) -> float:
    return datetime.fromisoformat(ts.replace("Z", "+00:00")).timestamp()


@contextmanager
def api(dsn: str, **settings: Any) -> Iterator[TestClient]:
    app = create_app(Settings(**settings), {"default": Target("default", dsn)}, recover_on_start=False)
    with TestClient(app, base_url=BASE) as client:
        yield client


@contextmanager
def frozen_when_asked(db: str, tmp: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[ServerProcess]:
    """A real server whose sessions get 0.5 s of grace past a deadline (so PostgreSQL's own
    timeouts show quickly), resumed before it is killed."""
    monkeypatch.setenv("DBCHAOS_SERVER_SIDE_GRACE_S", "0.5")
    with dbchaos_server(["--target", db], tmp) as server:
        try:
            yield server
        finally:
            server.proc.send_signal(signal.SIGCONT)


def held(db: str, table: str = "items") -> bool:
    return any(granted for _, _, granted, _ in relation_locks(db, table))


def test_extending_moves_postgresqls_own_timeouts_too(db: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """1 s lock extended to 3 s, then dbchaos frozen: PostgreSQL keeps the lock past the
    original bounds (1 s + 0.5 s grace, and transaction_timeout on 17+) and ends it itself
    soon after the new deadline plus grace."""
    with frozen_when_asked(db, tmp_path, monkeypatch) as server, server.client() as client:
        fault = client.post("/v1/faults", json=lock(duration_s=1, acquire_timeout_s=0.2)).json()
        activated = parse(fault["activated_at"])
        moved = client.patch(f"/v1/faults/{fault['id']}", json={"duration_s": 3})
        assert moved.status_code == 200, moved.text
        assert moved.json()["duration_s"] == pytest.approx(3)
        assert parse(moved.json()["deadline"]) == pytest.approx(activated + 3, abs=0.01)
        server.proc.send_signal(signal.SIGSTOP)  # from here on, only PostgreSQL ends the lock
        time.sleep(max(0.0, activated + 2.2 - time.time()))
        assert held(db), "PostgreSQL ended the extended fault at its original bounds"
        wait_for(lambda: not held(db), 4.0, what="PostgreSQL to end the lock after the new deadline")
        assert time.time() - activated > 3.0  # not before the new deadline


def test_shortening_lowers_postgresqls_own_timeouts(db: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with frozen_when_asked(db, tmp_path, monkeypatch) as server, server.client() as client:
        fault = client.post("/v1/faults", json=lock(duration_s=60)).json()
        moved = client.patch(f"/v1/faults/{fault['id']}", json={"extend_by_s": -59})
        assert moved.status_code == 200, moved.text
        assert moved.json()["duration_s"] == pytest.approx(1)
        server.proc.send_signal(signal.SIGSTOP)
        started = time.monotonic()
        wait_for(lambda: not held(db), 5.0, what="PostgreSQL to end the shortened lock")
        assert time.monotonic() - started < 3.5  # 1 s + 0.5 s grace, not 60 s


def test_extend_and_shorten_while_dbchaos_runs(db: str) -> None:
    with api(db, server_side_grace_s=0.5) as client:
        fault = client.post("/v1/faults", json=lock(duration_s=1, acquire_timeout_s=0.2)).json()
        fid, activated = fault["id"], parse(fault["activated_at"])
        assert client.patch(f"/v1/faults/{fid}", json={"duration_s": 3}).status_code == 200
        time.sleep(max(0.0, activated + 2.0 - time.time()))
        assert held(db) and client.get(f"/v1/faults/{fid}").json()["state"] == "active"
        wait_for(lambda: client.get(f"/v1/faults/{fid}").json()["state"] == "reverted", 3.0)
        done = client.get(f"/v1/faults/{fid}").json()
        assert done["end_reason"] == "deadline"  # dbchaos reverted it, PostgreSQL did not have to
        assert 2.9 < parse(done["ended_at"]) - activated < 4.0
        assert not held(db)

        other = client.post("/v1/faults", json=lock("users", duration_s=60)).json()
        new_deadline = datetime.now(UTC) + timedelta(seconds=0.8)
        moved = client.patch(f"/v1/faults/{other['id']}", json={"deadline": new_deadline.isoformat()})
        assert moved.status_code == 200, moved.text
        assert parse(moved.json()["deadline"]) == pytest.approx(new_deadline.timestamp(), abs=0.01)
        wait_for(lambda: client.get(f"/v1/faults/{other['id']}").json()["state"] == "reverted", 3.0)
        assert client.get(f"/v1/faults/{other['id']}").json()["end_reason"] == "deadline"
        assert no_dbchaos_sessions(db)


def test_refusals(db: str) -> None:
    with api(db, max_duration_s=120) as client:
        fid = client.post("/v1/faults", json=lock(duration_s=30)).json()["id"]
        before = client.get(f"/v1/faults/{fid}").json()["deadline"]

        too_long = client.patch(f"/v1/faults/{fid}", json={"duration_s": 121})
        assert too_long.status_code == 422
        body = too_long.json()
        assert body["code"] == "duration_too_long" and body["field"] == "duration_s"
        assert body["max_duration_s"] == 120 and "120" in body["detail"]
        assert client.patch(f"/v1/faults/{fid}", json={"extend_by_s": 100}).json()["field"] == "extend_by_s"

        cases: list[tuple[dict[str, Any], str | None]] = [
            ({}, None),
            ({"duration_s": 10, "extend_by_s": 5}, None),
            ({"duration_s": 0}, "duration_s"),
            ({"duration_s": -3}, "duration_s"),
            ({"extend_by_s": -3600}, "extend_by_s"),
            ({"deadline": "2020-01-01T00:00:00Z"}, "deadline"),
            ({"deadline": "2030-01-01T00:00:00"}, "deadline"),  # no offset
            ({"deadline": "tomorrow"}, "deadline"),
            ({"until": 5}, "until"),
        ]
        for patch, field in cases:
            resp = client.patch(f"/v1/faults/{fid}", json=patch)
            assert resp.status_code == 422, (patch, resp.text)
            assert resp.json()["field"] == field, (patch, resp.json())
        assert client.get(f"/v1/faults/{fid}").json()["deadline"] == before  # nothing moved

        assert client.patch("/v1/faults/nope", json={"duration_s": 5}).status_code == 404
        client.delete(f"/v1/faults/{fid}")
        ended = client.patch(f"/v1/faults/{fid}", json={"duration_s": 60})
        assert ended.status_code == 409 and ended.json()["code"] == "fault_not_active"


def test_a_targets_lower_maximum_applies(db: str) -> None:
    target = Target("default", db, policy=TargetPolicy(max_duration_s=20))
    app = create_app(Settings(), {"default": target}, recover_on_start=False)
    with TestClient(app, base_url=BASE) as client:
        fid = client.post("/v1/faults", json=lock(duration_s=10)).json()["id"]
        resp = client.patch(f"/v1/faults/{fid}", json={"duration_s": 25})
        assert resp.status_code == 422 and resp.json()["max_duration_s"] == 20
        assert client.patch(f"/v1/faults/{fid}", json={"duration_s": 20}).status_code == 200


def test_a_journaled_fault_just_moves_its_deadline(alembic_db: str, graph: RevisionGraph) -> None:
    async def scenario() -> None:
        async with running_engine(alembic_db, graph, server_side_grace_s=0.5) as engine:
            with engine.events.subscribe(["fault"]) as events:
                rec = await engine.create(FaultRequest("unknown-revision", {}, duration_s=60))
                assert not rec.pids  # it holds no session while active
                await engine.extend(rec.id, extend_by_s=-59.2)
                assert rec.duration_s == pytest.approx(0.8)
                await wait_for_state(engine, rec.id, State.REVERTED)
                assert rec.end_reason is EndReason.DEADLINE
                seen = [await events.next(1) for _ in range(5)]
            names = [e.data["event"] for e in seen if e is not None]
            assert names == ["created", "active", "extended", "reverting", "reverted"]
            extended = next(e for e in seen if e is not None and e.data["event"] == "extended")
            assert extended.data["previous_deadline"] != extended.data["deadline"]

    async def wait_for_state(engine: Any, fid: str, state: State) -> None:
        for _ in range(200):
            if engine.get(fid).state is state:
                return
            await asyncio.sleep(0.02)
        raise AssertionError(f"{fid} never became {state}")

    asyncio.run(scenario())
    assert query(alembic_db, "SELECT state, end_reason FROM dbchaos.journal") == [("reverted", "deadline")]


def test_a_queued_lock_request_cannot_outlive_its_own_timeouts(db: str) -> None:
    async def scenario() -> None:
        async with running_engine(db) as engine:
            rec = await engine.create(FaultRequest("migration-lock-queue", {"table": "items"}, duration_s=5))
            with pytest.raises(InvalidInput) as info:
                await engine.extend(rec.id, duration_s=10)
            assert info.value.code == "duration_too_long" and info.value.extra["max_duration_s"] == 5
            assert "in flight" in info.value.message
            await engine.extend(rec.id, duration_s=4)  # shortening is fine
            assert rec.duration_s == 4
            await engine.abort(rec.id)

    asyncio.run(scenario())
    assert no_dbchaos_sessions(db)


def test_patch_is_audited_and_needs_inject(db: str) -> None:
    with api(db) as client:
        fid = client.post("/v1/faults", json=lock(duration_s=30)).json()["id"]
        assert client.patch(f"/v1/faults/{fid}", json={"extend_by_s": 5}).status_code == 200
        events = client.get("/v1/audit", params={"fault_id": fid}).json()["events"]
        assert any(e.get("method") == "PATCH" for e in events), events
        # the statement that moved the session's timeouts is in the trail too
        assert any("idle_in_transaction_session_timeout" in str(e.get("sql", "")) for e in events), events


@pytest.mark.drill
def test_the_briefs_numbers_a_3s_lock_extended_to_8s(db: str, tmp_path: Path) -> None:
    """With the default 2 s grace, against a running server: a 3 s lock extended to 8 s is
    still held at 6 s (past both its old deadline and its old server-side bounds) and released
    shortly after 8 s by dbchaos; a fault cannot be extended past the maximum."""
    with dbchaos_server(["--target", db], tmp_path) as server, server.client() as client:
        fault = client.post("/v1/faults", json=lock(duration_s=3)).json()
        activated = parse(fault["activated_at"])
        assert client.patch(f"/v1/faults/{fault['id']}", json={"duration_s": 8}).status_code == 200
        time.sleep(max(0.0, activated + 6 - time.time()))
        assert held(db)
        wait_for(lambda: not held(db), 4.0, what="the lock to be released after 8 s")
        released = time.time() - activated
        assert 8.0 <= released < 9.5, released
        done = client.get(f"/v1/faults/{fault['id']}").json()
        assert (done["state"], done["end_reason"]) == ("reverted", "deadline")

        other = client.post("/v1/faults", json=lock("users", duration_s=3)).json()
        too_long = client.patch(f"/v1/faults/{other['id']}", json={"duration_s": 3601})
        assert too_long.status_code == 422 and too_long.json()["max_duration_s"] == 3600
        short = client.patch(f"/v1/faults/{other['id']}", json={"extend_by_s": -1.5})
        assert short.status_code == 200
        wait_for(lambda: not held(db, "users"), 3.0)
