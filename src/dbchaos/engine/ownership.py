"""Which dbchaos instance a session on a target belongs to, and whether that instance lives.

Every session dbchaos opens carries its instance id in ``application_name``:

* ``dbchaos:<instance>`` — the control session, which holds the instance's owner lock
  (the session advisory lock ``(OWNER_LOCK_CLASS, owner_key(instance))``, DESIGN §2);
* ``dbchaos:<instance>:spare``, ``…:journal``, ``…:recover``, ``…:probe`` — warm spares, reused
  sessions of journaled faults between their transactions, recovery, the pooler probe;
* ``dbchaos:<fault id>`` — a fault's sessions. A fault id is a UUID (RFC 9562 version 8, the
  "custom" layout) whose last 12 hex digits are the instance id: ``…-<instance>``.

An instance is *gone* when no session on the target's database holds its owner lock. Its
sessions are then orphans: `dbchaos cleanup` ends them. Sessions that name no instance
(``dbchaos:check``, ``dbchaos:init``, a version-4 fault id from an older dbchaos) are never
attributed to anyone, so they are never ended here.
"""

from __future__ import annotations

import re
import secrets
import uuid
from dataclasses import dataclass
from typing import Any

import psycopg

from dbchaos.faults.migration.journal import OWNER_LOCK_CLASS, owner_key

APP_PREFIX = "dbchaos:"
#: an instance id as :class:`dbchaos.engine.engine.Engine` makes them (12 hex digits)
_INSTANCE = re.compile(r"[0-9a-f]{12}")
_HELPER = re.compile(r"([0-9a-f]{12}):(spare|journal|recover|probe)")
_FAULT_ID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-8[0-9a-f]{3}-[89ab][0-9a-f]{3}-([0-9a-f]{12})")


def new_fault_id(instance: str) -> str:
    """A fresh fault id that names its instance (74 random bits; a UUID in form and in parsers).

    An instance id that is not 12 hex digits gets a plain random (version 4) id: its faults'
    sessions then name no instance, and ``dbchaos cleanup`` leaves them alone.
    """
    if not _INSTANCE.fullmatch(instance):
        return str(uuid.uuid4())
    bits = (secrets.randbits(48) << 80) | (0x8 << 76) | (secrets.randbits(12) << 64)
    bits |= (0b10 << 62) | (secrets.randbits(14) << 48) | int(instance, 16)
    return str(uuid.UUID(int=bits))


def instance_of(application_name: str) -> str | None:
    """The instance id a ``dbchaos:…`` session name carries, or ``None`` (not one of ours, or
    a one-off session such as ``dbchaos:check``)."""
    if not application_name.startswith(APP_PREFIX):
        return None
    rest = application_name[len(APP_PREFIX) :]
    if _INSTANCE.fullmatch(rest):
        return rest
    for pattern in (_HELPER, _FAULT_ID):
        m = pattern.fullmatch(rest)
        if m:
            return m.group(1)
    return None


def role_of(application_name: str) -> str:
    """What kind of dbchaos session a name says it is: ``control``, ``fault``, ``spare``,
    ``journal``, ``recover``, ``probe`` or ``other``."""
    rest = application_name[len(APP_PREFIX) :] if application_name.startswith(APP_PREFIX) else ""
    if _INSTANCE.fullmatch(rest):
        return "control"
    m = _HELPER.fullmatch(rest)
    if m:
        return m.group(2)
    try:
        uuid.UUID(rest)
    except ValueError:
        return "other"
    return "fault" if len(rest) == 36 else "other"


@dataclass(frozen=True)
class TargetSession:
    """A ``dbchaos:%`` session on the target's database, and whose it is."""

    pid: int
    application_name: str
    user: str | None
    state: str | None
    #: seconds since it last changed state (how long it has been idle, or waiting)
    state_age_s: float | None
    #: seconds since its transaction began, if one is open
    xact_age_s: float | None
    role: str
    instance: str | None
    #: ``gone`` (its instance holds no owner lock), ``live`` or ``unknown`` (it names no instance)
    owner: str

    @property
    def orphan(self) -> bool:
        return self.owner == "gone"

    def as_dict(self) -> dict[str, Any]:
        return {
            "pid": self.pid,
            "application_name": self.application_name,
            "user": self.user,
            "state": self.state,
            "state_age_s": None if self.state_age_s is None else round(self.state_age_s, 3),
            "xact_age_s": None if self.xact_age_s is None else round(self.xact_age_s, 3),
            "role": self.role,
            "instance": self.instance,
            "owner": self.owner,
        }


# One round trip: the dbchaos sessions on this database and the owner locks held on it.
# Owner locks, like every advisory lock, belong to one database.
_SESSIONS_SQL = """
WITH owners AS (
    SELECT coalesce(array_agg(l.objid::bigint), '{}') AS keys FROM pg_locks l
    WHERE l.locktype = 'advisory' AND l.granted AND l.classid::bigint = %(cls)s AND l.objsubid = 2
      AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
), ours AS (
    SELECT a.pid, a.application_name, a.usename::text AS usename, a.state,
           extract(epoch FROM clock_timestamp() - a.state_change)::float8 AS state_age,
           extract(epoch FROM clock_timestamp() - a.xact_start)::float8 AS xact_age
    FROM pg_stat_activity a
    WHERE a.datname = current_database() AND a.pid <> pg_backend_pid() AND a.application_name LIKE 'dbchaos:%%'
)
SELECT owners.keys, ours.pid, ours.application_name, ours.usename, ours.state, ours.state_age, ours.xact_age
FROM owners LEFT JOIN ours ON true
ORDER BY ours.application_name, ours.pid
"""


@dataclass(frozen=True)
class Census:
    """The ``dbchaos:%`` sessions on a database and the owner keys held there."""

    sessions: list[TargetSession]
    live_keys: frozenset[int]

    def owner_alive(self, key: int) -> bool:
        return key in self.live_keys


async def census(conn: psycopg.AsyncConnection[Any]) -> Census:
    """Every ``dbchaos:%`` session on ``conn``'s database, attributed to its instance."""
    cur = await conn.execute(_SESSIONS_SQL, {"cls": OWNER_LOCK_CLASS})
    rows = await cur.fetchall()
    live: frozenset[int] = frozenset()
    out: list[TargetSession] = []
    for keys, pid, app, user, state, state_age, xact_age in rows:
        live = frozenset(int(k) for k in keys)
        if pid is None:  # no dbchaos session at all: the row only carries the owner keys
            continue
        instance = instance_of(str(app))
        owner = "unknown" if instance is None else "live" if owner_key(instance) in live else "gone"
        out.append(
            TargetSession(int(pid), str(app), user, state, state_age, xact_age, role_of(str(app)), instance, owner)
        )
    return Census(out, live)
