"""The audit trail: append-only JSON lines of every state-changing request and every SQL
statement dbchaos runs against a target (see ``docs/audit.md``).

One :class:`AuditLog` per server (built by the app factory, passed down to the engine): each
event is one JSON line, appended with a single ``write`` and a flush to a file opened in
append mode (when configured), and kept in a bounded in-memory ring for ``GET /v1/audit``.
Nothing here records a DSN, a password, a token or a bound parameter value.
"""

from __future__ import annotations

import collections
import json
import logging
import re
import threading
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any
from urllib.parse import parse_qsl

import psycopg
from psycopg import sql
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from dbchaos.errors import InvalidInput

_log = logging.getLogger("dbchaos.audit")

#: events kept in memory for ``GET /v1/audit``
DEFAULT_MEMORY = 10_000
#: request and answer bodies larger than this are not inspected
MAX_BODY = 64 * 1024
STATE_CHANGING = frozenset({"POST", "PUT", "PATCH", "DELETE"})
_SECRET_KEY = re.compile(r"url|dsn|password|passwd|secret|token|auth|conninfo", re.IGNORECASE)
_URL_PASSWORD = re.compile(r"(://[^/@:\s]*:)[^@\s]*@")
_KV_PASSWORD = re.compile(r"(password\s*=\s*)('[^']*'|\S+)", re.IGNORECASE)
REDACTED = "<redacted>"


def now_rfc3339() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def scrub_text(text: str) -> str:
    """``text`` with any URL userinfo password or ``password=...`` pair replaced."""
    return _KV_PASSWORD.sub(rf"\1{REDACTED}", _URL_PASSWORD.sub(rf"\1{REDACTED}@", text))


def redact(value: Any) -> Any:
    """A JSON value with the values of secret-looking keys dropped and secrets in strings scrubbed."""
    if isinstance(value, Mapping):
        return {str(k): REDACTED if _SECRET_KEY.search(str(k)) else redact(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [redact(v) for v in value]
    if isinstance(value, str):
        return scrub_text(value)
    return value


class AuditLog:
    """Append-only audit events: a JSON-lines file (optional) plus the last ``memory`` events."""

    def __init__(self, path: str | Path | None = None, *, memory: int = DEFAULT_MEMORY) -> None:
        self.path = Path(path) if path is not None else None
        self._events: collections.deque[dict[str, Any]] = collections.deque(maxlen=memory)
        self._lock = threading.Lock()
        self._file: IO[str] | None = None
        if self.path is not None:
            try:
                self._file = self.path.open("a", encoding="utf-8")
            except OSError as exc:
                raise InvalidInput(
                    f"cannot open the audit log {self.path} for appending: {exc.strerror or exc}",
                    code="invalid_audit_log",
                    field="audit_log",
                ) from None

    def record(self, event: dict[str, Any]) -> dict[str, Any]:
        """Append one event (``time`` is added); returns it."""
        event = {"time": now_rfc3339(), **event}
        line = json.dumps(event, default=str, separators=(",", ":")) + "\n"
        with self._lock:
            self._events.append(event)
            if self._file is not None:
                try:
                    self._file.write(line)
                    self._file.flush()
                except (OSError, ValueError) as exc:
                    _log.error("cannot append to the audit log %s: %s", self.path, exc)
        return event

    def statement(self, query: Any, conn: psycopg.AsyncConnection[Any], *, label: str, target: str) -> None:
        """Record one statement (its text only, never its bound parameter values)."""
        try:
            text = query.as_string(conn) if isinstance(query, sql.Composable) else query
        except Exception:  # the statement still runs; record what we can
            text = repr(query)
        if isinstance(text, bytes | bytearray | memoryview):
            text = bytes(text).decode("utf-8", "replace")
        self.record({"type": "statement", "fault_id": label, "target": target, "sql": scrub_text(str(text))})

    def cursor_factory(self, label: str, target: str) -> type[psycopg.AsyncCursor[Any]]:
        """A cursor class recording every statement run through it under ``label``
        (a fault id, ``control``, ``recover`` or ``spare``) and ``target`` (a target name)."""
        audit = self

        class AuditedCursor(psycopg.AsyncCursor[Any]):
            #: read by :class:`AuditedConnection` for what psycopg sends outside cursors
            audit_as = (audit, label, target)

            async def execute(self, query: Any, params: Any = None, **kwargs: Any) -> AuditedCursor:
                audit.statement(query, self.connection, label=label, target=target)
                await super().execute(query, params, **kwargs)
                return self

            async def executemany(self, query: Any, params_seq: Any, **kwargs: Any) -> None:
                audit.statement(query, self.connection, label=label, target=target)
                await super().executemany(query, params_seq, **kwargs)

        return AuditedCursor

    def events(self, *, limit: int | None = None, fault_id: str | None = None) -> list[dict[str, Any]]:
        """The most recent in-memory events (oldest first), optionally those of one fault."""
        with self._lock:
            found: Iterable[dict[str, Any]] = list(self._events)
        if fault_id is not None:
            found = [e for e in found if e.get("fault_id") == fault_id]
        out = list(found)
        return out[-limit:] if limit is not None and limit > 0 else out if limit is None else []

    def close(self) -> None:
        with self._lock:
            if self._file is not None:
                self._file.close()
                self._file = None


class AuditedConnection(psycopg.AsyncConnection[Any]):
    """A connection that also records the statements psycopg sends by itself, outside any
    cursor: ``BEGIN``, ``COMMIT``, ``ROLLBACK`` and the savepoints of ``conn.transaction()``
    (and ``conn.commit()``/``rollback()``). They go under the label of the connection's audit
    cursor factory (see :meth:`AuditLog.cursor_factory`), so a warm spare bound to a fault
    records them under the fault. Without an audit cursor factory it records nothing.

    Overrides psycopg's ``_exec_command``, the one place those commands go through (psycopg
    3.2 and 3.3); checked by tests/drills/test_audit_completeness.py against the server's
    ``log_statement = all`` log.
    """

    def _exec_command(self, command: Any, *args: Any, **kwargs: Any) -> Any:
        audit_as = getattr(self.cursor_factory, "audit_as", None)
        if audit_as is not None:
            audit, label, target = audit_as
            audit.statement(command, self, label=label, target=target)
        return super()._exec_command(command, *args, **kwargs)


def _query_summary(raw: bytes) -> dict[str, str] | None:
    pairs = parse_qsl(raw.decode("latin-1"), keep_blank_values=True)
    if not pairs:
        return None
    return {k: REDACTED if _SECRET_KEY.search(k) else scrub_text(v) for k, v in pairs}


def _json(body: bytes) -> Any:
    if not body or len(body) > MAX_BODY:
        return None
    try:
        return json.loads(body)
    except ValueError:
        return None


class RequestAudit:
    """ASGI middleware recording every state-changing HTTP request and its outcome.

    Install it outside :class:`~dbchaos.api.auth.BearerAuth` so refused requests are recorded too;
    the principal is read from ``scope["state"]`` after the request ran.
    """

    def __init__(self, app: ASGIApp, audit: AuditLog) -> None:
        self.app = app
        self.audit = audit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("method", "GET").upper() not in STATE_CHANGING:
            await self.app(scope, receive, send)
            return
        body = bytearray()
        answer = bytearray()
        status: list[int] = []

        async def receive_wrapper() -> Message:
            message = await receive()
            if message["type"] == "http.request" and len(body) <= MAX_BODY:
                body.extend(message.get("body", b""))
            return message

        async def send_wrapper(message: Message) -> None:
            if message["type"] == "http.response.start":
                status.append(int(message["status"]))
            elif message["type"] == "http.response.body" and len(answer) <= MAX_BODY:
                answer.extend(message.get("body", b""))
            await send(message)

        try:
            await self.app(scope, receive_wrapper, send_wrapper)
        finally:
            self._record(scope, bytes(body), bytes(answer), status[0] if status else 500)

    def _record(self, scope: Scope, body: bytes, answer: bytes, status: int) -> None:
        state = scope.get("state") or {}
        principal = state.get("principal")
        request = _json(body)
        reply = _json(answer)
        event: dict[str, Any] = {
            "type": "request",
            "principal": getattr(principal, "name", None),
            "method": scope.get("method"),
            "path": scope.get("path"),
            "query": _query_summary(scope.get("query_string", b"")),
            "target": None,
            "kind": None,
            "params": None,
        }
        if isinstance(request, dict):
            event["target"] = request.get("target") if isinstance(request.get("target"), str) else None
            event["kind"] = request.get("kind") if isinstance(request.get("kind"), str) else None
            event["params"] = redact(request["params"]) if "params" in request else None
        outcome: dict[str, Any] = {"status": status, "fault_id": None}
        if isinstance(reply, dict):
            fault_id = reply.get("id", reply.get("attack_id"))
            outcome["fault_id"] = fault_id if isinstance(fault_id, str) else None
            if event["target"] is None and isinstance(reply.get("target"), str):
                event["target"] = reply["target"]
            if event["kind"] is None and isinstance(reply.get("kind"), str):
                event["kind"] = reply["kind"]
            if status >= 400 and isinstance(reply.get("code"), str):
                outcome["error"] = reply["code"]
        event["fault_id"] = outcome["fault_id"]
        event["outcome"] = outcome
        self.audit.record(redact(event))
