"""``advisory-lock``: session advisory locks (``pg_advisory_lock*``) held until the fault ends.

Keys are bigints or ``[int, int]`` pairs, the two key spaces of PostgreSQL's advisory lock
functions. All keys are taken by ONE statement, in request order, on one session; the
session's ``lock_timeout`` bounds every wait, so a conflicting holder fails the fault
(55P03) instead of queueing it. Session-level locks outlive the statement; the session's
``idle_session_timeout`` makes PostgreSQL drop them if dbchaos goes away.

Duplicate keys are rejected (422): a session advisory lock is re-entrant, so a repeated key
would only raise a hold count that nobody can see, and it is most likely a typing mistake.
"""

from __future__ import annotations

from typing import Annotated, Any

import psycopg
from psycopg import sql
from pydantic import BeforeValidator, Field

from dbchaos.engine.model import EndReason
from dbchaos.engine.session import RELEASE_TIMEOUT_S, Bounds, SessionFactory
from dbchaos.errors import InvalidInput
from dbchaos.faults.base import Fault, FaultParams, RevertOutcome
from dbchaos.faults.plan import FaultPlan, PlannedLock

BIGINT_MIN, BIGINT_MAX = -(2**63), 2**63 - 1
INT4_MIN, INT4_MAX = -(2**31), 2**31 - 1
MAX_KEYS = 10_000

Key = int | tuple[int, int]


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _key(item: Any, i: int) -> Key:
    field, where = f"keys.{i}", f"keys item {i}"
    if _is_int(item):
        if not BIGINT_MIN <= item <= BIGINT_MAX:
            raise InvalidInput(f"{where}: {item} is outside the bigint range", code="key_out_of_range", field=field)
        return int(item)
    if isinstance(item, list | tuple):
        if len(item) != 2:
            raise InvalidInput(
                f"{where}: a pair key has exactly two integers, not {len(item)} items", code="invalid_key", field=field
            )
        for j, part in enumerate(item):
            if not _is_int(part):
                raise InvalidInput(
                    f"{where}: pair part {j} must be an integer", code="invalid_key", field=f"{field}.{j}"
                )
            if not INT4_MIN <= part <= INT4_MAX:
                raise InvalidInput(
                    f"{where}: pair part {j} ({part}) is outside the int4 range",
                    code="key_out_of_range",
                    field=f"{field}.{j}",
                )
        return (int(item[0]), int(item[1]))
    raise InvalidInput(
        f"{where}: a key is a bigint or a pair [int, int], not {type(item).__name__}", code="invalid_key", field=field
    )


def _keys(value: Any) -> Any:
    if not isinstance(value, list | tuple):
        raise InvalidInput("keys must be a list of bigints or [int, int] pairs", code="invalid_key", field="keys")
    if not 1 <= len(value) <= MAX_KEYS:
        raise InvalidInput(f"keys must hold 1 to {MAX_KEYS} keys, not {len(value)}", code="invalid_key", field="keys")
    out: list[Key] = []
    seen: set[Key] = set()
    for i, item in enumerate(value):
        k = _key(item, i)
        if k in seen:
            raise InvalidInput(
                f"keys item {i}: the key {_show(k)} is listed twice", code="duplicate_key", field=f"keys.{i}"
            )
        seen.add(k)
        out.append(k)
    return out


def _show(k: Key) -> int | list[int]:
    return list(k) if isinstance(k, tuple) else k


Bigint = Annotated[int, Field(ge=BIGINT_MIN, le=BIGINT_MAX)]
Int4 = Annotated[int, Field(ge=INT4_MIN, le=INT4_MAX)]


class AdvisoryLockParams(FaultParams):
    keys: Annotated[
        list[Bigint | tuple[Int4, Int4]],
        BeforeValidator(_keys),
        Field(
            min_length=1,
            max_length=MAX_KEYS,
            description="Advisory lock keys: bigints and/or [int, int] pairs (no duplicates)",
            examples=[[42, [1, 2]]],
        ),
    ]
    shared: bool = Field(default=False, strict=True, description="Take shared locks (pg_advisory_lock_shared)")


_LOCK_SQL = """
SELECT count(x) FROM (
    SELECT CASE WHEN u.k IS NOT NULL THEN {fn}(u.k) ELSE {fn}(u.a, u.b) END AS x
    FROM unnest(%s::bigint[], %s::int4[], %s::int4[]) AS u(k, a, b)
) AS s
"""

# Size of the shared lock table (every session advisory lock takes one entry in it).
_CAPACITY_SQL = """
SELECT current_setting('max_locks_per_transaction')::bigint * (
    current_setting('max_connections')::int + current_setting('autovacuum_max_workers')::int + 1
    + current_setting('max_worker_processes')::int + current_setting('max_wal_senders')::int
    + current_setting('max_prepared_transactions')::int)
"""


class AdvisoryLock(Fault[AdvisoryLockParams]):
    """Hold session advisory locks (pg_advisory_lock or pg_advisory_lock_shared) on the given keys.

    Keys are bigints or [int, int] pairs. All keys are taken in one statement, bounded by the
    acquire timeout; a conflicting holder makes the fault fail and hold nothing.
    """

    kind = "advisory-lock"
    summary = "Hold session advisory locks (exclusive or shared) on bigint or [int, int] keys."
    params_model = AdvisoryLockParams

    @property
    def keys(self) -> list[Key]:
        return list(self.params.keys)

    async def prepare(self, conn: psycopg.AsyncConnection[Any]) -> None:
        row = await (await conn.execute(_CAPACITY_SQL)).fetchone()
        capacity = int(row[0]) if row else 0
        if capacity and len(self.keys) > capacity // 2:
            raise InvalidInput(
                f"{len(self.keys)} keys would take over half of this server's shared lock table "
                f"(about {capacity} entries: max_locks_per_transaction x backends); other sessions could then "
                "fail with 53200 out of shared memory. Use fewer keys.",
                code="too_many_keys",
                field="params.keys",
            )

    def lock_statement(self) -> tuple[sql.Composed, tuple[list[int | None], ...]]:
        """The one statement that takes every key, and its parameters."""
        fn = sql.Identifier("pg_advisory_lock_shared" if self.params.shared else "pg_advisory_lock")
        big = [k if not isinstance(k, tuple) else None for k in self.keys]
        a = [k[0] if isinstance(k, tuple) else None for k in self.keys]
        b = [k[1] if isinstance(k, tuple) else None for k in self.keys]
        return sql.SQL(_LOCK_SQL).format(fn=fn), (big, a, b)

    async def inject(self, sessions: SessionFactory) -> None:
        stmt, params = self.lock_statement()
        session = await sessions.open()
        await session.execute(stmt, params)

    async def plan(self, conn: psycopg.AsyncConnection[Any], bounds: Bounds) -> FaultPlan:
        plan = FaultPlan()
        plan.connect()
        stmt, params = self.lock_statement()
        plan.add(conn, stmt, params)
        plan.add(conn, "SELECT pg_advisory_unlock_all()", phase="revert")
        mode = "SHARE" if self.params.shared else "EXCLUSIVE"
        for k in self.keys:
            plan.lock(PlannedLock("advisory", mode, key=k, note="session-level: held until unlocked or disconnected"))
        return plan

    async def revert(self, sessions: SessionFactory, reason: EndReason) -> RevertOutcome:
        # Unlock explicitly so the keys are free when revert returns; closing the session
        # (release_all) would free them too, a moment later.
        for s in sessions.sessions:
            if s.alive and not s.conn.closed:
                try:
                    await s.execute("SELECT pg_advisory_unlock_all()", timeout_s=RELEASE_TIMEOUT_S)
                except psycopg.OperationalError:
                    s.alive = False  # PostgreSQL had already ended it (and released the keys)
                except psycopg.Error:
                    pass  # the default revert closes the session, which releases the keys
        return await super().revert(sessions, reason)

    def details(self) -> dict[str, Any]:
        return {
            "key_count": len(self.keys),
            "keys": [_show(k) for k in self.keys],
            "mode": "ShareLock" if self.params.shared else "ExclusiveLock",
        }

    def describe_params(self) -> dict[str, Any]:
        return {"keys": [_show(k) for k in self.keys], "shared": self.params.shared}
