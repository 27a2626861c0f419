"""An injection corpus in every identifier and key field of every kind, native and compat
(issue 6, Acceptance 2): stray quotes, semicolons, ``--`` and ``/* */`` comments, unicode
(homoglyphs, right-to-left marks, zero-width characters, emoji, a NUL byte, a lone surrogate),
names of 64 bytes and more, dotted names and ``"; DROP TABLE items; --``.

Each payload must be refused with a 422 that names the field, no fault may be created, and no
statement dbchaos sent to the target (the audit log file) may contain the payload. Payloads
carry a marker (``zq``) so that the audit check finds them whatever dbchaos did with them.

Names that parse (a homoglyph of ``items``, an emoji) are names: where a field looks an object
up they name nothing (422 ``unknown_*``); where a field names an object to create
(``conflicting-object``) they are created under exactly that name, as a quoted identifier,
and reverted.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from dbchaos.faults.identifiers import parse_ident, quote
from tests.fuzz.common import fingerprint, fingerprint_diff, fuzz_server, nothing_left, settle
from tests.helpers import query

MARKER = "zq"
#: never an identifier: quotes, separators, comments, spaces, NUL, lone surrogate, 64+ bytes, 3 parts
SYNTAX = [
    "zq'",
    'zq"',
    '"zq',
    'zq"x"',
    "zq;",
    "items; DROP TABLE items; --zq",
    '"; DROP TABLE items; --zq',
    "'; DROP TABLE items; --zq",
    '"zq"; DROP TABLE items; --',
    "zq --",
    "zq/* c */",
    "/*zq*/items",
    "zq/*",
    "zq\\",
    "zq\n; DROP TABLE items",
    " zq",
    "zq ",
    "zq.items.x",
    "zq.",
    ".zq",
    "public..zq",
    '""zq',
    "zq\x00",
    "\x00; DROP TABLE items; --zq",
    "zq\udc80",
    "$$zq$$",
    "zq%s",
    "zq%(x)s",
    "{zq}",
    "zq" + "a" * 62,  # 64 bytes
    "é" * 31 + "zq",  # 64 bytes, 33 characters
    "public.zq" + "b" * 62,
    '"zq' + "c" * 62 + '"',
]
#: identifiers that parse and name nothing here (do not fold to an existing name)
NAMES = [
    "\u0456temszq",  # Cyrillic small i
    "ıtemszq",  # dotless i
    "\u202ezqsmeti",  # right-to-left override
    "it\u200bemszq",  # zero-width space
    "zq😀",
    "Zq\u0301",  # combining acute
    '"zq; DROP TABLE items; --"',  # a quoted name is a name
    'public."zq.items"',
]
PAYLOADS = SYNTAX + NAMES


@dataclass(frozen=True)
class Field:
    """One field of one request: how to put a payload there, and the field the 422 must name."""

    name: str
    method: str
    path: str
    build: Callable[[Any], dict[str, Any]]  # payload -> httpx request kwargs
    field: str
    #: an object to create under that name: a parsed name is accepted (and reverted)
    creates: bool = False
    #: takes any text (a revision id, a type): refused as naming nothing, never parsed as SQL
    data: bool = False


def native(kind: str, params: Callable[[Any], dict[str, Any]]) -> Callable[[Any], dict[str, Any]]:
    def build(payload: Any) -> dict[str, Any]:
        body = {"kind": kind, "params": params(payload), "duration_s": 2, "acquire_timeout_s": 0.5}
        return {"content": json.dumps(body), "headers": {"content-type": "application/json"}}

    return build


def keyed(kind: str, key: str) -> Callable[[Any], dict[str, Any]]:
    return native(kind, lambda p: {key: p})


def compat(extra: dict[str, Any], key: str) -> Callable[[Any], dict[str, Any]]:
    return lambda payload: {"params": {**extra, key: payload, "duration_seconds": 2}}


VERSION_KINDS = ["unknown-revision", "future-revision", "missing-version", "missing-table", "behind", "multiple-heads"]

FIELDS: list[Field] = [
    Field("kind", "POST", "/v1/faults", lambda p: {"json": {"kind": p}}, "kind"),
    Field(
        "target",
        "POST",
        "/v1/faults",
        lambda p: {"json": {"kind": "table-lock", "params": {"tables": ["items"]}, "target": p}},
        "target",
    ),
    Field(
        "table-lock tables", "POST", "/v1/faults", native("table-lock", lambda p: {"tables": [p]}), "params.tables.0"
    ),
    Field(
        "table-lock tables (second)",
        "POST",
        "/v1/faults",
        native("table-lock", lambda p: {"tables": ["items", p]}),
        "params.tables.1",
    ),
    Field(
        "table-lock {name}",
        "POST",
        "/v1/faults",
        native("table-lock", lambda p: {"tables": [{"name": p}]}),
        "params.tables.0",
    ),
    Field(
        "table-lock {schema}",
        "POST",
        "/v1/faults",
        native("table-lock", lambda p: {"tables": [{"schema": p, "name": "items"}]}),
        "params.tables.0",
    ),
    Field(
        "table-lock mode",
        "POST",
        "/v1/faults",
        native("table-lock", lambda p: {"tables": ["items"], "mode": p}),
        "params.mode",
    ),
    Field("row-lock table", "POST", "/v1/faults", native("row-lock", lambda p: {"table": p}), "params.table"),
    Field(
        "row-lock where key",
        "POST",
        "/v1/faults",
        native("row-lock", lambda p: {"table": "items", "where": {p: [1]}}),
        "params.where",
    ),
    Field(
        "row-lock strength",
        "POST",
        "/v1/faults",
        native("row-lock", lambda p: {"table": "items", "strength": p}),
        "params.strength",
    ),
    Field("advisory-lock key", "POST", "/v1/faults", native("advisory-lock", lambda p: {"keys": [p]}), "params.keys.0"),
    Field(
        "advisory-lock pair",
        "POST",
        "/v1/faults",
        native("advisory-lock", lambda p: {"keys": [[1, p]]}),
        "params.keys.0.1",
    ),
    Field(
        "idle-transaction tables",
        "POST",
        "/v1/faults",
        native("idle-transaction", lambda p: {"tables": [p]}),
        "params.tables.0",
    ),
    Field(
        "idle-transaction isolation",
        "POST",
        "/v1/faults",
        native("idle-transaction", lambda p: {"isolation": p}),
        "params.isolation",
    ),
    Field(
        "connection-exhaustion connections",
        "POST",
        "/v1/faults",
        native("connection-exhaustion", lambda p: {"connections": p}),
        "params.connections",
    ),
    *(
        Field(f"{kind} {key}", "POST", "/v1/faults", keyed(kind, key), f"params.{key}")
        for kind in VERSION_KINDS
        for key in ("version_table", "version_table_schema")
    ),
    Field(
        "behind revision",
        "POST",
        "/v1/faults",
        native("behind", lambda p: {"revision": p}),
        "params.revision",
        data=True,
    ),
    Field(
        "multiple-heads revision",
        "POST",
        "/v1/faults",
        native("multiple-heads", lambda p: {"revision": p}),
        "params.revision",
        data=True,
    ),
    Field(
        "locked-version-table tables",
        "POST",
        "/v1/faults",
        native("locked-version-table", lambda p: {"tables": [p]}),
        "params.tables.0",
    ),
    Field(
        "locked-version-table mode",
        "POST",
        "/v1/faults",
        native("locked-version-table", lambda p: {"mode": p}),
        "params.mode",
    ),
    *(
        Field(
            f"locked-version-table {key}",
            "POST",
            "/v1/faults",
            keyed("locked-version-table", key),
            f"params.{key}",
        )
        for key in ("version_table", "version_table_schema")
    ),
    Field(
        "migration-lock-queue table",
        "POST",
        "/v1/faults",
        native("migration-lock-queue", lambda p: {"table": p}),
        "params.table",
    ),
    Field("hidden-object table", "POST", "/v1/faults", native("hidden-object", lambda p: {"table": p}), "params.table"),
    Field(
        "hidden-object column",
        "POST",
        "/v1/faults",
        native("hidden-object", lambda p: {"table": "accounts", "column": p}),
        "params.column",
    ),
    Field(
        "conflicting-object new table",
        "POST",
        "/v1/faults",
        native("conflicting-object", lambda p: {"object": "table", "table": p}),
        "params.table",
        creates=True,
    ),
    Field(
        "conflicting-object column's table",
        "POST",
        "/v1/faults",
        native("conflicting-object", lambda p: {"object": "column", "table": p, "column": "note", "type": "text"}),
        "params.table",
    ),
    Field(
        "conflicting-object new column",
        "POST",
        "/v1/faults",
        native("conflicting-object", lambda p: {"object": "column", "table": "payments", "column": p, "type": "text"}),
        "params.column",
        creates=True,
    ),
    Field(
        "conflicting-object type",
        "POST",
        "/v1/faults",
        native("conflicting-object", lambda p: {"object": "column", "table": "payments", "column": "note", "type": p}),
        "params.type",
        data=True,  # PostgreSQL reads it as a type name (a bound ::regtype): '/*zq*/items' is the row type items
    ),
    Field(
        "conflicting-object new index",
        "POST",
        "/v1/faults",
        native("conflicting-object", lambda p: {"object": "index", "table": "refunds", "index": p, "columns": ["id"]}),
        "params.index",
        creates=True,
    ),
    Field(
        "conflicting-object index columns",
        "POST",
        "/v1/faults",
        native(
            "conflicting-object", lambda p: {"object": "index", "table": "refunds", "index": "ix_zq", "columns": [p]}
        ),
        "params.columns.0",
    ),
    # the compat interface: query parameters, fields named as the old server named them
    Field(
        "compat table_lock target_table",
        "POST",
        "/api/v1/break/long_transactions",
        compat({"lock_type": "table_lock"}, "target_table"),
        "target_table",
    ),
    Field(
        "compat row_lock target_table",
        "POST",
        "/api/v1/break/long_transactions",
        compat({"lock_type": "row_lock"}, "target_table"),
        "target_table",
    ),
    Field("compat lock_type", "POST", "/api/v1/break/long_transactions", compat({}, "lock_type"), "lock_type"),
    Field(
        "compat advisory_lock_id",
        "POST",
        "/api/v1/break/long_transactions",
        compat({"lock_type": "advisory_lock"}, "advisory_lock_id"),
        "advisory_lock_id",
    ),
    Field(
        "compat lock_count",
        "POST",
        "/api/v1/break/long_transactions",
        compat({"lock_type": "row_lock"}, "lock_count"),
        "lock_count",
    ),
    Field(
        "compat long-transaction target_database_url",
        "POST",
        "/api/v1/break/long_transactions",
        compat({}, "target_database_url"),
        "target_database_url",
    ),
    Field("compat failure_type", "POST", "/api/v1/break/migrations", compat({}, "failure_type"), "failure_type"),
    Field(
        "compat migration target_database_url",
        "POST",
        "/api/v1/break/migrations",
        compat({}, "target_database_url"),
        "target_database_url",
    ),
    # the read-only diagnosis names a version table too
    Field(
        "diagnosis version_table",
        "GET",
        "/v1/targets/default/migrations",
        lambda p: {"params": {"version_table": p}},
        "version_table",
    ),
    Field(
        "diagnosis version_table_schema",
        "GET",
        "/v1/targets/default/migrations",
        lambda p: {"params": {"version_table_schema": p}},
        "version_table_schema",
    ),
]


def sendable(field: Field, payload: str) -> bool:
    """A lone surrogate travels only inside JSON (``"\\udc80"``); a query string cannot carry it."""
    try:
        payload.encode()
    except UnicodeEncodeError:
        return "params" not in field.build(payload)
    return True


def send(http: httpx.Client, field: Field, payload: str) -> httpx.Response:
    kwargs = field.build(payload)
    if "json" in kwargs:  # ASCII-escaped JSON, so that a lone surrogate survives as "\udc80"
        kwargs = {"content": json.dumps(kwargs.pop("json")), "headers": {"content-type": "application/json"}}
    return http.request(field.method, field.path, **kwargs)


def test_every_field_refuses_the_corpus_and_no_statement_carries_it(
    alembic_db: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    before = fingerprint(alembic_db)
    problems: list[str] = []
    accepted: list[tuple[Field, str, dict[str, Any]]] = []
    sent = 0
    with fuzz_server(alembic_db, tmp_path, monkeypatch) as served, served.client() as http:
        for field in FIELDS:
            for payload in PAYLOADS:
                if not sendable(field, payload):
                    continue
                r = send(http, field, payload)
                sent += 1
                body = r.json()
                where = f"{field.name} = {payload!r}: {r.status_code} {body}"
                if r.status_code in (201, 202):
                    http.delete(f"/v1/faults/{body['id']}")  # at once: the next payload meets a clean table
                    if (field.creates and payload in NAMES) or field.data:
                        accepted.append((field, payload, body))
                    else:
                        problems.append(f"accepted: {where}")
                elif field.path.endswith("/migrations") and field.method == "GET" and r.status_code == 200:
                    pass  # a read-only diagnosis of a version table that does not exist: said so, nothing else
                elif r.status_code != 422:
                    problems.append(f"not a 422: {where}")
                elif body.get("field") != field.field and not str(body.get("field")).startswith(field.field + "."):
                    problems.append(f"422 names {body.get('field')!r}, not {field.field!r}: {where}")
        faults = settle(served)
        statements = [e for e in served.audit_events() if e.get("type") == "statement"]
    nothing_left(alembic_db)
    assert not problems, f"{len(problems)} of {sent} requests:\n" + "\n".join(problems)
    assert {f["id"] for f in faults} == {a[2]["id"] for a in accepted}, "only accepted requests made faults"
    for field in FIELDS:  # the names that parse really were created (and reverted): they are names
        assert not field.creates or any(f is field for f, _, _ in accepted), field.name
    # a created object's name is in its statements, as a quoted identifier; nothing else carries a payload
    quoted = [quote(parse_ident(p, "name")[-1]) for f, p, _ in accepted if f.creates]
    carrying = [s["sql"] for s in statements if MARKER in s.get("sql", "") or "DROP TABLE" in s.get("sql", "")]
    for sql_text in carrying:
        assert any(q in sql_text for q in quoted), sql_text
    assert not fingerprint_diff(before, fingerprint(alembic_db))
    assert query(alembic_db, "SELECT count(*) FROM items")[0][0] == 10_000
