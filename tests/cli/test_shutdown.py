"""Graceful shutdown: SIGTERM / SIGINT revert every fault before dbchaos exits 0."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest

from tests.alembic_helpers import HEAD, INI
from tests.helpers import no_dbchaos_sessions, query, relation_locks
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
