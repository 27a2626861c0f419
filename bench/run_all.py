"""Every benchmark, one PostgreSQL, one summary of the acceptance targets (``make bench``).

Each benchmark starts its own ``dbchaos serve`` process (so no benchmark sees another's
fault history) against the same database; see docs/benchmarks.md.

    python -m bench.run_all
"""

from __future__ import annotations

import time

from bench import (
    inject_latency,
    list_latency,
    migrations,
    observer_sample,
    overshoot,
    recovery,
    row_lock,
    status_load,
)
from bench.common import Check, print_checks, standalone


def main() -> None:
    started = time.monotonic()
    checks: list[Check] = []
    with standalone() as db:
        checks += inject_latency.run(db)
        checks += overshoot.run(db)
        checks += list_latency.run(db)
        checks += status_load.run(db)
        rl = row_lock.run(db)
        checks += rl
        checks += migrations.run(db)
        checks += recovery.run(db)
        checks += observer_sample.run(db)
        print_checks(checks)
        if not rl:
            print("  n/a    row-lock over 1,000,000 rows: row-lock not available")
        print(f"\nall benchmarks took {time.monotonic() - started:.0f} s")


if __name__ == "__main__":
    main()
