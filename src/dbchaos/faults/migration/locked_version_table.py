"""``locked-version-table``: hold the lock a deploy's migration needs on Alembic's version table.

The table-lock mechanism (:func:`dbchaos.faults.table_lock.lock_tables`) aimed at the
version table, plus any ``tables`` the migration touches, in one round trip::

    BEGIN; LOCK TABLE public.alembic_version[, extra...] IN <mode> MODE

``alembic current`` and an ``upgrade`` with nothing to do only read the version table
(ACCESS SHARE), so only ACCESS EXCLUSIVE stops them; an upgrade that applies a revision
must also write it (ROW EXCLUSIVE), which SHARE, SHARE ROW EXCLUSIVE, EXCLUSIVE and
ACCESS EXCLUSIVE block. No data changes: a plain lock fault, released by ROLLBACK and,
if dbchaos dies, by the session's server-side timeouts.
"""

from __future__ import annotations

from typing import Any

import psycopg
from pydantic import Field

from dbchaos.engine.session import Bounds, SessionFactory
from dbchaos.faults.base import Fault
from dbchaos.faults.identifiers import Relation
from dbchaos.faults.migration.base import VersionTableParams, resolve_version_table
from dbchaos.faults.names import conflicts
from dbchaos.faults.plan import FaultPlan
from dbchaos.faults.table_lock import LockMode, TableName, lock_tables, plan_lock_tables, resolve_tables

#: what Alembic takes on the version table: reading it, and writing it after applying a revision
READ_MODE = "ACCESS SHARE"
WRITE_MODE = "ROW EXCLUSIVE"


class LockedVersionTableParams(VersionTableParams):
    mode: LockMode = "ACCESS EXCLUSIVE"
    tables: list[TableName] = Field(
        default_factory=list,
        max_length=100,
        description="Other tables to lock in the same mode (those the pending migration touches)",
    )


class LockedVersionTable(Fault[LockedVersionTableParams]):
    """Hold a table lock on Alembic's version table (and optionally other tables).

    Under ACCESS EXCLUSIVE (the default) every Alembic command waits, ``alembic current``
    included. Under SHARE, SHARE ROW EXCLUSIVE or EXCLUSIVE only an upgrade that has a
    revision to apply waits (it must update the version table); weaker modes block no
    Alembic command on the version table itself.
    """

    kind = "locked-version-table"
    summary = "Hold a lock on Alembic's version table so deploys' migrations hang or hit lock_timeout."
    params_model = LockedVersionTableParams

    def __init__(self, params: LockedVersionTableParams) -> None:
        super().__init__(params)
        self.version_table: Relation | None = None
        self.extra: list[Relation] = []

    async def prepare(self, conn: psycopg.AsyncConnection[Any]) -> None:
        self.version_table = await resolve_version_table(conn, self.params)
        extra = await resolve_tables(conn, list(self.params.tables), "params.tables")
        seen = {self.version_table.oid}
        self.extra = []
        for rel in extra:
            if rel.oid not in seen:
                seen.add(rel.oid)
                self.extra.append(rel)

    @property
    def relations(self) -> list[Relation]:
        return ([self.version_table] if self.version_table else []) + self.extra

    async def inject(self, sessions: SessionFactory) -> None:
        session = await sessions.open()
        await lock_tables(session, self.relations, self.params.mode)

    async def plan(self, conn: psycopg.AsyncConnection[Any], bounds: Bounds) -> FaultPlan:
        plan = await plan_lock_tables(conn, self.relations, self.params.mode)
        facts = self.details()
        plan.details = {k: facts[k] for k in ("blocks_alembic_current", "blocks_upgrade_with_work")}
        return plan

    def details(self) -> dict[str, Any]:
        mode = self.params.mode
        return {
            "version_table": self.version_table.display if self.version_table else None,
            "mode": mode,
            "tables": [r.display for r in self.extra],
            "blocks_alembic_current": conflicts(mode, READ_MODE),
            "blocks_upgrade_with_work": conflicts(mode, WRITE_MODE),
        }

    def describe_params(self) -> dict[str, Any]:
        return {
            "version_table": self.params.version_table,
            "version_table_schema": self.params.version_table_schema,
            "mode": self.params.mode,
            "tables": [r.display for r in self.extra] if self.version_table else list(self.params.tables),
        }

    def objects(self) -> list[str]:
        return [r.display for r in self.relations]
