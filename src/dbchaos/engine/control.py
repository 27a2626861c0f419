"""The control session: one connection per target for catalog look-ups, checks and
observation, re-opened when the target comes back."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, TypeVar

import psycopg
from psycopg import sql

from dbchaos.audit import AuditLog
from dbchaos.errors import TargetUnreachable
from dbchaos.faults.migration.journal import OWNER_LOCK_CLASS
from dbchaos.observe.activity import Snapshot, take_snapshot
from dbchaos.targets import CHECK_SQL, Target, TargetCheck, behind_proxy, check_from_row, probe_pooler, with_pooler

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
        #: the CHECK_SQL row read when the connection opened, until a check uses it
        self._fresh_row: Any = None
        #: the pool mode found on a connection that goes through a proxy (probed once per connection)
        self._pooler: tuple[psycopg.AsyncConnection[Any], tuple[str, str]] | None = None

    async def _connection(self) -> psycopg.AsyncConnection[Any]:
        if self._conn is None or self._conn.closed or self._conn.broken:
            factory = self.audit.cursor_factory("control", self.target.name) if self.audit is not None else None
            conn = await self.target.connect(
                f"dbchaos:{self.instance}", connect_timeout_s=self.connect_timeout_s, cursor_factory=factory
            )
            try:
                # the target check first: through a pooling proxy a session setting or advisory lock
                # would stay behind on a server connection other clients use, so none is made there
                row = await (await conn.execute(CHECK_SQL)).fetchone()
                if row is not None and not behind_proxy(conn, row):
                    setup: list[sql.Composable] = [
                        sql.SQL("SET statement_timeout = '10s'; SET lock_timeout = '2s'; SET idle_session_timeout = 0")
                    ]
                    if self.owner_key is not None:
                        # this instance's ownership of its journal entries on the target (DESIGN §2)
                        setup.append(
                            sql.SQL("SELECT pg_try_advisory_lock({}, {})").format(
                                sql.Literal(OWNER_LOCK_CLASS), sql.Literal(self.owner_key)
                            )
                        )
                    await conn.execute(sql.SQL("; ").join(setup))  # one round trip
            except BaseException:
                with contextlib.suppress(Exception):
                    await conn.close()
                raise
            self._conn, self._fresh_row = conn, row
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
        """Version, recovery, read-only and pooling-proxy checks on the live control connection
        (a result up to ``max_age_s`` old is reused while the connection stays the same)."""
        conn = self._conn
        fresh = self._check is not None and time.monotonic() - self._check_at <= max_age_s
        if fresh and conn is not None and not conn.closed and not conn.broken:
            assert self._check is not None
            return self._check

        async def q(conn: psycopg.AsyncConnection[Any]) -> TargetCheck:
            row, self._fresh_row = self._fresh_row, None  # the connection's first statement was the check
            if row is None:
                row = await (await conn.execute(CHECK_SQL)).fetchone()
            check = check_from_row(self.target, row)
            if not behind_proxy(conn, row):
                return check
            if self._pooler is None or self._pooler[0] is not conn:
                self._pooler = (conn, await self._probe(conn))
            return with_pooler(check, self._pooler[1])

        self._check = await self.run(q)
        self._check_at = time.monotonic()
        assert self._check.server_version_num is not None
        self.server_version_num = self._check.server_version_num
        return self._check

    async def _probe(self, conn: psycopg.AsyncConnection[Any]) -> tuple[str, str]:
        """The pool mode of the proxy in front of the target (see :func:`dbchaos.targets.probe_pooler`)."""
        try:
            async with asyncio.timeout(2 * self.connect_timeout_s + 4):
                return await probe_pooler(
                    self.target,
                    conn,
                    application_name=f"dbchaos:{self.instance}:probe",
                    connect_timeout_s=self.connect_timeout_s,
                )
        except (TimeoutError, psycopg.Error):
            with contextlib.suppress(Exception):
                await conn.close()  # it may be mid-statement: open a clean one next time
            return "unknown", "the probe did not finish"

    @property
    def last_check(self) -> TargetCheck | None:
        """The latest check, however old (e.g. its ``max_connections`` for the halt rules)."""
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
