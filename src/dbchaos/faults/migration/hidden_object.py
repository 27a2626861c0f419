"""``hidden-object``: a table or a column renamed out of the way (data untouched), so the
schema lags the revision Alembic has recorded — code deployed ahead of its migration.

Also home of what the schema-changing kinds share: the short per-attempt ``lock_timeout``,
locking a prepared table by name while proving it is still the same table, and the
``<name>_dbchaos_<8 hex>`` names objects are hidden under.
"""

from __future__ import annotations

from typing import Annotated, Any

import psycopg
from psycopg import sql
from pydantic import Field

from dbchaos.errors import Conflict, InvalidInput
from dbchaos.faults.identifiers import (
    MAX_IDENTIFIER_BYTES,
    Relation,
    parse_ident,
    quote,
    resolve_column,
    resolve_table,
    table_ref,
)
from dbchaos.faults.migration import actions, journal
from dbchaos.faults.migration.base import JournaledFault, VersionTableParams, version_table_name
from dbchaos.faults.plan import FaultPlan, Recorder

#: the longest a schema-changing fault waits for its lock in one attempt (it never queues longer)
ATTEMPT_LOCK_TIMEOUT_MS = 500
#: attempts before a schema-changing fault gives up with ``LockNotAcquired``
SCHEMA_ATTEMPTS = 5
_LOCK_MODES = frozenset({"SHARE", "ACCESS EXCLUSIVE"})

TableName = Annotated[str | dict[str, str], Field(description='"schema.table" or {"schema", "name"}')]


async def short_lock_timeout(conn: psycopg.AsyncConnection[Any]) -> None:
    """``SET LOCAL lock_timeout`` to one attempt's share (never longer than the session's,
    which is the fault's acquire timeout)."""
    # one round trip, and no pg_settings (that view materialises every setting)
    await conn.execute(
        "SELECT set_config('lock_timeout', (CASE WHEN v > 0 THEN least(%s, v) ELSE %s END)::text, true)"
        " FROM (SELECT (extract(epoch FROM current_setting('lock_timeout')::interval) * 1000)::bigint AS v) AS s",
        (ATTEMPT_LOCK_TIMEOUT_MS, ATTEMPT_LOCK_TIMEOUT_MS),
    )


def lock_sql(rel: Relation, mode: str) -> sql.Composed:
    if mode not in _LOCK_MODES:  # the mode is SQL text, so it comes from a closed set
        raise ValueError(f"not a lock mode used here: {mode!r}")
    return sql.SQL("LOCK TABLE {} IN {} MODE").format(rel.ident, sql.SQL(mode))


async def lock_prepared(conn: psycopg.AsyncConnection[Any], rel: Relation, mode: str) -> None:
    """``LOCK TABLE`` ``rel`` in ``mode``; then make sure the name still denotes the table
    ``prepare`` resolved (it may have been renamed or replaced in between)."""
    stmt = lock_sql(rel, mode)
    async with conn.pipeline():  # lock and check in one round trip
        await conn.execute(stmt)
        cur = await conn.execute("SELECT to_regclass(%s)::oid::bigint", (f"{quote(rel.schema)}.{quote(rel.name)}",))
    row = await cur.fetchone()
    if row is None or row[0] is None or int(row[0]) != rel.oid:
        raise Conflict(f"{rel.display} was replaced or renamed while the fault was being injected", code="changed")


async def plan_lock_prepared(conn: psycopg.AsyncConnection[Any], plan: FaultPlan, rel: Relation, mode: str) -> None:
    """What :func:`lock_prepared` sends and takes, for a dry run."""
    plan.add(conn, lock_sql(rel, mode), note="then checks that the name still denotes the table prepare resolved")
    await plan.lock_table(conn, rel, mode, phase="inject")


def hidden_name(name: str, tag: str, n: int = 1) -> str:
    """``<name>_dbchaos_<tag>`` (``_<n>`` appended from the second candidate on), with
    ``name`` cut at a character boundary so the whole stays within 63 bytes."""
    suffix = f"_dbchaos_{tag}" + (f"_{n}" if n > 1 else "")
    room = MAX_IDENTIFIER_BYTES - len(suffix.encode())
    return name.encode()[:room].decode(errors="ignore") + suffix


def fault_tag(fault_id: str) -> str:
    """The 8 hex digits of a fault id that hidden names carry."""
    return fault_id.replace("-", "")[:8]


async def free_relation_name(
    conn: psycopg.AsyncConnection[Any], schema: str, name: str, tag: str, taken: set[str]
) -> str:
    """A hidden name for relation ``name`` that no relation or type in ``schema`` uses."""
    for n in range(1, 1000):
        cand = hidden_name(name, tag, n)
        if cand in taken:
            continue
        cur = await conn.execute(
            "SELECT 1 FROM pg_class c JOIN pg_namespace s ON s.oid = c.relnamespace WHERE s.nspname = %s"
            " AND c.relname = %s UNION ALL SELECT 1 FROM pg_type t JOIN pg_namespace s ON s.oid = t.typnamespace"
            " WHERE s.nspname = %s AND t.typname = %s",
            (schema, cand, schema, cand),
        )
        if await cur.fetchone() is None:
            taken.add(cand)
            return cand
    raise Conflict(f"no free hidden name for {schema}.{name}", code="no_hidden_name")


async def hide_table_actions(
    conn: psycopg.AsyncConnection[Any], rel: Relation, tag: str, **extra: Any
) -> list[dict[str, Any]]:
    """Actions renaming ``rel`` and each of its indexes (explicitly named indexes and
    constraints would otherwise keep their names and make a re-created table collide)."""
    taken: set[str] = set()
    acts: list[dict[str, Any]] = [
        {
            "type": "rename_table",
            "schema": rel.schema,
            "table": rel.name,
            "hidden": await free_relation_name(conn, rel.schema, rel.name, tag, taken),
            "oid": rel.oid,
            **extra,
        }
    ]
    cur = await conn.execute(
        "SELECT ic.oid::bigint, ic.relname FROM pg_index i JOIN pg_class ic ON ic.oid = i.indexrelid"
        " WHERE i.indrelid = %s ORDER BY ic.relname",
        (rel.oid,),
    )
    for oid, name in await cur.fetchall():
        acts.append(
            {
                "type": "rename_index",
                "schema": rel.schema,
                "index": str(name),
                "hidden": await free_relation_name(conn, rel.schema, str(name), tag, taken),
                "oid": int(oid),
            }
        )
    return acts


async def free_column_name(conn: psycopg.AsyncConnection[Any], oid: int, name: str, tag: str) -> str:
    for n in range(1, 1000):
        cand = hidden_name(name, tag, n)
        cur = await conn.execute(
            "SELECT 1 FROM pg_attribute WHERE attrelid = %s AND attname = %s AND NOT attisdropped", (oid, cand)
        )
        if await cur.fetchone() is None:
            return cand
    raise Conflict(f"no free hidden name for column {name}", code="no_hidden_name")


def column_name(value: str, field: str) -> str:
    """One column (or index) name, parsed like an identifier: ``email``, ``"Email"``."""
    return parse_ident(value, field, max_parts=1)[0]


class HiddenObjectParams(VersionTableParams):
    table: TableName
    column: str | None = Field(default=None, description="Hide this column instead of the whole table")


class HiddenObject(JournaledFault[HiddenObjectParams]):
    """The app fails with UndefinedTable (42P01) or UndefinedColumn (42703) while
    ``alembic current`` still prints the head: the schema lags the recorded revision."""

    kind = "hidden-object"
    summary = "Rename a table (with its indexes) or a column out of the way; data untouched."
    params_model = HiddenObjectParams
    attempts = SCHEMA_ATTEMPTS

    def __init__(self, params: HiddenObjectParams) -> None:
        super().__init__(params)
        self.table: Relation | None = None
        self.column: str | None = None
        self.recorded: list[str] | None = None

    async def prepare(self, conn: psycopg.AsyncConnection[Any]) -> None:
        rel = await resolve_table(conn, table_ref(self.params.table, "params.table"), "params.table")
        schema, name = version_table_name(self.params)
        if (rel.schema, rel.name) == (schema, name):
            raise InvalidInput(
                f"{rel.display} is the version table; hide it with the missing-table kind",
                code="version_table",
                field="params.table",
            )
        col = None
        if self.params.column is not None:
            col = await resolve_column(conn, rel, column_name(self.params.column, "params.column"), "params.column")
        async with conn.pipeline():  # one round trip for the independent reads
            inherited = (
                await conn.execute(
                    "SELECT attinhcount FROM pg_attribute WHERE attrelid = %s AND attname = %s", (rel.oid, col)
                )
                if col is not None
                else None
            )
            journal_there = await conn.execute(journal.EXISTS_SQL)
            recorded = await actions.queue_version_rows(conn, schema, name)
        row = await inherited.fetchone() if inherited is not None else None
        if row and int(row[0]) > 0:
            raise InvalidInput(
                f"column {col!r} of {rel.display} is inherited; hide it on the parent table",
                code="inherited_column",
                field="params.column",
            )
        self.column = col
        self.table = rel
        self.journal_exists = bool((await journal_there.fetchone() or (False,))[0])
        self.recorded = await actions.version_rows_from(conn, recorded, schema, name)

    def objects(self) -> list[str]:
        assert self.table is not None
        return [f"table:{self.table.display}"]

    def fingerprint_oids(self) -> list[int]:
        return [self.table.oid] if self.table else []

    async def change(self, conn: psycopg.AsyncConnection[Any]) -> list[dict[str, Any]]:
        assert self.table is not None
        rel = self.table
        await short_lock_timeout(conn)
        await lock_prepared(conn, rel, "ACCESS EXCLUSIVE")
        if self.column is not None:
            cur = await conn.execute(
                "SELECT 1 FROM pg_attribute WHERE attrelid = %s AND attname = %s AND attnum > 0 AND NOT attisdropped",
                (rel.oid, self.column),
            )
            if await cur.fetchone() is None:
                raise Conflict(f"column {self.column!r} of {rel.display} is gone", code="changed")
        return await self.apply_all(conn, await self._actions(conn))

    async def _actions(self, conn: psycopg.AsyncConnection[Any]) -> list[dict[str, Any]]:
        """The renames (reads only: the free hidden names)."""
        assert self.table is not None
        rel, tag = self.table, fault_tag(self.env.fault_id)
        if self.column is None:
            return await hide_table_actions(conn, rel, tag)
        return [
            {
                "type": "rename_column",
                "schema": rel.schema,
                "table": rel.name,
                "oid": rel.oid,
                "column": self.column,
                "hidden": await free_column_name(conn, rel.oid, self.column, tag),
            }
        ]

    async def plan_change(
        self, conn: psycopg.AsyncConnection[Any], plan: FaultPlan, rec: Recorder
    ) -> list[dict[str, Any]]:
        assert self.table is not None
        await short_lock_timeout(rec.as_connection)
        await plan_lock_prepared(conn, plan, self.table, "ACCESS EXCLUSIVE")
        acts = await self._actions(conn)
        for a in acts:
            await actions.apply(rec.as_connection, a)
        what = f"column {self.column} of {self.table.display}" if self.column else f"table {self.table.display}"
        error = "UndefinedColumn (42703)" if self.column else "UndefinedTable (42P01)"
        plan.notes.append(
            f"while it is active, statements that use {what} fail with {error}; hidden names carry 8 hex digits "
            "of the fault id, so the real fault's names differ from these"
        )
        return acts

    def details(self) -> dict[str, Any]:
        out = super().details()
        if self.table is not None:
            out["table"] = self.table.display
        if self.column is not None:
            out["column"] = self.column
        hidden_indexes = {a["index"]: a["hidden"] for a in self.acts if a["type"] == "rename_index"}
        if hidden_indexes:
            out["hidden_indexes"] = hidden_indexes
        out["recorded_revision"] = self.recorded
        return out

    def describe_params(self) -> dict[str, Any]:
        out = self.params.model_dump(mode="json")
        if self.table is not None:
            out["table"] = self.table.display
        if self.column is not None:
            out["column"] = self.column
        return out
