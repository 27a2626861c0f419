"""What a drill compares before and after a crash: the database's fingerprint, and the
dbchaos sessions and locks PostgreSQL still shows (told apart by the process they belong to)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import psutil
import psycopg
from psycopg import conninfo, sql

from dbchaos.faults.migration.journal import OWNER_LOCK_CLASS
from tests.helpers import query

_OBJECTS = """
SELECT 'rel', c.relname, c.relkind::text, NULL, NULL
FROM pg_class c WHERE c.relnamespace = 'public'::regnamespace
UNION ALL
SELECT 'col', c.relname, a.attname, format_type(a.atttypid, a.atttypmod), a.attnotnull::text
FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid
WHERE c.relnamespace = 'public'::regnamespace AND c.relkind IN ('r', 'p', 'v') AND a.attnum > 0
  AND NOT a.attisdropped
UNION ALL
SELECT 'idx', tablename, indexname, indexdef, NULL FROM pg_indexes WHERE schemaname = 'public'
UNION ALL
SELECT 'con', conrelid::regclass::text, conname, pg_get_constraintdef(oid), NULL
FROM pg_constraint WHERE connamespace = 'public'::regnamespace
ORDER BY 1, 2, 3
"""

_TABLES = "SELECT relname FROM pg_class WHERE relnamespace = 'public'::regnamespace AND relkind = 'r' ORDER BY 1"


def fingerprint(dsn: str) -> dict[str, Any]:
    """The version table's rows, every name and definition in the public schema, and a
    checksum of every public table's rows."""
    out: dict[str, Any] = {}
    with psycopg.connect(dsn, autocommit=True) as conn:
        exists = conn.execute("SELECT to_regclass('public.alembic_version') IS NOT NULL").fetchone()
        out["versions"] = (
            sorted(r[0] for r in conn.execute("SELECT version_num FROM public.alembic_version").fetchall())
            if exists and exists[0]
            else None
        )
        out["objects"] = conn.execute(_OBJECTS).fetchall()
        rows: dict[str, Any] = {}
        for (table,) in conn.execute(_TABLES).fetchall():
            rows[table] = conn.execute(
                sql.SQL(
                    "SELECT count(*), md5(coalesce(string_agg(t::text, ',' ORDER BY t::text), '')) FROM {} AS t"
                ).format(sql.Identifier("public", table))
            ).fetchone()
        out["rows"] = rows
    return out


def diff(before: dict[str, Any], after: dict[str, Any]) -> str:
    """A short description of how two fingerprints differ ('' if equal)."""
    parts = []
    if before["versions"] != after["versions"]:
        parts.append(f"versions {before['versions']} -> {after['versions']}")
    gone = sorted(set(before["objects"]) - set(after["objects"]))
    new = sorted(set(after["objects"]) - set(before["objects"]))
    if gone or new:
        parts.append(f"objects gone {gone[:5]}, new {new[:5]}")
    for table in sorted(set(before["rows"]) | set(after["rows"])):
        if before["rows"].get(table) != after["rows"].get(table):
            parts.append(f"rows of {table}: {before['rows'].get(table)} -> {after['rows'].get(table)}")
    return "; ".join(parts)


def unreverted_journal(dsn: str) -> list[tuple[Any, ...]]:
    """Journal entries not (yet) reverted: (fault_id, kind, state, end_reason)."""
    if not query(dsn, "SELECT to_regclass('dbchaos.journal') IS NOT NULL")[0][0]:
        return []
    return query(
        dsn,
        "SELECT fault_id::text, kind, state, end_reason FROM dbchaos.journal WHERE state NOT IN ('reverted')",
    )


def process_ports(pid: int, pg_port: int) -> set[int]:
    """Local ports of the TCP connections process ``pid`` holds to PostgreSQL on ``pg_port``."""
    try:
        conns = psutil.Process(pid).net_connections(kind="tcp")
    except psutil.NoSuchProcess:
        return set()
    return {c.laddr.port for c in conns if c.raddr and c.raddr.port == pg_port}


def pg_port(dsn: str) -> int:
    return int(conninfo.conninfo_to_dict(dsn).get("port") or 5432)


@dataclass(frozen=True)
class Leftovers:
    """dbchaos sessions and locks PostgreSQL shows that no live dbchaos process accounts for."""

    sessions: list[tuple[Any, ...]]
    locks: list[tuple[Any, ...]]

    def __bool__(self) -> bool:
        return bool(self.sessions or self.locks)

    def __str__(self) -> str:
        return f"sessions {self.sessions}, locks {self.locks}"


def leftovers(dsn: str, live_pid: int | None = None) -> Leftovers:
    """``dbchaos:%`` sessions on this database that do not belong to process ``live_pid``
    (the dbchaos server now running, if any), and every lock a ``dbchaos:%`` session holds
    or awaits, except the live server's owner lock (an idle server holds nothing else)."""
    rows = query(
        dsn,
        "SELECT pid, application_name, client_port, state FROM pg_stat_activity"
        " WHERE application_name LIKE 'dbchaos:%' AND datname = current_database()",
    )
    mine = process_ports(live_pid, pg_port(dsn)) if live_pid is not None else set()
    own_pids = {r[0] for r in rows if r[2] in mine}
    locks = query(
        dsn,
        "SELECT l.pid, a.application_name, l.locktype, l.mode, l.granted, l.relation::regclass::text,"
        " l.classid::bigint, l.objid::bigint, l.objsubid"
        " FROM pg_locks l JOIN pg_stat_activity a USING (pid)"
        " WHERE a.application_name LIKE 'dbchaos:%' AND a.datname = current_database()"
        " AND l.locktype <> 'virtualxid'",
    )
    bad_locks = [
        r for r in locks if not (r[0] in own_pids and r[2] == "advisory" and r[6] == OWNER_LOCK_CLASS and r[8] == 2)
    ]
    return Leftovers([r for r in rows if r[0] not in own_pids], bad_locks)
