"""The demo's SQLAlchemy engine, built for its configuration."""

from __future__ import annotations

from typing import Any

import psycopg
from sqlalchemy import Engine, create_engine

from dbchaos.lab.demo.config import DemoConfig

#: how the demo's sessions appear in pg_stat_activity (never ``dbchaos:%``: those are dbchaos's own)
APPLICATION_NAME = "shop-demo"


def make_engine(config: DemoConfig) -> Engine:
    """A pooled engine: SQLAlchemy's default ``QueuePool`` (5 + 10 overflow) in both modes; the
    hardened mode adds server-side timeouts and a short pool timeout."""
    options = config.session_options()
    kwargs: dict[str, Any] = {"application_name": APPLICATION_NAME}
    if options:
        kwargs["options"] = options
        kwargs["connect_timeout"] = 2

    def connect() -> psycopg.Connection[Any]:
        return psycopg.connect(config.dsn, **kwargs)

    return create_engine(
        "postgresql+psycopg://",
        creator=connect,
        pool_timeout=config.effective_pool_timeout_s,
        pool_pre_ping=config.mode == "hardened",
    )
