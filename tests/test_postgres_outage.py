"""tether.postgres pools through outages: a network that is cut, a server that restarts.

Every test runs against a private PostgreSQL server of its own (never the shared one),
reached through a loopback TCP proxy that can reset every connection and refuse new ones
(``cut()``), and let them through again (``restore()``). Timings are printed (run with
``-s`` to see them) and only checked against generous bounds: they show that callers
fail fast and that service resumes by itself, not how fast the machine is.
"""

from __future__ import annotations

import asyncio
import itertools
import threading
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest

import tether
import tether.postgres
from infra.fixtures import ProxyFactory
from infra.pgserver import PrivatePostgres
from infra.proxy import TcpProxy

GUARD = 15.0  # seconds: a failure guard only, never a measurement
ACQUIRE_TIMEOUT = 9.0
RETRY_DELAY = (0.05, 1.0)
ASYNC_DRIVERS = ["asyncpg", "psycopg"]


def via(dsn: str, proxy: TcpProxy) -> str:
    """The URL ``dsn``, pointed at ``proxy``."""
    url = urlsplit(dsn)
    user = f"{url.username}@" if url.username else ""
    return urlunsplit(url._replace(netloc=f"{user}{proxy.host}:{proxy.port}"))


@pytest.fixture
def proxy(tcp_proxy: ProxyFactory, private_postgres: PrivatePostgres) -> TcpProxy:
    """A proxy in front of the test's private server."""
    return tcp_proxy(private_postgres.host, private_postgres.port)


@pytest.fixture
def dsn(private_postgres: PrivatePostgres, proxy: TcpProxy) -> str:
    """The private server's URL, through the proxy."""
    return via(private_postgres.dsn(), proxy)


def async_pool(dsn: str, driver: str, **options: Any) -> tether.AsyncPool[Any]:
    options = {"acquire_timeout": ACQUIRE_TIMEOUT, "retry_delay": RETRY_DELAY, **options}
    return tether.postgres.async_pool(dsn, driver=driver, **options)  # type: ignore[no-any-return]


def sync_pool(dsn: str, **options: Any) -> tether.Pool[psycopg.Connection[Any]]:
    options = {"acquire_timeout": ACQUIRE_TIMEOUT, "retry_delay": RETRY_DELAY, **options}
    return tether.postgres.pool(dsn, **options)


async def query(conn: Any, statement: str = "SELECT 1") -> Any:
    if isinstance(conn, psycopg.AsyncConnection):
        cursor = await conn.execute(statement)
        row = await cursor.fetchone()
        return None if row is None else row[0]
    return await conn.fetchval(statement)


async def warm(pool: tether.AsyncPool[Any], count: int) -> None:
    """Make the pool create ``count`` connections, all idle afterwards."""
    async with asyncio.TaskGroup() as group:
        for _ in range(count):
            group.create_task(hold_briefly(pool))


async def hold_briefly(pool: tether.AsyncPool[Any]) -> None:
    async with pool.acquire() as conn:
        await query(conn)
        await asyncio.sleep(0.05)


async def until(condition: Any) -> None:
    """Wait until ``condition()`` is true, polling; fail the test at the guard."""
    deadline = time.monotonic() + GUARD
    for _ in itertools.count():
        if condition():
            return
        assert time.monotonic() < deadline, "the condition never came true"
        await asyncio.sleep(0.005)


def settled(pool: tether.Pool[Any] | tether.AsyncPool[Any]) -> bool:
    """Whether nothing is being created or destroyed: the statistics have caught up."""
    stats = pool.stats()
    return stats.size == stats.idle + stats.in_use


def lost_connection(error: BaseException) -> bool:
    """Whether ``error`` is one of the drivers' ways of saying the connection is gone."""
    return type(error).__name__ in (
        "OperationalError",
        "ConnectionDoesNotExistError",
        "InterfaceError",
        "InternalClientError",  # asyncpg, when a reset arrives in the middle of a request
        "ConnectionResetError",
    )


# ---------------------------------------------------------------------------- cut while idle


@pytest.mark.parametrize("driver", ASYNC_DRIVERS)
async def test_cut_while_idle_costs_one_caller_its_query_then_the_rest_are_checked(
    dsn: str, proxy: TcpProxy, driver: str
) -> None:
    """Connections used moments ago, cut while idle: the first caller's query fails with
    the driver's error and its connection is destroyed; that failure makes the other
    idle connections suspect, so they are checked and replaced before anyone gets them."""
    async with async_pool(dsn, driver, max_size=3) as pool:
        await warm(pool, 3)
        proxy.cut()
        proxy.restore()
        outcomes: list[object] = []
        for _ in range(4):
            try:
                async with pool.acquire() as conn:
                    outcomes.append(await query(conn, "SELECT 42"))
            except Exception as exc:
                outcomes.append(exc)
        stats = pool.stats()
    first, *rest = outcomes
    assert isinstance(first, Exception)
    assert lost_connection(first)
    assert rest == [42, 42, 42]
    assert (stats.broken, stats.check_failures, stats.created) == (1, 2, 4)


@pytest.mark.parametrize("driver", ASYNC_DRIVERS)
async def test_cut_while_idle_longer_than_check_after_is_invisible(
    dsn: str, proxy: TcpProxy, driver: str
) -> None:
    """Connections idle for longer than check_after (here 0 s) are checked on borrow:
    after a cut no caller sees an error at all."""
    async with async_pool(dsn, driver, max_size=3, check_after=0) as pool:
        await warm(pool, 3)
        proxy.cut()
        proxy.restore()
        results = []
        for _ in range(4):
            async with pool.acquire() as conn:
                results.append(await query(conn, "SELECT 42"))
        stats = pool.stats()
    assert results == [42, 42, 42, 42]
    assert (stats.broken, stats.check_failures) == (0, 3)


def test_cut_while_idle_threads(dsn: str, proxy: TcpProxy) -> None:
    """The threaded pool behaves the same: one failed query, then checked replacements."""
    with sync_pool(dsn, max_size=2) as pool:
        with pool.acquire() as first, pool.acquire() as second:
            first.execute("SELECT 1")
            second.execute("SELECT 1")
        proxy.cut()
        proxy.restore()
        outcomes: list[object] = []
        for _ in range(3):
            try:
                with pool.acquire() as conn:
                    outcomes.append(conn.execute("SELECT 42").fetchone())
            except psycopg.OperationalError as exc:
                outcomes.append(exc)
        stats = pool.stats()
    assert isinstance(outcomes[0], psycopg.OperationalError)
    assert outcomes[1:] == [(42,), (42,)]
    assert (stats.broken, stats.check_failures) == (1, 1)


# ---------------------------------------------------------------------------- cut mid-query


SLEEPING = "SELECT count(*) FROM pg_stat_activity WHERE query = 'SELECT pg_sleep(30)'"
END_SLEEPERS = (
    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE query = 'SELECT pg_sleep(30)'"
)


@pytest.mark.parametrize("driver", ASYNC_DRIVERS)
async def test_cut_mid_query_fails_that_caller_and_destroys_its_connection(
    dsn: str, proxy: TcpProxy, private_postgres: PrivatePostgres, driver: str
) -> None:
    """A caller waiting on a long query gets the driver's error as soon as the network is
    cut; its connection is destroyed, and the next caller gets a new one."""
    async with async_pool(dsn, driver, max_size=1) as pool:
        failure: list[BaseException] = []

        async def long_query() -> None:
            try:
                async with pool.acquire() as conn:
                    await query(conn, "SELECT pg_sleep(30)")
            except Exception as exc:
                failure.append(exc)

        task = asyncio.ensure_future(long_query())
        with psycopg.connect(private_postgres.dsn(), autocommit=True) as observer:
            await until(lambda: observer.execute(SLEEPING).fetchone() == (1,))
            cut_at = time.monotonic()
            proxy.cut()
            await asyncio.wait_for(task, GUARD)
            failed_after = time.monotonic() - cut_at
            proxy.restore()
            async with pool.acquire() as conn:
                assert await query(conn, "SELECT 7") == 7
            # The server would only notice the lost client when pg_sleep ends.
            observer.execute(END_SLEEPERS)
        stats = pool.stats()
    (error,) = failure
    assert lost_connection(error), repr(error)
    assert failed_after < ACQUIRE_TIMEOUT / 3
    assert (stats.broken, stats.created, stats.destroyed) == (1, 2, 1)
    print(f"\n[{driver}] cut mid-query: the caller failed {failed_after * 1000:.1f} ms later")


def test_cut_mid_query_threads(
    dsn: str, proxy: TcpProxy, private_postgres: PrivatePostgres
) -> None:
    """The same with the threaded pool."""
    with sync_pool(dsn, max_size=1) as pool:
        failure: list[BaseException] = []
        started = threading.Event()

        def long_query() -> None:
            try:
                with pool.acquire() as conn:
                    started.set()
                    conn.execute("SELECT pg_sleep(30)")
            except Exception as exc:
                failure.append(exc)

        worker = threading.Thread(target=long_query)
        worker.start()
        assert started.wait(GUARD)
        with psycopg.connect(private_postgres.dsn(), autocommit=True) as observer:
            assert _wait(lambda: observer.execute(SLEEPING).fetchone() == (1,))
            proxy.cut()
            worker.join(GUARD)
            proxy.restore()
            with pool.acquire() as conn:
                assert conn.execute("SELECT 7").fetchone() == (7,)
            observer.execute(END_SLEEPERS)
        stats = pool.stats()
    assert [type(e) for e in failure] == [psycopg.OperationalError]
    assert (stats.broken, stats.created) == (1, 2)


# ---------------------------------------------------------------------------- refuse, restore


@dataclass
class Load:
    """What a crowd of callers saw, with when they saw it."""

    successes: list[float] = field(default_factory=list)
    errors: list[tuple[float, float, BaseException]] = field(default_factory=list)
    """(when it ended, how long that acquire-and-query took, the error)"""
    lock: threading.Lock = field(default_factory=threading.Lock)

    def succeeded(self) -> None:
        with self.lock:
            self.successes.append(time.monotonic())

    def failed(self, began: float, error: BaseException) -> None:
        ended = time.monotonic()
        with self.lock:
            self.errors.append((ended, ended - began, error))

    def errors_after(self, moment: float) -> list[BaseException]:
        with self.lock:
            return [error for ended, _, error in self.errors if ended > moment]

    def slowest_failure_after(self, moment: float) -> float:
        with self.lock:
            return max(took for ended, took, _ in self.errors if ended > moment)

    def first_success_after(self, moment: float) -> float | None:
        with self.lock:
            return min((s for s in self.successes if s > moment), default=None)


async def run_load(pool: tether.AsyncPool[Any], load: Load, stop: asyncio.Event) -> None:
    """One caller: acquire, query, return, again and again until ``stop``."""
    while not stop.is_set():
        began = time.monotonic()
        try:
            async with pool.acquire() as conn:
                await query(conn)
            load.succeeded()
        except Exception as exc:
            load.failed(began, exc)
            await asyncio.sleep(0.005)  # a caller that failed tries again a little later
        else:
            await asyncio.sleep(0)


def run_load_in_thread(pool: tether.Pool[Any], load: Load, stop: threading.Event) -> None:
    """The same caller, on a thread."""
    while not stop.is_set():
        began = time.monotonic()
        try:
            with pool.acquire() as conn:
                conn.execute("SELECT 1")
            load.succeeded()
        except Exception as exc:
            load.failed(began, exc)
            time.sleep(0.005)


@pytest.mark.parametrize("driver", ASYNC_DRIVERS)
async def test_outage_fails_callers_fast_then_recovers_by_itself(
    dsn: str, proxy: TcpProxy, driver: str
) -> None:
    """Thirty callers on a pool of five; the network is cut and refuses new connections.

    Every caller fails fast (nobody waits out acquire_timeout): the first ones with the
    driver's error, the others with PoolUnavailable carrying it as __cause__. Once the
    network is back the pool reconnects by itself within its backoff, to its full size,
    and no caller sees an error from then on."""
    async with async_pool(dsn, driver, max_size=5) as pool:
        load, stop = Load(), asyncio.Event()
        workers = [asyncio.ensure_future(run_load(pool, load, stop)) for _ in range(30)]
        await until(lambda: len(load.successes) >= 200)
        cut_at = time.monotonic()
        proxy.cut()
        await until(lambda: len(load.errors_after(cut_at)) >= 200)
        outage_errors = load.errors_after(cut_at)
        slowest_failure = load.slowest_failure_after(cut_at)
        first_error_after = min(ended for ended, _, _ in load.errors) - cut_at
        restored_at = time.monotonic()
        proxy.restore()
        await until(lambda: load.first_success_after(restored_at) is not None)
        recovered_at = load.first_success_after(restored_at)
        assert recovered_at is not None
        served = len(load.successes)
        await until(lambda: len(load.successes) >= served + 500)
        stop.set()
        await asyncio.wait_for(asyncio.gather(*workers), GUARD)
        stats = pool.stats()
    recovered_after = recovered_at - restored_at
    kinds = {type(error).__name__ for error in outage_errors}
    unavailable = [e for e in outage_errors if isinstance(e, tether.PoolUnavailable)]
    assert unavailable, kinds
    assert all(lost_connection(e) for e in outage_errors if e not in unavailable), kinds
    assert all(e.__cause__ is not None and lost_connection(e.__cause__) for e in unavailable)
    assert slowest_failure < ACQUIRE_TIMEOUT / 3
    assert recovered_after < RETRY_DELAY[1] + GUARD / 3
    assert load.errors_after(recovered_at) == []
    assert (stats.size, stats.timeouts) == (5, 0)
    print(
        f"\n[{driver}] outage: first error {first_error_after * 1000:.1f} ms after the cut, "
        f"slowest failed acquire {slowest_failure * 1000:.1f} ms, "
        f"{len(outage_errors)} errors ({', '.join(sorted(kinds))}); "
        f"service back {recovered_after * 1000:.0f} ms after restore "
        f"(retry_delay {RETRY_DELAY}), {stats.create_errors} failed connection attempts"
    )


def test_outage_fails_threads_fast_then_recovers_by_itself(dsn: str, proxy: TcpProxy) -> None:
    """The same with twelve threads on a threaded pool of four."""
    with sync_pool(dsn, max_size=4) as pool:
        load, stop = Load(), threading.Event()
        threads = [
            threading.Thread(target=run_load_in_thread, args=(pool, load, stop)) for _ in range(12)
        ]
        for thread in threads:
            thread.start()
        try:
            assert _wait(lambda: len(load.successes) >= 200)
            cut_at = time.monotonic()
            proxy.cut()
            assert _wait(lambda: len(load.errors_after(cut_at)) >= 100)
            restored_at = time.monotonic()
            proxy.restore()
            assert _wait(lambda: load.first_success_after(restored_at) is not None)
            recovered_at = load.first_success_after(restored_at)
            assert recovered_at is not None
            served = len(load.successes)
            assert _wait(lambda: len(load.successes) >= served + 300)
        finally:
            stop.set()
            for thread in threads:
                thread.join(GUARD)
        stats = pool.stats()
    outage_errors = load.errors_after(cut_at)
    slowest_failure = load.slowest_failure_after(cut_at)
    assert any(isinstance(e, tether.PoolUnavailable) for e in outage_errors)
    assert slowest_failure < ACQUIRE_TIMEOUT / 3
    assert load.errors_after(recovered_at) == []
    assert stats.timeouts == 0
    print(
        f"\n[psycopg threads] outage: slowest failed acquire {slowest_failure * 1000:.1f} ms, "
        f"service back {(recovered_at - restored_at) * 1000:.0f} ms after restore"
    )


def _wait(condition: Any, timeout: float = GUARD) -> bool:
    deadline = time.monotonic() + timeout
    for _ in itertools.count():
        if condition() or time.monotonic() > deadline:
            break
        time.sleep(0.005)
    return bool(condition())


# ---------------------------------------------------------------------------- restart


@pytest.fixture
def server_dsn(private_postgres: PrivatePostgres) -> str:
    """The private server's own URL (no proxy: this server really goes down)."""
    return private_postgres.dsn()


@pytest.mark.parametrize("driver", ASYNC_DRIVERS)
async def test_server_restart_under_load(
    server_dsn: str, private_postgres: PrivatePostgres, driver: str
) -> None:
    """Twenty callers on a pool of five while the server restarts: errors only while it
    is down (and until the pool's next attempt to reconnect, within its backoff), none
    once service is back; every connection from before was replaced."""
    async with async_pool(server_dsn, driver, max_size=5) as pool:
        load, stop = Load(), asyncio.Event()
        workers = [asyncio.ensure_future(run_load(pool, load, stop)) for _ in range(20)]
        await until(lambda: len(load.successes) >= 200 and pool.stats().created == 5)
        before = pool.stats()
        down_at = time.monotonic()
        await asyncio.to_thread(private_postgres.restart)
        up_at = time.monotonic()
        await until(lambda: load.first_success_after(up_at) is not None)
        back_at = load.first_success_after(up_at)
        assert back_at is not None
        served = len(load.successes)
        await until(lambda: len(load.successes) >= served + 1000)
        stop.set()
        await asyncio.wait_for(asyncio.gather(*workers), GUARD)
        await until(lambda: settled(pool))
        after = pool.stats()
    late = [(round(ended - back_at, 3), repr(e)) for ended, _, e in load.errors if ended > back_at]
    assert before.created == 5
    assert late == [], (late, after)
    assert all(down_at <= ended for ended, _, _ in load.errors)
    replaced = after.destroyed - before.destroyed
    assert replaced >= 5
    assert after.created - before.created == replaced
    assert replaced == after.broken + after.check_failures
    print(
        f"\n[{driver}] restart: {len(load.errors)} errors, "
        f"{len(load.errors_after(up_at))} of them after the server was back; server down "
        f"{up_at - down_at:.2f} s, service back {(back_at - up_at) * 1000:.0f} ms after the "
        f"server; {replaced} connections replaced ({after.broken} broken, "
        f"{after.check_failures} failed their check)"
    )


def test_server_restart_under_load_threads(
    server_dsn: str, private_postgres: PrivatePostgres
) -> None:
    """The same with eight threads on a threaded pool of four."""
    with sync_pool(server_dsn, max_size=4) as pool:
        load, stop = Load(), threading.Event()
        threads = [
            threading.Thread(target=run_load_in_thread, args=(pool, load, stop)) for _ in range(8)
        ]
        for thread in threads:
            thread.start()
        try:
            assert _wait(lambda: len(load.successes) >= 200 and pool.stats().created == 4)
            before = pool.stats()
            down_at = time.monotonic()
            private_postgres.restart()
            up_at = time.monotonic()
            assert _wait(lambda: load.first_success_after(up_at) is not None)
            back_at = load.first_success_after(up_at)
            assert back_at is not None
            served = len(load.successes)
            assert _wait(lambda: len(load.successes) >= served + 1000)
        finally:
            stop.set()
            for thread in threads:
                thread.join(GUARD)
        assert _wait(lambda: settled(pool))
        after = pool.stats()
    assert load.errors_after(back_at) == []
    assert all(down_at <= ended for ended, _, _ in load.errors)
    replaced = after.destroyed - before.destroyed
    assert replaced >= 4
    assert after.created - before.created == replaced


# ---------------------------------------------------------------------------- background


@pytest.mark.parametrize("driver", ["psycopg-threads", *ASYNC_DRIVERS])
async def test_a_pool_with_min_size_reconnects_by_itself(
    dsn: str, proxy: TcpProxy, driver: str
) -> None:
    """With nobody asking but one caller who notices the outage (both connections fail
    their checks, and connecting fails: the caller gets the real cause, directly or as
    the cause of a fast PoolUnavailable), a pool with ``min_size`` keeps trying to
    reconnect in the background while the network is down, and is back to ``min_size``
    healthy connections by itself once it returns."""
    options: dict[str, Any] = {"min_size": 2, "max_size": 2, "check_after": 0}
    if driver == "psycopg-threads":
        with sync_pool(dsn, **options) as pool:
            proxy.cut()
            with pytest.raises((psycopg.OperationalError, tether.PoolUnavailable)) as caught:
                _borrow(pool)
            assert _wait(lambda: pool.stats().create_errors >= 3)  # retrying meanwhile
            proxy.restore()
            assert _wait(lambda: pool.stats().idle == 2)
            with pool.acquire() as conn:
                assert conn.execute("SELECT 5").fetchone() == (5,)
            stats = pool.stats()
    else:
        async with async_pool(dsn, driver, **options) as apool:
            proxy.cut()
            with pytest.raises(Exception) as caught:  # noqa: PT011 - checked below
                await _aborrow(apool)
            await until(lambda: apool.stats().create_errors >= 3)
            proxy.restore()
            await until(lambda: apool.stats().idle == 2)
            async with apool.acquire() as conn:
                assert await query(conn, "SELECT 5") == 5
            stats = apool.stats()
    # The caller gets the driver's error, or, when the background refill found the
    # network down first, PoolUnavailable at once with that error as its cause.
    error = caught.value
    if isinstance(error, tether.PoolUnavailable):
        error = error.__cause__  # type: ignore[assignment]
    assert lost_connection(error), repr(caught.value)
    assert (stats.size, stats.check_failures) == (2, 2)


def _borrow(pool: tether.Pool[Any]) -> None:
    with pool.acquire():
        pass  # never reached: both connections are dead, and no new one can be made


async def _aborrow(pool: tether.AsyncPool[Any]) -> None:
    async with pool.acquire():
        pass  # never reached
