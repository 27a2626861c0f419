"""``row-lock`` over 1,000,000 rows against a plain ``SELECT ... ORDER BY id FOR UPDATE`` of
the same rows on an open connection. Interleaved; each sample takes seconds, so the default
is 5 samples each (the ≥ 100 of the fast benchmarks does not apply here).

    python -m bench.row_lock [--samples 5] [--rows 1000000]
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import psycopg

from bench.common import (
    STAT_HEADER,
    Check,
    Database,
    abort_fault,
    create_fault,
    dbchaos_server,
    kinds,
    median,
    print_checks,
    print_table,
    standalone,
    stat_row,
)

TABLE = "bench_big"
RATIO_LIMIT = 1.2


def ensure_big_table(dsn: str, rows: int) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS bench_big (id bigint PRIMARY KEY, v int NOT NULL)")
        row = conn.execute("SELECT count(*) FROM bench_big").fetchone()
        if row is not None and int(row[0]) == rows:
            return
        print(f"  filling bench_big with {rows:,} rows …", flush=True)
        conn.execute("TRUNCATE bench_big")
        conn.execute("INSERT INTO bench_big SELECT g, g %% 1000 FROM generate_series(1, %s) AS g", (rows,))
        conn.execute("VACUUM (ANALYZE) bench_big")


def dbchaos_sample(http: Any, rows: int) -> float:
    body = {
        "kind": "row-lock",
        "params": {"table": TABLE, "limit": rows},
        "duration_s": 30,
        "acquire_timeout_s": 120,
    }
    t0 = time.monotonic()
    rec = create_fault(http, body)
    took = time.monotonic() - t0
    locked = (rec.get("details") or {}).get("locked_rows")
    try:
        if rec["state"] != "active" or locked != rows:
            raise RuntimeError(f"row-lock answered state {rec['state']}, locked_rows {locked} (expected {rows})")
    finally:
        abort_fault(http, str(rec["id"]))
    return took


def plain_sample(conn: psycopg.Connection[Any], rows: int) -> float:
    t0 = time.monotonic()
    cur = conn.execute("SELECT id FROM bench_big ORDER BY id LIMIT %s FOR UPDATE", (rows,))
    took = time.monotonic() - t0  # libpq holds the complete result here; fetching to Python is not counted
    n = cur.rowcount
    conn.rollback()
    if n != rows:
        raise RuntimeError(f"plain SELECT ... FOR UPDATE locked {n} rows, expected {rows}")
    return took


def run(db: Database, samples: int = 5, rows: int = 1_000_000, warmup: int = 1) -> list[Check]:
    print(f"\n[row-lock {rows:,} rows] {samples} interleaved samples of each (after {warmup} warm-up) …", flush=True)
    with dbchaos_server(db.dsn) as srv, srv.client(timeout=300.0) as http:
        if "row-lock" not in kinds(http):
            print("  row-lock not available: this dbchaos does not register the row-lock kind; skipped")
            return []
        ensure_big_table(db.dsn, rows)
        with psycopg.connect(db.dsn) as conn:  # not autocommit: psycopg sends BEGIN first
            for _ in range(warmup):
                dbchaos_sample(http, rows)
                plain_sample(conn, rows)
            d: list[float] = []
            plain: list[float] = []
            for _ in range(samples):
                d.append(dbchaos_sample(http, rows))
                plain.append(plain_sample(conn, rows))

    base = median(plain)
    print_table(
        f"lock {rows:,} rows FOR UPDATE (request -> all rows locked)",
        [*STAT_HEADER, "median / plain"],
        [
            [*stat_row("dbchaos row-lock (until the 201 answer)", d), f"{median(d) / base:.2f}x"],
            [*stat_row(f"plain SELECT id ... ORDER BY id LIMIT {rows} FOR UPDATE", plain), "1.00x"],
        ],
        [
            "dbchaos: connect + BEGIN + one SELECT ... FOR UPDATE that answers a count; 201 means all rows locked "
            "(details.locked_rows checked)",
            "plain: open connection, BEGIN + the SELECT, timed until libpq holds the whole result (ids not fetched "
            "into Python)",
        ],
    )
    return [Check(f"row-lock {rows:,} rows median, dbchaos / plain", median(d) / base, RATIO_LIMIT, "x")]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--samples", type=int, default=5)
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--warmup", type=int, default=1)
    args = ap.parse_args()
    with standalone() as db:
        print_checks(run(db, args.samples, args.rows, args.warmup))


if __name__ == "__main__":
    main()
