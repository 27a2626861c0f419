"""What a fault *would* do: the plan a dry run shows (``?dry_run=true``, ``--dry-run``).

A kind builds its :class:`FaultPlan` in :meth:`dbchaos.faults.base.Fault.plan`, after
``prepare`` and on the same read-only connection: the statements inject and revert would
send, in order, rendered as text; the locks they would take; and kind facts (rows matched,
free slots...). The engine adds the session settings and the blast radius
(:mod:`dbchaos.engine.dryrun`).

Statements are rendered from the very ``psycopg.sql`` objects inject uses, so a dry run
cannot drift from the real thing. Where a change is made by shared code that executes as it
goes (``faults.migration.actions``), :class:`Recorder` stands in for the connection and
records each statement instead of sending it.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, Literal

import psycopg
from psycopg import sql

from dbchaos.faults.identifiers import Relation

#: ``connect``: a session opens (the engine fills in its settings); ``inject``; ``revert``
Phase = Literal["connect", "inject", "revert"]
#: when a lock is held: for the fault's duration, in inject's one short transaction, or while reverting
LockPhase = Literal["held", "inject", "revert"]

_PARTITIONS_SQL = """
SELECT c.oid::bigint, n.nspname, c.relname, c.relkind
FROM pg_partition_tree(%s::regclass) t
JOIN pg_class c ON c.oid = t.relid JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE t.relid <> %s::regclass AND c.relkind IN ('r', 'p')
ORDER BY t.level, n.nspname, c.relname
"""


def render(conn: psycopg.AsyncConnection[Any], query: sql.Composable | str, params: Any = None) -> str:
    """The statement as PostgreSQL would receive it, bound values inlined as literals."""
    text = query.as_string(conn) if isinstance(query, sql.Composable) else query
    if params is None:
        return text
    try:
        return psycopg.AsyncClientCursor(conn).mogrify(text, params)
    except psycopg.Error:  # e.g. a '%' in a name: show the statement with its placeholders
        return text


@dataclass(frozen=True)
class PlannedStatement:
    """One statement a fault session would send."""

    sql: str | None
    session: str = "fault"
    phase: Phase = "inject"
    note: str | None = None
    #: how many sessions run it (connection-exhaustion opens many alike)
    sessions: int = 1

    def as_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"session": self.session, "phase": self.phase, "sql": self.sql}
        if self.sessions != 1:
            d["sessions"] = self.sessions
        if self.note:
            d["note"] = self.note
        return d


@dataclass(frozen=True)
class PlannedLock:
    """One lock (or resource) a fault would take.

    ``locktype`` is ``relation`` (a table lock, ``mode`` in SQL spelling), ``rows`` (row
    locks, ``mode`` a ``FOR ...`` strength, ``rows`` how many match now), ``advisory``
    (``key`` a bigint or an ``[int, int]`` pair, ``mode`` EXCLUSIVE or SHARE, as pg_locks
    compares them) or ``connection_slots`` (``count`` ordinary slots).
    """

    locktype: str
    mode: str
    phase: LockPhase = "held"
    session: str = "fault"
    relation: Relation | None = None
    rows: int | None = None
    key: int | tuple[int, int] | None = None
    count: int | None = None
    #: False for a request that is meant to wait (migration-lock-queue's ALTER TABLE)
    granted: bool = True
    note: str | None = None
    #: rows: a query answering the ``ctid`` of each row the fault would lock (for pgrowlocks)
    rows_query: sql.Composable | None = field(default=None, compare=False)
    rows_params: tuple[Any, ...] = field(default=(), compare=False)

    def as_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"locktype": self.locktype, "mode": self.mode, "phase": self.phase}
        d["session"] = self.session
        if self.relation is not None:
            d["relation"] = self.relation.display
        if self.locktype == "rows":
            d["rows"] = self.rows
        if self.key is not None:
            d["key"] = list(self.key) if isinstance(self.key, tuple) else self.key
        if self.count is not None:
            d["count"] = self.count
        if not self.granted:
            d["granted"] = False
        if self.note:
            d["note"] = self.note
        return d


@dataclass
class FaultPlan:
    """Statements, locks and facts of one fault, as a dry run reports them."""

    statements: list[PlannedStatement] = field(default_factory=list)
    locks: list[PlannedLock] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def connect(self, session: str = "fault", *, sessions: int = 1) -> None:
        """A session opens here (the engine renders the settings it carries)."""
        self.statements.append(PlannedStatement(None, session, "connect", sessions=sessions))

    def add(
        self,
        conn: psycopg.AsyncConnection[Any],
        query: sql.Composable | str,
        params: Any = None,
        *,
        session: str = "fault",
        phase: Phase = "inject",
        note: str | None = None,
        sessions: int = 1,
    ) -> None:
        self.statements.append(PlannedStatement(render(conn, query, params), session, phase, note, sessions))

    def lock(self, lock: PlannedLock) -> None:
        self.locks.append(lock)

    async def lock_table(
        self,
        conn: psycopg.AsyncConnection[Any],
        rel: Relation,
        mode: str,
        *,
        phase: LockPhase = "held",
        session: str = "fault",
        granted: bool = True,
        note: str | None = None,
    ) -> None:
        """A table lock, and the same on every partition of a partitioned table (which
        ``LOCK TABLE`` and a read of the parent take too)."""
        self.locks.append(PlannedLock("relation", mode, phase, session, rel, granted=granted, note=note))
        if rel.kind == "p":
            for part in await partitions(conn, rel):
                self.locks.append(
                    PlannedLock(
                        "relation", mode, phase, session, part, granted=granted, note=f"partition of {rel.display}"
                    )
                )

    def recorder(self, conn: psycopg.AsyncConnection[Any], *, session: str = "fault", phase: Phase) -> Recorder:
        return Recorder(conn, self, session, phase)


async def partitions(conn: psycopg.AsyncConnection[Any], rel: Relation) -> list[Relation]:
    """Every partition below a partitioned table (all levels)."""
    cur = await conn.execute(_PARTITIONS_SQL, (rel.oid, rel.oid))
    return [Relation(int(r[0]), str(r[1]), str(r[2]), str(r[3])) for r in await cur.fetchall()]


class Recorder:
    """Stands in for a fault session's connection in shared code that *changes* things as
    it goes (``actions.apply``, ``actions.undo``, the journal's writes): each statement is
    rendered into the plan instead of being sent. Reads answer nothing, so only code whose
    results are not needed may run against it."""

    def __init__(self, conn: psycopg.AsyncConnection[Any], plan: FaultPlan, session: str, phase: Phase) -> None:
        self.conn = conn
        self.plan = plan
        self.session = session
        self.phase = phase

    async def execute(self, query: sql.Composable | str, params: Any = None, **_: Any) -> Recorder:
        self.plan.add(self.conn, query, params, session=self.session, phase=self.phase)
        return self

    async def fetchone(self) -> None:
        return None

    async def fetchall(self) -> list[Any]:
        return []

    def pipeline(self) -> contextlib.nullcontext[None]:
        return contextlib.nullcontext()

    @contextlib.asynccontextmanager
    async def transaction(self) -> AsyncIterator[None]:
        await self.execute("BEGIN")
        yield
        await self.execute("COMMIT")

    @property
    def as_connection(self) -> psycopg.AsyncConnection[Any]:
        """This recorder, typed as the connection the shared code expects."""
        return self  # type: ignore[return-value]
