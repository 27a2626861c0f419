"""``table-lock``: ``LOCK TABLE ... IN <mode> MODE`` held in an open transaction."""

from __future__ import annotations

from typing import Annotated, Any

import psycopg
from psycopg import sql
from pydantic import BeforeValidator, Field

from dbchaos.engine.session import Bounds, SessionFactory
from dbchaos.faults.base import Fault, FaultParams
from dbchaos.faults.identifiers import Relation, resolve_table, table_ref
from dbchaos.faults.names import LOCK_MODES, lock_mode
from dbchaos.faults.plan import FaultPlan

TableName = Annotated[str | dict[str, str], Field(description='"schema.table" or {"schema", "name"}')]


def _mode(v: Any) -> Any:
    return lock_mode(v) if isinstance(v, str) else v


LockMode = Annotated[
    str,
    BeforeValidator(_mode),
    Field(
        description="Any of the eight LOCK TABLE modes, e.g. 'ACCESS EXCLUSIVE', 'row_exclusive', 'ShareLock'",
        examples=["ACCESS EXCLUSIVE"],
    ),
]


class TableLockParams(FaultParams):
    tables: list[TableName] = Field(min_length=1, max_length=100, description="Tables to lock")
    mode: LockMode = "ACCESS EXCLUSIVE"


async def resolve_tables(conn: psycopg.AsyncConnection[Any], tables: list[Any], field: str) -> list[Relation]:
    rels = []
    for i, t in enumerate(tables):
        rels.append(await resolve_table(conn, table_ref(t, f"{field}.{i}"), f"{field}.{i}"))
    return rels


def lock_tables_sql(rels: list[Relation], mode: str) -> sql.Composed:
    """``BEGIN; LOCK TABLE a, b IN <mode> MODE``."""
    if mode not in LOCK_MODES:  # the mode text is SQL, so it must come from the closed set
        raise ValueError(f"not a lock mode: {mode!r}")
    return sql.SQL("BEGIN; LOCK TABLE {} IN {} MODE").format(sql.SQL(", ").join(r.ident for r in rels), sql.SQL(mode))


async def lock_tables(session: Any, rels: list[Relation], mode: str) -> None:
    """:func:`lock_tables_sql` on ``session`` (one round trip)."""
    await session.execute(lock_tables_sql(rels, mode))


async def plan_lock_tables(conn: psycopg.AsyncConnection[Any], rels: list[Relation], mode: str) -> FaultPlan:
    """The plan of a fault that holds :func:`lock_tables` until revert rolls it back."""
    plan = FaultPlan()
    plan.connect()
    plan.add(conn, lock_tables_sql(rels, mode))
    plan.add(conn, "ROLLBACK", phase="revert")
    for rel in rels:
        await plan.lock_table(conn, rel, mode)
    return plan


class TableLock(Fault[TableLockParams]):
    kind = "table-lock"
    summary = "Hold LOCK TABLE in any of the eight modes inside an open transaction."
    params_model = TableLockParams

    def __init__(self, params: TableLockParams) -> None:
        super().__init__(params)
        self.relations: list[Relation] = []

    async def prepare(self, conn: psycopg.AsyncConnection[Any]) -> None:
        self.relations = await resolve_tables(conn, list(self.params.tables), "params.tables")

    async def inject(self, sessions: SessionFactory) -> None:
        session = await sessions.open()
        await lock_tables(session, self.relations, self.params.mode)

    async def plan(self, conn: psycopg.AsyncConnection[Any], bounds: Bounds) -> FaultPlan:
        return await plan_lock_tables(conn, self.relations, self.params.mode)

    def describe_params(self) -> dict[str, Any]:
        return {
            "tables": [r.display for r in self.relations] or self.params.tables,
            "mode": self.params.mode,
        }

    def objects(self) -> list[str]:
        return [r.display for r in self.relations]
