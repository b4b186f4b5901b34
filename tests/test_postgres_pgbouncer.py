"""tether.postgres pools behind PgBouncer in transaction pooling mode (``pgbouncer=True``).

In transaction mode PgBouncer hands each transaction whichever server connection is
free, so a statement prepared by one client on one server connection is not there for
that client's next transaction, and may clash with another client's statement of the same
name. ``pgbouncer=True`` turns server-side prepared statements off.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

import tether.db
import tether.postgres
from infra.pgbouncer import PgBouncer
from infra.pgserver import PrivatePostgres


@pytest.fixture
def single_server_connection(
    pgbouncer_binary: Path, private_postgres: PrivatePostgres
) -> Iterator[PgBouncer]:
    """PgBouncer sharing one server connection between all its clients."""
    with PgBouncer(
        private_postgres.host, private_postgres.port, pool_size=1, binary=pgbouncer_binary
    ) as bouncer:
        yield bouncer


def repeat_on_two_connections(pool: tether.Pool[psycopg.Connection[Any]]) -> list[int]:
    """Run one parametrised query ten times on each of two pooled connections."""
    seen = []
    with pool.acquire() as first, pool.acquire() as second:
        for value in range(10):
            for conn in (first, second):
                row = conn.execute("SELECT %s::int", (value,)).fetchone()
                assert row is not None
                seen.append(row[0])
    return seen


def test_without_pgbouncer_true_psycopgs_prepared_statements_clash(
    single_server_connection: PgBouncer,
) -> None:
    """Without the option psycopg prepares a query it has run five times; the second
    connection's statement clashes with the first one's on the shared server session."""
    with tether.postgres.pool(single_server_connection.dsn(), max_size=2) as pool:
        with pytest.raises(psycopg.errors.DuplicatePreparedStatement, match="_pg3_0"):
            repeat_on_two_connections(pool)


def test_with_pgbouncer_true_psycopg_prepares_nothing(single_server_connection: PgBouncer) -> None:
    """With ``pgbouncer=True`` the same load runs, and transactions work through it."""
    dsn = single_server_connection.dsn()
    with tether.postgres.pool(dsn, max_size=2, pgbouncer=True) as pool:
        seen = repeat_on_two_connections(pool)
        with tether.db.transaction(pool) as conn:
            conn.execute("CREATE TEMP TABLE scratch (v int)")
            conn.execute("INSERT INTO scratch VALUES (1)")
            rows = conn.execute("SELECT v FROM scratch").fetchall()
        with pool.acquire() as conn:
            assert conn.prepare_threshold is None
    assert (seen, rows) == ([v for v in range(10) for _ in (1, 2)], [(1,)])


@pytest.mark.parametrize("driver", ["asyncpg", "psycopg"])
async def test_async_pools_work_through_pgbouncer(pgbouncer_dsn: str, driver: str) -> None:
    """Both async drivers, with ``pgbouncer=True``: forty concurrent callers, each running
    the same parametrised query and a transaction, through PgBouncer."""
    pool = tether.postgres.async_pool(pgbouncer_dsn, driver=driver, pgbouncer=True, max_size=4)  # type: ignore[call-overload]
    placeholder = "$1" if driver == "asyncpg" else "%s"

    async def caller(number: int) -> int:
        async with tether.db.transaction(pool) as conn:
            if driver == "asyncpg":
                return int(await conn.fetchval(f"SELECT {placeholder}::int", number))
            cursor = await conn.execute(f"SELECT {placeholder}::int", (number,))
            row = await cursor.fetchone()
            return int(row[0])

    async with pool:
        results = [await asyncio.gather(*(caller(n) for n in range(40))) for _ in range(3)]
        stats = pool.stats()
    assert results == [list(range(40))] * 3
    assert (stats.broken, stats.in_use) == (0, 0)


@pytest.mark.parametrize(("pgbouncer", "named"), [(False, True), (True, False)])
async def test_asyncpg_keeps_no_named_statements_with_pgbouncer_true(
    private_postgres: PrivatePostgres, pgbouncer: bool, named: bool
) -> None:
    """asyncpg prepares and caches a named statement for every query it runs; with
    ``pgbouncer=True`` it keeps none on the server (seen directly, without PgBouncer)."""
    async with tether.postgres.async_pool(private_postgres.dsn(), pgbouncer=pgbouncer) as pool:
        async with pool.acquire() as conn:
            for value in range(3):
                assert await conn.fetchval("SELECT $1::int", value) == value
            statements = await conn.fetchval("SELECT count(*) FROM pg_prepared_statements")
    assert (statements > 0) is named
