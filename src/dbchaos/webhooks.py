"""Webhooks: POST every event of the bus, as JSON, to URLs the operator configured.

One bounded queue and one delivery task per URL, so a dead or slow receiver delays only its
own deliveries and never the engine (``offer`` is a ``put_nowait``) nor another URL. A
delivery is retried with exponential backoff on network errors, timeouts, 408, 429 and 5xx;
other answers are final. Events a URL cannot take (queue full, retries used up, refused) are
logged and counted in ``dbchaos_webhook_failures_total``. URLs may carry secrets (a token in
the path): logs and metrics show only their scheme, host and port.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterable
from dataclasses import dataclass
from urllib.parse import urlsplit

import httpx
from prometheus_client import CollectorRegistry, Counter

import dbchaos
from dbchaos.errors import InvalidInput
from dbchaos.events import Event

_log = logging.getLogger("dbchaos.webhooks")

QUEUE_SIZE = 1000
ATTEMPTS = 5
FIRST_BACKOFF_S = 0.5
MAX_BACKOFF_S = 30.0
REQUEST_TIMEOUT_S = 5.0
#: how long shutdown waits for queued events (the final ``shutdown`` ones) to go out
DRAIN_TIMEOUT_S = 3.0
_RETRY_STATUS = frozenset({408, 425, 429})


def check_webhook_url(url: str, field: str = "webhook") -> str:
    """``url`` if it is an absolute http(s) URL; ``InvalidInput`` naming ``field`` otherwise."""
    parts = urlsplit(url)
    try:
        parts.port  # noqa: B018 - raises on a bad port
    except ValueError:
        parts = urlsplit("")
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise InvalidInput(f"webhook {display_url(url)!r} must be an http:// or https:// URL with a host", field=field)
    return url


def display_url(url: str) -> str:
    """``scheme://host[:port]`` of a URL: what logs and metrics may show of it."""
    parts = urlsplit(url)
    host = parts.hostname or "?"
    if ":" in host:
        host = f"[{host}]"
    try:
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        port = ""
    return f"{parts.scheme}://{host}{port}"


@dataclass(frozen=True)
class Retry:
    attempts: int = ATTEMPTS
    first_backoff_s: float = FIRST_BACKOFF_S
    max_backoff_s: float = MAX_BACKOFF_S

    def backoff(self, attempt: int) -> float:
        """Seconds to wait after failed attempt number ``attempt`` (1-based)."""
        return float(min(self.first_backoff_s * 2 ** (attempt - 1), self.max_backoff_s))


class _Endpoint:
    """One URL: its queue and its delivery task (started on the first event)."""

    def __init__(self, url: str, queue_size: int) -> None:
        self.url = url
        self.label = display_url(url)
        self.queue: asyncio.Queue[Event] = asyncio.Queue(queue_size)
        self.task: asyncio.Task[None] | None = None


class WebhookSink:
    """A :class:`~dbchaos.events.Sink` that POSTs each event to every configured URL."""

    def __init__(
        self,
        urls: Iterable[str],
        *,
        registry: CollectorRegistry | None = None,
        queue_size: int = QUEUE_SIZE,
        retry: Retry | None = None,
        timeout_s: float = REQUEST_TIMEOUT_S,
        drain_timeout_s: float = DRAIN_TIMEOUT_S,
    ) -> None:
        self.endpoints = [_Endpoint(check_webhook_url(u), queue_size) for u in dict.fromkeys(urls)]
        self.retry = retry or Retry()
        self.timeout_s = timeout_s
        self.drain_timeout_s = drain_timeout_s
        self._client: httpx.AsyncClient | None = None
        self._closed = False
        self.failures = Counter(
            "dbchaos_webhook_failures",
            "Events a webhook did not receive: reason is queue_full, gave_up (retries used up) or refused (4xx)",
            ["webhook", "reason"],
            registry=registry,
        )
        self.deliveries = Counter(
            "dbchaos_webhook_deliveries", "Events delivered to a webhook (2xx)", ["webhook"], registry=registry
        )

    def __repr__(self) -> str:
        return f"WebhookSink({', '.join(e.label for e in self.endpoints)})"

    def offer(self, event: Event) -> None:
        if self._closed:
            return
        for ep in self.endpoints:
            if ep.task is None:
                ep.task = asyncio.get_running_loop().create_task(self._deliver_loop(ep), name=f"webhook {ep.label}")
            try:
                ep.queue.put_nowait(event)
            except asyncio.QueueFull:
                self._failed(ep, event, "queue_full", f"its queue of {ep.queue.maxsize} events is full")

    def _failed(self, ep: _Endpoint, event: Event, reason: str, why: str) -> None:
        self.failures.labels(ep.label, reason).inc()
        _log.warning("webhook %s did not get event %d (%s): %s", ep.label, event.seq, event.topic, why)

    def _http(self) -> httpx.AsyncClient:
        if self._client is None:
            self._client = httpx.AsyncClient(
                timeout=self.timeout_s,
                follow_redirects=False,
                headers={"User-Agent": f"dbchaos/{dbchaos.__version__}"},
            )
        return self._client

    async def _deliver_loop(self, ep: _Endpoint) -> None:
        while True:
            event = await ep.queue.get()
            try:
                await self._deliver(ep, event)
            except asyncio.CancelledError:
                self._failed(ep, event, "gave_up", "dbchaos stopped while delivering it")
                raise
            finally:
                ep.queue.task_done()

    async def _deliver(self, ep: _Endpoint, event: Event) -> None:
        headers = {"X-Dbchaos-Event": event.topic, "X-Dbchaos-Delivery": str(event.seq)}
        body = event.as_json()
        why = ""
        for attempt in range(1, self.retry.attempts + 1):
            try:
                resp = await self._http().post(ep.url, json=body, headers=headers)
            except httpx.HTTPError as exc:
                why = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
            else:
                if resp.is_success:
                    self.deliveries.labels(ep.label).inc()
                    return
                why = f"HTTP {resp.status_code}"
                if resp.status_code < 500 and resp.status_code not in _RETRY_STATUS:
                    self._failed(ep, event, "refused", why)
                    return
            if attempt < self.retry.attempts:
                _log.info(
                    "webhook %s: attempt %d for event %d failed (%s); retrying", ep.label, attempt, event.seq, why
                )
                await asyncio.sleep(self.retry.backoff(attempt))
        self._failed(ep, event, "gave_up", f"{self.retry.attempts} attempts failed, the last with {why}")

    async def drain(self, timeout_s: float) -> bool:
        """Wait until every queued event was delivered or given up; False on timeout."""
        waits = [ep.queue.join() for ep in self.endpoints if ep.task is not None]
        try:
            async with asyncio.timeout(timeout_s):
                await asyncio.gather(*waits)
        except TimeoutError:
            return False
        return True

    async def close(self) -> None:
        """Deliver what is queued (up to ``drain_timeout_s``), then stop; what is left is counted."""
        self._closed = True
        await self.drain(self.drain_timeout_s)
        for ep in self.endpoints:
            if ep.task is not None:
                ep.task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await ep.task
            while not ep.queue.empty():
                self._failed(ep, ep.queue.get_nowait(), "gave_up", "dbchaos stopped before it could be delivered")
        if self._client is not None:
            await self._client.aclose()
