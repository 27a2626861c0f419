"""Target databases: DSN handling (always masked when shown), connections that bound
themselves, and the sanity checks run before any fault.

A target is a DSN plus a name. Its DSN is a secret: only :func:`mask_dsn` output ever
leaves this module, in answers and in log lines alike.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import re
import secrets
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg import conninfo, sql

from dbchaos import optin
from dbchaos.audit import AuditedConnection
from dbchaos.errors import InvalidInput, TargetUnreachable, TargetUnusable

#: the code of the refusal when a pooling proxy sits between dbchaos and PostgreSQL
POOLER_DETECTED = "pooler_detected"
#: the custom setting the pooler probe writes into its own session (never read by anything else)
_PROBE_SETTING = "dbchaos.pooler_probe"

MIN_SERVER_VERSION_NUM = 140000
_SECRET_KEYS = ("password", "sslpassword")
_MASK = "***"


def parse_dsn(dsn: str) -> dict[str, str]:
    """Split a URI or ``key=value`` DSN into its parts; a clear 422 where it does not parse."""
    if "\x00" in dsn:  # libpq would read only up to it: another DSN than the one given
        raise InvalidInput("the target DSN contains a NUL byte", field="target")
    try:
        return {k: str(v) for k, v in conninfo.conninfo_to_dict(dsn).items() if v is not None}
    except (psycopg.ProgrammingError, UnicodeEncodeError) as exc:  # the latter: a lone surrogate
        raise InvalidInput("the target DSN does not parse as a PostgreSQL connection string", field="target") from exc


def mask_dsn(dsn: str) -> str:
    """The DSN with every secret replaced by ``***``, in ``key=value`` form."""
    try:
        parts = parse_dsn(dsn)
    except InvalidInput:
        return "<unparseable DSN>"
    for key in _SECRET_KEYS:
        if key in parts:
            parts[key] = _MASK
    return conninfo.make_conninfo("", **parts)


def describe_dsn(dsn: str) -> str:
    """A short ``user@host:port/dbname`` for messages; never contains a secret."""
    try:
        p = parse_dsn(dsn)
    except InvalidInput:
        return "<unparseable DSN>"
    host = p.get("host") or p.get("hostaddr") or "local socket"
    where = f"{host}:{p['port']}" if "port" in p else host
    user = p.get("user", "")
    return f"{user + '@' if user else ''}{where}/{p.get('dbname', '')}"


def scrub(text: str, dsn: str) -> str:
    """Remove the DSN's secrets from a free-text message (driver errors and the like)."""
    try:
        parts = parse_dsn(dsn)
    except InvalidInput:
        return text
    for key in _SECRET_KEYS:
        secret = parts.get(key)
        if secret:
            text = text.replace(secret, _MASK)
    return text


#: prefix of an object name as faults report it (``table:public.items``); no prefix means a table
_OBJECT_KIND = re.compile(r"([a-z_]+):(.+)", re.DOTALL)
_TABLE_KINDS = frozenset({"table", "version_table"})


@dataclass(frozen=True)
class HaltRules:
    """When dbchaos stops every fault on a target by itself (``None``: rule off).

    Evaluated by :mod:`dbchaos.engine.halt` on the engine's monitor snapshots; a rule trips
    when the observed value is *over* its limit.
    """

    #: sessions blocked (directly or behind others) by the target's dbchaos faults, all together
    max_blocked_sessions: int | None = None
    #: seconds the longest of those sessions has been waiting
    max_blocked_for_s: float | None = None
    #: seconds since the oldest active fault on the target became active
    max_fault_age_s: float | None = None
    #: client connections in use, in percent of the server's ``max_connections``
    max_connections_used_pct: float | None = None

    @property
    def any(self) -> bool:
        return any(getattr(self, f.name) is not None for f in dataclasses.fields(self))

    def or_defaults(self, defaults: HaltRules) -> HaltRules:
        """These rules, with ``defaults`` filling the ones this target leaves unset."""
        return HaltRules(
            **{
                f.name: getattr(defaults, f.name) if getattr(self, f.name) is None else getattr(self, f.name)
                for f in dataclasses.fields(self)
            }
        )


@dataclass(frozen=True)
class TargetPolicy:
    """What the operator allows on one target (from the targets file; empty = no limit).

    Names are ``schema.table`` exactly as in the catalog (case-sensitive, unquoted). A deny
    list always wins; once either allow list is set, a table must be in ``allow_tables`` or
    in a schema of ``allow_schemas``.
    """

    allow_schemas: tuple[str, ...] = ()
    deny_schemas: tuple[str, ...] = ()
    allow_tables: tuple[str, ...] = ()
    deny_tables: tuple[str, ...] = ()
    max_duration_s: float | None = None
    max_faults: int | None = None
    #: connection slots connection-exhaustion must leave free on this target at least
    connection_reserve: int = 0
    #: when dbchaos halts every fault on this target (docs/guard-rails.md)
    halt: HaltRules = field(default_factory=HaltRules)

    def refusal(self, obj: str) -> str | None:
        """Why ``obj`` (a fault's object name, e.g. ``table:public.items``) is not allowed, or ``None``."""
        m = _OBJECT_KIND.fullmatch(obj)
        kind, name = (m.group(1), m.group(2)) if m else ("table", obj)
        in_schemas = [s for s in self.deny_schemas if name.startswith(s + ".")]
        if in_schemas:
            return f"{name} is in schema {in_schemas[0]!r}, which deny_schemas lists"
        if kind in _TABLE_KINDS:
            if name in self.deny_tables:
                return f"table {name} is listed in deny_tables"
            if (self.allow_schemas or self.allow_tables) and not (
                name in self.allow_tables or any(name.startswith(s + ".") for s in self.allow_schemas)
            ):
                return f"table {name} is in neither allow_tables nor a schema of allow_schemas"
        elif (
            self.allow_schemas
            and not self.allow_tables
            and not any(name.startswith(s + ".") for s in self.allow_schemas)
        ):
            return f"{kind} {name} is not in a schema of allow_schemas"
        return None


@dataclass(frozen=True)
class Target:
    """A database dbchaos may inject faults into."""

    name: str
    dsn: str = field(repr=False)
    policy: TargetPolicy = field(default_factory=TargetPolicy)

    @property
    def masked_dsn(self) -> str:
        return mask_dsn(self.dsn)

    def connect_kwargs(self, application_name: str, *, connect_timeout_s: float = 3.0) -> dict[str, Any]:
        """Keyword arguments for psycopg's connect: tagged, keepalive'd, time-bounded."""
        kwargs: dict[str, Any] = {
            "application_name": application_name[:63],
            "connect_timeout": max(1, round(connect_timeout_s)),
            "autocommit": True,
        }
        host = parse_dsn(self.dsn).get("host", "")
        if host and not host.startswith("/"):
            kwargs.update(keepalives=1, keepalives_idle=5, keepalives_interval=2, keepalives_count=3)
        return kwargs

    async def connect(
        self, application_name: str, *, connect_timeout_s: float = 3.0, cursor_factory: Any = None
    ) -> psycopg.AsyncConnection[Any]:
        """Open an autocommit async connection tagged with ``application_name`` (``cursor_factory``:
        e.g. the audit trail's, see :mod:`dbchaos.audit`)."""
        extra = {"cursor_factory": cursor_factory} if cursor_factory is not None else {}
        try:
            return await AuditedConnection.connect(
                self.dsn,
                **self.connect_kwargs(application_name, connect_timeout_s=connect_timeout_s),
                **extra,
            )
        except psycopg.OperationalError as exc:
            raise TargetUnreachable(self.unreachable_message(exc)) from exc

    def unreachable_message(self, exc: BaseException) -> str:
        first = scrub(str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__, self.dsn)
        return f"cannot connect to target {self.name!r} ({describe_dsn(self.dsn)}): {first}"


@dataclass(frozen=True)
class TargetCheck:
    """What dbchaos found when it looked at a target."""

    name: str
    masked_dsn: str
    reachable: bool
    usable: bool
    problem: str | None = None
    server_version: str | None = None
    server_version_num: int | None = None
    in_recovery: bool | None = None
    read_only: bool | None = None
    checked_at: float = field(default_factory=time.time)
    #: whether the database carries dbchaos's opt-in marker (``None``: not known)
    opted_in: bool | None = None
    #: the server's ``max_connections`` (for the ``max_connections_used_pct`` halt rule)
    max_connections: int | None = None
    #: a pooling proxy between dbchaos and PostgreSQL: ``transaction``, ``statement``, ``session``
    #: or ``unknown`` (its mode could not be told); ``None``: none seen
    pooler: str | None = None
    #: the error code of ``problem`` (e.g. ``pooler_detected``); ``None``: ``target_unusable``
    problem_code: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "dsn": self.masked_dsn,
            "reachable": self.reachable,
            "usable": self.usable,
            "problem": self.problem,
            "problem_code": self.problem_code,
            "server_version": self.server_version,
            "server_version_num": self.server_version_num,
            "in_recovery": self.in_recovery,
            "read_only": self.read_only,
            "opted_in": self.opted_in,
            "pooler": self.pooler,
        }

    def raise_if_unusable(self) -> None:
        if not self.reachable:
            raise TargetUnreachable(self.problem or f"target {self.name!r} is unreachable")
        if not self.usable:
            raise TargetUnusable(self.problem or f"target {self.name!r} is not usable", code=self.problem_code)


def usability_problem(
    name: str, *, server_version_num: int, server_version: str, in_recovery: bool, read_only: bool
) -> str | None:
    """The reason a fault cannot work on a server with these properties, or ``None``."""
    if server_version_num < MIN_SERVER_VERSION_NUM:
        return (
            f"target {name!r} runs PostgreSQL {server_version}; dbchaos needs 14 or newer "
            "(for idle_session_timeout and client_connection_check_interval)"
        )
    if in_recovery:
        return f"target {name!r} is a replica in recovery (pg_is_in_recovery() is true); point dbchaos at the primary"
    if read_only:
        return f"target {name!r} is read-only (default_transaction_read_only is on); dbchaos needs a writable database"
    return None


#: One round trip tells whether faults can work: version, replica, read-only, the backend
#: that really serves this connection (a pooler hands out a made-up pid at connect) and
#: ``max_connections``.
CHECK_SQL = """
SELECT current_setting('server_version_num')::int,
       current_setting('server_version'),
       pg_is_in_recovery(),
       current_setting('default_transaction_read_only') = 'on',
       pg_backend_pid(),
       current_setting('max_connections')::int
"""


async def check_target(target: Target, *, connect_timeout_s: float = 3.0, cursor_factory: Any = None) -> TargetCheck:
    """Connect to the target and report whether faults can work there. Never raises.
    (``cursor_factory``: the audit trail's, for the statements of a server's health check.)"""
    try:
        async with asyncio.timeout(2 * connect_timeout_s + 4):
            conn = await target.connect(
                "dbchaos:check", connect_timeout_s=connect_timeout_s, cursor_factory=cursor_factory
            )
            try:
                cur = await conn.execute(CHECK_SQL)
                row = await cur.fetchone()
                assert row is not None
                check = check_from_row(target, row)
                if behind_proxy(conn, row):
                    pooler = await probe_pooler(
                        target, conn, application_name="dbchaos:check", connect_timeout_s=connect_timeout_s
                    )
                    return with_pooler(check, pooler)
                opted_in = (await optin.status(conn)).opted_in
            finally:
                await conn.close()
    except TargetUnreachable as exc:
        return TargetCheck(target.name, target.masked_dsn, reachable=False, usable=False, problem=exc.message)
    except (TimeoutError, psycopg.Error) as exc:
        return TargetCheck(
            target.name,
            target.masked_dsn,
            reachable=False,
            usable=False,
            problem=target.unreachable_message(exc)
            if str(exc)
            else f"cannot connect to target {target.name!r} ({describe_dsn(target.dsn)}): timed out",
        )
    return dataclasses.replace(check, opted_in=opted_in)


def check_from_row(target: Target, row: Any) -> TargetCheck:
    """The check of a reachable target from the row of :data:`CHECK_SQL`."""
    version_num, version, in_recovery, read_only = int(row[0]), str(row[1]), bool(row[2]), bool(row[3])
    problem = usability_problem(
        target.name,
        server_version_num=version_num,
        server_version=version,
        in_recovery=in_recovery,
        read_only=read_only,
    )
    return TargetCheck(
        target.name,
        target.masked_dsn,
        reachable=True,
        usable=problem is None,
        problem=problem,
        server_version=version,
        server_version_num=version_num,
        in_recovery=in_recovery,
        read_only=read_only,
        max_connections=int(row[5]),
    )


# ---- pooling proxies ------------------------------------------------------------------
#
# dbchaos's faults live in sessions: a lock held by an open transaction, session advisory
# locks, session settings (the server-side timeouts that bound every fault), and the pid of
# each session's backend (to watch it and, if need be, end it). A transaction-pooling proxy
# (PgBouncer, Odyssey, pgcat, ... in pool_mode=transaction) hands every transaction to
# whichever server connection is free: a session setting or advisory lock stays behind on a
# server connection other clients then use. Such proxies also answer the connect with a
# made-up backend pid (PgBouncer does in every pool mode), so comparing the pid the
# connection reported with ``pg_backend_pid()`` (one column of CHECK_SQL) finds them at no
# extra cost on a direct connection. Only then does :func:`probe_pooler` look closer.


def behind_proxy(conn: psycopg.AsyncConnection[Any], row: Any) -> bool:
    """Whether the backend pid ``conn`` reported at connect is not the one serving it
    (``row`` is :data:`CHECK_SQL`'s)."""
    return conn.info.backend_pid != int(row[4])


#: rounds of :func:`probe_pooler` before it concludes a session pool
PROBE_ROUNDS = 3


async def probe_pooler(
    target: Target, conn: psycopg.AsyncConnection[Any], *, application_name: str, connect_timeout_s: float
) -> tuple[str, str]:
    """The pool mode of the proxy in front of ``target`` and what showed it.

    ``conn`` (autocommit, idle) writes a session setting; a second connection then holds a
    transaction open while ``conn`` reads the setting back. Through a transaction pool the
    second connection usually gets ``conn``'s server connection (PgBouncer reuses the last
    one freed) and sees the setting, or else ``conn``'s next transaction runs on another
    backend without it; through a session pool neither happens, in any of
    :data:`PROBE_ROUNDS` rounds. A few round trips and one connection, paid only when a proxy
    is already known to be there.
    """
    try:
        other = await target.connect(application_name, connect_timeout_s=connect_timeout_s)
    except TargetUnreachable:
        return "unknown", "a second connection to tell it could not be opened"
    try:
        # Other clients of the proxy (dbchaos's own recovery, a spare opening) may take the
        # server connection ``conn`` just freed: a round without evidence proves nothing, a
        # session pool never gives any. So a few rounds.
        for _ in range(PROBE_ROUNDS):
            found = await _probe_round(conn, other)
            if found is not None:
                return found
        return "session", "the connection kept its backend and its session setting"
    finally:
        with contextlib.suppress(Exception):
            await other.close()


async def _probe_round(
    conn: psycopg.AsyncConnection[Any], other: psycopg.AsyncConnection[Any]
) -> tuple[str, str] | None:
    token = secrets.token_hex(8)
    cur = await conn.execute("SELECT pg_backend_pid(), set_config(%s, %s, false)", (_PROBE_SETTING, token))
    row = await cur.fetchone()
    assert row is not None
    first = int(row[0])
    try:
        cur = await other.execute(
            sql.SQL("BEGIN; SELECT pg_backend_pid(), current_setting({}, true)").format(sql.Literal(_PROBE_SETTING))
        )
        cur.nextset()  # past BEGIN's result
        seen = await cur.fetchone()
    except psycopg.Error:
        return "statement", "a transaction block was refused (statement pooling)"
    try:
        assert seen is not None
        if int(seen[0]) == first or seen[1] == token:
            return "transaction", (
                f"another client connection was served by the same PostgreSQL backend (pid {first}) and saw "
                "this connection's session setting"
            )
        cur = await conn.execute("SELECT pg_backend_pid(), current_setting(%s, true)", (_PROBE_SETTING,))
        again = await cur.fetchone()
        assert again is not None
        if int(again[0]) != first or again[1] != token:
            return "transaction", (
                f"two consecutive transactions on one connection ran on different PostgreSQL backends "
                f"(pid {first}, then {int(again[0])}) and the session setting of the first was gone"
            )
        return None
    finally:
        await other.execute("ROLLBACK")


def with_pooler(check: TargetCheck, pooler: tuple[str, str]) -> TargetCheck:
    """``check`` refused because of the pooling proxy :func:`probe_pooler` described."""
    mode, evidence = pooler
    if mode in ("session", "unknown"):
        # What is certain here: the backend pid the connection reported is made up (PgBouncer
        # does that in every pool mode), and dbchaos watches, and if need be ends, its
        # sessions by that pid. A session pool keeps sessions; that alone does not help.
        why = (
            "the backend pid a connection reports at connect is made up by the proxy, so dbchaos could not "
            "watch or end its own sessions"
        )
        kind = (
            "a connection pooler (session pooling)"
            if mode == "session"
            else f"a connection pooler (its pool mode is unknown: {evidence})"
        )
    else:
        why = (
            f"{evidence}: the session locks, settings and server-side timeouts every dbchaos fault relies on "
            "would not stay with dbchaos's connection, and could land on connections other clients use"
        )
        kind = f"a {mode}-pooling proxy (PgBouncer or similar, pool_mode={mode})"
    problem = (
        f"target {check.name!r} is reached through {kind}: {why}. Point dbchaos at PostgreSQL itself "
        "(the server's own host and port, not the pooler's)"
    )
    return dataclasses.replace(check, usable=False, problem=problem, problem_code=POOLER_DETECTED, pooler=mode)


def targets_by_name(targets: Mapping[str, Target], name: str | None, default: str) -> Target:
    """Resolve a requested target name (or the default)."""
    key = name or default
    try:
        return targets[key]
    except KeyError:
        raise InvalidInput(f"unknown target {key!r}; known: {', '.join(sorted(targets))}", field="target") from None
