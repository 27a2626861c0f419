"""Warm connections: a fault's first session should not wait for a TCP connect and a
backend fork. A spare is an idle session that holds nothing; taking one binds it to a
fault (application name and every server-side bound) in a single round trip, before the
fault runs any statement. Spares are replaced in the background and never reused."""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

import psycopg

from dbchaos.audit import AuditedConnection, AuditLog
from dbchaos.targets import Target, parse_dsn

#: how many warm sessions to keep per target
SPARES = 2
#: a spare older than this is closed rather than used (it could be near its idle timeout)
MAX_AGE_S = 30.0
#: PostgreSQL closes a spare left behind by a frozen dbchaos after this long
SPARE_IDLE_TIMEOUT_MS = 60_000


# touches the catalogs that name resolution, lock and fingerprint queries read
_WARM_UP = """
SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
LEFT JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum = 1
LEFT JOIN pg_index i ON i.indrelid = c.oid LEFT JOIN pg_constraint k ON k.conrelid = c.oid
LEFT JOIN pg_attrdef d ON d.adrelid = c.oid
WHERE c.oid = to_regclass('pg_catalog.pg_class')
"""


def idle_session_kwargs(
    target: Target, instance: str, role: str, idle_timeout_ms: int, connect_timeout_s: float, audit: AuditLog | None
) -> dict[str, Any]:
    """psycopg connect arguments for a helper session that waits idle between uses:
    ``dbchaos:<instance>:<role>``, closed by PostgreSQL after ``idle_timeout_ms`` of idleness
    (should dbchaos freeze), audited under ``role``."""
    kwargs = target.connect_kwargs(f"dbchaos:{instance}:{role}", connect_timeout_s=connect_timeout_s)
    opts = f"-c idle_session_timeout={idle_timeout_ms}"
    existing = parse_dsn(target.dsn).get("options")
    kwargs["options"] = f"{existing} {opts}" if existing else opts
    if audit is not None:
        kwargs["cursor_factory"] = audit.cursor_factory(role, target.name)
    return kwargs


class SparePool:
    """A few idle sessions to one target, ready to become fault sessions."""

    def __init__(
        self,
        target: Target,
        instance: str,
        *,
        connect_timeout_s: float = 3.0,
        size: int = SPARES,
        audit: AuditLog | None = None,
    ):
        self.target = target
        self.audit = audit
        self.instance = instance
        self.connect_timeout_s = connect_timeout_s
        self.size = size
        self._ready: list[tuple[float, psycopg.AsyncConnection[Any]]] = []
        self._opening: set[asyncio.Task[None]] = set()
        self._closed = False

    def take(self) -> psycopg.AsyncConnection[Any] | None:
        """A warm session, or ``None`` (then the caller connects itself); refills in the background."""
        conn = None
        while self._ready:
            born, candidate = self._ready.pop()
            if time.monotonic() - born < MAX_AGE_S and not candidate.closed and not candidate.broken:
                conn = candidate
                break
            self._close_later(candidate)
        self.refill()
        return conn

    def refill(self) -> None:
        if self._closed:
            return
        while len(self._ready) + len(self._opening) < self.size:
            task = asyncio.create_task(self._open())
            self._opening.add(task)
            task.add_done_callback(self._opening.discard)

    async def _open(self) -> None:
        kwargs = idle_session_kwargs(
            self.target, self.instance, "spare", SPARE_IDLE_TIMEOUT_MS, self.connect_timeout_s, self.audit
        )
        try:
            conn = await AuditedConnection.connect(self.target.dsn, **kwargs)
        except psycopg.Error:
            return  # the target is away: faults connect (and report) by themselves
        try:
            # a new backend's first catalog look-ups are slow (cold caches): pay that now
            await conn.execute(_WARM_UP)
        except psycopg.Error:
            await conn.close()
            return
        if self._closed:
            await conn.close()
            return
        self._ready.append((time.monotonic(), conn))

    def _close_later(self, conn: psycopg.AsyncConnection[Any]) -> None:
        task = asyncio.create_task(conn.close())
        self._opening.add(task)
        task.add_done_callback(self._opening.discard)

    async def close(self) -> None:
        self._closed = True
        for task in list(self._opening):
            task.cancel()
        await asyncio.gather(*self._opening, return_exceptions=True)
        for _, conn in self._ready:
            with contextlib.suppress(Exception):
                await conn.close()
        self._ready.clear()
