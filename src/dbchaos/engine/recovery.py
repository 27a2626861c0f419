"""Recovery: revert journal entries whose owner is gone.

An instance owns its entries while it holds the session advisory lock
``(OWNER_LOCK_CLASS, owner_key)`` on the target. Recovery tries that lock for each
unreverted entry: only if it gets it (the owner died, or lost its connection) does it
revert the entry, with the same journal-driven code the owner would have used. A live
instance's faults are never touched.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import psycopg

from dbchaos.faults.base import RevertOutcome
from dbchaos.faults.migration import journal
from dbchaos.faults.migration.restore import restore
from dbchaos.targets import Target


@dataclass(frozen=True)
class Recovered:
    entry: journal.Entry
    outcome: RevertOutcome


async def recover(
    target: Target,
    instance: str,
    own_key: int,
    *,
    connect_timeout_s: float = 3.0,
    own_in_progress: Callable[[str], bool] = lambda fault_id: True,
    cursor_factory: type[psycopg.AsyncCursor[Any]] | None = None,
) -> list[Recovered]:
    """Revert every unowned, unreverted journal entry on ``target``.

    Entries of this instance are retried only where ``own_in_progress(fault_id)`` is false
    (its revert already ended, e.g. it gave up on a busy table)."""
    conn = await target.connect(
        f"dbchaos:{instance}:recover", connect_timeout_s=connect_timeout_s, cursor_factory=cursor_factory
    )
    try:
        await conn.execute("SET statement_timeout = '30s'")
        done: list[Recovered] = []
        for entry in await journal.unreverted(conn):
            if entry.owner_key == own_key:
                if not own_in_progress(entry.fault_id):
                    done.append(Recovered(entry, await restore(conn, entry.fault_id, "recovered")))
                continue
            if not await _try_owner_lock(conn, entry.owner_key):
                continue  # its owner is alive: never touch a live instance's faults
            try:
                done.append(Recovered(entry, await restore(conn, entry.fault_id, "recovered")))
            finally:
                await conn.execute("SELECT pg_advisory_unlock(%s, %s)", (journal.OWNER_LOCK_CLASS, entry.owner_key))
        return done
    finally:
        with contextlib.suppress(Exception):
            await conn.close()


async def _try_owner_lock(conn: psycopg.AsyncConnection[Any], key: int) -> bool:
    cur = await conn.execute("SELECT pg_try_advisory_lock(%s, %s)", (journal.OWNER_LOCK_CLASS, key))
    row = await cur.fetchone()
    return bool(row and row[0])
