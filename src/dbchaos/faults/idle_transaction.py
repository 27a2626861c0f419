"""``idle-transaction``: a transaction that reads, then sits ``idle in transaction``.

One simple-protocol round trip (identifiers only, no bound parameters, so several
statements may travel together)::

    BEGIN ISOLATION LEVEL REPEATABLE READ; SELECT 1 FROM public.items LIMIT 1; ...

Under REPEATABLE READ (the default) and SERIALIZABLE the first read takes the
transaction's snapshot, which the session then holds (``backend_xmin``: vacuum cannot
remove rows deleted after it). Under READ COMMITTED it holds only its locks. Either way
it holds ACCESS SHARE on every table it read (so DDL that needs ACCESS EXCLUSIVE queues
behind it). ``idle_in_transaction_session_timeout`` ends it on the server side if
dbchaos goes away; revert is a ROLLBACK.
"""

from __future__ import annotations

from typing import Annotated, Any

import psycopg
from psycopg import sql
from pydantic import BeforeValidator, Field

from dbchaos.engine.session import Bounds, SessionFactory
from dbchaos.faults.base import Fault, FaultParams
from dbchaos.faults.identifiers import Relation
from dbchaos.faults.names import ISOLATION_LEVELS, isolation_level
from dbchaos.faults.plan import FaultPlan
from dbchaos.faults.table_lock import TableName, resolve_tables


def _isolation(v: Any) -> Any:
    return isolation_level(v) if isinstance(v, str) else v


IsolationLevel = Annotated[
    str,
    BeforeValidator(_isolation),
    Field(
        description="READ COMMITTED, REPEATABLE READ (holds a snapshot) or SERIALIZABLE",
        examples=["REPEATABLE READ"],
    ),
]


class IdleTransactionParams(FaultParams):
    tables: list[TableName] = Field(
        default_factory=list, max_length=100, description="Tables to read (ACCESS SHARE held on each); may be empty"
    )
    isolation: IsolationLevel = "REPEATABLE READ"


def idle_transaction_sql(rels: list[Relation], isolation: str) -> sql.Composed:
    """``BEGIN ISOLATION LEVEL <level>; SELECT 1 FROM <t> LIMIT 1; ...`` (``SELECT 1`` with no tables)."""
    if isolation not in ISOLATION_LEVELS:  # the level is SQL text, so it must come from the closed set
        raise ValueError(f"not an isolation level: {isolation!r}")
    reads: list[sql.Composable] = [sql.SQL("SELECT 1 FROM {} LIMIT 1").format(r.ident) for r in rels]
    if not reads:
        reads = [sql.SQL("SELECT 1")]
    return sql.SQL("; ").join([sql.SQL("BEGIN ISOLATION LEVEL {}").format(sql.SQL(isolation)), *reads])


class IdleTransaction(Fault[IdleTransactionParams]):
    """Open a transaction, read from the given tables (or just SELECT 1), and leave it idle in transaction.

    Under REPEATABLE READ or SERIALIZABLE it holds its snapshot (backend_xmin), which holds
    back vacuum; under READ COMMITTED it holds only its ACCESS SHARE locks.
    """

    kind = "idle-transaction"
    summary = "Leave a transaction idle in transaction, holding its snapshot and ACCESS SHARE locks."
    params_model = IdleTransactionParams

    def __init__(self, params: IdleTransactionParams) -> None:
        super().__init__(params)
        self.relations: list[Relation] = []

    async def prepare(self, conn: psycopg.AsyncConnection[Any]) -> None:
        self.relations = await resolve_tables(conn, list(self.params.tables), "params.tables")

    async def inject(self, sessions: SessionFactory) -> None:
        session = await sessions.open()
        await session.execute(idle_transaction_sql(self.relations, self.params.isolation))

    async def plan(self, conn: psycopg.AsyncConnection[Any], bounds: Bounds) -> FaultPlan:
        plan = FaultPlan()
        plan.connect()
        plan.add(conn, idle_transaction_sql(self.relations, self.params.isolation))
        plan.add(conn, "ROLLBACK", phase="revert")
        for rel in self.relations:
            await plan.lock_table(conn, rel, "ACCESS SHARE")
        if self.params.isolation != "READ COMMITTED":
            plan.notes.append(
                f"under {self.params.isolation} the transaction holds its snapshot (backend_xmin): VACUUM cannot "
                "remove rows deleted after it started, on any table of the database, until it ends"
            )
        return plan

    def details(self) -> dict[str, Any]:
        return {
            "isolation": self.params.isolation,
            "tables": [r.display for r in self.relations],
            "holds_snapshot": self.params.isolation != "READ COMMITTED",
        }

    def describe_params(self) -> dict[str, Any]:
        return {
            "tables": [r.display for r in self.relations] or list(self.params.tables),
            "isolation": self.params.isolation,
        }

    def objects(self) -> list[str]:
        return [r.display for r in self.relations]
