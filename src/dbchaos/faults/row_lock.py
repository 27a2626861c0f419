"""``row-lock``: ``SELECT ... FOR <strength>`` on chosen rows, held in an open transaction.

The rows are the first ``limit`` rows of one table in primary-key order (``ctid`` order
where the table has none), optionally filtered by ``where``: column -> list of values,
equality, ANDed across columns and ``IN`` within a column. Values travel as bound
parameters and are cast by PostgreSQL to the column's own type, so comparisons use the
column's equality operator (and its indexes), never a text comparison.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any

import psycopg
from psycopg import sql
from pydantic import BeforeValidator, Field, StrictBool, StrictFloat, StrictInt, StrictStr

from dbchaos.engine.pgerrors import translate
from dbchaos.engine.session import Bounds, FaultSession, SessionFactory
from dbchaos.errors import Conflict, Forbidden, InvalidInput
from dbchaos.faults.base import Fault, FaultParams
from dbchaos.faults.identifiers import Relation, resolve_column, resolve_table, table_ref
from dbchaos.faults.names import ROW_STRENGTHS, row_strength
from dbchaos.faults.plan import FaultPlan, PlannedLock

MAX_LIMIT = 1_000_000
MAX_WHERE_COLUMNS = 32
MAX_VALUES_PER_COLUMN = 10_000
#: How many locked keys ``details()`` shows.
SAMPLE_KEYS = 5
#: Bounds of the checks run in ``prepare`` on the shared control connection.
CHECK_LOCK_TIMEOUT = "200ms"
CHECK_STATEMENT_TIMEOUT = "5s"

TableName = Annotated[str | dict[str, str], Field(description='"schema.table" or {"schema", "name"}')]


def _strength(v: Any) -> Any:
    return row_strength(v) if isinstance(v, str) else v


RowStrength = Annotated[
    str,
    BeforeValidator(_strength),
    Field(
        description="FOR UPDATE, FOR NO KEY UPDATE, FOR SHARE or FOR KEY SHARE (also 'no key update', 'key_share'...)",
        examples=["FOR UPDATE"],
    ),
]
WhereValue = StrictStr | StrictBool | StrictInt | Annotated[StrictFloat, Field(allow_inf_nan=False)]
WhereValues = Annotated[list[WhereValue], Field(min_length=1, max_length=MAX_VALUES_PER_COLUMN)]


class RowLockParams(FaultParams):
    table: TableName = Field(description="The table whose rows to lock")
    strength: RowStrength = "FOR UPDATE"
    where: dict[str, WhereValues] | None = Field(
        default=None,
        max_length=MAX_WHERE_COLUMNS,
        description='Exact column name -> values, e.g. {"user_id": [5], "quantity": [1, 2]} '
        "(equality; AND across columns, IN within a column)",
    )
    limit: int = Field(10, ge=1, le=MAX_LIMIT, strict=True, description="At most this many rows (in key order)")


@dataclass(frozen=True)
class _Filter:
    """One ``where`` column, resolved: its name and its type's array type (for the cast)."""

    column: str
    array_type: sql.Identifier
    element_type: sql.Identifier
    values: list[str]


def _as_text(v: str | bool | int | float) -> str:
    """The PostgreSQL input text of a JSON scalar; PostgreSQL casts it to the column's type."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        return repr(v)
    return str(v)


_PK_SQL = """
SELECT a.attname
FROM pg_index i
CROSS JOIN LATERAL unnest(i.indkey::int2[]) WITH ORDINALITY AS k(attnum, ord)
JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
WHERE i.indrelid = %s AND i.indisprimary
ORDER BY k.ord
"""

_TYPE_SQL = """
SELECT tn.nspname, t.typname, an.nspname, at.typname, format_type(a.atttypid, a.atttypmod)
FROM pg_attribute a
JOIN pg_type t ON t.oid = a.atttypid
JOIN pg_namespace tn ON tn.oid = t.typnamespace
LEFT JOIN pg_type at ON at.oid = t.typarray
LEFT JOIN pg_namespace an ON an.oid = at.typnamespace
WHERE a.attrelid = %s AND a.attname = %s AND a.attnum > 0 AND NOT a.attisdropped
"""

# Errors that mean "these values do not fit this column": bad input syntax, out of range,
# a domain's check (class 22 and 23), or no equality operator for the type.
_VALUE_ERRORS = ("42883", "42804")


def _is_value_error(exc: psycopg.Error) -> bool:
    state = exc.sqlstate
    if state is None:
        return isinstance(exc, psycopg.DataError)  # e.g. a NUL byte the driver cannot send
    return state.startswith(("22", "23")) or state in _VALUE_ERRORS


class RowLock(Fault[RowLockParams]):
    """Lock chosen rows of one table with ``SELECT ... FOR <strength>`` and hold them in an
    open transaction. Rows are taken in primary-key order (``ctid`` order without a primary
    key), filtered by ``where`` and capped by ``limit``."""

    kind = "row-lock"
    summary = "Hold SELECT ... FOR UPDATE/NO KEY UPDATE/SHARE/KEY SHARE on chosen rows in an open transaction."
    params_model = RowLockParams

    def __init__(self, params: RowLockParams) -> None:
        super().__init__(params)
        self.relation: Relation | None = None
        self.key_columns: list[str] = []
        self.filters: list[_Filter] = []
        self.locked_rows: int | None = None
        self.first_keys: list[Any] = []

    # ---- prepare -------------------------------------------------------------------
    async def prepare(self, conn: psycopg.AsyncConnection[Any]) -> None:
        rel = await resolve_table(conn, table_ref(self.params.table, "params.table"), "params.table")
        self.relation = rel
        cur = await conn.execute(_PK_SQL, (rel.oid,))
        self.key_columns = [str(r[0]) for r in await cur.fetchall()]
        self.filters = [
            await self._resolve_filter(conn, rel, col, vals) for col, vals in (self.params.where or {}).items()
        ]
        cur = await conn.execute("SELECT has_any_column_privilege(%s::oid, 'UPDATE')", (rel.oid,))
        row = await cur.fetchone()
        if not (row and row[0]):
            raise Forbidden(
                f"SELECT ... {self.params.strength} on {rel.display} needs the UPDATE privilege, "
                "which the target role lacks",
                code="insufficient_privilege",
                field="params.table",
            )
        await self._check_rows_exist(conn, rel)

    async def _resolve_filter(
        self, conn: psycopg.AsyncConnection[Any], rel: Relation, column: str, values: list[Any]
    ) -> _Filter:
        field = f"params.where.{column}"
        await resolve_column(conn, rel, column, field)
        cur = await conn.execute(_TYPE_SQL, (rel.oid, column))
        row = await cur.fetchone()
        if row is None:  # dropped between the two look-ups
            raise InvalidInput(f"{rel.display} has no column {column!r}", code="unknown_column", field=field)
        if row[3] is None:
            raise InvalidInput(
                f"column {column!r} has type {row[4]}, which row-lock cannot compare values with",
                code="unsupported_column_type",
                field=field,
            )
        flt = _Filter(
            column,
            sql.Identifier(str(row[2]), str(row[3])),
            sql.Identifier(str(row[0]), str(row[1])),
            [_as_text(v) for v in values],
        )
        # Cast the values to the column's type and resolve its equality operator, touching
        # no table (so it cannot wait for a lock): bad values fail here, on their field.
        check = sql.SQL("SELECT NULL::{} = ANY(CAST(%s AS {}))").format(flt.element_type, flt.array_type)
        try:
            await conn.execute(check, (flt.values,))
        except psycopg.Error as exc:
            if not _is_value_error(exc):
                raise _unexpected(exc, conn, f"row-lock could not check the values for {column!r}") from None
            raise InvalidInput(
                f"the values for {column!r} do not fit its type {row[4]}: {_first_line(exc)}",
                code="invalid_value",
                field=field,
            ) from None
        return flt

    async def _check_rows_exist(self, conn: psycopg.AsyncConnection[Any], rel: Relation) -> None:
        """Fail with ``no_rows`` if nothing matches: a lock on nothing is surely a mistake.

        Runs under a short ``lock_timeout``: if the table itself is locked against readers,
        the check is skipped and acquisition reports who is in the way.
        """
        stmt = sql.SQL("SELECT 1 FROM {} {} LIMIT 1").format(rel.ident, self._where_sql())
        try:
            async with conn.transaction():
                await conn.execute(
                    sql.SQL("SET LOCAL lock_timeout = {}; SET LOCAL statement_timeout = {}").format(
                        sql.Literal(CHECK_LOCK_TIMEOUT), sql.Literal(CHECK_STATEMENT_TIMEOUT)
                    )
                )
                found = await (await conn.execute(stmt, self._where_params())).fetchone()
        except (psycopg.errors.LockNotAvailable, psycopg.errors.QueryCanceled):
            return
        except psycopg.Error as exc:
            if not _is_value_error(exc):
                raise _unexpected(exc, conn, f"row-lock could not check the rows of {rel.display}") from None
            raise InvalidInput(
                f"the where values do not fit their columns: {_first_line(exc)}",
                code="invalid_value",
                field="params.where",
            ) from None
        if found is None:
            where = " matching params.where" if self.filters else ""
            raise InvalidInput(
                f"{rel.display} has no rows{where}; a row lock on nothing is surely a mistake",
                code="no_rows",
                field="params.where" if self.filters else "params.table",
            )

    # ---- SQL -----------------------------------------------------------------------
    def _where_sql(self) -> sql.Composable:
        if not self.filters:
            return sql.SQL("")
        conds = [
            sql.SQL("{} = ANY(CAST({} AS {}))").format(sql.Identifier(f.column), sql.Placeholder(), f.array_type)
            for f in self.filters
        ]
        return sql.SQL("WHERE ") + sql.SQL(" AND ").join(conds)

    def _where_params(self) -> list[list[str]]:
        return [f.values for f in self.filters]

    def _keys(self) -> list[sql.Composable]:
        """What identifies a locked row: the primary key, else ``ctid`` (with the partition)."""
        if self.key_columns:
            return [sql.Identifier(c) for c in self.key_columns]
        assert self.relation is not None
        if self.relation.kind == "p":
            return [sql.SQL("tableoid::regclass::text"), sql.SQL("ctid")]
        return [sql.SQL("ctid")]

    @property
    def key_names(self) -> list[str]:
        if self.key_columns:
            return list(self.key_columns)
        assert self.relation is not None
        return ["tableoid", "ctid"] if self.relation.kind == "p" else ["ctid"]

    def lock_statement(self) -> sql.Composed:
        """``SELECT count(*) FROM (SELECT <keys> ... ORDER BY <keys> LIMIT n FOR <strength>)``:
        locks the rows and answers one number (the rows never travel, nothing is materialised)."""
        assert self.relation is not None
        strength = self.params.strength
        if strength not in ROW_STRENGTHS:  # the strength is SQL text, so it must come from the closed set
            raise ValueError(f"not a row-lock strength: {strength!r}")
        keys = self._keys()
        return sql.SQL(
            "SELECT count(*) FROM (SELECT {keys} FROM {table} {where} ORDER BY {keys} LIMIT {limit} {strength})"
            " AS locked"
        ).format(
            keys=sql.SQL(", ").join(keys),
            table=self.relation.ident,
            where=self._where_sql(),
            limit=sql.Placeholder(),
            strength=sql.SQL(strength),
        )

    def sample_statement(self) -> sql.Composed:
        """The first few keys in lock order (a plain read; run after the rows are locked)."""
        assert self.relation is not None
        keys = self._keys()
        return sql.SQL("SELECT {keys} FROM {table} {where} ORDER BY {keys} LIMIT {sample}").format(
            keys=sql.SQL(", ").join(keys),
            table=self.relation.ident,
            where=self._where_sql(),
            sample=sql.Literal(min(SAMPLE_KEYS, self.params.limit)),
        )

    def matched_statement(self, column: sql.Composable) -> sql.Composed:
        """``SELECT <column> FROM (SELECT ... ORDER BY <keys> LIMIT n)``: the rows the lock
        statement would lock, read without locking them (for dry runs)."""
        assert self.relation is not None
        keys = self._keys()
        return sql.SQL(
            "SELECT {column} FROM (SELECT ctid AS row_ctid, {keys} FROM {table} {where} ORDER BY {keys} LIMIT {limit})"
            " AS matched"
        ).format(
            column=column,
            keys=sql.SQL(", ").join(keys),
            table=self.relation.ident,
            where=self._where_sql(),
            limit=sql.Placeholder(),
        )

    # ---- dry run -------------------------------------------------------------------
    async def plan(self, conn: psycopg.AsyncConnection[Any], bounds: Bounds) -> FaultPlan:
        assert self.relation is not None
        params = self._where_params()
        plan = FaultPlan()
        plan.connect()
        plan.add(conn, "BEGIN", note="BEGIN, the lock and the sample travel in one pipeline (one round trip)")
        plan.add(conn, self.lock_statement(), [*params, self.params.limit])
        plan.add(conn, self.sample_statement(), params)
        plan.add(conn, "ROLLBACK", phase="revert")
        matched = await self._count_matched(conn)
        if matched is None:
            plan.notes.append(
                f"{self.relation.display} is locked against readers right now, so the rows that match could not "
                "be counted (see blast_radius.in_the_way)"
            )
        await plan.lock_table(
            conn, self.relation, "ROW SHARE", note="taken by SELECT ... FOR; also on the indexes the scan uses"
        )
        plan.lock(
            PlannedLock(
                "rows",
                self.params.strength,
                relation=self.relation,
                rows=matched,
                note=f"the first {self.params.limit} matching rows in {', '.join(self.key_names)} order",
                rows_query=self.matched_statement(sql.SQL("row_ctid")),
                rows_params=(*params, self.params.limit),
            )
        )
        plan.details = {"rows_matched": matched, "key_columns": self.key_names}
        return plan

    async def _count_matched(self, conn: psycopg.AsyncConnection[Any]) -> int | None:
        """How many rows the lock statement would lock now; ``None`` if the table is locked
        against readers (a short lock_timeout, in a savepoint)."""
        stmt = self.matched_statement(sql.SQL("count(*)"))
        try:
            async with conn.transaction():
                await conn.execute(sql.SQL("SET LOCAL lock_timeout = {}").format(sql.Literal(CHECK_LOCK_TIMEOUT)))
                row = await (await conn.execute(stmt, [*self._where_params(), self.params.limit])).fetchone()
        except (psycopg.errors.LockNotAvailable, psycopg.errors.QueryCanceled):
            return None
        return int(row[0]) if row else 0

    # ---- inject --------------------------------------------------------------------
    async def inject(self, sessions: SessionFactory) -> None:
        session = await sessions.open()
        await self.lock_rows(session)

    async def lock_rows(self, session: FaultSession) -> None:
        # Bound parameters need the extended protocol (one statement per string): BEGIN, the
        # lock and the sample go out together in one pipeline (one round trip).
        params = self._where_params()
        async with session.pipeline():
            await session.execute("BEGIN")
            cur = await session.execute(self.lock_statement(), [*params, self.params.limit])
            sample_cur = await session.conn.execute(self.sample_statement(), params)
        row = await cur.fetchone()
        count = int(row[0]) if row else 0
        if count == 0:
            assert self.relation is not None
            raise Conflict(
                f"no rows of {self.relation.display} matched any more when the fault tried to lock them",
                code="no_rows",
            )
        self.locked_rows = count
        sample = await sample_cur.fetchall()
        self.first_keys = [_plain(k[0]) if len(k) == 1 else [_plain(v) for v in k] for k in sample]

    # ---- answers -------------------------------------------------------------------
    def details(self) -> dict[str, Any]:
        return {
            "table": self.relation.display if self.relation else None,
            "strength": self.params.strength,
            "locked_rows": self.locked_rows,
            "key_columns": self.key_names if self.relation else [],
            "first_keys": self.first_keys,
        }

    def describe_params(self) -> dict[str, Any]:
        return {
            "table": self.relation.display if self.relation else self.params.table,
            "strength": self.params.strength,
            "where": dict(self.params.where) if self.params.where is not None else None,
            "limit": self.params.limit,
        }

    def objects(self) -> list[str]:
        return [self.relation.display] if self.relation else []


def _unexpected(exc: psycopg.Error, conn: psycopg.AsyncConnection[Any], what: str) -> Exception:
    """A broken control connection stays a driver error (the control channel reconnects and
    retries); anything else becomes the dbchaos error for its SQLSTATE."""
    if isinstance(exc, psycopg.OperationalError) and (conn.broken or conn.closed):
        return exc
    return translate(exc, what)


def _first_line(exc: psycopg.Error) -> str:
    text = exc.diag.message_primary if exc.sqlstate else None
    return (text or str(exc) or type(exc).__name__).strip().splitlines()[0]


def _plain(value: Any) -> Any:
    """A key value as JSON shows it (ctid and other exotic types as text)."""
    return value if isinstance(value, int | float | str | bool) or value is None else str(value)
