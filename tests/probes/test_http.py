"""The HTTP probe against a real HTTP server started by the test (uvicorn in a thread)."""

from __future__ import annotations

import asyncio
import itertools
import socket
import statistics
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest
import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import PlainTextResponse

from dbchaos.errors import InvalidInput
from dbchaos.probes import HttpProbe, HttpProbeConfig, ProbeRun


@dataclass
class App:
    url: str
    seen_ids: list[str] = field(default_factory=list)
    bodies: list[bytes] = field(default_factory=list)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def app() -> Iterator[App]:
    """A tiny service: /ok, /slow?s=<seconds>, /fail (500 with an error text), /echo."""
    api = FastAPI()
    port = _free_port()
    state = App(f"http://127.0.0.1:{port}")

    @api.get("/ok")
    async def ok(request: Request) -> PlainTextResponse:
        state.seen_ids.append(request.headers.get("x-request-id", ""))
        return PlainTextResponse("fine")

    @api.get("/slow")
    async def slow(s: float = 1.0) -> PlainTextResponse:
        await asyncio.sleep(s)
        return PlainTextResponse("slept")

    @api.get("/fail")
    async def fail() -> PlainTextResponse:
        return PlainTextResponse("QueuePool limit of size 5 overflow 10 reached\nmore lines", status_code=500)

    @api.post("/echo")
    async def echo(request: Request) -> PlainTextResponse:
        state.bodies.append(await request.body())
        return PlainTextResponse("ok", status_code=201)

    server = uvicorn.Server(uvicorn.Config(api, host="127.0.0.1", port=port, log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert time.monotonic() < deadline, "the test HTTP server did not start"
        time.sleep(0.02)
    try:
        yield state
    finally:
        server.should_exit = True
        thread.join(10)


def run_probe(cfg: HttpProbeConfig, duration_s: float) -> ProbeRun:
    async def scenario() -> ProbeRun:
        async with HttpProbe(cfg) as probe:
            return await probe.run(duration_s=duration_s)

    return asyncio.run(scenario())


def test_requests_succeed_and_carry_a_unique_request_id_header(app: App) -> None:
    app.seen_ids.clear()
    run = run_probe(HttpProbeConfig("ok", f"{app.url}/ok", rate_hz=20, concurrency=5), 0.5)
    assert run.planned == 10 and run.started == 10 and run.skipped == []
    assert all(r.ok and r.status == 200 and not r.timed_out and r.error is None for r in run.results)
    ids = [r.request_id for r in run.results]
    assert len(set(ids)) == 10 and all(len(i) == 32 for i in ids)
    assert sorted(app.seen_ids) == sorted(ids)  # what the app received
    assert [r.seq for r in run.results] == list(range(1, 11))
    d = run.as_dict()["results"][0]
    assert d["status"] == 200 and d["ok"] is True and d["started_at"].endswith("Z") and d["latency_ms"] > 0


def test_an_error_status_is_a_failure_with_the_answer_text_unless_expected(app: App) -> None:
    run = run_probe(HttpProbeConfig("fail", f"{app.url}/fail", rate_hz=10, concurrency=2), 0.3)
    assert run.results and all(not r.ok and r.status == 500 and not r.timed_out for r in run.results)
    r = run.results[0]
    assert r.error_class == "UnexpectedStatus"
    assert r.error == "HTTP 500: QueuePool limit of size 5 overflow 10 reached"
    run = run_probe(HttpProbeConfig("fail", f"{app.url}/fail", rate_hz=10, concurrency=2, expect_status=(500,)), 0.2)
    assert run.results and all(r.ok for r in run.results)


def test_a_slow_answer_times_out_after_the_probe_timeout(app: App) -> None:
    cfg = HttpProbeConfig("slow", f"{app.url}/slow?s=2", rate_hz=5, concurrency=5, timeout_s=0.3)
    run = run_probe(cfg, 0.4)
    assert len(run.results) == 2
    for r in run.results:
        assert r.timed_out and not r.ok and r.status is None
        assert r.error_class in ("Timeout", "ReadTimeout")
        assert 0.28 <= r.latency_s < 1.0


def test_open_loop_rate_holds_when_every_request_takes_a_second(app: App) -> None:
    cfg = HttpProbeConfig("slow", f"{app.url}/slow?s=1", rate_hz=10, concurrency=20, timeout_s=5)
    started = time.monotonic()
    run = run_probe(cfg, 2.0)
    took = time.monotonic() - started
    assert run.planned == 20 and run.started == 20 and not run.skipped
    assert len(run.results) == 20 and all(r.ok for r in run.results)
    starts = sorted(r.started_mono for r in run.results)
    gaps = [b - a for a, b in itertools.pairwise(starts)]
    assert statistics.median(gaps) == pytest.approx(0.1, abs=0.02)
    assert starts[-1] - starts[0] == pytest.approx(1.9, abs=0.15)  # not 19 s, as a closed loop would take
    assert all(0.95 <= r.latency_s < 2.0 for r in run.results)
    assert took < 4.0  # 2 s of starts, then the last answers drain


def test_concurrency_caps_requests_in_flight_and_records_skipped_starts(app: App) -> None:
    cfg = HttpProbeConfig("slow", f"{app.url}/slow?s=1", rate_hz=10, concurrency=3, timeout_s=5)
    run = run_probe(cfg, 1.0)
    assert run.planned == 10 and run.started == 3 and len(run.skipped) == 7
    assert all(r.ok for r in run.results)
    assert run.as_dict()["skipped"] == [round(t, 6) for t in run.skipped]


def test_body_and_headers_are_sent_and_secrets_stay_out_of_describe(app: App) -> None:
    app.bodies.clear()
    cfg = HttpProbeConfig(
        "post",
        f"{app.url}/echo",
        method="post",
        headers={"Authorization": "Bearer s3cret"},
        json_body={"a": 1},
        rate_hz=10,
        concurrency=1,
    )
    run = run_probe(cfg, 0.15)
    assert run.results and all(r.ok and r.status == 201 for r in run.results)
    assert app.bodies[0] == b'{"a":1}'
    d = HttpProbe(cfg).describe()
    assert d["headers"] == {"Authorization": "***"} and d["method"] == "POST"


def test_connection_refused_is_an_error_not_a_timeout() -> None:
    port = _free_port()  # nothing listens there
    run = run_probe(HttpProbeConfig("down", f"http://127.0.0.1:{port}/", rate_hz=10, concurrency=2), 0.2)
    assert run.results and all(not r.ok and not r.timed_out and r.error_class == "ConnectError" for r in run.results)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"url": "ftp://x/"}, "url"),
        ({"url": "/relative"}, "url"),
        ({"method": "FETCH"}, "method"),
        ({"rate_hz": 0}, "probe 'p'.rate"),
        ({"concurrency": 0}, "probe 'p'.concurrency"),
        ({"timeout_s": -1}, "timeout"),
        ({"body": "x", "json_body": {}}, "json"),
        ({"expect_status": (42,)}, "expect_status"),
    ],
)
def test_bad_settings_are_refused(kwargs: dict[str, object], field: str) -> None:
    args: dict[str, object] = {"name": "p", "url": "http://127.0.0.1:1/"} | kwargs
    with pytest.raises(InvalidInput) as info:
        HttpProbeConfig(**args)  # type: ignore[arg-type]
    assert info.value.field == field
