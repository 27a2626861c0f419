"""``GET /v1/events``: fault (and experiment) state changes as server-sent events.

Each event is ``event: <topic>`` with ``data:`` one line of JSON (docs/events.md); a comment
line every ``keepalive_s`` keeps proxies and load balancers from closing a quiet stream.
The stream ends when the client goes away, after ``max_s`` if given, or when dbchaos stops.

The route is left out of the OpenAPI schema: an endless ``text/event-stream`` is not a JSON
answer a generated client (or a schema fuzzer) can wait for.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import APIRouter, Depends, Query
from fastapi.responses import StreamingResponse

from dbchaos.api.context import AppContext, get_context
from dbchaos.events import Event, EventBus

router = APIRouter(prefix="/v1")
Ctx = Annotated[AppContext, Depends(get_context)]

#: what a client should wait before reconnecting (the SSE ``retry`` field), in milliseconds
RETRY_MS = 2000


def _matches(event: Event, fault_id: str | None) -> bool:
    return fault_id is None or event.data.get("id") == fault_id


async def _stream(
    bus: EventBus, topics: list[str] | None, *, fault_id: str | None, keepalive_s: float, max_s: float | None
) -> AsyncIterator[str]:
    # subscribed before the first line goes out: a client that has read it misses nothing after
    sub = bus.subscribe(topics)
    end = None if max_s is None else time.monotonic() + max_s
    dropped = 0
    try:
        yield f"retry: {RETRY_MS}\n: dbchaos events\n\n"
        while True:
            wait = keepalive_s if end is None else min(keepalive_s, end - time.monotonic())
            if wait <= 0:
                return
            try:
                event = await sub.next(timeout=wait)
            except TimeoutError:
                if end is not None and time.monotonic() >= end:
                    return
                yield ": keep-alive\n\n"
                continue
            if event is None:  # dbchaos is stopping
                return
            if sub.dropped > dropped:
                yield f": {sub.dropped - dropped} event(s) dropped: this client fell behind\n\n"
                dropped = sub.dropped
            if _matches(event, fault_id):
                yield event.sse()
    finally:
        sub.close()


@router.get("/events", summary="Fault and experiment state changes (server-sent events)", include_in_schema=False)
async def events(
    ctx: Ctx,
    topic: Annotated[list[str] | None, Query(description="Only these topics (fault, experiment)")] = None,
    fault_id: Annotated[str | None, Query(description="Only this fault's events")] = None,
    keepalive_s: Annotated[float, Query(ge=1, le=300, description="Seconds between keep-alive comments")] = 15.0,
    max_s: Annotated[float | None, Query(ge=0, le=86400, description="End the stream after this long")] = None,
) -> StreamingResponse:
    """``text/event-stream`` of events from now on (no replay)."""
    return StreamingResponse(
        _stream(ctx.engine.events, topic, fault_id=fault_id, keepalive_s=keepalive_s, max_s=max_s),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )
