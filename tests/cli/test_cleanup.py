"""``dbchaos cleanup``: ends the sessions of dbchaos instances that are gone, never those of
a running server (real processes, real PostgreSQL), and the session naming it relies on."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import uuid
from typing import Any

import psycopg
import pytest
from typer.testing import CliRunner

from dbchaos.cli.cleanup import run_cleanup
from dbchaos.cli.main import app
from dbchaos.engine.engine import FaultRequest
from dbchaos.engine.model import State
from dbchaos.engine.ownership import instance_of, new_fault_id, role_of
from dbchaos.settings import Settings
from dbchaos.targets import Target
from tests.helpers import query, relation_locks, running_engine

DEAD = "deadbeef0001"


def dbchaos(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, COLUMNS="200")
    env.pop("DBCHAOS_TARGET_DSN", None)
    return subprocess.run(
        [sys.executable, "-m", "dbchaos", *args], capture_output=True, text=True, timeout=timeout, env=env
    )


# ---- naming ----------------------------------------------------------------------------


def test_a_fault_id_names_its_instance() -> None:
    ids = {new_fault_id(DEAD) for _ in range(100)}
    assert len(ids) == 100
    for fid in ids:
        parsed = uuid.UUID(fid)
        assert str(parsed) == fid and parsed.version == 8 and parsed.variant == uuid.RFC_4122
        assert fid.endswith("-" + DEAD) and instance_of(f"dbchaos:{fid}") == DEAD
    # an instance id that is not 12 hex digits gets a plain random id, attributed to nobody
    plain = new_fault_id("not-hex")
    assert uuid.UUID(plain).version == 4 and instance_of(f"dbchaos:{plain}") is None


@pytest.mark.parametrize(
    ("name", "instance", "role"),
    [
        (f"dbchaos:{DEAD}", DEAD, "control"),
        (f"dbchaos:{DEAD}:spare", DEAD, "spare"),
        (f"dbchaos:{DEAD}:journal", DEAD, "journal"),
        (f"dbchaos:{DEAD}:recover", DEAD, "recover"),
        (f"dbchaos:{DEAD}:probe", DEAD, "probe"),
        ("dbchaos:check", None, "other"),
        ("dbchaos:init", None, "other"),
        ("dbchaos:1b4e28ba-2fa1-41d2-a3c5-0123456789ab", None, "fault"),  # version 4: no instance
        (f"dbchaos:{DEAD}:other", None, "other"),
        ("app-dbchaos:" + DEAD, None, "other"),
    ],
)
def test_session_names(name: str, instance: str | None, role: str) -> None:
    assert instance_of(name) == instance
    assert role_of(name) == role


# ---- end to end ------------------------------------------------------------------------


def _alive(pid: int, dsn: str) -> bool:
    return bool(query(dsn, "SELECT 1 FROM pg_stat_activity WHERE pid = %s", (pid,)))


def _orphans(db: str) -> dict[str, psycopg.Connection[Any]]:
    """Sessions named like those of a dbchaos instance that died: a control session that no
    longer holds its owner lock, a fault session holding a lock on orders, a spare."""
    conns = {
        "control": psycopg.connect(db, application_name=f"dbchaos:{DEAD}", autocommit=True),
        "fault": psycopg.connect(db, application_name=f"dbchaos:{new_fault_id(DEAD)}"),
        "spare": psycopg.connect(db, application_name=f"dbchaos:{DEAD}:spare", autocommit=True),
    }
    conns["fault"].execute("LOCK TABLE orders IN SHARE MODE")
    return conns


def test_cleanup_ends_only_the_sessions_of_gone_instances(db: str) -> None:
    async def scenario() -> None:
        async with running_engine(db) as engine:  # a running dbchaos instance, holding a fault
            live = await engine.create(FaultRequest("table-lock", {"tables": ["items"]}, duration_s=60))
            live_pids = set(live.pids)
            orphans = _orphans(db)
            # a dbchaos session that names no instance (e.g. an older dbchaos's fault)
            unknown = psycopg.connect(db, application_name=f"dbchaos:{uuid.uuid4()}", autocommit=True)
            try:
                orphan_pids = {role: c.info.backend_pid for role, c in orphans.items()}
                assert relation_locks(db, "orders")

                planned = await run_cleanup(Target("default", db), Settings(), dry_run=True)
                assert {s.pid for s in planned.ended} == set(orphan_pids.values())
                assert all(_alive(p, db) for p in orphan_pids.values())  # nothing ended

                done = await asyncio.to_thread(dbchaos, "cleanup", "--target", db, "--json")
                assert done.returncode == 0, done.stderr
                result = json.loads(done.stdout)
                ended = {s["pid"]: s for s in result["ended"]}
                assert set(ended) == set(orphan_pids.values()) and result["failed"] == []
                assert {s["role"] for s in ended.values()} == {"control", "fault", "spare"}
                assert all(s["instance"] == DEAD and s["owner"] == "gone" for s in ended.values())
                assert not any(_alive(p, db) for p in orphan_pids.values())
                assert relation_locks(db, "orders") == []  # the orphan's lock went with it

                kept = {s["pid"]: s for s in result["kept"]}
                assert live_pids <= set(kept) and all(kept[p]["owner"] == "live" for p in live_pids)
                assert {kept[p]["instance"] for p in live_pids} == {engine.instance}
                assert kept[unknown.info.backend_pid]["owner"] == "unknown"
                assert _alive(unknown.info.backend_pid, db)
                assert result["recovered"] == [] and result["recovery_error"] is None

                # the running instance's fault is untouched
                assert live.state is State.ACTIVE and relation_locks(db, "items")
                again = await run_cleanup(Target("default", db), Settings())
                assert again.ended == [] and again.ok
            finally:
                for c in (*orphans.values(), unknown):
                    c.close()

    asyncio.run(scenario())
    assert relation_locks(db, "items") == []


def test_cleanup_exit_codes() -> None:
    runner = CliRunner()
    bad = runner.invoke(app, ["cleanup", "--target", "not a dsn"])
    assert bad.exit_code == 2
    down = runner.invoke(app, ["cleanup", "--target", "postgresql://nobody@127.0.0.1:1/nothing", "--json"])
    assert down.exit_code == 3
    assert json.loads(down.stdout)["error"]["code"] == "target_unreachable"
