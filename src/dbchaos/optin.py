"""The opt-in marker: a target database says "dbchaos may inject faults here".

The marker is the table ``dbchaos.opt_in (opted_in_at, by_role, note)`` with one row, in
dbchaos's own schema. ``dbchaos init --target DSN`` writes it; anyone who may create a
schema in the database can (a plain database owner: no superuser needed). A table rather
than a database setting because on PostgreSQL 15 a database owner may not
``ALTER DATABASE ... SET`` a custom parameter.

A database is opted in while the marker table exists and holds a row. The table's existence
is read from the catalog, so a role that may not read the table (dbchaos running as another
role than the one that opted in) still sees the marker. ``revoke`` drops the table (never
the journal) and refuses while the journal has unreverted entries.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg

from dbchaos import errors
from dbchaos.faults.migration.journal import OWNER_LOCK_CLASS

SCHEMA = "dbchaos"
TABLE = "opt_in"
#: second key of the advisory lock that serialises ``init`` and ``revoke`` on one database
_LOCK_KEY = 1

_MARKER_SQL = """
SELECT has_schema_privilege(n.oid, 'USAGE') AND has_table_privilege(c.oid, 'SELECT')
FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname = 'dbchaos' AND c.relname = %s AND c.relkind IN ('r', 'p')
"""

_SCHEMA_SQL = "SELECT 1 FROM pg_catalog.pg_namespace WHERE nspname = 'dbchaos'"

_CREATE_SCHEMA = """
CREATE SCHEMA dbchaos;
COMMENT ON SCHEMA dbchaos IS 'dbchaos: the opt-in marker and the journal of faults that changed data or schema'
"""

_CREATE_TABLE = """
CREATE TABLE dbchaos.opt_in (
    opted_in_at timestamptz NOT NULL DEFAULT now(),
    by_role     text NOT NULL DEFAULT current_user,
    note        text
);
COMMENT ON TABLE dbchaos.opt_in IS 'dbchaos: this database opted in to faults (dbchaos init --revoke removes it)'
"""

_ROW_SQL = "SELECT opted_in_at, by_role, note FROM dbchaos.opt_in ORDER BY opted_in_at LIMIT 1"


@dataclass(frozen=True)
class OptIn:
    """Whether a database opted in, and (when this role may read it) who did and when."""

    opted_in: bool
    opted_in_at: datetime | None = None
    by_role: str | None = None
    note: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "opted_in": self.opted_in,
            "opted_in_at": self.opted_in_at.isoformat() if self.opted_in_at else None,
            "by_role": self.by_role,
            "note": self.note,
        }


async def _marker(conn: psycopg.AsyncConnection[Any], table: str = TABLE) -> bool | None:
    """``None``: no such table; otherwise whether this role may read it."""
    row = await (await conn.execute(_MARKER_SQL, (table,))).fetchone()
    return None if row is None else bool(row[0])


async def status(conn: psycopg.AsyncConnection[Any]) -> OptIn:
    """The opt-in state of the database ``conn`` is connected to (reads only)."""
    readable = await _marker(conn)
    if readable is None:
        return OptIn(False)
    if not readable:  # the marker exists; its row is not ours to read
        return OptIn(True)
    row = await (await conn.execute(_ROW_SQL)).fetchone()
    if row is None:
        return OptIn(False)
    return OptIn(True, row[0], row[1], row[2])


async def opt_in(conn: psycopg.AsyncConnection[Any], note: str | None = None) -> tuple[OptIn, bool]:
    """Write the marker (schema and table where missing, one row); returns the state and
    whether this call created the row. Idempotent: an existing row is kept."""
    try:
        async with conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock(%s, %s)", (OWNER_LOCK_CLASS, _LOCK_KEY))
            # each step only where needed: CREATE ... IF NOT EXISTS still checks the privilege
            if await (await conn.execute(_SCHEMA_SQL)).fetchone() is None:
                await conn.execute(_CREATE_SCHEMA)
            if await _marker(conn) is None:
                await conn.execute(_CREATE_TABLE)
            created = False
            if await (await conn.execute(_ROW_SQL)).fetchone() is None:
                await conn.execute("INSERT INTO dbchaos.opt_in (note) VALUES (%s)", (note,))
                created = True
    except psycopg.errors.InsufficientPrivilege as exc:
        raise errors.Forbidden(
            f"cannot write the opt-in marker: {_first_line(exc)}; run dbchaos init as a role that may create "
            "a schema in this database (its owner, for example) or that owns the schema dbchaos",
            code="insufficient_privilege",
        ) from exc
    return await status(conn), created


async def revoke(conn: psycopg.AsyncConnection[Any]) -> bool:
    """Remove the marker (the journal stays); returns whether there was one.

    Refused (``Conflict``, code ``faults_unreverted``) while the journal has active entries."""
    try:
        async with conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock(%s, %s)", (OWNER_LOCK_CLASS, _LOCK_KEY))
            if await _marker(conn, "journal") is not None:
                rows = await (
                    await conn.execute(
                        "SELECT fault_id::text, kind FROM dbchaos.journal WHERE state = 'active' ORDER BY created_at"
                    )
                ).fetchall()
                if rows:
                    listed = ", ".join(f"{r[0]} ({r[1]})" for r in rows[:5]) + (" …" if len(rows) > 5 else "")
                    raise errors.Conflict(
                        f"{len(rows)} journaled fault(s) are not reverted yet: {listed}; end them (abort them, or run "
                        "`dbchaos recover` once their server is gone) before revoking the opt-in",
                        code="faults_unreverted",
                        extra={"unreverted": [r[0] for r in rows]},
                    )
            if await _marker(conn) is None:
                return False
            await conn.execute("DROP TABLE dbchaos.opt_in")
            return True
    except psycopg.errors.InsufficientPrivilege as exc:
        raise errors.Forbidden(
            f"cannot revoke the opt-in: {_first_line(exc)}; run it as the owner of dbchaos.opt_in "
            "(and a role that may read dbchaos.journal)",
            code="insufficient_privilege",
        ) from exc


def not_opted_in_message(target_name: str, masked_dsn: str) -> str:
    """The refusal every fault on a database that has not opted in gets: how to opt in."""
    return (
        f"target {target_name!r} has not opted in to dbchaos faults; to opt it in, a role that may create a schema "
        f"in that database (its owner, for example) runs: dbchaos init --target '{masked_dsn}' "
        "(it creates the table dbchaos.opt_in; dbchaos init --revoke removes it)"
    )


def _first_line(exc: psycopg.Error) -> str:
    text = exc.diag.message_primary or str(exc) or type(exc).__name__
    return text.strip().splitlines()[0]
