"""Sampling what PostgreSQL sees: sessions, who waits on whom, and what fault sessions hold.

One snapshot serves every status call for a short while: the cost of a status call does
not grow with the number of faults. Lock trees and blocked sets are computed in Python
from the ``pg_blocking_pids`` edges of the snapshot.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import psycopg

QUERY_TEXT_LIMIT = 200

_SESSIONS_SQL = """
SELECT a.pid, a.usename, a.application_name, a.state, left(a.query, %s), a.wait_event_type,
       a.wait_event, extract(epoch FROM clock_timestamp() - a.state_change)::float8,
       extract(epoch FROM clock_timestamp() - a.xact_start)::float8, a.backend_xmin::text,
       CASE WHEN a.wait_event_type = 'Lock' THEN pg_blocking_pids(a.pid) END, a.datname
FROM pg_stat_activity a
WHERE a.backend_type = 'client backend' AND a.pid <> pg_backend_pid()
"""

_LOCKS_SQL = """
SELECT l.pid, l.locktype, l.mode, l.granted,
       CASE WHEN l.relation IS NOT NULL THEN coalesce(
           (SELECT n.nspname || '.' || c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
            WHERE c.oid = l.relation), l.relation::text) END,
       l.classid::bigint, l.objid::bigint, l.objsubid, l.transactionid::text, l.virtualxid
FROM pg_locks l
WHERE l.pid = ANY(%s) AND l.locktype <> 'virtualxid'
ORDER BY l.pid, l.locktype, l.relation
"""


@dataclass(frozen=True)
class Session:
    pid: int
    user: str | None
    application_name: str
    state: str | None
    query: str | None
    wait_event_type: str | None
    wait_event: str | None
    state_age_s: float | None
    xact_age_s: float | None
    backend_xmin: str | None
    blocked_by: tuple[int, ...]
    database: str | None

    @property
    def waiting_on_lock(self) -> bool:
        return self.wait_event_type == "Lock"


@dataclass(frozen=True)
class HeldLock:
    pid: int
    locktype: str
    mode: str
    granted: bool
    relation: str | None
    key: str | None

    def as_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"locktype": self.locktype, "mode": self.mode, "granted": self.granted}
        if self.relation is not None:
            d["relation"] = self.relation
        if self.key is not None:
            d["key"] = self.key
        return d


@dataclass(frozen=True)
class Snapshot:
    taken_at: float
    sessions: dict[int, Session]
    locks: dict[int, tuple[HeldLock, ...]] = field(default_factory=dict)
    #: impacts already worked out from this snapshot, by pids (status calls share a snapshot
    #: for the control channel's TTL: a list of 100 faults would otherwise redo 100 of them)
    _impacts: dict[tuple[int, ...], Impact] = field(default_factory=dict, repr=False, compare=False)

    def waiters_of(self) -> dict[int, list[int]]:
        """blocker pid -> pids it blocks directly (do not change it: computed once per snapshot,
        which status calls share for the control channel's snapshot TTL)."""
        return self._waiters

    @functools.cached_property
    def _waiters(self) -> dict[int, list[int]]:
        edges: dict[int, list[int]] = {}
        for s in self.sessions.values():
            for b in s.blocked_by:
                edges.setdefault(b, []).append(s.pid)
        return edges


def _advisory_key(classid: int | None, objid: int | None, objsubid: int | None) -> str | None:
    if classid is None or objid is None:
        return None
    if objsubid == 1:  # one bigint key, split in two 32-bit halves
        value = (classid << 32) | objid
        if value >= 1 << 63:
            value -= 1 << 64
        return str(value)
    return f"[{_int4(classid)}, {_int4(objid)}]"


def _int4(value: int) -> int:
    """An oid column read back as the signed int4 the user passed to pg_advisory_lock."""
    return value - (1 << 32) if value >= 1 << 31 else value


async def take_snapshot(conn: psycopg.AsyncConnection[Any], lock_pids: Iterable[int] = ()) -> Snapshot:
    """Read every client session (all databases) and the locks of ``lock_pids``."""
    cur = await conn.execute(_SESSIONS_SQL, (QUERY_TEXT_LIMIT,))
    sessions: dict[int, Session] = {}
    for row in await cur.fetchall():
        sessions[int(row[0])] = Session(
            pid=int(row[0]),
            user=row[1],
            application_name=row[2] or "",
            state=row[3],
            query=row[4],
            wait_event_type=row[5],
            wait_event=row[6],
            state_age_s=row[7],
            xact_age_s=row[8],
            backend_xmin=row[9],
            blocked_by=tuple(int(p) for p in (row[10] or ())),
            database=row[11],
        )
    pids = sorted(set(lock_pids))
    locks: dict[int, list[HeldLock]] = {}
    if pids:
        cur = await conn.execute(_LOCKS_SQL, (pids,))
        for row in await cur.fetchall():
            key = _advisory_key(row[5], row[6], row[7]) if row[1] == "advisory" else None
            if row[1] == "transactionid":
                key = row[8]
            locks.setdefault(int(row[0]), []).append(
                HeldLock(int(row[0]), str(row[1]), str(row[2]), bool(row[3]), row[4], key)
            )
    return Snapshot(time.time(), sessions, {p: tuple(v) for p, v in locks.items()})


@dataclass(frozen=True)
class Blocked:
    """A session that waits, directly or through others, on a fault's session."""

    session: Session
    depth: int  # 1 = waits on the fault's session itself

    def as_dict(self) -> dict[str, Any]:
        s = self.session
        return {
            "pid": s.pid,
            "user": s.user,
            "application_name": s.application_name,
            "database": s.database,
            "state": s.state,
            "query": s.query,
            "wait_s": round(s.state_age_s, 3) if s.state_age_s is not None else None,
            "blocked_by": list(s.blocked_by),
            "depth": self.depth,
        }


@dataclass(frozen=True)
class Impact:
    pids: tuple[int, ...]
    alive_pids: tuple[int, ...]
    locks: tuple[HeldLock, ...]
    blocked: tuple[Blocked, ...]
    tree: tuple[dict[str, Any], ...]
    holder_sessions: tuple[Session, ...]

    @property
    def blocked_count(self) -> int:
        return len(self.blocked)

    def as_dict(self) -> dict[str, Any]:
        """The impact as answers show it (worked out once per impact; do not change it)."""
        return self._as_dict

    @functools.cached_property
    def _as_dict(self) -> dict[str, Any]:
        return {
            "pids": list(self.pids),
            "locks": [lk.as_dict() | {"pid": lk.pid} for lk in self.locks],
            "blocked_count": self.blocked_count,
            "blocked": [b.as_dict() for b in self.blocked],
            "lock_tree": list(self.tree),
            "sessions": [
                {
                    "pid": s.pid,
                    "state": s.state,
                    "xact_age_s": round(s.xact_age_s, 3) if s.xact_age_s is not None else None,
                    "backend_xmin": s.backend_xmin,
                }
                for s in self.holder_sessions
            ],
        }


def impact_of(snapshot: Snapshot, pids: Iterable[int]) -> Impact:
    """Who the sessions ``pids`` block (transitively), what they hold, and the lock tree.

    The tree is the breadth-first one: each blocked session appears once, under the first
    session (nearest a root) it waits on. ``pg_blocking_pids`` names every earlier queued
    waiter too, so a queue of n conflicting waiters is a dense graph; unfolding every path
    would grow as 2^n.
    """
    roots = tuple(pids)
    known = snapshot._impacts.get(roots)
    if known is not None:
        return known
    edges = snapshot.waiters_of()
    seen: dict[int, int] = {}
    parent_of: dict[int, int] = {}
    frontier = [(p, 0) for p in roots]
    while frontier:
        nxt: list[tuple[int, int]] = []
        for pid, depth in frontier:
            for w in sorted(edges.get(pid, ())):
                if w not in seen and w not in roots and w in snapshot.sessions:
                    seen[w] = depth + 1
                    parent_of[w] = pid
                    nxt.append((w, depth + 1))
        frontier = nxt
    blocked = tuple(Blocked(snapshot.sessions[p], d) for p, d in sorted(seen.items(), key=lambda kv: (kv[1], kv[0])))

    children_of: dict[int, list[int]] = {}
    for w, parent in parent_of.items():
        children_of.setdefault(parent, []).append(w)

    def node(pid: int) -> dict[str, Any]:
        s = snapshot.sessions.get(pid)
        children = [node(w) for w in sorted(children_of.get(pid, ()))]
        return {
            "pid": pid,
            "application_name": s.application_name if s else None,
            "state": s.state if s else None,
            "query": s.query if s else None,
            "waits": children,
        }

    tree = tuple(node(p) for p in roots)
    locks = tuple(lk for p in roots for lk in snapshot.locks.get(p, ()))
    alive = tuple(p for p in roots if p in snapshot.sessions)
    holders = tuple(snapshot.sessions[p] for p in alive)
    impact = snapshot._impacts[roots] = Impact(roots, alive, locks, blocked, tree, holders)
    return impact
