"""Connections returned to the async pools with a query still running for another task.

The usual way to get there: a holder protects a write with ``asyncio.shield()`` and is
cancelled around it, so the write goes on after the ``acquire()`` block has exited. The
connection cannot be reused (the driver refuses a second operation, or the next borrower
would read the first one's result); it is destroyed instead, its query cancelled, and
destroying it must not disturb the pool's next connection.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import psycopg
import pytest

import tether
import tether.postgres

GUARD = 15.0  # seconds: a failure guard only, never a measurement

# Requests of each kind asyncpg makes: the simple query protocol, a prepared statement,
# and a COPY.
ASYNCPG_REQUESTS = {
    "execute": lambda conn: conn.execute("SELECT pg_sleep(30)"),
    "fetchval": lambda conn: conn.fetchval("SELECT pg_sleep($1)", 30),
    "copy": lambda conn: conn.copy_from_query("SELECT pg_sleep(30)", output=lambda _: None),
}


async def psycopg_request(conn: psycopg.AsyncConnection[Any]) -> None:
    await conn.execute("SELECT pg_sleep(30)")


async def returned_mid_query(
    pool: tether.AsyncPool[Any],
    request: Any,
    observer: psycopg.AsyncConnection[Any],
    *,
    ending: str = "cancelled",
) -> asyncio.Task[Any]:
    """Borrow a connection, start ``request`` on it shielded, and end the holder's block
    once the server runs it (``ending``: the holder's task is ``"cancelled"``, or an
    ``asyncio.timeout`` inside the block ``"timed out"``); return the task of the request,
    still running."""
    running = asyncio.Event()
    shielded: list[asyncio.Task[Any]] = []
    backend: list[int] = []
    scopes: list[asyncio.Timeout] = []

    async def holder() -> None:
        async with pool.acquire() as conn:
            backend.append(
                conn.info.backend_pid
                if isinstance(conn, psycopg.AsyncConnection)
                else conn.get_server_pid()
            )
            shielded.append(asyncio.ensure_future(request(conn)))
            async with asyncio.timeout(None) as scope:
                scopes.append(scope)
                running.set()
                await asyncio.shield(shielded[0])

    holding = asyncio.ensure_future(holder())
    await asyncio.wait_for(running.wait(), GUARD)
    # Until the server runs the query, a cancellation request would find nothing to cancel.
    await asyncio.wait_for(sleeping(observer, backend[0]), GUARD)
    if ending == "cancelled":
        holding.cancel()
        with pytest.raises(asyncio.CancelledError):
            await holding
    else:
        scopes[0].reschedule(asyncio.get_running_loop().time())
        with pytest.raises(TimeoutError):
            await holding
    assert not shielded[0].done()
    return shielded[0]


async def sleeping(observer: psycopg.AsyncConnection[Any], pid: int) -> None:
    """Return once the backend ``pid`` is in ``pg_sleep()``."""
    query = "SELECT wait_event FROM pg_stat_activity WHERE pid = %s"
    for _ in itertools.count():
        if await (await observer.execute(query, (pid,))).fetchone() == ("PgSleep",):
            return
        await asyncio.sleep(0.01)  # the server has no event to wait for


@pytest.fixture
async def observer(postgres_dsn: str) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
    """A connection of the test's own, outside every pool, to look at the server."""
    async with await psycopg.AsyncConnection.connect(postgres_dsn, autocommit=True) as conn:
        yield conn


@pytest.mark.parametrize("ending", ["cancelled", "timed out"])
@pytest.mark.parametrize("request_kind", list(ASYNCPG_REQUESTS))
async def test_an_asyncpg_connection_returned_mid_query_is_destroyed(
    postgres_dsn: str, observer: psycopg.AsyncConnection[Any], request_kind: str, ending: str
) -> None:
    """The connection goes, its query is cancelled, and the next borrower gets a new one
    that works (instead of "another operation is in progress"), whether the holder's task
    was cancelled or a timeout inside its block ended it."""
    async with tether.postgres.async_pool(postgres_dsn, max_size=1) as pool:
        shielded = await returned_mid_query(
            pool, ASYNCPG_REQUESTS[request_kind], observer, ending=ending
        )
        async with pool.acquire() as conn:
            assert await conn.fetchval("SELECT 1") == 1
        stats = pool.stats()
    # Cancelled by asyncpg's close() (which cancels what is in flight): how the request
    # learns of it depends on the stage it was at (a cancelled PREPARE leaves asyncpg's
    # protocol lost, say), but it fails at once rather than after 30 s.
    with pytest.raises(
        (
            asyncpg.QueryCanceledError,
            asyncpg.ConnectionDoesNotExistError,
            asyncpg.InternalClientError,
        )
    ):
        await asyncio.wait_for(shielded, GUARD)
    assert (stats.created, stats.broken, stats.create_errors) == (2, 1, 0)


async def test_a_psycopg_connection_returned_mid_query_is_closed_once_its_task_let_go(
    postgres_dsn: str, observer: psycopg.AsyncConnection[Any]
) -> None:
    """The query is cancelled and the connection closed only once the task running it has
    stopped waiting on its socket: the next connection (which may get the same file
    descriptor number) is made without error."""
    async with tether.postgres.async_pool(postgres_dsn, driver="psycopg", max_size=1) as pool:
        shielded = await returned_mid_query(pool, psycopg_request, observer)
        async with pool.acquire() as conn:
            assert await (await conn.execute("SELECT 1")).fetchone() == (1,)
        stats = pool.stats()
    with pytest.raises(psycopg.errors.QueryCanceled):
        await asyncio.wait_for(shielded, GUARD)
    assert (stats.created, stats.broken, stats.create_errors) == (2, 1, 0)
    assert stats.last_create_error is None


async def test_a_clean_asyncpg_connection_is_not_taken_for_a_busy_one(postgres_dsn: str) -> None:
    """After every kind of request has finished, the connection is reused: the test that
    spots a request in flight does not see one that is over."""
    async with tether.postgres.async_pool(postgres_dsn, max_size=1) as pool:
        for make_request in ASYNCPG_REQUESTS.values():
            async with pool.acquire() as conn:
                await conn.execute("SET statement_timeout = '10ms'")
                with pytest.raises(asyncpg.QueryCanceledError):
                    await make_request(conn)
                await conn.execute("RESET statement_timeout")
                await conn.fetchval("SELECT $1::int", 1)
        stats = pool.stats()
    assert (stats.created, stats.broken) == (1, 0)
