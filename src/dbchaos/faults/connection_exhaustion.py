"""``connection-exhaustion``: idle sessions that occupy the server's ordinary connection slots.

``max_connections`` is per cluster: this fault affects every database on the server.
The last ``superuser_reserved_connections`` slots (plus, on PostgreSQL >= 16,
``reserved_connections``) are kept for privileged roles, and dbchaos never takes them,
even when its own role could: the count is computed as

    ordinary slots = max_connections - superuser_reserved_connections - reserved_connections
    free           = ordinary slots - client backends now connected (dbchaos's own included)

``connections=N`` takes exactly N (409 when fewer than N are free); ``leave=K`` takes all
free ordinary slots but K. Sessions open concurrently in batches; once open, dbchaos counts
the client backends again and, if other clients connected meanwhile, gives slots back
(``leave``) or fails (``connections``) rather than sit in a reserved slot. The sessions
sit idle; ``idle_session_timeout`` ends them on the server side if dbchaos goes away.

A target's ``connection_reserve`` (targets file) is a floor under ``leave``: at least that
many ordinary slots stay free whatever the request says (``connections=N`` gets a 409 when
taking N would leave fewer).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

import psycopg
from pydantic import Field, model_validator

from dbchaos.engine.session import Bounds, FaultSession, SessionFactory
from dbchaos.errors import Conflict, DbChaosError, InvalidInput
from dbchaos.faults.base import Fault, FaultParams
from dbchaos.faults.plan import FaultPlan, PlannedLock

#: Sessions opened concurrently per batch.
BATCH_SIZE = 20
#: File descriptors left to the rest of the dbchaos process.
FD_MARGIN = 100

# Client backends. To a role without pg_read_all_stats, other roles' sessions show
# backend_type NULL (only pid and user are visible): count every such row with a user too, an
# overestimate (the logical replication launcher, parallel workers) rather than a miss that
# would take the slots ``leave`` and ``connection_reserve`` keep free (docs/least-privilege.md).
_CLIENT = "(backend_type = 'client backend' OR (backend_type IS NULL AND usesysid IS NOT NULL))"

_SLOTS_SQL = f"""
SELECT current_setting('max_connections')::int,
       current_setting('superuser_reserved_connections')::int,
       coalesce(current_setting('reserved_connections', true)::int, 0),
       (SELECT count(*) FROM pg_stat_activity WHERE {_CLIENT})::int
"""

_IN_USE_SQL = f"SELECT count(*)::int FROM pg_stat_activity WHERE {_CLIENT}"


class ConnectionExhaustionParams(FaultParams):
    connections: int | None = Field(
        default=None, ge=1, le=100_000, strict=True, description="Take exactly this many ordinary slots"
    )
    leave: int | None = Field(
        default=None, ge=0, le=100_000, strict=True, description="Take every free ordinary slot but this many"
    )

    @model_validator(mode="after")
    def _exactly_one(self) -> ConnectionExhaustionParams:
        if (self.connections is None) == (self.leave is None):
            raise InvalidInput(
                "give exactly one of 'connections' (slots to take) or 'leave' (ordinary slots to leave free)",
                code="connections_or_leave",
            )
        return self


@dataclass(frozen=True)
class Slots:
    """The server's connection slots as seen in ``prepare``."""

    max_connections: int
    superuser_reserved: int
    reserved: int
    in_use: int

    @property
    def ordinary(self) -> int:
        return self.max_connections - self.superuser_reserved - self.reserved

    @property
    def free(self) -> int:
        return max(0, self.ordinary - self.in_use)

    def describe(self) -> str:
        reserved = f"{self.superuser_reserved} superuser-reserved"
        if self.reserved:
            reserved += f" + {self.reserved} reserved_connections"
        return (
            f"max_connections {self.max_connections} - {reserved} = {self.ordinary} ordinary slots, "
            f"{self.in_use} in use, {self.free} free"
        )


def _fd_limit() -> int | None:
    try:
        import resource
    except ImportError:  # not a Unix
        return None
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return None if soft == resource.RLIM_INFINITY else int(soft)


class ConnectionExhaustion(Fault[ConnectionExhaustionParams]):
    """Occupy the server's ordinary connection slots with idle sessions (cluster-wide).

    New ordinary clients get SQLSTATE 53300; the reserved slots are never taken, so
    administrators can still connect.
    """

    kind = "connection-exhaustion"
    summary = "Occupy the cluster's ordinary connection slots with idle sessions (never the reserved ones)."
    params_model = ConnectionExhaustionParams
    connect_early = False  # prepare() counts the slots in use: no session of ours may be opening then

    def __init__(self, params: ConnectionExhaustionParams) -> None:
        super().__init__(params)
        self.slots: Slots | None = None
        self.take = 0
        self.held = 0
        self.free_after: int | None = None
        #: ordinary slots the target's policy keeps free at least (set by the engine)
        self.reserve = 0

    @property
    def leave(self) -> int:
        """Ordinary slots left free: the request's ``leave``, never below the reserve."""
        return max(self.params.leave or 0, self.reserve)

    async def prepare(self, conn: psycopg.AsyncConnection[Any]) -> None:
        row = await (await conn.execute(_SLOTS_SQL)).fetchone()
        assert row is not None
        slots = Slots(int(row[0]), int(row[1]), int(row[2]), int(row[3]))
        self.slots = slots
        if self.params.connections is not None:
            if self.params.connections > slots.free - self.reserve:
                keep = f" and this target's connection_reserve of {self.reserve}" if self.reserve else ""
                raise Conflict(
                    f"cannot take {self.params.connections} connections{keep}: {slots.describe()}",
                    code="not_enough_connection_slots",
                    extra={"free": slots.free},
                )
            self.take = self.params.connections
        else:
            leave = self.leave
            self.take = slots.free - leave
            if self.take < 1:
                raise Conflict(
                    f"nothing to take when leaving {leave} free: {slots.describe()}",
                    code="not_enough_connection_slots",
                    extra={"free": slots.free},
                )
        limit = _fd_limit()
        if limit is not None and self.take > limit - FD_MARGIN:
            raise Conflict(
                f"{self.take} connections need more file descriptors than this dbchaos process may open "
                f"(ulimit -n is {limit}); raise it or take fewer",
                code="file_descriptor_limit",
            )

    async def _open(self, sessions: SessionFactory) -> None:
        for start in range(0, self.take, BATCH_SIZE):
            n = min(BATCH_SIZE, self.take - start)
            # return_exceptions: every open finishes (and is recorded) before we raise, so the
            # engine's release_all sees all of them.
            results = await asyncio.gather(*(sessions.open() for _ in range(n)), return_exceptions=True)
            for r in results:
                if isinstance(r, DbChaosError):
                    raise type(r)(
                        f"opened {len(sessions.sessions)} of {self.take} sessions, then: {r.message}",
                        code=r.code,
                    ) from r
                if isinstance(r, BaseException):
                    raise r

    async def inject(self, sessions: SessionFactory) -> None:
        assert self.slots is not None, "prepare() first"
        await self._open(sessions)
        # Others may have connected since prepare(): never sit in a reserved slot.
        row = await (await sessions.sessions[-1].execute(_IN_USE_SQL)).fetchone()
        in_use = int(row[0]) if row else 0
        excess = in_use - (self.slots.ordinary - self.leave)
        if excess > 0:
            if self.params.connections is not None or excess >= len(sessions.sessions):
                raise Conflict(
                    f"other clients took connection slots while dbchaos opened its {self.take}: {in_use} client "
                    f"backends now use the {self.slots.ordinary} ordinary slots; dbchaos does not take reserved ones",
                    code="not_enough_connection_slots",
                )
            dropped: list[FaultSession] = [sessions.sessions.pop() for _ in range(excess)]
            for s in dropped:
                await s.release()
            in_use -= excess
        self.held = len(sessions.sessions)
        self.free_after = max(0, self.slots.ordinary - in_use)
        # The idle_session_timeout clock started when each session connected; restart it
        # now so the first sessions of a long opening do not expire before the deadline.
        await asyncio.gather(*(s.execute("SELECT 1") for s in sessions.sessions))

    async def plan(self, conn: psycopg.AsyncConnection[Any], bounds: Bounds) -> FaultPlan:
        assert self.slots is not None, "prepare() first"
        plan = FaultPlan()
        plan.connect(sessions=self.take)
        plan.add(conn, _IN_USE_SQL, session="last opened", note="others may have connected meanwhile: count again")
        plan.add(conn, "SELECT 1", sessions=self.take, note="restarts each session's idle_session_timeout clock")
        plan.lock(
            PlannedLock(
                "connection_slots",
                "ordinary slots",
                count=self.take,
                note="max_connections is per cluster: every database on this server loses these slots",
            )
        )
        plan.details = {
            "max_connections": self.slots.max_connections,
            "superuser_reserved_connections": self.slots.superuser_reserved,
            "reserved_connections": self.slots.reserved,
            "ordinary_slots": self.slots.ordinary,
            "in_use_now": self.slots.in_use,
            "free_now": self.slots.free,
            "would_take": self.take,
            "free_ordinary_after": self.slots.free - self.take,
            "connection_reserve": self.reserve,
        }
        plan.notes.append(
            f"while it holds, new clients of roles without reserved slots get SQLSTATE 53300 (too many connections) "
            f"once the {self.slots.free - self.take} ordinary slot(s) left are taken; the reserved slots stay free. "
            "in_use_now counts this dry run's own session. Revert closes every session"
        )
        return plan

    def details(self) -> dict[str, Any]:
        s = self.slots
        return {
            "connections": self.held,
            "requested": self.take,
            "max_connections": s.max_connections if s else None,
            "superuser_reserved_connections": s.superuser_reserved if s else None,
            "reserved_connections": s.reserved if s else None,
            "ordinary_slots": s.ordinary if s else None,
            "in_use_before": s.in_use if s else None,
            "free_ordinary_after": self.free_after,
            "connection_reserve": self.reserve,
        }

    def describe_params(self) -> dict[str, Any]:
        if self.params.connections is not None:
            return {"connections": self.params.connections}
        return {"leave": self.params.leave}
