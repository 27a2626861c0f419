"""What every migration fault shares: the version table parameters, and the journaled
inject (prior state, change and journal entry in one transaction) and revert."""

from __future__ import annotations

import asyncio
from abc import abstractmethod
from typing import Any, Generic, TypeVar

import psycopg
from psycopg import sql
from pydantic import Field

from dbchaos.engine.model import EndReason
from dbchaos.engine.session import Bounds, SessionFactory
from dbchaos.errors import Conflict, InvalidInput
from dbchaos.faults.base import Fault, FaultParams, RevertOutcome
from dbchaos.faults.identifiers import MAX_IDENTIFIER_BYTES, Relation, parse_ident, resolve_table
from dbchaos.faults.migration import actions, journal, tx
from dbchaos.faults.migration.fingerprint import fingerprint, fingerprint_from, queue_fingerprint
from dbchaos.faults.migration.graph import RevisionGraph
from dbchaos.faults.migration.restore import LOCK_TIMEOUT_MS, restore
from dbchaos.faults.plan import FaultPlan, PlannedLock, Recorder


class VersionTableParams(FaultParams):
    version_table: str = Field(default="alembic_version", description="Alembic's version table name")
    version_table_schema: str = Field(default="public", description="Its schema (Alembic's version_table_schema)")


P = TypeVar("P", bound=VersionTableParams)


def version_table_name(params: VersionTableParams) -> tuple[str, str]:
    """(schema, table) as given (exact names, like Alembic's settings), checked for length."""
    for value, field in (
        (params.version_table, "params.version_table"),
        (params.version_table_schema, "params.version_table_schema"),
    ):
        if not value:
            raise InvalidInput(f"{field} must not be empty", field=field)
        if len(value.encode()) > MAX_IDENTIFIER_BYTES:
            raise InvalidInput(
                f"{field} is over {MAX_IDENTIFIER_BYTES} bytes (PostgreSQL would truncate it to another name)",
                code="identifier_too_long",
                field=field,
            )
        if "\x00" in value:
            raise InvalidInput(f"{field} contains a NUL byte", code="invalid_identifier", field=field)
    return params.version_table_schema, params.version_table


async def resolve_version_table(conn: psycopg.AsyncConnection[Any], params: VersionTableParams) -> Relation:
    schema, table = version_table_name(params)
    try:
        rel = await resolve_table(conn, (schema, table), "params.version_table")
    except InvalidInput as exc:  # name the schema when it is the schema that does not exist
        if exc.code == "unknown_table":
            cur = await conn.execute("SELECT 1 FROM pg_namespace WHERE nspname = %s", (schema,))
            if await cur.fetchone() is None:
                raise InvalidInput(
                    f"no schema named {schema!r} in the target database",
                    code="unknown_schema",
                    field="params.version_table_schema",
                ) from None
        raise
    cur = await conn.execute(
        "SELECT 1 FROM pg_attribute WHERE attrelid = %s AND attname = 'version_num' AND NOT attisdropped", (rel.oid,)
    )
    if await cur.fetchone() is None:
        raise InvalidInput(
            f"{rel.display} has no version_num column; it is not an Alembic version table",
            code="not_a_version_table",
            field="params.version_table",
        )
    return rel


def _lock_rows_sql(t: Relation) -> sql.Composed:
    return sql.SQL("LOCK TABLE {} IN SHARE ROW EXCLUSIVE MODE").format(t.ident)


def _read_rows_sql(t: Relation) -> sql.Composed:
    return sql.SQL("SELECT version_num::text FROM {}").format(t.ident)


def ident_param(value: str, field: str) -> tuple[str, ...]:
    return parse_ident(value, field)


class JournaledFault(Fault[P], Generic[P]):
    """A fault that changes data or schema: journaled in the same transaction as the change,
    reverted and verified from the journal (by this instance, or by recovery after a crash).

    Subclasses implement :meth:`change`, which runs inside the inject transaction, makes the
    change and returns the actions it took (with their before and after state).
    """

    #: schema-changing kinds take ACCESS EXCLUSIVE: retry a few times rather than queue
    attempts: int = 1
    #: inject takes a reused session (:meth:`SessionFactory.transient`): nothing to open early
    connect_early = False

    def __init__(self, params: P) -> None:
        super().__init__(params)
        self.acts: list[dict[str, Any]] = []
        #: set by a ``prepare`` that already saw the journal (saves inject a round trip)
        self.journal_exists = False

    @property
    def graph(self) -> RevisionGraph | None:
        return self.env.graph

    @abstractmethod
    async def change(self, conn: psycopg.AsyncConnection[Any]) -> list[dict[str, Any]]:
        """Make the change inside the inject transaction; return the actions taken."""

    def fingerprint_oids(self) -> list[int]:
        """Existing tables whose schema the revert must prove unchanged."""
        return []

    async def inject(self, sessions: SessionFactory) -> None:
        async with sessions.transient() as conn:  # a journaled fault holds no session while active
            if not self.journal_exists:
                await journal.ensure(conn)
            for attempt in range(self.attempts):
                try:
                    await self._inject_once(conn)
                    return
                except psycopg.errors.LockNotAvailable:
                    if attempt + 1 >= self.attempts:
                        raise
                    await asyncio.sleep(min(0.1 * 2**attempt, 1.0))

    async def _inject_once(self, conn: psycopg.AsyncConnection[Any]) -> None:
        objects = self.objects()
        async with tx.transaction(conn):
            async with conn.pipeline():  # one round trip: BEGIN, the claim and the prior schema
                await tx.begin(conn)
                claim = await journal.queue_claim(conn, objects)
                prior = await queue_fingerprint(conn, self.fingerprint_oids())
            clash = await journal.claimed(claim)
            if clash:
                fid, kind, objs = clash[0]
                raise Conflict(
                    f"{', '.join(sorted(set(objs) & set(objects)))} is already under fault {fid} ({kind}); "
                    "end it first",
                    code="object_under_fault",
                )
            before = await fingerprint_from(prior)
            # the change's last writes, the journal entry and COMMIT share the final round trip
            async with conn.pipeline():
                acts = await self.change(conn)
                await self._journal(conn, objects, acts, before)
                await tx.commit(conn)
        self.acts = acts

    async def _journal(
        self, conn: psycopg.AsyncConnection[Any], objects: list[str], acts: list[dict[str, Any]], before: dict[str, Any]
    ) -> None:
        """This fault's journal entry: its actions and the prior fingerprint."""
        await journal.insert(
            conn,
            fault_id=self.env.fault_id,
            kind=self.kind,
            owner=self.env.instance,
            key=self.env.owner_key,
            objects=objects,
            actions=acts,
            fingerprint=before,
            deadline_epoch=None,
        )

    async def revert(self, sessions: SessionFactory, reason: EndReason) -> RevertOutcome:
        await sessions.release_all()
        async with sessions.transient() as conn:
            return await restore(conn, self.env.fault_id, reason.value)

    async def apply_all(self, conn: psycopg.AsyncConnection[Any], acts: list[dict[str, Any]]) -> list[dict[str, Any]]:
        for a in acts:
            await actions.apply(conn, a)
        return acts

    async def drift(self, conn: psycopg.AsyncConnection[Any]) -> list[str]:
        """What someone changed since this fault set its state (shown while it is active)."""
        return [d for a in self.acts if (d := await actions.drift(conn, a)) is not None]

    # ---- dry run -------------------------------------------------------------------
    @abstractmethod
    async def plan_change(
        self, conn: psycopg.AsyncConnection[Any], plan: FaultPlan, rec: Recorder
    ) -> list[dict[str, Any]]:
        """For a dry run: what :meth:`change` would send (recorded through ``rec``) and lock
        (added to ``plan``), and the actions it would journal. Reads only, on ``conn``."""

    async def plan(self, conn: psycopg.AsyncConnection[Any], bounds: Bounds) -> FaultPlan:
        """The journaled inject (journal, change and entry in one transaction) and the
        journal-driven revert, as :meth:`inject` and :func:`restore` would run them when
        everything goes to plan. Most catalog reads between them (fingerprints, name checks,
        drift and verification) are left out."""
        plan = FaultPlan()
        fid = self.env.fault_id
        plan.connect()
        rec = plan.recorder(conn, phase="inject")
        if not self.journal_exists:
            if await journal.exists(conn):
                await journal.exists(rec.as_connection)
            else:
                await journal.ensure(rec.as_connection)  # the check, then the DDL in its own transaction
                if await _schema_exists(conn):  # the recorder cannot answer ensure's check of it
                    plan.statements = [s for s in plan.statements if "CREATE SCHEMA" not in (s.sql or "")]
                plan.notes.append(
                    "the first journaled fault on this database creates dbchaos's journal "
                    "(schema dbchaos, table dbchaos.journal) in a transaction of its own"
                )
        objects = self.objects()
        await rec.execute("BEGIN")
        await journal.claim(rec.as_connection, objects)
        for obj in sorted(set(objects)):
            row = await (await conn.execute("SELECT hashtext(%s)", (obj,))).fetchone()
            assert row is not None
            plan.lock(
                PlannedLock(
                    "advisory",
                    "EXCLUSIVE",
                    "inject",
                    key=(journal.OWNER_LOCK_CLASS, int(row[0])),
                    note=f"transaction-level: serialises dbchaos faults on {obj}",
                )
            )
        before = await fingerprint(conn, self.fingerprint_oids())
        acts = await self.plan_change(conn, plan, rec)
        await self._journal(rec.as_connection, objects, acts, before)
        await rec.execute("COMMIT")
        if self.attempts > 1:
            plan.notes.append(
                f"if a lock is not free within the attempt's lock_timeout, the transaction rolls back and is "
                f"retried, up to {self.attempts} attempts"
            )
        # revert: restore() on a new session, as at the deadline
        plan.connect()
        rev = plan.recorder(conn, phase="revert")
        await rev.execute("BEGIN")
        await rev.execute(sql.SQL("SET LOCAL lock_timeout = {}").format(sql.Literal(LOCK_TIMEOUT_MS)))
        await journal.lock_entry(rev.as_connection, fid)
        for a in acts:
            locked = _revert_lock(a)
            if locked is not None:
                rel, mode = locked
                await rev.execute(sql.SQL("LOCK TABLE {} IN {} MODE").format(rel.ident, sql.SQL(mode)))
                plan.lock(PlannedLock("relation", mode, "revert", relation=rel))
        for a in reversed(acts):
            await actions.undo(rev.as_connection, a)
        await journal.finish(rev.as_connection, fid, "reverted", EndReason.DEADLINE.value, {"verified": True})
        await rev.execute("COMMIT")
        plan.details = {"journal_actions": acts}
        return plan

    def details(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for a in self.acts:
            if a["type"] == "version_rows":
                out["original_version"] = a["before"]
                out["corrupted_version"] = a["after"]
            elif a["type"] in ("rename_table", "rename_column"):
                out["hidden_as"] = a["hidden"]
        return out


async def _schema_exists(conn: psycopg.AsyncConnection[Any]) -> bool:
    row = await (await conn.execute("SELECT 1 FROM pg_namespace WHERE nspname = %s", (journal.SCHEMA,))).fetchone()
    return row is not None


def _revert_lock(a: dict[str, Any]) -> tuple[Relation, str] | None:
    """The table lock :func:`actions.lock` takes before undoing ``a`` as planned (the table
    under its name while the fault is active), or ``None``. A table someone re-created under
    the original name meanwhile is locked too; a plan cannot know of it."""
    oid = int(a.get("oid") or 0)
    if a["type"] == "version_rows":
        return Relation(oid, a["schema"], a["table"], "r"), "SHARE ROW EXCLUSIVE"
    if a["type"] == "rename_table":
        return Relation(oid, a["schema"], a["hidden"], "r"), "ACCESS EXCLUSIVE"
    if a["type"] in ("rename_column", "create_table", "create_column"):
        return Relation(oid, a["schema"], a["table"], "r"), "ACCESS EXCLUSIVE"
    return None


class VersionRowsFault(JournaledFault[P], Generic[P]):
    """Kinds that only rewrite the rows of the version table."""

    def __init__(self, params: P) -> None:
        super().__init__(params)
        self.table: Relation | None = None
        self.current: list[str] = []

    async def prepare(self, conn: psycopg.AsyncConnection[Any]) -> None:
        self.table = await resolve_version_table(conn, self.params)
        self.current = await actions.read_rows(conn, self.table.schema, self.table.name)
        self.journal_exists = await journal.exists(conn)
        self.new_rows(self.current)  # validate against today's state (422 before anything changes)

    @abstractmethod
    def new_rows(self, current: list[str]) -> list[str]:
        """The rows the fault stores, given the rows stored now."""

    def objects(self) -> list[str]:
        assert self.table is not None
        return [f"version_table:{self.table.display}"]

    def fingerprint_oids(self) -> list[int]:
        return [self.table.oid] if self.table else []

    async def change(self, conn: psycopg.AsyncConnection[Any]) -> list[dict[str, Any]]:
        assert self.table is not None
        t = self.table
        async with conn.pipeline():  # lock and read in one round trip
            await conn.execute(_lock_rows_sql(t))
            cur = await conn.execute(_read_rows_sql(t))
        before = sorted(str(r[0]) for r in await cur.fetchall())
        return await self.apply_all(conn, [self._rows_action(t, before)])

    def _rows_action(self, t: Relation, before: list[str]) -> dict[str, Any]:
        return {
            "type": "version_rows",
            "schema": t.schema,
            "table": t.name,
            "before": before,
            "after": self.new_rows(before),
        }

    async def plan_change(
        self, conn: psycopg.AsyncConnection[Any], plan: FaultPlan, rec: Recorder
    ) -> list[dict[str, Any]]:
        assert self.table is not None
        t = self.table
        await rec.execute(_lock_rows_sql(t))
        await rec.execute(_read_rows_sql(t))
        await plan.lock_table(conn, t, "SHARE ROW EXCLUSIVE", phase="inject")
        act = self._rows_action(t, self.current)
        await actions.apply(rec.as_connection, act)
        return [act]

    def describe_params(self) -> dict[str, Any]:
        return self.params.model_dump(mode="json")
