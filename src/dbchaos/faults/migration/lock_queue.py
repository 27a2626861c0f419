"""``migration-lock-queue``: a migration's ALTER TABLE queued behind one idle read.

Two sessions, built from the idle-transaction and table-lock mechanisms:

1. the *reader* (:func:`dbchaos.faults.idle_transaction.idle_transaction_sql`)::

       BEGIN ISOLATION LEVEL READ COMMITTED; SELECT 1 FROM <t> LIMIT 1

   holds ACCESS SHARE on the table and sits ``idle in transaction``;
2. the *migration* (:func:`dbchaos.faults.table_lock.lock_tables`)::

       SELECT set_config('lock_timeout', '<duration + grace ms>', false)
       BEGIN; LOCK TABLE <t> IN ACCESS EXCLUSIVE MODE

   which waits for the reader. Its own ``lock_timeout`` is raised past the fault's
   duration so that it waits (rather than fails) until the fault ends.

Every later query on the table, even a plain SELECT, queues behind the waiting ACCESS
EXCLUSIVE request. The LOCK is sent but not awaited: inject returns once PostgreSQL shows
the request waiting in ``pg_locks``. If the reader is ended while the fault is active (the
production fix), the migration gets its lock and rolls back at once, like a quick ALTER
TABLE, instead of holding the table. Revert cancels the waiting LOCK first (the queue
drains at once), then rolls both sessions back. If dbchaos dies, the waiting backend
notices through ``client_connection_check_interval`` and the reader ends by
``idle_in_transaction_session_timeout``.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
from typing import Any

import psycopg
from pydantic import Field

from dbchaos.engine.model import EndReason, State
from dbchaos.engine.session import Bounds, FaultSession, SessionFactory
from dbchaos.faults.base import Fault, FaultParams, RevertOutcome
from dbchaos.faults.identifiers import Relation, resolve_table, table_ref
from dbchaos.faults.idle_transaction import idle_transaction_sql
from dbchaos.faults.plan import FaultPlan
from dbchaos.faults.table_lock import TableName, lock_tables, lock_tables_sql

MIGRATION_MODE = "ACCESS EXCLUSIVE"
POLL_INTERVAL_S = 0.01

_LOCK_TIMEOUT_SQL = "SELECT set_config('lock_timeout', %s, false)"

_REQUEST_SQL = """
SELECT granted FROM pg_locks
WHERE pid = %s AND locktype = 'relation' AND relation = %s AND mode = 'AccessExclusiveLock'
"""


class MigrationLockQueueParams(FaultParams):
    table: TableName = Field(description="The table the pretend migration alters")


def migration_lock_timeout_ms(bounds: Bounds) -> int:
    """The migration's own lock_timeout: past the fault's end, so it waits rather than fails
    (the session's startup lock_timeout is only the acquire timeout)."""
    return math.ceil((bounds.duration_s + bounds.grace_s) * 1000)


def _retrieve(task: asyncio.Task[None]) -> None:
    """Mark the LOCK task's outcome as seen (it is reported through ``details``)."""
    if not task.cancelled():
        task.exception()


class MigrationLockQueue(Fault[MigrationLockQueueParams]):
    """An idle READ COMMITTED transaction that has read the table, and an ACCESS EXCLUSIVE
    request (as a migration's ALTER TABLE makes) queued behind it.

    The reader alone blocks nothing but DDL; the waiting request blocks every new query on
    the table, reads included, until the fault ends.
    """

    kind = "migration-lock-queue"
    summary = "Queue an ACCESS EXCLUSIVE request behind an idle read: every new query on the table waits."
    params_model = MigrationLockQueueParams

    def __init__(self, params: MigrationLockQueueParams) -> None:
        super().__init__(params)
        self.relation: Relation | None = None
        self.reader: FaultSession | None = None
        self.migration: FaultSession | None = None
        self.migration_lock_timeout_ms = 0
        self._pending: asyncio.Task[None] | None = None

    async def prepare(self, conn: psycopg.AsyncConnection[Any]) -> None:
        self.relation = await resolve_table(conn, table_ref(self.params.table, "params.table"), "params.table")

    async def inject(self, sessions: SessionFactory) -> None:
        rel = self.relation
        assert rel is not None
        try:
            self.reader = await sessions.open()
            await self.reader.execute(idle_transaction_sql([rel], "READ COMMITTED"))
            self.migration = await sessions.open()
            self.migration_lock_timeout_ms = migration_lock_timeout_ms(sessions.bounds)
            await self.migration.execute(_LOCK_TIMEOUT_SQL, (str(self.migration_lock_timeout_ms),))
            self._pending = asyncio.create_task(self._migrate(self.migration, rel))
            self._pending.add_done_callback(_retrieve)
            await self._wait_until_queued(sessions, rel, self.migration.pid)
        except BaseException:
            await self._stop_pending()
            raise

    @staticmethod
    async def _migrate(session: FaultSession, rel: Relation) -> None:
        """The pretend migration: wait for ACCESS EXCLUSIVE; if it is ever granted (the reader
        was ended, e.g. by a team practising the fix), finish at once as a quick ALTER TABLE
        would, rather than hold the table."""
        await lock_tables(session, [rel], MIGRATION_MODE)
        await session.execute("ROLLBACK")

    async def _wait_until_queued(self, sessions: SessionFactory, rel: Relation, pid: int) -> None:
        """Poll ``pg_locks`` from a short-lived session until the LOCK waits (or ends)."""
        assert self._pending is not None
        probe = await sessions.open()
        try:
            while not self._pending.done():
                row = await (await probe.execute(_REQUEST_SQL, (pid, rel.oid))).fetchone()
                if row is not None and not row[0]:
                    return
                await asyncio.sleep(POLL_INTERVAL_S)
        finally:
            await sessions.discard(probe)
        self._pending.result()  # raises if the LOCK failed; returns if it was granted

    def _migration_state(self) -> str:
        task = self._pending
        if task is None:
            return "not sent"
        if not task.done():
            return "waiting"
        if task.cancelled():
            return "cancelled"
        exc = task.exception()
        if exc is None:
            return "granted"
        if isinstance(exc, psycopg.errors.LockNotAvailable):
            return "lock_timeout"
        if isinstance(exc, psycopg.errors.QueryCanceled):
            return "cancelled"
        return f"failed: {type(exc).__name__}"

    async def _stop_pending(self) -> None:
        """Cancel the waiting LOCK (psycopg cancels it on the server too) and wait for it."""
        task = self._pending
        if task is not None and not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, psycopg.Error):
                await task

    async def revert(self, sessions: SessionFactory, reason: EndReason) -> RevertOutcome:
        # the waiting request goes first, so the queue behind it drains at once and the
        # migration never gets the lock when the reader ends
        before = self._migration_state()
        await self._stop_pending()
        alive = await sessions.release_all()
        details = {"migration_request_at_revert": before}
        if alive:
            return RevertOutcome(State.REVERTED, details=details)
        return RevertOutcome(
            State.LOST, "the fault's session went away (PostgreSQL released what it held)", details=details
        )

    async def plan(self, conn: psycopg.AsyncConnection[Any], bounds: Bounds) -> FaultPlan:
        rel = self.relation
        assert rel is not None
        plan = FaultPlan()
        plan.connect("reader")
        plan.add(conn, idle_transaction_sql([rel], "READ COMMITTED"), session="reader")
        plan.connect("migration")
        plan.add(conn, _LOCK_TIMEOUT_SQL, (str(migration_lock_timeout_ms(bounds)),), session="migration")
        plan.add(
            conn,
            lock_tables_sql([rel], MIGRATION_MODE),
            session="migration",
            note="sent, not awaited: it waits behind the reader until revert cancels it",
        )
        plan.connect("probe")
        plan.add(
            conn,
            _REQUEST_SQL,
            session="probe",
            note="polled with the migration session's pid and the table's oid until the request shows waiting; "
            "the probe session then closes",
        )
        plan.add(
            conn,
            "ROLLBACK",
            session="migration",
            phase="revert",
            note="after a cancel request for the waiting LOCK (the queue behind it drains at once)",
        )
        plan.add(conn, "ROLLBACK", session="reader", phase="revert")
        await plan.lock_table(conn, rel, "ACCESS SHARE", session="reader")
        await plan.lock_table(
            conn,
            rel,
            MIGRATION_MODE,
            session="migration",
            granted=False,
            note="queued, never granted: every later query on the table waits behind it",
        )
        plan.details = {"migration_lock_timeout_ms": migration_lock_timeout_ms(bounds)}
        return plan

    def details(self) -> dict[str, Any]:
        return {
            "table": self.relation.display if self.relation else None,
            "reader_pid": self.reader.pid if self.reader else None,
            "migration_pid": self.migration.pid if self.migration else None,
            "migration_request": self._migration_state(),
            "migration_lock_timeout_ms": self.migration_lock_timeout_ms,
        }

    def describe_params(self) -> dict[str, Any]:
        return {"table": self.relation.display if self.relation else self.params.table}

    def objects(self) -> list[str]:
        return [self.relation.display] if self.relation else []
