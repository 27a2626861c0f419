"""The previous chaos server's failed-migration interface (``/api/v1/break/migrations``),
through HTTP, against a real PostgreSQL and the real Alembic CLI."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, TypeVar

import pytest
from fastapi.testclient import TestClient
from psycopg import conninfo

from dbchaos.api.app import create_app
from dbchaos.api.context import AppContext
from dbchaos.faults.migration.graph import RevisionGraph
from dbchaos.settings import Settings
from dbchaos.targets import Target, parse_dsn
from tests.alembic_helpers import HEAD, INVOICES, MERGE, alembic
from tests.helpers import query

BASE = "http://127.0.0.1:8080"
URL = "/api/v1/break/migrations"
T = TypeVar("T")

STATUS_KEYS = {
    "id",
    "state",
    "failure_type",
    "duration_seconds",
    "created_at",
    "started_at",
    "original_version",
    "corrupted_version",
    "corrupted_at",
    "finished_at",
    "rolled_back_at",
    "restored_version",
    "error",
    "rollback_error",
    "ends_at",
    "end_reason",
    "target_api_base_url",
}


class Client:
    """A TestClient that checks every answer for the database URL."""

    def __init__(self, client: TestClient, ctx: AppContext, dsn: str) -> None:
        self.http = client
        self.ctx = ctx
        self.dbname = parse_dsn(dsn)["dbname"]

    def call(self, method: str, path: str, **params: Any) -> tuple[int, dict[str, Any]]:
        resp = self.http.request(method, path, params=params)
        assert self.dbname not in resp.text, "an answer contains the database URL"
        body: dict[str, Any] = resp.json()
        return resp.status_code, body

    def start(self, **params: Any) -> str:
        code, body = self.call("POST", URL, **params)
        assert code == 200, body
        assert set(body) == {"status", "attack_id"}
        assert body["status"] == "started"
        return str(uuid.UUID(body["attack_id"]))

    def status(self, attack_id: str) -> dict[str, Any]:
        code, body = self.call("GET", f"{URL}/{attack_id}")
        assert code == 200, body
        assert STATUS_KEYS <= set(body) <= STATUS_KEYS | {"note"}
        return body

    def stop(self, attack_id: str) -> tuple[int, dict[str, Any]]:
        return self.call("POST", f"{URL}/{attack_id}/stop")

    def wait_state(self, attack_id: str, state: str, timeout: float = 10.0) -> dict[str, Any]:
        def check() -> dict[str, Any] | None:
            body = self.status(attack_id)
            assert body["state"] == state or body["state"] not in {"failed", "rollback_failed", "rolled_back"}, body
            return body if body["state"] == state else None

        return wait_for(check, f"state {state!r}", timeout)


@contextmanager
def serve(dsn: str, graph: RevisionGraph | None = None) -> Iterator[Client]:
    app = create_app(
        Settings(), {"default": Target("default", dsn)}, graphs={"default": graph} if graph is not None else None
    )
    with TestClient(app, base_url=BASE) as client:
        ctx = app.state.ctx
        assert isinstance(ctx, AppContext)
        yield Client(client, ctx, dsn)


def wait_for(fn: Callable[[], T | None], what: str, timeout: float = 10.0) -> T:
    deadline = time.monotonic() + timeout
    while True:
        value = fn()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(0.05)


def rows(dsn: str) -> list[str]:
    return sorted(str(r[0]) for r in query(dsn, "SELECT version_num FROM alembic_version"))


def journal_states(dsn: str) -> list[str]:
    if not query(dsn, "SELECT to_regclass('dbchaos.journal')")[0][0]:
        return []
    return [str(r[0]) for r in query(dsn, "SELECT state FROM dbchaos.journal ORDER BY created_at")]


def check_corruption(failure_type: str, corrupted: str | None, graph: RevisionGraph) -> None:
    if failure_type == "missing_version":
        assert corrupted is None
        return
    assert corrupted is not None
    if failure_type == "db_behind_code":
        assert corrupted == MERGE  # one step back from the head
        return
    assert corrupted not in graph
    assert not any(r.startswith(corrupted) or corrupted.startswith(r) for r in graph.revisions)
    if failure_type == "future_version":  # shaped like the app's own ids
        assert len(corrupted) == len(HEAD)
        assert set(corrupted) <= set("0123456789abcdef")


@pytest.mark.parametrize("failure_type", ["invalid_version", "missing_version", "future_version", "db_behind_code"])
def test_each_failure_type_corrupts_then_stop_restores(
    alembic_db: str, graph: RevisionGraph, failure_type: str
) -> None:
    with serve(alembic_db, graph) as c:
        attack = c.start(failure_type=failure_type, duration_seconds=30)
        body = c.wait_state(attack, "running")
        assert body["failure_type"] == failure_type
        assert body["duration_seconds"] == 30
        assert body["original_version"] == HEAD
        check_corruption(failure_type, body["corrupted_version"], graph)
        assert rows(alembic_db) == ([] if body["corrupted_version"] is None else [body["corrupted_version"]])
        assert body["corrupted_at"] >= body["created_at"]
        assert body["ends_at"] == pytest.approx(body["corrupted_at"] + 30, abs=0.05)
        assert body["finished_at"] is None and body["rolled_back_at"] is None and body["restored_version"] is None
        assert journal_states(alembic_db) == ["active"]

        code, stopped = c.stop(attack)
        assert code == 200, stopped
        assert stopped == {"status": "rolled_back", "attack_id": attack, "restored_version": HEAD}
        assert rows(alembic_db) == [HEAD]
        assert journal_states(alembic_db) == ["reverted"]
        body = c.status(attack)
        assert body["state"] == "rolled_back"
        assert body["end_reason"] == "aborted"
        assert body["restored_version"] == HEAD
        assert body["rolled_back_at"] == body["finished_at"] is not None
        assert body["error"] is None and body["rollback_error"] is None

        code, again = c.stop(attack)
        assert code == 200
        assert again == {"status": "already_rolled_back", "attack_id": attack}


def test_deadline_rolls_back_by_itself(alembic_db: str, graph: RevisionGraph) -> None:
    with serve(alembic_db, graph) as c:
        attack = c.start(failure_type="invalid_version", duration_seconds=1)
        body = c.wait_state(attack, "rolled_back", timeout=10)
        assert body["end_reason"] == "deadline"
        assert body["restored_version"] == HEAD
        assert body["corrupted_version"] not in (None, HEAD)
        assert body["finished_at"] - body["corrupted_at"] == pytest.approx(1, abs=0.5)
        assert rows(alembic_db) == [HEAD]
        assert c.stop(attack) == (200, {"status": "already_rolled_back", "attack_id": attack})


def test_without_a_duration_it_is_completed_until_stopped(alembic_db: str, graph: RevisionGraph) -> None:
    with serve(alembic_db, graph) as c:
        attack = c.start(failure_type="missing_version")
        body = c.wait_state(attack, "completed")
        assert body["duration_seconds"] is None
        assert body["ends_at"] == pytest.approx(body["corrupted_at"] + c.ctx.settings.max_duration_s, abs=0.05)
        assert rows(alembic_db) == []
        assert c.status(attack)["state"] == "completed"  # stays corrupted
        assert c.stop(attack)[1]["status"] == "rolled_back"
        assert rows(alembic_db) == [HEAD]


def test_two_row_prior_state_is_restored_whole(alembic_db: str, graph: RevisionGraph) -> None:
    query(alembic_db, "INSERT INTO alembic_version VALUES (%s)", (INVOICES,))
    before = rows(alembic_db)
    assert before == sorted([INVOICES, HEAD])
    with serve(alembic_db, graph) as c:
        attack = c.start(failure_type="invalid_version", duration_seconds=30)
        body = c.wait_state(attack, "running")
        assert body["original_version"] == ",".join(before)
        assert len(rows(alembic_db)) == 1
        code, stopped = c.stop(attack)
        assert code == 200
        assert stopped["restored_version"] == ",".join(before)
        assert rows(alembic_db) == before


def test_db_behind_code_without_scripts_is_refused(alembic_db: str) -> None:
    with serve(alembic_db) as c:
        code, body = c.call("POST", URL, failure_type="db_behind_code", duration_seconds=5)
        assert code == 422
        assert "--alembic-ini" in body["detail"]
        assert body["field"] == "failure_type"
        assert c.ctx.engine.all() == []
    assert rows(alembic_db) == [HEAD]
    assert journal_states(alembic_db) == []


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"failure_type": "drop_everything"}, "failure_type"),
        ({"duration_seconds": 0}, "duration_seconds"),
        ({"duration_seconds": 3601}, "duration_seconds"),
        ({"duration_seconds": "soon"}, "duration_seconds"),
    ],
)
def test_bad_input_is_422_and_changes_nothing(
    alembic_db: str, graph: RevisionGraph, params: dict[str, Any], field: str
) -> None:
    with serve(alembic_db, graph) as c:
        code, body = c.call("POST", URL, **params)
        assert code == 422, body
        assert body["field"] == field
        assert isinstance(body["detail"], str)
        assert c.ctx.engine.all() == []
    assert rows(alembic_db) == [HEAD]
    assert journal_states(alembic_db) == []


def test_missing_version_table_and_foreign_target_are_refused(alembic_db: str, graph: RevisionGraph) -> None:
    with serve(alembic_db, graph) as c:
        code, body = c.call("POST", URL, target_database_url=conninfo.make_conninfo(alembic_db, dbname="postgres"))
        assert code == 403, body
        query(alembic_db, "ALTER TABLE alembic_version RENAME TO av_elsewhere")
        code, body = c.call("POST", URL, failure_type="invalid_version")
        assert code == 422, body
        assert "alembic_version" in body["detail"]
        assert c.ctx.engine.all() == []
    query(alembic_db, "ALTER TABLE av_elsewhere RENAME TO alembic_version")
    assert rows(alembic_db) == [HEAD]


def test_unknown_attack_is_404(alembic_db: str) -> None:
    with serve(alembic_db) as c:
        missing = str(uuid.uuid4())
        for method, path in (("GET", f"{URL}/{missing}"), ("POST", f"{URL}/{missing}/stop")):
            code, body = c.call(method, path)
            assert code == 404
            assert missing in body["detail"]


def test_a_failed_attack_cannot_be_stopped(alembic_db: str, graph: RevisionGraph) -> None:
    with serve(alembic_db, graph) as c:
        first = c.start(failure_type="invalid_version", duration_seconds=30)
        corrupted = c.wait_state(first, "running")["corrupted_version"]
        second = c.start(failure_type="missing_version", duration_seconds=30)  # same version table: refused
        body = c.wait_state(second, "failed")
        assert first in body["error"]
        assert body["rollback_error"] is None and body["corrupted_version"] is None
        code, stopped = c.stop(second)
        assert code == 400, stopped
        assert stopped["code"] == "attack_failed"
        assert rows(alembic_db) == [corrupted]  # the second attack changed nothing
        assert c.stop(first)[1]["restored_version"] == HEAD
    assert rows(alembic_db) == [HEAD]


def test_a_revert_that_cannot_be_verified_is_rollback_failed(alembic_db: str, graph: RevisionGraph) -> None:
    with serve(alembic_db, graph) as c:
        attack = c.start(failure_type="future_version", duration_seconds=30)
        c.wait_state(attack, "running")
        query(alembic_db, "ALTER TABLE alembic_version ADD COLUMN note text")  # the schema drifts meanwhile
        code, body = c.stop(attack)
        assert code == 409, body
        assert body["code"] == "rollback_failed"
        status = c.status(attack)
        assert status["state"] == "rollback_failed"
        assert "note" in status["rollback_error"]
        assert status["error"] is None and status["restored_version"] is None
        code, again = c.stop(attack)
        assert code == 400
        assert again["code"] == "rollback_failed"


def counting_server() -> tuple[ThreadingHTTPServer, list[str]]:
    """A tiny HTTP server on a free port that answers like the old target app and counts requests."""
    hits: list[str] = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            hits.append(self.path)
            self.send_response(200)
            self.end_headers()
            self.wfile.write(b'{"head": "f6b8da4c5006"}')

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, hits


def test_target_api_base_url_is_recorded_but_never_fetched(alembic_db: str, graph: RevisionGraph) -> None:
    server, hits = counting_server()
    try:
        port = server.server_address[1]
        with serve(alembic_db, graph) as c:
            for failure_type in ("db_behind_code", "invalid_version"):
                url = f"http://svc:secret@127.0.0.1:{port}/api"
                attack = c.start(failure_type=failure_type, duration_seconds=30, target_api_base_url=url)
                body = c.wait_state(attack, "running")
                assert body["target_api_base_url"] == f"http://***@127.0.0.1:{port}/api"
                assert c.ctx.compat_attacks[attack]["target_api_base_url"] == url
                assert c.stop(attack)[0] == 200
        assert hits == []
    finally:
        server.shutdown()
        server.server_close()


def test_a_repair_by_the_team_is_kept(alembic_db: str, graph: RevisionGraph) -> None:
    with serve(alembic_db, graph) as c:
        attack = c.start(failure_type="invalid_version", duration_seconds=30)
        c.wait_state(attack, "running")
        res = alembic(alembic_db, "stamp", "--purge", "head")
        assert res.returncode == 0, res.stdout + res.stderr
        code, stopped = c.stop(attack)
        assert code == 200, stopped
        assert stopped["status"] == "rolled_back"
        assert stopped["restored_version"] == HEAD
        assert "alembic stamp" in stopped["note"]
        body = c.status(attack)
        assert body["state"] == "rolled_back"
        assert body["restored_version"] == HEAD
        assert "note" in body and body["error"] is None
    assert rows(alembic_db) == [HEAD]
    assert journal_states(alembic_db) == ["superseded"]
