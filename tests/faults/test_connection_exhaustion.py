"""connection-exhaustion against real PostgreSQL: ordinary clients are refused with 53300,
privileged ones still get in, and everything is given back.

These tests fill the server's connection slots: they change server-wide state.
"""

from __future__ import annotations

import asyncio
import socket
import struct
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import psycopg
import pytest
from psycopg import conninfo

from dbchaos.engine.engine import Engine, FaultRequest
from dbchaos.engine.model import EndReason, State
from dbchaos.errors import Conflict, InvalidInput
from dbchaos.faults.registry import default_registry
from dbchaos.settings import Settings
from dbchaos.targets import Target
from tests.helpers import query, wait_for
from tests.pg import PgServer, unprivileged_role


@asynccontextmanager
async def engine_for(dsn: str) -> AsyncIterator[Engine]:
    engine = Engine(Settings(), {"default": Target("default", dsn)}, default_registry())
    try:
        yield engine
    finally:
        await engine.close()


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    buf = b""
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise ConnectionError("the server closed the connection")
        buf += chunk
    return buf


def startup_sqlstate(dsn: str, timeout: float = 5.0) -> str | None:
    """Start a session by speaking the protocol directly; the SQLSTATE the server refused it
    with, or None once it is ready for queries.

    psycopg (libpq) reports no SQLSTATE for errors raised while connecting, so to check the
    SQLSTATE itself this sends the StartupMessage and reads the ErrorResponse's ``C`` field.
    Needs trust authentication, which the test servers use.
    """
    info = conninfo.conninfo_to_dict(dsn)
    host, port = str(info.get("host") or "/tmp"), int(info.get("port") or 5432)  # noqa: S108
    if host.startswith("/"):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(timeout)
        sock.connect(f"{host}/.s.PGSQL.{port}")
    else:
        sock = socket.create_connection((host, port), timeout)
    with sock:
        fields = {"user": str(info["user"]), "database": str(info["dbname"])}
        body = struct.pack("!I", 3 << 16) + b"".join(k.encode() + b"\0" + v.encode() + b"\0" for k, v in fields.items())
        body += b"\0"
        sock.sendall(struct.pack("!I", len(body) + 4) + body)
        while True:
            head = _recv_exact(sock, 5)
            payload = _recv_exact(sock, struct.unpack("!I", head[1:])[0] - 4)
            if head[:1] == b"E":
                parts = dict((p[:1], p[1:].decode()) for p in payload.split(b"\0") if p)
                return parts[b"C"]
            if head[:1] == b"R" and struct.unpack("!I", payload[:4])[0] != 0:
                pytest.skip("the SQLSTATE probe needs trust authentication")
            if head[:1] == b"Z":
                sock.sendall(b"X" + struct.pack("!I", 4))
                return None


def fault_sessions(dsn: str, fault_id: str) -> list[tuple[Any, ...]]:
    return query(dsn, "SELECT pid, state FROM pg_stat_activity WHERE application_name = %s", (f"dbchaos:{fault_id}",))


def ordinary_free(dsn: str) -> int:
    (row,) = query(
        dsn,
        "SELECT current_setting('max_connections')::int - current_setting('superuser_reserved_connections')::int"
        " - coalesce(current_setting('reserved_connections', true)::int, 0)"
        " - (SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend')::int",
    )
    return int(row[0]) + 1  # the connection that asked is gone now


@pytest.mark.serial
def test_leave_zero_refuses_ordinary_clients_with_53300_but_admits_superusers(pg: PgServer, db: str) -> None:
    dbname = str(conninfo.conninfo_to_dict(db)["dbname"])
    with unprivileged_role(pg, dbname) as app_dsn:
        assert startup_sqlstate(app_dsn) is None

        async def scenario() -> None:
            async with engine_for(db) as engine:
                rec = await engine.create(FaultRequest("connection-exhaustion", {"leave": 0}, duration_s=60))
                assert rec.state is State.ACTIVE
                held = rec.details["connections"]
                assert held == len(rec.pids) == len(set(rec.pids))
                assert held > 200  # the test servers have max_connections 300
                assert rec.details["free_ordinary_after"] == 0
                sessions = fault_sessions(db, rec.id)
                assert len(sessions) == held
                assert {state for _, state in sessions} == {"idle"}

                assert startup_sqlstate(app_dsn) == "53300"
                with pytest.raises(psycopg.OperationalError):
                    psycopg.connect(app_dsn).close()
                # A superuser still gets in: the reserved slots were left alone.
                with psycopg.connect(db, autocommit=True) as admin:
                    assert admin.execute("SELECT 1").fetchone() == (1,)

                done = await engine.abort(rec.id)
                assert done.state is State.REVERTED
                assert done.end_reason is EndReason.ABORTED
                await asyncio.to_thread(
                    wait_for, lambda: startup_sqlstate(app_dsn) is None, 10.0, what="slots given back"
                )
                await asyncio.to_thread(wait_for, lambda: not fault_sessions(db, rec.id), 10.0, what="sessions gone")

        asyncio.run(scenario())


@pytest.mark.serial
def test_leave_k_leaves_k_ordinary_slots_free(pg: PgServer, db: str) -> None:
    async def scenario() -> None:
        async with engine_for(db) as engine:
            rec = await engine.create(FaultRequest("connection-exhaustion", {"leave": 3}, duration_s=30))
            assert rec.details["free_ordinary_after"] == 3
            assert rec.params == {"leave": 3}
            # Three ordinary clients fit; exactly as many as were left.
            assert ordinary_free(db) == 3

    asyncio.run(scenario())


@pytest.mark.serial
def test_connections_n_takes_exactly_n_until_the_deadline(db: str) -> None:
    async def scenario() -> None:
        async with engine_for(db) as engine:
            rec = await engine.create(FaultRequest("connection-exhaustion", {"connections": 25}, duration_s=1.5))
            assert rec.params == {"connections": 25}
            assert rec.details["connections"] == 25
            assert len(fault_sessions(db, rec.id)) == 25
            await asyncio.to_thread(wait_for, lambda: rec.state.finished, 10.0, what="the deadline")
            assert rec.state is State.REVERTED
            assert rec.end_reason is EndReason.DEADLINE
            await asyncio.to_thread(wait_for, lambda: not fault_sessions(db, rec.id), 10.0, what="sessions gone")

    asyncio.run(scenario())


@pytest.mark.serial
def test_more_connections_than_free_is_a_conflict_and_opens_nothing(db: str) -> None:
    async def scenario() -> None:
        async with engine_for(db) as engine:
            with pytest.raises(Conflict) as info:
                await engine.create(FaultRequest("connection-exhaustion", {"connections": 5000}, duration_s=5))
            assert info.value.code == "not_enough_connection_slots"
            assert "max_connections" in info.value.message
            assert engine.all() == []
            with pytest.raises(Conflict):
                await engine.create(FaultRequest("connection-exhaustion", {"leave": 5000}, duration_s=5))

    asyncio.run(scenario())


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({}, "params"),
        ({"connections": 3, "leave": 0}, "params"),
        ({"connections": 0}, "params.connections"),
        ({"connections": "3"}, "params.connections"),
        ({"leave": -1}, "params.leave"),
        ({"leave": 1.5}, "params.leave"),
        ({"leave": 0, "extra": 1}, "params.extra"),
    ],
)
def test_bad_params_are_invalid_input(params: dict[str, Any], field: str) -> None:
    with pytest.raises(InvalidInput) as info:
        default_registry().build("connection-exhaustion", params)
    assert info.value.field == field
