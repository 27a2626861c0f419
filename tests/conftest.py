"""Session-wide real PostgreSQL servers and per-test databases."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from dbchaos.embedded.server import EmbeddedPostgres, embedded_binaries, system_binaries
from dbchaos.faults.migration.graph import RevisionGraph
from tests.alembic_helpers import INI
from tests.pg import ALEMBIC_TEMPLATE_DB, PgServer, fresh_database, prepare_template, server_labels, version_of


@pytest.fixture(scope="session", params=server_labels())
def pg(request: pytest.FixtureRequest) -> Iterator[PgServer]:
    """A running PostgreSQL server (superuser DSN), one per supported version here."""
    label = request.param
    if label == "custom":
        dsn = os.environ["DBCHAOS_TEST_DSN"]
        server = PgServer("custom", dsn, version_of(dsn))
        prepare_template(server)
        yield server
        return
    if label == "pg18":
        binaries = embedded_binaries()
        run_as = None
    else:
        found = system_binaries(15)
        if found is None:
            pytest.skip("Debian's PostgreSQL 15 binaries are not installed here")
        binaries = found
        run_as = "postgres" if os.geteuid() == 0 else None
    with EmbeddedPostgres(binaries, run_as=run_as) as embedded:
        server = PgServer(label, embedded.dsn, binaries.version)
        prepare_template(server)
        yield server


@pytest.fixture
def db(pg: PgServer) -> Iterator[str]:
    """DSN of a fresh database with the sample schema (items, users, orders)."""
    with fresh_database(pg) as dsn:
        yield dsn


@pytest.fixture
def alembic_db(pg: PgServer) -> Iterator[str]:
    """DSN of a fresh database migrated to head by the test Alembic project
    (tests/alembic_project: a1 -> b2 -> (c3 | d4) -> e5 merge -> f6 head), sample tables too."""
    with fresh_database(pg, ALEMBIC_TEMPLATE_DB) as dsn:
        yield dsn


@pytest.fixture(scope="session")
def graph() -> RevisionGraph:
    """The test Alembic project's revision graph, read with Alembic's ScriptDirectory."""
    return RevisionGraph.from_alembic_ini(INI)
