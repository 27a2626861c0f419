"""The lock conflict tables dbchaos reasons with, checked pair by pair against real PostgreSQL."""

from __future__ import annotations

import itertools

import psycopg
import pytest

from dbchaos.faults.names import LOCK_MODES, ROW_STRENGTHS
from dbchaos.observe.conflicts import (
    advisory_tag,
    pg_locks_name,
    row_conflicts,
    row_strength_of,
    table_conflicts,
    table_mode,
)
from tests.helpers import query


def _refused(conn: psycopg.Connection[tuple[object, ...]], statement: str) -> bool:
    """Run ``statement`` NOWAIT in a transaction that is rolled back; True if it hit a held lock."""
    try:
        conn.execute(statement)
    except psycopg.errors.LockNotAvailable:
        return True
    finally:
        conn.rollback()
    return False


def test_table_lock_matrix_matches_postgresql_for_all_64_pairs(db: str) -> None:
    found: dict[tuple[str, str], bool] = {}
    with psycopg.connect(db) as holder, psycopg.connect(db) as asker:
        for held in LOCK_MODES:
            holder.execute(f"LOCK TABLE items IN {held} MODE")
            for asked in LOCK_MODES:
                found[(held, asked)] = _refused(asker, f"LOCK TABLE items IN {asked} MODE NOWAIT")
            holder.rollback()
    assert len(found) == 64
    expected = {(a, b): table_conflicts(a, b) for a, b in itertools.product(LOCK_MODES, LOCK_MODES)}
    assert found == expected
    assert all(table_conflicts(a, b) == table_conflicts(b, a) for a, b in found)  # symmetric, as documented


def test_row_lock_matrix_matches_postgresql_for_all_16_pairs(db: str) -> None:
    found: dict[tuple[str, str], bool] = {}
    with psycopg.connect(db) as holder, psycopg.connect(db) as asker:
        for held in ROW_STRENGTHS:
            holder.execute(f"SELECT 1 FROM items WHERE id = 1 {held}")
            for asked in ROW_STRENGTHS:
                found[(held, asked)] = _refused(asker, f"SELECT 1 FROM items WHERE id = 1 {asked} NOWAIT")
            holder.rollback()
    assert found == {(a, b): row_conflicts(a, b) for a, b in itertools.product(ROW_STRENGTHS, ROW_STRENGTHS)}


def test_pgrowlocks_modes_act_as_their_strengths(db: str) -> None:
    """What pgrowlocks reports for each row lock and for UPDATE/DELETE, and what dbchaos reads it as."""
    statements = {
        "SELECT 1 FROM items WHERE id = 1 FOR KEY SHARE": "FOR KEY SHARE",
        "SELECT 1 FROM items WHERE id = 1 FOR SHARE": "FOR SHARE",
        "SELECT 1 FROM items WHERE id = 1 FOR NO KEY UPDATE": "FOR NO KEY UPDATE",
        "SELECT 1 FROM items WHERE id = 1 FOR UPDATE": "FOR UPDATE",
        "UPDATE items SET stock = stock + 1 WHERE id = 1": "FOR NO KEY UPDATE",
        "DELETE FROM orders WHERE id = 1": "FOR UPDATE",
    }
    with psycopg.connect(db) as holder:
        for statement, strength in statements.items():
            holder.execute(statement)
            table = "orders" if "orders" in statement else "items"
            ((modes,),) = query(db, f"SELECT modes FROM pgrowlocks('{table}')")
            assert [row_strength_of(m) for m in modes] == [strength], (statement, modes)
            holder.rollback()


def test_advisory_keys_match_pg_locks_and_conflict_like_table_modes(db: str) -> None:
    keys: list[int | tuple[int, int]] = [42, -1, 2**63 - 1, -(2**63), (7, -8), (-(2**31), 2**31 - 1)]
    with psycopg.connect(db, autocommit=True) as holder:
        for key in keys:
            if isinstance(key, tuple):
                holder.execute("SELECT pg_advisory_lock_shared(%s, %s)", key)
            else:
                holder.execute("SELECT pg_advisory_lock_shared(%s)", (key,))
            rows = query(
                db,
                "SELECT classid::bigint, objid::bigint, objsubid::int, mode FROM pg_locks"
                " WHERE locktype = 'advisory' AND pid = %s",
                (holder.info.backend_pid,),
            )
            assert rows == [(*advisory_tag(key), "ShareLock")], key
            with psycopg.connect(db, autocommit=True) as asker:
                fn, args = ("pg_try_advisory_lock", key) if isinstance(key, tuple) else ("pg_try_advisory_lock", (key,))
                got_exclusive = asker.execute(f"SELECT {fn}({', '.join(['%s'] * len(args))})", args).fetchone()
                got_shared = asker.execute(f"SELECT {fn}_shared({', '.join(['%s'] * len(args))})", args).fetchone()
            assert got_exclusive == (not table_conflicts("ShareLock", "ExclusiveLock"),)
            assert got_shared == (not table_conflicts("ShareLock", "ShareLock"),)
            holder.execute("SELECT pg_advisory_unlock_all()")


@pytest.mark.parametrize("mode", LOCK_MODES)
def test_mode_names_round_trip(mode: str) -> None:
    assert table_mode(pg_locks_name(mode)) == mode == table_mode(mode)
    assert table_mode("SIReadLock") is None
    assert not table_conflicts(mode, "SIReadLock")
