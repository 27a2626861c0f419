"""Identifiers from requests: parsed like PostgreSQL's ``parse_ident``, resolved through
the catalog with bound parameters, and used only through ``psycopg.sql.Identifier``.

No input is ever spliced into SQL text.
"""

from __future__ import annotations

import re
import string
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql

from dbchaos.errors import Forbidden, InvalidInput

MAX_IDENTIFIER_BYTES = 63
# PostgreSQL takes every non-ASCII character as an identifier character, and folds only
# ASCII letters to lower case in a UTF-8 database (``downcase_identifier``): ``Émile`` is "Émile".
_UNQUOTED = re.compile(r"[A-Za-z_\u0080-\U0010ffff][A-Za-z0-9_$\u0080-\U0010ffff]*")
_ASCII_LOWER = str.maketrans(string.ascii_uppercase, string.ascii_lowercase)
SYSTEM_SCHEMAS = frozenset({"pg_catalog", "information_schema", "pg_toast", "dbchaos"})


def parse_ident(text: str, field: str, *, max_parts: int = 2) -> tuple[str, ...]:
    """Split ``schema.name`` the way PostgreSQL's ``parse_ident`` does (strictly).

    Unquoted parts fold to lower case; quoted parts keep their case and may contain
    dots; anything else (stray quotes, semicolons, spaces, comments) is a 422.
    """
    if not isinstance(text, str) or not text:
        raise InvalidInput("an identifier must be a non-empty string", code="invalid_identifier", field=field)
    _check_text(text, field)
    parts: list[str] = []
    i, n = 0, len(text)
    while True:
        if i < n and text[i] == '"':
            j = i + 1
            buf: list[str] = []
            while True:
                k = text.find('"', j)
                if k < 0:
                    raise _bad(text, field, "an unterminated quote")
                buf.append(text[j:k])
                if k + 1 < n and text[k + 1] == '"':
                    buf.append('"')
                    j = k + 2
                    continue
                i = k + 1
                break
            part = "".join(buf)
            if not part:
                raise _bad(text, field, "an empty quoted name")
        else:
            m = _UNQUOTED.match(text, i)
            if not m:
                raise _bad(text, field, f"an unexpected character at position {i + 1}")
            part = m.group(0).translate(_ASCII_LOWER)
            i = m.end()
        if len(part.encode()) > MAX_IDENTIFIER_BYTES:
            raise InvalidInput(
                f"the name {part[:20]!r}… is {len(part.encode())} bytes long; PostgreSQL names are at most "
                f"{MAX_IDENTIFIER_BYTES} bytes (a longer one would be truncated to another name)",
                code="identifier_too_long",
                field=field,
            )
        parts.append(part)
        if i == n:
            break
        if text[i] != ".":
            raise _bad(text, field, f"an unexpected character at position {i + 1}")
        i += 1
    if len(parts) > max_parts:
        raise _bad(text, field, f"more than {max_parts} dotted parts")
    return tuple(parts)


def _check_text(text: str, field: str) -> None:
    """No PostgreSQL name holds a NUL byte or a lone surrogate (which does not even encode)."""
    try:
        text.encode()
    except UnicodeEncodeError:
        raise _bad(text, field, "a character that is not Unicode (a lone surrogate)") from None
    if "\x00" in text:
        raise _bad(text, field, "a NUL byte")


def _bad(text: str, field: str, why: str) -> InvalidInput:
    return InvalidInput(
        f'{text!r} is not a valid identifier ({why}); quote names with double quotes, e.g. public."Items"',
        code="invalid_identifier",
        field=field,
    )


def quote(part: str) -> str:
    """Quote one name for a regclass lookup string (passed as a bound parameter)."""
    return '"' + part.replace('"', '""') + '"'


@dataclass(frozen=True)
class Relation:
    """A table found in the catalog."""

    oid: int
    schema: str
    name: str
    kind: str  # pg_class.relkind

    @property
    def ident(self) -> sql.Identifier:
        return sql.Identifier(self.schema, self.name)

    @property
    def display(self) -> str:
        return f"{self.schema}.{self.name}"


def table_ref(value: Any, field: str) -> tuple[str, ...]:
    """Accept ``"schema.table"`` or ``{"schema": ..., "name": ...}``."""
    if isinstance(value, dict):
        name = value.get("name")
        schema = value.get("schema")
        if not isinstance(name, str) or not name or (schema is not None and not isinstance(schema, str)):
            raise InvalidInput("a table object needs a string 'name' (and optionally 'schema')", field=field)
        for part, sub in ((schema, "schema"), (name, "name")):
            if part is not None:
                _check_text(part, f"{field}.{sub}")
            if part is not None and len(part.encode()) > MAX_IDENTIFIER_BYTES:
                raise InvalidInput(
                    f"the {sub} is over {MAX_IDENTIFIER_BYTES} bytes",
                    code="identifier_too_long",
                    field=f"{field}.{sub}",
                )
        return (schema, name) if schema else (name,)
    if isinstance(value, str):
        return parse_ident(value, field)
    raise InvalidInput("a table is a string such as 'public.items' or an object {schema, name}", field=field)


_RESOLVE_SQL = """
SELECT c.oid::bigint, n.nspname, c.relname, c.relkind
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.oid = to_regclass(%s)
"""


async def resolve_table(conn: psycopg.AsyncConnection[Any], parts: tuple[str, ...], field: str) -> Relation:
    """Find a table (or partitioned table) by its parsed name; 422 if there is none."""
    lookup = ".".join(quote(p) for p in parts)
    cur = await conn.execute(_RESOLVE_SQL, (lookup,))
    row = await cur.fetchone()
    shown = ".".join(parts)
    if row is None:
        raise InvalidInput(f"no table named {shown!r} in the target database", code="unknown_table", field=field)
    rel = Relation(int(row[0]), str(row[1]), str(row[2]), str(row[3]))
    if rel.schema in SYSTEM_SCHEMAS or rel.schema.startswith("pg_temp") or rel.schema.startswith("pg_toast"):
        raise Forbidden(
            f"{rel.display} is a system object; dbchaos never targets those",
            code="system_object",
            field=field,
        )
    if rel.kind not in ("r", "p"):
        raise InvalidInput(f"{rel.display} is not a table", code="not_a_table", field=field)
    return rel


async def resolve_column(conn: psycopg.AsyncConnection[Any], rel: Relation, name: str, field: str) -> str:
    """Check that ``name`` (an exact column name) exists on ``rel``."""
    _check_text(name, field)
    if len(name.encode()) > MAX_IDENTIFIER_BYTES:
        raise InvalidInput(
            f"column name over {MAX_IDENTIFIER_BYTES} bytes",
            code="identifier_too_long",
            field=field,
        )
    cur = await conn.execute(
        "SELECT 1 FROM pg_attribute WHERE attrelid = %s AND attname = %s AND attnum > 0 AND NOT attisdropped",
        (rel.oid, name),
    )
    if await cur.fetchone() is None:
        raise InvalidInput(f"{rel.display} has no column {name!r}", code="unknown_column", field=field)
    return name
