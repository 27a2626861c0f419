"""``GET /v1/events`` (server-sent events) and webhooks, against a real ``dbchaos serve``."""

from __future__ import annotations

import json
import signal
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from dbchaos.api.app import create_app
from dbchaos.api.auth import TokenScope, TokenStore, generate_token
from dbchaos.settings import Settings
from dbchaos.targets import Target
from tests.helpers import no_dbchaos_sessions, relation_locks, wait_for
from tests.server_proc import ServerProcess, dbchaos_server, free_port

LOCK = {"kind": "table-lock", "params": {"tables": ["items"]}, "duration_s": 30}


class SseReader:
    """Reads ``text/event-stream`` lines from an open httpx response, event by event."""

    def __init__(self, resp: httpx.Response) -> None:
        self.lines = resp.iter_lines()
        self.comments: list[str] = []

    def next_event(self) -> dict[str, Any]:
        fields: dict[str, str] = {}
        for line in self.lines:
            if line == "":
                if "data" in fields:
                    return {"event": fields.get("event"), "id": fields.get("id"), "data": json.loads(fields["data"])}
                continue
            if line.startswith(":"):
                self.comments.append(line[1:].strip())
                continue
            name, _, value = line.partition(":")
            fields[name] = value.removeprefix(" ")
        raise AssertionError("the event stream ended")

    def until(self, predicate: Any, limit: int = 50) -> list[dict[str, Any]]:
        seen = []
        for _ in range(limit):
            ev = self.next_event()
            seen.append(ev)
            if predicate(ev):
                return seen
        raise AssertionError(f"no matching event among {seen}")

    def wait_for_comment(self, text: str) -> None:
        for line in self.lines:
            if line.startswith(":") and text in line:
                return
        raise AssertionError(f"the stream ended before the comment {text!r}")


@contextmanager
def sse(server: ServerProcess, params: dict[str, Any] | None = None) -> Iterator[SseReader]:
    with (
        httpx.Client(base_url=server.url, timeout=httpx.Timeout(10.0)) as client,
        client.stream("GET", "/v1/events", params=params) as resp,
    ):
        assert resp.status_code == 200, resp.read()
        assert resp.headers["content-type"].startswith("text/event-stream")
        reader = SseReader(resp)
        reader.wait_for_comment("dbchaos events")  # subscribed from here on
        yield reader


class Receiver:
    """A local HTTP server that records every POST (the webhook receiver)."""

    def __init__(self) -> None:
        self.posts: list[tuple[dict[str, str], dict[str, Any]]] = []
        received = self.posts

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                received.append((dict(self.headers), json.loads(body)))
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook?token=s3cret"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> Receiver:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()

    def events_of(self, fault_id: str) -> list[str]:
        return [body["event"] for _, body in list(self.posts) if body.get("id") == fault_id]


def test_a_stream_sees_created_active_reverting_reverted_in_order(db: str, tmp_path: Path) -> None:
    with dbchaos_server(["--target", db], tmp_path) as server, server.client() as client:
        with sse(server) as events:
            created = client.post("/v1/faults", json={**LOCK, "labels": {"owner": "sre"}})
            assert created.status_code == 201, created.text
            fid = created.json()["id"]
            assert relation_locks(db, "items")
            assert client.delete(f"/v1/faults/{fid}").json()["state"] == "reverted"
            seen = events.until(lambda e: e["data"]["event"] == "reverted")
        mine = [e for e in seen if e["data"]["id"] == fid]
        assert [e["data"]["event"] for e in mine] == ["created", "active", "reverting", "reverted"]
        assert [e["data"]["state"] for e in mine] == ["pending", "active", "reverting", "reverted"]
        assert all(e["event"] == "fault" for e in mine)
        last = mine[-1]["data"]
        assert last["end_reason"] == "aborted"
        assert last["kind"] == "table-lock" and last["target"] == "default"
        assert last["labels"] == {"owner": "sre"}
        assert last["time"].endswith("Z")
        ids = [int(e["id"]) for e in mine]
        assert ids == sorted(ids)
        assert relation_locks(db, "items") == []


def test_filters_keepalive_and_max_s(db: str, tmp_path: Path) -> None:
    with dbchaos_server(["--target", db], tmp_path) as server, server.client() as client:
        other = client.post("/v1/faults", json={**LOCK, "params": {"tables": ["users"]}}).json()["id"]
        with sse(server, {"keepalive_s": 1, "max_s": 20}) as everything:
            with sse(server, {"fault_id": other}) as only_other:
                fid = client.post("/v1/faults", json=LOCK).json()["id"]
                client.delete(f"/v1/faults/{fid}")
                client.delete(f"/v1/faults/{other}")
                seen = only_other.until(lambda e: e["data"]["event"] == "reverted")
            assert {e["data"]["id"] for e in seen} == {other}
            everything.until(lambda e: e["data"]["id"] == other and e["data"]["event"] == "reverted")
            everything.wait_for_comment("keep-alive")
        started = time.monotonic()
        with sse(server, {"max_s": 1}) as short, pytest.raises(AssertionError, match="ended"):
            short.next_event()
        assert time.monotonic() - started < 5
        bad = client.get("/v1/events", params={"keepalive_s": 0})
        assert bad.status_code == 422 and bad.json()["field"] == "keepalive_s"


def test_sigterm_with_an_open_stream_still_reverts_and_exits(db: str, tmp_path: Path) -> None:
    with dbchaos_server(["--target", db], tmp_path) as server, server.client() as client:
        fid = client.post("/v1/faults", json=LOCK).json()["id"]
        with sse(server) as events:
            server.proc.send_signal(signal.SIGTERM)
            # the faults are reverted before the streams end: the stream carries the final event
            seen = events.until(lambda e: e["data"]["id"] == fid and e["data"]["event"] == "reverted")
            assert seen[-1]["data"]["end_reason"] == "shutdown"
            with pytest.raises(AssertionError, match="ended"):
                events.next_event()
        assert server.proc.wait(15) == 0, server.output()
        assert relation_locks(db, "items") == []
        assert no_dbchaos_sessions(db)


def test_webhooks_get_every_event_and_a_dead_one_slows_nothing(db: str, tmp_path: Path) -> None:
    dead = f"http://127.0.0.1:{free_port()}/nobody-listens"
    with Receiver() as hook:
        args = ["--target", db, "--webhook", dead, "--webhook", hook.url]
        with dbchaos_server(args, tmp_path) as server, server.client() as client:
            timings = []
            for table in ("items", "users", "orders"):
                started = time.monotonic()
                created = client.post("/v1/faults", json={**LOCK, "params": {"tables": [table]}})
                timings.append(time.monotonic() - started)
                assert created.status_code == 201, created.text
                fid = created.json()["id"]
                client.delete(f"/v1/faults/{fid}")
            # the dead URL is still retrying its first event: injection did not wait for it
            assert max(timings) < 2.0, timings
            wait_for(lambda: hook.events_of(fid) == ["created", "active", "reverting", "reverted"], 5)
            headers, body = next((h, b) for h, b in hook.posts if b.get("id") == fid and b["event"] == "reverted")
            assert headers["X-Dbchaos-Event"] == "fault"
            assert headers["Content-Type"] == "application/json"
            assert body["end_reason"] == "aborted" and body["topic"] == "fault"
            assert int(headers["X-Dbchaos-Delivery"]) == body["seq"]
            assert len(hook.posts) == 12  # 3 faults x 4 changes, each once
        # no secret of a webhook URL reaches the log
        assert "s3cret" not in server.output() and "nobody-listens" not in server.output()


def test_webhooks_from_the_targets_file_add_to_the_flag(db: str, tmp_path: Path) -> None:
    with Receiver() as from_file, Receiver() as from_flag:
        targets = tmp_path / "targets.toml"
        targets.write_text(f"webhooks = [{json.dumps(from_file.url)}]\n\n[targets.main]\ndsn = {json.dumps(db)}\n")
        args = ["--targets-file", str(targets), "--webhook", from_flag.url]
        with dbchaos_server(args, tmp_path) as server, server.client() as client:
            fid = client.post("/v1/faults", json=LOCK).json()["id"]
            client.delete(f"/v1/faults/{fid}")
            for hook in (from_file, from_flag):
                wait_for(lambda hook=hook: hook.events_of(fid)[-1:] == ["reverted"], 5)  # type: ignore[misc]
        assert {body["target"] for _, body in from_file.posts} == {"main"}

        targets.write_text(f'webhooks = ["mailto:ops@example.com"]\n\n[targets.main]\ndsn = {json.dumps(db)}\n')
        with pytest.raises(AssertionError, match=r"exited early \(2\)"), dbchaos_server(args, tmp_path):
            pass


def test_a_bad_webhook_url_is_a_usage_error(tmp_path: Path) -> None:
    args = ["--target", "postgresql:///nowhere", "--webhook", "ftp://example.com/x"]
    with pytest.raises(AssertionError, match=r"exited early \(2\)"), dbchaos_server(args, tmp_path):
        pass


def test_events_need_the_read_scope_when_tokens_are_configured() -> None:
    tokens = {s: generate_token(s) for s in (TokenScope.READ,)}
    store = TokenStore.parse("\n".join(t.entry_toml() for t in tokens.values()))
    app = create_app(
        Settings(), {"default": Target("default", "postgresql:///x")}, tokens=store, recover_on_start=False
    )
    client = TestClient(app, base_url="http://127.0.0.1:8080")
    assert client.get("/v1/events", params={"max_s": 0}).status_code == 401
    ok = client.get(
        "/v1/events", params={"max_s": 0}, headers={"Authorization": f"Bearer {tokens[TokenScope.READ].secret}"}
    )
    assert ok.status_code == 200
    assert ok.text.startswith("retry: ")
    assert (
        "/v1/events"
        not in client.get(
            "/openapi.json", headers={"Authorization": f"Bearer {tokens[TokenScope.READ].secret}"}
        ).json()["paths"]
    )
