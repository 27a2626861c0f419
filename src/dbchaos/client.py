"""A small typed client for the dbchaos HTTP API (``/v1``), sync and async.

::

    from dbchaos.client import DbChaosClient

    with DbChaosClient("http://127.0.0.1:8080", token=None) as chaos:
        fault = chaos.inject("table-lock", {"tables": ["items"]}, duration_s=30, labels={"owner": "ci"})
        print(fault.state, fault.deadline)
        chaos.extend(fault.id, extend_by_s=30)
        chaos.abort(fault.id)

Answers are pydantic models mirroring the API's JSON (``api/schemas.py``); keys a newer
server adds are kept (``model_extra``), so an older client keeps working. Every error answer
raises :class:`DbChaosApiError` with the API's ``status``, ``code``, ``detail`` and ``field``;
a server that cannot be reached raises :class:`DbChaosUnreachable` (``status`` ``None``).
Both are :class:`dbchaos.errors.DbChaosError`, so one ``except`` catches every dbchaos failure.
"""

from __future__ import annotations

import asyncio
import builtins
import json
import os
import time
from collections.abc import AsyncIterator, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from types import TracebackType
from typing import Any, Literal, overload

import httpx
from pydantic import BaseModel, ConfigDict

from dbchaos import errors

DEFAULT_URL = "http://127.0.0.1:8080"
DEFAULT_TIMEOUT_S = 30.0
#: slack on top of a fault's acquire timeout for the request that waits for it
_INJECT_SLACK_S = 15.0
FINISHED_STATES = frozenset({"reverted", "failed", "lost", "superseded"})


# ---- errors ---------------------------------------------------------------------------------------------------------
class DbChaosApiError(errors.DbChaosError):
    """An error answer of the API: ``{"detail", "code", "field"}`` plus its HTTP status.

    ``body`` is the whole answer (e.g. ``max_duration_s`` for ``duration_too_long``, or the
    failed ``fault`` of a 409 ``lock_not_acquired``, also parsed in :attr:`fault`).
    """

    code = "api_error"

    def __init__(
        self,
        status: int | None,
        detail: str,
        code: str,
        field: str | None = None,
        body: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(detail, code=code, field=field, extra=dict(body or {}))
        self.status = status
        self.detail = detail
        self.body: dict[str, Any] = dict(body or {})

    @property
    def fault(self) -> Fault | None:
        raw = self.body.get("fault")
        return Fault.model_validate(raw) if isinstance(raw, dict) else None

    def __str__(self) -> str:
        where = f"HTTP {self.status}" if self.status is not None else "no answer"
        return f"{self.detail} ({where}, {self.code})"


class DbChaosUnreachable(DbChaosApiError):
    """The server could not be reached (connection refused, timeout, DNS...)."""

    code = "server_unreachable"


# ---- answers --------------------------------------------------------------------------------------------------------
class _Answer(BaseModel):
    model_config = ConfigDict(extra="allow", frozen=True)


class BlockedSession(_Answer):
    """A session waiting, directly (``depth`` 1) or through others, on a fault's session."""

    pid: int
    user: str | None = None
    application_name: str | None = None
    database: str | None = None
    state: str | None = None
    query: str | None = None
    wait_s: float | None = None
    blocked_by: builtins.list[int] = []
    depth: int = 1


class Impact(_Answer):
    """What an active fault holds and whom it blocks, read live from the target."""

    pids: builtins.list[int] = []
    locks: builtins.list[dict[str, Any]] = []
    blocked_count: int = 0
    blocked: builtins.list[BlockedSession] = []
    lock_tree: builtins.list[dict[str, Any]] = []
    sessions: builtins.list[dict[str, Any]] = []


class Fault(_Answer):
    """A fault as ``GET /v1/faults/{id}`` shows it (DESIGN §3)."""

    id: str
    kind: str
    target: str
    state: str
    end_reason: str | None = None
    params: dict[str, Any] = {}
    duration_s: float
    acquire_timeout_s: float | None = None
    labels: dict[str, str] = {}
    created_at: datetime
    activated_at: datetime | None = None
    deadline: datetime | None = None
    ended_at: datetime | None = None
    error: str | None = None
    details: dict[str, Any] = {}
    blockers: builtins.list[dict[str, Any]] = []
    impact: Impact | None = None
    #: what the team changed since a migration fault set its state
    drift: builtins.list[str] | None = None

    @property
    def finished(self) -> bool:
        return self.state in FINISHED_STATES

    @property
    def blocked_count(self) -> int:
        """Sessions blocked behind the fault right now (0 when not active)."""
        return self.impact.blocked_count if self.impact is not None else 0


class DryRun(_Answer):
    """What a fault would do (``?dry_run=true``): nothing was injected."""

    dry_run: bool = True
    kind: str
    target: str | None = None
    params: dict[str, Any] = {}
    duration_s: float | None = None
    acquire_timeout_s: float | None = None
    labels: dict[str, str] = {}
    #: the server-side bounds the fault's sessions would carry
    session_settings: dict[str, Any] = {}
    #: the SQL it would run, in order (each with its text and purpose)
    statements: builtins.list[dict[str, Any]] = []
    #: the locks it would take
    locks: builtins.list[dict[str, Any]] = []
    #: sessions in the way now, and sessions it would block
    blast_radius: dict[str, Any] = {}
    notes: builtins.list[str] = []


class Kind(_Answer):
    kind: str
    summary: str
    description: str = ""
    params_schema: dict[str, Any] = {}


class Health(_Answer):
    status: str
    version: str
    target: dict[str, Any] = {}


class Event(_Answer):
    """One server-sent event of ``GET /v1/events``: ``topic`` (``fault``, ``experiment``),
    ``seq`` and the payload (for faults: ``event``, ``id``, ``state``, ``end_reason``...)."""

    topic: str
    seq: int
    time: datetime
    event: str | None = None
    id: str | None = None
    state: str | None = None
    end_reason: str | None = None


# ---- requests (shared by both clients) ------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Call:
    method: str
    path: str
    params: dict[str, Any] = field(default_factory=dict)
    body: dict[str, Any] | None = None
    timeout_s: float | None = None


def _drop_none(values: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in values.items() if v is not None}


def _inject_call(
    kind: str,
    params: Mapping[str, Any] | None,
    duration_s: float | None,
    target: str | None,
    labels: Mapping[str, str] | None,
    acquire_timeout_s: float | None,
    wait: bool,
    dry_run: bool,
    timeout_s: float,
) -> _Call:
    body = _drop_none(
        {
            "kind": kind,
            "params": dict(params or {}),
            "duration_s": duration_s,
            "target": target,
            "labels": dict(labels) if labels is not None else None,
            "acquire_timeout_s": acquire_timeout_s,
        }
    )
    query: dict[str, Any] = {}
    if not wait:
        query["wait"] = "false"
    if dry_run:
        query["dry_run"] = "true"
    waits = (acquire_timeout_s if acquire_timeout_s is not None else 5.0) + _INJECT_SLACK_S
    return _Call("POST", "/v1/faults", query, body, max(timeout_s, waits))


def _extend_call(
    fault_id: str, duration_s: float | None, extend_by_s: float | None, deadline: datetime | str | None
) -> _Call:
    when = deadline.isoformat() if isinstance(deadline, datetime) else deadline
    body = _drop_none({"duration_s": duration_s, "extend_by_s": extend_by_s, "deadline": when})
    return _Call("PATCH", f"/v1/faults/{fault_id}", body=body)


def _answer(resp: httpx.Response) -> Any:
    """The JSON of a successful answer; :class:`DbChaosApiError` for an error answer."""
    try:
        body = resp.json()
    except ValueError:
        body = None
    if resp.status_code >= 400:
        if isinstance(body, dict) and isinstance(body.get("detail"), str):
            raise DbChaosApiError(
                resp.status_code, body["detail"], str(body.get("code") or "error"), body.get("field"), body
            )
        raise DbChaosApiError(resp.status_code, f"HTTP {resp.status_code}: {resp.text[:200]}", "http_error")
    if body is None:
        raise DbChaosApiError(
            resp.status_code,
            f"the server did not answer like a dbchaos server (HTTP {resp.status_code}, not JSON)",
            "not_dbchaos",
        )
    return body


def _unreachable(base_url: str, exc: httpx.HTTPError) -> DbChaosUnreachable:
    return DbChaosUnreachable(None, f"cannot reach the dbchaos server at {base_url}: {exc}", "server_unreachable")


def _headers(token: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {token.strip()}"} if token else {}


def _env_url_and_token(environ: Mapping[str, str] | None) -> tuple[str, str | None]:
    env = os.environ if environ is None else environ
    url = env.get("DBCHAOS_URL") or env.get("DBCHAOS_SERVER") or DEFAULT_URL
    return url, env.get("DBCHAOS_TOKEN") or None


def _events_params(topics: builtins.list[str] | None, fault_id: str | None, max_s: float | None) -> dict[str, Any]:
    return _drop_none({"topic": topics, "fault_id": fault_id, "max_s": max_s})


# ---- event streams --------------------------------------------------------------------------------------------------
_STREAM_TIMEOUT = httpx.Timeout(None, connect=10.0)


def _sse_event(data: builtins.list[str]) -> Event:
    return Event.model_validate(json.loads("\n".join(data)))


class EventStream:
    """An open ``GET /v1/events`` stream (sync); see :meth:`DbChaosClient.events`."""

    def __init__(self, http: httpx.Client, base_url: str, params: dict[str, Any]) -> None:
        self._http, self._base_url, self._params = http, base_url, params
        self._cm: Any = None
        self._lines: Iterator[str] | None = None

    def __enter__(self) -> EventStream:
        try:
            self._cm = self._http.stream("GET", "/v1/events", params=self._params, timeout=_STREAM_TIMEOUT)
            resp = self._cm.__enter__()
            if resp.status_code >= 400:
                resp.read()
                _answer(resp)
            self._lines = resp.iter_lines()
            for line in self._lines:  # the server subscribed before it sent this first block
                if line == "":
                    break
        except httpx.HTTPError as exc:
            self.close()
            raise _unreachable(self._base_url, exc) from exc
        except BaseException:
            self.close()
            raise
        return self

    def __iter__(self) -> Iterator[Event]:
        assert self._lines is not None, "use the stream in a with block"
        data: builtins.list[str] = []
        try:
            for line in self._lines:
                if line == "":
                    if data:
                        yield _sse_event(data)
                    data = []
                elif line.startswith("data:"):
                    data.append(line[5:].removeprefix(" "))
        except httpx.HTTPError as exc:
            raise _unreachable(self._base_url, exc) from exc

    def close(self) -> None:
        if self._cm is not None:
            cm, self._cm = self._cm, None
            cm.__exit__(None, None, None)

    def __exit__(self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        self.close()


class AsyncEventStream:
    """An open ``GET /v1/events`` stream (asyncio); see :meth:`AsyncDbChaosClient.events`."""

    def __init__(self, http: httpx.AsyncClient, base_url: str, params: dict[str, Any]) -> None:
        self._http, self._base_url, self._params = http, base_url, params
        self._cm: Any = None
        self._lines: AsyncIterator[str] | None = None

    async def __aenter__(self) -> AsyncEventStream:
        try:
            self._cm = self._http.stream("GET", "/v1/events", params=self._params, timeout=_STREAM_TIMEOUT)
            resp = await self._cm.__aenter__()
            if resp.status_code >= 400:
                await resp.aread()
                _answer(resp)
            self._lines = resp.aiter_lines()
            async for line in self._lines:
                if line == "":
                    break
        except httpx.HTTPError as exc:
            await self.aclose()
            raise _unreachable(self._base_url, exc) from exc
        except BaseException:
            await self.aclose()
            raise
        return self

    async def __aiter__(self) -> AsyncIterator[Event]:
        assert self._lines is not None, "use the stream in an async with block"
        data: builtins.list[str] = []
        try:
            async for line in self._lines:
                if line == "":
                    if data:
                        yield _sse_event(data)
                    data = []
                elif line.startswith("data:"):
                    data.append(line[5:].removeprefix(" "))
        except httpx.HTTPError as exc:
            raise _unreachable(self._base_url, exc) from exc

    async def aclose(self) -> None:
        if self._cm is not None:
            cm, self._cm = self._cm, None
            await cm.__aexit__(None, None, None)

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()


# ---- the sync client ------------------------------------------------------------------------------------------------
class DbChaosClient:
    """Talks to one dbchaos server. Use it as a context manager (or call :meth:`close`)."""

    def __init__(
        self,
        base_url: str = DEFAULT_URL,
        token: str | None = None,
        timeout: float = DEFAULT_TIMEOUT_S,
        *,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self._http = httpx.Client(base_url=self.base_url, headers=_headers(token), timeout=timeout, transport=transport)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **kwargs: Any) -> DbChaosClient:
        """``DBCHAOS_URL`` (or ``DBCHAOS_SERVER``, default ``http://127.0.0.1:8080``) and ``DBCHAOS_TOKEN``."""
        url, token = _env_url_and_token(environ)
        return cls(url, token, **kwargs)

    def __enter__(self) -> DbChaosClient:
        return self

    def __exit__(self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def request(self, method: str, path: str, *, params: Mapping[str, Any] | None = None, json: Any = None) -> Any:
        """One API call; the answer's JSON, or :class:`DbChaosApiError`."""
        return self._send(_Call(method, path, dict(params or {}), json))

    def _send(self, call: _Call) -> Any:
        try:
            resp = self._http.request(
                call.method, call.path, params=call.params, json=call.body, timeout=call.timeout_s or self.timeout
            )
        except httpx.HTTPError as exc:
            raise _unreachable(self.base_url, exc) from exc
        return _answer(resp)

    @overload
    def inject(
        self,
        kind: str,
        params: Mapping[str, Any] | None = ...,
        duration_s: float | None = ...,
        target: str | None = ...,
        labels: Mapping[str, str] | None = ...,
        acquire_timeout_s: float | None = ...,
        wait: bool = ...,
        dry_run: Literal[False] = ...,
    ) -> Fault: ...

    @overload
    def inject(
        self,
        kind: str,
        params: Mapping[str, Any] | None = ...,
        duration_s: float | None = ...,
        target: str | None = ...,
        labels: Mapping[str, str] | None = ...,
        acquire_timeout_s: float | None = ...,
        wait: bool = ...,
        *,
        dry_run: Literal[True],
    ) -> DryRun: ...

    def inject(
        self,
        kind: str,
        params: Mapping[str, Any] | None = None,
        duration_s: float | None = None,
        target: str | None = None,
        labels: Mapping[str, str] | None = None,
        acquire_timeout_s: float | None = None,
        wait: bool = True,
        dry_run: bool = False,
    ) -> Fault | DryRun:
        """Inject a fault; with ``wait`` (default) it is ``active`` when this returns. A fault
        that could not be acquired raises :class:`DbChaosApiError` 409 (``.fault`` says who
        was in the way). ``dry_run`` returns what it would do and injects nothing."""
        body = self._send(
            _inject_call(kind, params, duration_s, target, labels, acquire_timeout_s, wait, dry_run, self.timeout)
        )
        return DryRun.model_validate(body) if dry_run else Fault.model_validate(body)

    def get(self, fault_id: str) -> Fault:
        return Fault.model_validate(self._send(_Call("GET", f"/v1/faults/{fault_id}")))

    def list(self, state: str | None = None) -> builtins.list[Fault]:
        """Every fault the server knows (active first), with live impact."""
        body = self._send(_Call("GET", "/v1/faults", _drop_none({"state": state})))
        return [Fault.model_validate(f) for f in body["faults"]]

    def abort(self, fault_id: str) -> Fault:
        """Revert a fault now; returns it finished."""
        return Fault.model_validate(self._send(_Call("DELETE", f"/v1/faults/{fault_id}")))

    def reset(self) -> builtins.list[Fault]:
        """Revert every fault the server holds (needs the ``admin`` scope when tokens are on)."""
        return [Fault.model_validate(f) for f in self._send(_Call("POST", "/v1/reset"))["reverted"]]

    def extend(
        self,
        fault_id: str,
        duration_s: float | None = None,
        *,
        extend_by_s: float | None = None,
        deadline: datetime | str | None = None,
    ) -> Fault:
        """Move an active fault's deadline: a new ``duration_s`` (from activation),
        ``extend_by_s`` (negative shortens) or an absolute ``deadline`` (exactly one)."""
        return Fault.model_validate(self._send(_extend_call(fault_id, duration_s, extend_by_s, deadline)))

    def kinds(self) -> builtins.list[Kind]:
        return [Kind.model_validate(k) for k in self._send(_Call("GET", "/v1/kinds"))["kinds"]]

    def health(self) -> Health:
        return Health.model_validate(self._send(_Call("GET", "/v1/health")))

    def wait(self, fault_id: str, *, timeout_s: float = 60.0, interval_s: float = 0.1) -> Fault:
        """Poll until the fault is finished (reverted, failed, lost, superseded); ``TimeoutError`` otherwise."""
        deadline = time.monotonic() + timeout_s
        while True:
            fault = self.get(fault_id)
            if fault.finished:
                return fault
            if time.monotonic() > deadline:
                raise TimeoutError(f"fault {fault_id} is still {fault.state} after {timeout_s:g} s")
            time.sleep(interval_s)

    def events(
        self, topics: builtins.list[str] | None = None, *, fault_id: str | None = None, max_s: float | None = None
    ) -> EventStream:
        """``GET /v1/events`` as a context manager: subscribed once ``with`` is entered (no
        event after that is missed), then iterate; it ends after ``max_s``, when the server
        stops, or when you leave the block::

            with chaos.events(["fault"]) as stream:
                fault = chaos.inject(...)
                for event in stream: ...
        """
        return EventStream(self._http, self.base_url, _events_params(topics, fault_id, max_s))


# ---- the async client -----------------------------------------------------------------------------------------------
class AsyncDbChaosClient:
    """The same API for asyncio code: ``async with AsyncDbChaosClient(url) as chaos: await chaos.inject(...)``."""

    def __init__(
        self,
        base_url: str = DEFAULT_URL,
        token: str | None = None,
        timeout: float = DEFAULT_TIMEOUT_S,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self._http = httpx.AsyncClient(
            base_url=self.base_url, headers=_headers(token), timeout=timeout, transport=transport
        )

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **kwargs: Any) -> AsyncDbChaosClient:
        url, token = _env_url_and_token(environ)
        return cls(url, token, **kwargs)

    async def __aenter__(self) -> AsyncDbChaosClient:
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    async def request(
        self, method: str, path: str, *, params: Mapping[str, Any] | None = None, json: Any = None
    ) -> Any:
        return await self._send(_Call(method, path, dict(params or {}), json))

    async def _send(self, call: _Call) -> Any:
        try:
            resp = await self._http.request(
                call.method, call.path, params=call.params, json=call.body, timeout=call.timeout_s or self.timeout
            )
        except httpx.HTTPError as exc:
            raise _unreachable(self.base_url, exc) from exc
        return _answer(resp)

    @overload
    async def inject(
        self,
        kind: str,
        params: Mapping[str, Any] | None = ...,
        duration_s: float | None = ...,
        target: str | None = ...,
        labels: Mapping[str, str] | None = ...,
        acquire_timeout_s: float | None = ...,
        wait: bool = ...,
        dry_run: Literal[False] = ...,
    ) -> Fault: ...

    @overload
    async def inject(
        self,
        kind: str,
        params: Mapping[str, Any] | None = ...,
        duration_s: float | None = ...,
        target: str | None = ...,
        labels: Mapping[str, str] | None = ...,
        acquire_timeout_s: float | None = ...,
        wait: bool = ...,
        *,
        dry_run: Literal[True],
    ) -> DryRun: ...

    async def inject(
        self,
        kind: str,
        params: Mapping[str, Any] | None = None,
        duration_s: float | None = None,
        target: str | None = None,
        labels: Mapping[str, str] | None = None,
        acquire_timeout_s: float | None = None,
        wait: bool = True,
        dry_run: bool = False,
    ) -> Fault | DryRun:
        body = await self._send(
            _inject_call(kind, params, duration_s, target, labels, acquire_timeout_s, wait, dry_run, self.timeout)
        )
        return DryRun.model_validate(body) if dry_run else Fault.model_validate(body)

    async def get(self, fault_id: str) -> Fault:
        return Fault.model_validate(await self._send(_Call("GET", f"/v1/faults/{fault_id}")))

    async def list(self, state: str | None = None) -> builtins.list[Fault]:
        body = await self._send(_Call("GET", "/v1/faults", _drop_none({"state": state})))
        return [Fault.model_validate(f) for f in body["faults"]]

    async def abort(self, fault_id: str) -> Fault:
        return Fault.model_validate(await self._send(_Call("DELETE", f"/v1/faults/{fault_id}")))

    async def reset(self) -> builtins.list[Fault]:
        return [Fault.model_validate(f) for f in (await self._send(_Call("POST", "/v1/reset")))["reverted"]]

    async def extend(
        self,
        fault_id: str,
        duration_s: float | None = None,
        *,
        extend_by_s: float | None = None,
        deadline: datetime | str | None = None,
    ) -> Fault:
        return Fault.model_validate(await self._send(_extend_call(fault_id, duration_s, extend_by_s, deadline)))

    async def kinds(self) -> builtins.list[Kind]:
        return [Kind.model_validate(k) for k in (await self._send(_Call("GET", "/v1/kinds")))["kinds"]]

    async def health(self) -> Health:
        return Health.model_validate(await self._send(_Call("GET", "/v1/health")))

    async def wait(self, fault_id: str, *, timeout_s: float = 60.0, interval_s: float = 0.1) -> Fault:
        deadline = time.monotonic() + timeout_s
        while True:
            fault = await self.get(fault_id)
            if fault.finished:
                return fault
            if time.monotonic() > deadline:
                raise TimeoutError(f"fault {fault_id} is still {fault.state} after {timeout_s:g} s")
            await asyncio.sleep(interval_s)

    def events(
        self, topics: builtins.list[str] | None = None, *, fault_id: str | None = None, max_s: float | None = None
    ) -> AsyncEventStream:
        """``async with chaos.events() as stream: async for event in stream: ...`` (see the sync client)."""
        return AsyncEventStream(self._http, self.base_url, _events_params(topics, fault_id, max_s))


__all__ = [
    "AsyncDbChaosClient",
    "AsyncEventStream",
    "BlockedSession",
    "DbChaosApiError",
    "DbChaosClient",
    "DbChaosUnreachable",
    "DryRun",
    "Event",
    "EventStream",
    "Fault",
    "Health",
    "Impact",
    "Kind",
]
