"""Journaled transactions with BEGIN and COMMIT inside pipelines (dbchaos.faults.migration.tx)."""

from __future__ import annotations

import asyncio
from typing import Any

import psycopg
import pytest

from dbchaos.faults.migration import tx
from tests.helpers import query


async def _connect(db: str) -> psycopg.AsyncConnection[Any]:
    return await psycopg.AsyncConnection.connect(db, autocommit=True)


def _locks_of(db: str, pid: int) -> list[tuple[Any, ...]]:
    return query(db, "SELECT mode FROM pg_locks WHERE pid = %s AND locktype = 'relation'", (pid,))


def test_begin_and_commit_in_pipelines_make_one_transaction(db: str) -> None:
    async def scenario() -> None:
        conn = await _connect(db)
        try:
            async with tx.transaction(conn):
                async with conn.pipeline():
                    await tx.begin(conn)
                    await conn.execute("LOCK TABLE items IN SHARE ROW EXCLUSIVE MODE")
                    await conn.execute("UPDATE items SET name = 'renamed' WHERE id = 1")
                # in the middle: the transaction is open, its lock held, its write invisible to others
                assert conn.info.transaction_status == psycopg.pq.TransactionStatus.INTRANS
                assert ("ShareRowExclusiveLock",) in _locks_of(db, conn.info.backend_pid)
                assert query(db, "SELECT name FROM items WHERE id = 1") != [("renamed",)]
                async with conn.pipeline():
                    await conn.execute("UPDATE items SET name = name || '!' WHERE id = 1")
                    await tx.commit(conn)
            assert conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
            assert query(db, "SELECT name FROM items WHERE id = 1") == [("renamed!",)]
            assert not _locks_of(db, conn.info.backend_pid)
        finally:
            await conn.close()

    asyncio.run(scenario())


def test_an_error_in_a_pipeline_rolls_the_whole_transaction_back(db: str) -> None:
    async def scenario() -> None:
        conn = await _connect(db)
        before = query(db, "SELECT id, name FROM items ORDER BY id")
        try:

            async def failing() -> None:
                async with tx.transaction(conn), conn.pipeline():
                    await tx.begin(conn)
                    await conn.execute("UPDATE items SET name = 'lost'")
                    await conn.execute("SELECT * FROM no_such_table")
                    await tx.commit(conn)

            with pytest.raises(psycopg.errors.UndefinedTable):
                await failing()
            assert conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
            assert query(db, "SELECT id, name FROM items ORDER BY id") == before
            assert not _locks_of(db, conn.info.backend_pid)
            # the session is usable again
            assert await (await conn.execute("SELECT 1")).fetchone() == (1,)
        finally:
            await conn.close()

    asyncio.run(scenario())


def test_a_block_that_returns_early_leaves_nothing_open(db: str) -> None:
    async def scenario() -> None:
        conn = await _connect(db)
        try:
            async with tx.transaction(conn), conn.pipeline():
                await tx.begin(conn)
                await conn.execute("LOCK TABLE items IN ACCESS EXCLUSIVE MODE")
                await conn.execute("UPDATE items SET name = 'never'")
                # no commit: e.g. the journal entry was already reverted
            assert conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
            assert not _locks_of(db, conn.info.backend_pid)
            assert query(db, "SELECT count(*) FROM items WHERE name = 'never'") == [(0,)]
        finally:
            await conn.close()

    asyncio.run(scenario())


def test_batched_joins_a_callers_pipeline_instead_of_syncing(db: str) -> None:
    """Inside a pipeline, a batched block sends nothing by itself: a failing statement queued
    after it still aborts its writes (they were never synced on their own)."""

    async def scenario() -> None:
        conn = await _connect(db)
        before = query(db, "SELECT id, name FROM items ORDER BY id")
        try:

            async def failing() -> None:
                async with tx.transaction(conn), conn.pipeline():
                    await tx.begin(conn)
                    async with tx.batched(conn):
                        await conn.execute("UPDATE items SET name = 'batched'")
                    assert conn.info.pipeline_status == psycopg.pq.PipelineStatus.ON
                    await conn.execute("SELECT * FROM no_such_table")
                    await tx.commit(conn)

            with pytest.raises(psycopg.errors.UndefinedTable):
                await failing()
            assert query(db, "SELECT id, name FROM items ORDER BY id") == before
        finally:
            await conn.close()

    asyncio.run(scenario())
