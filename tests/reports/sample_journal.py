"""A synthetic run journal with known raw data, for the report tests."""

from __future__ import annotations

import random

from dbchaos.reports.journal import FaultWindow, Phase, ProbeInfo, ProbeResult, RunJournal, Sample


def synthetic_journal(seed: int = 7) -> RunJournal:
    """20 s run: baseline 0-5 s, a 10 s table lock 5-15 s, recovery after; 20 req/s on one probe."""
    rnd = random.Random(seed)
    results = []
    for i in range(400):
        t = i * 0.05
        if 5 <= t < 15:
            timed_out = rnd.random() < 0.4
            latency = 2000.0 if timed_out else rnd.uniform(200, 1900)
            ok = not timed_out and rnd.random() > 0.2
            err = "timed out" if timed_out else (None if ok else "QueuePool limit of size 5 overflow 10 reached")
            results.append(
                ProbeResult(
                    t,
                    latency,
                    ok,
                    500 if err and not timed_out else (200 if ok else None),
                    None,
                    err,
                    timed_out,
                    f"r{i}",
                    committed=(timed_out and i % 3 == 0) or None,
                )
            )
        else:
            ok = not (15 <= t < 15.6)  # still failing right after the release
            results.append(ProbeResult(t, rnd.uniform(5, 20), ok, 200 if ok else 500, None, None if ok else "boom"))
    samples = [
        Sample(
            t=s * 0.5,
            blocked=(15 if 5.2 <= s * 0.5 < 15 else 0),
            longest_wait_s=max(0.0, s * 0.5 - 5),
            connections=20,
            max_connections=100,
            lock_tree=[
                {
                    "pid": 1,
                    "application_name": "dbchaos:x:fault",
                    "state": "idle in transaction",
                    "query": "LOCK TABLE items",
                    "waits": [
                        {"pid": 2, "application_name": "shop-demo", "state": "active", "query": "SELECT 1", "waits": []}
                    ],
                }
            ],
        )
        for s in range(40)
    ]
    return RunJournal(
        id="run-1",
        title="ACCESS EXCLUSIVE on items",
        target="shop",
        started_at=1_700_000_000.0,
        ended_at=1_700_000_020.0,
        phases=[Phase("baseline", 0, 5), Phase("during", 5, 15), Phase("after", 15, 20)],
        faults=[
            FaultWindow(
                "lock",
                "table-lock",
                {"tables": ["items"]},
                5,
                10,
                "f1",
                5.02,
                15.0,
                "reverted",
                "deadline",
                max_blocked=15,
            )
        ],
        probes=[ProbeInfo("GET /items", "http", "GET http://127.0.0.1/items", 2.0, results)],
        samples=samples,
    )
