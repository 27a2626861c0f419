"""Diagnosis of a target's Alembic version table: what is stored, what the code's heads
are, which broken-deploy state that is, and the repair a human would run.

Shared by ``GET /v1/targets/{name}/migrations`` and ``dbchaos migrations status``. It only
reads: the catalog, ``pg_locks`` / ``pg_stat_activity``, the version rows (under a short
``lock_timeout``, so a locked table is reported, never waited on) and dbchaos's journal.

States, in the vocabulary of the migration faults: ``at head``, ``behind by N`` (N = the
revisions ``alembic upgrade head`` would apply), ``unknown revision``, ``overlapping
revisions``, ``branch heads``, ``empty version table``, ``version table missing``,
``locked`` (a lock that conflicts with the ROW EXCLUSIVE a migration needs to write the
table), and ``heads unknown`` when the application's scripts are not configured.
"""

from __future__ import annotations

import contextlib
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

import psycopg
from psycopg import sql

from dbchaos.errors import InvalidInput
from dbchaos.faults.identifiers import MAX_IDENTIFIER_BYTES
from dbchaos.faults.migration import journal
from dbchaos.faults.migration.graph import RevisionGraph
from dbchaos.faults.names import conflicts, lock_mode
from dbchaos.targets import Target

READ_LOCK_TIMEOUT_MS = 300
STATEMENT_TIMEOUT_MS = 10_000
QUERY_CHARS = 200
APP_PREFIX = "dbchaos:"

AT_HEAD = "at head"
UNKNOWN = "unknown revision"
OVERLAP = "overlapping revisions"
BRANCHES = "branch heads"
MISSING = "version table missing"
EMPTY = "empty version table"
LOCKED = "locked"
HEADS_UNKNOWN = "heads unknown"
UNREADABLE = "rows unreadable"

CONFIGURE = (
    "configure the application's Alembic scripts (dbchaos serve --alembic-ini PATH, DBCHAOS_ALEMBIC_INI, "
    "or --alembic-ini on this command) to compare the stored revision with the code's heads"
)


@dataclass(frozen=True)
class Finding:
    state: str
    detail: str
    repair: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class LockHolder:
    pid: int | None
    mode: str
    granted: bool
    application_name: str | None
    user: str | None
    session_state: str | None
    xact_start: str | None
    query: str | None
    blocked_by: list[int]
    #: the dbchaos fault id, when the session is one of dbchaos's (``dbchaos:<fault id>``)
    dbchaos_fault: str | None


@dataclass(frozen=True)
class JournalFault:
    fault_id: str
    kind: str
    owner: str
    owner_alive: bool
    created_at: str | None
    objects: list[str]
    on_this_table: bool
    changes: list[str]


@dataclass(frozen=True)
class Diagnosis:
    target: str
    version_table: str
    table_exists: bool
    #: the stored revision ids; ``None`` when the table is missing or could not be read
    stored: list[str] | None
    readable: bool
    scripts: bool
    heads: list[str] | None
    state: str
    states: list[str]
    summary: str
    findings: list[Finding]
    repair: list[str]
    behind_by: int | None
    pending: list[str] | None
    locks: list[LockHolder]
    dbchaos_faults: list[JournalFault]

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def check_version_table_names(version_table: str, version_table_schema: str) -> tuple[str, str]:
    """(schema, table), exact names as Alembic's settings give them; 422 when impossible."""
    for value, name in ((version_table, "version_table"), (version_table_schema, "version_table_schema")):
        if not value or len(value.encode()) > MAX_IDENTIFIER_BYTES:
            raise InvalidInput(f"{name} must be 1 to {MAX_IDENTIFIER_BYTES} bytes", field=name)
        if "\x00" in value:
            raise InvalidInput(f"{name} contains a NUL byte", code="invalid_identifier", field=name)
    return version_table_schema, version_table


async def diagnose(
    target: Target,
    graph: RevisionGraph | None,
    *,
    version_table: str = "alembic_version",
    version_table_schema: str = "public",
    connect_timeout_s: float = 3.0,
    cursor_factory: Any = None,
) -> Diagnosis:
    """Connect to ``target`` (``TargetUnreachable`` if it cannot) and diagnose its version table
    (``cursor_factory``: the audit trail's, when a server diagnoses)."""
    schema, table = check_version_table_names(version_table, version_table_schema)
    conn = await target.connect("dbchaos:diagnose", connect_timeout_s=connect_timeout_s, cursor_factory=cursor_factory)
    try:
        await conn.execute(sql.SQL("SET statement_timeout = {}").format(sql.Literal(STATEMENT_TIMEOUT_MS)))
        return await diagnose_on(conn, target.name, graph, schema, table)
    finally:
        with contextlib.suppress(Exception):
            await conn.close()


async def diagnose_on(
    conn: psycopg.AsyncConnection[Any], target_name: str, graph: RevisionGraph | None, schema: str, table: str
) -> Diagnosis:
    display = f"{schema}.{table}"
    oid = await _table_oid(conn, schema, table)
    locks = await _locks(conn, oid) if oid is not None else []
    stored: list[str] | None = None
    readable = oid is not None
    if oid is not None:
        if not await _has_version_num(conn, oid):
            raise InvalidInput(
                f"{display} has no version_num column; it is not an Alembic version table",
                code="not_a_version_table",
                field="version_table",
            )
        try:
            stored = await _rows(conn, schema, table)
        except psycopg.errors.LockNotAvailable:
            readable = False
    faults = await _journal_faults(conn, display)
    findings: list[Finding] = []
    if locks:
        findings.append(_locked_finding(display, locks, readable))
    row_finding, pending = _classify(display, oid is not None, readable, stored, graph)
    findings.append(row_finding)
    mine = [f for f in faults if f.on_this_table]
    if mine:
        findings = [_with_dbchaos(f, mine) for f in findings]
    states = [f.state for f in findings]
    repair: list[str] = []
    for f in findings:
        repair += [r for r in f.repair if r not in repair]
    summary = " ".join(f.detail for f in findings)
    return Diagnosis(
        target=target_name,
        version_table=display,
        table_exists=oid is not None,
        stored=stored,
        readable=readable,
        scripts=graph is not None,
        heads=graph.heads if graph is not None else None,
        state=states[0],
        states=states,
        summary=summary,
        findings=findings,
        repair=repair,
        behind_by=len(pending) if pending is not None else None,
        pending=pending,
        locks=locks,
        dbchaos_faults=faults,
    )


# ---- reading -------------------------------------------------------------------------


async def _table_oid(conn: psycopg.AsyncConnection[Any], schema: str, table: str) -> int | None:
    cur = await conn.execute(
        "SELECT c.oid::bigint FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
        " WHERE n.nspname = %s AND c.relname = %s AND c.relkind IN ('r', 'p', 'v', 'f')",
        (schema, table),
    )
    row = await cur.fetchone()
    return int(row[0]) if row else None


async def _has_version_num(conn: psycopg.AsyncConnection[Any], oid: int) -> bool:
    cur = await conn.execute(
        "SELECT 1 FROM pg_attribute WHERE attrelid = %s AND attname = 'version_num' AND NOT attisdropped", (oid,)
    )
    return await cur.fetchone() is not None


async def _rows(conn: psycopg.AsyncConnection[Any], schema: str, table: str) -> list[str]:
    """The stored revisions; ``LockNotAvailable`` rather than waiting behind a lock."""
    async with conn.transaction():
        await conn.execute(sql.SQL("SET LOCAL lock_timeout = {}").format(sql.Literal(READ_LOCK_TIMEOUT_MS)))
        cur = await conn.execute(
            sql.SQL("SELECT version_num::text FROM {}").format(sql.Identifier(schema, table)),
        )
        return sorted(str(r[0]) for r in await cur.fetchall())


_LOCKS_SQL = """
SELECT l.pid, l.mode, l.granted, a.application_name, a.usename::text, a.state,
       extract(epoch FROM a.xact_start)::float8, left(a.query, %s),
       CASE WHEN l.pid IS NULL THEN '{}'::int[] ELSE pg_blocking_pids(l.pid) END
FROM pg_locks l LEFT JOIN pg_stat_activity a ON a.pid = l.pid
WHERE l.locktype = 'relation' AND l.relation = %s
  AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
  AND l.pid IS DISTINCT FROM pg_backend_pid()
ORDER BY l.granted DESC, l.pid
"""


async def _locks(conn: psycopg.AsyncConnection[Any], oid: int) -> list[LockHolder]:
    """Locks on the table (held or requested) that conflict with ROW EXCLUSIVE: while one is
    held, no migration can write the version table; a waiting one queues every later query."""
    cur = await conn.execute(_LOCKS_SQL, (QUERY_CHARS, oid))
    out: list[LockHolder] = []
    for pid, mode, granted, app, user, state, xact, query, blocked_by in await cur.fetchall():
        sql_mode = lock_mode(str(mode))
        if not conflicts("ROW EXCLUSIVE", sql_mode):
            continue
        app_name = str(app) if app is not None else None
        out.append(
            LockHolder(
                pid=int(pid) if pid is not None else None,
                mode=sql_mode,
                granted=bool(granted),
                application_name=app_name,
                user=str(user) if user is not None else None,
                session_state=str(state) if state is not None else None,
                xact_start=_rfc3339(xact),
                query=str(query) if query is not None else None,
                blocked_by=[int(p) for p in blocked_by or []],
                dbchaos_fault=_dbchaos_fault_of(app_name),
            )
        )
    return out


def _dbchaos_fault_of(app: str | None) -> str | None:
    if app is None or not app.startswith(APP_PREFIX):
        return None
    rest = app[len(APP_PREFIX) :]
    return rest if len(rest) == 36 and rest.count("-") == 4 else None


_OWNERS_SQL = """
SELECT DISTINCT objid::bigint FROM pg_locks
WHERE locktype = 'advisory' AND granted AND classid::bigint = %s AND objsubid = 2
  AND database = (SELECT oid FROM pg_database WHERE datname = current_database())
"""


async def _journal_faults(conn: psycopg.AsyncConnection[Any], display: str) -> list[JournalFault]:
    """Unreverted journal entries on this target (faults dbchaos has set and not yet reverted)."""
    entries = await journal.unreverted(conn)
    if not entries:
        return []
    cur = await conn.execute(_OWNERS_SQL, (journal.OWNER_LOCK_CLASS,))
    alive = {int(r[0]) for r in await cur.fetchall()}
    return [
        JournalFault(
            fault_id=e.fault_id,
            kind=e.kind,
            owner=e.owner,
            owner_alive=e.owner_key in alive,
            created_at=_rfc3339(e.created_at),
            objects=e.objects,
            on_this_table=_touches(e, display),
            changes=[_describe_action(a) for a in e.actions],
        )
        for e in entries
    ]


def _touches(e: journal.Entry, display: str) -> bool:
    if f"version_table:{display}" in e.objects:
        return True
    return any(
        a.get("type") in ("version_rows", "rename_table") and f"{a.get('schema')}.{a.get('table')}" == display
        for a in e.actions
    )


def _describe_action(a: dict[str, Any]) -> str:
    t = a.get("type")
    where = f"{a.get('schema')}.{a.get('table')}"
    if t == "version_rows":
        return f"set {where} to {_rows_text(a.get('after') or [])} (it held {_rows_text(a.get('before') or [])})"
    if t == "rename_table":
        return f"renamed {where} to {a.get('hidden')}"
    if t == "rename_column":
        return f"renamed column {a.get('column')} of {where} to {a.get('hidden')}"
    if t == "create_table":
        return f"created table {where}"
    if t == "create_column":
        return f"created column {a.get('column')} on {where}"
    if t == "create_index":
        return f"created index {a.get('schema')}.{a.get('index')}"
    return str(t)


def _rfc3339(ts: Any) -> str | None:
    if ts is None:
        return None
    return datetime.fromtimestamp(float(ts), UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


# ---- classifying ---------------------------------------------------------------------


def _rows_text(rows: list[str]) -> str:
    return ", ".join(rows) if rows else "no rows"


def _resolve(rev: str, graph: RevisionGraph) -> str | None:
    """The revision Alembic would take ``rev`` for: itself, or the one revision it is a
    prefix of (Alembic resolves unique prefixes); ``None`` when it names none."""
    if rev in graph:
        return rev
    matches = [r for r in graph.revisions if r.startswith(rev)]
    return matches[0] if len(matches) == 1 else None


def _pending(graph: RevisionGraph, applied_tips: list[str]) -> list[str]:
    """What ``alembic upgrade head`` would apply from these stored revisions, oldest first."""
    applied: set[str] = set()
    for r in applied_tips:
        applied |= graph.ancestors(r) | {r}
    wanted: set[str] = set()
    for h in graph.heads:
        wanted |= graph.ancestors(h) | {h}
    return sorted(wanted - applied, key=lambda r: (len(graph.ancestors(r)), r))


def _classify(
    display: str, exists: bool, readable: bool, stored: list[str] | None, graph: RevisionGraph | None
) -> tuple[Finding, list[str] | None]:
    """The version rows' state and its repair; and the pending revisions where known."""
    if not exists:
        return Finding(
            MISSING,
            f"The version table {display} does not exist: `alembic current` prints nothing, and "
            "`alembic upgrade head` replays every migration from the base and fails on the first object that "
            "already exists (its transaction rolls back, so the table is not recreated).",
            [
                "if the schema matches the code's head: `alembic stamp head` (stamp recreates the table)",
                "otherwise `alembic stamp <revision the schema matches>`, then `alembic upgrade head`",
            ],
        ), None
    if not readable or stored is None:
        return Finding(
            UNREADABLE,
            f"The rows of {display} could not be read within {READ_LOCK_TIMEOUT_MS} ms because of the lock above.",
            [],
        ), None
    if not stored:
        return Finding(
            EMPTY,
            f"The version table {display} is empty: `alembic current` prints nothing, and `alembic upgrade head` "
            "replays every migration from the base and fails on the first object that already exists.",
            [
                "if the schema matches the code's head: `alembic stamp head`",
                "otherwise `alembic stamp <revision the schema matches>`, then `alembic upgrade head`",
            ],
        ), None
    if graph is None:
        return Finding(
            HEADS_UNKNOWN,
            f"{display} holds {_rows_text(stored)}; the code's heads are unknown.",
            [CONFIGURE],
        ), None
    resolved = {r: _resolve(r, graph) for r in stored}
    unknown = [r for r, res in resolved.items() if res is None]
    if unknown:
        return Finding(
            UNKNOWN,
            f"{display} holds {_rows_text(stored)}; {_rows_text(unknown)} is in none of the application's scripts "
            f"(heads: {_rows_text(graph.heads)}), so every Alembic command fails with "
            f"`Can't locate revision identified by '{unknown[0]}'`.",
            [
                "if a newer deploy wrote that revision, roll the code forward to a release that has it",
                "otherwise stamp the revision the schema matches: `alembic stamp --purge head` "
                "(or `alembic stamp --purge <revision>`); plain `alembic stamp` fails on the unknown id",
            ],
        ), None
    revs = [r for r in (resolved[s] for s in stored) if r is not None]
    prefixes = [f"{s} (a prefix of {resolved[s]})" for s in stored if resolved[s] != s]
    prefix_note = f" Stored as prefixes, which Alembic resolves: {', '.join(prefixes)}." if prefixes else ""
    overlap = [(a, d) for a in revs for d in revs if a != d and a in graph.ancestors(d)]
    pending = _pending(graph, revs)
    if overlap:
        ancestor, descendant = overlap[0]
        return Finding(
            OVERLAP,
            f"{display} holds {_rows_text(stored)}: {ancestor} is an ancestor of {descendant}. "
            f"`alembic current` shows only {descendant} (looks fine), but `alembic upgrade` fails with "
            f"`Requested revision {descendant} overlaps with other requested revisions {ancestor}`.{prefix_note}",
            [
                f"`alembic stamp --purge head` if the schema matches the code's head "
                f"(or delete the ancestor row: DELETE FROM {display} WHERE version_num = '{ancestor}')",
            ],
        ), pending
    if len(revs) > 1 and set(revs) != set(graph.heads):
        return Finding(
            BRANCHES,
            f"{display} holds {len(revs)} branch heads ({_rows_text(stored)}), none an ancestor of another; "
            f"`alembic upgrade head` would apply {len(pending)} revision(s) ({_rows_text(pending)}) and "
            "`alembic upgrade +1` says `Ambiguous upgrade from multiple current revisions`.",
            [
                "if those revisions never ran: `alembic upgrade head`",
                "if the schema already has them (upgrade fails with a duplicate-object error): "
                "`alembic stamp --purge head`",
            ],
        ), pending
    if pending:
        return Finding(
            f"behind by {len(pending)}",
            f"{display} holds {_rows_text(stored)}; the code's head is {_rows_text(graph.heads)}: "
            f"`alembic upgrade head` would apply {len(pending)} revision(s): {_rows_text(pending)}.{prefix_note}",
            [
                "if those migrations never ran: `alembic upgrade head`",
                "if the schema already has them (upgrade fails with a duplicate-object error): `alembic stamp head`",
            ],
        ), pending
    return Finding(AT_HEAD, f"{display} holds {_rows_text(stored)}, the code's head.{prefix_note}", []), pending


def _locked_finding(display: str, locks: list[LockHolder], readable: bool) -> Finding:
    held = [lk for lk in locks if lk.granted]
    waiting = [lk for lk in locks if not lk.granted]
    parts = [f"{_who(lk)} holds {lk.mode}" for lk in held]
    parts += [f"{_who(lk)} waits for {lk.mode} (every later query on the table queues behind it)" for lk in waiting]
    detail = f"{display} is locked: " + "; ".join(parts) + "."
    if held:
        detail += " A migration cannot write the table until that transaction ends"
        detail += "; `alembic current` hangs too." if any(lk.mode == "ACCESS EXCLUSIVE" for lk in held) else "."
    pids = [lk.pid for lk in locks if lk.pid is not None]
    repair = [
        "find the blocker: SELECT pid, application_name, state, xact_start, query FROM pg_stat_activity "
        f"WHERE pid = ANY(ARRAY[{', '.join(str(p) for p in pids)}]::int[]) "
        "(or pg_blocking_pids(<the waiting migration's pid>))",
    ]
    faults = sorted({lk.dbchaos_fault for lk in locks if lk.dbchaos_fault})
    for fid in faults:
        repair.append(f"the lock is dbchaos fault {fid}: it ends at its deadline, or now with `dbchaos abort {fid}`")
    others = [lk for lk in locks if lk.dbchaos_fault is None]
    if any(lk.pid is not None for lk in others):
        pid = next(lk.pid for lk in others if lk.pid is not None)
        repair.append(
            "end the blocker's transaction (commit or roll back in its application), or as a last resort "
            f"SELECT pg_terminate_backend({pid})"
        )
    if any(lk.pid is None for lk in others):
        repair.append("a prepared transaction holds it: find it in pg_prepared_xacts and COMMIT or ROLLBACK PREPARED")
    if not readable:
        detail += " dbchaos could not read the rows either."
    return Finding(LOCKED, detail, repair)


def _who(lk: LockHolder) -> str:
    if lk.pid is None:
        return "a prepared transaction"
    app = f", {lk.application_name}" if lk.application_name else ""
    user = f", user {lk.user}" if lk.user else ""
    return f"pid {lk.pid} ({lk.session_state or 'unknown state'}{app}{user})"


def _with_dbchaos(f: Finding, faults: list[JournalFault]) -> Finding:
    """Say which dbchaos fault set this state, and how it ends."""
    if f.state in (AT_HEAD, LOCKED):
        return f
    names = ", ".join(f"{j.fault_id} ({j.kind})" for j in faults)
    note = f" This state was set by dbchaos fault {names}."
    repair = []
    for j in faults:
        if j.owner_alive:
            repair.append(
                f"dbchaos reverts fault {j.fault_id} at its deadline; end it now with `dbchaos abort {j.fault_id}` "
                f"(or DELETE /v1/faults/{j.fault_id} on the server that owns it)"
            )
        else:
            repair.append(
                f"fault {j.fault_id}'s dbchaos instance ({j.owner}) is gone: `dbchaos recover --target <DSN>` "
                "restores the recorded state"
            )
    repair.append("or practise the repair below: dbchaos then keeps your state (the fault ends superseded)")
    return Finding(f.state, f.detail + note, repair + f.repair)
