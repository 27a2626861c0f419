"""``missing-table``: the Alembic version table renamed out of the way (never dropped)."""

from __future__ import annotations

from typing import Any

import psycopg

from dbchaos.faults.identifiers import Relation
from dbchaos.faults.migration import actions
from dbchaos.faults.migration.base import JournaledFault, VersionTableParams, resolve_version_table
from dbchaos.faults.migration.hidden_object import (
    SCHEMA_ATTEMPTS,
    fault_tag,
    hide_table_actions,
    lock_prepared,
    plan_lock_prepared,
    short_lock_timeout,
)
from dbchaos.faults.plan import FaultPlan, Recorder


class MissingTableParams(VersionTableParams):
    pass


class MissingTable(JournaledFault[MissingTableParams]):
    """``alembic current`` prints nothing; ``upgrade`` replays from the base and fails on the
    first table that exists, rolling back (so the table is not recreated); only
    ``alembic stamp`` recreates it. If the team does, the fault ends superseded: their table
    stays and dbchaos drops its hidden copy after recording its rows in the journal."""

    kind = "missing-table"
    summary = "Rename the Alembic version table (and its primary key) out of the way; never drop it."
    params_model = MissingTableParams
    attempts = SCHEMA_ATTEMPTS

    def __init__(self, params: MissingTableParams) -> None:
        super().__init__(params)
        self.table: Relation | None = None

    async def prepare(self, conn: psycopg.AsyncConnection[Any]) -> None:
        self.table = await resolve_version_table(conn, self.params)

    def objects(self) -> list[str]:
        assert self.table is not None
        return [f"version_table:{self.table.display}", f"table:{self.table.display}"]

    def fingerprint_oids(self) -> list[int]:
        return [self.table.oid] if self.table else []

    async def change(self, conn: psycopg.AsyncConnection[Any]) -> list[dict[str, Any]]:
        assert self.table is not None
        t = self.table
        await short_lock_timeout(conn)
        await lock_prepared(conn, t, "ACCESS EXCLUSIVE")
        return await self.apply_all(conn, await self._actions(conn))

    async def _actions(self, conn: psycopg.AsyncConnection[Any]) -> list[dict[str, Any]]:
        """The renames, with the rows to verify after the undo (reads only)."""
        assert self.table is not None
        t = self.table
        rows = await actions.version_rows(conn, t.schema, t.name) or []
        return await hide_table_actions(conn, t, fault_tag(self.env.fault_id), version_table=True, rows=rows)

    async def plan_change(
        self, conn: psycopg.AsyncConnection[Any], plan: FaultPlan, rec: Recorder
    ) -> list[dict[str, Any]]:
        assert self.table is not None
        await short_lock_timeout(rec.as_connection)
        await plan_lock_prepared(conn, plan, self.table, "ACCESS EXCLUSIVE")
        acts = await self._actions(conn)
        for a in acts:
            await actions.apply(rec.as_connection, a)
        return acts

    def details(self) -> dict[str, Any]:
        out = super().details()
        for a in self.acts:
            if a["type"] == "rename_table":
                out["version_table"] = f"{a['schema']}.{a['table']}"
                out["original_version"] = a["rows"]
            elif a["type"] == "rename_index":
                out.setdefault("hidden_indexes", {})[a["index"]] = a["hidden"]
        return out

    def describe_params(self) -> dict[str, Any]:
        return self.params.model_dump(mode="json")
