"""The pytest plugin (``dbchaos`` fixture and marker) and the ``dbchaos.testing`` context
managers, run the way an application's suite runs them: a separate pytest (pytester) with the
installed plugin, against a real server or in-process on a real database."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from dbchaos.cli.init import opt_in_target
from dbchaos.lab.demo.migrate import upgrade_head
from dbchaos.lab.demo.seed import seed
from dbchaos.targets import Target
from dbchaos.testing import held, table_lock
from tests.helpers import dbchaos_lock_count, no_dbchaos_sessions, relation_locks
from tests.lab.demo_proc import demo_shop
from tests.pg import PgServer, fresh_database
from tests.server_proc import dbchaos_server, free_port

pytest_plugins = ["pytester"]


def _load_httpx_transport() -> None:
    """pytester restores ``sys.modules`` after each of its tests. httpx imports its transport
    (httpcore) on first use: first used inside such a test, it would be imported again later
    with new exception classes, which httpx then no longer maps (a raw httpcore.ConnectError
    escapes ``except httpx.HTTPError``). So use it once now."""
    with contextlib.suppress(httpx.HTTPError):
        httpx.get(f"http://127.0.0.1:{free_port()}/", timeout=1)


_load_httpx_transport()

#: an application's tests, as its authors would write them with the plugin
APP_TESTS = '''
import psycopg
import pytest

DSN = {dsn!r}


def read_items(table="items"):
    """The app's read, with a 300 ms lock_timeout: 'read' or 'timed out'."""
    with psycopg.connect(DSN) as conn:
        conn.execute("SET lock_timeout = '300ms'")
        try:
            conn.execute(f"SELECT count(*) FROM {{table}}")
        except psycopg.errors.LockNotAvailable:
            return "timed out"
        return "read"


def test_a_locked_table_makes_reads_time_out(dbchaos):
    with dbchaos.table_lock("items") as fault:
        assert fault.fault.state == "active" and fault.fault.kind == "table-lock"
        assert read_items() == "timed out"
    assert fault.fault.state == "reverted"
    assert read_items() == "read"


def test_the_lock_is_reverted_when_the_block_raises(dbchaos):
    with pytest.raises(RuntimeError):
        with dbchaos.table_lock("items"):
            raise RuntimeError("the app misbehaved")
    assert read_items() == "read"


@pytest.mark.dbchaos("table-lock", {{"tables": ["users"]}}, duration_s=30, labels={{"suite": "app"}})
def test_the_marker_holds_a_fault_for_the_whole_test(dbchaos):
    assert dbchaos.marked is not None and dbchaos.marked.fault.labels == {{"suite": "app"}}
    assert read_items("users") == "timed out"


def test_after_the_marked_test_users_is_free():
    assert read_items("users") == "read"


def test_inject_holds_until_the_test_ends(dbchaos):
    fault = dbchaos.inject("table-lock", {{"tables": ["orders"]}}, duration_s=30)
    assert read_items("orders") == "timed out"
    assert fault.refresh().state == "active"


def test_after_it_orders_is_free():
    assert read_items("orders") == "read"
'''

INERT = """
def test_plain():
    assert True


def test_needs_dbchaos(dbchaos):
    raise AssertionError("never runs without configuration")
"""


@pytest.fixture(autouse=True)
def _no_dbchaos_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("DBCHAOS_URL", "DBCHAOS_TEST_TARGET", "DBCHAOS_TOKEN"):
        monkeypatch.delenv(name, raising=False)


def test_the_fixture_and_marker_against_a_server(db: str, tmp_path: Path, pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_app=APP_TESTS.format(dsn=db))
    with dbchaos_server(["--target", db], tmp_path) as server:
        result = pytester.runpytest_subprocess("--dbchaos-url", server.url, "-p", "no:cacheprovider")
        result.assert_outcomes(passed=6)
    assert dbchaos_lock_count(db) == 0 and no_dbchaos_sessions(db)


def test_the_fixture_and_marker_in_process_on_a_dsn(db: str, pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_app=APP_TESTS.format(dsn=db))
    result = pytester.runpytest_subprocess("--dbchaos-dsn", db, "-p", "no:cacheprovider")
    result.assert_outcomes(passed=6)
    assert dbchaos_lock_count(db) == 0 and no_dbchaos_sessions(db)


def test_unconfigured_the_plugin_is_inert(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_inert=INERT)
    result = pytester.runpytest_subprocess("-rs", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=1, skipped=1)
    result.stdout.fnmatch_lines(["*dbchaos is not configured*--dbchaos-url*"])
    assert "dbchaos-" in result.stdout.str()  # the header lists the plugin: it is loaded, and did nothing


def test_the_context_managers_on_their_own(db: str, tmp_path: Path) -> None:
    def blocked(table: str) -> bool:
        return any(granted for _, _, granted, _ in relation_locks(db, table))

    with dbchaos_server(["--target", db], tmp_path) as server:
        with table_lock("items", where=server.url) as fault:
            assert blocked("items") and fault.fault.target == "default"
        assert not blocked("items") and fault.fault.state == "reverted"
    seen: list[bool] = []

    def fails_while_held() -> None:
        with held(db, "table-lock", {"tables": ["users"]}) as fault:
            seen.append(blocked("users"))
            seen.append(fault.fault.state == "active")
            raise ZeroDivisionError

    with pytest.raises(ZeroDivisionError):
        fails_while_held()
    assert seen == [True, True] and not blocked("users")
    assert no_dbchaos_sessions(db)


@pytest.fixture
def shop_db(pg: PgServer) -> Iterator[str]:
    """The lab's demo shop database (its real Alembic migrations, seeded, opted in)."""
    with fresh_database(pg, "template0") as dsn:
        run = upgrade_head(dsn)
        assert run.ok, run.output
        seed(dsn)
        asyncio.run(opt_in_target(Target("shop", dsn), "the pytest plugin test"))
        yield dsn


def test_the_victim_apps_suite_uses_the_plugin(shop_db: str, tmp_path: Path, pytester: pytest.Pytester) -> None:
    """Acceptance 4: a test of the demo shop (FastAPI + SQLAlchemy, hardened: lock_timeout
    500 ms, 503 on lock errors) asserts with the plugin that it fails fast under a lock."""
    with demo_shop(shop_db, tmp_path, mode="hardened") as shop:
        pytester.makepyfile(
            test_shop=f"""
import time
import httpx

SHOP = {shop.url!r}


def test_items_fail_fast_with_503_while_items_is_locked(dbchaos):
    with dbchaos.table_lock("items", duration_s=30):
        started = time.monotonic()
        resp = httpx.get(SHOP + "/items", timeout=10)
        took = time.monotonic() - started
    assert resp.status_code == 503, resp.text
    assert resp.json()["sqlstate"] == "55P03" and resp.headers["Retry-After"] == "1"
    assert took < 2.0
    assert httpx.get(SHOP + "/items", timeout=10).status_code == 200
"""
        )
        result = pytester.runpytest_subprocess("--dbchaos-dsn", shop_db, "-p", "no:cacheprovider")
        result.assert_outcomes(passed=1)
        assert httpx.get(f"{shop.url}/items", timeout=10).status_code == 200
    assert dbchaos_lock_count(shop_db) == 0
