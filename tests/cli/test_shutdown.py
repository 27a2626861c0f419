"""Graceful shutdown: SIGTERM / SIGINT revert every fault before dbchaos exits 0."""

from __future__ import annotations

import asyncio
import signal
import time
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql

from dbchaos.faults.migration.fingerprint import fingerprint
from tests.alembic_helpers import HEAD, INI
from tests.helpers import no_dbchaos_sessions, query, relation_locks, wait_for
from tests.server_proc import dbchaos_server


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_reverts_every_fault_then_exits_0(alembic_db: str, tmp_path: Path, signum: int) -> None:
    with dbchaos_server(["--target", alembic_db, "--alembic-ini", str(INI)], tmp_path) as server:
        with server.client() as client:
            lock = client.post("/v1/faults", json={"kind": "table-lock", "params": {"tables": ["items"]}})
            assert lock.status_code == 201, lock.text
            mig = client.post("/v1/faults", json={"kind": "unknown-revision", "duration_s": 300})
            assert mig.status_code == 201, mig.text
        assert relation_locks(alembic_db, "items")
        assert query(alembic_db, "SELECT version_num FROM alembic_version") != [(HEAD,)]
        server.proc.send_signal(signum)
        assert server.proc.wait(30) == 0, server.output()
        # reverted by dbchaos itself before it exited, not by PostgreSQL's timeouts later
        assert relation_locks(alembic_db, "items") == []
        assert no_dbchaos_sessions(alembic_db)
        assert query(alembic_db, "SELECT version_num FROM alembic_version") == [(HEAD,)]
        assert query(alembic_db, "SELECT state, end_reason FROM dbchaos.journal") == [("reverted", "shutdown")]


def _table_name(dsn: str, oid: int) -> str | None:
    rows = query(dsn, "SELECT relname FROM pg_class WHERE oid = %s", (oid,))
    return str(rows[0][0]) if rows else None


def _fingerprint(dsn: str, oid: int) -> dict[str, Any]:
    async def read() -> dict[str, Any]:
        async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
            return await fingerprint(conn, [oid])

    return asyncio.run(read())


# SIGINT takes the same path (status 130); it runs with the drills to keep the fast suite short
@pytest.mark.parametrize("signum", [signal.SIGTERM, pytest.param(signal.SIGINT, marks=pytest.mark.drill)])
def test_a_second_signal_exits_at_once_and_the_next_start_recovers(
    alembic_db: str, tmp_path: Path, signum: int
) -> None:
    """A revert stuck behind someone's lock does not hold dbchaos hostage: the second signal
    exits within ~2 s (128 + signal), and the next server's recovery restores the schema."""
    oid = int(query(alembic_db, "SELECT 'public.orders'::regclass::oid")[0][0])
    before = _fingerprint(alembic_db, oid)
    holder = psycopg.connect(alembic_db, application_name="long-report")
    try:
        with dbchaos_server(["--target", alembic_db], tmp_path) as server:
            with server.client() as client:
                hide = client.post("/v1/faults", json={"kind": "hidden-object", "params": {"table": "orders"}})
                assert hide.status_code == 201, hide.text
            hidden = _table_name(alembic_db, oid)
            assert hidden is not None and hidden != "orders"
            # a reader holds the hidden table: renaming it back needs ACCESS EXCLUSIVE, so the revert waits
            holder.execute(sql.SQL("LOCK TABLE {} IN ACCESS SHARE MODE").format(sql.Identifier("public", hidden)))

            server.proc.send_signal(signum)
            wait_for(lambda: "reverting every fault" in server.output(), 10, what="the server to start reverting")
            wait_for(
                lambda: any(not granted for _, _, granted, _ in relation_locks(alembic_db, f"public.{hidden}")),
                10,
                what="the revert to wait for its lock",
            )
            started = time.monotonic()
            server.proc.send_signal(signum)
            code = server.proc.wait(5)
            assert time.monotonic() - started < 2.0, server.output()
            assert code == 128 + signum, server.output()
            assert f"second {signal.Signals(signum).name}" in server.output()
        # nothing was reverted: the journal still holds the fault for the next start
        assert _table_name(alembic_db, oid) == hidden
        assert query(alembic_db, "SELECT state FROM dbchaos.journal") == [("active",)]
        assert no_dbchaos_sessions(alembic_db)  # PostgreSQL ended the dead server's sessions
    finally:
        holder.close()

    with dbchaos_server(["--target", alembic_db], tmp_path):
        wait_for(lambda: _table_name(alembic_db, oid) == "orders", 15, what="recovery to restore public.orders")
        assert query(alembic_db, "SELECT state, end_reason FROM dbchaos.journal") == [("reverted", "recovered")]
    assert _fingerprint(alembic_db, oid) == before
