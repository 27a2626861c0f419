"""The event bus: what happened to faults (and, later, experiments), for whoever listens.

The engine owns one :class:`EventBus` and publishes every fault state change on it (topic
``fault``); the experiment runner publishes on topic ``experiment``. Listeners are

* :class:`Subscription` — a bounded in-memory queue per ``GET /v1/events`` stream;
* sinks (:class:`Sink`), e.g. the webhook sender (:mod:`dbchaos.webhooks`).

Publishing never blocks and never fails: it runs inside the engine's lifecycle code, so a
slow SSE client or a dead webhook must not delay a revert. A listener that falls behind
loses events (counted in ``dropped``), it never slows the publisher.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator, Collection, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

from dbchaos.engine.model import FaultRecord

_log = logging.getLogger("dbchaos.events")

TOPIC_FAULT = "fault"
TOPIC_EXPERIMENT = "experiment"
#: events a stream may lag behind before it starts losing them
DEFAULT_SUBSCRIPTION_SIZE = 1000


def rfc3339(ts: float | None) -> str | None:
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass(frozen=True)
class Event:
    """One published event: a sequence number (per bus, from 1), a topic and a JSON payload."""

    seq: int
    topic: str
    time: float
    data: Mapping[str, Any]

    def as_json(self) -> dict[str, Any]:
        """The JSON object sent to SSE clients and webhooks."""
        return {"topic": self.topic, "seq": self.seq, "time": rfc3339(self.time), **self.data}

    def sse(self) -> str:
        """The event in ``text/event-stream`` framing (``data`` is one line of JSON)."""
        body = json.dumps(self.as_json(), separators=(",", ":"), default=str)
        return f"id: {self.seq}\nevent: {self.topic}\ndata: {body}\n\n"


def fault_data(rec: FaultRecord, event: str, **extra: Any) -> dict[str, Any]:
    """The payload of a ``fault`` event: what happened (``event``: ``created``, ``active``,
    ``reverting``, ``extended`` or the final state) and the fault as it is now."""
    return {
        "event": event,
        "id": rec.id,
        "kind": rec.kind,
        "target": rec.target,
        "state": rec.state.value,
        "end_reason": rec.end_reason.value if rec.end_reason is not None else None,
        "labels": dict(rec.labels),
        "duration_s": rec.duration_s,
        "deadline": rfc3339(rec.deadline),
        "error": rec.error,
        **extra,
    }


class Sink(Protocol):
    """A listener that takes every event (``offer`` must not block) and is closed with the bus."""

    def offer(self, event: Event) -> None: ...

    async def close(self) -> None: ...


_END = object()


@dataclass(eq=False)
class Subscription:
    """One listener's bounded queue of events (e.g. one SSE stream)."""

    bus: EventBus
    topics: frozenset[str] | None
    maxsize: int = DEFAULT_SUBSCRIPTION_SIZE
    #: events lost because the listener fell more than ``maxsize`` behind
    dropped: int = 0
    _queue: asyncio.Queue[Event | object] = field(init=False, repr=False)
    _closed: bool = field(default=False, init=False, repr=False)

    def __post_init__(self) -> None:
        # one slot more than maxsize: room for the end marker even when full
        self._queue = asyncio.Queue(self.maxsize + 1)

    @property
    def closed(self) -> bool:
        return self._closed

    def wants(self, event: Event) -> bool:
        return self.topics is None or event.topic in self.topics

    def offer(self, event: Event) -> None:
        if self._closed or not self.wants(event):
            return
        if self._queue.qsize() >= self.maxsize:
            self.dropped += 1
            return
        self._queue.put_nowait(event)

    def end(self) -> None:
        """No more events: a waiting :meth:`next` returns ``None`` once the queue is empty."""
        if not self._closed:
            self._closed = True
            self._queue.put_nowait(_END)

    async def next(self, timeout: float | None = None) -> Event | None:
        """The next event; ``None`` when the subscription ended. Raises ``TimeoutError``
        if nothing arrived within ``timeout`` seconds."""
        async with asyncio.timeout(timeout):
            item = await self._queue.get()
        if isinstance(item, Event):
            return item
        self._queue.put_nowait(_END)  # stay ended for later callers
        return None

    async def __aiter__(self) -> AsyncIterator[Event]:
        while (event := await self.next()) is not None:
            yield event

    def close(self) -> None:
        """Stop listening (idempotent)."""
        self.end()
        self.bus.unsubscribe(self)

    def __enter__(self) -> Subscription:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class EventBus:
    """Publishes events to subscriptions and sinks; owned by the engine (one per server)."""

    def __init__(self, sinks: Collection[Sink] = ()) -> None:
        self._seq = 0
        self._subscriptions: set[Subscription] = set()
        self._sinks: list[Sink] = list(sinks)
        self._closed = False

    @property
    def subscriber_count(self) -> int:
        return len(self._subscriptions)

    @property
    def last_seq(self) -> int:
        return self._seq

    def add_sink(self, sink: Sink) -> None:
        self._sinks.append(sink)

    def publish(self, topic: str, data: Mapping[str, Any]) -> Event:
        """Hand an event to every listener now; never blocks, never raises."""
        self._seq += 1
        event = Event(self._seq, topic, time.time(), dict(data))
        if self._closed:
            return event
        for sub in list(self._subscriptions):
            sub.offer(event)
        for sink in self._sinks:
            try:
                sink.offer(event)
            except Exception:  # a listener's bug must not break the engine
                _log.exception("event sink %r failed to take event %d", sink, event.seq)
        return event

    def subscribe(
        self, topics: Collection[str] | None = None, *, maxsize: int = DEFAULT_SUBSCRIPTION_SIZE
    ) -> Subscription:
        """A new subscription to ``topics`` (all when ``None``); close it when done."""
        sub = Subscription(self, frozenset(topics) if topics is not None else None, maxsize)
        if self._closed:
            sub.end()
        else:
            self._subscriptions.add(sub)
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        self._subscriptions.discard(sub)

    def end_streams(self) -> None:
        """End every subscription (the server is stopping: SSE responses must finish so
        the HTTP server can shut down); sinks keep receiving events until :meth:`close`."""
        for sub in list(self._subscriptions):
            sub.end()
        self._subscriptions.clear()

    async def close(self) -> None:
        """End every subscription and close the sinks (they deliver what they can first)."""
        self.end_streams()
        self._closed = True
        for sink in self._sinks:
            try:
                await sink.close()
            except Exception:
                _log.exception("event sink %r failed to close", sink)
