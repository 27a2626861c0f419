"""PostgreSQL's lock conflict tables, and the names ``pg_locks`` and ``pgrowlocks`` use.

Why a module: a dry run answers "who is in the way, who would wait" by comparing the locks
a fault would take with the locks sessions hold now, which needs the conflict tables of the
PostgreSQL docs ("Explicit Locking"): table-level modes (the matrix in
:mod:`dbchaos.faults.names`, the one copy dbchaos keeps), row-level strengths, and
advisory locks, which ``pg_locks`` shows as ``ExclusiveLock`` / ``ShareLock`` and which
conflict like those table modes. ``tests/observe/test_conflicts.py`` checks every pair
against a real server.
"""

from __future__ import annotations

from dbchaos.faults.names import LOCK_MODES, ROW_STRENGTHS
from dbchaos.faults.names import conflicts as _table_conflicts

#: ``pg_locks.mode`` spelling -> SQL spelling
_PG_LOCKS_NAMES: dict[str, str] = {m.title().replace(" ", "") + "Lock": m for m in LOCK_MODES}

# Row-level lock conflicts (PostgreSQL docs, "Conflicting Row-Level Locks"), strongest last.
_ROW_CONFLICTS: dict[str, frozenset[str]] = {
    "FOR KEY SHARE": frozenset({"FOR UPDATE"}),
    "FOR SHARE": frozenset({"FOR NO KEY UPDATE", "FOR UPDATE"}),
    "FOR NO KEY UPDATE": frozenset({"FOR SHARE", "FOR NO KEY UPDATE", "FOR UPDATE"}),
    "FOR UPDATE": frozenset(ROW_STRENGTHS),
}

#: ``pgrowlocks`` ``modes`` spelling -> the row-lock strength it acts as. An UPDATE that
#: changes no key column locks like FOR NO KEY UPDATE; a DELETE or a key-changing UPDATE
#: like FOR UPDATE.
_PGROWLOCKS_MODES: dict[str, str] = {
    "For Key Share": "FOR KEY SHARE",
    "For Share": "FOR SHARE",
    "For No Key Update": "FOR NO KEY UPDATE",
    "No Key Update": "FOR NO KEY UPDATE",
    "For Update": "FOR UPDATE",
    "Update": "FOR UPDATE",
}


def table_mode(mode: str) -> str | None:
    """A table lock mode in SQL spelling, from the SQL or the ``pg_locks`` spelling (``None``
    for modes that are not table-level, e.g. ``SIReadLock``)."""
    if mode in LOCK_MODES:
        return mode
    return _PG_LOCKS_NAMES.get(mode)


def pg_locks_name(mode: str) -> str:
    """The ``pg_locks`` spelling of a table lock mode (``ACCESS SHARE`` -> ``AccessShareLock``)."""
    return mode.title().replace(" ", "") + "Lock"


def table_conflicts(a: str, b: str) -> bool:
    """Whether table (or advisory) lock modes ``a`` and ``b`` conflict (either spelling)."""
    ma, mb = table_mode(a), table_mode(b)
    if ma is None or mb is None:
        return False
    return _table_conflicts(ma, mb)


def row_conflicts(a: str, b: str) -> bool:
    """Whether row-lock strengths ``a`` and ``b`` (``FOR ...`` spelling) conflict."""
    return b in _ROW_CONFLICTS[a]


def row_strength_of(pgrowlocks_mode: str) -> str | None:
    """The strength a ``pgrowlocks`` mode (``For Update``, ``No Key Update``...) acts as."""
    return _PGROWLOCKS_MODES.get(pgrowlocks_mode)


def advisory_tag(key: int | tuple[int, int]) -> tuple[int, int, int]:
    """``(classid, objid, objsubid)`` under which ``pg_locks`` shows an advisory key: a bigint
    split in two 32-bit halves (objsubid 1), a pair as its two int4s (objsubid 2)."""
    if isinstance(key, tuple):
        return key[0] & 0xFFFFFFFF, key[1] & 0xFFFFFFFF, 2
    unsigned = key & 0xFFFFFFFFFFFFFFFF
    return unsigned >> 32, unsigned & 0xFFFFFFFF, 1
