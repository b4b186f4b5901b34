"""Cancelled at random moments, against the shared PostgreSQL server.

Forty tasks share a ``tether.postgres.async_pool`` of five connections. Each round
borrows a connection, opens a transaction, writes a row and reads rows back, and a third
of the rounds are cancelled at a random moment: while waiting in line, while their
connection is being made, in the middle of ``BEGIN``, of a query or of the commit, or
while the connection goes back. Whatever was interrupted, nothing of an interrupted
transaction is left committed, the server never sees more than five of the pool's
connections, and afterwards every one of them is idle, outside any transaction, and
works.
"""

from __future__ import annotations

import asyncio
import random
import uuid
from collections import Counter
from typing import Any

import psycopg
import pytest

import tether
import tether.db
from test_postgres_pool import ASYNC_DRIVERS, GUARD, async_pool, await_until, run_query, tagged

TASKS = 40
ROUNDS = 10
MAX_SIZE = 5


@pytest.mark.parametrize("driver", ASYNC_DRIVERS)
async def test_rounds_cancelled_at_random_leave_nothing_behind(
    postgres_dsn: str, driver: str
) -> None:
    """400 transactions on 5 connections, a third cancelled at random moments: only the
    finished ones are committed, the pool never goes past 5 backends, and afterwards
    every connection is idle, outside a transaction, and usable."""
    table = f"storm_{uuid.uuid4().hex[:10]}"
    dsn, application_name = tagged(postgres_dsn)
    chance = random.Random(1205)
    counts: Counter[str] = Counter()
    committed: set[int] = set()
    most_backends = 0
    with psycopg.connect(postgres_dsn, autocommit=True) as observer:
        observer.execute(f"CREATE TABLE {table} (n int PRIMARY KEY)")

        def backends(state: str | None = None) -> int:
            query = "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s"
            params: tuple[str, ...] = (application_name,)
            if state is not None:
                query += " AND state = %s"
                params += (state,)
            row = observer.execute(query, params).fetchone()
            assert row is not None
            return int(row[0])

        try:
            async with async_pool(dsn, driver, max_size=MAX_SIZE, acquire_timeout=GUARD) as pool:

                async def one_round(n: int) -> None:
                    async with pool.acquire() as conn, tether.db.transaction(conn):
                        await run_query(conn, f"INSERT INTO {table} VALUES ({n})")
                        await run_query(conn, f"SELECT count(*) FROM {table}")
                    committed.add(n)

                async def worker(number: int) -> None:
                    loop = asyncio.get_running_loop()
                    for round_number in range(ROUNDS):
                        task = asyncio.create_task(one_round(number * ROUNDS + round_number))
                        if chance.random() < 0.33:
                            loop.call_later(chance.random() * 0.005, task.cancel)
                        try:
                            await task
                        except asyncio.CancelledError:
                            counts["cancelled"] += 1
                        else:
                            counts["committed"] += 1

                async def watch() -> None:
                    nonlocal most_backends
                    while True:
                        most_backends = max(most_backends, backends())
                        await asyncio.sleep(0.005)

                watcher = asyncio.create_task(watch())
                async with asyncio.timeout(GUARD * 4):
                    await asyncio.gather(*(worker(n) for n in range(TASKS)))
                watcher.cancel()

                stats = pool.stats()
                assert (stats.in_use, stats.waiting) == (0, 0)

                async def all_idle() -> bool:
                    return backends() == backends("idle") == pool.stats().size

                assert await await_until(all_idle), (backends(), backends("idle"), pool.stats())
                # Every connection the pool keeps works, and none is in a transaction.
                held: list[Any] = []
                async with asyncio.timeout(GUARD):
                    managers = [pool.acquire() for _ in range(pool.stats().size)]
                    held = [await manager.__aenter__() for manager in managers]
                    for conn in held:
                        assert await run_query(conn, "SELECT 1") == 1
                        if isinstance(conn, psycopg.AsyncConnection):
                            assert conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
                        else:
                            assert not conn.is_in_transaction()
                    for manager in managers:
                        await manager.__aexit__(None, None, None)

            async def none_left() -> bool:
                return backends() == 0

            assert await await_until(none_left), backends()
            rows = {n for (n,) in observer.execute(f"SELECT n FROM {table}").fetchall()}
        finally:
            observer.execute(f"DROP TABLE IF EXISTS {table}")

    assert counts["cancelled"] > 50, counts
    assert counts["committed"] > 50, counts
    assert counts["cancelled"] + counts["committed"] == TASKS * ROUNDS
    assert committed <= rows  # every round that finished is committed ...
    # ... and a cancelled round is committed only if its COMMIT had reached the server.
    assert len(rows - committed) <= counts["cancelled"]
    assert most_backends <= MAX_SIZE
