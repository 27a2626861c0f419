"""``GET /v1/faults`` latency under an open-loop 100 requests/s while 100 faults are held
(``table-lock`` ACCESS SHARE on ``bench_t0..bench_t99``), and the server's RSS then.

Open loop: request *i* is due at ``start + i / rate`` whatever happened to the others, and
its latency runs from that due time to the complete answer (no coordinated omission: a slow
answer cannot delay the next request's clock).

    python -m bench.list_latency [--rate 100] [--seconds 20] [--faults 100]
"""

from __future__ import annotations

import argparse
import asyncio
import math
import time
from dataclasses import dataclass, field

import httpx

from bench.common import (
    Check,
    Database,
    Server,
    create_fault,
    dbchaos_server,
    median,
    ms,
    percentile,
    print_checks,
    print_table,
    small_table,
    standalone,
)

P99_LIMIT_MS = 100.0
RSS_LIMIT_MB = 200.0


@dataclass
class Load:
    latencies: list[float] = field(default_factory=list)
    errors: dict[str, int] = field(default_factory=dict)
    late_sends: int = 0  # requests the generator itself sent > 5 ms after their due time
    rss_samples: list[int] = field(default_factory=list)
    body_bytes: int = 0


async def _one(client: httpx.AsyncClient, due: float, load: Load, expect: int) -> None:
    try:
        r = await client.get("/v1/faults")
        body = r.content
        load.latencies.append(time.monotonic() - due)
        if r.status_code != 200:
            load.errors[f"HTTP {r.status_code}"] = load.errors.get(f"HTTP {r.status_code}", 0) + 1
        elif body.count(b'"state":"active"') != expect:
            load.errors["wrong active count"] = load.errors.get("wrong active count", 0) + 1
        load.body_bytes = len(body)
    except httpx.HTTPError as exc:
        name = type(exc).__name__
        load.errors[name] = load.errors.get(name, 0) + 1


async def _open_loop(server: Server, rate: float, seconds: float, expect: int) -> Load:
    load = Load()
    n = int(rate * seconds)
    limits = httpx.Limits(max_connections=100, max_keepalive_connections=100)
    async with httpx.AsyncClient(base_url=server.url, timeout=30.0, limits=limits) as client:
        for _ in range(5):  # open a few keep-alive connections before the clock starts
            await client.get("/v1/faults")
        tasks: list[asyncio.Task[None]] = []
        start = time.monotonic() + 0.1
        next_rss = start
        for i in range(n):
            due = start + i / rate
            delay = due - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            elif -delay > 0.005:
                load.late_sends += 1
            tasks.append(asyncio.create_task(_one(client, due, load, expect)))
            if due >= next_rss:
                load.rss_samples.append(server.rss_bytes())
                next_rss += 1.0
        await asyncio.gather(*tasks)
    load.rss_samples.append(server.rss_bytes())
    return load


def run(db: Database, rate: float = 100.0, seconds: float = 20.0, faults: int = 100) -> list[Check]:
    print(f"\n[GET /v1/faults] {faults} faults held, open loop at {rate:g}/s for {seconds:g} s …", flush=True)
    with dbchaos_server(db.dsn) as srv, srv.client() as http:
        idle_rss = srv.rss_bytes()
        t0 = time.monotonic()
        for i in range(faults):
            create_fault(
                http,
                {
                    "kind": "table-lock",
                    "params": {"tables": [small_table(i)], "mode": "ACCESS SHARE"},
                    "duration_s": seconds + 60.0,
                },
            )
        setup = time.monotonic() - t0
        held_rss = srv.rss_bytes()
        active = [f for f in http.get("/v1/faults").json()["faults"] if f["state"] == "active"]
        if len(active) != faults:
            raise RuntimeError(f"expected {faults} active faults, found {len(active)}")
        load = asyncio.run(_open_loop(srv, rate, seconds, faults))
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
