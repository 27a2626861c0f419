"""What every probe shares: results, and the open-loop schedule that starts its requests.

A probe plays a client of the service under test: it starts a request ``rate_hz`` times a
second and records how each one went. The schedule is **open loop**: request *n* is due at
``start + n / rate_hz`` whatever happened to the requests before it, so a slow or hanging
request never delays the next start (a closed loop would quietly send fewer requests while
the service suffers, and hide the very latency we are here to see). At most ``concurrency``
requests are in flight; a start that falls due while all of them are busy is **skipped**
and recorded (``ProbeRun.skipped``): the moment the client could not even ask.

Every request gets a fresh ``request_id`` (32 hex digits) that the probe hands to the
service (HTTP: the ``X-Request-Id`` header; SQL: the ``%(request_id)s`` parameter), so a
request that timed out on the client but committed on the server later can be found.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
import uuid
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, ClassVar, Self

from dbchaos.errors import InvalidInput

_log = logging.getLogger("dbchaos.probes")

#: a start this much after its due time counts as late (the event loop was busy)
LATE_START_S = 0.010
MAX_RATE_HZ = 1000.0
MAX_CONCURRENCY = 1000
ERROR_TEXT_LIMIT = 200
#: how long a stopping probe waits for requests still in flight before it abandons them
DEFAULT_DRAIN_TIMEOUT_S = 30.0


def rfc3339(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def short_text(text: str, limit: int = ERROR_TEXT_LIMIT) -> str:
    """The first non-empty line of ``text``, at most ``limit`` characters."""
    for line in text.strip().splitlines():
        if line.strip():
            line = line.strip()
            return line if len(line) <= limit else line[: limit - 1] + "…"
    return ""


def short_error(exc: BaseException) -> str:
    return short_text(str(exc)) or type(exc).__name__


def check_rate(rate_hz: float, concurrency: int, field: str) -> None:
    if isinstance(rate_hz, bool) or not isinstance(rate_hz, int | float) or not math.isfinite(rate_hz):
        raise InvalidInput(f"{field}: rate must be a number of requests per second", field=f"{field}.rate")
    if not 0 < rate_hz <= MAX_RATE_HZ:
        raise InvalidInput(
            f"{field}: rate must be above 0 and at most {MAX_RATE_HZ:g} per second", field=f"{field}.rate"
        )
    if isinstance(concurrency, bool) or not isinstance(concurrency, int) or not 1 <= concurrency <= MAX_CONCURRENCY:
        raise InvalidInput(
            f"{field}: concurrency must be a whole number from 1 to {MAX_CONCURRENCY}", field=f"{field}.concurrency"
        )


@dataclass(frozen=True)
class Outcome:
    """How one request ended, as the probe kind sees it (the timing is added around it)."""

    ok: bool
    #: HTTP status code (HTTP probes)
    status: int | None = None
    #: SQLSTATE of the error (SQL probes)
    sqlstate: str | None = None
    #: short class of the error: an exception class (``ReadTimeout``, ``QueryCanceled``) or
    #: ``UnexpectedStatus``, ``ClientTimeout``, ``Unfinished``
    error_class: str | None = None
    error: str | None = None
    #: the request ran out of time: client timeout, or a server-side statement/lock timeout
    timed_out: bool = False


@dataclass(frozen=True)
class ProbeResult:
    """One request of one probe."""

    probe: str
    seq: int
    request_id: str
    #: when it started: wall clock (seconds since the epoch) and ``time.monotonic()``
    started_at: float
    started_mono: float
    #: when the open-loop schedule wanted it to start (``time.monotonic()``)
    due_mono: float
    latency_s: float
    ok: bool
    status: int | None
    sqlstate: str | None
    error_class: str | None
    error: str | None
    timed_out: bool

    @property
    def ended_mono(self) -> float:
        return self.started_mono + self.latency_s

    def as_dict(self) -> dict[str, Any]:
        """The stable JSON form (see ``docs/experiments.md``, "Probe results")."""
        return {
            "probe": self.probe,
            "seq": self.seq,
            "request_id": self.request_id,
            "started_at": rfc3339(self.started_at),
            "started_mono": round(self.started_mono, 6),
            "late_ms": round(max(0.0, self.started_mono - self.due_mono) * 1000, 3),
            "latency_ms": round(self.latency_s * 1000, 3),
            "ok": self.ok,
            "status": self.status,
            "sqlstate": self.sqlstate,
            "error_class": self.error_class,
            "error": self.error,
            "timed_out": self.timed_out,
        }


@dataclass
class ProbeRun:
    """Everything one :meth:`Probe.run` did."""

    probe: str
    kind: str
    rate_hz: float
    concurrency: int
    started_at: float
    started_mono: float
    ended_mono: float | None = None
    #: starts that fell due (started + skipped)
    planned: int = 0
    results: list[ProbeResult] = field(default_factory=list)
    #: due times (``time.monotonic()``) of starts skipped because ``concurrency`` requests were in flight
    skipped: list[float] = field(default_factory=list)
    #: starts more than 10 ms after their due time (the event loop was busy: a load-generator problem)
    late_starts: int = 0

    @property
    def started(self) -> int:
        return self.planned - len(self.skipped)

    def as_dict(self) -> dict[str, Any]:
        return {
            "probe": self.probe,
            "kind": self.kind,
            "rate_hz": self.rate_hz,
            "concurrency": self.concurrency,
            "started_at": rfc3339(self.started_at),
            "started_mono": round(self.started_mono, 6),
            "duration_s": None if self.ended_mono is None else round(self.ended_mono - self.started_mono, 4),
            "planned": self.planned,
            "started": self.started,
            "skipped": [round(t, 6) for t in self.skipped],
            "late_starts": self.late_starts,
            "results": [r.as_dict() for r in self.results],
        }


ResultCallback = Callable[[ProbeResult], None]


class Probe(ABC):
    """A client of the service under test, driven by an open-loop schedule.

    Subclasses implement :meth:`attempt` (one request) and, where they hold resources,
    :meth:`open` / :meth:`close`. Use as an async context manager::

        async with SqlProbe(cfg) as probe:
            run = await probe.run(duration_s=10)          # or stop=<asyncio.Event>
    """

    kind: ClassVar[str]

    def __init__(self, name: str, rate_hz: float, concurrency: int) -> None:
        check_rate(rate_hz, concurrency, f"probe {name!r}")
        self.name = name
        self.rate_hz = float(rate_hz)
        self.concurrency = concurrency
        self._seq = 0

    async def open(self) -> None:  # noqa: B027 (optional hook)
        """Acquire what the probe needs (clients, a first connection)."""

    async def close(self) -> None:  # noqa: B027 (optional hook)
        """Release it."""

    @abstractmethod
    async def attempt(self, request_id: str) -> Outcome:
        """One request. Expected failures are an :class:`Outcome` with ``ok=False``; an
        unexpected exception is recorded as such by the caller."""

    def describe(self) -> dict[str, Any]:
        """The probe's settings for a run journal (never a secret)."""
        return {"name": self.name, "kind": self.kind, "rate_hz": self.rate_hz, "concurrency": self.concurrency}

    async def __aenter__(self) -> Self:
        await self.open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def run(
        self,
        *,
        duration_s: float | None = None,
        stop: asyncio.Event | None = None,
        on_result: ResultCallback | None = None,
        drain_timeout_s: float = DEFAULT_DRAIN_TIMEOUT_S,
    ) -> ProbeRun:
        """Start requests on the open-loop schedule until ``duration_s`` has passed or ``stop``
        is set, then wait up to ``drain_timeout_s`` for those in flight (any still running
        then are cancelled and recorded as ``Unfinished``)."""
        if duration_s is None and stop is None:
            raise ValueError("give duration_s, stop, or both")
        run = ProbeRun(self.name, self.kind, self.rate_hz, self.concurrency, time.time(), time.monotonic())
        start = run.started_mono
        end = math.inf if duration_s is None else start + duration_s
        in_flight: set[asyncio.Task[None]] = set()
        n = 0
        try:
            while True:
                due = start + n / self.rate_hz
                if due >= end or (stop is not None and stop.is_set()):
                    break
                delay = due - time.monotonic()
                if delay > 0:
                    if stop is None:
                        await asyncio.sleep(delay)
                    else:
                        with contextlib.suppress(TimeoutError):
                            await asyncio.wait_for(stop.wait(), delay)
                        if stop.is_set():
                            break
                n += 1
                run.planned += 1
                if len(in_flight) >= self.concurrency:
                    run.skipped.append(due)
                    continue
                if time.monotonic() - due > LATE_START_S:
                    run.late_starts += 1
                task = asyncio.create_task(self._one(run, due, on_result), name=f"probe {self.name}")
                in_flight.add(task)
                task.add_done_callback(in_flight.discard)
            if in_flight:
                _, pending = await asyncio.wait(set(in_flight), timeout=drain_timeout_s)
                for t in pending:
                    t.cancel()
                await asyncio.gather(*pending, return_exceptions=True)
        finally:
            for t in in_flight:
                t.cancel()
            if in_flight:
                await asyncio.gather(*in_flight, return_exceptions=True)
            run.ended_mono = time.monotonic()
        run.results.sort(key=lambda r: r.seq)
        return run

    async def _one(self, run: ProbeRun, due: float, on_result: ResultCallback | None) -> None:
        self._seq += 1
        seq = self._seq
        request_id = uuid.uuid4().hex
        wall, t0 = time.time(), time.monotonic()
        try:
            outcome = await self.attempt(request_id)
        except asyncio.CancelledError:
            outcome = Outcome(False, error_class="Unfinished", error="still running when the probe stopped")
            self._record(run, seq, request_id, wall, t0, due, outcome, on_result)
            raise
        except Exception as exc:  # a surprise is a result too: the probe keeps going
            outcome = Outcome(False, error_class=type(exc).__name__, error=short_error(exc))
        self._record(run, seq, request_id, wall, t0, due, outcome, on_result)

    def _record(
        self,
        run: ProbeRun,
        seq: int,
        request_id: str,
        wall: float,
        t0: float,
        due: float,
        o: Outcome,
        on_result: ResultCallback | None,
    ) -> None:
        result = ProbeResult(
            probe=self.name,
            seq=seq,
            request_id=request_id,
            started_at=wall,
            started_mono=t0,
            due_mono=due,
            latency_s=time.monotonic() - t0,
            ok=o.ok,
            status=o.status,
            sqlstate=o.sqlstate,
            error_class=o.error_class,
            error=o.error,
            timed_out=o.timed_out,
        )
        run.results.append(result)
        if on_result is not None:
            try:
                on_result(result)
            except Exception:
                _log.exception("probe %s: on_result callback failed (ignored)", self.name)
