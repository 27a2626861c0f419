"""Least privilege on real PostgreSQL: the role docs/least-privilege.md creates runs every
kind; a weaker role gets 403s that name the grant to add, and health says what it cannot run.

The role is made by executing the SQL blocks of the doc itself, so the doc cannot drift
from what was tested.
"""

from __future__ import annotations

import asyncio
import re
import secrets
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest
from fastapi.testclient import TestClient
from psycopg import conninfo, sql

from dbchaos import privileges
from dbchaos.api.app import create_app
from dbchaos.cli.init import opt_in_target
from dbchaos.engine.engine import FaultRequest
from dbchaos.engine.model import State
from dbchaos.errors import Forbidden
from dbchaos.faults.migration.fingerprint import fingerprint
from dbchaos.faults.migration.graph import RevisionGraph
from dbchaos.faults.names import LOCK_MODES, ROW_STRENGTHS
from dbchaos.settings import Settings
from dbchaos.targets import Target
from tests.alembic_helpers import HEAD
from tests.helpers import dbchaos_lock_count, no_dbchaos_sessions, query, running_engine
from tests.pg import PgServer

DOC = Path(__file__).parent.parent / "docs" / "least-privilege.md"


def doc_blocks() -> dict[str, str]:
    """The doc's SQL blocks: ``core`` (the script) and ``owner`` (the optional part 5)."""
    blocks = re.findall(r"```sql\n(.*?)```", DOC.read_text(), flags=re.DOTALL)
    core = [b for b in blocks if b.startswith("-- dbchaos least-privilege role")]
    owner = [b for b in blocks if b.startswith("-- 5. Optional")]
    assert len(core) == 1 and len(owner) == 1, "docs/least-privilege.md lost its SQL blocks"
    return {"core": core[0], "owner": owner[0]}


def dbname_of(dsn: str) -> str:
    return str(conninfo.conninfo_to_dict(dsn)["dbname"])


def drop_roles(admin_dsn: str, dsn: str, *roles: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        existing = [
            r for r in roles if conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (r,)).fetchone() is not None
        ]
        conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = ANY(%s)", (existing,))
        for r in existing:
            conn.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(r)))
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        for r in roles:
            conn.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(r)))


@dataclass(frozen=True)
class Documented:
    role: str  # the doc's ``dbchaos`` role (renamed: roles are per cluster, servers may be shared)
    app_owner: str  # the doc's ``app_owner``
    dsn: str  # as that role
    admin: str  # superuser, same database


@contextmanager
def documented_role(pg: PgServer, db: str, *, part_5: bool) -> Iterator[Documented]:
    """``db`` with its public tables owned by an application owner role, no dbchaos schema
    yet, and the role made by the doc's script, executed as written (names substituted)."""
    tag = secrets.token_hex(3)
    role, owner, password = f"dbchaos_{tag}", f"app_owner_{tag}", secrets.token_urlsafe(12)
    blocks = doc_blocks()
    script = blocks["core"] + (blocks["owner"] if part_5 else "")
    script, n_roles = re.subn(r"\b(ROLE|TO) dbchaos\b", rf"\1 {role}", script)
    assert n_roles >= 5, "the doc's script no longer names the role as expected"
    script = script.replace("app_owner", owner).replace(" shop ", f" {dbname_of(db)} ")
    script = script.replace("'change-me'", f"'{password}'")
    with psycopg.connect(db, autocommit=True) as conn:
        conn.execute("DROP SCHEMA dbchaos CASCADE")  # the template opted in as postgres; start clean
        conn.execute(sql.SQL("CREATE ROLE {} NOLOGIN").format(sql.Identifier(owner)))
        for (name,) in conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'").fetchall():
            conn.execute(
                sql.SQL("ALTER TABLE {} OWNER TO {}").format(sql.Identifier("public", name), sql.Identifier(owner))
            )
        conn.execute(script)
    dsn = pg.dsn(dbname_of(db), user=role, password=password)
    try:
        # then, as the doc says, the role opts the database in itself
        state, created = asyncio.run(opt_in_target(Target("t", dsn), "docs/least-privilege.md"))
        assert state.opted_in and created
        yield Documented(role, owner, dsn, db)
    finally:
        drop_roles(pg.admin_dsn, db, role, owner)


@pytest.fixture
def documented(pg: PgServer, alembic_db: str) -> Iterator[Documented]:
    """The whole script, part 5 (ownership) included."""
    with documented_role(pg, alembic_db, part_5=True) as d:
        yield d


@pytest.fixture
def documented_core(pg: PgServer, alembic_db: str) -> Iterator[Documented]:
    """The script without its optional part 5."""
    with documented_role(pg, alembic_db, part_5=False) as d:
        yield d


def schema_state(dsn: str) -> tuple[Any, ...]:
    """Every public table's fingerprint, and the stored revision."""

    async def fp() -> dict[str, Any]:
        async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
            rows = await (
                await conn.execute(
                    "SELECT oid FROM pg_class WHERE relnamespace = 'public'::regnamespace AND relkind = 'r'"
                )
            ).fetchall()
            return await fingerprint(conn, [int(r[0]) for r in rows])

    return asyncio.run(fp()), query(dsn, "SELECT version_num FROM alembic_version")


#: every kind, with parameters that work on the Alembic test database
EVERY_KIND: list[tuple[str, dict[str, Any]]] = [
    *[("table-lock", {"tables": ["items"], "mode": m}) for m in LOCK_MODES],
    *[("row-lock", {"table": "users", "strength": s, "limit": 3}) for s in ROW_STRENGTHS],
    ("advisory-lock", {"keys": [42, [1, 2]]}),
    ("idle-transaction", {"tables": ["orders"]}),
    ("connection-exhaustion", {"connections": 2}),
    ("unknown-revision", {}),
    ("future-revision", {}),
    ("missing-version", {}),
    ("behind", {"steps": 1}),
    ("multiple-heads", {"variant": "overlap"}),
    ("locked-version-table", {"mode": "ACCESS EXCLUSIVE"}),
    ("migration-lock-queue", {"table": "items"}),
    ("missing-table", {}),
    ("hidden-object", {"table": "orders"}),
    ("hidden-object", {"table": "users", "column": "email"}),
    ("conflicting-object", {"object": "table", "table": "public.coupons"}),
    ("conflicting-object", {"object": "column", "table": "accounts", "column": "nickname", "type": "text"}),
    ("conflicting-object", {"object": "index", "table": "orders", "index": "ix_orders_qty", "columns": ["quantity"]}),
]


def test_the_documented_role_runs_every_kind(pg: PgServer, documented: Documented, graph: RevisionGraph) -> None:
    before = schema_state(documented.admin)
    assert query(documented.admin, "SELECT rolsuper FROM pg_roles WHERE rolname = %s", (documented.role,)) == [(False,)]
    kinds_run = {k for k, _ in EVERY_KIND}
    assert kinds_run == set(privileges.KINDS)

    async def scenario() -> None:
        async with running_engine(documented.dsn, graph) as engine:
            caps = await engine.channel(engine.target(None)).run(privileges.capabilities)
            assert caps["role"] == documented.role and caps["superuser"] is False and caps["pg_read_all_stats"] is True
            assert caps["cannot_run"] == []
            assert all(v["degraded"] == [] for k, v in caps["kinds"].items() if k != "connection-exhaustion")
            for kind, params in EVERY_KIND:
                rec = await engine.create(FaultRequest(kind, params, duration_s=30, acquire_timeout_s=5))
                assert rec.state is State.ACTIVE, (kind, params, rec.error)
                done = await engine.abort(rec.id)
                assert done.state is State.REVERTED, (kind, params, done.error)

    asyncio.run(scenario())
    assert no_dbchaos_sessions(documented.admin)
    assert dbchaos_lock_count(documented.admin) == 0
    assert schema_state(documented.admin) == before
    assert before[1] == [(HEAD,)]
    states = query(documented.admin, "SELECT DISTINCT state FROM dbchaos.journal")
    assert states == [("reverted",)]
    # the marker and the journal were created by the role itself, in the schema the administrator made
    assert query(
        documented.admin, "SELECT tablename, tableowner FROM pg_tables WHERE schemaname = 'dbchaos' ORDER BY 1"
    ) == [("journal", documented.role), ("opt_in", documented.role)]


def test_pg_read_all_stats_shows_other_roles_blocked_sessions(documented: Documented) -> None:
    """With the documented grant, impact counts a superuser's session the fault blocks."""
    waiting = threading.Event()

    def blocked_read() -> None:
        with psycopg.connect(documented.admin, application_name="blocked-reader") as conn:
            conn.execute("SET lock_timeout = '10s'")
            waiting.set()
            conn.execute("SELECT count(*) FROM items")

    async def scenario() -> None:
        async with running_engine(documented.dsn) as engine:
            rec = await engine.create(FaultRequest("table-lock", {"tables": ["items"]}, duration_s=20))
            reader = threading.Thread(target=blocked_read)
            reader.start()
            try:
                deadline = asyncio.get_running_loop().time() + 5
                while True:
                    impact = (await engine.impacts([rec])).get(rec.id)
                    if impact is not None and impact.blocked_count >= 1:
                        break
                    assert asyncio.get_running_loop().time() < deadline, "the blocked session never showed"
                    await asyncio.sleep(0.05)
                (blocked,) = impact.blocked
                assert blocked.session.application_name == "blocked-reader"
                assert blocked.session.user == "postgres"
            finally:
                await engine.abort(rec.id)
                await asyncio.to_thread(reader.join, 10)

    asyncio.run(scenario())


def test_without_part_5_schema_changing_kinds_are_refused_and_say_why(documented_core: Documented) -> None:
    d = documented_core

    async def scenario() -> None:
        async with running_engine(d.dsn) as engine:
            with pytest.raises(Forbidden) as info:
                await engine.create(FaultRequest("hidden-object", {"table": "orders"}))
            err = info.value
            assert err.code == "insufficient_privilege"
            assert "ownership of public.orders" in err.message
            assert f"GRANT {d.app_owner} TO {d.role}" in err.extra["grants"]
            assert not [g for g in err.extra["grants"] if "SCHEMA dbchaos" in g]  # the journal part is granted
            # what parts 1-4 allow still works
            rec = await engine.create(FaultRequest("unknown-revision", {}))
            assert rec.state is State.ACTIVE
            await engine.abort(rec.id)

    asyncio.run(scenario())
    assert query(d.admin, "SELECT to_regclass('public.orders') IS NOT NULL") == [(True,)]
    assert no_dbchaos_sessions(d.admin)


# ---- a weaker role -----------------------------------------------------------------------


@pytest.fixture
def select_only(pg: PgServer, alembic_db: str) -> Iterator[tuple[str, str]]:
    """A role with CONNECT, USAGE on public and SELECT on its tables: nothing more."""
    role, password = f"ro_{secrets.token_hex(4)}", secrets.token_urlsafe(12)
    with psycopg.connect(alembic_db, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(sql.Identifier(role), sql.Literal(password)))
        conn.execute(
            sql.SQL("GRANT CONNECT ON DATABASE {} TO {}").format(
                sql.Identifier(dbname_of(alembic_db)), sql.Identifier(role)
            )
        )
        conn.execute(sql.SQL("GRANT USAGE ON SCHEMA public TO {}").format(sql.Identifier(role)))
        conn.execute(sql.SQL("GRANT SELECT ON ALL TABLES IN SCHEMA public TO {}").format(sql.Identifier(role)))
    try:
        yield role, pg.dsn(dbname_of(alembic_db), user=role, password=password)
    finally:
        drop_roles(pg.admin_dsn, alembic_db, role)


def test_a_select_only_role_gets_403s_naming_the_grant_and_leaves_nothing(
    pg: PgServer, alembic_db: str, select_only: tuple[str, str]
) -> None:
    role, dsn = select_only
    before = schema_state(alembic_db)
    strong = "MAINTAIN" if pg.version >= 17 else "UPDATE"
    app = create_app(Settings(), {"default": Target("default", dsn)})
    with TestClient(app, base_url="http://127.0.0.1:8080") as client:
        lock = client.post("/v1/faults", json={"kind": "table-lock", "params": {"tables": ["items"]}})
        assert lock.status_code == 403, lock.text
        body = lock.json()
        assert body["code"] == "insufficient_privilege"
        assert f"{strong} on public.items" in body["detail"] and f"role {role} lacks" in body["detail"]
        assert body["grants"] == [f"GRANT {strong} ON public.items TO {role}"]
        assert body["fault"]["state"] == "failed"

        rows = client.post("/v1/faults", json={"kind": "row-lock", "params": {"table": "users"}})
        assert rows.status_code == 403, rows.text
        assert rows.json()["code"] == "insufficient_privilege"
        assert "UPDATE on public.users" in rows.json()["detail"]
        assert rows.json()["grants"] == [f"GRANT UPDATE ON public.users TO {role}"]

        hide = client.post("/v1/faults", json={"kind": "hidden-object", "params": {"table": "orders"}})
        assert hide.status_code == 403, hide.text
        detail = hide.json()["detail"]
        assert hide.json()["code"] == "insufficient_privilege"
        assert "ownership of public.orders" in detail
        assert "schema dbchaos" in detail  # the journal: no USAGE on dbchaos's schema
        assert "CREATE on schema public" in detail

        # what SELECT allows still runs: ACCESS SHARE, and an idle transaction
        share = client.post(
            "/v1/faults", json={"kind": "table-lock", "params": {"tables": ["items"], "mode": "ACCESS SHARE"}}
        )
        assert share.status_code == 201, share.text
        assert client.delete(f"/v1/faults/{share.json()['id']}").json()["state"] == "reverted"

        health = client.get("/v1/health").json()["target"]["privileges"]
        assert health["role"] == role and health["pg_read_all_stats"] is False
        assert {"table-lock", "row-lock", "hidden-object", "unknown-revision"} <= set(health["cannot_run"])
        assert "advisory-lock" not in health["cannot_run"] and "idle-transaction" not in health["cannot_run"]
        assert health["tables"]["readable"] >= 3 and health["tables"]["lockable_in_any_mode"] == 0
        assert any("pg_read_all_stats" in d for d in health["kinds"]["table-lock"]["degraded"])
    # nothing left behind by the refused faults
    assert no_dbchaos_sessions(alembic_db)
    assert dbchaos_lock_count(alembic_db) == 0
    assert schema_state(alembic_db) == before
    assert query(alembic_db, "SELECT to_regclass('dbchaos.journal')") == [(None,)]


# ---- the rules themselves ----------------------------------------------------------------


def test_lock_and_row_lock_rules_match_this_postgresql(pg: PgServer, db: str) -> None:
    """Each table privilege alone: LOCK TABLE succeeds in exactly the modes
    ``privileges.lock_privileges`` lists, and row locks need SELECT plus UPDATE on a column."""
    role, password = f"lp_{secrets.token_hex(4)}", secrets.token_urlsafe(12)
    ident = sql.Identifier(role)
    with psycopg.connect(db, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(ident, sql.Literal(password)))
        conn.execute(sql.SQL("GRANT USAGE ON SCHEMA public TO {}").format(ident))
    as_role = pg.dsn(dbname_of(db), user=role, password=password)
    tried = ["SELECT", "INSERT", "UPDATE", "DELETE", "TRUNCATE", "REFERENCES", "TRIGGER"]
    if pg.version >= 17:
        tried.append("MAINTAIN")
    version_num = pg.version * 10000
    try:
        for privilege in tried:
            with psycopg.connect(db, autocommit=True) as conn:
                conn.execute(sql.SQL("REVOKE ALL ON items FROM {}").format(ident))
                conn.execute(sql.SQL("GRANT {} ON items TO {}").format(sql.SQL(privilege), ident))
            with psycopg.connect(as_role) as conn:
                for mode in LOCK_MODES:
                    try:
                        conn.execute(sql.SQL("LOCK TABLE items IN {} MODE").format(sql.SQL(mode)))
                        allowed = True
                    except psycopg.errors.InsufficientPrivilege:
                        allowed = False
                    conn.rollback()
                    expected = privilege in privileges.lock_privileges(mode, version_num)
                    assert allowed == expected, (privilege, mode)
        with psycopg.connect(db, autocommit=True) as conn:
            conn.execute(sql.SQL("REVOKE ALL ON items FROM {}").format(ident))
            conn.execute(sql.SQL("GRANT SELECT ON items TO {}").format(ident))
        with psycopg.connect(as_role) as conn:
            for strength in ROW_STRENGTHS:
                with pytest.raises(psycopg.errors.InsufficientPrivilege):
                    conn.execute(sql.SQL("SELECT id FROM items LIMIT 1 {}").format(sql.SQL(strength)))
                conn.rollback()
        with psycopg.connect(db, autocommit=True) as conn:
            conn.execute(sql.SQL("GRANT UPDATE (name) ON items TO {}").format(ident))
        with psycopg.connect(as_role) as conn:
            for strength in ROW_STRENGTHS:
                conn.execute(sql.SQL("SELECT id FROM items LIMIT 1 {}").format(sql.SQL(strength)))
                conn.rollback()
    finally:
        drop_roles(pg.admin_dsn, db, role)


@pytest.mark.serial
def test_connection_exhaustion_keeps_leave_free_without_pg_read_all_stats(
    pg: PgServer, alembic_db: str, select_only: tuple[str, str]
) -> None:
    """Other roles' sessions look like nothing much to a role without pg_read_all_stats
    (backend_type is null); connection-exhaustion still counts them, so ``leave`` holds."""
    _, dsn = select_only
    others = [psycopg.connect(alembic_db, application_name="app-pool") for _ in range(10)]

    def ordinary_free() -> int:
        row = query(
            alembic_db,
            "SELECT current_setting('max_connections')::int - current_setting('superuser_reserved_connections')::int"
            " - coalesce(current_setting('reserved_connections', true)::int, 0)"
            " - (SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend')::int",
        )
        return int(row[0][0]) + 1  # this query's own session

    async def scenario() -> None:
        async with running_engine(dsn) as engine:
            rec = await engine.create(FaultRequest("connection-exhaustion", {"leave": 3}, duration_s=30))
            assert rec.state is State.ACTIVE, rec.error
            assert rec.details["free_ordinary_after"] == 3
            # at least 3 really free; one more where it counted the logical replication launcher
            assert ordinary_free() in (3, 4)
            await engine.abort(rec.id)

    try:
        asyncio.run(scenario())
    finally:
        for conn in others:
            conn.close()
