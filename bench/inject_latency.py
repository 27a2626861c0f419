"""Request → lock held, and abort → lock gone, as an independent ``pg_locks`` observer sees
them: dbchaos ``table-lock`` (ACCESS EXCLUSIVE on ``items``) against a plain psycopg script
running the same statements on (a) a fresh connection, (b) an open one. Interleaved.

    python -m bench.inject_latency [--samples 100] [--warmup 5]
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
import psycopg

from bench.common import (
    STAT_HEADER,
    Check,
    Database,
    Observer,
    Watch,
    abort_fault,
    create_fault,
    dbchaos_server,
    median,
    print_checks,
    print_table,
    standalone,
    stat_row,
    table_oid,
)

TABLE = "items"
MODE = "AccessExclusiveLock"
LOCK_SQL = "BEGIN; LOCK TABLE items IN ACCESS EXCLUSIVE MODE"
INJECT_LIMIT = 1.5  # dbchaos median / plain fresh-connection median


@dataclass
class Series:
    inject: list[float] = field(default_factory=list)  # request sent -> observer sees the lock
    release: list[float] = field(default_factory=list)  # abort sent -> observer sees it gone
    answer: list[float] = field(default_factory=list)  # request sent -> API answer (dbchaos only)
    release_answer: list[float] = field(default_factory=list)


class Runner:
    def __init__(self, db: Database, http: httpx.Client, obs: Observer, open_conn: psycopg.Connection[Any]) -> None:
        self.db = db
        self.http = http
        self.obs = obs
        self.open_conn = open_conn
        self.oid = table_oid(db.dsn, TABLE)

    def _measure(self, event: str, act: Callable[[], None]) -> float:
        self.obs.arm(Watch((self.oid,), MODE, "appear" if event == "appear" else "disappear", 10.0))
        t0 = time.monotonic()
        act()
        res = self.obs.result()
        if res.error:
            raise RuntimeError(f"observer: {res.error}")
        return res.seen[self.oid].mono - t0

    def dbchaos(self, s: Series | None) -> None:
        body = {"kind": "table-lock", "params": {"tables": [TABLE], "mode": "ACCESS EXCLUSIVE"}, "duration_s": 60}
        fault: dict[str, Any] = {}
        answered: list[float] = []

        def inject() -> None:
            t = time.monotonic()
            fault.update(create_fault(self.http, body))
            answered.append(time.monotonic() - t)

        def release() -> None:
            t = time.monotonic()
            rec = abort_fault(self.http, str(fault["id"]))
            answered.append(time.monotonic() - t)
            if rec["state"] != "reverted":
                raise RuntimeError(f"abort left the fault {rec['state']}")

        seen_in = self._measure("appear", inject)
        seen_out = self._measure("disappear", release)
        if s is not None:
            s.inject.append(seen_in)
            s.release.append(seen_out)
            s.answer.append(answered[0])
            s.release_answer.append(answered[1])

    def plain_fresh(self, s: Series | None) -> None:
        holder: list[psycopg.Connection[Any]] = []

        def inject() -> None:
            conn = psycopg.connect(self.db.dsn, autocommit=True)
            holder.append(conn)
            conn.execute(LOCK_SQL)

        def release() -> None:
            holder[0].execute("ROLLBACK")
            holder[0].close()

        try:
            seen_in = self._measure("appear", inject)
            seen_out = self._measure("disappear", release)
        finally:
            for c in holder:
                c.close()
        if s is not None:
            s.inject.append(seen_in)
            s.release.append(seen_out)

    def plain_open(self, s: Series | None) -> None:
        def inject() -> None:
            self.open_conn.execute(LOCK_SQL)

        def release() -> None:
            self.open_conn.execute("ROLLBACK")

        seen_in = self._measure("appear", inject)
        seen_out = self._measure("disappear", release)
        if s is not None:
            s.inject.append(seen_in)
            s.release.append(seen_out)


def run(db: Database, samples: int = 100, warmup: int = 5) -> list[Check]:
    print(f"\n[inject/release] {samples} interleaved samples of each (after {warmup} warm-up rounds) …", flush=True)
    with (
        dbchaos_server(db.dsn) as srv,
        srv.client() as http,
        Observer(db.dsn) as obs,
        psycopg.connect(db.dsn, autocommit=True) as open_conn,
    ):
        r = Runner(db, http, obs, open_conn)
        for _ in range(warmup):
            r.dbchaos(None)
            r.plain_fresh(None)
            r.plain_open(None)
        d, fresh, op = Series(), Series(), Series()
        for _ in range(samples):  # A, B, C, A, B, C, ...
            r.dbchaos(d)
            r.plain_fresh(fresh)
            r.plain_open(op)
        note = obs.resolution_note()

    base_in, base_out = median(fresh.inject), median(fresh.release)
    print_table(
        "request -> lock held (ACCESS EXCLUSIVE on items, seen in pg_locks)",
        [*STAT_HEADER, "median / fresh"],
        [
            [*stat_row("dbchaos POST /v1/faults", d.inject), f"{median(d.inject) / base_in:.2f}x"],
            [*stat_row("plain psycopg, fresh connection", fresh.inject), "1.00x"],
            [*stat_row("plain psycopg, open connection", op.inject), f"{median(op.inject) / base_in:.2f}x"],
            [*stat_row("(dbchaos: until the 201 answer)", d.answer), f"{median(d.answer) / base_in:.2f}x"],
        ],
        [
            note,
            "dbchaos: a persistent httpx.Client (keep-alive), so HTTP connection set-up is not measured",
            "plain fresh = connect + 'BEGIN; LOCK TABLE items IN ACCESS EXCLUSIVE MODE'; open = the statement only",
        ],
    )
    print_table(
        "abort -> lock gone",
        [*STAT_HEADER, "median / fresh"],
        [
            [*stat_row("dbchaos DELETE /v1/faults/{id}", d.release), f"{median(d.release) / base_out:.2f}x"],
            [*stat_row("plain psycopg, fresh: ROLLBACK + close", fresh.release), "1.00x"],
            [*stat_row("plain psycopg, open: ROLLBACK", op.release), f"{median(op.release) / base_out:.2f}x"],
            [
                *stat_row("(dbchaos: until the 200 answer)", d.release_answer),
                f"{median(d.release_answer) / base_out:.2f}x",
            ],
        ],
    )
    return [
        Check("inject median, dbchaos / plain fresh", median(d.inject) / base_in, INJECT_LIMIT, "x"),
        Check("release median, dbchaos / plain fresh", median(d.release) / base_out, INJECT_LIMIT, "x"),
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
