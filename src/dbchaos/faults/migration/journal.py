"""The journal: dbchaos's own schema in the target database, and the only truth about
what must be reverted.

A migration fault writes its complete prior state into ``dbchaos.journal`` in the same
transaction as its change, so the two cannot diverge. Each entry names its owner: the
dbchaos instance that holds the session advisory lock ``(OWNER_LOCK_CLASS, owner_key)``
while it runs. Recovery reverts only entries whose owner lock is free.

``dbchaos.journal`` columns: ``fault_id`` (the fault's id), ``kind``, ``owner`` (instance
name), ``owner_key``, ``objects`` (what the fault acts on, for conflict checks),
``actions`` (each change with its before and after state), ``fingerprint`` (schema of
the affected tables before the change), ``deadline``, ``created_at``, ``state``
(``active``, ``reverted``, ``superseded``, ``failed``), ``ended_at``, ``end_reason``,
``outcome`` (what revert found and did).
"""

from __future__ import annotations

import json
import zlib
from dataclasses import dataclass
from typing import Any

import psycopg

SCHEMA = "dbchaos"
#: classid of every dbchaos owner lock: 'dbch' as a 32-bit integer
OWNER_LOCK_CLASS = 0x64626368

# The schema only where it is missing: CREATE SCHEMA IF NOT EXISTS still needs CREATE on the
# database, and COMMENT ON SCHEMA ownership, which a least-privilege role given USAGE and
# CREATE on an existing schema dbchaos does not have (docs/least-privilege.md).
_SCHEMA_DDL = """
CREATE SCHEMA IF NOT EXISTS dbchaos;
COMMENT ON SCHEMA dbchaos IS 'dbchaos: journal of faults that changed data or schema (safe to keep)'
"""

_DDL = """
CREATE TABLE IF NOT EXISTS dbchaos.journal (
    fault_id    uuid PRIMARY KEY,
    kind        text NOT NULL,
    owner       text NOT NULL,
    owner_key   integer NOT NULL,
    objects     text[] NOT NULL,
    actions     jsonb NOT NULL,
    fingerprint jsonb NOT NULL,
    deadline    timestamptz,
    created_at  timestamptz NOT NULL DEFAULT now(),
    state       text NOT NULL DEFAULT 'active',
    ended_at    timestamptz,
    end_reason  text,
    outcome     jsonb
);
CREATE INDEX IF NOT EXISTS journal_active_idx ON dbchaos.journal (state) WHERE state = 'active';
"""


#: true when the journal table exists (read before any statement that would need it)
EXISTS_SQL = "SELECT to_regclass('dbchaos.journal') IS NOT NULL"


def owner_key(instance: str) -> int:
    """The 32-bit key of an instance's owner lock."""
    return zlib.crc32(instance.encode()) & 0x7FFFFFFF


async def ensure(conn: psycopg.AsyncConnection[Any]) -> None:
    """Create the journal schema if missing (its own transaction; safe to race)."""
    cur = await conn.execute(EXISTS_SQL)
    row = await cur.fetchone()
    if row and row[0]:
        return
    try:
        async with conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock(%s, 0)", (OWNER_LOCK_CLASS,))
            cur = await conn.execute("SELECT 1 FROM pg_catalog.pg_namespace WHERE nspname = 'dbchaos'")
            if await cur.fetchone() is None:
                await conn.execute(_SCHEMA_DDL)
            await conn.execute(_DDL)
    except psycopg.errors.UniqueViolation:  # another instance created it at the same moment
        pass


async def exists(conn: psycopg.AsyncConnection[Any]) -> bool:
    cur = await conn.execute(EXISTS_SQL)
    row = await cur.fetchone()
    return bool(row and row[0])


async def lock_objects(conn: psycopg.AsyncConnection[Any], objects: list[str]) -> None:
    """Serialise faults on the same objects (transaction-level locks, in a fixed order)."""
    for obj in sorted(set(objects)):
        await conn.execute("SELECT pg_advisory_xact_lock(%s, hashtext(%s))", (OWNER_LOCK_CLASS, obj))


async def queue_claim(conn: psycopg.AsyncConnection[Any], objects: list[str]) -> psycopg.AsyncCursor[Any]:
    """Send :func:`lock_objects` then the read of :func:`active_on` without waiting (in the
    caller's pipeline, which keeps their order: the locks are held before the journal is
    read); :func:`claimed` reads the answer."""
    await lock_objects(conn, objects)
    return await conn.execute(
        "SELECT fault_id::text, kind, objects FROM dbchaos.journal WHERE state = 'active' AND objects && %s",
        (objects,),
    )


async def claimed(cur: psycopg.AsyncCursor[Any]) -> list[tuple[str, str, list[str]]]:
    """The unreverted entries :func:`queue_claim` found: (fault id, kind, objects)."""
    return [(str(r[0]), str(r[1]), list(r[2])) for r in await cur.fetchall()]


async def claim(conn: psycopg.AsyncConnection[Any], objects: list[str]) -> list[tuple[str, str, list[str]]]:
    """:func:`lock_objects` then :func:`active_on`, in one round trip."""
    async with conn.pipeline():
        cur = await queue_claim(conn, objects)
    return await claimed(cur)


async def active_on(conn: psycopg.AsyncConnection[Any], objects: list[str]) -> list[tuple[str, str, list[str]]]:
    """Unreverted entries acting on any of ``objects``: (fault id, kind, objects)."""
    cur = await conn.execute(
        "SELECT fault_id::text, kind, objects FROM dbchaos.journal WHERE state = 'active' AND objects && %s",
        (objects,),
    )
    return [(str(r[0]), str(r[1]), list(r[2])) for r in await cur.fetchall()]


async def insert(
    conn: psycopg.AsyncConnection[Any],
    *,
    fault_id: str,
    kind: str,
    owner: str,
    key: int,
    objects: list[str],
    actions: list[dict[str, Any]],
    fingerprint: dict[str, Any],
    deadline_epoch: float | None,
) -> None:
    await conn.execute(
        "INSERT INTO dbchaos.journal (fault_id, kind, owner, owner_key, objects, actions, fingerprint, deadline)"
        " VALUES (%s, %s, %s, %s, %s, %s::jsonb, %s::jsonb, to_timestamp(%s))",
        (fault_id, kind, owner, key, objects, json.dumps(actions), json.dumps(fingerprint), deadline_epoch),
    )


@dataclass(frozen=True)
class Entry:
    fault_id: str
    kind: str
    owner: str
    owner_key: int
    objects: list[str]
    actions: list[dict[str, Any]]
    fingerprint: dict[str, Any]
    state: str
    created_at: float


_ENTRY_COLS = (
    "fault_id::text, kind, owner, owner_key, objects, actions, fingerprint, state, extract(epoch FROM created_at)"
)


def _entry(row: Any) -> Entry:
    return Entry(
        str(row[0]),
        str(row[1]),
        str(row[2]),
        int(row[3]),
        list(row[4]),
        list(row[5]),
        dict(row[6]),
        str(row[7]),
        float(row[8]),
    )


async def lock_entry(conn: psycopg.AsyncConnection[Any], fault_id: str) -> Entry | None:
    """The entry, locked for this transaction (two reverters never race)."""
    cur = await conn.execute(f"SELECT {_ENTRY_COLS} FROM dbchaos.journal WHERE fault_id = %s FOR UPDATE", (fault_id,))
    row = await cur.fetchone()
    return _entry(row) if row else None


async def unreverted(conn: psycopg.AsyncConnection[Any]) -> list[Entry]:
    if not await exists(conn):
        return []
    cur = await conn.execute(f"SELECT {_ENTRY_COLS} FROM dbchaos.journal WHERE state = 'active' ORDER BY created_at")
    return [_entry(r) for r in await cur.fetchall()]


async def finish(
    conn: psycopg.AsyncConnection[Any], fault_id: str, state: str, reason: str, outcome: dict[str, Any]
) -> None:
    await conn.execute(
        "UPDATE dbchaos.journal SET state = %s, end_reason = %s, outcome = %s::jsonb, ended_at = now()"
        " WHERE fault_id = %s",
        (state, reason, json.dumps(outcome, default=str), fault_id),
    )
