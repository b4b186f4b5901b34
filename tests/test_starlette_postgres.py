"""End to end: rows streamed from PostgreSQL through a tether pool, to clients that leave.

A real uvicorn server on 127.0.0.1 serves ``tether.starlette.StreamingResponse``; each
response streams a long query's rows from a connection it borrows from a
``tether.postgres.async_pool``. A hundred real httpx clients disconnect at random points:
before the first byte, after a few rows, or deep into the stream. Afterwards no connection
is still out of the pool, and ``on_complete`` has run exactly once per request.
"""

from __future__ import annotations

import asyncio
import json
import random
import socket
import threading
from collections.abc import AsyncIterator, Iterator
from contextlib import aclosing, asynccontextmanager
from typing import Any

import httpx
import pytest

GUARD = 30.0  # seconds; only reached when something is broken
CLIENTS = 100
AT_ONCE = 20
ROWS = 200_000

pytestmark = pytest.mark.slow


def make_app(dsn: str) -> Any:
    """The Starlette app: /rows streams a query's rows, /stats says how things stand."""
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    import tether
    import tether.postgres
    from tether.starlette import StreamingResponse

    pool = tether.postgres.async_pool(dsn, max_size=10, acquire_timeout=GUARD, name="rows")
    outcomes: list[str] = []

    async def rows() -> AsyncIterator[str]:
        async with pool.acquire() as conn, conn.transaction():
            query = f"SELECT g FROM generate_series(1, {ROWS}) AS g"
            async for record in conn.cursor(query, prefetch=200):
                yield f"row {record['g']}\n"

    def done(snapshot: tether.StreamSnapshot[str, str]) -> None:
        outcomes.append(snapshot.outcome.value)

    async def stream(request: Request) -> StreamingResponse[str]:
        return StreamingResponse(rows(), media_type="text/plain", on_complete=done)

    async def stats(request: Request) -> JSONResponse:
        pool_stats = pool.stats()
        return JSONResponse(
            {
                "in_use": pool_stats.in_use,
                "size": pool_stats.size,
                "waiting": pool_stats.waiting,
                "acquired": pool_stats.acquired,
                "outcomes": outcomes,
            }
        )

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        async with pool:
            yield

    return Starlette(routes=[Route("/rows", stream), Route("/stats", stats)], lifespan=lifespan)


@pytest.fixture
def server(postgres_dsn: str) -> Iterator[str]:
    """uvicorn serving the app (pool opened by its lifespan) on a free loopback port."""
    pytest.importorskip("asyncpg")
    import uvicorn

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(
        make_app(postgres_dsn), lifespan="on", log_config=None, access_log=False
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        deadline = GUARD
        while not server.started and deadline > 0:
            threading.Event().wait(0.05)
            deadline -= 0.05
        assert server.started, "uvicorn did not start"
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(GUARD)
        sock.close()


async def visit_and_leave(client: httpx.AsyncClient, url: str, chunks: int) -> int:
    """Read ``chunks`` body chunks (0: none at all), then drop the connection."""
    read = 0
    async with client.stream("GET", url + "/rows") as response:
        assert response.status_code == 200
        if chunks:
            async with aclosing(response.aiter_raw()) as body:
                async for _ in body:
                    read += 1
                    if read == chunks:
                        break
    return read


async def stats(client: httpx.AsyncClient, url: str) -> dict[str, Any]:
    response = await client.get(url + "/stats")
    result: dict[str, Any] = json.loads(response.text)
    return result


async def test_a_hundred_clients_leaving_at_random_leak_no_connection(server: str) -> None:
    """100 clients disconnect at random points while rows stream from PostgreSQL through a
    tether pool: afterwards the pool has 0 connections in use and on_complete ran exactly
    100 times, each reporting the client's disconnect as CLOSED."""
    plan = random.Random(1234)
    depths = [plan.choice([0, 1, 2, plan.randint(3, 60)]) for _ in range(CLIENTS)]
    limits = httpx.Limits(max_connections=AT_ONCE * 2)
    async with httpx.AsyncClient(limits=limits, timeout=GUARD) as client:
        gate = asyncio.Semaphore(AT_ONCE)

        async def one(depth: int) -> int:
            async with gate:
                return await visit_and_leave(client, server, depth)

        read = await asyncio.gather(*(one(depth) for depth in depths))
        assert read == depths  # every client left where it meant to, mid-stream

        now: dict[str, Any] = {}
        try:
            async with asyncio.timeout(GUARD):
                while True:
                    now = await stats(client, server)
                    if len(now["outcomes"]) >= CLIENTS and now["in_use"] == 0:
                        break
                    await asyncio.sleep(0.05)
        except TimeoutError:
            outcomes = now.pop("outcomes", [])
            pytest.fail(f"the streams did not all end: {len(outcomes)} outcomes, {now}")
        await asyncio.sleep(0.2)  # nothing more arrives late
        final = await stats(client, server)

    assert final["in_use"] == 0
    assert final["waiting"] == 0
    assert len(final["outcomes"]) == CLIENTS
    assert set(final["outcomes"]) == {"closed"}
    assert 1 <= final["size"] <= 10
