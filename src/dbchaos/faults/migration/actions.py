"""The changes a migration fault makes, each recorded with its before and after state.

An action is a plain dict (it lives in the journal as JSON) with a ``type``:

* ``version_rows`` — ``schema``, ``table``, ``before`` and ``after`` (lists of revision ids);
* ``rename_table`` — ``schema``, ``table`` (original name), ``hidden`` (dbchaos's name), ``oid``;
  for a version table also ``version_table: true`` and its ``rows`` (verified after the undo);
* ``rename_column`` — ``schema``, ``table``, ``oid`` (of the table), ``column``, ``hidden``;
* ``rename_index`` — ``schema``, ``index`` (original name), ``hidden``, ``oid`` (of the index;
  a constraint backed by the index is renamed with it);
* ``create_table`` — ``schema``, ``table``, ``oid``;
* ``create_column`` — ``schema``, ``table``, ``oid``, ``column`` (and optionally its ``attnum``,
  so a column dropped and re-created by someone else counts as their change);
* ``create_index`` — ``schema``, ``index``, ``oid``.

For each: :func:`apply` makes the change (version rows and renames; a kind creates objects
itself), :func:`drift` says whether someone changed the state since (then the fault is
*superseded*), :func:`undo` restores the recorded state and :func:`verify` lists what still
differs from it.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import psycopg
from psycopg import sql

from dbchaos.faults.migration import tx

Action = dict[str, Any]


async def read_rows(conn: psycopg.AsyncConnection[Any], schema: str, table: str) -> list[str]:
    """The revision ids in a version table known to exist (e.g. locked by this transaction)."""
    cur = await conn.execute(sql.SQL("SELECT version_num::text FROM {}").format(sql.Identifier(schema, table)))
    return sorted(str(r[0]) for r in await cur.fetchall())


async def version_rows(conn: psycopg.AsyncConnection[Any], schema: str, table: str) -> list[str] | None:
    """The revision ids stored in a version table, or ``None`` if it does not exist."""
    return await version_rows_from(conn, await queue_version_rows(conn, schema, table), schema, table)


async def queue_version_rows(conn: psycopg.AsyncConnection[Any], schema: str, table: str) -> psycopg.AsyncCursor[Any]:
    """Send the first half of :func:`version_rows` (does the table exist?) without waiting,
    in the caller's pipeline; :func:`version_rows_from` finishes it."""
    return await conn.execute("SELECT to_regclass(%s)", (_qualified(schema, table),))


async def version_rows_from(
    conn: psycopg.AsyncConnection[Any], exists: psycopg.AsyncCursor[Any], schema: str, table: str
) -> list[str] | None:
    row = await exists.fetchone()
    if row is None or row[0] is None:
        return None
    cur = await conn.execute(sql.SQL("SELECT version_num::text FROM {}").format(sql.Identifier(schema, table)))
    return sorted(str(r[0]) for r in await cur.fetchall())


def _qualified(schema: str, name: str) -> str:
    return '"' + schema.replace('"', '""') + '"."' + name.replace('"', '""') + '"'


async def _relation_oid(conn: psycopg.AsyncConnection[Any], schema: str, name: str) -> int | None:
    cur = await conn.execute("SELECT to_regclass(%s)::oid::bigint", (_qualified(schema, name),))
    row = await cur.fetchone()
    return int(row[0]) if row and row[0] is not None else None


async def _relation_name(conn: psycopg.AsyncConnection[Any], oid: int) -> tuple[str, str] | None:
    cur = await conn.execute(
        "SELECT n.nspname, c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.oid = %s",
        (oid,),
    )
    row = await cur.fetchone()
    return (str(row[0]), str(row[1])) if row else None


async def _has_column(conn: psycopg.AsyncConnection[Any], oid: int, column: str) -> bool:
    cur = await conn.execute(
        "SELECT 1 FROM pg_attribute WHERE attrelid = %s AND attname = %s AND attnum > 0 AND NOT attisdropped",
        (oid, column),
    )
    return await cur.fetchone() is not None


async def _attnum(conn: psycopg.AsyncConnection[Any], oid: int, column: str) -> int | None:
    cur = await conn.execute(
        "SELECT attnum FROM pg_attribute WHERE attrelid = %s AND attname = %s AND attnum > 0 AND NOT attisdropped",
        (oid, column),
    )
    row = await cur.fetchone()
    return int(row[0]) if row else None


async def _write_rows(conn: psycopg.AsyncConnection[Any], schema: str, table: str, rows: list[str]) -> None:
    ident = sql.Identifier(schema, table)
    async with tx.batched(conn):  # one round trip, or none of its own inside a caller's pipeline
        await conn.execute(sql.SQL("DELETE FROM {}").format(ident))
        for rev in rows:
            await conn.execute(sql.SQL("INSERT INTO {} (version_num) VALUES (%s)").format(ident), (rev,))


async def apply(conn: psycopg.AsyncConnection[Any], a: Action) -> None:
    t = a["type"]
    if t == "version_rows":
        await _write_rows(conn, a["schema"], a["table"], a["after"])
    elif t == "rename_table":
        await conn.execute(
            sql.SQL("ALTER TABLE {} RENAME TO {}").format(
                sql.Identifier(a["schema"], a["table"]), sql.Identifier(a["hidden"])
            )
        )
    elif t == "rename_column":
        await conn.execute(
            sql.SQL("ALTER TABLE {} RENAME COLUMN {} TO {}").format(
                sql.Identifier(a["schema"], a["table"]), sql.Identifier(a["column"]), sql.Identifier(a["hidden"])
            )
        )
    elif t == "rename_index":
        await conn.execute(
            sql.SQL("ALTER INDEX {} RENAME TO {}").format(
                sql.Identifier(a["schema"], a["index"]), sql.Identifier(a["hidden"])
            )
        )
    else:  # created objects are made by their kind's own statement, then recorded
        raise ValueError(f"action type {t!r} is not applied generically")


async def lock(conn: psycopg.AsyncConnection[Any], a: Action) -> None:
    """Lock what ``a`` touched before checking it, so nobody changes it between the check
    and the undo (a repair committed in between must not be overwritten)."""
    t = a["type"]
    if t == "version_rows":
        if await _relation_oid(conn, a["schema"], a["table"]) is not None:
            await conn.execute(
                sql.SQL("LOCK TABLE {} IN SHARE ROW EXCLUSIVE MODE").format(sql.Identifier(a["schema"], a["table"]))
            )
        return
    if t in ("rename_table", "rename_column", "create_table", "create_column"):
        where = await _relation_name(conn, a["oid"])
        if where is not None:
            await conn.execute(sql.SQL("LOCK TABLE {} IN ACCESS EXCLUSIVE MODE").format(sql.Identifier(*where)))
        # a table recreated under the original name is checked too
        if t == "rename_table" and await _relation_oid(conn, a["schema"], a["table"]) is not None:
            await conn.execute(
                sql.SQL("LOCK TABLE {} IN SHARE ROW EXCLUSIVE MODE").format(sql.Identifier(a["schema"], a["table"]))
            )


async def drift(conn: psycopg.AsyncConnection[Any], a: Action) -> str | None:
    """``None`` while the database is still as the fault left it; else what changed."""
    t = a["type"]
    if t == "version_rows":
        rows = await version_rows(conn, a["schema"], a["table"])
        if rows is None:
            return f"the version table {a['schema']}.{a['table']} is gone"
        if Counter(rows) != Counter(a["after"]):
            return f"{a['schema']}.{a['table']} now holds {rows} (dbchaos set {a['after']})"
        return None
    if t == "rename_table":
        where = await _relation_name(conn, a["oid"])
        if await _relation_oid(conn, a["schema"], a["table"]) is not None:
            return f"a table {a['schema']}.{a['table']} exists again (recreated while it was hidden)"
        if where != (a["schema"], a["hidden"]):
            return f"the hidden table {a['schema']}.{a['hidden']} was renamed or dropped"
        return None
    if t == "rename_column":
        if await _has_column(conn, a["oid"], a["column"]):
            return f"a column {a['column']} exists again on {a['schema']}.{a['table']}"
        if not await _has_column(conn, a["oid"], a["hidden"]):
            return f"the hidden column {a['hidden']} on {a['schema']}.{a['table']} was renamed or dropped"
        return None
    if t == "rename_index":
        if await _relation_oid(conn, a["schema"], a["index"]) is not None:
            return f"a relation {a['schema']}.{a['index']} exists again (created while the index was hidden)"
        if await _relation_name(conn, a["oid"]) != (a["schema"], a["hidden"]):
            return f"the hidden index {a['schema']}.{a['hidden']} was renamed or dropped"
        return None
    if t in ("create_table", "create_index"):
        if await _relation_name(conn, a["oid"]) is None:
            return f"{a.get('table') or a.get('index')} created by dbchaos was dropped by someone else"
        return None
    if t == "create_column":
        attnum = await _attnum(conn, a["oid"], a["column"])
        if attnum is None:
            return f"column {a['column']} created by dbchaos was dropped by someone else"
        if a.get("attnum") is not None and attnum != a["attnum"]:
            return f"column {a['column']} created by dbchaos was dropped and re-created by someone else"
        return None
    raise ValueError(f"unknown action type {t!r}")


async def undo(conn: psycopg.AsyncConnection[Any], a: Action) -> None:
    t = a["type"]
    if t == "version_rows":
        await _write_rows(conn, a["schema"], a["table"], a["before"])
    elif t == "rename_table":
        await conn.execute(
            sql.SQL("ALTER TABLE {} RENAME TO {}").format(
                sql.Identifier(a["schema"], a["hidden"]), sql.Identifier(a["table"])
            )
        )
    elif t == "rename_column":
        await conn.execute(
            sql.SQL("ALTER TABLE {} RENAME COLUMN {} TO {}").format(
                sql.Identifier(a["schema"], a["table"]), sql.Identifier(a["hidden"]), sql.Identifier(a["column"])
            )
        )
    elif t == "rename_index":
        await conn.execute(
            sql.SQL("ALTER INDEX {} RENAME TO {}").format(
                sql.Identifier(a["schema"], a["hidden"]), sql.Identifier(a["index"])
            )
        )
    elif t == "create_table":
        await conn.execute(sql.SQL("DROP TABLE {}").format(sql.Identifier(a["schema"], a["table"])))
    elif t == "create_column":
        await conn.execute(
            sql.SQL("ALTER TABLE {} DROP COLUMN {}").format(
                sql.Identifier(a["schema"], a["table"]), sql.Identifier(a["column"])
            )
        )
    elif t == "create_index":
        await conn.execute(sql.SQL("DROP INDEX {}").format(sql.Identifier(a["schema"], a["index"])))
    else:
        raise ValueError(f"unknown action type {t!r}")


async def verify(conn: psycopg.AsyncConnection[Any], a: Action) -> list[str]:
    """What still differs from the recorded prior state after :func:`undo`."""
    t = a["type"]
    if t == "version_rows":
        rows = await version_rows(conn, a["schema"], a["table"])
        if rows is None:
            return [f"the version table {a['schema']}.{a['table']} is missing"]
        if Counter(rows) != Counter(a["before"]):
            return [f"{a['schema']}.{a['table']} holds {rows}, recorded {sorted(a['before'])}"]
        return []
    if t == "rename_table":
        if await _relation_name(conn, a["oid"]) != (a["schema"], a["table"]):
            return [f"table oid {a['oid']} is not named {a['schema']}.{a['table']} again"]
        if a.get("rows") is not None:  # a version table's revisions, recorded when it was hidden
            rows = await version_rows(conn, a["schema"], a["table"])
            if Counter(rows or []) != Counter(a["rows"]):
                return [f"{a['schema']}.{a['table']} holds {rows}, recorded {sorted(a['rows'])}"]
        return []
    if t == "rename_column":
        return (
            []
            if await _has_column(conn, a["oid"], a["column"])
            else [f"column {a['column']} is not back on {a['schema']}.{a['table']}"]
        )
    if t == "rename_index":
        if await _relation_name(conn, a["oid"]) != (a["schema"], a["index"]):
            return [f"index oid {a['oid']} is not named {a['schema']}.{a['index']} again"]
        return []
    if t in ("create_table", "create_index"):
        return [] if await _relation_name(conn, a["oid"]) is None else [f"object oid {a['oid']} still exists"]
    if t == "create_column":
        return [f"column {a['column']} still exists"] if await _has_column(conn, a["oid"], a["column"]) else []
    raise ValueError(f"unknown action type {t!r}")
