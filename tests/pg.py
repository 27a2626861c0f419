"""Real PostgreSQL servers for the test suite (never a mock).

The suite runs its database tests on every server it can start here: the embedded
18.x wheel and, where present, Debian's PostgreSQL 15 (run as ``postgres``).
``DBCHAOS_TEST_DSN`` replaces both with one server of your choosing (a superuser DSN).
"""

from __future__ import annotations

import asyncio
import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import psycopg
from psycopg import conninfo, sql

from dbchaos.cli.init import opt_in_target
from dbchaos.embedded.sample import create_sample_database
from dbchaos.targets import Target


@dataclass(frozen=True)
class PgServer:
    label: str
    admin_dsn: str
    version: int

    def dsn(self, dbname: str, **overrides: str) -> str:
        return conninfo.make_conninfo(self.admin_dsn, dbname=dbname, **overrides)


def server_labels() -> list[str]:
    if os.environ.get("DBCHAOS_TEST_DSN"):
        return ["custom"]
    return ["pg18", "pg15"]


def version_of(dsn: str) -> int:
    with psycopg.connect(dsn) as conn:
        row = conn.execute("SHOW server_version_num").fetchone()
        assert row is not None
        return int(row[0]) // 10000


TEMPLATE_DB = "dbchaos_test_template"
ALEMBIC_TEMPLATE_DB = "dbchaos_test_alembic_template"


def prepare_template(server: PgServer) -> None:
    """Create the template databases the per-test databases copy: the sample schema, and
    the same migrated to head by the test Alembic project."""
    from tests.alembic_helpers import migrate

    create_sample_database(server.admin_dsn, TEMPLATE_DB)
    # every copy has opted in to dbchaos faults (tests/test_optin.py covers databases that have not)
    asyncio.run(opt_in_target(Target("template", server.dsn(TEMPLATE_DB)), "the test template"))
    with psycopg.connect(server.admin_dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(ALEMBIC_TEMPLATE_DB)))
        conn.execute(
            sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(
                sql.Identifier(ALEMBIC_TEMPLATE_DB), sql.Identifier(TEMPLATE_DB)
            )
        )
    migrate(server.dsn(ALEMBIC_TEMPLATE_DB))


@contextmanager
def fresh_database(server: PgServer, template: str = TEMPLATE_DB) -> Iterator[str]:
    """A new database copied from a template; dropped (sessions forced out) afterwards."""
    name = f"t_{secrets.token_hex(6)}"
    with psycopg.connect(server.admin_dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(sql.Identifier(name), sql.Identifier(template)))
    try:
        yield server.dsn(name)
    finally:
        with psycopg.connect(server.admin_dsn, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


@contextmanager
def unprivileged_role(server: PgServer, dbname: str, *, password: str | None = None) -> Iterator[str]:
    """A LOGIN role without superuser rights; yields its DSN for ``dbname``."""
    role = f"r_{secrets.token_hex(5)}"
    pw = password or secrets.token_urlsafe(12)
    with psycopg.connect(server.admin_dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(sql.Identifier(role), sql.Literal(pw)))
    with psycopg.connect(server.dsn(dbname), autocommit=True) as conn:
        conn.execute(sql.SQL("GRANT ALL ON ALL TABLES IN SCHEMA public TO {}").format(sql.Identifier(role)))
        conn.execute(sql.SQL("GRANT CREATE, USAGE ON SCHEMA public TO {}").format(sql.Identifier(role)))
    try:
        yield server.dsn(dbname, user=role, password=pw)
    finally:
        with psycopg.connect(server.dsn(dbname), autocommit=True) as conn:
            conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = %s", (role,))
            conn.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(role)))
        with psycopg.connect(server.admin_dsn, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(role)))
