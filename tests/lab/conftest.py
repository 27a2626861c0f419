"""Databases for the demo shop: empty ones, and ones migrated to head and seeded."""

from __future__ import annotations

import secrets
from collections.abc import Iterator

import psycopg
import pytest
from psycopg import sql

from dbchaos.lab.demo.migrate import upgrade_head
from dbchaos.lab.demo.seed import seed
from tests.pg import PgServer


@pytest.fixture
def empty_db(pg: PgServer) -> Iterator[str]:
    """DSN of a new, empty database (dropped afterwards)."""
    name = f"shop_{secrets.token_hex(5)}"
    with psycopg.connect(pg.admin_dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {} TEMPLATE template0").format(sql.Identifier(name)))
    try:
        yield pg.dsn(name)
    finally:
        with psycopg.connect(pg.admin_dsn, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


@pytest.fixture
def shop_db(empty_db: str) -> str:
    """The demo shop's database: migrated to head by its real Alembic scripts and seeded."""
    run = upgrade_head(empty_db)
    assert run.ok, run.output
    seed(empty_db)
    return empty_db
