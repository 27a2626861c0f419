"""The control session: one connection per target for catalog look-ups, checks and
observation, re-opened when the target comes back."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, TypeVar

import psycopg

from dbchaos.audit import AuditLog
from dbchaos.errors import TargetUnreachable
from dbchaos.faults.migration.journal import OWNER_LOCK_CLASS
from dbchaos.observe.activity import Snapshot, take_snapshot
from dbchaos.targets import CHECK_SQL, Target, TargetCheck, check_from_row

T = TypeVar("T")


class ControlChannel:
    """A lazily opened, self-healing connection to one target."""

    def __init__(
        self,
        target: Target,
        instance: str,
        *,
        connect_timeout_s: float,
        snapshot_ttl_s: float = 0.25,
        owner_key: int | None = None,
        audit: AuditLog | None = None,
    ):
        self.target = target
        self.audit = audit
        self.instance = instance
        self.owner_key = owner_key
        self.connect_timeout_s = connect_timeout_s
        self.snapshot_ttl_s = snapshot_ttl_s
        self._conn: psycopg.AsyncConnection[Any] | None = None
        self._lock = asyncio.Lock()
        self._snapshot: Snapshot | None = None
        self._snapshot_pids: frozenset[int] = frozenset()
        self._snapshot_lock = asyncio.Lock()
        self.server_version_num = 0
        self._check: TargetCheck | None = None
        self._check_at = 0.0

    async def _connection(self) -> psycopg.AsyncConnection[Any]:
        if self._conn is None or self._conn.closed or self._conn.broken:
            factory = self.audit.cursor_factory("control", self.target.name) if self.audit is not None else None
            self._conn = await self.target.connect(
                f"dbchaos:{self.instance}", connect_timeout_s=self.connect_timeout_s, cursor_factory=factory
            )
            await self._conn.execute(
                "SET statement_timeout = '10s'; SET lock_timeout = '2s'; SET idle_session_timeout = 0"
            )
            if self.owner_key is not None:
                # this instance's ownership of its journal entries on the target (DESIGN §2)
                await self._conn.execute("SELECT pg_try_advisory_lock(%s, %s)", (OWNER_LOCK_CLASS, self.owner_key))
        return self._conn

    async def run(self, fn: Callable[[psycopg.AsyncConnection[Any]], Awaitable[T]]) -> T:
        """Run ``fn`` on the control connection, reconnecting once if the old one broke."""
        async with self._lock:
            for attempt in (1, 2):
                conn = await self._connection()
                try:
                    return await fn(conn)
                except psycopg.OperationalError as exc:
                    if not conn.broken and not conn.closed:
                        raise
                    self._conn = None
                    if attempt == 2:
                        raise TargetUnreachable(self.target.unreachable_message(exc)) from exc
            raise AssertionError("unreachable")

    async def check(self, *, max_age_s: float = 0.0) -> TargetCheck:
        """Version, recovery and read-only checks on the live control connection (a result
        up to ``max_age_s`` old is reused while the connection stays the same)."""
        conn = self._conn
        fresh = self._check is not None and time.monotonic() - self._check_at <= max_age_s
        if fresh and conn is not None and not conn.closed and not conn.broken:
            assert self._check is not None
            return self._check

        async def q(conn: psycopg.AsyncConnection[Any]) -> Any:
            return await (await conn.execute(CHECK_SQL)).fetchone()

        self._check = check_from_row(self.target, await self.run(q))
        self._check_at = time.monotonic()
        assert self._check.server_version_num is not None
        self.server_version_num = self._check.server_version_num
        return self._check

    async def snapshot(self, lock_pids: Iterable[int], *, max_age_s: float | None = None) -> Snapshot:
        """A snapshot no older than ``max_age_s`` (default: the TTL) that covers ``lock_pids``."""
        pids = frozenset(lock_pids)
        ttl = self.snapshot_ttl_s if max_age_s is None else max_age_s
        async with self._snapshot_lock:
            snap = self._snapshot
            if snap is not None and time.time() - snap.taken_at <= ttl and pids <= self._snapshot_pids:
                return snap
            snap = await self.run(lambda conn: take_snapshot(conn, pids))
            self._snapshot, self._snapshot_pids = snap, pids
            return snap

    async def terminate(self, pids: Iterable[int]) -> None:
        pid_list = list(pids)
        if pid_list:
            await self.run(
                lambda conn: conn.execute("SELECT pg_terminate_backend(p) FROM unnest(%s::int[]) AS p", (pid_list,))
            )

    async def close(self) -> None:
        if self._conn is not None and not self._conn.closed:
            await self._conn.close()
        self._conn = None
