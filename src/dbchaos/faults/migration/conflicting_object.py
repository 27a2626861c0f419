"""``conflicting-object``: the table, column or index a pending migration is about to create,
created ahead of it — so that migration fails with a duplicate-object error."""

from __future__ import annotations

from typing import Any, Literal, Self

import psycopg
from psycopg import sql
from pydantic import Field, model_validator

from dbchaos.errors import Forbidden, InvalidInput
from dbchaos.faults.identifiers import SYSTEM_SCHEMAS, Relation, quote, resolve_column, resolve_table, table_ref
from dbchaos.faults.migration import actions
from dbchaos.faults.migration.base import JournaledFault, VersionTableParams, version_table_name
from dbchaos.faults.migration.hidden_object import (
    SCHEMA_ATTEMPTS,
    TableName,
    column_name,
    lock_prepared,
    plan_lock_prepared,
    short_lock_timeout,
)
from dbchaos.faults.plan import FaultPlan, Recorder

#: PostgreSQL's INDEX_MAX_KEYS
MAX_INDEX_COLUMNS = 32
_NEEDS: dict[str, tuple[str, ...]] = {"table": (), "column": ("column", "type"), "index": ("index", "columns")}
_OPTIONAL = ("column", "type", "index", "columns")


class ConflictingObjectParams(VersionTableParams):
    object: Literal["table", "column", "index"] = Field(description="What to create: table, column or index")
    table: TableName = Field(description="The table to create, or the table the column or index goes on")
    column: str | None = Field(default=None, description="object=column: the column to add (nullable, no default)")
    type: str | None = Field(default=None, max_length=256, description="object=column: its type, e.g. 'text'")
    index: str | None = Field(default=None, description="object=index: the index name (in the table's schema)")
    columns: list[str] | None = Field(
        default=None, min_length=1, max_length=MAX_INDEX_COLUMNS, description="object=index: the indexed columns"
    )

    @model_validator(mode="after")
    def _combination(self) -> Self:
        needed = _NEEDS[self.object]
        for name in _OPTIONAL:
            given = getattr(self, name) is not None
            if name in needed and not given:
                raise InvalidInput(f"object={self.object} needs {name}", code="missing_parameter", field=name)
            if name not in needed and given:
                raise InvalidInput(f"{name} is not used with object={self.object}", code="unused_parameter", field=name)
        return self


class ConflictingObject(JournaledFault[ConflictingObjectParams]):
    """The pending migration that creates the same object fails: ``CREATE TABLE`` with
    DuplicateTable (42P07), ``ADD COLUMN`` with DuplicateColumn (42701), ``CREATE INDEX``
    with DuplicateTable too (an index is a relation: ``relation "ix_..." already exists``)."""

    kind = "conflicting-object"
    summary = "Create the table, column or index a pending migration is about to create."
    params_model = ConflictingObjectParams
    attempts = SCHEMA_ATTEMPTS

    def __init__(self, params: ConflictingObjectParams) -> None:
        super().__init__(params)
        self.schema = ""
        self.name = ""  # the table to create (object=table)
        self.table: Relation | None = None  # the existing table (object=column / index)
        self.column = ""
        self.type_ident: sql.Identifier | None = None
        self.type_name = ""
        self.index = ""
        self.columns: list[str] = []
        self.recorded: list[str] | None = None

    # ---- prepare -------------------------------------------------------------------
    async def prepare(self, conn: psycopg.AsyncConnection[Any]) -> None:
        p = self.params
        if p.object == "table":
            await self._prepare_table(conn)
        else:
            self.table = await resolve_table(conn, table_ref(p.table, "params.table"), "params.table")
            self.schema = self.table.schema
            if p.object == "column":
                await self._prepare_column(conn, self.table)
            else:
                await self._prepare_index(conn, self.table)
        schema, name = version_table_name(p)
        self.recorded = await actions.version_rows(conn, schema, name)

    async def _prepare_table(self, conn: psycopg.AsyncConnection[Any]) -> None:
        parts = table_ref(self.params.table, "params.table")
        if len(parts) == 2:
            schema, name = parts
        else:
            cur = await conn.execute("SELECT current_schema()")
            row = await cur.fetchone()
            if row is None or row[0] is None:
                raise InvalidInput(
                    "no schema in the search_path exists; qualify the table as schema.table",
                    code="unknown_schema",
                    field="params.table",
                )
            schema, name = str(row[0]), parts[0]
        cur = await conn.execute("SELECT 1 FROM pg_namespace WHERE nspname = %s", (schema,))
        if await cur.fetchone() is None:
            raise InvalidInput(
                f"no schema named {schema!r} in the target database", code="unknown_schema", field="params.table"
            )
        if schema in SYSTEM_SCHEMAS or schema.startswith(("pg_temp", "pg_toast")):
            raise Forbidden(
                f"{schema} is a system schema; dbchaos never creates objects there",
                code="system_object",
                field="params.table",
            )
        await _name_free(conn, schema, name, "params.table", types=True)
        self.schema, self.name = schema, name

    async def _prepare_column(self, conn: psycopg.AsyncConnection[Any], rel: Relation) -> None:
        assert self.params.column is not None and self.params.type is not None
        col = column_name(self.params.column, "params.column")
        cur = await conn.execute(
            "SELECT 1 FROM pg_attribute WHERE attrelid = %s AND attname = %s AND NOT attisdropped", (rel.oid, col)
        )
        if await cur.fetchone() is not None:
            raise InvalidInput(
                f"{rel.display} already has a column {col!r}", code="object_exists", field="params.column"
            )
        try:
            cur = await conn.execute(
                "SELECT n.nspname, t.typname, t.typtype, t.typisdefined, format_type(t.oid, NULL)"
                " FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace WHERE t.oid = %s::regtype",
                (self.params.type,),
            )
            row = await cur.fetchone()
        except psycopg.OperationalError:
            raise
        except psycopg.Error as exc:
            why = (exc.diag.message_primary or str(exc)).strip()
            raise InvalidInput(
                f"{self.params.type!r} is not a type ({why})", code="unknown_type", field="params.type"
            ) from None
        if row is None:
            raise InvalidInput(f"{self.params.type!r} is not a type", code="unknown_type", field="params.type")
        if row[2] == "p" or not row[3]:
            raise InvalidInput(
                f"{row[4]} is a pseudo-type; a column cannot have it", code="unsupported_type", field="params.type"
            )
        self.column = col
        self.type_ident = sql.Identifier(str(row[0]), str(row[1]))
        self.type_name = str(row[4])

    async def _prepare_index(self, conn: psycopg.AsyncConnection[Any], rel: Relation) -> None:
        assert self.params.index is not None and self.params.columns is not None
        idx = column_name(self.params.index, "params.index")
        await _name_free(conn, rel.schema, idx, "params.index", types=False)
        cols = []
        for i, c in enumerate(self.params.columns):
            field = f"params.columns.{i}"
            cols.append(await resolve_column(conn, rel, column_name(c, field), field))
        self.index, self.columns = idx, cols

    # ---- inject ---------------------------------------------------------------------
    def objects(self) -> list[str]:
        if self.params.object == "table":
            return [f"table:{self.schema}.{self.name}"]
        assert self.table is not None
        objs = [f"table:{self.table.display}"]
        if self.params.object == "index":
            objs.append(f"index:{self.schema}.{self.index}")
        return objs

    def fingerprint_oids(self) -> list[int]:
        return [self.table.oid] if self.table else []

    async def change(self, conn: psycopg.AsyncConnection[Any]) -> list[dict[str, Any]]:
        await short_lock_timeout(conn)
        if self.params.object == "table":
            for stmt in self._create_sql():
                await conn.execute(stmt)
            return [self._action(await _oid(conn, self.schema, self.name))]
        rel = self.table
        assert rel is not None
        await lock_prepared(conn, rel, self._lock_mode())
        for stmt in self._create_sql():
            await conn.execute(stmt)
        if self.params.object == "column":
            cur = await conn.execute(
                "SELECT attnum FROM pg_attribute WHERE attrelid = %s AND attname = %s AND NOT attisdropped",
                (rel.oid, self.column),
            )
            row = await cur.fetchone()
            assert row is not None
            return [self._action(rel.oid, int(row[0]))]
        return [self._action(await _oid(conn, rel.schema, self.index))]

    def _lock_mode(self) -> str:
        """ADD COLUMN takes ACCESS EXCLUSIVE; CREATE INDEX takes SHARE (writes wait while it builds)."""
        return "ACCESS EXCLUSIVE" if self.params.object == "column" else "SHARE"

    def _create_sql(self) -> list[sql.Composed]:
        """The statements that create the object and mark it as dbchaos's."""
        note = sql.Literal(f"dbchaos conflicting-object {self.env.fault_id}: dropped when the fault ends")
        if self.params.object == "table":
            ident = sql.Identifier(self.schema, self.name)
            return [
                sql.SQL("CREATE TABLE {} ()").format(ident),
                sql.SQL("COMMENT ON TABLE {} IS {}").format(ident, note),
            ]
        rel = self.table
        assert rel is not None
        if self.params.object == "column":
            assert self.type_ident is not None
            # nullable and without a default: a catalog-only change, instant on any table size
            return [
                sql.SQL("ALTER TABLE {} ADD COLUMN {} {}").format(
                    rel.ident, sql.Identifier(self.column), self.type_ident
                ),
                sql.SQL("COMMENT ON COLUMN {} IS {}").format(sql.Identifier(rel.schema, rel.name, self.column), note),
            ]
        return [
            sql.SQL("CREATE INDEX {} ON {} ({})").format(
                sql.Identifier(self.index), rel.ident, sql.SQL(", ").join(sql.Identifier(c) for c in self.columns)
            ),
            sql.SQL("COMMENT ON INDEX {} IS {}").format(sql.Identifier(rel.schema, self.index), note),
        ]

    def _action(self, oid: int | None, attnum: int | None = None) -> dict[str, Any]:
        """The journal's record of the created object (``oid`` unknown in a dry run)."""
        if self.params.object == "table":
            return {"type": "create_table", "schema": self.schema, "table": self.name, "oid": oid}
        rel = self.table
        assert rel is not None
        if self.params.object == "column":
            return {
                "type": "create_column",
                "schema": rel.schema,
                "table": rel.name,
                "oid": oid,
                "column": self.column,
                "attnum": attnum,
                "data_type": self.type_name,
            }
        return {
            "type": "create_index",
            "schema": rel.schema,
            "index": self.index,
            "oid": oid,
            "on_table": rel.name,
            "columns": self.columns,
        }

    async def plan_change(
        self, conn: psycopg.AsyncConnection[Any], plan: FaultPlan, rec: Recorder
    ) -> list[dict[str, Any]]:
        await short_lock_timeout(rec.as_connection)
        if self.table is not None:
            await plan_lock_prepared(conn, plan, self.table, self._lock_mode())
        for stmt in self._create_sql():
            await rec.execute(stmt)
        if self.params.object == "index":
            plan.notes.append(
                "CREATE INDEX reads the whole table while it holds SHARE: writes to it wait for the build"
            )
        return [self._action(self.table.oid if self.params.object == "column" and self.table else None)]

    # ---- answers --------------------------------------------------------------------
    def created(self) -> str:
        if self.params.object == "table":
            return f"table {self.schema}.{self.name}"
        assert self.table is not None
        if self.params.object == "column":
            return f"column {self.column} {self.type_name} on {self.table.display}"
        return f"index {self.schema}.{self.index} on {self.table.display} ({', '.join(self.columns)})"

    def details(self) -> dict[str, Any]:
        return {"created": self.created(), "recorded_revision": self.recorded}

    def describe_params(self) -> dict[str, Any]:
        out = self.params.model_dump(mode="json", exclude_none=True)
        if self.params.object == "table" and self.name:
            out["table"] = f"{self.schema}.{self.name}"
        elif self.table is not None:
            out["table"] = self.table.display
        if self.column:
            out["column"], out["type"] = self.column, self.type_name
        if self.index:
            out["index"], out["columns"] = self.index, self.columns
        return out


async def _name_free(conn: psycopg.AsyncConnection[Any], schema: str, name: str, field: str, *, types: bool) -> None:
    """422 if a relation (or, for a table, also a type: its row type would clash) is named so."""
    cur = await conn.execute(
        "SELECT c.relkind FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
        " WHERE n.nspname = %s AND c.relname = %s",
        (schema, name),
    )
    if await cur.fetchone() is not None:
        raise InvalidInput(
            f"a relation named {schema}.{name} already exists; conflicting-object creates a new one",
            code="object_exists",
            field=field,
        )
    if types:
        cur = await conn.execute(
            "SELECT 1 FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace WHERE n.nspname = %s"
            " AND t.typname = %s",
            (schema, name),
        )
        if await cur.fetchone() is not None:
            raise InvalidInput(f"a type named {schema}.{name} already exists", code="object_exists", field=field)


async def _oid(conn: psycopg.AsyncConnection[Any], schema: str, name: str) -> int:
    cur = await conn.execute("SELECT to_regclass(%s)::oid::bigint", (f"{quote(schema)}.{quote(name)}",))
    row = await cur.fetchone()
    assert row is not None and row[0] is not None
    return int(row[0])
