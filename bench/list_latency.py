"""``GET /v1/faults`` latency under an open-loop 100 requests/s while 100 faults are held
(``table-lock`` ACCESS SHARE on ``bench_t0..bench_t99``), and the server's RSS then.

Open loop (:func:`bench.common.open_loop`): request *i* is due at ``start + i / rate``
whatever happened to the others, and its latency runs from that due time to the complete
answer (no coordinated omission: a slow answer cannot delay the next request's clock).

    python -m bench.list_latency [--rate 100] [--seconds 20] [--faults 100]
"""

from __future__ import annotations

import argparse
import asyncio
import math
import time

from bench.common import (
    Call,
    Check,
    Database,
    KeepAlivePool,
    Load,
    dbchaos_server,
    hold_small_table_locks,
    median,
    ms,
    open_loop,
    percentile,
    print_checks,
    print_table,
    standalone,
)

P99_LIMIT_MS = 100.0
RSS_LIMIT_MB = 200.0


def _list_call(expect: int) -> Call:
    """``GET /v1/faults``: a 200 listing ``expect`` active faults."""

    async def call(client: KeepAlivePool, i: int, load: Load) -> str | None:
        r = await client.get("/v1/faults")
        load.body_bytes = len(r.content)
        if r.status_code != 200:
            return f"HTTP {r.status_code}"
        if r.content.count(b'"state":"active"') != expect:
            return "wrong active count"
        return None

    return call


def run(db: Database, rate: float = 100.0, seconds: float = 20.0, faults: int = 100) -> list[Check]:
    print(f"\n[GET /v1/faults] {faults} faults held, open loop at {rate:g}/s for {seconds:g} s …", flush=True)
    with dbchaos_server(db.dsn) as srv, srv.client() as http:
        idle_rss = srv.rss_bytes()
        t0 = time.monotonic()
        hold_small_table_locks(http, faults, seconds + 60.0)
        setup = time.monotonic() - t0
        held_rss = srv.rss_bytes()
        load = asyncio.run(open_loop(srv, rate, seconds, _list_call(faults)))
        end_rss = srv.rss_bytes()
        r = http.post("/v1/reset")
        r.raise_for_status()
        reverted = len(r.json()["reverted"])

    lat = load.latencies
    peak_rss = max(load.rss_samples)
    print_table(
        f"GET /v1/faults with {faults} faults held, open loop {rate:g} requests/s for {seconds:g} s",
        ["", "n", "p50 ms", "p99 ms", "max ms", "errors"],
        [
            [
                "latency from due time",
                str(len(lat)),
                ms(median(lat)),
                ms(percentile(lat, 99)),
                ms(max(lat, default=math.nan)),
                str(sum(load.errors.values())),
            ]
        ],
        [
            f"answer size {load.body_bytes / 1024:.0f} KiB; errors: {load.errors or 'none'}; "
            f"requests sent > 5 ms late by the generator: {load.late_sends}",
            f"server RSS: idle {idle_rss / 2**20:.0f} MB, {faults} faults held {held_rss / 2**20:.0f} MB, "
            f"peak under load {peak_rss / 2**20:.0f} MB, after load {end_rss / 2**20:.0f} MB (psutil, 1 s samples)",
            f"creating the {faults} faults one after another took {setup:.1f} s; reset reverted {reverted}",
        ],
    )
    return [
        Check(f"GET /v1/faults p99 with {faults} held", percentile(lat, 99) * 1000, P99_LIMIT_MS, "ms"),
        Check(f"server RSS with {faults} held (peak under load)", peak_rss / 2**20, RSS_LIMIT_MB, "MB"),
    ]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--rate", type=float, default=100.0)
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--faults", type=int, default=100)
    args = ap.parse_args()
    with standalone() as db:
        print_checks(run(db, args.rate, args.seconds, args.faults))


if __name__ == "__main__":
    main()
