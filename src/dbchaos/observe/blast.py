"""The blast radius of a planned fault: who is in its way now, and whom it would block.

Read from ``pg_locks`` and ``pg_stat_activity`` (and ``pgrowlocks`` for row locks, where the
extension is installed) on the dry run's read-only connection, and compared with the locks
the fault would take using PostgreSQL's conflict tables (:mod:`dbchaos.observe.conflicts`):

* **in the way** — sessions holding a lock that conflicts with one the fault would take,
  or queued for one: the inject would wait for them (up to its acquire timeout), then fail;
* **would block** — sessions using those objects now in a mode the fault's lock conflicts
  with (holding or awaiting a lock on them, or — marked ``possible`` — whose current or
  last statement names the table): their next such statement would wait behind the fault.

Only locks taken at inject (``held`` for the fault's duration, or ``inject`` for one short
transaction) count; what revert will take depends on the state then.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Literal

import psycopg
from psycopg import sql

from dbchaos.faults.identifiers import Relation, quote
from dbchaos.faults.plan import PlannedLock
from dbchaos.observe.activity import QUERY_TEXT_LIMIT
from dbchaos.observe.conflicts import (
    advisory_tag,
    row_conflicts,
    row_strength_of,
    table_conflicts,
    table_mode,
)

Certainty = Literal["certain", "possible"]
#: table modes of sessions that write or lock rows (they may hold row locks on any row)
_ROW_USERS = frozenset({"ROW SHARE", "ROW EXCLUSIVE"})
#: bound of the pgrowlocks scan (it reads the whole table)
PGROWLOCKS_TIMEOUT_MS = 3000
MAX_CLIENT_GROUPS = 50

_LOCKS_SQL = """
SELECT l.pid, l.locktype, l.mode, l.granted, l.relation::bigint, l.classid::bigint, l.objid::bigint, l.objsubid::int
FROM pg_locks l
WHERE l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
  AND ((l.locktype = 'relation' AND l.relation = ANY(%s::oid[])) OR (l.locktype = 'advisory' AND %s))
  AND l.pid IS DISTINCT FROM pg_backend_pid()
"""

_SESSIONS_SQL = """
SELECT a.pid, a.usename, a.application_name, a.state, left(a.query, %s),
       extract(epoch FROM clock_timestamp() - a.xact_start)::float8
FROM pg_stat_activity a
WHERE a.pid <> pg_backend_pid() AND a.datname = current_database()
  AND (a.backend_type = 'client backend' OR a.backend_type IS NULL)  -- NULL: another role's, details hidden
"""

_PGROWLOCKS_SQL = """
SELECT n.nspname FROM pg_extension e JOIN pg_namespace n ON n.oid = e.extnamespace WHERE e.extname = 'pgrowlocks'
"""

_CLIENTS_SQL = """
SELECT a.datname, a.usename, a.application_name, count(*)::int
FROM pg_stat_activity a
WHERE a.backend_type = 'client backend' AND a.pid <> pg_backend_pid()
GROUP BY 1, 2, 3 ORDER BY 4 DESC, 1, 2, 3 LIMIT %s
"""


@dataclass(frozen=True)
class _Session:
    pid: int
    user: str | None
    application_name: str
    state: str | None
    query: str | None
    xact_age_s: float | None


@dataclass
class Party:
    """One session in the blast radius, with each reason it is there."""

    pid: int | None
    session: _Session | None
    reasons: list[dict[str, Any]] = field(default_factory=list)

    @property
    def certainty(self) -> Certainty:
        return "certain" if any(r["certainty"] == "certain" for r in self.reasons) else "possible"

    def as_dict(self) -> dict[str, Any]:
        s = self.session
        first = next((r for r in self.reasons if r["certainty"] == "certain"), self.reasons[0])
        return {
            "pid": self.pid,
            "user": s.user if s else None,
            "application_name": s.application_name if s else None,
            "state": s.state if s else ("prepared transaction" if self.pid is None else None),
            "query": s.query if s else None,
            "xact_age_s": round(s.xact_age_s, 3) if s and s.xact_age_s is not None else None,
            "mode": first.get("mode"),
            "certainty": self.certainty,
            "locks": self.reasons,
        }


@dataclass
class BlastRadius:
    in_the_way: dict[int | None, Party] = field(default_factory=dict)
    would_block: dict[int | None, Party] = field(default_factory=dict)
    #: how row locks were checked: ``pgrowlocks``, ``relation`` (table-level evidence only), or None
    row_locks: str | None = None
    clients: list[dict[str, Any]] | None = None
    dbchaos_faults: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def add(self, which: str, pid: int | None, session: _Session | None, reason: dict[str, Any]) -> None:
        book = self.in_the_way if which == "in_the_way" else self.would_block
        party = book.setdefault(pid, Party(pid, session))
        if reason not in party.reasons:
            party.reasons.append(reason)

    def as_dict(self) -> dict[str, Any]:
        def ordered(book: dict[int | None, Party]) -> list[dict[str, Any]]:
            parties = sorted(book.values(), key=lambda p: (p.certainty != "certain", p.pid or 0))
            return [p.as_dict() for p in parties]

        out: dict[str, Any] = {
            "in_the_way": ordered(self.in_the_way),
            "would_block": ordered(self.would_block),
            "row_locks": self.row_locks,
        }
        if self.clients is not None:
            out["clients"] = self.clients
        if self.dbchaos_faults:
            out["dbchaos_faults"] = self.dbchaos_faults
        out["notes"] = self.notes
        return out


def _target(lock: PlannedLock) -> str:
    if lock.relation is not None:
        return f"{lock.mode} on {lock.relation.display}"
    if lock.key is not None:
        return f"advisory {lock.mode} on key {list(lock.key) if isinstance(lock.key, tuple) else lock.key}"
    return lock.mode


_VERB = re.compile(r"^\s*(?:(?:--[^\n]*\n)|(?:/\*.*?\*/)|\s)*(\w+)", re.DOTALL)
_FOR_ROWS = re.compile(r"\bFOR\s+(?:NO\s+KEY\s+UPDATE|UPDATE|SHARE|KEY\s+SHARE)\b", re.IGNORECASE)


def statement_mode(query: str | None) -> str:
    """The table lock a statement takes on the tables it names, guessed from its first word
    (an estimate for sessions that hold no lock now: their last statement)."""
    m = _VERB.match(query or "")
    verb = m.group(1).upper() if m else ""
    text = (query or "").upper()
    if verb in ("SELECT", "WITH", "TABLE", "VALUES"):
        return "ROW SHARE" if _FOR_ROWS.search(query or "") else "ACCESS SHARE"
    if verb in ("INSERT", "UPDATE", "DELETE", "MERGE"):
        return "ROW EXCLUSIVE"
    if verb == "COPY":
        return "ROW EXCLUSIVE" if " FROM " in f" {text} " else "ACCESS SHARE"
    if verb in ("VACUUM", "ANALYZE"):
        return "ACCESS EXCLUSIVE" if re.search(r"\bFULL\b", text) else "SHARE UPDATE EXCLUSIVE"
    if verb == "CREATE" and re.search(r"\bINDEX\b", text):
        return "SHARE UPDATE EXCLUSIVE" if re.search(r"\bCONCURRENTLY\b", text) else "SHARE"
    if verb in ("ALTER", "DROP", "TRUNCATE", "CLUSTER", "REINDEX", "LOCK"):
        return "ACCESS EXCLUSIVE"
    return "ACCESS SHARE"  # every statement that reads a table takes at least this


def mentions(query: str | None, rel: Relation) -> bool:
    """Whether ``query`` names ``rel`` (by its bare or quoted name; a heuristic)."""
    if not query:
        return False
    flags = re.IGNORECASE if rel.name == rel.name.lower() else 0
    return bool(re.search(r'(?<![\w$])"?' + re.escape(rel.name) + r'"?(?![\w$])', query, flags))


async def blast_radius(
    conn: psycopg.AsyncConnection[Any], locks: Iterable[PlannedLock], *, own_pids: Iterable[int] = ()
) -> BlastRadius:
    """Who is in the way of ``locks`` and whom they would block, now."""
    planned = [lk for lk in locks if lk.phase in ("held", "inject")]
    radius = BlastRadius()
    own = set(own_pids)
    sessions = await _sessions(conn)
    rel_locks = [lk for lk in planned if lk.locktype == "relation" and lk.relation is not None]
    adv_locks = [lk for lk in planned if lk.locktype == "advisory" and lk.key is not None]
    row_locks = [lk for lk in planned if lk.locktype == "rows" and lk.relation is not None]
    oids = sorted({lk.relation.oid for lk in rel_locks + row_locks if lk.relation is not None})
    cur = await conn.execute(_LOCKS_SQL, (oids, bool(adv_locks)))
    held = [r for r in await cur.fetchall() if r[0] not in own]

    for lk in rel_locks:
        assert lk.relation is not None
        users: set[int | None] = set()
        for pid, locktype, mode, granted, relid, *_ in held:
            if locktype != "relation" or relid != lk.relation.oid:
                continue
            users.add(pid)
            their = table_mode(str(mode)) or str(mode)
            if not table_conflicts(lk.mode, their):
                continue
            reason = _reason(lk, their, bool(granted), "pg_locks", "certain")
            if lk.granted:
                radius.add("in_the_way", pid, sessions.get(pid), reason)
            radius.add("would_block", pid, sessions.get(pid), reason)
        _guess_from_queries(radius, lk, sessions, users | own)

    if adv_locks:
        wanted: dict[tuple[int, int, int], list[PlannedLock]] = {}
        for lk in adv_locks:
            assert lk.key is not None
            wanted.setdefault(advisory_tag(lk.key), []).append(lk)
        for pid, locktype, mode, granted, _, classid, objid, objsubid in held:
            if locktype != "advisory":
                continue
            for lk in wanted.get((int(classid), int(objid), int(objsubid)), []):
                their = table_mode(str(mode)) or str(mode)
                if table_conflicts(lk.mode, their):
                    reason = _reason(lk, their, bool(granted), "pg_locks", "certain")
                    radius.add("in_the_way", pid, sessions.get(pid), reason)
                    radius.add("would_block", pid, sessions.get(pid), reason)

    for lk in row_locks:
        assert lk.relation is not None
        rel_held = [r for r in held if r[1] == "relation" and r[4] == lk.relation.oid]
        await _row_lockers(conn, radius, lk, rel_held, sessions, own)
    hidden = {
        p.pid
        for p in [*radius.in_the_way.values(), *radius.would_block.values()]
        if p.pid is not None and (p.session is None or p.session.state is None)
    }
    if hidden:
        radius.notes.append(
            f"{len(hidden)} session(s) of other roles show no state or query: dbchaos's role needs "
            "pg_read_all_stats to see them (and to judge sessions by their last statement)"
        )
    return radius


def _reason(lk: PlannedLock, their_mode: str, granted: bool, evidence: str, certainty: Certainty) -> dict[str, Any]:
    reason: dict[str, Any] = {"locktype": lk.locktype}
    if lk.relation is not None:
        reason["relation"] = lk.relation.display
    if lk.key is not None:
        reason["key"] = list(lk.key) if isinstance(lk.key, tuple) else lk.key
    reason |= {
        "mode": their_mode,
        "granted": granted,
        "conflicts_with": _target(lk),
        "fault_lock_phase": lk.phase,
        "evidence": evidence,
        "certainty": certainty,
    }
    return reason


def _guess_from_queries(
    radius: BlastRadius, lk: PlannedLock, sessions: dict[int | None, _Session], skip: set[int | None]
) -> None:
    """Sessions with no lock on the table now whose current or last statement names it."""
    assert lk.relation is not None
    for pid, s in sessions.items():
        if pid in skip or s.application_name.startswith("dbchaos:") or not mentions(s.query, lk.relation):
            continue
        mode = statement_mode(s.query)
        if table_conflicts(lk.mode, mode):
            reason = _reason(lk, mode, False, "last query names the table", "possible")
            reason["granted"] = None
            radius.add("would_block", pid, s, reason)


async def _row_lockers(
    conn: psycopg.AsyncConnection[Any],
    radius: BlastRadius,
    lk: PlannedLock,
    rel_held: list[tuple[Any, ...]],
    sessions: dict[int | None, _Session],
    own: set[int],
) -> None:
    """Sessions holding row locks on the rows ``lk`` would lock: exactly with ``pgrowlocks``,
    else every session writing or locking rows of the table (``possible``)."""
    assert lk.relation is not None
    rel = lk.relation
    exact = await _pgrowlocks(conn, lk) if lk.rows_query is not None and rel.kind == "r" else None
    if exact is not None:
        radius.row_locks = "pgrowlocks"
        for pid, mode, count in exact:
            if pid in own:
                continue
            strength = row_strength_of(str(mode))
            if strength is None or not row_conflicts(lk.mode, strength):
                continue
            reason = _reason(lk, strength, True, "pgrowlocks", "certain")
            reason["rows"] = int(count)
            radius.add("in_the_way", pid, sessions.get(pid), reason)
            radius.add("would_block", pid, sessions.get(pid), reason)
    else:
        if radius.row_locks is None:
            radius.row_locks = "relation"
        radius.notes.append(
            f"row locks on {rel.display} were judged from table locks only (sessions writing or locking rows may "
            "hold some of these rows): install the pgrowlocks extension in the target database for an exact answer"
        )
    users: set[int | None] = set()
    for pid, _, mode, granted, *_ in rel_held:
        users.add(pid)
        their = table_mode(str(mode)) or str(mode)
        if their not in _ROW_USERS:
            continue
        reason = _reason(lk, their, bool(granted), "pg_locks", "possible")
        if exact is None and granted:
            radius.add("in_the_way", pid, sessions.get(pid), reason)
        radius.add("would_block", pid, sessions.get(pid), reason)
    for pid, s in sessions.items():
        if pid in users or pid in own or s.application_name.startswith("dbchaos:") or not mentions(s.query, rel):
            continue
        if statement_mode(s.query) in _ROW_USERS:
            reason = _reason(lk, statement_mode(s.query), False, "last query names the table", "possible")
            reason["granted"] = None
            radius.add("would_block", pid, s, reason)


async def _pgrowlocks(conn: psycopg.AsyncConnection[Any], lk: PlannedLock) -> list[tuple[Any, ...]] | None:
    """(pid, pgrowlocks mode, rows) of the lockers of the rows ``lk`` would lock; ``None``
    when the extension is not installed or cannot read the table in time."""
    assert lk.relation is not None and lk.rows_query is not None
    row = await (await conn.execute(_PGROWLOCKS_SQL)).fetchone()
    if row is None:
        return None
    query = sql.SQL(
        "SELECT u.pid, u.mode, count(*)::int FROM {fn}(%s) AS r"
        " CROSS JOIN LATERAL unnest(r.pids, r.modes) AS u(pid, mode)"
        " WHERE r.locked_row IN ({rows}) GROUP BY 1, 2 ORDER BY 1, 2"
    ).format(fn=sql.Identifier(str(row[0]), "pgrowlocks"), rows=lk.rows_query)
    name = f"{quote(lk.relation.schema)}.{quote(lk.relation.name)}"
    try:
        async with conn.transaction():
            await conn.execute("SELECT set_config('statement_timeout', %s, true)", (str(PGROWLOCKS_TIMEOUT_MS),))
            cur = await conn.execute(query, (name, *lk.rows_params))
            return list(await cur.fetchall())
    except psycopg.OperationalError:
        if conn.broken or conn.closed:
            raise
        return None
    except psycopg.Error:  # no privilege, lock_timeout, statement_timeout...
        return None


async def _sessions(conn: psycopg.AsyncConnection[Any]) -> dict[int | None, _Session]:
    cur = await conn.execute(_SESSIONS_SQL, (QUERY_TEXT_LIMIT,))
    return {int(r[0]): _Session(int(r[0]), r[1], r[2] or "", r[3], r[4], r[5]) for r in await cur.fetchall()}


async def connected_clients(conn: psycopg.AsyncConnection[Any]) -> list[dict[str, Any]]:
    """Client sessions on the whole cluster, grouped by database, user and application."""
    cur = await conn.execute(_CLIENTS_SQL, (MAX_CLIENT_GROUPS,))
    return [
        {"database": r[0], "user": r[1], "application_name": r[2], "sessions": int(r[3])} for r in await cur.fetchall()
    ]
