"""Inject and revert of the journaled migration faults ``unknown-revision`` and
``hidden-object``, timed as an API client sees them (request sent to answer received), next
to a plain psycopg script making the same change in one transaction on a fresh connection.
Interleaved. dbchaos's figures include its journal write and the verified restore.

    python -m bench.migrations [--samples 100] [--warmup 5]
"""

from __future__ import annotations

import argparse
import contextlib
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import psycopg
from psycopg import conninfo, sql

from bench.common import (
    STAT_HEADER,
    Check,
    Database,
    abort_fault,
    create_fault,
    dbchaos_server,
    median,
    opt_in,
    print_checks,
    print_table,
    standalone,
    stat_row,
)

DATABASE = "dbchaos_bench_migrations"
REVISION = "a1c3e5f70001"  # what alembic_version holds
PLAIN_REVISION = "deadbeef0000"  # what the plain script stores instead
ACCOUNTS = 1000
RATIO_LIMIT = 3.0  # dbchaos median / plain fresh-connection median

_SCHEMA = f"""
CREATE TABLE alembic_version (
    version_num varchar(32) NOT NULL,
    CONSTRAINT alembic_version_pkc PRIMARY KEY (version_num)
);
INSERT INTO alembic_version VALUES ('{REVISION}');
CREATE TABLE accounts (id int PRIMARY KEY, email text);
INSERT INTO accounts SELECT g, 'user' || g || '@example.com' FROM generate_series(1, {ACCOUNTS}) AS g;
ANALYZE;
"""

# the plain scripts: one statement string each (one round trip), on an autocommit connection
PLAIN_UNKNOWN_INJECT = (
    "BEGIN; SELECT version_num FROM alembic_version FOR UPDATE; "
    f"UPDATE alembic_version SET version_num = '{PLAIN_REVISION}'; COMMIT"
)
PLAIN_UNKNOWN_REVERT = sql.SQL("BEGIN; UPDATE alembic_version SET version_num = {}; COMMIT").format(
    sql.Literal(REVISION)
)
PLAIN_HIDDEN_INJECT = "BEGIN; ALTER TABLE accounts RENAME COLUMN email TO email_hidden; COMMIT"
PLAIN_HIDDEN_REVERT = "BEGIN; ALTER TABLE accounts RENAME COLUMN email_hidden TO email; COMMIT"

UNKNOWN_BODY: dict[str, Any] = {"kind": "unknown-revision", "duration_s": 60}
HIDDEN_BODY: dict[str, Any] = {
    "kind": "hidden-object",
    "params": {"table": "accounts", "column": "email"},
    "duration_s": 60,
}
#: a request the server answers without database work: the HTTP floor of every API figure
NO_FAULT = "/v1/faults/00000000-0000-0000-0000-000000000000"


@dataclass
class Series:
    inject: list[float] = field(default_factory=list)  # request sent -> answer received
    revert: list[float] = field(default_factory=list)


@contextlib.contextmanager
def migration_database(db: Database) -> Iterator[str]:
    """A database of its own with ``alembic_version`` (one row) and ``accounts``; dropped after."""
    ident = sql.Identifier(DATABASE)
    with psycopg.connect(db.admin_dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(ident))
        conn.execute(sql.SQL("CREATE DATABASE {}").format(ident))
    dsn = conninfo.make_conninfo(db.admin_dsn, dbname=DATABASE)
    try:
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(_SCHEMA)
        opt_in(dsn)
        yield dsn
    finally:
        with contextlib.suppress(psycopg.Error), psycopg.connect(db.admin_dsn, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(ident))


class Runner:
    def __init__(self, dsn: str, http: httpx.Client, check: psycopg.Connection[Any]) -> None:
        self.dsn = dsn
        self.http = http
        self.check = check  # an open connection, for the (untimed) state checks

    def _state(self) -> tuple[list[str], list[str]]:
        rows = [str(r[0]) for r in self.check.execute("SELECT version_num FROM alembic_version").fetchall()]
        cols = [
            str(r[0])
            for r in self.check.execute(
                "SELECT attname FROM pg_attribute WHERE attrelid = 'accounts'::regclass AND attnum > 0"
                " AND NOT attisdropped ORDER BY attnum"
            ).fetchall()
        ]
        return rows, cols

    def _expect_original(self, what: str) -> None:
        rows, cols = self._state()
        if rows != [REVISION] or cols != ["id", "email"]:
            raise RuntimeError(f"after {what}: alembic_version {rows}, accounts columns {cols}")

    def dbchaos(self, body: dict[str, Any], s: Series | None) -> None:
        t0 = time.monotonic()
        rec = create_fault(self.http, body)
        t1 = time.monotonic()
        if rec["state"] != "active":
            raise RuntimeError(f"{body['kind']} answered state {rec['state']}: {rec.get('error')}")
        rows, cols = self._state()
        if body["kind"] == "unknown-revision" and rows == [REVISION]:
            raise RuntimeError("unknown-revision is active but alembic_version is unchanged")
        if body["kind"] == "hidden-object" and "email" in cols:
            raise RuntimeError("hidden-object is active but accounts.email is still there")
        t2 = time.monotonic()
        out = abort_fault(self.http, str(rec["id"]))
        t3 = time.monotonic()
        if out["state"] != "reverted" or (out.get("details") or {}).get("verified") is not True:
            raise RuntimeError(
                f"{body['kind']} revert answered {out['state']}: {out.get('error')} {out.get('details')}"
            )
        self._expect_original(f"{body['kind']} revert")
        if s is not None:
            s.inject.append(t1 - t0)
            s.revert.append(t3 - t2)

    def http_floor(self, out: list[float] | None) -> None:
        t0 = time.monotonic()
        r = self.http.get(NO_FAULT)
        took = time.monotonic() - t0
        if r.status_code != 404:
            raise RuntimeError(f"GET {NO_FAULT} answered {r.status_code}")
        if out is not None:
            out.append(took)

    def _plain(self, statement: str | sql.Composed) -> float:
        t0 = time.monotonic()
        conn = psycopg.connect(self.dsn, autocommit=True)
        try:
            conn.execute(statement)
        finally:
            conn.close()
        return time.monotonic() - t0

    def plain(self, inject: str, revert: str | sql.Composed, changed: Callable[[], bool], s: Series | None) -> None:
        took_in = self._plain(inject)
        if not changed():
            raise RuntimeError(f"the plain script did not make its change: {inject}")
        took_out = self._plain(revert)
        self._expect_original("the plain revert")
        if s is not None:
            s.inject.append(took_in)
            s.revert.append(took_out)

    def plain_unknown(self, s: Series | None) -> None:
        self.plain(PLAIN_UNKNOWN_INJECT, PLAIN_UNKNOWN_REVERT, lambda: self._state()[0] == [PLAIN_REVISION], s)

    def plain_hidden(self, s: Series | None) -> None:
        self.plain(PLAIN_HIDDEN_INJECT, PLAIN_HIDDEN_REVERT, lambda: "email_hidden" in self._state()[1], s)


def _ratio_rows(label: str, d: list[float], p: list[float], plain_label: str) -> list[list[str]]:
    base = median(p)
    return [
        [*stat_row(f"dbchaos {label}", d), f"{median(d) / base:.2f}x"],
        [*stat_row(plain_label, p), "1.00x"],
    ]


def run(db: Database, samples: int = 100, warmup: int = 5) -> list[Check]:
    print(f"\n[migration faults] {samples} interleaved samples of each (after {warmup} warm-up rounds) …", flush=True)
    with (
        migration_database(db) as dsn,
        dbchaos_server(dsn) as srv,
        srv.client() as http,
        psycopg.connect(dsn, autocommit=True) as check,
    ):
        r = Runner(dsn, http, check)
        du, pu, dh, ph = Series(), Series(), Series(), Series()
        floor: list[float] = []
        for i in range(warmup + samples):  # A, B, C, D, A, B, C, D, ...
            keep = i >= warmup
            r.http_floor(floor if keep else None)
            r.dbchaos(UNKNOWN_BODY, du if keep else None)
            r.plain_unknown(pu if keep else None)
            r.dbchaos(HIDDEN_BODY, dh if keep else None)
            r.plain_hidden(ph if keep else None)
        journal = check.execute("SELECT state, count(*) FROM dbchaos.journal GROUP BY state ORDER BY 1").fetchall()

    fresh = "plain psycopg, fresh connection"
    print_table(
        "unknown-revision: request -> answer",
        [*STAT_HEADER, "median / plain"],
        [
            *_ratio_rows("POST /v1/faults (201)", du.inject, pu.inject, f"{fresh}: inject"),
            *_ratio_rows("DELETE /v1/faults/{id} (200)", du.revert, pu.revert, f"{fresh}: revert"),
        ],
        [
            "dbchaos: a persistent httpx.Client (keep-alive); the answer comes after the journal entry is committed "
            "(inject) and after the restore is verified (revert: state reverted, details.verified true, checked)",
            "plain inject = connect + 'BEGIN; SELECT version_num FROM alembic_version FOR UPDATE; "
            f"UPDATE alembic_version SET version_num = '{PLAIN_REVISION}'; COMMIT' + close",
            f"plain revert = connect + 'BEGIN; UPDATE alembic_version SET version_num = '{REVISION}'; COMMIT' + close",
        ],
    )
    print_table(
        "hidden-object (accounts.email): request -> answer",
        [*STAT_HEADER, "median / plain"],
        [
            *_ratio_rows("POST /v1/faults (201)", dh.inject, ph.inject, f"{fresh}: inject"),
            *_ratio_rows("DELETE /v1/faults/{id} (200)", dh.revert, ph.revert, f"{fresh}: revert"),
        ],
        [
            "plain inject = connect + 'BEGIN; ALTER TABLE accounts RENAME COLUMN email TO email_hidden; COMMIT' "
            "+ close; revert = the same renaming back",
            "journal afterwards: " + ", ".join(f"{n} {state}" for state, n in journal),
        ],
    )
    print_table(
        "for reference: the HTTP floor",
        STAT_HEADER,
        [stat_row("GET /v1/faults/<unknown id> (404, no database work)", floor)],
    )
    return [
        Check(
            "unknown-revision inject median, dbchaos / plain", median(du.inject) / median(pu.inject), RATIO_LIMIT, "x"
        ),
        Check(
            "unknown-revision revert median, dbchaos / plain", median(du.revert) / median(pu.revert), RATIO_LIMIT, "x"
        ),
        Check("hidden-object inject median, dbchaos / plain", median(dh.inject) / median(ph.inject), RATIO_LIMIT, "x"),
        Check("hidden-object revert median, dbchaos / plain", median(dh.revert) / median(ph.revert), RATIO_LIMIT, "x"),
    ]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--samples", type=int, default=100)
    ap.add_argument("--warmup", type=int, default=5)
    args = ap.parse_args()
    with standalone() as db:
        print_checks(run(db, args.samples, args.warmup))


if __name__ == "__main__":
    main()
