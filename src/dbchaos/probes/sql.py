"""``SqlProbe``: one statement run against the database the way an application runs it.

The probe keeps a small pool of its own connections (at most ``concurrency`` in use, opened
when first needed, tagged ``application_name = 'dbchaos-probe:<name>'`` unless configured),
and runs the statement in autocommit mode: one statement, one implicit transaction. Its
timeouts are the ones an application would set:

* ``connect_timeout_s`` — how long to wait for a connection (a full server answers 53300);
* ``statement_timeout_s`` / ``lock_timeout_s`` — sent as startup options, so PostgreSQL
  cancels the statement itself (SQLSTATE 57014 / 55P03); both count as ``timed_out``;
* ``timeout_s`` — the client gives up waiting (``ClientTimeout``). Like most applications it
  does **not** cancel the statement: it abandons the connection, the statement goes on and
  may still commit when the lock it waits for is released (the connection is closed once it
  finishes, or when the probe closes). That is the "timed out but committed later" case.

``%(request_id)s`` in the statement is replaced (as a bound parameter) by the request id,
so a write can record which request made it. With that parameter, write a literal ``%`` as
``%%`` (psycopg's rule for statements with parameters).
"""

from __future__ import annotations

import asyncio
import contextlib
import math
from dataclasses import dataclass, field
from typing import Any

import psycopg

from dbchaos.errors import InvalidInput, TargetUnreachable
from dbchaos.probes.base import Outcome, Probe, check_rate, short_error
from dbchaos.targets import describe_dsn, parse_dsn, scrub

REQUEST_ID_PARAM = "%(request_id)s"
#: SQLSTATEs that mean "the statement ran out of time": statement_timeout (or a cancel),
#: lock_timeout, idle_in_transaction_session_timeout, transaction_timeout (PostgreSQL 17+)
TIMEOUT_SQLSTATES = frozenset({"57014", "55P03", "25P03", "25P04"})


@dataclass(frozen=True)
class SqlProbeConfig:
    name: str
    dsn: str = field(repr=False)
    statement: str
    rate_hz: float = 1.0
    concurrency: int = 5
    connect_timeout_s: float = 5.0
    statement_timeout_s: float | None = None
    lock_timeout_s: float | None = None
    timeout_s: float | None = None
    application_name: str | None = None

    def __post_init__(self) -> None:
        where = f"probe {self.name!r}"
        check_rate(self.rate_hz, self.concurrency, where)
        if not self.statement.strip():
            raise InvalidInput(f"{where}: statement is empty", field="statement")
        try:
            parse_dsn(self.dsn)
        except InvalidInput:
            raise InvalidInput(f"{where}: dsn does not parse as a PostgreSQL connection string", field="dsn") from None
        for key in ("connect_timeout_s", "statement_timeout_s", "lock_timeout_s", "timeout_s"):
            value = getattr(self, key)
            if value is not None and not (math.isfinite(value) and value > 0):
                raise InvalidInput(f"{where}: {key.removesuffix('_s')} must be positive", field=key.removesuffix("_s"))

    def options(self) -> str | None:
        """The startup ``options``: the DSN's own, plus the statement and lock timeouts."""
        parts = [parse_dsn(self.dsn).get("options", "")]
        if self.statement_timeout_s is not None:
            parts.append(f"-c statement_timeout={max(1, math.ceil(self.statement_timeout_s * 1000))}")
        if self.lock_timeout_s is not None:
            parts.append(f"-c lock_timeout={max(1, math.ceil(self.lock_timeout_s * 1000))}")
        text = " ".join(p for p in parts if p)
        return text or None


class SqlProbe(Probe):
    kind = "sql"

    def __init__(self, config: SqlProbeConfig) -> None:
        super().__init__(config.name, config.rate_hz, config.concurrency)
        self.config = config
        self._idle: list[psycopg.AsyncConnection[Any]] = []
        self._abandoned: set[asyncio.Task[None]] = set()
        self._params = {"request_id": ""} if REQUEST_ID_PARAM in config.statement else None

    @property
    def application_name(self) -> str:
        return (self.config.application_name or f"dbchaos-probe:{self.name}")[:63]

    async def _connect(self) -> psycopg.AsyncConnection[Any]:
        c = self.config
        kwargs: dict[str, Any] = {
            "autocommit": True,
            "application_name": self.application_name,
            "connect_timeout": max(2, math.ceil(c.connect_timeout_s)),
        }
        options = c.options()
        if options:
            kwargs["options"] = options
        # psycopg (like libpq) waits at least 2 s: our own bound keeps sub-second timeouts exact
        return await asyncio.wait_for(psycopg.AsyncConnection.connect(c.dsn, **kwargs), c.connect_timeout_s)

    async def open(self) -> None:
        """Open the first connection now: an unreachable database fails here, not per request."""
        if self._idle:
            return
        try:
            self._idle.append(await self._connect())
        except (psycopg.Error, TimeoutError) as exc:
            raise TargetUnreachable(
                f"probe {self.name!r} cannot connect to {describe_dsn(self.config.dsn)}: "
                f"{scrub(short_error(exc), self.config.dsn)}"
            ) from exc

    async def close(self) -> None:
        idle, self._idle = self._idle, []
        for conn in idle:
            with contextlib.suppress(Exception):
                await conn.close()
        abandoned, self._abandoned = set(self._abandoned), set()
        for t in abandoned:
            t.cancel()
        if abandoned:
            await asyncio.gather(*abandoned, return_exceptions=True)

    async def _execute(self, conn: psycopg.AsyncConnection[Any], request_id: str) -> None:
        params = {"request_id": request_id} if self._params is not None else None
        cur = await conn.execute(self.config.statement, params)
        if cur.description is not None:
            await cur.fetchall()

    async def attempt(self, request_id: str) -> Outcome:
        c = self.config
        try:
            conn = self._idle.pop() if self._idle else await self._connect()
        except TimeoutError:
            return Outcome(
                False,
                error_class="ConnectTimeout",
                error=f"no connection within {c.connect_timeout_s:g} s",
                timed_out=True,
            )
        except psycopg.Error as exc:
            return self._failed(exc)
        work = asyncio.ensure_future(self._execute(conn, request_id))
        try:
            if c.timeout_s is None:
                await work
            else:
                await asyncio.wait_for(asyncio.shield(work), c.timeout_s)
        except TimeoutError:
            self._abandon(conn, work)
            return Outcome(
                False,
                error_class="ClientTimeout",
                error=f"no answer within {c.timeout_s:g} s; the statement was left running",
                timed_out=True,
            )
        except asyncio.CancelledError:
            work.cancel()
            with contextlib.suppress(BaseException):
                await work
            await self._discard(conn)
            raise
        except psycopg.Error as exc:
            await self._release(conn)
            return self._failed(exc)
        await self._release(conn)
        return Outcome(True)

    def _failed(self, exc: psycopg.Error) -> Outcome:
        state = exc.sqlstate
        timed_out = state in TIMEOUT_SQLSTATES or isinstance(exc, psycopg.errors.ConnectionTimeout)
        return Outcome(
            False,
            sqlstate=state,
            error_class=type(exc).__name__,
            error=scrub(short_error(exc), self.config.dsn),
            timed_out=timed_out,
        )

    def _abandon(self, conn: psycopg.AsyncConnection[Any], work: asyncio.Future[None]) -> None:
        """Leave the statement running on its connection; close the connection once it ends."""

        async def finish() -> None:
            try:
                with contextlib.suppress(psycopg.Error):
                    await work
            finally:
                await self._discard(conn)

        task = asyncio.ensure_future(finish())
        self._abandoned.add(task)
        task.add_done_callback(self._abandoned.discard)

    async def _release(self, conn: psycopg.AsyncConnection[Any]) -> None:
        if conn.closed or conn.broken or conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
            await self._discard(conn)
        else:
            self._idle.append(conn)

    async def _discard(self, conn: psycopg.AsyncConnection[Any]) -> None:
        with contextlib.suppress(Exception):
            await conn.close()

    @property
    def abandoned(self) -> int:
        """Statements left running after a client timeout that have not finished yet."""
        return len(self._abandoned)

    def describe(self) -> dict[str, Any]:
        c = self.config
        return super().describe() | {
            "database": describe_dsn(c.dsn),
            "statement": c.statement,
            "connect_timeout_s": c.connect_timeout_s,
            "statement_timeout_s": c.statement_timeout_s,
            "lock_timeout_s": c.lock_timeout_s,
            "timeout_s": c.timeout_s,
            "application_name": self.application_name,
        }
