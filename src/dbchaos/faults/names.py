"""PostgreSQL names that requests may spell in several ways.

Lock modes, row-lock strengths and isolation levels are accepted as PostgreSQL spells
them in SQL or in ``pg_locks`` (``ACCESS EXCLUSIVE``, ``access_exclusive``,
``AccessExclusiveLock``; ``FOR NO KEY UPDATE``, ``no key update``; ``repeatable read``),
case-insensitively, with spaces, hyphens or underscores. Answers use the SQL spelling.
"""

from __future__ import annotations

import re

from dbchaos.errors import InvalidInput

#: The eight table lock modes, weakest first, in their SQL spelling.
LOCK_MODES: tuple[str, ...] = (
    "ACCESS SHARE",
    "ROW SHARE",
    "ROW EXCLUSIVE",
    "SHARE UPDATE EXCLUSIVE",
    "SHARE",
    "SHARE ROW EXCLUSIVE",
    "EXCLUSIVE",
    "ACCESS EXCLUSIVE",
)

#: Row-lock strengths, weakest first, as the clause ``SELECT ... <strength>`` spells them.
ROW_STRENGTHS: tuple[str, ...] = ("FOR KEY SHARE", "FOR SHARE", "FOR NO KEY UPDATE", "FOR UPDATE")

ISOLATION_LEVELS: tuple[str, ...] = ("READ COMMITTED", "REPEATABLE READ", "SERIALIZABLE")

# Which modes each mode conflicts with (PostgreSQL docs, "Table-Level Locks").
_CONFLICTS: dict[str, frozenset[str]] = {
    "ACCESS SHARE": frozenset({"ACCESS EXCLUSIVE"}),
    "ROW SHARE": frozenset({"EXCLUSIVE", "ACCESS EXCLUSIVE"}),
    "ROW EXCLUSIVE": frozenset({"SHARE", "SHARE ROW EXCLUSIVE", "EXCLUSIVE", "ACCESS EXCLUSIVE"}),
    "SHARE UPDATE EXCLUSIVE": frozenset(
        {"SHARE UPDATE EXCLUSIVE", "SHARE", "SHARE ROW EXCLUSIVE", "EXCLUSIVE", "ACCESS EXCLUSIVE"}
    ),
    "SHARE": frozenset(
        {
            "ROW EXCLUSIVE",
            "SHARE UPDATE EXCLUSIVE",
            "SHARE ROW EXCLUSIVE",
            "EXCLUSIVE",
            "ACCESS EXCLUSIVE",
        }
    ),
    "SHARE ROW EXCLUSIVE": frozenset(
        {
            "ROW EXCLUSIVE",
            "SHARE UPDATE EXCLUSIVE",
            "SHARE",
            "SHARE ROW EXCLUSIVE",
            "EXCLUSIVE",
            "ACCESS EXCLUSIVE",
        }
    ),
    "EXCLUSIVE": frozenset(set(LOCK_MODES) - {"ACCESS SHARE"}),
    "ACCESS EXCLUSIVE": frozenset(LOCK_MODES),
}


def conflicts(a: str, b: str) -> bool:
    """Whether table lock modes ``a`` and ``b`` (SQL spelling) conflict."""
    return b in _CONFLICTS[a]


def _words(value: str) -> str:
    spaced = re.sub(r"(?<=[a-z])(?=[A-Z])", " ", value.strip())
    return " ".join(re.split(r"[\s_\-]+", spaced.upper())).strip()


def lock_mode(value: str, field: str = "mode") -> str:
    """Normalise a table lock mode to its SQL spelling; 422 naming the choices otherwise."""
    words = _words(value)
    if words.endswith(" LOCK") and words[: -len(" LOCK")] in LOCK_MODES:
        words = words[: -len(" LOCK")]
    if words.endswith(" MODE") and words[: -len(" MODE")] in LOCK_MODES:
        words = words[: -len(" MODE")]
    if words in LOCK_MODES:
        return words
    raise InvalidInput(
        f"unknown lock mode {value!r}; use one of: {', '.join(LOCK_MODES)}",
        code="unknown_mode",
        field=field,
    )


def row_strength(value: str, field: str = "strength") -> str:
    """Normalise a row-lock strength to ``FOR ...`` spelling."""
    words = _words(value)
    if not words.startswith("FOR "):
        words = "FOR " + words
    if words in ROW_STRENGTHS:
        return words
    raise InvalidInput(
        f"unknown row-lock strength {value!r}; use one of: {', '.join(ROW_STRENGTHS)}",
        code="unknown_strength",
        field=field,
    )


def isolation_level(value: str, field: str = "isolation") -> str:
    words = _words(value)
    if words in ISOLATION_LEVELS:
        return words
    raise InvalidInput(
        f"unknown isolation level {value!r}; use one of: {', '.join(ISOLATION_LEVELS)}",
        code="unknown_isolation",
        field=field,
    )
