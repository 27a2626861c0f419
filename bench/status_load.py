"""Status calls under load (issue 6, Acceptance 4): an open-loop 200 requests/s of
``GET /v1/faults`` and ``GET /v1/faults/{id}``, mixed, for 60 s while 100 faults are held
(``table-lock`` ACCESS SHARE on ``bench_t0..bench_t99``: the per-target cap).

Request *i* is a list when ``i`` falls in the list share (every other request by default),
else one of the held faults, in turn. Open loop (:func:`bench.common.open_loop`): each
request is due at ``start + i / rate`` whatever happened to the others, and its latency runs
from that due time to the complete answer. Every answer is checked: 200, and every held
fault ``active`` (the list) or the asked fault ``active`` (one fault). Reported: errors (the
target is none), p50 / p95 / p99 / max for each endpoint and for both, the achieved rate,
the server's RSS (sampled each second) and its CPU time over the run.

    python -m bench.status_load [--rate 200] [--seconds 60] [--faults 100] [--list-share 0.5]
"""

from __future__ import annotations

import argparse
import asyncio
import math
from collections.abc import Sequence

import psutil

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

P99_LIMIT_MS = 150.0
LIST = "GET /v1/faults"
ONE = "GET /v1/faults/{id}"


def is_list(i: int, share: float) -> bool:
    """Spread the lists evenly: request ``i`` is a list when the running count of lists grows."""
    return math.floor((i + 1) * share) > math.floor(i * share)


def status_call(ids: Sequence[str], share: float) -> Call:
    async def call(client: KeepAlivePool, i: int, load: Load) -> str | None:
        if is_list(i, share):
            r = await client.get("/v1/faults")
            if r.status_code != 200:
                return f"list: HTTP {r.status_code}"
            load.body_bytes = max(load.body_bytes, len(r.content))
            if r.content.count(b'"state":"active"') != len(ids):
                return "list: wrong active count"
            return None
        fid = ids[i % len(ids)]
        r = await client.get(f"/v1/faults/{fid}")
        if r.status_code != 200:
            return f"one: HTTP {r.status_code}"
        body = r.json()
        if body.get("id") != fid or body.get("state") != "active":
            return "one: not the active fault asked for"
        return None

    return call


def _row(label: str, values: Sequence[float]) -> list[str]:
    return [
        label,
        str(len(values)),
        ms(median(values)),
        ms(percentile(values, 95)),
        ms(percentile(values, 99)),
        ms(max(values, default=math.nan)),
    ]


def run(
    db: Database, rate: float = 200.0, seconds: float = 60.0, faults: int = 100, list_share: float = 0.5
) -> list[Check]:
    print(
        f"\n[status load] {faults} faults held, open loop at {rate:g}/s for {seconds:g} s ({list_share:.0%} lists) …",
        flush=True,
    )
    with dbchaos_server(db.dsn) as srv, srv.client() as http:
        idle_rss = srv.rss_bytes()
        ids = hold_small_table_locks(http, faults, seconds + 60.0)
        held_rss = srv.rss_bytes()
        proc = psutil.Process(srv.pid)
        cpu0 = proc.cpu_times()
        load = asyncio.run(open_loop(srv, rate, seconds, status_call(ids, list_share)))
        cpu1 = proc.cpu_times()
        end_rss = srv.rss_bytes()
        r = http.post("/v1/reset")
        r.raise_for_status()
        reverted = len(r.json()["reverted"])

    lists = [lat for i, lat in load.latency_of.items() if is_list(i, list_share)]
    ones = [lat for i, lat in load.latency_of.items() if not is_list(i, list_share)]
    both = load.latencies
    errors = sum(load.errors.values())
    sent = int(rate * seconds)
    achieved = len(both) / load.elapsed_s if load.elapsed_s else math.nan
    cpu = (cpu1.user - cpu0.user + cpu1.system - cpu0.system) / load.elapsed_s if load.elapsed_s else math.nan
    peak_rss = max(load.rss_samples)
    print_table(
        f"status calls with {faults} faults held, open loop {rate:g} requests/s for {seconds:g} s "
        "(latency from the due time)",
        ["", "n", "p50 ms", "p95 ms", "p99 ms", "max ms"],
        [_row(LIST, lists), _row(ONE, ones), _row("both", both)],
        [
            f"errors: {errors} ({load.errors or 'none'}) of {sent} requests; achieved {achieved:.1f} answers/s "
            f"({len(both)} answers, last {load.elapsed_s:.1f} s after the first was due); "
            f"requests sent > 5 ms late by the generator: {load.late_sends}",
            f"list answer {load.body_bytes / 1024:.0f} KiB; server CPU {cpu:.0%} of one core over the run",
            f"server RSS: idle {idle_rss / 2**20:.0f} MB, {faults} faults held {held_rss / 2**20:.0f} MB, "
            f"peak under load {peak_rss / 2**20:.0f} MB, after load {end_rss / 2**20:.0f} MB (psutil, 1 s samples)",
            f"reset reverted {reverted}",
        ],
    )
    return [
        Check(f"status calls at {rate:g}/s with {faults} held: errors", float(errors), 0.0, "errors"),
        Check(f"status calls at {rate:g}/s with {faults} held: p99", percentile(both, 99) * 1000, P99_LIMIT_MS, "ms"),
    ]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rate", type=float, default=200.0, help="requests per second (default 200)")
    ap.add_argument("--seconds", type=float, default=60.0, help="how long (default 60; shorten for a quick look)")
    ap.add_argument("--faults", type=int, default=100, help="faults held (default 100, the per-target cap)")
    ap.add_argument("--list-share", type=float, default=0.5, help="share of GET /v1/faults (default 0.5)")
    args = ap.parse_args()
    with standalone() as db:
        print_checks(run(db, args.rate, args.seconds, args.faults, args.list_share))


if __name__ == "__main__":
    main()
