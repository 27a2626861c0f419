"""Deadline overshoot: from a fault's ``deadline`` (as the API states it) to the moment an
independent ``pg_locks`` observer sees its lock gone. Faults run in concurrent batches, each
on its own small table (``table-lock`` ACCESS EXCLUSIVE on ``bench_t<i>``, 1 s).

    python -m bench.overshoot [--faults 100] [--batch 10] [--duration 1.0]
"""

from __future__ import annotations

import argparse
import time

from bench.common import (
    Check,
    Database,
    Observer,
    Watch,
    create_fault,
    dbchaos_server,
    median,
    ms,
    parse_rfc3339,
    percentile,
    print_checks,
    print_table,
    small_table,
    standalone,
    table_oid,
)

MODE = "AccessExclusiveLock"
P99_LIMIT_MS = 100.0


def run(db: Database, faults: int = 100, batch: int = 10, duration: float = 1.0) -> list[Check]:
    print(f"\n[deadline overshoot] {faults} faults of {duration:g} s, {batch} at a time …", flush=True)
    oids = [table_oid(db.dsn, small_table(i)) for i in range(batch)]
    overshoot: list[float] = []  # seconds: lock gone (observer, wall clock) - deadline (API)
    ended: list[float] = []  # seconds: ended_at - deadline, as the server recorded it
    with dbchaos_server(db.dsn) as srv, srv.client() as http, Observer(db.dsn) as obs:
        done = 0
        while done < faults:
            n = min(batch, faults - done)
            obs.arm(Watch(tuple(oids[:n]), MODE, "cycle", duration + 30.0))
            created: dict[int, tuple[str, float]] = {}
            for i in range(n):
                rec = create_fault(
                    http,
                    {
                        "kind": "table-lock",
                        "params": {"tables": [small_table(i)], "mode": "ACCESS EXCLUSIVE"},
                        "duration_s": duration,
                    },
                )
                created[oids[i]] = (str(rec["id"]), parse_rfc3339(str(rec["deadline"])))
            if time.time() >= min(d for _, d in created.values()):
                raise RuntimeError("creating a batch took longer than the fault duration; use a smaller --batch")
            res = obs.result(duration + 60.0)
            if res.error:
                raise RuntimeError(f"observer: {res.error}")
            for oid, (fid, deadline) in created.items():
                overshoot.append(res.seen[oid].wall - deadline)
                rec = http.get(f"/v1/faults/{fid}").json()
                if rec["state"] != "reverted" or rec["end_reason"] != "deadline":
                    raise RuntimeError(f"fault {fid} ended {rec['state']}/{rec['end_reason']}")
                ended.append(parse_rfc3339(str(rec["ended_at"])) - deadline)
            done += n
        note = obs.resolution_note()

    early = sum(1 for v in overshoot if v < 0)
    print_table(
        "deadline -> lock gone (overshoot)",
        ["", "n", "p50 ms", "p99 ms", "max ms", "min ms"],
        [
            [
                "observer sees the lock gone",
                str(len(overshoot)),
                ms(median(overshoot)),
                ms(percentile(overshoot, 99)),
                ms(max(overshoot)),
                ms(min(overshoot)),
            ],
            [
                "(server's ended_at)",
                str(len(ended)),
                ms(median(ended)),
                ms(percentile(ended, 99)),
                ms(max(ended)),
                ms(min(ended)),
            ],
        ],
        [
            note,
            "deadline and ended_at come from the API (RFC 3339, millisecond precision, truncated: up to +1 ms)",
            f"{early} of {len(overshoot)} locks were gone before their stated deadline",
        ],
    )
    return [Check("deadline overshoot p99", percentile(overshoot, 99) * 1000, P99_LIMIT_MS, "ms")]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--faults", type=int, default=100)
    ap.add_argument("--batch", type=int, default=10)
    ap.add_argument("--duration", type=float, default=1.0)
    args = ap.parse_args()
    with standalone() as db:
        print_checks(run(db, args.faults, args.batch, args.duration))


if __name__ == "__main__":
    main()
