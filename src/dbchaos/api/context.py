"""What the routes share: settings and targets, built by the app factory."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from fastapi import Request

from dbchaos.api.auth import TokenStore
from dbchaos.audit import AuditLog
from dbchaos.engine.engine import Engine
from dbchaos.settings import Settings
from dbchaos.targets import Target, targets_by_name


@dataclass
class AppContext:
    settings: Settings
    targets: dict[str, Target]
    engine: Engine
    compat_attacks: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: the configured bearer tokens (empty: auth off); see dbchaos.api.auth
    tokens: TokenStore = field(default_factory=TokenStore)
    #: the audit trail (docs/audit.md)
    audit: AuditLog = field(default_factory=AuditLog)

    def target(self, name: str | None = None) -> Target:
        return targets_by_name(self.targets, name, self.settings.target_name)


def context_of(request: Request) -> AppContext:
    ctx = request.app.state.ctx
    assert isinstance(ctx, AppContext)
    return ctx


async def get_context(request: Request) -> AppContext:
    """The routes' dependency. A coroutine, so that FastAPI calls it on the event loop: a plain
    function would cost every request a hop to a worker thread and back."""
    return context_of(request)
