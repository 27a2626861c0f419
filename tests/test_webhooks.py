"""The event bus and the webhook sender, with a real local HTTP receiver (no database)."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from dbchaos.errors import InvalidInput
from dbchaos.events import EventBus
from dbchaos.webhooks import Retry, WebhookSink, check_webhook_url, display_url
from tests.server_proc import free_port


class Receiver:
    """Answers the first ``fail_first`` POSTs with ``status_on_failure``, then 200."""

    def __init__(self, fail_first: int = 0, status_on_failure: int = 503, delay_s: float = 0.0) -> None:
        self.bodies: list[dict[str, Any]] = []
        self.attempts = 0
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                outer.attempts += 1
                time.sleep(delay_s)
                if outer.attempts <= fail_first:
                    self.send_response(status_on_failure)
                else:
                    outer.bodies.append(body)
                    self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def sample(registry: CollectorRegistry, name: str, **labels: str) -> float:
    return registry.get_sample_value(name, labels) or 0.0


FAST = Retry(attempts=3, first_backoff_s=0.05, max_backoff_s=0.1)


def test_subscriptions_filter_topics_drop_when_behind_and_end() -> None:
    async def scenario() -> None:
        bus = EventBus()
        faults = bus.subscribe(["fault"])
        small = bus.subscribe(maxsize=2)
        for i in range(3):
            bus.publish("fault", {"n": i})
        bus.publish("experiment", {"n": 9})
        assert [(await faults.next(1)).data["n"] for _ in range(3)] == [0, 1, 2]  # type: ignore[union-attr]
        with pytest.raises(TimeoutError):
            await faults.next(0.05)  # the experiment event is not for it
        assert small.dropped == 2
        assert [e.seq for e in [await small.next(1), await small.next(1)] if e] == [1, 2]
        bus.end_streams()
        assert await faults.next(1) is None and await faults.next(1) is None
        assert bus.subscriber_count == 0
        late = bus.subscribe()
        await bus.close()
        assert await late.next(1) is None

    asyncio.run(scenario())


def test_every_event_reaches_the_receiver_in_order_with_retries() -> None:
    hook = Receiver(fail_first=2)
    registry = CollectorRegistry()

    async def scenario() -> None:
        sink = WebhookSink([hook.url], registry=registry, retry=FAST)
        bus = EventBus([sink])
        for i in range(5):
            bus.publish("fault", {"n": i})
        assert await sink.drain(5)
        await bus.close()

    try:
        asyncio.run(scenario())
    finally:
        hook.close()
    assert [b["n"] for b in hook.bodies] == [0, 1, 2, 3, 4]
    assert [b["seq"] for b in hook.bodies] == [1, 2, 3, 4, 5]
    assert hook.attempts == 7  # the first event needed three attempts
    label = display_url(hook.url)
    assert sample(registry, "dbchaos_webhook_deliveries_total", webhook=label) == 5
    assert sample(registry, "dbchaos_webhook_failures_total", webhook=label, reason="gave_up") == 0


def test_failures_are_counted_and_never_block_the_publisher() -> None:
    refuses = Receiver(fail_first=100, status_on_failure=400)
    slow = Receiver(delay_s=0.3)
    dead = f"http://127.0.0.1:{free_port()}/gone"
    registry = CollectorRegistry()

    async def scenario() -> float:
        sink = WebhookSink([dead, refuses.url, slow.url], registry=registry, retry=FAST, queue_size=3)
        bus = EventBus([sink])
        started = time.monotonic()
        for i in range(6):
            bus.publish("fault", {"n": i})
        took = time.monotonic() - started
        await sink.drain(10)
        await bus.close()
        return took

    try:
        took = asyncio.run(scenario())
    finally:
        refuses.close()
        slow.close()
    assert took < 0.05  # publishing is a put_nowait per URL
    # each URL's queue holds 3 events (its task had not run yet): events 4 to 6 found it full
    for url in (dead, refuses.url, slow.url):
        assert sample(registry, "dbchaos_webhook_failures_total", webhook=display_url(url), reason="queue_full") == 3
    assert sample(registry, "dbchaos_webhook_failures_total", webhook=display_url(dead), reason="gave_up") == 3
    refused = sample(registry, "dbchaos_webhook_failures_total", webhook=display_url(refuses.url), reason="refused")
    assert refused == 3 and refuses.attempts == 3  # a 400 is final: no retry
    assert [b["n"] for b in slow.bodies] == [0, 1, 2]


def test_webhook_urls_are_checked_and_shown_without_secrets() -> None:
    assert check_webhook_url("https://hooks.example.com/T0/B1/secret") == "https://hooks.example.com/T0/B1/secret"
    assert display_url("https://user:pw@hooks.example.com:8443/T0/secret?x=1") == "https://hooks.example.com:8443"
    for bad in ("ftp://example.com/x", "example.com/hook", "http:///path", "http://host:99999/x"):
        with pytest.raises(InvalidInput) as info:
            check_webhook_url(bad)
        assert info.value.field == "webhook"
