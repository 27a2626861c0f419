"""Recovery of 1,000 unreverted ``hidden-object`` faults on 1,000 tables after ``kill -9``.

A dbchaos server injects the faults (column ``c`` of ``t0000..t0999`` hidden), 20 at a
time, and is killed with SIGKILL: the journal keeps 1,000 ``active`` entries whose owner is
gone. Timed, each from process start: (1) ``python -m dbchaos recover --target DSN --json``
until it exits; (2) after a second round of faults and kill, a restarted
``python -m dbchaos serve`` until ``dbchaos.journal`` has no ``active`` entry. After each:
every table has ``c`` again, no ``_dbchaos_`` name is left, every journal entry is
``reverted``.

    python -m bench.recovery [--tables 1000] [--concurrency 20]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import psycopg
from psycopg import conninfo, sql

from bench.common import Check, Database, dbchaos_server, opt_in, print_checks, print_table, standalone

DATABASE = "dbchaos_bench_recovery"
LIMIT_S = 10.0
#: the server's per-target cap is 100 faults by default
SERVER_ENV = {"DBCHAOS_MAX_FAULTS_PER_TARGET": "2000"}
FAULT_DURATION_S = 3600  # never reached: the server is killed long before
POLL_S = 0.01


def table_name(i: int) -> str:
    return f"t{i:04d}"


@dataclass(frozen=True)
class Round:
    inject_s: float  # 1,000 POSTs, 20 at a time
    released_s: float  # SIGKILL -> the dead server's backends gone (its owner lock free)
    recover_s: float  # the timed figure: process start -> recovery done
    detail: str


@contextlib.contextmanager
def recovery_database(db: Database, tables: int) -> Iterator[str]:
    """A database of its own with ``tables`` tables ``tNNNN (id int primary key, c text)``."""
    ident = sql.Identifier(DATABASE)
    with psycopg.connect(db.admin_dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(ident))
        conn.execute(sql.SQL("CREATE DATABASE {}").format(ident))
    dsn = conninfo.make_conninfo(db.admin_dsn, dbname=DATABASE)
    try:
        with psycopg.connect(dsn) as conn:
            for start in range(0, tables, 100):  # 100 tables a transaction: a modest lock count
                with conn.transaction():
                    for i in range(start, min(start + 100, tables)):
                        conn.execute(
                            sql.SQL("CREATE TABLE {} (id int PRIMARY KEY, c text)").format(
                                sql.Identifier(table_name(i))
                            )
                        )
        opt_in(dsn)
        yield dsn
    finally:
        with contextlib.suppress(psycopg.Error), psycopg.connect(db.admin_dsn, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(ident))


@contextlib.contextmanager
def server_env(values: dict[str, str]) -> Iterator[None]:
    """Set variables for the server processes started inside (``dbchaos_server`` passes
    this process's environment on); restored afterwards."""
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


async def _inject_all(url: str, tables: int, concurrency: int) -> None:
    sem = asyncio.Semaphore(concurrency)
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=60.0, limits=limits) as client:

        async def one(i: int) -> None:
            body = {
                "kind": "hidden-object",
                "params": {"table": table_name(i), "column": "c"},
                "duration_s": FAULT_DURATION_S,
            }
            async with sem:
                r = await client.post("/v1/faults", json=body)
            if r.status_code != 201 or r.json()["state"] != "active":
                raise RuntimeError(f"POST hidden-object on {table_name(i)} answered {r.status_code}: {r.text[:300]}")

        await asyncio.gather(*(one(i) for i in range(tables)))


def _count(conn: psycopg.Connection[Any], query: str, params: tuple[Any, ...] = ()) -> int:
    row = conn.execute(query, params).fetchone()
    return int(row[0]) if row else 0


def _active(conn: psycopg.Connection[Any]) -> int:
    return _count(conn, "SELECT count(*) FROM dbchaos.journal WHERE state = 'active'")


def crash_with_faults(dsn: str, tables: int, concurrency: int) -> tuple[float, float]:
    """Inject ``tables`` faults through a server, then SIGKILL it; returns (inject s, time
    until the dead server's backends were gone)."""
    with server_env(SERVER_ENV), dbchaos_server(dsn) as srv:
        t0 = time.monotonic()
        asyncio.run(_inject_all(srv.url, tables, concurrency))
        inject_s = time.monotonic() - t0
        with psycopg.connect(dsn, autocommit=True) as conn:
            active = _active(conn)
            hidden = _count(
                conn, "SELECT count(*) FROM pg_attribute WHERE attname LIKE 'c\\_dbchaos\\_%%' AND NOT attisdropped"
            )
        if active != tables or hidden != tables:
            raise RuntimeError(f"after injecting: {active} active journal entries, {hidden} hidden columns")
        t1 = time.monotonic()
        srv.proc.kill()  # kill -9: nothing reverted, the journal keeps every entry
        srv.proc.wait(10)
    with psycopg.connect(dsn, autocommit=True) as conn:
        deadline = time.monotonic() + 30
        while _count(
            conn,
            "SELECT count(*) FROM pg_stat_activity WHERE datname = %s AND application_name LIKE 'dbchaos:%%'",
            (DATABASE,),
        ):
            if time.monotonic() > deadline:
                raise RuntimeError("the killed server's sessions did not go away within 30 s")
            time.sleep(POLL_S)
        released_s = time.monotonic() - t1
        if _active(conn) != tables:
            raise RuntimeError("the journal lost entries when the server was killed")
        # both timed recoveries start from the same WAL state (no checkpoint half-way through
        # one of them); a superuser or pg_checkpoint may do this, others skip it
        with contextlib.suppress(psycopg.errors.InsufficientPrivilege):
            conn.execute("CHECKPOINT")
    return inject_s, released_s


def verify_restored(dsn: str, tables: int) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        with_c = _count(
            conn,
            "SELECT count(*) FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid"
            " JOIN pg_namespace n ON n.oid = c.relnamespace"
            " WHERE n.nspname = 'public' AND c.relname ~ '^t[0-9]{4}$' AND a.attname = 'c' AND NOT a.attisdropped",
        )
        leftovers = _count(
            conn,
            "SELECT (SELECT count(*) FROM pg_class WHERE relname LIKE '%%\\_dbchaos\\_%%')"
            " + (SELECT count(*) FROM pg_attribute WHERE attname LIKE '%%\\_dbchaos\\_%%' AND NOT attisdropped)",
        )
        rows = conn.execute("SELECT state, count(*) FROM dbchaos.journal GROUP BY state").fetchall()
        states: dict[str, int] = {str(r[0]): int(r[1]) for r in rows}
    unreverted = {k: v for k, v in states.items() if k != "reverted"}
    if with_c != tables or leftovers or unreverted:
        raise RuntimeError(
            f"not restored: {with_c}/{tables} tables have column c, {leftovers} _dbchaos_ names left, journal {states}"
        )


def time_cli_recover(dsn: str, tables: int) -> tuple[float, str]:
    t0 = time.monotonic()
    res = subprocess.run(
        [sys.executable, "-m", "dbchaos", "recover", "--target", dsn, "--json"],
        capture_output=True,
        check=False,
    )
    took = time.monotonic() - t0
    if res.returncode != 0:
        raise RuntimeError(f"dbchaos recover exited {res.returncode}: {res.stderr.decode(errors='replace')[-2000:]}")
    recovered = json.loads(res.stdout)["recovered"]
    reverted = sum(1 for r in recovered if r["state"] == "reverted")
    if reverted != tables:
        raise RuntimeError(f"dbchaos recover reverted {reverted} of {len(recovered)} entries (expected {tables})")
    return took, f"exit 0, {reverted} entries reverted (--json checked)"


def _watch_journal(dsn: str, t0: float, out: list[float], stop: threading.Event) -> None:
    """From ``t0`` on, poll the journal every 10 ms; record when no entry is ``active``."""
    with psycopg.connect(dsn, autocommit=True, application_name="dbchaos-bench-watch") as conn:
        while not stop.is_set():
            if _active(conn) == 0:
                out.append(time.monotonic() - t0)
                return
            time.sleep(POLL_S)


def time_startup_recovery(dsn: str) -> tuple[float, str]:
    done: list[float] = []
    stop = threading.Event()
    t0 = time.monotonic()
    watcher = threading.Thread(target=_watch_journal, args=(dsn, t0, done, stop), daemon=True)
    watcher.start()
    try:
        with dbchaos_server(dsn) as srv:
            healthy = time.monotonic() - t0
            watcher.join(120)
            if not done:
                raise RuntimeError("the restarted server did not recover the journal within 120 s")
            faults = httpx.get(f"{srv.url}/v1/faults", params={"state": "reverted"}, timeout=60).json()["faults"]
    finally:
        stop.set()
        watcher.join(5)
    n = sum(1 for f in faults if f.get("end_reason") == "recovered")
    return done[0], f"/v1/health answered at {healthy:.2f} s; GET /v1/faults lists {n} recovered, reverted"


def run(db: Database, tables: int = 1000, concurrency: int = 20) -> list[Check]:
    print(f"\n[recovery] {tables:,} hidden-object faults on {tables:,} tables, kill -9, recover …", flush=True)
    rounds: dict[str, Round] = {}
    with recovery_database(db, tables) as dsn:
        with psycopg.connect(dsn, autocommit=True) as conn:
            locks = conn.execute("SHOW max_locks_per_transaction").fetchone()
        inject_s, released_s = crash_with_faults(dsn, tables, concurrency)
        took, detail = time_cli_recover(dsn, tables)
        verify_restored(dsn, tables)
        rounds["dbchaos recover --json (process start -> exit)"] = Round(inject_s, released_s, took, detail)
        idle_s, _ = time_cli_recover(dsn, 0)  # the same command with nothing to do: start-up and imports

        inject_s, released_s = crash_with_faults(dsn, tables, concurrency)
        took, detail = time_startup_recovery(dsn)
        verify_restored(dsn, tables)
        rounds["restarted serve (process start -> no active entry)"] = Round(inject_s, released_s, took, detail)

    print_table(
        f"recovery of {tables:,} unreverted hidden-object faults after kill -9",
        ["", "recovery s", "per fault ms", "inject s", "killed -> owner gone ms"],
        [
            [
                label,
                f"{r.recover_s:.2f}",
                f"{r.recover_s / tables * 1000:.2f}",
                f"{r.inject_s:.1f}",
                f"{r.released_s * 1000:.0f}",
            ]
            for label, r in rounds.items()
        ],
        [
            *(f"{label.split(' (')[0]}: {r.detail}" for label, r in rounds.items()),
            f"faults injected {concurrency} at a time (duration {FAULT_DURATION_S} s, "
            f"DBCHAOS_MAX_FAULTS_PER_TARGET={SERVER_ENV['DBCHAOS_MAX_FAULTS_PER_TARGET']}); "
            "each recovery revert is its own transaction "
            f"(max_locks_per_transaction {locks[0] if locks else '?'})",
            f"dbchaos recover with nothing to recover took {idle_s:.2f} s (interpreter start-up, imports, connect)",
            "checked after each: every table has column c, no _dbchaos_ name left, every journal entry reverted",
            "restarted serve: the journal polled every 10 ms from the driver (resolution 10 ms); "
            "a CHECKPOINT before each timed recovery",
        ],
    )
    return [
        Check(f"recover {tables:,} hidden-object faults, {label.split(' (')[0]}", r.recover_s, LIMIT_S, "s")
        for label, r in rounds.items()
    ]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--tables", type=int, default=1000)
    ap.add_argument("--concurrency", type=int, default=20)
    args = ap.parse_args()
    with standalone() as db:
        print_checks(run(db, args.tables, args.concurrency))


if __name__ == "__main__":
    main()
