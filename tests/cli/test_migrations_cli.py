"""``dbchaos migrations status`` as a user runs it: a real process, real PostgreSQL."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import psycopg

from tests.alembic_helpers import HEAD, INI
from tests.helpers import query


def dbchaos(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, COLUMNS="200")
    for var in ("DBCHAOS_TARGET_DSN", "DBCHAOS_ALEMBIC_INI"):
        env.pop(var, None)
    return subprocess.run(
        [sys.executable, "-m", "dbchaos", *args], capture_output=True, text=True, timeout=timeout, env=env
    )


def test_words_and_json(alembic_db: str) -> None:
    res = dbchaos("migrations", "status", "--target", alembic_db, "--alembic-ini", str(INI))
    assert res.returncode == 0, res.stderr
    assert "public.alembic_version: at head" in res.stdout
    assert "nothing to repair" in res.stdout

    query(alembic_db, "UPDATE alembic_version SET version_num = 'feedface0000'")
    res = dbchaos("migrations", "status", "--target", alembic_db, "--alembic-ini", str(INI))
    assert res.returncode == 0, res.stderr
    assert "public.alembic_version: unknown revision" in res.stdout
    assert "stored:  feedface0000" in res.stdout
    assert f"heads:   {HEAD}" in res.stdout
    assert "alembic stamp --purge head" in res.stdout

    res = dbchaos("migrations", "status", "--target", alembic_db, "--alembic-ini", str(INI), "--json")
    assert res.returncode == 0, res.stderr
    body = json.loads(res.stdout)
    assert body["state"] == "unknown revision"
    assert body["stored"] == ["feedface0000"] and body["heads"] == [HEAD]


def test_locked_in_words_without_scripts(alembic_db: str) -> None:
    with psycopg.connect(alembic_db, application_name="deploy-script") as holder:
        holder.execute("LOCK TABLE alembic_version IN ACCESS EXCLUSIVE MODE")
        res = dbchaos("migrations", "status", "--target", alembic_db)
        assert res.returncode == 0, res.stderr
        assert "public.alembic_version: locked" in res.stdout
        assert f"pid {holder.info.backend_pid}" in res.stdout and "deploy-script" in res.stdout
        assert "(unknown: pass --alembic-ini)" in res.stdout
        holder.rollback()


def test_missing_table_and_unreachable_target(alembic_db: str) -> None:
    query(alembic_db, "ALTER TABLE alembic_version RENAME TO hidden_versions")
    res = dbchaos("migrations", "status", "--target", alembic_db, "--json")
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout)["state"] == "version table missing"

    res = dbchaos("migrations", "status", "--target", "postgresql://postgres@127.0.0.1:1/nowhere")
    assert res.returncode == 3
    assert "cannot connect" in res.stderr
    res = dbchaos("migrations", "status", "--target", "postgresql://postgres@127.0.0.1:1/nowhere", "--json")
    assert res.returncode == 3
    assert json.loads(res.stdout)["error"]["code"] == "target_unreachable"
