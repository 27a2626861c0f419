"""The lab's demo shop: real migrations, real endpoints, and the two configurations under a held lock."""

from __future__ import annotations

import concurrent.futures
import time
import uuid
from pathlib import Path

import httpx
import psycopg
import pytest

from dbchaos.lab.demo.migrate import revision_graph, run_alembic, upgrade_head
from dbchaos.lab.demo.seed import CUSTOMERS, ITEMS
from tests.helpers import query, wait_for
from tests.lab.demo_proc import demo_shop

HEAD = "f0b3d7a1c864"


def test_the_migrations_are_a_real_linear_history(empty_db: str) -> None:
    graph = revision_graph()
    assert list(graph.heads) == [HEAD]
    run = upgrade_head(empty_db)
    assert run.ok, run.output
    assert query(empty_db, "SELECT version_num FROM alembic_version") == [(HEAD,)]
    tables = {r[0] for r in query(empty_db, "SELECT tablename FROM pg_tables WHERE schemaname = 'public'")}
    assert {"customers", "items", "orders", "order_lines", "alembic_version"} <= tables
    history = run_alembic(empty_db, "history")
    assert history.ok
    assert history.output.count("->") >= 5
    # and every step down works too
    down = run_alembic(empty_db, "downgrade", "base")
    assert down.ok, down.output
    assert query(empty_db, "SELECT count(*) FROM alembic_version") == [(0,)]


def test_orders_decrement_stock_and_remember_the_request(shop_db: str, tmp_path: Path) -> None:
    assert query(shop_db, "SELECT count(*) FROM items") == [(ITEMS,)]
    assert query(shop_db, "SELECT count(*) FROM customers") == [(CUSTOMERS,)]
    (before,) = query(shop_db, "SELECT stock FROM items WHERE id = 7")[0]
    with demo_shop(shop_db, tmp_path) as demo, httpx.Client(base_url=demo.url, timeout=10) as http:
        rid = uuid.uuid4().hex
        order = {"customer_id": 3, "lines": [{"item_id": 7, "qty": 2}]}
        res = http.post("/orders", json=order, headers={"X-Request-Id": rid})
        assert res.status_code == 201, res.text
        assert http.get(f"/orders/by-request/{rid}").json()["id"] == res.json()["id"]
        assert http.get("/items", params={"limit": 5}).status_code == 200
        assert http.get("/customers/3/orders").json()[0]["lines"] == 1
        assert http.post("/orders", json={"customer_id": 999999, "lines": [{"item_id": 7}]}).status_code == 404
    assert query(shop_db, "SELECT stock FROM items WHERE id = 7") == [(before - 2,)]


def _hold_access_exclusive(dsn: str) -> psycopg.Connection[tuple[object, ...]]:
    conn = psycopg.connect(dsn)
    conn.execute("LOCK TABLE items IN ACCESS EXCLUSIVE MODE")
    return conn


def test_hardened_fails_fast_where_naive_hangs(shop_db: str, tmp_path: Path) -> None:
    with demo_shop(shop_db, tmp_path, mode="hardened") as hardened, demo_shop(shop_db, tmp_path) as naive:
        holder = _hold_access_exclusive(shop_db)
        try:
            t0 = time.monotonic()
            res = httpx.get(f"{hardened.url}/items", timeout=10)
            elapsed = time.monotonic() - t0
            assert res.status_code == 503
            assert res.json()["sqlstate"] == "55P03"
            assert res.headers["retry-after"] == "1"
            assert elapsed < 2.0
            with pytest.raises(httpx.ReadTimeout):
                httpx.get(f"{naive.url}/items", timeout=2)
            # the naive request is really waiting for the lock inside PostgreSQL
            wait_for(
                lambda: (
                    query(
                        shop_db,
                        "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'shop-demo' "
                        "AND wait_event_type = 'Lock'",
                    )[0][0]
                    >= 1
                ),
                what="the naive demo's query to wait on the lock",
            )
        finally:
            holder.close()
        assert httpx.get(f"{naive.url}/items", timeout=10).status_code == 200
        assert httpx.get(f"{hardened.url}/items", timeout=10).status_code == 200


def test_naive_exhausts_its_pool_and_says_queuepool_limit(shop_db: str, tmp_path: Path) -> None:
    with demo_shop(shop_db, tmp_path, pool_timeout=1) as naive:
        holder = _hold_access_exclusive(shop_db)
        try:

            def get() -> httpx.Response | None:
                try:
                    return httpx.get(f"{naive.url}/items", timeout=4)
                except httpx.TimeoutException:
                    return None

            with concurrent.futures.ThreadPoolExecutor(20) as pool:
                answers = list(pool.map(lambda _: get(), range(20)))
        finally:
            holder.close()
    errors = [a for a in answers if a is not None]
    # 15 requests hold every pooled connection (5 + 10 overflow) waiting on the lock; the rest give up
    assert sum(a is None for a in answers) == 15
    assert len(errors) == 5
    assert all(a.status_code == 500 and "QueuePool limit of size 5 overflow 10" in a.json()["detail"] for a in errors)
