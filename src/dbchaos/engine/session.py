"""Fault sessions: connections a fault holds, each bounded on the server side.

Every session is tagged ``application_name = 'dbchaos:<fault-id>'`` and carries, from
its first packet (startup ``options``), the limits that make PostgreSQL end it by itself
if dbchaos is killed, frozen or cut off (DESIGN §2, "Crash safety"):

* ``lock_timeout`` — acquisition never waits longer than the fault's acquire timeout;
* ``idle_in_transaction_session_timeout`` and ``idle_session_timeout`` — the fault's
  duration plus a grace period, counted by PostgreSQL from the moment the acquiring
  statement finished (the session is idle from then on);
* ``statement_timeout`` — acquisition plus duration plus grace;
* ``transaction_timeout`` on PostgreSQL >= 17;
* ``client_connection_check_interval`` — a backend still *waiting* for a lock notices its
  client died;
* TCP keepalives where the connection is TCP.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
from collections.abc import AsyncIterator, Awaitable
from dataclasses import dataclass, field, replace
from typing import Any, TypeVar

import psycopg
from psycopg import sql

from dbchaos.audit import AuditedConnection, AuditLog
from dbchaos.engine.reuse import ReusePool
from dbchaos.engine.spares import SparePool
from dbchaos.errors import TargetUnreachable
from dbchaos.targets import Target, parse_dsn

T = TypeVar("T")

CONNECTION_CHECK_INTERVAL_MS = 500
#: how long a revert waits for a fault session to answer (its ROLLBACK, an unlock) before it
#: gives the session up as lost: only a cut network or a frozen backend takes this long
RELEASE_TIMEOUT_S = 5.0


def _ms(seconds: float) -> int:
    return max(1, math.ceil(seconds * 1000))


@dataclass(frozen=True)
class Bounds:
    """How long a fault may wait and hold, in seconds."""

    acquire_timeout_s: float
    duration_s: float
    grace_s: float

    @property
    def lock_timeout_ms(self) -> int:
        # 0 means "do not wait": PostgreSQL's lock_timeout=0 would mean "wait forever".
        return _ms(self.acquire_timeout_s) if self.acquire_timeout_s > 0 else 1

    def settings(self, server_version_num: int) -> dict[str, int]:
        """The server-side bounds of a fault session (see the module docstring)."""
        upper = _ms(self.acquire_timeout_s + self.duration_s + self.grace_s)
        idle = _ms(self.duration_s + self.grace_s)
        opts = {
            "lock_timeout": self.lock_timeout_ms,
            "statement_timeout": upper,
            "idle_in_transaction_session_timeout": idle,
            "idle_session_timeout": idle,
            "client_connection_check_interval": CONNECTION_CHECK_INTERVAL_MS,
        }
        if server_version_num >= 170000:
            opts["transaction_timeout"] = upper
        return opts

    def moved(self, remaining_s: float, server_version_num: int) -> sql.Composed:
        """The statement that re-arms a live session's timers for ``remaining_s`` more
        seconds (plus grace), when a fault's deadline moves (``PATCH /v1/faults/{id}``).

        The idle timers restart when the session goes idle after this statement, so they
        count from now. ``transaction_timeout`` (PostgreSQL >= 17) does not: changing it from
        one positive value to another inside a transaction leaves the running timer as it
        was; only a change from 0 to positive starts a new one (checked on 18). So it is set
        to 0, then to the new value, in the same statement.
        """
        left = _ms(remaining_s + self.grace_s)
        values: list[tuple[str, int]] = [
            ("idle_in_transaction_session_timeout", left),
            ("idle_session_timeout", left),
            ("statement_timeout", left),
        ]
        if server_version_num >= 170000:
            values += [("transaction_timeout", 0), ("transaction_timeout", left)]
        return sql.SQL("SELECT {}").format(
            sql.SQL(", ").join(
                sql.SQL("set_config({}, {}, false)").format(sql.Literal(k), sql.Literal(str(v))) for k, v in values
            )
        )

    def startup_options(self, server_version_num: int) -> str:
        """``-c`` options sent with the startup packet.

        The idle timers start when the session goes idle, i.e. right after the statement
        that acquired the fault: so ``duration + grace`` ends it ``grace`` past the deadline.
        """
        opts = self.settings(server_version_num)
        return " ".join(f"-c {k}={v}" for k, v in opts.items())


@dataclass
class FaultSession:
    """One connection held by a fault."""

    conn: psycopg.AsyncConnection[Any]
    pid: int
    alive: bool = True

    async def execute(
        self, query: sql.Composable | str, params: Any = None, *, timeout_s: float | None = None
    ) -> psycopg.AsyncCursor[Any]:
        """Run one statement. With ``timeout_s`` (reverts: :data:`RELEASE_TIMEOUT_S`), a session
        that does not answer in time is closed and given up (``OperationalError``)."""
        if timeout_s is None:
            return await self.conn.execute(query, params)  # type: ignore[arg-type]
        try:
            return await within(timeout_s, self.conn.execute(query, params))  # type: ignore[arg-type]
        except TimeoutError:
            self.alive = False
            with contextlib.suppress(Exception):
                await self.conn.close()
            raise psycopg.OperationalError(f"the session did not answer within {timeout_s:g} s") from None

    @contextlib.asynccontextmanager
    async def pipeline(self) -> AsyncIterator[None]:
        """``conn.pipeline()`` for a session that stays idle afterwards: the server-side idle
        timers must still end it.

        psycopg ends a pipeline with Sync, then Flush. PostgreSQL arms
        ``idle_in_transaction_session_timeout`` and ``idle_session_timeout`` when it answers
        the Sync, disarms them when the next message (that Flush) arrives, and does not arm
        them again until another Sync or simple query: a session left idle after a pipeline
        never times out (checked on 15 and 18; on >= 17 ``transaction_timeout`` still ends
        it, at acquire + duration + grace). One more simple statement re-arms them.
        """
        async with self.conn.pipeline():
            yield
        await self.execute("SELECT")

    async def release(self) -> bool:
        """Roll back and close. Returns False if the session had already gone away, or did
        not answer within :data:`RELEASE_TIMEOUT_S` (the network to the target is cut, or the
        backend is frozen: PostgreSQL's own timers end it)."""
        if self.conn.closed:
            return self.alive
        try:
            await within(RELEASE_TIMEOUT_S, self._rollback())
        except (psycopg.OperationalError, TimeoutError):
            self.alive = False
        except psycopg.Error:
            pass
        finally:
            with contextlib.suppress(Exception):
                await self.conn.close()
        return self.alive

    async def _rollback(self) -> None:
        status = self.conn.info.transaction_status
        if status != psycopg.pq.TransactionStatus.IDLE:
            if status == psycopg.pq.TransactionStatus.ACTIVE:
                await self.conn.cancel_safe(timeout=2.0)
            await self.conn.execute("ROLLBACK")


async def within(timeout_s: float, aw: Awaitable[T]) -> T:
    """``aw``'s result, or ``TimeoutError`` once ``timeout_s`` has passed.

    A statement cancelled on the client makes psycopg send PostgreSQL a cancel request and
    wait for the statement to end (up to 5 + 5 s), over the same silent network; cancelled a
    second time meanwhile, psycopg closes the connection at once (``AsyncConnection.wait``).
    So a statement that does not answer in time is cancelled twice.
    """
    task = asyncio.ensure_future(aw)
    try:
        done, _ = await asyncio.wait({task}, timeout=timeout_s)
        if task in done:
            return task.result()
        task.cancel()
        done, _ = await asyncio.wait({task}, timeout=0.1)
        if not done:
            task.cancel()
            await asyncio.wait({task}, timeout=11.0)
        raise TimeoutError(f"no answer within {timeout_s:g} s")
    finally:
        if not task.done():
            task.cancel()
        elif not task.cancelled():
            task.exception()  # retrieved: never "exception was never retrieved"


@dataclass
class SessionFactory:
    """Opens bounded sessions for one fault and remembers them so the engine can release them."""

    target: Target
    fault_id: str
    bounds: Bounds
    server_version_num: int
    connect_timeout_s: float = 3.0
    sessions: list[FaultSession] = field(default_factory=list)
    #: warm sessions to take the first one from (see :mod:`dbchaos.engine.spares`)
    spares: SparePool | None = None
    #: records every statement of this fault's sessions (see :mod:`dbchaos.audit`)
    audit: AuditLog | None = None
    #: reused sessions for short journaled transactions (see :meth:`transient`)
    reuse: ReusePool | None = None
    _early: asyncio.Task[FaultSession | None] | None = field(default=None, repr=False)

    @property
    def application_name(self) -> str:
        return f"dbchaos:{self.fault_id}"

    @property
    def pids(self) -> list[int]:
        return [s.pid for s in self.sessions]

    def connect_early(self) -> None:
        """Have the first session ready by the time inject asks for it: a warm spare bound
        to this fault, or a connection opened now (while the engine still checks the
        request). Failures surface in :meth:`open`."""
        if self._early is None:
            self._early = asyncio.create_task(self._try_spare_or_connect())

    async def _try_spare_or_connect(self) -> FaultSession | None:
        conn = self.spares.take() if self.spares is not None else None
        if conn is not None:
            if self.audit is not None:
                conn.cursor_factory = self.audit.cursor_factory(self.fault_id, self.target.name)
            try:
                await self._bind(conn)
                return FaultSession(conn, conn.info.backend_pid)
            except psycopg.Error:
                with contextlib.suppress(Exception):
                    await conn.close()
        return await self._try_connect()

    async def _bind(self, conn: psycopg.AsyncConnection[Any]) -> None:
        """Make a spare this fault's session: its name and every bound, in one round trip."""
        values = {"application_name": self.application_name} | {
            k: str(v) for k, v in self.bounds.settings(self.server_version_num).items()
        }
        query = sql.SQL("SELECT {}").format(
            sql.SQL(", ").join(
                sql.SQL("set_config({}, {}, false)").format(sql.Literal(k), sql.Literal(v)) for k, v in values.items()
            )
        )
        await conn.execute(query)

    async def _try_connect(self) -> FaultSession | None:
        try:
            return await self._connect()
        except (TargetUnreachable, psycopg.Error):
            return None

    async def open(self) -> FaultSession:
        """A new bounded session (the early one, if it is ready or on its way)."""
        session: FaultSession | None = None
        if self._early is not None:
            early, self._early = self._early, None
            session = await early
        if session is None:
            session = await self._try_spare_or_connect()
        if session is None:
            session = await self._connect()  # raises the reason
        self.sessions.append(session)
        return session

    @contextlib.asynccontextmanager
    async def transient(self) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
        """A session for one short transaction after which the fault holds nothing (a
        journaled inject or revert): a reused one bound to this fault when there is a
        :attr:`reuse` pool (see :mod:`dbchaos.engine.reuse`), else a new one, closed after.
        Listed in :attr:`sessions` (and :attr:`pids`) while in use."""
        if self.reuse is None:
            own = await self.open()
            try:
                yield own.conn
            finally:
                await self.discard(own)
            return
        conn = await self.reuse.take(self._bind_reused)
        session = FaultSession(conn, conn.info.backend_pid)
        self.sessions.append(session)
        try:
            yield conn
        finally:
            if session in self.sessions:
                self.sessions.remove(session)
            if conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
                await session.release()  # interrupted mid-statement or mid-transaction: never reused
            self.reuse.give_back(conn)

    async def _bind_reused(self, conn: psycopg.AsyncConnection[Any]) -> None:
        if self.audit is not None:
            conn.cursor_factory = self.audit.cursor_factory(self.fault_id, self.target.name)
        await self._bind(conn)

    async def _connect(self) -> FaultSession:
        kwargs = self.target.connect_kwargs(self.application_name, connect_timeout_s=self.connect_timeout_s)
        options = self.bounds.startup_options(self.server_version_num)
        existing = parse_dsn(self.target.dsn).get("options")
        kwargs["options"] = f"{existing} {options}" if existing else options
        if self.audit is not None:
            kwargs["cursor_factory"] = self.audit.cursor_factory(self.fault_id, self.target.name)
        try:
            conn = await AuditedConnection.connect(self.target.dsn, **kwargs)
        except psycopg.OperationalError as exc:
            raise TargetUnreachable(self.target.unreachable_message(exc)) from exc
        return FaultSession(conn, conn.info.backend_pid)

    @property
    def busy(self) -> list[FaultSession]:
        """Sessions with a statement in flight (a queued LOCK): their timeouts were fixed when
        the statement was sent, a deadline move cannot raise them."""
        active = psycopg.pq.TransactionStatus.ACTIVE
        return [s for s in self.sessions if not s.conn.closed and s.conn.info.transaction_status == active]

    async def move_bounds(self, remaining_s: float, duration_s: float) -> dict[int, str]:
        """Re-arm the server-side timers of every idle session for ``remaining_s`` more
        seconds (see :meth:`Bounds.moved`); sessions in :attr:`busy` keep theirs. Returns
        the sessions that could not be changed (pid -> why)."""
        self.bounds = replace(self.bounds, duration_s=duration_s)
        query = self.bounds.moved(remaining_s, self.server_version_num)
        busy = {id(s) for s in self.busy}
        todo = [s for s in self.sessions if id(s) not in busy and not s.conn.closed]

        async def move(s: FaultSession) -> tuple[int, str | None]:
            try:
                await s.execute(query)
            except psycopg.Error as exc:
                return s.pid, f"{type(exc).__name__}: {exc}"
            return s.pid, None

        results = await asyncio.gather(*(move(s) for s in todo))
        return {pid: why for pid, why in results if why is not None}

    async def discard(self, session: FaultSession) -> None:
        """Close ``session`` and forget it (a fault that holds nothing while active)."""
        await session.release()
        self.sessions.remove(session)

    async def release_all(self) -> bool:
        """Release every session (and an early one never used); True if all of them were
        still alive until now."""
        if self._early is not None:
            early, self._early = self._early, None
            spare = await early
            if spare is not None:
                await spare.release()
        results = [await s.release() for s in self.sessions]
        return all(results)
