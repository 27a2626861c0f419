"""Drill: ``kill -9`` of dbchaos at random moments — during inject, while faults are active,
during revert — with lock and migration kinds mixed. After each kill a new server starts
(its start-up recovery reverts what the dead one journaled); once every deadline has passed,
PostgreSQL must show no session or lock of the dead server, the journal nothing unreverted,
and the database the same fingerprint as before the drill.

Three functions (lock kinds, migration kinds, both mixed) of 10 kills each on the embedded
PostgreSQL 18, 5 each on Debian's 15 (to keep ``make drills`` short): 45 kills in all.
The moments come from a seeded random generator: the seed is in every failure message;
``DBCHAOS_DRILL_SEED=<seed>`` replays the same sequence (the timing itself cannot be replayed).
"""

from __future__ import annotations

import collections
import contextlib
import os
import random
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.alembic_helpers import INI
from tests.drills.state import Leftovers, diff, fingerprint, leftovers, unreverted_journal
from tests.pg import PgServer
from tests.server_proc import ServerProcess, dbchaos_server

SEED = int(os.environ.get("DBCHAOS_DRILL_SEED") or random.SystemRandom().randrange(2**32))
#: kills per test function (three functions): 30 on the embedded 18, 15 on Debian's 15 (time)
ROUNDS = {"pg18": 10, "pg15": 5}
#: every fault's bounds in this drill (seconds)
ACQUIRE_S = 0.5
GRACE_S = 2.0  # Settings.server_side_grace_s (default)
MIN_DURATION_S, MAX_DURATION_S = 1.5, 2.5


def lock_fault(rng: random.Random) -> tuple[str, dict[str, Any]]:
    table = rng.choice(["items", "users", "orders"])
    choice = rng.randrange(5)
    if choice == 0:
        mode = rng.choice(["ACCESS EXCLUSIVE", "EXCLUSIVE", "SHARE", "ROW EXCLUSIVE", "access_share"])
        return "table-lock", {"tables": [table], "mode": mode}
    if choice == 1:
        strength = rng.choice(["FOR UPDATE", "FOR NO KEY UPDATE", "FOR SHARE", "FOR KEY SHARE"])
        return "row-lock", {"table": table, "strength": strength, "limit": rng.randint(1, 50)}
    if choice == 2:
        return "advisory-lock", {
            "keys": [rng.randint(1, 10**6), [7, rng.randint(1, 1000)]],
            "shared": rng.random() < 0.3,
        }
    if choice == 3:
        return "idle-transaction", {"tables": [table], "isolation": rng.choice(["read committed", "repeatable read"])}
    return "connection-exhaustion", {"connections": rng.randint(1, 3)}


def migration_fault(rng: random.Random) -> tuple[str, dict[str, Any]]:
    return rng.choice(
        [
            ("unknown-revision", {}),
            ("missing-table", {}),
            ("hidden-object", {"table": "invoices"}),
            ("hidden-object", {"table": "accounts", "column": "email"}),
            ("behind", {}),
            ("multiple-heads", {}),
        ]
    )


JOURNALED_KINDS = frozenset({"unknown-revision", "missing-table", "hidden-object", "behind", "multiple-heads"})
MIXES = {
    "locks": lambda rng: lock_fault(rng),
    "migrations": lambda rng: migration_fault(rng),
    "mixed": lambda rng: lock_fault(rng) if rng.random() < 0.5 else migration_fault(rng),
}
PHASES = ("inject", "active", "revert")


@dataclass
class Round:
    """One server's life: a few requests, then ``kill -9`` at a moment aimed at ``phase``."""

    number: int
    phase: str
    log: list[str] = field(default_factory=list)
    bad_answers: list[str] = field(default_factory=list)
    fault_ids: list[str] = field(default_factory=list)
    kinds: dict[str, str] = field(default_factory=dict)
    #: the kill landed while a request was running (an inject, a revert)
    interrupted: bool = False
    #: when PostgreSQL ends the last session this round could have opened, at the latest
    latest_end: float = 0.0
    started: float = field(default_factory=time.monotonic)

    def note(self, text: str) -> None:
        self.log.append(f"+{time.monotonic() - self.started:.2f}s {text}")


def json_of(resp: httpx.Response) -> dict[str, Any]:
    """The answer's JSON object, or ``{}`` (a 500 from the server may not be JSON)."""
    try:
        body = resp.json()
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}


def post(client: httpx.Client, rnd: Round, kind: str, params: dict[str, Any], duration: float, wait: bool) -> None:
    sent = time.monotonic()
    rnd.latest_end = max(rnd.latest_end, sent + ACQUIRE_S + duration + GRACE_S)
    body = {"kind": kind, "params": params, "duration_s": duration, "acquire_timeout_s": ACQUIRE_S}
    rnd.note(f"POST {kind} {params} {duration:.2f}s wait={wait}")
    resp = client.post("/v1/faults" if wait else "/v1/faults?wait=false", json=body)
    answer = json_of(resp)
    fault = answer.get("fault", answer) if resp.status_code in (201, 202, 409) else {}
    rnd.note(f"  -> {resp.status_code} {fault.get('state')} {answer.get('code', '')}")
    # 422 unknown_table/unknown_column: another fault of the drill has that object renamed away right now
    expected = resp.status_code in (201, 202, 409) or (
        resp.status_code == 422 and answer.get("code") in ("unknown_table", "unknown_column")
    )
    if not expected:
        rnd.bad_answers.append(f"POST {kind} {params}: {resp.status_code} {resp.text}")
    if isinstance(fault.get("id"), str):
        rnd.fault_ids.append(fault["id"])
        rnd.kinds[fault["id"]] = kind


def delete(client: httpx.Client, rnd: Round, fault_id: str) -> None:
    rnd.note(f"DELETE {fault_id[:8]}")
    resp = client.delete(f"/v1/faults/{fault_id}")
    rnd.note(f"  -> {resp.status_code} {json_of(resp).get('state')}")
    if resp.status_code != 200:
        rnd.bad_answers.append(f"DELETE: {resp.status_code} {resp.text}")


def play(server: ServerProcess, rnd: Round, rng: random.Random, pick: Any) -> None:
    """A random prelude, then a final move with the kill timed to land in ``rnd.phase``."""
    timer: threading.Timer | None = None
    killed = threading.Event()

    def kill(why: str) -> None:
        if not killed.is_set():
            killed.set()
            rnd.note(why)
            server.proc.send_signal(signal.SIGKILL)

    def kill_in(delay: float) -> threading.Timer:
        def fire() -> None:
            kill("SIGKILL")

        t = threading.Timer(delay, fire)
        t.start()
        return t

    with server.client(timeout=20) as client:
        try:
            for _ in range(rng.randint(1, 4)):
                if rnd.fault_ids and rng.random() < 0.25:
                    delete(client, rnd, rng.choice(rnd.fault_ids))
                else:
                    kind, params = pick(rng)
                    post(client, rnd, kind, params, rng.uniform(MIN_DURATION_S, MAX_DURATION_S), rng.random() < 0.6)
            kind, params = pick(rng)
            duration = rng.uniform(MIN_DURATION_S, MAX_DURATION_S)
            if rnd.phase == "inject":  # an inject takes 20-200 ms here: die while it acquires
                timer = kill_in(rng.uniform(0.0, 0.12))
                post(client, rnd, kind, params, duration, wait=rng.random() < 0.7)
            elif rnd.phase == "active":
                post(client, rnd, kind, params, duration, wait=True)
                timer = kill_in(rng.uniform(0.0, duration - 0.4))
            else:
                post(client, rnd, kind, params, duration, wait=True)
                if rng.random() < 0.5:  # an abort's revert (a journaled one takes 50-150 ms) ...
                    journaled = [f for f, k in rnd.kinds.items() if k in JOURNALED_KINDS]
                    victim = rng.choice(journaled) if journaled else rnd.fault_ids[-1] if rnd.fault_ids else "none"
                    timer = kill_in(rng.uniform(0.0, 0.1))
                    delete(client, rnd, victim)
                else:  # ... or the deadline's
                    timer = kill_in(max(0.0, duration + rng.uniform(-0.05, 0.15)))
            timer.join()
        except httpx.TransportError as exc:
            if killed.is_set():
                rnd.note(f"  -> {type(exc).__name__}: the kill landed while this request ran")
                rnd.interrupted = True
            else:  # the server dropped a request before anyone killed it
                rnd.note(f"  -> {type(exc).__name__}: {exc} (before the kill)")
                rnd.bad_answers.append(f"{type(exc).__name__} before the kill: {exc}")
        finally:
            if timer is not None:
                timer.cancel()
            kill("SIGKILL (no move left)")
            server.proc.wait(10)


def serve_args(dsn: str) -> list[str]:
    return ["--target", dsn, "--alembic-ini", str(INI)]


@pytest.mark.drill
@pytest.mark.timeout(400)
@pytest.mark.parametrize("mix", list(MIXES))
def test_kill_9_at_random_moments_leaves_nothing_behind(
    alembic_db: str, pg: PgServer, tmp_path: Path, mix: str
) -> None:
    rng = random.Random(f"{SEED}-{mix}-{pg.label}")
    pick = MIXES[mix]
    baseline = fingerprint(alembic_db)
    kills: collections.Counter[str] = collections.Counter()
    history: list[str] = []
    with contextlib.ExitStack() as stack:
        server = stack.enter_context(dbchaos_server(serve_args(alembic_db), tmp_path))
        rounds = ROUNDS.get(pg.label, 10)
        for number in range(rounds):
            rnd = Round(number, PHASES[number % len(PHASES)])
            try:
                play(server, rnd, rng, pick)
            finally:
                history.append(f"round {number} ({rnd.phase}):\n    " + "\n    ".join(rnd.log))
                if sys.exc_info()[1] is not None:
                    print(f"seed {SEED}, mix {mix}, {pg.label}:\n" + "\n".join(history[-3:]))
            kills[f"{rnd.phase}{' (a request in flight)' if rnd.interrupted else ''}"] += 1
            killed = server
            server = stack.enter_context(dbchaos_server(serve_args(alembic_db), tmp_path))
            # past every deadline (plus PostgreSQL's grace) of what the dead server started
            time.sleep(max(0.0, rnd.latest_end - time.monotonic()))
            problem = settle(alembic_db, server, baseline, timeout=15.0)
            context = (
                f"seed {SEED} (DBCHAOS_DRILL_SEED={SEED} replays it), mix {mix}, {pg.label}, round {number}:\n"
                + "\n".join(history[-3:])
                + f"\n--- killed server's log (tail):\n{tail(killed.output())}"
                + f"\n--- new server's log (tail):\n{tail(server.output())}"
            )
            assert not problem, f"{problem}\n{context}"
            assert not rnd.bad_answers, f"answers no client should get: {rnd.bad_answers}\n{context}"
    if os.environ.get("DBCHAOS_DRILL_VERBOSE"):
        print(f"seed {SEED}, mix {mix}, {pg.label}: kills {dict(kills)}\n" + "\n".join(history))
    assert kills.total() == rounds


def settle(dsn: str, server: ServerProcess, baseline: dict[str, Any], *, timeout: float) -> str:
    """'' once no leftover, nothing unreverted and the fingerprint is the baseline; else
    (after ``timeout``) what is still wrong."""
    deadline = time.monotonic() + timeout
    while True:
        left: Leftovers = leftovers(dsn, server.proc.pid)
        journal = unreverted_journal(dsn)
        changed = diff(baseline, fingerprint(dsn)) if not journal else "(journal not settled)"
        if not left and not journal and not changed:
            return ""
        if time.monotonic() > deadline:
            return (
                f"{timeout:g}s past the last deadline: leftovers {left}; unreverted journal {journal}; "
                f"fingerprint {changed or 'as before'}"
            )
        time.sleep(0.1)


def tail(text: str, lines: int = 25) -> str:
    return "\n".join(text.splitlines()[-lines:])
