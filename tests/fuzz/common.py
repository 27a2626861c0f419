"""What the fuzz tests share: a real ``dbchaos serve`` with tokens, an audit log and short
deadlines; the target's fingerprint; and the checks that nothing was left behind."""

from __future__ import annotations

import json
import signal
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from dbchaos.api.auth import NewToken, TokenScope, generate_token
from tests.alembic_helpers import INI
from tests.helpers import dbchaos_lock_count, dbchaos_sessions, query, wait_for
from tests.server_proc import ServerProcess, dbchaos_server

#: A fault holds at most this long: generated requests end fast, and PostgreSQL's own
#: timeouts (deadline + grace) would end anything dbchaos failed to revert soon after.
MAX_DURATION_S = 3
DEFAULT_DURATION_S = 1
#: Tables whose rows the fingerprint checksums: the sample schema and the Alembic project's.
CHECKSUM_TABLES = ("items", "users", "orders", "accounts", "invoices", "payments", "refunds")
UNFINISHED = ("pending", "active", "reverting")

_SCHEMA_SQL = """
SELECT 'rel', n.nspname, c.relname, c.relkind::text, NULL
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname NOT IN ('pg_catalog', 'information_schema', 'pg_toast', 'dbchaos') AND n.nspname NOT LIKE 'pg_temp%%'
  AND n.nspname NOT LIKE 'pg_toast_temp%%'
UNION ALL
SELECT 'col', n.nspname, c.relname || '.' || a.attname, format_type(a.atttypid, a.atttypmod),
       a.attnotnull::text || ' ' || coalesce(pg_get_expr(d.adbin, d.adrelid), '')
FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid JOIN pg_namespace n ON n.oid = c.relnamespace
LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
WHERE a.attnum > 0 AND NOT a.attisdropped AND c.relkind IN ('r', 'p')
  AND n.nspname NOT IN ('pg_catalog', 'information_schema', 'pg_toast', 'dbchaos')
UNION ALL
SELECT 'idx', schemaname, indexname, indexdef, NULL FROM pg_indexes
WHERE schemaname NOT IN ('pg_catalog', 'information_schema', 'dbchaos')
UNION ALL
SELECT 'con', n.nspname, k.conname, pg_get_constraintdef(k.oid), NULL
FROM pg_constraint k JOIN pg_namespace n ON n.oid = k.connamespace
WHERE n.nspname NOT IN ('pg_catalog', 'information_schema', 'dbchaos')
UNION ALL
SELECT 'nsp', nspname, NULL, NULL, NULL FROM pg_namespace
WHERE nspname NOT IN ('pg_catalog', 'information_schema', 'pg_toast', 'dbchaos') AND nspname NOT LIKE 'pg_temp%%'
  AND nspname NOT LIKE 'pg_toast_temp%%'
ORDER BY 1, 2, 3, 4
"""


def fingerprint(dsn: str) -> dict[str, Any]:
    """What a fault may change and must give back: every user relation, column, index,
    constraint and schema (dbchaos's own schema aside), the rows of the sample and Alembic
    tables (an md5 over each table's rows in key order) and the Alembic version rows."""
    rows: dict[str, Any] = {"schema": query(dsn, _SCHEMA_SQL)}
    for table in CHECKSUM_TABLES:
        exists = query(dsn, "SELECT to_regclass(%s) IS NOT NULL", (f"public.{table}",))[0][0]
        rows[table] = (
            query(dsn, f"SELECT count(*), md5(coalesce(string_agg(t::text, ',' ORDER BY id), '')) FROM {table} t")[0]
            if exists
            else None
        )
    exists = query(dsn, "SELECT to_regclass('public.alembic_version') IS NOT NULL")[0][0]
    rows["alembic_version"] = (
        sorted(r[0] for r in query(dsn, "SELECT version_num FROM public.alembic_version")) if exists else None
    )
    return rows


def fingerprint_diff(before: dict[str, Any], after: dict[str, Any]) -> list[str]:
    out = []
    for key in before:
        if before[key] != after.get(key):
            if key == "schema":
                gone = [r for r in before[key] if r not in after[key]]
                new = [r for r in after[key] if r not in before[key]]
                out.append(f"schema: gone {gone[:10]}, new {new[:10]}")
            else:
                out.append(f"{key}: {before[key]!r} -> {after.get(key)!r}")
    return out


@dataclass(frozen=True)
class Tokens:
    """One token per scope, written to a tokens file."""

    by_scope: dict[TokenScope, NewToken]
    path: Path

    @classmethod
    def write(cls, folder: Path) -> Tokens:
        by_scope = {scope: generate_token(scope, f"fuzz-{scope.value}") for scope in TokenScope}
        path = folder / "tokens.toml"
        path.write_text("".join(t.entry_toml() for t in by_scope.values()))
        return cls(by_scope, path)

    def header(self, scope: TokenScope) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.by_scope[scope].secret}"}


@dataclass
class Served:
    """A running server and how to talk to it as its operator."""

    server: ServerProcess
    dsn: str
    audit_log: Path
    admin: dict[str, str]

    @property
    def url(self) -> str:
        return self.server.url

    def client(self, timeout: float = 15.0) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=timeout, headers=self.admin)

    def audit_events(self) -> list[dict[str, Any]]:
        """Every event of the audit log file (the whole trail, not the in-memory tail)."""
        text = self.audit_log.read_text(encoding="utf-8") if self.audit_log.exists() else ""
        return [json.loads(line) for line in text.splitlines() if line.strip()]


@contextmanager
def fuzz_server(
    dsn: str,
    tmp: Path,
    monkeypatch: pytest.MonkeyPatch,
    tokens: Tokens | None = None,
    *,
    name: str = "server",
) -> Iterator[Served]:
    """``dbchaos serve`` on ``dsn`` with the test Alembic project's scripts, an audit log file,
    short fault durations and (optionally) tokens."""
    monkeypatch.setenv("DBCHAOS_MAX_DURATION_S", str(MAX_DURATION_S))
    monkeypatch.setenv("DBCHAOS_DEFAULT_DURATION_S", str(DEFAULT_DURATION_S))
    folder = tmp / name
    folder.mkdir()
    audit_log = folder / "audit.jsonl"
    args = ["--target", dsn, "--alembic-ini", str(INI), "--audit-log", str(audit_log)]
    if tokens is not None:
        args += ["--tokens-file", str(tokens.path)]
    admin = tokens.header(TokenScope.ADMIN) if tokens is not None else {}
    with dbchaos_server(args, folder) as server:
        yield Served(server, dsn, audit_log, admin)
        server.proc.send_signal(signal.SIGTERM)  # a clean stop: dbchaos reverts what it still holds
        assert server.proc.wait(30) == 0, server.output()[-3000:]


def settle(served: Served, timeout: float = 20.0) -> list[dict[str, Any]]:
    """Reset, then wait until the server holds no unfinished fault and no fault session or
    lock of dbchaos is left on the target; returns every fault the server knows."""
    with served.client() as http:
        r = http.post("/v1/reset")
        assert r.status_code == 200, r.text
        faults: list[dict[str, Any]] = []

        def finished() -> bool:
            faults[:] = http.get("/v1/faults").json()["faults"]
            return not any(f["state"] in UNFINISHED for f in faults)

        wait_for(finished, timeout, 0.1, what="every fault to finish")
    wait_for(lambda: not dbchaos_sessions(served.dsn), timeout, 0.05, what="fault sessions to close")
    return faults


def nothing_left(dsn: str) -> None:
    """After the server stopped: no dbchaos session, no lock, no active journal entry."""
    wait_for(lambda: not dbchaos_sessions(dsn, include_control=True), 10, 0.05, what="dbchaos sessions to end")
    assert dbchaos_lock_count(dsn) == 0
    if query(dsn, "SELECT to_regclass('dbchaos.journal') IS NOT NULL")[0][0]:
        left = query(
            dsn,
            "SELECT fault_id, kind, state, end_reason, outcome::text, actions::text FROM dbchaos.journal"
            " WHERE state <> 'reverted'",
        )
        assert not left, f"journal entries not reverted: {left}"
