"""Which fault kinds the connected role may run, and the grants it lacks.

dbchaos runs fine as a plain role (docs/least-privilege.md has the script). This module
reads the privileges PostgreSQL would check, from the catalog only (``has_table_privilege``,
``pg_has_role``, ``has_schema_privilege``, ``has_database_privilege``), and turns them
into a verdict per kind::

    {"ok": False, "missing": ["UPDATE on public.items (SELECT ... FOR UPDATE needs it; ...)"],
     "degraded": [...], "grants": ["GRANT UPDATE ON public.items TO dbchaos"]}

Three uses: :func:`capabilities` for ``/v1/health`` (role-level facts plus one aggregate
over the tables: no per-table list), :func:`check` for given kinds and parameters, and
:func:`explain` which turns PostgreSQL's 42501 (``permission denied for table items``)
into a 403 that names the grant to add. Nothing here writes; every check is one round
trip (two statements in a pipeline).

The rules, verified on PostgreSQL 15 and 18 (tests/test_privileges.py):

* ``LOCK TABLE``: up to 15, ACCESS SHARE needs SELECT, ROW EXCLUSIVE needs INSERT, UPDATE,
  DELETE or TRUNCATE, every other mode UPDATE, DELETE or TRUNCATE (UPDATE alone does not
  allow ACCESS SHARE there). From 16 a privilege allows every weaker mode too, and from
  17 MAINTAIN allows every mode. Ownership (or membership in the owner role) gives all.
* ``SELECT ... FOR UPDATE / NO KEY UPDATE / SHARE / KEY SHARE``: SELECT on the columns read
  and UPDATE on at least one column, for every strength.
* Renaming a table or an index, and creating an index, need ownership *and* CREATE on the
  schema; renaming or adding a column needs ownership only; creating a table needs CREATE
  on the schema.
* Other roles' sessions in ``pg_stat_activity`` show only pid and user without
  ``pg_read_all_stats`` (even ``backend_type`` is null), so dbchaos cannot see whom a fault
  blocks or count the connection slots they use; ``pg_locks`` stays fully visible.
* ``pg_terminate_backend`` of the role's own sessions needs nothing; ``pg_signal_backend``
  is needed only to end another role's sessions.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import psycopg

from dbchaos import errors
from dbchaos.engine.pgerrors import translate
from dbchaos.faults.identifiers import SYSTEM_SCHEMAS, table_ref
from dbchaos.faults.names import LOCK_MODES

if TYPE_CHECKING:
    from dbchaos.engine.control import ControlChannel
    from dbchaos.faults.base import Fault

DOC = "docs/least-privilege.md"

#: kinds that write dbchaos.journal (and need its schema)
JOURNALED_KINDS = frozenset(
    {
        "unknown-revision",
        "future-revision",
        "missing-version",
        "behind",
        "multiple-heads",
        "missing-table",
        "hidden-object",
        "conflicting-object",
    }
)
#: kinds that only rewrite the rows of the version table
VERSION_ROW_KINDS = frozenset({"unknown-revision", "future-revision", "missing-version", "behind", "multiple-heads"})
#: every kind this module knows, in the registry's order
KINDS: tuple[str, ...] = (
    "table-lock",
    "row-lock",
    "advisory-lock",
    "idle-transaction",
    "connection-exhaustion",
    "unknown-revision",
    "future-revision",
    "missing-version",
    "behind",
    "multiple-heads",
    "locked-version-table",
    "migration-lock-queue",
    "missing-table",
    "hidden-object",
    "conflicting-object",
)
_TABLE_PRIVILEGES = ("SELECT", "INSERT", "UPDATE", "DELETE", "TRUNCATE", "MAINTAIN")

STATS_DEGRADED = (
    "without pg_read_all_stats dbchaos sees only its own role's sessions: other roles' sessions blocked by a "
    "fault are missing from impact (blocked_count, lock tree, blast radius), so halt rules on blocked sessions "
    "cannot trip on them (GRANT pg_read_all_stats TO {role})"
)
SLOTS_DEGRADED = (
    "without pg_read_all_stats other roles' sessions show no backend type, so connection-exhaustion counts every "
    "session with a user as a used slot (the logical replication launcher and parallel workers too): it may leave "
    "a slot or two more free than asked (GRANT pg_read_all_stats TO {role})"
)


# ---- facts -------------------------------------------------------------------------


@dataclass(frozen=True)
class RoleFacts:
    """What the connected role may do in this database, independent of any table."""

    role: str
    database: str
    server_version_num: int
    superuser: bool
    read_all_stats: bool
    signal_backend: bool
    connect: bool
    create_in_database: bool
    connection_limit: int | None
    database_connection_limit: int | None
    advisory_locks: bool
    schema_exists: bool
    schema_usage: bool
    schema_create: bool
    journal_exists: bool
    journal_usable: bool
    opt_in_exists: bool

    @property
    def journal_problem(self) -> str | None:
        """What the role lacks to write the journal (``None``: it can)."""
        if self.journal_exists:
            if self.schema_usage and self.journal_usable:
                return None
            return "USAGE on schema dbchaos and SELECT, INSERT, UPDATE on dbchaos.journal (the fault journal)"
        if self.schema_exists:
            if self.schema_usage and self.schema_create:
                return None
            return "USAGE and CREATE on schema dbchaos (dbchaos creates its journal there on the first migration fault)"
        if self.create_in_database:
            return None
        return (
            f"CREATE on database {self.database} (for the schema dbchaos), or a schema dbchaos it may create "
            "tables in (see dbchaos init)"
        )

    def journal_grants(self) -> list[str]:
        r = quote_ident(self.role)
        if self.journal_exists:
            return [
                f"GRANT USAGE ON SCHEMA dbchaos TO {r}",
                f"GRANT SELECT, INSERT, UPDATE ON dbchaos.journal TO {r}",
            ]
        if self.schema_exists:
            return [f"GRANT USAGE, CREATE ON SCHEMA dbchaos TO {r}"]
        return [f"CREATE SCHEMA dbchaos; GRANT USAGE, CREATE ON SCHEMA dbchaos TO {r}"]

    def as_dict(self) -> dict[str, Any]:
        return {
            "role": self.role,
            "superuser": self.superuser,
            "pg_read_all_stats": self.read_all_stats,
            "pg_signal_backend": self.signal_backend,
            "database": {"name": self.database, "connect": self.connect, "create": self.create_in_database},
            "connection_limit": self.connection_limit,
            "database_connection_limit": self.database_connection_limit,
            "dbchaos_schema": {
                "exists": self.schema_exists,
                "usage": self.schema_usage,
                "create": self.schema_create,
                "journal_exists": self.journal_exists,
                "journal_usable": self.journal_problem is None,
            },
        }


@dataclass(frozen=True)
class TableFacts:
    """The role's rights on one named table (or, for a name that does not exist, its schema)."""

    name: str
    exists: bool
    schema: str | None = None
    owner: str | None = None
    owned: bool = False
    schema_usage: bool = False
    schema_create: bool = False
    privileges: frozenset[str] = frozenset()
    any_select: bool = False
    any_update: bool = False
    owner_is_superuser: bool = False

    def has(self, *privileges: str) -> bool:
        return any(p in self.privileges for p in privileges)


@dataclass(frozen=True)
class Verdict:
    """Whether a kind can run as the connected role, and what to grant where it cannot."""

    ok: bool
    missing: tuple[str, ...] = ()
    degraded: tuple[str, ...] = ()
    grants: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"ok": self.ok, "missing": list(self.missing), "degraded": list(self.degraded)}
        if self.grants:
            out["grants"] = list(self.grants)
        if self.notes:
            out["notes"] = list(self.notes)
        return out


@dataclass
class _Needs:
    """Collects a verdict: missing privileges (with the GRANT for each) and degradations."""

    missing: list[str] = field(default_factory=list)
    degraded: list[str] = field(default_factory=list)
    grants: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def need(self, what: str, *grants: str) -> None:
        if what not in self.missing:
            self.missing.append(what)
        for g in grants:
            if g not in self.grants:
                self.grants.append(g)

    def verdict(self) -> Verdict:
        return Verdict(
            not self.missing, tuple(self.missing), tuple(self.degraded), tuple(self.grants), tuple(self.notes)
        )


# ---- SQL ---------------------------------------------------------------------------

_ROLE_SQL = """
SELECT current_user, current_database(), current_setting('server_version_num')::int, r.rolsuper,
       pg_has_role('pg_read_all_stats', 'USAGE'), pg_has_role('pg_signal_backend', 'USAGE'),
       has_database_privilege(current_database(), 'CONNECT'), has_database_privilege(current_database(), 'CREATE'),
       r.rolconnlimit, d.datconnlimit,
       has_function_privilege('pg_catalog.pg_advisory_lock(bigint)', 'EXECUTE')
         AND has_function_privilege('pg_catalog.pg_advisory_lock(integer, integer)', 'EXECUTE'),
       s.oid IS NOT NULL, coalesce(has_schema_privilege(s.oid, 'USAGE'), false),
       coalesce(has_schema_privilege(s.oid, 'CREATE'), false),
       j.oid IS NOT NULL,
       coalesce(has_table_privilege(j.oid, 'SELECT') AND has_table_privilege(j.oid, 'INSERT')
                AND has_table_privilege(j.oid, 'UPDATE'), false),
       o.oid IS NOT NULL
FROM pg_catalog.pg_roles r
JOIN pg_catalog.pg_database d ON d.datname = current_database()
LEFT JOIN pg_catalog.pg_namespace s ON s.nspname = 'dbchaos'
LEFT JOIN pg_catalog.pg_class j ON j.relnamespace = s.oid AND j.relname = 'journal' AND j.relkind IN ('r', 'p')
LEFT JOIN pg_catalog.pg_class o ON o.relnamespace = s.oid AND o.relname = 'opt_in' AND o.relkind IN ('r', 'p')
WHERE r.rolname = current_user
"""

# Names are matched in the catalog, never through regclass input with a schema: that
# would fail with 42501 on a schema the role may not use, instead of saying so.
_TABLES_SQL = """
SELECT t.ord, c.oid IS NOT NULL, coalesce(n.nspname, t.nsp, current_schema()), pg_get_userbyid(c.relowner),
       coalesce(pg_has_role(c.relowner, 'USAGE'), false),
       coalesce(has_schema_privilege(coalesce(n.oid, sn.oid), 'USAGE'), false),
       coalesce(has_schema_privilege(coalesce(n.oid, sn.oid), 'CREATE'), false),
       {privs},
       coalesce(has_any_column_privilege(c.oid, 'SELECT'), false),
       coalesce(has_any_column_privilege(c.oid, 'UPDATE'), false),
       coalesce((SELECT rolsuper FROM pg_catalog.pg_roles WHERE oid = c.relowner), false)
FROM unnest(%s::text[], %s::text[]) WITH ORDINALITY AS t(nsp, rel, ord)
LEFT JOIN LATERAL (
    SELECT c.oid, c.relowner, c.relnamespace FROM pg_catalog.pg_class c
    JOIN pg_catalog.pg_namespace cn ON cn.oid = c.relnamespace
    WHERE c.relname = t.rel AND c.relkind IN ('r', 'p')
      AND CASE WHEN t.nsp IS NULL THEN c.oid = to_regclass(quote_ident(t.rel)) ELSE cn.nspname = t.nsp END
) c ON true
LEFT JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
LEFT JOIN pg_catalog.pg_namespace sn ON c.oid IS NULL AND sn.nspname = coalesce(t.nsp, current_schema())
ORDER BY t.ord
"""

# One aggregate over the user tables the role can see: how many allow what (no list).
_ANYWHERE_SQL = """
SELECT count(*)::int,
       count(*) FILTER (WHERE sel)::int,
       count(*) FILTER (WHERE sel AND upd)::int,
       count(*) FILTER (WHERE {lock_any})::int,
       count(*) FILTER (WHERE own)::int,
       count(*) FILTER (WHERE own AND screate)::int,
       (SELECT count(*) FROM pg_catalog.pg_namespace n
        WHERE n.nspname <> ALL(%s) AND n.nspname NOT LIKE 'pg\\_%%'
          AND has_schema_privilege(n.oid, 'USAGE') AND has_schema_privilege(n.oid, 'CREATE'))::int
FROM (
    SELECT c.oid,
           has_any_column_privilege(c.oid, 'SELECT') AS sel,
           has_any_column_privilege(c.oid, 'UPDATE') AS upd,
           pg_has_role(c.relowner, 'USAGE') AS own,
           has_schema_privilege(n.oid, 'CREATE') AS screate
    FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
    WHERE c.relkind IN ('r', 'p') AND NOT c.relispartition
      AND n.nspname <> ALL(%s) AND n.nspname NOT LIKE 'pg\\_%%' AND has_schema_privilege(n.oid, 'USAGE')
) AS t
"""


def _table_privileges(version_num: int) -> tuple[str, ...]:
    return _TABLE_PRIVILEGES if version_num >= 170000 else _TABLE_PRIVILEGES[:-1]


def _privilege_columns(version_num: int, oid: str = "c.oid") -> str:
    return ", ".join(f"coalesce(has_table_privilege({oid}, '{p}'), false)" for p in _table_privileges(version_num))


def _role_from_row(row: Any) -> RoleFacts:
    return RoleFacts(
        role=str(row[0]),
        database=str(row[1]),
        server_version_num=int(row[2]),
        superuser=bool(row[3]),
        read_all_stats=bool(row[4]),
        signal_backend=bool(row[5]),
        connect=bool(row[6]),
        create_in_database=bool(row[7]),
        connection_limit=None if int(row[8]) < 0 else int(row[8]),
        database_connection_limit=None if int(row[9]) < 0 else int(row[9]),
        advisory_locks=bool(row[10]),
        schema_exists=bool(row[11]),
        schema_usage=bool(row[12]),
        schema_create=bool(row[13]),
        journal_exists=bool(row[14]),
        journal_usable=bool(row[15]),
        opt_in_exists=bool(row[16]),
    )


def _server_version(conn: psycopg.AsyncConnection[Any]) -> int:
    return int(conn.info.server_version)


async def role_facts(conn: psycopg.AsyncConnection[Any]) -> RoleFacts:
    """The connected role's database-wide rights (one statement, reads only)."""
    row = await (await conn.execute(_ROLE_SQL)).fetchone()
    if row is None:  # current_user always has a pg_roles row
        raise errors.TargetUnusable("the connected role is not in pg_roles")
    return _role_from_row(row)


async def _facts(
    conn: psycopg.AsyncConnection[Any], names: list[tuple[str | None, str]]
) -> tuple[RoleFacts, dict[tuple[str | None, str], TableFacts]]:
    """Role facts and the facts of ``names`` ((schema or None, table)), in one round trip."""
    version = _server_version(conn)
    privs = _table_privileges(version)
    async with conn.pipeline():
        role_cur = await conn.execute(_ROLE_SQL)
        table_cur = (
            await conn.execute(
                _TABLES_SQL.format(privs=_privilege_columns(version)),
                ([n[0] for n in names], [n[1] for n in names]),
            )
            if names
            else None
        )
    row = await role_cur.fetchone()
    if row is None:
        raise errors.TargetUnusable("the connected role is not in pg_roles")
    tables: dict[tuple[str | None, str], TableFacts] = {}
    if table_cur is not None:
        for r in await table_cur.fetchall():
            key = names[int(r[0]) - 1]
            flags = r[7 : 7 + len(privs)]
            exists = bool(r[1])
            tables[key] = TableFacts(
                name=f"{r[2]}.{key[1]}",
                exists=exists,
                schema=str(r[2]),
                owner=str(r[3]) if r[3] is not None else None,
                owned=bool(r[4]),
                schema_usage=bool(r[5]),
                schema_create=bool(r[6]),
                privileges=frozenset(p for p, f in zip(privs, flags, strict=True) if f),
                any_select=bool(r[7 + len(privs)]),
                any_update=bool(r[8 + len(privs)]),
                owner_is_superuser=bool(r[9 + len(privs)]),
            )
    return _role_from_row(row), tables


# ---- rules -------------------------------------------------------------------------


def lock_privileges(mode: str, version_num: int) -> tuple[str, ...]:
    """The table privileges any one of which lets a role ``LOCK TABLE ... IN <mode> MODE``
    (ownership gives them all), the least powerful first: MAINTAIN (17+) lets a role lock
    and vacuum a table but not change its data."""
    if mode not in LOCK_MODES:
        raise ValueError(f"not a lock mode: {mode!r}")
    rank = LOCK_MODES.index(mode)
    writes = ("UPDATE", "DELETE", "TRUNCATE")
    if version_num < 160000:  # each privilege allows its own modes only
        if mode == "ACCESS SHARE":
            return ("SELECT",)
        if mode == "ROW EXCLUSIVE":
            return ("INSERT", *writes)
        return writes
    maintain: tuple[str, ...] = ("MAINTAIN",) if version_num >= 170000 else ()
    if rank == 0:
        return ("SELECT", *maintain, "INSERT", *writes)
    if rank <= LOCK_MODES.index("ROW EXCLUSIVE"):
        return (*maintain, "INSERT", *writes)
    return (*maintain, *writes)


def quote_ident(name: str) -> str:
    """``name`` as SQL would need it written (quoted only where needed), for GRANT hints."""
    if name and name == name.lower() and name.replace("_", "a").isalnum() and not name[0].isdigit():
        return name
    return '"' + name.replace('"', '""') + '"'


def _qualified(t: TableFacts) -> str:
    schema, _, table = t.name.partition(".")
    return f"{quote_ident(schema)}.{quote_ident(table)}"


def _schema_usage(n: _Needs, t: TableFacts, role: str) -> bool:
    if t.schema_usage:
        return True
    n.need(f"USAGE on schema {t.schema}", f"GRANT USAGE ON SCHEMA {quote_ident(t.schema or '')} TO {role}")
    return False


def _need_lock(n: _Needs, t: TableFacts, mode: str, role: RoleFacts, why: str | None = None) -> None:
    r = quote_ident(role.role)
    if not _schema_usage(n, t, r):
        return
    allowed = lock_privileges(mode, role.server_version_num)
    if t.has(*allowed):
        return
    first, rest = allowed[0], allowed[1:]
    also = f"; {', '.join(rest[:-1])}{' or ' if len(rest) > 1 else ''}{rest[-1]} also allow it" if rest else ""
    n.need(
        f"{first} on {t.name} ({why or f'LOCK TABLE ... IN {mode} MODE'} needs it{also})",
        f"GRANT {first} ON {_qualified(t)} TO {r}",
    )


def _need(n: _Needs, t: TableFacts, privilege: str, role: RoleFacts, why: str) -> None:
    r = quote_ident(role.role)
    if not _schema_usage(n, t, r):
        return
    if (privilege == "SELECT" and t.any_select) or (privilege == "UPDATE" and t.any_update) or t.has(privilege):
        return
    n.need(f"{privilege} on {t.name} ({why})", f"GRANT {privilege} ON {_qualified(t)} TO {r}")


def _need_owner(n: _Needs, t: TableFacts, role: RoleFacts, why: str, *, schema_create: bool) -> None:
    r = quote_ident(role.role)
    if not _schema_usage(n, t, r):
        return
    if not t.owned:
        owner = t.owner or "its owner"
        if t.owner_is_superuser:  # never make dbchaos a member of a superuser role
            n.need(
                f"ownership of {t.name} ({why}; it belongs to the superuser {owner}: give it to an application "
                f"owner role and make {role.role} a member of that role)",
                f"ALTER TABLE {_qualified(t)} OWNER TO <app_owner>; GRANT <app_owner> TO {r}",
            )
        else:
            n.need(
                f"ownership of {t.name} ({why}; it belongs to {owner}: make {role.role} a member of that role)",
                f"GRANT {quote_ident(owner)} TO {r}",
            )
    if schema_create and not t.schema_create:
        n.need(
            f"CREATE on schema {t.schema} ({why} needs it, besides ownership)",
            f"GRANT CREATE ON SCHEMA {quote_ident(t.schema or '')} TO {r}",
        )


def _journal(n: _Needs, role: RoleFacts) -> None:
    problem = role.journal_problem
    if problem is not None:
        n.need(problem, *role.journal_grants())


def _common(n: _Needs, role: RoleFacts) -> None:
    r = quote_ident(role.role)
    if not role.connect:
        n.need(f"CONNECT on database {role.database}", f"GRANT CONNECT ON DATABASE {quote_ident(role.database)} TO {r}")
    if not role.read_all_stats:
        n.degraded.append(STATS_DEGRADED.format(role=r))


def _names(kind: str, params: Mapping[str, Any]) -> dict[str, list[tuple[str | None, str]]]:
    """The tables a request names, by role: ``tables`` (locked or read), ``table``, ``version``."""

    def ref(value: Any, field_name: str) -> tuple[str | None, str] | None:
        try:
            parts = table_ref(value, field_name)
        except errors.InvalidInput:
            return None
        return (parts[0], parts[1]) if len(parts) == 2 else (None, parts[0])

    out: dict[str, list[tuple[str | None, str]]] = {"tables": [], "table": [], "version": []}
    for i, t in enumerate(params.get("tables") or []):
        if (r := ref(t, f"params.tables.{i}")) is not None:
            out["tables"].append(r)
    if params.get("table") is not None and (r := ref(params["table"], "params.table")) is not None:
        out["table"].append(r)
    if kind in JOURNALED_KINDS or kind == "locked-version-table":
        schema = params.get("version_table_schema") or "public"
        name = params.get("version_table") or "alembic_version"
        if isinstance(schema, str) and isinstance(name, str):
            out["version"].append((schema, name))
    return out


def verdict(
    kind: str,
    params: Mapping[str, Any],
    role: RoleFacts,
    tables: Mapping[tuple[str | None, str], TableFacts],
) -> Verdict:
    """Whether ``kind`` with ``params`` can run as ``role`` on ``tables`` (pure: no I/O).

    Tables that do not exist are skipped (the kind itself answers 422 for those), except
    where the kind creates them (conflicting-object needs CREATE on their schema)."""
    n = _Needs()
    _common(n, role)
    names = _names(kind, params)

    def facts(key: str) -> list[TableFacts]:
        return [t for k in names[key] if (t := tables.get(k)) is not None and t.exists]

    if kind == "table-lock":
        mode = str(params.get("mode") or "ACCESS EXCLUSIVE")
        for t in facts("tables"):
            _need_lock(n, t, mode, role)
    elif kind == "row-lock":
        strength = str(params.get("strength") or "FOR UPDATE")
        for t in facts("table"):
            _need(n, t, "SELECT", role, f"SELECT ... {strength} reads the key columns")
            _need(n, t, "UPDATE", role, f"SELECT ... {strength} needs it for every strength; one column is enough")
    elif kind == "advisory-lock":
        if not role.advisory_locks:
            r = quote_ident(role.role)
            n.need(
                "EXECUTE on pg_advisory_lock (revoked from PUBLIC here)",
                f"GRANT EXECUTE ON FUNCTION pg_advisory_lock(bigint), pg_advisory_lock(integer, integer), "
                f"pg_advisory_lock_shared(bigint), pg_advisory_lock_shared(integer, integer) TO {r}",
            )
    elif kind == "idle-transaction":
        for t in facts("tables"):
            _need(n, t, "SELECT", role, "the idle transaction reads it")
    elif kind == "connection-exhaustion":
        if not role.read_all_stats:
            n.degraded.append(SLOTS_DEGRADED.format(role=quote_ident(role.role)))
        if role.connection_limit is not None:
            n.degraded.append(
                f"the role's CONNECTION LIMIT {role.connection_limit} caps it below the server's slots "
                f"(ALTER ROLE {quote_ident(role.role)} CONNECTION LIMIT -1)"
            )
        if role.database_connection_limit is not None:
            n.degraded.append(
                f"database {role.database} has CONNECTION LIMIT {role.database_connection_limit}: "
                "dbchaos can take at most that many sessions in it"
            )
    elif kind == "locked-version-table":
        mode = str(params.get("mode") or "ACCESS EXCLUSIVE")
        for t in facts("version") + facts("tables"):
            _need_lock(n, t, mode, role)
    elif kind == "migration-lock-queue":
        for t in facts("table"):
            _need(n, t, "SELECT", role, "the idle reader reads it")
            _need_lock(n, t, "ACCESS EXCLUSIVE", role, "the queued LOCK TABLE ... IN ACCESS EXCLUSIVE MODE")
    elif kind in JOURNALED_KINDS:
        _journal(n, role)
        _journaled(n, kind, params, role, facts("version"), facts("table"), names, tables)
    else:
        n.notes.append(f"dbchaos has no privilege rules for kind {kind!r}")
    return n.verdict()


def _journaled(
    n: _Needs,
    kind: str,
    params: Mapping[str, Any],
    role: RoleFacts,
    version: list[TableFacts],
    table: list[TableFacts],
    names: Mapping[str, list[tuple[str | None, str]]],
    tables: Mapping[tuple[str | None, str], TableFacts],
) -> None:
    if kind in VERSION_ROW_KINDS:
        for t in version:
            _need(n, t, "SELECT", role, "the fault reads the version rows")
            _need(n, t, "INSERT", role, "the fault writes the version rows")
            _need(n, t, "DELETE", role, "the fault rewrites the version rows")
            _need_lock(n, t, "SHARE ROW EXCLUSIVE", role, "locking the version table while it is rewritten")
        return
    if kind == "missing-table":
        for t in version:
            _need_owner(n, t, role, "renaming the version table", schema_create=True)
        return
    for t in version:  # hidden-object and conflicting-object record the revision they ran at
        _need(n, t, "SELECT", role, "the fault records the stored revision")
    if kind == "hidden-object":
        column = params.get("column") is not None
        for t in table:
            _need_owner(
                n,
                t,
                role,
                "renaming a column" if column else "renaming the table and its indexes",
                schema_create=not column,
            )
        return
    # conflicting-object
    obj = params.get("object")
    if obj == "table":
        r = quote_ident(role.role)
        for new in (found for key in names["table"] if (found := tables.get(key)) is not None and not found.exists):
            if _schema_usage(n, new, r) and not new.schema_create:
                n.need(
                    f"CREATE on schema {new.schema} (conflicting-object creates the table there)",
                    f"GRANT CREATE ON SCHEMA {quote_ident(new.schema or '')} TO {r}",
                )
    elif obj in ("column", "index"):
        for t in table:
            _need_owner(
                n,
                t,
                role,
                "adding a column" if obj == "column" else "creating an index",
                schema_create=obj == "index",
            )


# ---- entry points ------------------------------------------------------------------


async def check(
    conn: psycopg.AsyncConnection[Any], requests: Mapping[str, Mapping[str, Any]]
) -> dict[str, dict[str, Any]]:
    """``{kind: verdict}`` for ``{kind: params}`` on the database ``conn`` is connected to."""
    wanted: list[tuple[str | None, str]] = []
    for kind, params in requests.items():
        for keys in _names(kind, params).values():
            wanted.extend(k for k in keys if k not in wanted)
    role, tables = await _facts(conn, wanted)
    return {kind: verdict(kind, params, role, tables).as_dict() for kind, params in requests.items()}


@dataclass(frozen=True)
class Reach:
    """How many of the user tables the role can see allow what (one aggregate query)."""

    tables: int
    readable: int
    row_lockable: int
    lockable_any_mode: int
    owned: int
    renamable: int
    creatable_schemas: int

    def as_dict(self) -> dict[str, int]:
        return {
            "tables": self.tables,
            "readable": self.readable,
            "row_lockable": self.row_lockable,
            "lockable_in_any_mode": self.lockable_any_mode,
            "owned": self.owned,
            "renamable": self.renamable,
            "schemas_with_create": self.creatable_schemas,
        }


def _lock_any_sql(version_num: int) -> str:
    """``t.oid`` may be locked in every mode (hence in ACCESS EXCLUSIVE)."""
    return " OR ".join(f"has_table_privilege(t.oid, '{p}')" for p in lock_privileges("ACCESS EXCLUSIVE", version_num))


async def capabilities(conn: psycopg.AsyncConnection[Any]) -> dict[str, Any]:
    """For ``/v1/health``: the role's database-wide facts and, per kind, whether it can run
    with its default parameters on at least one table (no per-table list; one round trip)."""
    version = _server_version(conn)
    system = sorted(SYSTEM_SCHEMAS)
    anywhere_sql = _ANYWHERE_SQL.format(lock_any=_lock_any_sql(version))
    version_key: tuple[str | None, str] = ("public", "alembic_version")
    async with conn.pipeline():
        role_cur = await conn.execute(_ROLE_SQL)
        reach_cur = await conn.execute(anywhere_sql, (system, system))
        table_cur = await conn.execute(
            _TABLES_SQL.format(privs=_privilege_columns(version)), ([version_key[0]], [version_key[1]])
        )
    role_row = await role_cur.fetchone()
    reach_row = await reach_cur.fetchone()
    table_row = await table_cur.fetchone()
    assert role_row is not None and reach_row is not None and table_row is not None
    role = _role_from_row(role_row)
    reach = Reach(*(int(v) for v in reach_row))
    privs = _table_privileges(version)
    vt = TableFacts(
        name="public.alembic_version",
        exists=bool(table_row[1]),
        schema=str(table_row[2]),
        owner=str(table_row[3]) if table_row[3] is not None else None,
        owned=bool(table_row[4]),
        schema_usage=bool(table_row[5]),
        schema_create=bool(table_row[6]),
        privileges=frozenset(p for p, f in zip(privs, table_row[7 : 7 + len(privs)], strict=True) if f),
        any_select=bool(table_row[7 + len(privs)]),
        any_update=bool(table_row[8 + len(privs)]),
        owner_is_superuser=bool(table_row[9 + len(privs)]),
    )
    kinds = {k: _role_level(k, role, reach, vt).as_dict() for k in KINDS}
    return {
        **role.as_dict(),
        "tables": reach.as_dict(),
        "kinds": kinds,
        "cannot_run": [k for k, v in kinds.items() if not v["ok"]],
        "docs": DOC,
    }


def _role_level(kind: str, role: RoleFacts, reach: Reach, vt: TableFacts) -> Verdict:
    """A kind's verdict from database-wide facts, with its default parameters."""
    r = quote_ident(role.role)
    n = _Needs()
    _common(n, role)
    per_table = "on the tables to target"

    def nowhere(what: str, grant: str) -> None:
        n.need(f"{what} {per_table}: none of the {reach.tables} table(s) {role.role} can see allows it", grant)

    strong = lock_privileges("ACCESS EXCLUSIVE", role.server_version_num)
    strong_text = f"{strong[0]} (or {', '.join(strong[1:])})"
    if kind == "table-lock":
        if reach.lockable_any_mode == 0:
            nowhere(f"{strong_text}, for ACCESS EXCLUSIVE (the default mode)", f"GRANT {strong[0]} ON <table> TO {r}")
            if reach.readable:
                n.notes.append(f"ACCESS SHARE is possible on {reach.readable} table(s) (SELECT)")
    elif kind == "row-lock":
        if reach.row_lockable == 0:
            nowhere("SELECT and UPDATE (one column is enough)", f"GRANT SELECT, UPDATE ON <table> TO {r}")
    elif kind == "idle-transaction":
        if reach.readable == 0:
            n.notes.append("with no table it may read, the idle transaction holds only its snapshot (tables=[])")
    elif kind == "migration-lock-queue":
        if reach.lockable_any_mode == 0 or reach.readable == 0:
            nowhere(f"SELECT and {strong_text}", f"GRANT SELECT, {strong[0]} ON <table> TO {r}")
    elif kind in ("connection-exhaustion", "advisory-lock"):
        return verdict(kind, {}, role, {})
    elif kind == "locked-version-table":
        if vt.exists:
            _need_lock(n, vt, "ACCESS EXCLUSIVE", role)
        else:
            n.notes.append("no public.alembic_version here (name another with version_table)")
    elif kind in JOURNALED_KINDS:
        _journal(n, role)
        if kind in VERSION_ROW_KINDS or kind == "missing-table":
            if vt.exists:
                _journaled(n, kind, {}, role, [vt], [], {"table": []}, {})
            else:
                n.notes.append("no public.alembic_version here (name another with version_table)")
        elif kind == "hidden-object" and reach.renamable == 0:
            if reach.owned == 0:
                nowhere("ownership (membership in the tables' owner role)", f"GRANT <owner role> TO {r}")
            else:
                nowhere("CREATE on the table's schema, besides ownership", f"GRANT CREATE ON SCHEMA <schema> TO {r}")
        elif kind == "conflicting-object" and reach.creatable_schemas == 0 and reach.owned == 0:
            n.need(
                "CREATE on a schema (object=table) or ownership of the table (object=column or index)",
                f"GRANT CREATE ON SCHEMA <schema> TO {r}",
            )
    return n.verdict()


async def explain(
    channel: ControlChannel, fault: Fault[Any], exc: errors.DbChaosError | psycopg.Error
) -> errors.DbChaosError:
    """For an ``insufficient_privilege`` failure of ``fault`` (PostgreSQL's 42501, or a kind's
    own check): a 403 that names what to grant.

    Runs only on that failure path (never before an inject: it costs no round trip to a
    fault that works), on the control connection. Any other error, or a failure to explain,
    comes back as it was (a driver error translated by SQLSTATE)."""
    if isinstance(exc, psycopg.Error):
        exc = translate(exc, f"{fault.kind} was refused")
    if exc.code != "insufficient_privilege":
        return exc
    kind, params = fault.kind, fault.params.model_dump(mode="json")

    async def run(conn: psycopg.AsyncConnection[Any]) -> tuple[RoleFacts, Verdict]:
        names = [k for keys in _names(kind, params).values() for k in keys]
        role, tables = await _facts(conn, list(dict.fromkeys(names)))
        return role, verdict(kind, params, role, tables)

    try:
        role, v = await channel.run(run)
    except (errors.DbChaosError, psycopg.Error):
        return exc
    if v.ok:  # PostgreSQL refused something these rules do not know of
        return errors.Forbidden(
            f"{exc.message}; see {DOC} for the grants each kind needs",
            code="insufficient_privilege",
            field=exc.field,
            extra=exc.extra,
        )
    how = f"; to allow it, an administrator runs: {'; '.join(v.grants)}" if v.grants else ""
    return errors.Forbidden(
        f"{kind} needs privileges that role {role.role} lacks: {'; '.join(v.missing)}{how} (see {DOC})",
        code="insufficient_privilege",
        field=exc.field,
        extra={**exc.extra, "missing": list(v.missing), "grants": list(v.grants), "postgres_error": exc.message},
    )
