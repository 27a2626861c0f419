"""Schema fingerprints: what a table looks like (columns with types, nullability and
defaults; indexes with definitions and validity; constraints), to prove a revert.

A fingerprint describes the table itself: a foreign key is recorded by the referenced table's
oid and column numbers, not by its text, because the text names the other table's columns and
another fault (a hidden column there) may rename them while this one is reverted."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import psycopg

_SQL = """
SELECT c.oid::bigint, jsonb_build_object(
  'table', n.nspname || '.' || c.relname,
  'columns', (SELECT coalesce(jsonb_agg(jsonb_build_array(a.attname, format_type(a.atttypid, a.atttypmod),
                                                          a.attnotnull, pg_get_expr(d.adbin, d.adrelid))
                                        ORDER BY a.attnum), '[]'::jsonb)
              FROM pg_attribute a LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
              WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped),
  'indexes', (SELECT coalesce(jsonb_agg(jsonb_build_array(ic.relname, pg_get_indexdef(i.indexrelid), i.indisvalid)
                                        ORDER BY ic.relname), '[]'::jsonb)
              FROM pg_index i JOIN pg_class ic ON ic.oid = i.indexrelid WHERE i.indrelid = c.oid),
  'constraints', (SELECT coalesce(jsonb_agg(jsonb_build_array(k.conname,
                      CASE WHEN k.contype = 'f'
                           -- a foreign key by the referenced table's oid and column numbers: its text
                           -- names them, and another fault may have renamed them meanwhile
                           THEN jsonb_build_array('f', k.conkey, k.confrelid::bigint, k.confkey, k.confupdtype,
                                                  k.confdeltype, k.confmatchtype, k.condeferrable,
                                                  k.condeferred, k.convalidated)
                           ELSE to_jsonb(pg_get_constraintdef(k.oid)) END)
                                            ORDER BY k.conname), '[]'::jsonb)
                  FROM pg_constraint k WHERE k.conrelid = c.oid))
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.oid = ANY(%s)
"""


async def queue_fingerprint(conn: psycopg.AsyncConnection[Any], oids: Iterable[int]) -> psycopg.AsyncCursor[Any] | None:
    """Send the fingerprint query for the tables ``oids`` without waiting (in the caller's
    pipeline); :func:`fingerprint_from` reads the answer. ``None`` when there is nothing to read."""
    ids = sorted(set(oids))
    if not ids:
        return None
    return await conn.execute(_SQL, (ids,))


async def fingerprint_from(cur: psycopg.AsyncCursor[Any] | None) -> dict[str, Any]:
    """Fingerprints keyed by oid as text (absent tables are left out)."""
    if cur is None:
        return {}
    return {str(row[0]): row[1] for row in await cur.fetchall()}


async def fingerprint(conn: psycopg.AsyncConnection[Any], oids: Iterable[int]) -> dict[str, Any]:
    """Fingerprints of the tables ``oids`` (keyed by oid as text; absent tables are left out)."""
    return await fingerprint_from(await queue_fingerprint(conn, oids))


def differences(before: dict[str, Any], after: dict[str, Any]) -> list[str]:
    """Human-readable differences between two fingerprints (empty when equal)."""
    diffs: list[str] = []
    for oid, fp in before.items():
        now = after.get(oid)
        name = fp.get("table", oid)
        if now is None:
            diffs.append(f"table {name} (oid {oid}) is gone")
            continue
        for part in ("table", "columns", "indexes", "constraints"):
            if fp.get(part) != now.get(part):
                diffs.append(f"{name}: {part} differ: recorded {fp.get(part)!r}, found {now.get(part)!r}")
    return diffs
