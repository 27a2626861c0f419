"""pytest plugin: the ``dbchaos`` fixture and the ``dbchaos`` marker, for an application's
own test suite (registered through the ``pytest11`` entry point, so installing dbchaos is
enough).

Configure where faults go with ``--dbchaos-url URL`` (a dbchaos server) or
``--dbchaos-dsn DSN`` (an in-process engine on that database; it must have opted in with
``dbchaos init``), or ``DBCHAOS_URL`` / ``DBCHAOS_TEST_TARGET``; ``--dbchaos-token`` or
``DBCHAOS_TOKEN`` when the server has tokens. Unconfigured, the plugin does nothing: tests
that ask for the fixture (or carry the marker) are skipped, every other test is untouched.

::

    def test_checkout_fails_fast_when_orders_is_locked(dbchaos, client):
        with dbchaos.table_lock("orders"):
            assert client.post("/checkout").status_code == 503

    @pytest.mark.dbchaos("idle-transaction", {"tables": ["orders"]}, duration_s=30)
    def test_vacuum_is_held_back(...): ...   # the fault holds for the whole test

Faults a test injects with ``dbchaos.inject`` are reverted when the test ends.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from dbchaos.testing import Backend, HeldFault

MARKER_HELP = (
    "dbchaos(kind, params=None, **options): hold this dbchaos fault while the test runs "
    "(options: duration_s, labels, acquire_timeout_s, target)"
)
SKIP_REASON = (
    "dbchaos is not configured: pass --dbchaos-url (a dbchaos server) or --dbchaos-dsn (a test database), "
    "or set DBCHAOS_URL / DBCHAOS_TEST_TARGET"
)


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("dbchaos", "dbchaos faults (dbchaos.pytest_plugin)")
    group.addoption("--dbchaos-url", default=None, help="dbchaos server for the dbchaos fixture (env DBCHAOS_URL)")
    group.addoption(
        "--dbchaos-dsn",
        default=None,
        help="inject in-process into this PostgreSQL database instead (env DBCHAOS_TEST_TARGET)",
    )
    group.addoption("--dbchaos-token", default=None, help="bearer token for the dbchaos server (env DBCHAOS_TOKEN)")
    group.addoption("--dbchaos-alembic-ini", default=None, help="alembic.ini for migration kinds with --dbchaos-dsn")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", MARKER_HELP)


def _where(config: pytest.Config) -> str | None:
    url = config.getoption("--dbchaos-url") or os.environ.get("DBCHAOS_URL")
    dsn = config.getoption("--dbchaos-dsn") or os.environ.get("DBCHAOS_TEST_TARGET")
    return str(url or dsn) if (url or dsn) else None


class DbChaos:
    """What the ``dbchaos`` fixture gives a test: faults on the configured target, reverted
    at the latest when the test ends."""

    def __init__(self, backend: Backend, where: str) -> None:
        self.backend = backend
        self.where = where
        self._stack = contextlib.ExitStack()
        #: the fault of the test's ``@pytest.mark.dbchaos`` marker, while it holds
        self.marked: HeldFault | None = None

    def held(
        self, kind: str, params: Mapping[str, Any] | None = None, **options: Any
    ) -> contextlib.AbstractContextManager[HeldFault]:
        """A fault for a ``with`` block (reverted when the block ends)."""
        from dbchaos.testing import hold

        return hold(self.backend, kind, params, **options)

    def table_lock(
        self, tables: str | Sequence[str], mode: str = "ACCESS EXCLUSIVE", **options: Any
    ) -> contextlib.AbstractContextManager[HeldFault]:
        names = [tables] if isinstance(tables, str) else list(tables)
        return self.held("table-lock", {"tables": names, "mode": mode}, **options)

    def inject(self, kind: str, params: Mapping[str, Any] | None = None, **options: Any) -> HeldFault:
        """A fault held until you ``.end()`` it or the test ends."""
        return self._stack.enter_context(self.held(kind, params, **options))

    def end_all(self) -> None:
        self._stack.close()


@pytest.fixture(scope="session")
def _dbchaos_backend(pytestconfig: pytest.Config) -> Iterator[Backend | None]:
    """One backend per test session (an in-process engine starts once)."""
    where = _where(pytestconfig)
    if where is None:
        yield None
        return
    from dbchaos.testing import backend_for

    token = pytestconfig.getoption("--dbchaos-token") or os.environ.get("DBCHAOS_TOKEN")
    backend = backend_for(where, token=token, alembic_ini=pytestconfig.getoption("--dbchaos-alembic-ini"))
    try:
        yield backend
    finally:
        backend.close()


@pytest.fixture
def dbchaos(_dbchaos_backend: Backend | None, pytestconfig: pytest.Config) -> Iterator[DbChaos]:
    """Faults on the configured target (skips the test when dbchaos is not configured)."""
    if _dbchaos_backend is None:
        pytest.skip(SKIP_REASON)
    helper = DbChaos(_dbchaos_backend, _where(pytestconfig) or "")
    try:
        yield helper
    finally:
        helper.end_all()


@pytest.fixture(autouse=True)
def _dbchaos_marker(request: pytest.FixtureRequest) -> Iterator[None]:
    """Holds the fault of a ``@pytest.mark.dbchaos(...)`` test for its whole run; a no-op
    (no fixture requested, nothing imported) for every other test."""
    marker = request.node.get_closest_marker("dbchaos")
    if marker is None:
        yield
        return
    helper: DbChaos = request.getfixturevalue("dbchaos")
    kind, *rest = marker.args
    options = dict(marker.kwargs)
    params = rest[0] if rest else options.pop("params", None)
    with helper.held(kind, params, **options) as fault:
        helper.marked = fault
        yield
