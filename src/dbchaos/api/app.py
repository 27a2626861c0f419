"""The FastAPI application factory."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable, Mapping
from contextlib import asynccontextmanager
from typing import Annotated, Any

from fastapi import FastAPI, Query, Response

import dbchaos
from dbchaos.api.auth import BearerAuth, TokenStore, require_tokens_off_loopback
from dbchaos.api.context import AppContext
from dbchaos.api.errors import install_error_handlers
from dbchaos.api.guard import HostOriginGuard, allowed_hosts_for
from dbchaos.api.routes import compat_locks, compat_migrations, events, experiments, faults, health, migrations
from dbchaos.api.schemas import ERROR_RESPONSES
from dbchaos.audit import DEFAULT_MEMORY, AuditLog, RequestAudit
from dbchaos.engine.engine import Engine
from dbchaos.faults.migration.graph import RevisionGraph
from dbchaos.faults.registry import Registry, default_registry
from dbchaos.metrics import CONTENT_TYPE, Metrics
from dbchaos.settings import Settings
from dbchaos.targets import Target


def create_app(
    settings: Settings,
    targets: Mapping[str, Target],
    *,
    extra_allowed_hosts: Iterable[str] = (),
    registry: Registry | None = None,
    graphs: Mapping[str, RevisionGraph] | None = None,
    recover_on_start: bool = True,
    tokens: TokenStore | None = None,
) -> FastAPI:
    """Build the dbchaos HTTP application for these settings and targets.

    The engine lives as long as the app's lifespan: at start-up it recovers what crashed
    instances left in the targets' journals; on shutdown every fault is reverted.
    ``tokens`` default to ``settings.tokens_file``; without any, a non-loopback ``settings.host``
    is refused.
    """
    token_store = tokens if tokens is not None else TokenStore.load(settings.tokens_file)
    require_tokens_off_loopback(settings.host, token_store)
    metrics = Metrics(dbchaos.__version__)
    audit = AuditLog(settings.audit_log)
    engine = Engine(settings, targets, registry or default_registry(), graphs=graphs, metrics=metrics, audit=audit)

    @asynccontextmanager
    async def lifespan(the_app: FastAPI) -> AsyncIterator[None]:
        if recover_on_start:
            engine.start_recovery()
        try:
            yield
        finally:
            manager = getattr(the_app.state, "experiments", None)
            if manager is not None:
                await manager.close()
            await engine.close()
            audit.close()

    app = FastAPI(
        title="dbchaos",
        version=dbchaos.__version__,
        description="Bounded, observable, reversible PostgreSQL faults.",
        lifespan=lifespan,
        responses=ERROR_RESPONSES,
    )
    app.state.ctx = AppContext(settings=settings, targets=dict(targets), engine=engine, tokens=token_store, audit=audit)
    install_error_handlers(app)
    app.include_router(health.router)
    app.include_router(faults.router)
    app.include_router(compat_locks.router)
    app.include_router(compat_migrations.router)
    app.include_router(migrations.router)
    app.include_router(events.router)
    app.include_router(experiments.router)

    @app.get("/v1/audit", summary="Recent audit events: state-changing requests and statements (docs/audit.md)")
    async def audit_events(
        limit: Annotated[int, Query(ge=1, le=DEFAULT_MEMORY)] = 1000, fault_id: str | None = None
    ) -> dict[str, Any]:
        return {"events": audit.events(limit=limit, fault_id=fault_id)}

    @app.get("/metrics", summary="Prometheus metrics (text exposition format)", response_class=Response)
    async def prometheus_metrics() -> Response:
        return Response(await metrics.render(engine), media_type=CONTENT_TYPE)

    hosts = allowed_hosts_for(settings.host, settings.port) | frozenset(extra_allowed_hosts)
    app.add_middleware(BearerAuth, store=token_store)  # inside the Host/Origin guard
    app.add_middleware(RequestAudit, audit=audit)  # outside BearerAuth: refused requests are recorded too
    app.add_middleware(HostOriginGuard, allowed_hosts=hosts)
    return app
