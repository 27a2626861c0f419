"""Faults for an application's own test suite: hold one for a ``with`` block.

::

    from dbchaos.testing import held, table_lock

    def test_items_fail_fast_while_the_table_is_locked(client):
        with table_lock(["items"], where="http://127.0.0.1:8080"):
            started = time.monotonic()
            assert client.get("/items").status_code == 503
            assert time.monotonic() - started < 2

    with held("postgresql://app@localhost/app_test", "row-lock", {"table": "orders", "where": {"id": [1]}}) as f:
        ...   # f.blocked_sessions(), f.refresh(), f.extend(...)

``where`` is either a dbchaos server URL (``http://`` / ``https://``: the fault goes through
its API, with its tokens, targets and limits) or a PostgreSQL DSN: then dbchaos runs
in-process, in a background thread, with the same engine and the same safety (bounded
sessions, opt-in: run ``dbchaos init --target DSN`` once on a test database). When ``where``
is omitted, ``DBCHAOS_URL`` or else ``DBCHAOS_TEST_TARGET`` names it.

The fault is active when the block starts and reverted when it ends, whatever the block
raised; a fault that could not be injected raises :class:`dbchaos.client.DbChaosApiError`
(server) or the :mod:`dbchaos.errors` error (in-process) before the block runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
from collections.abc import Coroutine, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, TypeVar

from dbchaos.client import DbChaosClient, Fault

T = TypeVar("T")

#: the longest a test fault holds unless asked otherwise: long enough for a test, short
#: enough that a killed test run leaves nothing held for long (PostgreSQL ends it after that)
DEFAULT_DURATION_S = 60.0


def default_where(environ: Mapping[str, str] | None = None) -> str | None:
    """``DBCHAOS_URL``, else ``DBCHAOS_TEST_TARGET``, else ``None``."""
    env = os.environ if environ is None else environ
    return env.get("DBCHAOS_URL") or env.get("DBCHAOS_TEST_TARGET") or None


def is_server_url(where: str) -> bool:
    return where.startswith(("http://", "https://"))


class Backend(Protocol):
    """Where faults are injected: a dbchaos server or an in-process engine."""

    def inject(
        self,
        kind: str,
        params: Mapping[str, Any] | None,
        duration_s: float,
        labels: Mapping[str, str] | None,
        acquire_timeout_s: float | None,
        target: str | None,
    ) -> Fault: ...

    def get(self, fault_id: str) -> Fault: ...

    def abort(self, fault_id: str) -> Fault: ...

    def extend(self, fault_id: str, duration_s: float | None, extend_by_s: float | None) -> Fault: ...

    def close(self) -> None: ...


class ServerBackend:
    """Faults through a dbchaos server's API."""

    def __init__(self, url: str, token: str | None = None) -> None:
        self.client = DbChaosClient(url, token if token is not None else os.environ.get("DBCHAOS_TOKEN"))

    def inject(
        self,
        kind: str,
        params: Mapping[str, Any] | None,
        duration_s: float,
        labels: Mapping[str, str] | None,
        acquire_timeout_s: float | None,
        target: str | None,
    ) -> Fault:
        return self.client.inject(
            kind, params, duration_s=duration_s, target=target, labels=labels, acquire_timeout_s=acquire_timeout_s
        )

    def get(self, fault_id: str) -> Fault:
        return self.client.get(fault_id)

    def abort(self, fault_id: str) -> Fault:
        return self.client.abort(fault_id)

    def extend(self, fault_id: str, duration_s: float | None, extend_by_s: float | None) -> Fault:
        return self.client.extend(fault_id, duration_s, extend_by_s=extend_by_s)

    def close(self) -> None:
        self.client.close()


class EngineBackend:
    """An in-process engine on one target DSN, run by its own event loop in a daemon thread
    (test code is synchronous; the engine is asyncio)."""

    def __init__(self, dsn: str, *, alembic_ini: str | None = None) -> None:
        from dbchaos.engine.engine import Engine
        from dbchaos.faults.migration.graph import RevisionGraph
        from dbchaos.faults.registry import default_registry
        from dbchaos.settings import Settings
        from dbchaos.targets import Target

        graphs = {"default": RevisionGraph.from_alembic_ini(Path(alembic_ini))} if alembic_ini else None
        self.engine = Engine(Settings(), {"default": Target("default", dsn)}, default_registry(), graphs=graphs)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="dbchaos-testing", daemon=True)
        self._thread.start()

    def _run(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result()

    def _view(self, fault_id: str) -> Fault:
        from dbchaos.api.schemas import fault_view

        async def view() -> dict[str, Any]:
            rec = self.engine.get(fault_id)
            impacts = await self.engine.impacts([rec])
            return fault_view(rec, impacts.get(rec.id))

        return Fault.model_validate(self._run(view()))

    def inject(
        self,
        kind: str,
        params: Mapping[str, Any] | None,
        duration_s: float,
        labels: Mapping[str, str] | None,
        acquire_timeout_s: float | None,
        target: str | None,
    ) -> Fault:
        from dbchaos.engine.engine import FaultRequest

        req = FaultRequest(kind, params, duration_s, target, acquire_timeout_s, labels)
        rec = self._run(self.engine.create(req))
        return self._view(rec.id)

    def get(self, fault_id: str) -> Fault:
        return self._view(fault_id)

    def abort(self, fault_id: str) -> Fault:
        self._run(self.engine.abort(fault_id))
        return self._view(fault_id)

    def extend(self, fault_id: str, duration_s: float | None, extend_by_s: float | None) -> Fault:
        self._run(self.engine.extend(fault_id, duration_s=duration_s, extend_by_s=extend_by_s))
        return self._view(fault_id)

    def close(self) -> None:
        """Revert whatever is still held, then stop the loop."""
        if not self._loop.is_closed():
            try:
                self._run(self.engine.close())
            finally:
                self._loop.call_soon_threadsafe(self._loop.stop)
                self._thread.join(10)
                self._loop.close()


def backend_for(where: str, *, token: str | None = None, alembic_ini: str | None = None) -> Backend:
    """A server backend for an ``http(s)://`` URL, an in-process engine for a DSN."""
    if is_server_url(where):
        return ServerBackend(where, token)
    return EngineBackend(where, alembic_ini=alembic_ini)


@dataclass
class HeldFault:
    """A fault held for a ``with`` block; ``fault`` is its state when last read."""

    backend: Backend
    fault: Fault
    ended: bool = field(default=False)

    @property
    def id(self) -> str:
        return self.fault.id

    def refresh(self) -> Fault:
        """Read the fault again (state, deadline, live impact)."""
        self.fault = self.backend.get(self.fault.id)
        return self.fault

    def blocked_sessions(self) -> int:
        """Sessions blocked behind the fault right now."""
        return self.refresh().blocked_count

    def extend(self, duration_s: float | None = None, *, extend_by_s: float | None = None) -> Fault:
        """A new duration from activation, or ``extend_by_s`` more seconds (negative shortens)."""
        self.fault = self.backend.extend(self.fault.id, duration_s, extend_by_s)
        return self.fault

    def end(self) -> Fault:
        """Revert now (the block's end then has nothing left to do)."""
        if not self.ended:
            self.fault = self.backend.abort(self.fault.id)
            self.ended = True
        return self.fault


@contextlib.contextmanager
def hold(
    backend: Backend,
    kind: str,
    params: Mapping[str, Any] | None = None,
    *,
    duration_s: float = DEFAULT_DURATION_S,
    labels: Mapping[str, str] | None = None,
    acquire_timeout_s: float | None = None,
    target: str | None = None,
) -> Iterator[HeldFault]:
    """Inject through ``backend``; revert when the block ends, even on an exception."""
    fault = backend.inject(kind, params, duration_s, labels, acquire_timeout_s, target)
    handle = HeldFault(backend, fault)
    try:
        yield handle
    finally:
        handle.end()


@contextlib.contextmanager
def held(
    where: str | None,
    kind: str,
    params: Mapping[str, Any] | None = None,
    *,
    duration_s: float = DEFAULT_DURATION_S,
    labels: Mapping[str, str] | None = None,
    acquire_timeout_s: float | None = None,
    target: str | None = None,
    token: str | None = None,
    alembic_ini: str | None = None,
) -> Iterator[HeldFault]:
    """Hold a fault of ``kind`` on ``where`` (a dbchaos server URL or a DSN; ``None``: from the
    environment, see :func:`default_where`) for the block."""
    place = where or default_where()
    if place is None:
        raise ValueError("where is dbchaos? pass a server URL or a DSN, or set DBCHAOS_URL / DBCHAOS_TEST_TARGET")
    backend = backend_for(place, token=token, alembic_ini=alembic_ini)
    try:
        with hold(
            backend,
            kind,
            params,
            duration_s=duration_s,
            labels=labels,
            acquire_timeout_s=acquire_timeout_s,
            target=target,
        ) as handle:
            yield handle
    finally:
        backend.close()


def fault(
    kind: str, params: Mapping[str, Any] | None = None, *, where: str | None = None, **options: Any
) -> contextlib.AbstractContextManager[HeldFault]:
    """``held`` with ``where`` from the environment unless given."""
    return held(where, kind, params, **options)


def table_lock(
    tables: str | Sequence[str], mode: str = "ACCESS EXCLUSIVE", *, where: str | None = None, **options: Any
) -> contextlib.AbstractContextManager[HeldFault]:
    """Hold a lock on ``tables`` (``LOCK TABLE ... IN <mode> MODE``) for the block: with the
    default ACCESS EXCLUSIVE, every query on them waits until the block ends."""
    names = [tables] if isinstance(tables, str) else list(tables)
    return held(where, "table-lock", {"tables": names, "mode": mode}, **options)


__all__ = [
    "Backend",
    "EngineBackend",
    "HeldFault",
    "ServerBackend",
    "backend_for",
    "default_where",
    "fault",
    "held",
    "hold",
    "table_lock",
]
