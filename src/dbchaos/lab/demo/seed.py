"""Sample data for the demo shop (idempotent)."""

from __future__ import annotations

from typing import Any

import psycopg

ITEMS = 1000
CUSTOMERS = 200
#: enough stock that steady traffic never sells out during a lab session
STOCK = 1_000_000


def seed(dsn: str) -> None:
    """Fill an empty, migrated shop with items and customers; leaves existing rows alone."""
    with psycopg.connect(dsn, application_name="shop-seed") as conn:
        _seed(conn)


def _seed(conn: psycopg.Connection[Any]) -> None:
    conn.execute(
        """
        INSERT INTO items (sku, name, price_cents, stock, description)
        SELECT format('SKU-%%05s', g), format('Item %%s', g), 100 + (g * 37) %% 9900, %s,
               format('A fine item, number %%s.', g)
        FROM generate_series(1, %s) AS g
        ON CONFLICT (sku) DO NOTHING
        """,
        (STOCK, ITEMS),
    )
    conn.execute(
        """
        INSERT INTO customers (email, name)
        SELECT format('customer%%s@example.com', g), format('Customer %%s', g)
        FROM generate_series(1, %s) AS g
        ON CONFLICT (email) DO NOTHING
        """,
        (CUSTOMERS,),
    )
    conn.execute("ANALYZE items")
    conn.execute("ANALYZE customers")
