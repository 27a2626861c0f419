"""Debian's PgBouncer in front of a test PostgreSQL, for the pooling-proxy tests.

It runs as a non-root user (PgBouncer refuses root): the embedded server's user when the
tests run as root, else the current user. Its config, log and pid file live in a new temporary
folder owned by that user; nothing that existed before is changed. Skips only when the
``pgbouncer`` binary is missing (``apt-get install -y pgbouncer``).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import conninfo

from dbchaos.embedded.users import resolve_server_user
from tests.helpers import wait_for
from tests.server_proc import free_port


def pgbouncer_binary() -> str | None:
    return shutil.which("pgbouncer") or next(
        (p for p in ("/usr/sbin/pgbouncer", "/usr/bin/pgbouncer") if os.access(p, os.X_OK)), None
    )


@contextmanager
def pgbouncer(dsn: str, pool_mode: str) -> Iterator[str]:
    """Run PgBouncer (``pool_mode`` = ``session``, ``transaction`` or ``statement``) in front of
    the server of ``dsn``; yields the same DSN pointed at PgBouncer."""
    binary = pgbouncer_binary()
    if binary is None:
        pytest.skip("PgBouncer is not installed here (apt-get install -y pgbouncer)")
    parts = conninfo.conninfo_to_dict(dsn)
    user = resolve_server_user(None)  # root: the embedded server's user (PgBouncer refuses root)
    folder = Path(tempfile.mkdtemp(prefix="dbchaos-pgbouncer-"))
    port = free_port()
    try:
        (folder / "users.txt").write_text(f'"{parts.get("user", "postgres")}" ""\n')
        (folder / "pgbouncer.ini").write_text(
            "[databases]\n"
            f"* = host={parts.get('host', '127.0.0.1')} port={parts.get('port', 5432)}\n"
            "[pgbouncer]\n"
            "listen_addr = 127.0.0.1\n"
            f"listen_port = {port}\n"
            "unix_socket_dir =\n"
            "auth_type = trust\n"
            f"auth_file = {folder / 'users.txt'}\n"
            f"pool_mode = {pool_mode}\n"
            "default_pool_size = 10\n"
            "max_client_conn = 100\n"
            f"logfile = {folder / 'pgbouncer.log'}\n"
            f"pidfile = {folder / 'pgbouncer.pid'}\n"
        )
        extra: dict[str, Any] = {}
        if user is not None:
            for path in (folder, *folder.iterdir()):
                os.chown(path, user.uid, user.gid)
            extra = {"user": user.uid, "group": user.gid, "extra_groups": []}
        proc = subprocess.Popen(
            [binary, str(folder / "pgbouncer.ini")],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            **extra,
        )
        through = conninfo.make_conninfo(dsn, host="127.0.0.1", port=str(port))

        def ready() -> bool:
            if proc.poll() is not None:
                log = folder / "pgbouncer.log"
                raise AssertionError(f"pgbouncer exited ({proc.returncode}): {log.read_text() if log.exists() else ''}")
            try:
                with psycopg.connect(through, connect_timeout=2, autocommit=True) as conn:
                    conn.execute("SELECT 1")
                return True
            except psycopg.OperationalError:
                return False

        try:
            wait_for(ready, timeout=15, interval=0.1, what=f"PgBouncer ({pool_mode}) to accept connections")
            yield through
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
