"""Steady synthetic traffic against the demo shop: open-loop, about 20 requests a second.

Open-loop means a new request leaves every ``1/rate`` seconds whether or not the earlier
ones came back — the way real users keep arriving while a service hangs. (A closed loop,
which waits for each answer before sending the next, would politely slow down and hide
the outage.) Each request has a client timeout; its outcome goes into the lab's
:class:`~dbchaos.lab.series.Series`.

The mix: list items, show one item, place an order (with an ``X-Request-Id``; every order
has one of the ten best-selling items, so row locks on them matter), a customer's orders.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx

from dbchaos.lab.demo.seed import CUSTOMERS, ITEMS
from dbchaos.lab.series import Series

DEFAULT_RATE = 20.0
#: longer than the naive demo's pool timeout in the lab (5 s): users see its QueuePool errors
CLIENT_TIMEOUT_S = 10.0
#: more requests than this waiting at once are not sent (counted as ``client_overload``)
MAX_IN_FLIGHT = 600
HOT_ITEMS = 10


@dataclass(frozen=True)
class Call:
    endpoint: str  # a label: "GET /items/{id}"
    method: str
    path: str
    json: dict[str, Any] | None = None
    headers: dict[str, str] | None = None


def next_call(rng: random.Random) -> Call:
    """One request of the mix."""
    roll = rng.random()
    if roll < 0.30:
        return Call("GET /items", "GET", f"/items?limit=20&offset={rng.randrange(0, ITEMS - 20)}")
    if roll < 0.65:
        return Call("GET /items/{id}", "GET", f"/items/{rng.randint(1, ITEMS)}")
    if roll < 0.85:
        lines = [{"item_id": rng.randint(1, HOT_ITEMS), "qty": rng.randint(1, 3)}]
        if rng.random() < 0.5:
            lines.append({"item_id": rng.randint(HOT_ITEMS + 1, ITEMS), "qty": 1})
        body = {"customer_id": rng.randint(1, CUSTOMERS), "lines": lines}
        return Call("POST /orders", "POST", "/orders", json=body, headers={"X-Request-Id": uuid.uuid4().hex})
    return Call("GET /customers/{id}/orders", "GET", f"/customers/{rng.randint(1, CUSTOMERS)}/orders")


def classify(response: httpx.Response) -> tuple[str | None, str | None]:
    """``(None, None)`` for a success (anything below 500), else the error's kind and the
    service's message (``pool_timeout`` with "QueuePool limit of size 5 overflow 10 reached...",
    ``sqlstate_55P03`` with "canceling statement due to lock timeout"...)."""
    if response.status_code < 500:
        return None, None
    kind, detail = f"http_{response.status_code}", None
    with contextlib.suppress(ValueError, AttributeError, TypeError):
        body = response.json()
        detail = str(body.get("detail") or "") or None
        if body.get("error") == "pool_timeout":
            kind = "pool_timeout"
        elif body.get("sqlstate"):
            kind = f"sqlstate_{body['sqlstate']}"
    return kind, detail


class Traffic:
    """The generator: :meth:`run` until cancelled; :attr:`running` says whether it sends."""

    def __init__(
        self,
        base_url: Callable[[], str],
        series: Series,
        *,
        rate: float = DEFAULT_RATE,
        timeout_s: float = CLIENT_TIMEOUT_S,
        seed: int | None = None,
    ) -> None:
        self._base_url = base_url
        self.series = series
        self.rate = rate
        self.timeout_s = timeout_s
        self._rng = random.Random(seed)
        self.in_flight = 0
        self.sent = 0
        self.running = False
        self._tasks: set[asyncio.Task[None]] = set()

    def describe(self) -> dict[str, Any]:
        return {
            "running": self.running,
            "rate_per_s": self.rate,
            "client_timeout_s": self.timeout_s,
            "in_flight": self.in_flight,
            "sent": self.sent,
            "mix": ["GET /items", "GET /items/{id}", "POST /orders", "GET /customers/{id}/orders"],
        }

    async def run(self) -> None:
        limits = httpx.Limits(max_connections=MAX_IN_FLIGHT + 10, max_keepalive_connections=50)
        async with httpx.AsyncClient(timeout=self.timeout_s, limits=limits) as client:
            self.running = True
            interval = 1.0 / self.rate
            next_at = time.monotonic()
            try:
                while True:
                    now = time.monotonic()
                    if next_at > now:
                        await asyncio.sleep(next_at - now)
                    next_at = max(next_at + interval, time.monotonic() - 1.0)  # never a burst to catch up
                    self.series.record_in_flight(self.in_flight)
                    call = next_call(self._rng)
                    if self.in_flight >= MAX_IN_FLIGHT:
                        self.series.record_request(call.endpoint, 0.0, error_kind="client_overload")
                        continue
                    task = asyncio.create_task(self._one(client, call))
                    self._tasks.add(task)
                    task.add_done_callback(self._tasks.discard)
            finally:
                self.running = False
                for task in list(self._tasks):
                    task.cancel()
                await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _one(self, client: httpx.AsyncClient, call: Call) -> None:
        self.in_flight += 1
        self.sent += 1
        started = time.monotonic()
        error: str | None
        detail: str | None = None
        timed_out = False
        try:
            response = await client.request(
                call.method, self._base_url() + call.path, json=call.json, headers=call.headers
            )
            error, detail = classify(response)
        except httpx.TimeoutException:
            error, timed_out = "timeout", True
            detail = f"no answer within {self.timeout_s:g} s"
        except httpx.TransportError as exc:
            error, detail = "connect", f"{type(exc).__name__}: {exc}"
        finally:
            self.in_flight -= 1
        latency = time.monotonic() - started
        self.series.record_request(call.endpoint, latency, error_kind=error, detail=detail, timed_out=timed_out)
