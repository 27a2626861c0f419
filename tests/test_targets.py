from __future__ import annotations

import asyncio
import socket

import psycopg
import pytest
from psycopg import sql

from dbchaos.errors import InvalidInput
from dbchaos.targets import Target, check_target, mask_dsn, parse_dsn, scrub, usability_problem
from tests.pg import PgServer, unprivileged_role


def test_mask_dsn_hides_password_in_uri_and_keyword_forms() -> None:
    uri = mask_dsn("postgresql://app:s3cret-pw@db.example:5433/shop?sslmode=require")
    kv = mask_dsn("host=db.example user=app password='s3cret-pw' dbname=shop")
    for masked in (uri, kv):
        assert "s3cret-pw" not in masked
        assert "***" in masked
        assert "db.example" in masked
    assert parse_dsn(uri)["port"] == "5433"


def test_mask_dsn_without_password_is_unchanged_in_substance() -> None:
    assert parse_dsn(mask_dsn("postgresql://app@h/db")) == {"user": "app", "host": "h", "dbname": "db"}


def test_unparseable_dsn_is_invalid_input() -> None:
    with pytest.raises(InvalidInput):
        parse_dsn("host='unterminated")
    assert mask_dsn("host='unterminated password=x") == "<unparseable DSN>"


def test_scrub_removes_password_from_free_text() -> None:
    assert scrub("failed for pw hunter2!", "postgresql://u:hunter2@h/d") == "failed for pw ***!"


@pytest.mark.parametrize(
    ("num", "recovery", "read_only", "needle"),
    [
        (130011, False, False, "needs 14 or newer"),
        (140000, True, False, "replica"),
        (150004, False, True, "read-only"),
    ],
)
def test_usability_rules(num: int, recovery: bool, read_only: bool, needle: str) -> None:
    problem = usability_problem(
        "default", server_version_num=num, server_version=str(num), in_recovery=recovery, read_only=read_only
    )
    assert problem is not None
    assert needle in problem


def test_supported_server_is_usable() -> None:
    assert (
        usability_problem(
            "default", server_version_num=140000, server_version="14.0", in_recovery=False, read_only=False
        )
        is None
    )


def test_check_reports_version_of_a_real_server(pg: PgServer, db: str) -> None:
    check = asyncio.run(check_target(Target("default", db)))
    assert check.reachable and check.usable, check.problem
    assert check.server_version_num is not None
    assert check.server_version_num // 10000 == pg.version
    assert check.in_recovery is False
    assert check.read_only is False


def test_check_names_a_read_only_database(db: str) -> None:
    dbname = parse_dsn(db)["dbname"]
    with psycopg.connect(db, autocommit=True) as conn:
        conn.execute(sql.SQL("ALTER DATABASE {} SET default_transaction_read_only = on").format(sql.Identifier(dbname)))
    check = asyncio.run(check_target(Target("default", db)))
    assert check.reachable
    assert not check.usable
    assert check.problem is not None
    assert "read-only" in check.problem


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_check_names_an_unreachable_target_without_its_password() -> None:
    dsn = f"postgresql://app:TopSecret123@127.0.0.1:{_closed_port()}/shop"
    check = asyncio.run(check_target(Target("default", dsn), connect_timeout_s=1))
    assert not check.reachable
    assert not check.usable
    assert check.problem is not None
    assert "cannot connect" in check.problem
    assert "TopSecret123" not in repr(check.as_dict())


def test_wrong_password_is_reported_without_the_password(pg: PgServer, db: str) -> None:
    dbname = parse_dsn(db)["dbname"]
    with unprivileged_role(pg, dbname, password="Right-Pw-1") as role_dsn:
        # the embedded servers trust local connections; make this one check passwords
        ok = asyncio.run(check_target(Target("default", role_dsn)))
        assert ok.reachable and ok.usable, ok.problem
        assert "Right-Pw-1" not in repr(ok.as_dict())
