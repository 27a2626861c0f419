"""Reused sessions for journaled faults.

A migration fault runs two short transactions against its target (the journaled inject and,
later, the verified revert) and holds no session in between. Each used to open a backend of
its own, whose first catalog look-ups (the schema fingerprint, the journal queries) are slow:
empty caches, every plan made afresh. The sessions here are given back after each such
transaction and reused by the next one, so their caches are warm and psycopg prepares the
statements they keep running.

Taken, a session is bound to its fault exactly as a warm spare is (``application_name`` and
every server-side bound, in one statement: see
:meth:`dbchaos.engine.session.SessionFactory.transient`). Given back, it
runs ``RESET ALL`` (in the background, off the request's path), which restores the name and
limits it was started with: ``dbchaos:<instance>:journal`` and ``idle_session_timeout``, so
PostgreSQL ends it should dbchaos freeze, and its idle timers are armed again after a
pipeline (see :meth:`dbchaos.engine.session.FaultSession.pipeline`). A session that is not
idle and clean when given back (broken, or left inside a transaction) is closed instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from typing import Any

import psycopg

from dbchaos.audit import AuditedConnection, AuditLog
from dbchaos.engine.spares import idle_session_kwargs
from dbchaos.errors import TargetUnreachable
from dbchaos.targets import Target

#: idle sessions kept per target (more are opened when several faults inject at once)
KEEP = 4
#: PostgreSQL closes an idle pooled session after this long (dbchaos frozen or gone)
IDLE_SESSION_TIMEOUT_MS = 60_000
#: a session idle for longer than this is closed rather than reused (it nears that timeout)
MAX_IDLE_S = 30.0
#: what the pool's sessions are called between faults (after ``dbchaos:<instance>:``)
ROLE = "journal"

Conn = psycopg.AsyncConnection[Any]


class ReusePool:
    """Idle sessions to one target for journaled faults' short transactions."""

    def __init__(
        self,
        target: Target,
        instance: str,
        *,
        connect_timeout_s: float = 3.0,
        keep: int = KEEP,
        idle_session_timeout_ms: int = IDLE_SESSION_TIMEOUT_MS,
        audit: AuditLog | None = None,
    ) -> None:
        self.target = target
        self.instance = instance
        self.connect_timeout_s = connect_timeout_s
        self.keep = keep
        self.idle_session_timeout_ms = idle_session_timeout_ms
        self.audit = audit
        self._idle: list[tuple[float, Conn]] = []
        self._tasks: set[asyncio.Future[None]] = set()
        self._resets: set[asyncio.Future[None]] = set()
        self._closed = False

    @property
    def idle(self) -> int:
        return len(self._idle)

    async def take(self, bind: Callable[[Conn], Awaitable[Any]]) -> Conn:
        """An idle session (the most recently used) or a new one, after ``bind`` ran on it.

        An idle session may have been ended meanwhile without psycopg knowing (the target
        restarted, someone terminated it): if ``bind`` meets a closed connection there, that
        session is dropped and the next one tried. ``TargetUnreachable`` if none can be opened.
        """
        while self._idle or self._resets:
            if not self._idle:  # a session given back a moment ago is nearly ready: faster than a new one
                await asyncio.wait(set(self._resets), return_when=asyncio.FIRST_COMPLETED)
                continue
            used, conn = self._idle.pop()
            if time.monotonic() - used >= MAX_IDLE_S or conn.closed or conn.broken:
                self._background(_close(conn))
                continue
            try:
                await bind(conn)
            except psycopg.OperationalError:
                self._background(_close(conn))
                continue
            return conn
        conn = await self._connect()
        try:
            await bind(conn)
        except BaseException:
            await _close(conn)
            raise
        return conn

    def give_back(self, conn: Conn) -> None:
        """Return a session after its transaction: reset and kept, or closed (see the module
        docstring). Never waits: the reset runs in the background."""
        idle = psycopg.pq.TransactionStatus.IDLE
        clean = not conn.closed and not conn.broken and conn.info.transaction_status == idle
        if not clean or self._closed:
            self._background(_close(conn))
            return
        task = self._background(self._reset(conn))
        self._resets.add(task)
        task.add_done_callback(self._resets.discard)

    async def _reset(self, conn: Conn) -> None:
        try:
            await conn.execute("RESET ALL")  # still audited under the fault that used it: its name is set until now
        except psycopg.Error:
            await _close(conn)
            return
        if self.audit is not None:
            conn.cursor_factory = self.audit.cursor_factory(ROLE, self.target.name)
        if self._closed or len(self._idle) >= self.keep:
            await _close(conn)
            return
        self._idle.append((time.monotonic(), conn))

    async def _connect(self) -> Conn:
        kwargs = idle_session_kwargs(
            self.target, self.instance, ROLE, self.idle_session_timeout_ms, self.connect_timeout_s, self.audit
        )
        try:
            return await AuditedConnection.connect(self.target.dsn, **kwargs)
        except psycopg.OperationalError as exc:
            raise TargetUnreachable(self.target.unreachable_message(exc)) from exc

    def _background(self, aw: Any) -> asyncio.Future[None]:
        task: asyncio.Future[None] = asyncio.ensure_future(aw)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def close(self) -> None:
        """Close every idle session (and any being reset)."""
        self._closed = True
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for _, conn in self._idle:
            await _close(conn)
        self._idle.clear()


async def _close(conn: Conn) -> None:
    with contextlib.suppress(Exception):
        await conn.close()
