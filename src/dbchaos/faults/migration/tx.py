"""Journaled transactions whose ``BEGIN`` and ``COMMIT`` travel with their neighbours.

``conn.transaction()`` sends ``BEGIN`` in a round trip of its own and ``COMMIT`` in
another. A journaled inject or revert is only a handful of statements, so those two round
trips are a good share of its time. Here the caller sends ``BEGIN`` and ``COMMIT`` itself,
inside the pipelines of its first and last statements, and :func:`transaction` rolls back
a transaction the block leaves open (an error, or an early return that changed nothing).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

import psycopg

_OPEN = (psycopg.pq.TransactionStatus.INTRANS, psycopg.pq.TransactionStatus.INERROR)


async def begin(conn: psycopg.AsyncConnection[Any]) -> None:
    """``BEGIN``: inside a pipeline it goes out with the statements queued after it."""
    await conn.execute("BEGIN")


async def commit(conn: psycopg.AsyncConnection[Any]) -> None:
    """``COMMIT``: inside a pipeline it goes out with the statements queued before it."""
    await conn.execute("COMMIT")


def batched(conn: psycopg.AsyncConnection[Any]) -> contextlib.AbstractAsyncContextManager[Any]:
    """A pipeline for statements whose answers nobody waits for, unless the connection is in
    one already: then they simply join it (a nested pipeline would end in a round trip of
    its own)."""
    info = getattr(conn, "info", None)  # a dry run's recorder stands in for a connection and has none
    if info is not None and info.pipeline_status != psycopg.pq.PipelineStatus.OFF:
        return contextlib.nullcontext()
    return conn.pipeline()


@contextlib.asynccontextmanager
async def transaction(conn: psycopg.AsyncConnection[Any]) -> AsyncIterator[None]:
    """A block that opens a transaction with :func:`begin` and ends it with :func:`commit`;
    whatever the block leaves open is rolled back. (A statement still running, as when the
    task is cancelled, cannot be rolled back from here: the session's owner releases it.)"""
    try:
        yield
    finally:
        if not conn.closed and conn.info.transaction_status in _OPEN:
            with contextlib.suppress(psycopg.Error):
                await conn.execute("ROLLBACK")
