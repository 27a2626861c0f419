"""Dry runs on real PostgreSQL: every kind plans its statements and locks, finds who is in the
way, and leaves the database exactly as it was."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import psycopg
import pytest
from psycopg import conninfo

from dbchaos.engine.dryrun import DryRun
from dbchaos.engine.engine import FaultRequest
from dbchaos.faults.migration.graph import RevisionGraph
from dbchaos.faults.registry import default_registry
from tests.alembic_helpers import HEAD
from tests.helpers import query, running_engine, wait_for
from tests.pg import PgServer, unprivileged_role

#: one request per kind (tests/alembic_project's database: the sample tables, migrated to head)
REQUESTS: dict[str, dict[str, Any]] = {
    "table-lock": {"tables": ["items", "orders"], "mode": "share"},
    "row-lock": {"table": "items", "where": {"id": [1, 2, 3]}, "strength": "no key update"},
    "advisory-lock": {"keys": [42, [7, 8]]},
    "idle-transaction": {"tables": ["users"]},
    "connection-exhaustion": {"connections": 3},
    "unknown-revision": {},
    "future-revision": {},
    "missing-version": {},
    "behind": {"steps": 2},
    "multiple-heads": {"variant": "overlap"},
    "locked-version-table": {"mode": "ACCESS EXCLUSIVE", "tables": ["accounts"]},
    "migration-lock-queue": {"table": "items"},
    "missing-table": {},
    "hidden-object": {"table": "accounts", "column": "email"},
    "conflicting-object": {"object": "index", "table": "invoices", "index": "ix_dryrun", "columns": ["account_id"]},
}


def test_every_kind_has_a_request_here() -> None:
    assert sorted(REQUESTS) == default_registry().names


def dry_run(dsn: str, req: FaultRequest, graph: RevisionGraph | None = None, **settings: Any) -> DryRun:
    async def go() -> DryRun:
        async with running_engine(dsn, graph, **settings) as engine:
            return await engine.dry_run(req)

    return asyncio.run(go())


def database_state(dsn: str) -> dict[str, Any]:
    """What a dry run must not change: locks, dbchaos sessions, journal, version table,
    schema, and row-lock marks (xmax) on the sample rows."""
    journal = query(dsn, "SELECT to_regclass('dbchaos.journal') IS NOT NULL")[0][0]
    return {
        "locks": sorted(
            query(
                dsn,
                "SELECT l.locktype, l.relation::bigint, l.mode, l.granted, l.classid::bigint, l.objid::bigint, l.pid"
                " FROM pg_locks l WHERE l.pid <> pg_backend_pid() AND l.locktype <> 'virtualxid'"
                " AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())",
            ),
            key=repr,
        ),
        "sessions": query(dsn, "SELECT application_name FROM pg_stat_activity WHERE application_name LIKE 'dbchaos:%'"),
        "journal": query(dsn, "SELECT * FROM dbchaos.journal ORDER BY created_at") if journal else None,
        "version": query(dsn, "SELECT version_num FROM alembic_version ORDER BY 1"),
        "schema": query(
            dsn,
            "SELECT n.nspname, c.relname, c.relkind, (SELECT array_agg(attname ORDER BY attnum) FROM pg_attribute"
            " WHERE attrelid = c.oid AND attnum > 0 AND NOT attisdropped) FROM pg_class c"
            " JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname NOT IN ('pg_catalog', 'information_schema')"
            " AND n.nspname NOT LIKE 'pg_toast%' ORDER BY 1, 2",
        ),
        "row_marks": query(dsn, "SELECT count(*) FROM items WHERE xmax::text <> '0'"),
    }


@contextmanager
def holding(dsn: str, *statements: str, app: str = "holder", autocommit: bool = False) -> Iterator[int]:
    """A session that ran ``statements`` (in an open transaction unless ``autocommit``); yields its pid."""
    conn = psycopg.connect(dsn, application_name=app, autocommit=autocommit)
    try:
        for stmt in statements:
            conn.execute(stmt)
        yield conn.info.backend_pid
    finally:
        conn.close()


def pids(parties: list[dict[str, Any]]) -> set[int]:
    return {p["pid"] for p in parties}


@pytest.mark.parametrize("kind", sorted(REQUESTS))
def test_a_dry_run_plans_statements_and_locks_and_changes_nothing(
    kind: str, alembic_db: str, graph: RevisionGraph
) -> None:
    before = database_state(alembic_db)
    plan = dry_run(alembic_db, FaultRequest(kind, REQUESTS[kind], duration_s=30), graph).as_dict()
    wait_for(lambda: database_state(alembic_db) == before, 3.0, what="the database to be as before the dry run")

    assert plan["dry_run"] is True and plan["kind"] == kind and plan["target"] == "default"
    assert plan["duration_s"] == 30
    sqls = [s["sql"] for s in plan["statements"]]
    assert all(isinstance(s, str) and s for s in sqls), plan["statements"]
    assert plan["statements"][0]["phase"] == "connect"
    assert "set_config('lock_timeout'" in sqls[0] and "idle_session_timeout" in sqls[0]
    assert any(s["phase"] == "inject" for s in plan["statements"])
    assert any(s["phase"] == "revert" for s in plan["statements"]) or kind == "connection-exhaustion"
    assert plan["locks"], "every kind takes something"
    assert plan["session_settings"]["statement_timeout"] > 30_000
    assert set(plan["blast_radius"]) >= {"in_the_way", "would_block", "notes"}


def test_table_lock_statements_are_the_real_ones(db: str) -> None:
    plan = dry_run(db, FaultRequest("table-lock", {"tables": ["items"], "mode": "row exclusive"})).as_dict()
    inject = [s["sql"] for s in plan["statements"] if s["phase"] == "inject"]
    assert inject == ['BEGIN; LOCK TABLE "public"."items" IN ROW EXCLUSIVE MODE']
    assert [s["sql"] for s in plan["statements"] if s["phase"] == "revert"] == ["ROLLBACK"]
    assert plan["locks"] == [
        {
            "locktype": "relation",
            "mode": "ROW EXCLUSIVE",
            "phase": "held",
            "session": "fault",
            "relation": "public.items",
        }
    ]
    assert plan["params"] == {"tables": ["public.items"], "mode": "ROW EXCLUSIVE"}


def test_a_session_holding_a_conflicting_table_lock_is_in_the_way(db: str) -> None:
    with holding(db, "BEGIN", "SELECT count(*) FROM items", app="report") as reader:
        plan = dry_run(db, FaultRequest("table-lock", {"tables": ["items"]})).as_dict()
        radius = plan["blast_radius"]
        assert reader in pids(radius["in_the_way"]) and reader in pids(radius["would_block"])
        (party,) = [p for p in radius["in_the_way"] if p["pid"] == reader]
        assert party["application_name"] == "report" and party["state"] == "idle in transaction"
        assert party["mode"] == "ACCESS SHARE" and party["query"] == "SELECT count(*) FROM items"
        assert party["locks"][0]["conflicts_with"] == "ACCESS EXCLUSIVE on public.items"
        # a mode that does not conflict with ACCESS SHARE: the reader is not in the way
        calm = dry_run(db, FaultRequest("table-lock", {"tables": ["items"], "mode": "EXCLUSIVE"})).as_dict()
        assert reader not in pids(calm["blast_radius"]["in_the_way"])


def test_an_idle_session_whose_last_query_used_the_table_would_be_blocked(db: str) -> None:
    with holding(db, "UPDATE items SET stock = stock WHERE id = 5", app="writer", autocommit=True) as writer:
        plan = dry_run(db, FaultRequest("table-lock", {"tables": ["items"], "mode": "SHARE"})).as_dict()
        radius = plan["blast_radius"]
        assert writer not in pids(radius["in_the_way"])  # autocommit: it holds nothing now
        (party,) = [p for p in radius["would_block"] if p["pid"] == writer]
        assert party["certainty"] == "possible" and party["mode"] == "ROW EXCLUSIVE"


def test_row_lock_uses_pgrowlocks_to_find_holders_of_those_rows(db: str) -> None:
    with (
        holding(db, "BEGIN", "SELECT 1 FROM items WHERE id = 2 FOR SHARE", app="same-rows") as same,
        holding(db, "BEGIN", "SELECT 1 FROM items WHERE id = 500 FOR UPDATE", app="other-rows") as other,
    ):
        req = FaultRequest("row-lock", {"table": "items", "where": {"id": [1, 2, 3]}})
        plan = dry_run(db, req).as_dict()
        radius = plan["blast_radius"]
        assert radius["row_locks"] == "pgrowlocks"
        assert pids(radius["in_the_way"]) == {same}
        (party,) = radius["in_the_way"]
        assert party["certainty"] == "certain"
        (reason,) = party["locks"]
        assert reason["mode"] == "FOR SHARE" and reason["rows"] == 1 and reason["evidence"] == "pgrowlocks"
        rows = [lk for lk in plan["locks"] if lk["locktype"] == "rows"]
        assert rows == [
            {
                "locktype": "rows",
                "mode": "FOR UPDATE",
                "phase": "held",
                "session": "fault",
                "relation": "public.items",
                "rows": 3,
                "note": "the first 10 matching rows in id order",
            }
        ]
        assert other in pids(radius["would_block"])  # it locks rows of the table: possibly these later
        # a weaker strength that FOR SHARE does not conflict with
        weak = dry_run(db, FaultRequest("row-lock", {"table": "items", "where": {"id": [2]}, "strength": "key share"}))
        assert same not in pids(weak.as_dict()["blast_radius"]["in_the_way"])


def test_row_lock_without_pgrowlocks_judges_from_table_locks(db: str) -> None:
    query(db, "DROP EXTENSION pgrowlocks")
    with holding(db, "BEGIN", "SELECT 1 FROM items WHERE id = 500 FOR UPDATE") as other:
        radius = dry_run(db, FaultRequest("row-lock", {"table": "items", "limit": 5})).as_dict()["blast_radius"]
        assert radius["row_locks"] == "relation"
        (party,) = radius["in_the_way"]
        assert party["pid"] == other and party["certainty"] == "possible"
        assert any("pgrowlocks" in n for n in radius["notes"])


def test_advisory_holders_are_in_the_way_unless_both_share(db: str) -> None:
    with holding(db, "SELECT pg_advisory_lock_shared(42)") as holder:
        exclusive = dry_run(db, FaultRequest("advisory-lock", {"keys": [42, [1, 2]]})).as_dict()
        assert pids(exclusive["blast_radius"]["in_the_way"]) == {holder}
        assert exclusive["blast_radius"]["in_the_way"][0]["locks"][0]["key"] == 42
        shared = dry_run(db, FaultRequest("advisory-lock", {"keys": [42], "shared": True})).as_dict()
        assert shared["blast_radius"]["in_the_way"] == []
    keys = [lk["key"] for lk in exclusive["locks"]]
    assert keys == [42, [1, 2]]


def test_migration_lock_queue_would_block_every_user_of_the_table(db: str) -> None:
    with holding(db, "BEGIN", "SELECT 1 FROM items LIMIT 1", app="reader-app") as reader:
        plan = dry_run(db, FaultRequest("migration-lock-queue", {"table": "items"})).as_dict()
        radius = plan["blast_radius"]
        assert reader in pids(radius["would_block"]) and reader not in pids(radius["in_the_way"])
    sessions = [s["session"] for s in plan["statements"] if s["phase"] == "connect"]
    assert sessions == ["reader", "migration", "probe"]
    queued = [lk for lk in plan["locks"] if lk["mode"] == "ACCESS EXCLUSIVE"]
    assert queued and queued[0]["granted"] is False


def test_journaled_kind_shows_journal_insert_change_and_revert(alembic_db: str, graph: RevisionGraph) -> None:
    plan = dry_run(alembic_db, FaultRequest("hidden-object", {"table": "accounts"}), graph).as_dict()
    inject = [s["sql"] for s in plan["statements"] if s["phase"] == "inject"]
    revert = [s["sql"] for s in plan["statements"] if s["phase"] == "revert"]
    # the journal is created first (in a transaction of its own: the database has none yet)
    assert any("CREATE TABLE IF NOT EXISTS dbchaos.journal" in s for s in inject)
    assert not any("CREATE SCHEMA" in s for s in inject)  # dbchaos's schema exists (the opt-in marker)
    main = inject[len(inject) - 1 - inject[::-1].index("BEGIN") :]
    assert main[1] == "SELECT pg_advisory_xact_lock(1684169576, hashtext('table:public.accounts'))"
    assert main[-1] == "COMMIT"
    assert any(s.startswith('LOCK TABLE "public"."accounts" IN ACCESS EXCLUSIVE MODE') for s in inject)
    renamed = [s for s in inject if s.startswith('ALTER TABLE "public"."accounts" RENAME TO')]
    assert len(renamed) == 1 and "_dbchaos_" in renamed[0]
    assert any(s.startswith("INSERT INTO dbchaos.journal") for s in inject)
    assert revert[0] == "BEGIN" and revert[-1] == "COMMIT"
    assert any('RENAME TO "accounts"' in s for s in revert)
    assert any(s.startswith("UPDATE dbchaos.journal SET state") for s in revert)
    held = [lk for lk in plan["locks"] if lk["locktype"] == "relation" and lk["phase"] == "inject"]
    assert held == [
        {
            "locktype": "relation",
            "mode": "ACCESS EXCLUSIVE",
            "phase": "inject",
            "session": "fault",
            "relation": "public.accounts",
        }
    ]
    assert query(alembic_db, "SELECT version_num FROM alembic_version") == [(HEAD,)]


def test_an_active_journaled_fault_on_the_same_object_is_reported(alembic_db: str, graph: RevisionGraph) -> None:
    async def go() -> dict[str, Any]:
        async with running_engine(alembic_db, graph) as engine:
            rec = await engine.create(FaultRequest("missing-version", {}, duration_s=30))
            plan = (await engine.dry_run(FaultRequest("unknown-revision", {}))).as_dict()
            assert plan["blast_radius"]["dbchaos_faults"][0]["fault_id"] == rec.id
            return plan

    plan = asyncio.run(go())
    assert any("object_under_fault" in n for n in plan["blast_radius"]["notes"])


def test_connection_exhaustion_lists_slots_and_clients(db: str) -> None:
    with holding(db, "SELECT 1", app="web-pool", autocommit=True):
        plan = dry_run(db, FaultRequest("connection-exhaustion", {"leave": 5})).as_dict()
    (slots,) = plan["locks"]
    assert slots["locktype"] == "connection_slots" and slots["count"] == plan["details"]["would_take"]
    assert plan["details"]["free_ordinary_after"] == 5
    assert {"database": db.split("dbname=")[1].split()[0], "user": "postgres", "application_name": "web-pool"} in [
        {k: c[k] for k in ("database", "user", "application_name")} for c in plan["blast_radius"]["clients"]
    ]
    connects = [s for s in plan["statements"] if s["phase"] == "connect"]
    assert connects[0]["sessions"] == slots["count"]


def test_other_roles_sessions_show_as_bare_pids_without_pg_read_all_stats(pg: PgServer, db: str) -> None:
    dbname = conninfo.conninfo_to_dict(db)["dbname"]
    with unprivileged_role(pg, str(dbname)) as role_dsn, holding(db, "BEGIN", "SELECT 1 FROM items LIMIT 1") as holder:
        plan = dry_run(role_dsn, FaultRequest("table-lock", {"tables": ["items"]})).as_dict()
    (party,) = plan["blast_radius"]["in_the_way"]
    assert party["pid"] == holder and party["mode"] == "ACCESS SHARE"
    assert party["application_name"] == "holder" and party["state"] is None
    assert party["query"] == "<insufficient privilege>"  # as pg_stat_activity shows it
    assert any("pg_read_all_stats" in n for n in plan["blast_radius"]["notes"])
