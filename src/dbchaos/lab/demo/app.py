"""The demo shop's HTTP service.

Sync handlers on FastAPI's thread pool and one pooled SQLAlchemy engine: the shape of many real
services, and the shape whose failure modes under a held lock the lab demonstrates.
"""

from __future__ import annotations

import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import replace
from typing import Annotated, Any

from fastapi import FastAPI, Header, HTTPException, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from sqlalchemy import Engine, exc, func, select, text, update
from sqlalchemy.pool import QueuePool

from dbchaos.lab.demo.config import DemoConfig, Mode
from dbchaos.lab.demo.db import make_engine
from dbchaos.lab.demo.schema import customers, items, order_lines, orders

#: SQLSTATEs a hardened service answers with 503 (retry later) instead of 500
_RETRYABLE = frozenset({"55P03", "57014", "25P03", "53300", "57P01", "40P01", "40001"})


class Line(BaseModel):
    item_id: int = Field(gt=0)
    qty: int = Field(default=1, gt=0, le=100)


class OrderIn(BaseModel):
    customer_id: int = Field(gt=0)
    lines: list[Line] = Field(min_length=1, max_length=20)


class ConfigIn(BaseModel):
    mode: Mode
    pool_timeout_s: float | None = Field(default=None, gt=0, le=300)


class Shop:
    """The service's state: its configuration and engine, swapped together under a lock."""

    def __init__(self, config: DemoConfig) -> None:
        self._lock = threading.Lock()
        self.config = config
        self.engine: Engine = make_engine(config)

    def reconfigure(self, config: DemoConfig) -> None:
        new = make_engine(config)
        with self._lock:
            old, self.engine, self.config = self.engine, new, config
        old.dispose(close=False)  # connections checked out now close when returned

    def pool_status(self) -> dict[str, int]:
        pool = self.engine.pool
        if not isinstance(pool, QueuePool):
            return {}
        return {"size": pool.size(), "checked_out": pool.checkedout(), "overflow": max(pool.overflow(), 0)}

    def close(self) -> None:
        self.engine.dispose()


def _error(status: int, code: str, detail: str, sqlstate: str | None = None) -> JSONResponse:
    body: dict[str, Any] = {"error": code, "detail": detail}
    if sqlstate:
        body["sqlstate"] = sqlstate
    headers = {"Retry-After": "1"} if status == 503 else None
    return JSONResponse(body, status_code=status, headers=headers)


def create_app(config: DemoConfig) -> FastAPI:
    shop = Shop(config)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        shop.close()

    app = FastAPI(title="shop (dbchaos lab demo)", docs_url="/docs", redoc_url=None, lifespan=lifespan)
    app.state.shop = shop

    @app.exception_handler(exc.TimeoutError)
    async def pool_timeout(request: Request, err: exc.TimeoutError) -> JSONResponse:
        # "QueuePool limit of size 5 overflow 10 reached, connection timed out, timeout 30.00"
        detail = str(err).split(" (Background", 1)[0]
        status = 503 if shop.config.mode is Mode.HARDENED else 500
        return _error(status, "pool_timeout", detail)

    @app.exception_handler(exc.DBAPIError)
    async def database_error(request: Request, err: exc.DBAPIError) -> JSONResponse:
        sqlstate = getattr(err.orig, "sqlstate", None)
        detail = str(err.orig).strip().splitlines()[0] if err.orig is not None else str(err)
        retryable = sqlstate in _RETRYABLE or (sqlstate or "").startswith("08") or err.connection_invalidated
        status = 503 if shop.config.mode is Mode.HARDENED and retryable else 500
        return _error(status, "database_error", detail, sqlstate)

    @app.get("/health")
    def health() -> dict[str, Any]:
        with shop.engine.connect() as conn:
            conn.execute(text("SELECT 1"))
        return {"status": "ok", "config": shop.config.describe(), "pool": shop.pool_status()}

    @app.get("/items")
    def list_items(limit: int = 20, offset: int = 0) -> list[dict[str, Any]]:
        limit = max(1, min(limit, 100))
        q = select(items.c.id, items.c.sku, items.c.name, items.c.price_cents, items.c.stock)
        with shop.engine.connect() as conn:
            rows = conn.execute(q.order_by(items.c.id).limit(limit).offset(max(offset, 0)))
            return [dict(r._mapping) for r in rows]

    @app.get("/items/{item_id}")
    def get_item(item_id: int) -> dict[str, Any]:
        with shop.engine.connect() as conn:
            row = conn.execute(select(items).where(items.c.id == item_id)).first()
        if row is None:
            raise HTTPException(404, f"no item {item_id}")
        return dict(row._mapping)

    @app.post("/orders", status_code=201)
    def place_order(
        body: OrderIn, x_request_id: Annotated[str | None, Header(max_length=100)] = None
    ) -> dict[str, Any]:
        with shop.engine.begin() as conn:
            if conn.execute(select(customers.c.id).where(customers.c.id == body.customer_id)).first() is None:
                raise HTTPException(404, f"no customer {body.customer_id}")
            order_id = conn.execute(
                orders.insert().values(customer_id=body.customer_id, request_id=x_request_id).returning(orders.c.id)
            ).scalar_one()
            for line in sorted(body.lines, key=lambda ln: ln.item_id):  # one lock order: no deadlocks among us
                price = conn.execute(
                    update(items)
                    .where(items.c.id == line.item_id, items.c.stock >= line.qty)
                    .values(stock=items.c.stock - line.qty)
                    .returning(items.c.price_cents)
                ).scalar_one_or_none()
                if price is None:
                    raise HTTPException(409, f"item {line.item_id} is unknown or out of stock")
                values = {"order_id": order_id, "item_id": line.item_id, "qty": line.qty, "price_cents": price}
                conn.execute(order_lines.insert().values(**values))
        return {"id": order_id, "request_id": x_request_id}

    @app.get("/orders/by-request/{request_id}")
    def order_by_request(request_id: str) -> dict[str, Any]:
        """Did the request that timed out place its order after all?"""
        with shop.engine.connect() as conn:
            q = select(orders.c.id, orders.c.created_at).where(orders.c.request_id == request_id)
            row = conn.execute(q).first()
        if row is None:
            raise HTTPException(404, "no order placed by that request")
        return dict(row._mapping)

    @app.get("/customers/{customer_id}/orders")
    def customer_orders(customer_id: int, limit: int = 20) -> list[dict[str, Any]]:
        q = (
            select(orders.c.id, orders.c.status, orders.c.created_at, func.count(order_lines.c.item_id).label("lines"))
            .select_from(orders.outerjoin(order_lines))
            .where(orders.c.customer_id == customer_id)
            .group_by(orders.c.id)
            .order_by(orders.c.id.desc())
            .limit(max(1, min(limit, 100)))
        )
        with shop.engine.connect() as conn:
            return [dict(r._mapping) for r in conn.execute(q)]

    # The admin endpoints run on the event loop, not in the worker threads: during an outage
    # every worker thread may be stuck on a lock, and switching the configuration must still work.
    # (Neither touches the database: building an engine opens no connection.)
    @app.get("/admin/config")
    async def get_config() -> dict[str, Any]:
        return {"config": shop.config.describe(), "pool": shop.pool_status()}

    @app.put("/admin/config")
    async def set_config(body: ConfigIn) -> dict[str, Any]:
        shop.reconfigure(replace(shop.config, mode=body.mode, pool_timeout_s=body.pool_timeout_s))
        return {"config": shop.config.describe()}

    return app
