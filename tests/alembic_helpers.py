"""The test Alembic project (tests/alembic_project) and running the real ``alembic`` CLI."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

PROJECT = Path(__file__).parent / "alembic_project"
INI = PROJECT / "alembic.ini"

# the revision graph: a1 -> b2 -> (c3 | d4) -> e5 (merge) -> f6 (head)
BASE = "a1c3e5f70001"
INVOICES = "b2d4f6081002"
BRANCH_A = "c3e5a7192003"
BRANCH_B = "d4f6b82a3004"
MERGE = "e5a7c93b4005"
HEAD = "f6b8da4c5006"


def sqlalchemy_url(dsn: str) -> str:
    from psycopg import conninfo

    p = conninfo.conninfo_to_dict(dsn)
    user = p.get("user", "postgres")
    pw = f":{p['password']}" if p.get("password") else ""
    return f"postgresql+psycopg://{user}{pw}@{p.get('host', '127.0.0.1')}:{p.get('port', 5432)}/{p['dbname']}"


def alembic(
    dsn: str, *args: str, timeout: float = 60, version_table: str | None = None
) -> subprocess.CompletedProcess[str]:
    """Run the real ``alembic`` command against ``dsn``."""
    env = dict(os.environ, DBCHAOS_ALEMBIC_URL=sqlalchemy_url(dsn))
    if version_table:
        env["DBCHAOS_ALEMBIC_VERSION_TABLE"] = version_table
    return subprocess.run(
        [sys.executable, "-m", "alembic", "-c", str(INI), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        cwd=PROJECT,
    )


def migrate(dsn: str, revision: str = "heads") -> None:
    res = alembic(dsn, "upgrade", revision)
    assert res.returncode == 0, res.stderr


def last_line(res: subprocess.CompletedProcess[str]) -> str:
    """The last non-empty line Alembic printed (errors end up there)."""
    lines = [ln for ln in (res.stdout + "\n" + res.stderr).splitlines() if ln.strip()]
    return lines[-1] if lines else ""
