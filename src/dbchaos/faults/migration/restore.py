"""Reverting a journaled fault from its journal entry alone — the same code for the
instance that injected it and for recovery after a crash.

One transaction: lock the entry, check that the database is still as the fault left it
(else *superseded*: the team's state stays), undo every action, verify rows and the
schema fingerprint against the record, and mark the entry. Schema changes need ACCESS
EXCLUSIVE, so the transaction uses a short ``lock_timeout`` and is retried.
"""

from __future__ import annotations

import asyncio
from typing import Any

import psycopg
from psycopg import sql

from dbchaos.engine.model import State
from dbchaos.faults.base import RevertOutcome
from dbchaos.faults.migration import actions, journal, tx
from dbchaos.faults.migration.fingerprint import differences, fingerprint

LOCK_TIMEOUT_MS = 1000
ATTEMPTS = 8


async def restore(conn: psycopg.AsyncConnection[Any], fault_id: str, reason: str) -> RevertOutcome:
    """Revert journal entry ``fault_id`` on ``conn`` (autocommit) and say how it ended."""
    last: Exception | None = None
    for attempt in range(ATTEMPTS):
        try:
            return await _restore_once(conn, fault_id, reason)
        except psycopg.errors.LockNotAvailable as exc:
            last = exc
            await asyncio.sleep(min(0.1 * 2**attempt, 2.0))
    return RevertOutcome(
        State.FAILED,
        f"could not get the locks to revert within {ATTEMPTS} attempts ({last}); "
        "the journal keeps the entry and the next recovery retries",
    )


async def _restore_once(conn: psycopg.AsyncConnection[Any], fault_id: str, reason: str) -> RevertOutcome:
    async with tx.transaction(conn):
        async with conn.pipeline():  # one round trip: BEGIN, the short lock_timeout, the entry (locked)
            await tx.begin(conn)
            await conn.execute(sql.SQL("SET LOCAL lock_timeout = {}").format(sql.Literal(LOCK_TIMEOUT_MS)))
            entry = await journal.lock_entry(conn, fault_id)
        if entry is None:
            return RevertOutcome(State.REVERTED, details={"note": "no journal entry: nothing was changed"})
        if entry.state != "active":
            return _already(entry.state)
        for a in entry.actions:
            await actions.lock(conn, a)
        found = [d for a in entry.actions if (d := await actions.drift(conn, a)) is not None]
        if found:
            outcome = await _superseded(conn, entry, found)
            await _finish(conn, fault_id, "superseded", reason, outcome)
            return RevertOutcome(
                State.SUPERSEDED,
                "someone changed the state dbchaos had set; their change stays: " + "; ".join(found),
                {"superseded": outcome},
            )
        async with conn.pipeline():  # the undo goes out with the first verification read
            for a in reversed(entry.actions):
                await actions.undo(conn, a)
            diffs = [d for a in entry.actions for d in await actions.verify(conn, a)]
        diffs += differences(entry.fingerprint, await fingerprint(conn, [int(o) for o in entry.fingerprint]))
        restored = await _restored_rows(conn, entry.actions, verified=not diffs)
        if diffs:
            await _finish(conn, fault_id, "failed", reason, {"differences": diffs, "version_rows": restored})
            return RevertOutcome(
                State.FAILED,
                "revert could not be verified: " + "; ".join(diffs),
                {"differences": diffs, "restored_version_rows": restored},
            )
        await _finish(conn, fault_id, "reverted", reason, {"verified": True, "version_rows": restored})
        return RevertOutcome(State.REVERTED, details={"verified": True, "restored_version_rows": restored})


async def _finish(
    conn: psycopg.AsyncConnection[Any], fault_id: str, state: str, reason: str, outcome: dict[str, Any]
) -> None:
    """Mark the entry and commit, in one round trip."""
    async with conn.pipeline():
        await journal.finish(conn, fault_id, state, reason, outcome)
        await tx.commit(conn)


def _already(state: str) -> RevertOutcome:
    mapping = {"reverted": State.REVERTED, "superseded": State.SUPERSEDED, "failed": State.FAILED}
    return RevertOutcome(mapping.get(state, State.FAILED), details={"note": f"the journal entry was already {state}"})


async def _restored_rows(
    conn: psycopg.AsyncConnection[Any], acts: list[dict[str, Any]], *, verified: bool
) -> list[str] | None:
    """The version rows after the undo. Once verification found no difference they are the
    recorded ones (compared as a multiset), so they are not read again."""
    for a in acts:
        if a["type"] == "version_rows" or (a["type"] == "rename_table" and a.get("version_table")):
            recorded = a["before"] if a["type"] == "version_rows" else a.get("rows")
            if verified and recorded is not None:
                return sorted(str(r) for r in recorded)
            return await actions.version_rows(conn, a["schema"], a["table"])
    return None


async def _superseded(conn: psycopg.AsyncConnection[Any], entry: journal.Entry, found: list[str]) -> dict[str, Any]:
    """Keep the team's state. A version table hidden by ``missing-table`` that the team has
    recreated (``alembic stamp``) is dropped after its rows are kept in the journal."""
    outcome: dict[str, Any] = {"found": found}
    for a in entry.actions:
        if a["type"] == "version_rows":
            outcome["version_rows_found"] = await actions.version_rows(conn, a["schema"], a["table"])
        if a["type"] == "rename_table" and a.get("version_table"):
            hidden_rows = await actions.version_rows(conn, a["schema"], a["hidden"])
            current = await actions.version_rows(conn, a["schema"], a["table"])
            outcome["version_rows_found"] = current
            if hidden_rows is not None and current is not None:
                await conn.execute(sql.SQL("DROP TABLE {}").format(sql.Identifier(a["schema"], a["hidden"])))
                outcome["dropped_hidden_copy"] = {"table": f"{a['schema']}.{a['hidden']}", "rows": hidden_rows}
    return outcome
