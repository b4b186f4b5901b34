"""tether's PostgreSQL pools against the others, side by side on one server in one run.

Contended, asyncio: 200 tasks share a pool of 10 connections, each task doing 200 cycles
of acquire -> ``SELECT 1`` -> release (40,000 queries). The contestants:

* a minimal pool written here: a deque of asyncpg connections and a FIFO deque of waiter
  futures, no checks, no reset, no statistics (the floor any pool pays);
* 10 dedicated asyncpg connections, one task each, no pool at all (the upper bound);
* asyncpg's own ``Pool``, with its reset-on-release query turned off (``reset=`` a no-op),
  so that only pool overhead differs;
* ``tether.postgres.async_pool(driver="asyncpg")``;
* psycopg_pool's ``AsyncConnectionPool`` (autocommit) and
  ``tether.postgres.async_pool(driver="psycopg")``;
* SQLAlchemy's pool under its ``AsyncEngine`` (asyncpg, ``AUTOCOMMIT``), used the way its
  users use it: ``async with engine.connect()`` and ``exec_driver_sql``.

Contended, threads: 16 threads share a pool of 4 psycopg connections, each thread doing
1,500 cycles (24,000 queries: a shorter run swings too much with the scheduler): a
minimal pool written here (a deque of connections, a FIFO of waiters each asleep on a
lock of its own, handed a connection directly: the floor of a fair pool of threads),
psycopg_pool's ``ConnectionPool`` (autocommit), SQLAlchemy's ``QueuePool``
(``AUTOCOMMIT``), ``tether.postgres.pool``, and 4 dedicated connections.

Uncontended: one caller, acquire + release with no query, on a tether PostgreSQL pool
(a real connection: the reset decision and the check bookkeeping run) against the
generic ``tether.AsyncPool`` / ``tether.Pool`` holding a plain object.

Every contestant gets a warmed-up pool (connections made before the clock starts), and
the repeats are interleaved (each starting with a different contestant) so that the
machine's noise hits everyone alike; each figure is the median over the repeats. The
claims are ratios, taken repeat by repeat (so that drift between repeats cancels out) and
printed as their median and range, with their targets. Next to each contended figure
stands the client's CPU time per query over the timed part (and, with threads, its
context switches per query): the client shares the machine's cores with the server, so
what a pool burns per query is the steadier measure of its cost when queries/s swing.

Run: ``python benchmarks/bench_postgres.py [--dsn URL] [--repeats N] [--quick]``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import statistics
import sys
import threading
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Self, TypeVar

import asyncpg
import psycopg
import psycopg_pool
import sqlalchemy
from sqlalchemy.ext.asyncio import create_async_engine

import tether
import tether.postgres

T = TypeVar("T")

DEFAULT_DSN = os.environ.get(
    "TETHER_TEST_POSTGRES_DSN", "postgresql://postgres@127.0.0.1:5432/test"
)


@dataclass(frozen=True)
class Run:
    """What one contestant's timed part cost."""

    seconds: float
    cpu: float
    """This process's CPU time (user + system), in seconds: the client's cost."""
    switches: int
    """This process's context switches (voluntary and not)."""


class Clock:
    """Times a block: wall-clock seconds, and this process's CPU time and context switches
    (``with Clock() as clock: ...``, then ``clock.run``)."""

    run: Run

    def __enter__(self) -> Self:
        self._usage = resource.getrusage(resource.RUSAGE_SELF)
        self._started = time.perf_counter()
        return self

    def __exit__(self, *exc_info: object) -> None:
        seconds = time.perf_counter() - self._started
        before, after = self._usage, resource.getrusage(resource.RUSAGE_SELF)
        cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
        switches = (after.ru_nvcsw - before.ru_nvcsw) + (after.ru_nivcsw - before.ru_nivcsw)
        self.run = Run(seconds, cpu, switches)


@dataclass(frozen=True)
class Load:
    """The shape of one contended run."""

    tasks: int
    size: int
    cycles: int

    @property
    def queries(self) -> int:
        return self.tasks * self.cycles


# ---------------------------------------------------------------------------- asyncio


class MinimalPool:
    """The floor: a deque of connections and a FIFO deque of waiters, nothing else."""

    def __init__(self, connections: list[Any]) -> None:
        self.idle = deque(connections)
        self.waiters: deque[asyncio.Future[Any]] = deque()

    async def acquire(self) -> Any:
        if self.idle:
            return self.idle.pop()
        waiter = asyncio.get_running_loop().create_future()
        self.waiters.append(waiter)
        return await waiter

    def release(self, conn: Any) -> None:
        while self.waiters:
            waiter = self.waiters.popleft()
            if not waiter.done():
                waiter.set_result(conn)
                return
        self.idle.append(conn)


async def crowd(load: Load, cycle: Callable[[], Awaitable[None]]) -> Run:
    """What it costs ``load.tasks`` tasks to run ``cycle`` ``load.cycles`` times each."""

    async def task() -> None:
        for _ in range(load.cycles):
            await cycle()

    for _ in range(3):  # warm-up: every connection used, code paths hot
        await asyncio.gather(*(cycle() for _ in range(load.size * 2)))
    with Clock() as clock:
        await asyncio.gather(*(task() for _ in range(load.tasks)))
    return clock.run


async def minimal_pool(dsn: str, load: Load) -> Run:
    connections = [await asyncpg.connect(dsn) for _ in range(load.size)]
    pool = MinimalPool(connections)

    async def cycle() -> None:
        conn = await pool.acquire()
        try:
            await conn.fetchval("SELECT 1")
        finally:
            pool.release(conn)

    try:
        return await crowd(load, cycle)
    finally:
        for conn in connections:
            await conn.close()


async def dedicated(dsn: str, load: Load) -> Run:
    connections = [await asyncpg.connect(dsn) for _ in range(load.size)]
    per_connection = load.queries // load.size

    async def own(conn: Any, count: int) -> None:
        for _ in range(count):
            await conn.fetchval("SELECT 1")

    try:
        await asyncio.gather(*(own(conn, 50) for conn in connections))
        with Clock() as clock:
            await asyncio.gather(*(own(conn, per_connection) for conn in connections))
        return clock.run
    finally:
        for conn in connections:
            await conn.close()


async def _no_reset(conn: Any) -> None:
    return None


async def asyncpg_pool(dsn: str, load: Load) -> Run:
    async with asyncpg.create_pool(
        dsn, min_size=load.size, max_size=load.size, reset=_no_reset
    ) as pool:

        async def cycle() -> None:
            async with pool.acquire() as conn:
                await conn.fetchval("SELECT 1")

        return await crowd(load, cycle)


async def tether_asyncpg(dsn: str, load: Load) -> Run:
    async with tether.postgres.async_pool(dsn, min_size=load.size, max_size=load.size) as pool:

        async def cycle() -> None:
            async with pool.acquire() as conn:
                await conn.fetchval("SELECT 1")

        return await crowd(load, cycle)


async def psycopg_pool_async(dsn: str, load: Load) -> Run:
    pool = psycopg_pool.AsyncConnectionPool(
        dsn, min_size=load.size, max_size=load.size, kwargs={"autocommit": True}, open=False
    )
    await pool.open(wait=True)
    try:

        async def cycle() -> None:
            async with pool.connection() as conn:
                await conn.execute("SELECT 1")

        return await crowd(load, cycle)
    finally:
        await pool.close()


async def tether_psycopg_async(dsn: str, load: Load) -> Run:
    pool = tether.postgres.async_pool(dsn, driver="psycopg", min_size=load.size, max_size=load.size)
    async with pool:

        async def cycle() -> None:
            async with pool.acquire() as conn:
                await conn.execute("SELECT 1")

        return await crowd(load, cycle)


def _sqlalchemy_url(dsn: str, driver: str) -> str:
    return "postgresql+" + driver + "://" + dsn.split("://", 1)[1]


async def sqlalchemy_async(dsn: str, load: Load) -> Run:
    engine = create_async_engine(
        _sqlalchemy_url(dsn, "asyncpg"),
        pool_size=load.size,
        max_overflow=0,
        pool_timeout=60,
        isolation_level="AUTOCOMMIT",
    )
    try:

        async def cycle() -> None:
            async with engine.connect() as conn:
                await conn.exec_driver_sql("SELECT 1")

        return await crowd(load, cycle)
    finally:
        await engine.dispose()


ASYNC_CONTESTANTS: dict[str, Callable[[str, Load], Awaitable[Run]]] = {
    "minimal pool (asyncpg)": minimal_pool,
    "10 dedicated connections (asyncpg)": dedicated,
    "asyncpg Pool, reset off": asyncpg_pool,
    "tether + asyncpg": tether_asyncpg,
    "psycopg_pool AsyncConnectionPool": psycopg_pool_async,
    "tether + psycopg (async)": tether_psycopg_async,
    "SQLAlchemy AsyncEngine (asyncpg)": sqlalchemy_async,
}


# ---------------------------------------------------------------------------- threads


def threads(load: Load, cycle: Callable[[], None]) -> Run:
    """Seconds for ``load.tasks`` threads to run ``cycle`` ``load.cycles`` times each."""
    for _ in range(load.size * 20):
        cycle()
    start = threading.Barrier(load.tasks + 1)

    def worker() -> None:
        start.wait()
        for _ in range(load.cycles):
            cycle()

    workers = [threading.Thread(target=worker) for _ in range(load.tasks)]
    for thread in workers:
        thread.start()
    with Clock() as clock:
        start.wait()
        for thread in workers:
            thread.join()
    return clock.run


def psycopg_pool_threads(dsn: str, load: Load) -> Run:
    with psycopg_pool.ConnectionPool(
        dsn, min_size=load.size, max_size=load.size, kwargs={"autocommit": True}, timeout=60
    ) as pool:
        pool.wait()

        def cycle() -> None:
            with pool.connection() as conn:
                conn.execute("SELECT 1")

        return threads(load, cycle)


def sqlalchemy_threads(dsn: str, load: Load) -> Run:
    engine = sqlalchemy.create_engine(
        _sqlalchemy_url(dsn, "psycopg"),
        pool_size=load.size,
        max_overflow=0,
        pool_timeout=60,
        isolation_level="AUTOCOMMIT",
    )
    try:

        def cycle() -> None:
            with engine.connect() as conn:
                conn.exec_driver_sql("SELECT 1")

        return threads(load, cycle)
    finally:
        engine.dispose()


def tether_threads(dsn: str, load: Load) -> Run:
    with tether.postgres.pool(dsn, min_size=load.size, max_size=load.size) as pool:

        def cycle() -> None:
            with pool.acquire() as conn:
                conn.execute("SELECT 1")

        return threads(load, cycle)


class MinimalThreadPool:
    """The floor for threads: a deque of connections and a FIFO deque of waiters, each
    asleep on a lock of its own that the returning thread releases (a direct hand-off,
    first come first served, as in tether and psycopg_pool); no checks, no reset, no
    statistics, no timeouts."""

    def __init__(self, connections: list[Any]) -> None:
        self.idle = deque(connections)
        self.waiters: deque[list[Any]] = deque()
        self.lock = threading.Lock()

    def acquire(self) -> Any:
        with self.lock:
            if self.idle:
                return self.idle.pop()
            sleeper = threading.Lock()
            sleeper.acquire()
            waiter = [sleeper, None]
            self.waiters.append(waiter)
        sleeper.acquire()
        return waiter[1]

    def release(self, conn: Any) -> None:
        with self.lock:
            if self.waiters:
                waiter = self.waiters.popleft()
                waiter[1] = conn
                waiter[0].release()
            else:
                self.idle.append(conn)


def minimal_threads(dsn: str, load: Load) -> Run:
    connections = [psycopg.connect(dsn, autocommit=True) for _ in range(load.size)]
    pool = MinimalThreadPool(connections)

    def cycle() -> None:
        conn = pool.acquire()
        try:
            conn.execute("SELECT 1")
        finally:
            pool.release(conn)

    try:
        return threads(load, cycle)
    finally:
        for conn in connections:
            conn.close()


def dedicated_threads(dsn: str, load: Load) -> Run:
    connections = [psycopg.connect(dsn, autocommit=True) for _ in range(load.size)]
    per_connection = load.queries // load.size
    try:
        start = threading.Barrier(load.size + 1)

        def own(conn: psycopg.Connection[Any]) -> None:
            start.wait()
            for _ in range(per_connection):
                conn.execute("SELECT 1")

        workers = [threading.Thread(target=own, args=(conn,)) for conn in connections]
        for thread in workers:
            thread.start()
        with Clock() as clock:
            start.wait()
            for thread in workers:
                thread.join()
        return clock.run
    finally:
        for conn in connections:
            conn.close()


THREAD_CONTESTANTS: dict[str, Callable[[str, Load], Run]] = {
    "minimal pool (psycopg, threads)": minimal_threads,
    "4 dedicated connections (psycopg)": dedicated_threads,
    "psycopg_pool ConnectionPool": psycopg_pool_threads,
    "SQLAlchemy QueuePool (psycopg)": sqlalchemy_threads,
    "tether.postgres.pool": tether_threads,
}


def _paired(mine: list[float], theirs: list[float]) -> tuple[float, float, float]:
    """The median, lowest and highest of the ratios of two contestants' figures, repeat
    by repeat: each ratio compares runs made moments apart, so that the machine's drift
    between repeats cancels out."""
    ratios = [a / b for a, b in zip(mine, theirs, strict=True)]
    return statistics.median(ratios), min(ratios), max(ratios)


def _rotated(contestants: dict[str, T], repeat: int) -> list[tuple[str, T]]:
    """The contestants, starting with a different one each repeat: whoever runs first
    (or last) in a round does not always get the same machine."""
    order = list(contestants.items())
    shift = repeat % len(order)
    return order[shift:] + order[:shift]


def _client_cost(run: Run, queries: int) -> tuple[float, float]:
    """This process's CPU time in microseconds and its context switches, each per query.

    The machine's cores are shared with the server, so a client that burns more CPU per
    query leaves less for the server; and with threads, what a pool costs is mostly the
    kernel's work of putting waiters to sleep and waking them, which wall-clock time alone
    does not show.
    """
    return run.cpu / queries * 1e6, run.switches / queries


# ---------------------------------------------------------------------------- uncontended


async def async_cycle(pool: tether.AsyncPool[Any], cycles: int) -> float:
    """Nanoseconds per acquire + release, one caller, no query."""
    async with pool:
        for _ in range(1000):
            async with pool.acquire():
                pass
        started = time.perf_counter_ns()
        for _ in range(cycles):
            async with pool.acquire():
                pass
        return (time.perf_counter_ns() - started) / cycles


def sync_cycle(pool: tether.Pool[Any], cycles: int) -> float:
    with pool:
        for _ in range(1000):
            with pool.acquire():
                pass
        started = time.perf_counter_ns()
        for _ in range(cycles):
            with pool.acquire():
                pass
        return (time.perf_counter_ns() - started) / cycles


def uncontended(dsn: str, cycles: int) -> dict[str, float]:
    return {
        "async, generic AsyncPool (object)": asyncio.run(
            async_cycle(tether.AsyncPool(object, max_size=1), cycles)
        ),
        "async, tether + asyncpg": asyncio.run(
            async_cycle(tether.postgres.async_pool(dsn, max_size=1), cycles)
        ),
        "async, tether + psycopg": asyncio.run(
            async_cycle(tether.postgres.async_pool(dsn, driver="psycopg", max_size=1), cycles)
        ),
        "threads, generic Pool (object)": sync_cycle(tether.Pool(object, max_size=1), cycles),
        "threads, tether + psycopg": sync_cycle(tether.postgres.pool(dsn, max_size=1), cycles),
    }


# ---------------------------------------------------------------------------- report

CLAIMS = [
    # (numerator, denominator, at least, what the figures are)
    ("tether + asyncpg", "minimal pool (asyncpg)", 0.95, "qps"),
    ("tether + asyncpg", "10 dedicated connections (asyncpg)", 0.85, "qps"),
    ("tether + asyncpg", "asyncpg Pool, reset off", 1.4, "qps"),
    ("tether + psycopg (async)", "psycopg_pool AsyncConnectionPool", 1.5, "qps"),
    ("tether.postgres.pool", "psycopg_pool ConnectionPool", 1.5, "qps"),
]
REFERENCES = [
    # Not claims: what the floors reach, to read the claims against (a claim that the
    # minimal pool itself misses asks for more than any pool of its kind can give here).
    ("minimal pool (asyncpg)", "10 dedicated connections (asyncpg)"),
    ("minimal pool (psycopg, threads)", "psycopg_pool ConnectionPool"),
    ("tether.postgres.pool", "minimal pool (psycopg, threads)"),
]
CYCLE_CLAIMS = [
    # (tether with a real connection, generic pool, at most this many times slower)
    ("async, tether + asyncpg", "async, generic AsyncPool (object)", 2.0),
    ("async, tether + psycopg", "async, generic AsyncPool (object)", 2.0),
    ("threads, tether + psycopg", "threads, generic Pool (object)", 2.0),
]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dsn", default=DEFAULT_DSN, help="the PostgreSQL server to use")
    parser.add_argument("--repeats", type=int, default=5, help="interleaved repeats")
    parser.add_argument(
        "--quick", action="store_true", help="a tenth of the work (to check that it runs)"
    )
    args = parser.parse_args(argv)
    scale = 10 if args.quick else 1
    contended = Load(tasks=200, size=10, cycles=200 // scale)
    threaded = Load(tasks=16, size=4, cycles=1500 // scale)
    cycles = 50_000 // scale

    qps: dict[str, list[float]] = {}
    per_cycle: dict[str, list[float]] = {}
    costs: dict[str, list[tuple[float, float]]] = {}
    for repeat in range(args.repeats):
        for name, contest in _rotated(ASYNC_CONTESTANTS, repeat):
            run: Run = asyncio.run(contest(args.dsn, contended))  # type: ignore[arg-type]
            qps.setdefault(name, []).append(contended.queries / run.seconds)
            costs.setdefault(name, []).append(_client_cost(run, contended.queries))
        for name, contest_threads in _rotated(THREAD_CONTESTANTS, repeat):
            run = contest_threads(args.dsn, threaded)
            qps.setdefault(name, []).append(threaded.queries / run.seconds)
            costs.setdefault(name, []).append(_client_cost(run, threaded.queries))
        for name, nanoseconds in uncontended(args.dsn, cycles).items():
            per_cycle.setdefault(name, []).append(nanoseconds)
        print(f"repeat {repeat + 1}/{args.repeats} done", file=sys.stderr)

    median_qps = {name: statistics.median(values) for name, values in qps.items()}
    median_cycle = {name: statistics.median(values) for name, values in per_cycle.items()}
    print(
        f"Python {sys.version.split()[0]}, asyncpg {asyncpg.__version__}, "
        f"psycopg {psycopg.__version__}, psycopg_pool {psycopg_pool.__version__}, "
        f"SQLAlchemy {sqlalchemy.__version__}; median of {args.repeats} interleaved repeats"
    )
    print(
        f"\ncontended, asyncio: {contended.tasks} tasks, pool of {contended.size}, "
        f"{contended.cycles} x (acquire -> SELECT 1 -> release) each"
    )
    for name in ASYNC_CONTESTANTS:
        cpu = statistics.median(c[0] for c in costs[name])
        print(f"  {name:<38} {median_qps[name]:>10,.0f} queries/s   client CPU {cpu:5.1f} us/query")
    print(
        f"\ncontended, threads: {threaded.tasks} threads, pool of {threaded.size}, "
        f"{threaded.cycles} cycles each"
    )
    for name in THREAD_CONTESTANTS:
        cpu = statistics.median(c[0] for c in costs[name])
        switches = statistics.median(c[1] for c in costs[name])
        print(
            f"  {name:<38} {median_qps[name]:>10,.0f} queries/s"
            f"   client CPU {cpu:5.1f} us/query, {switches:4.1f} context switches/query"
        )
    print("\nuncontended acquire + release, one caller, no query")
    for name, nanoseconds in median_cycle.items():
        print(f"  {name:<38} {nanoseconds / 1000:>10.2f} us")

    print("\nclaims")
    missed = 0
    for mine, theirs, target, _ in CLAIMS:
        ratio, low, high = _paired(qps[mine], qps[theirs])
        verdict = "ok" if ratio >= target else "MISSED"
        missed += verdict != "ok"
        print(
            f"  {mine} / {theirs}: {ratio:.2f}x ({low:.2f}-{high:.2f}) "
            f"(target >= {target}) {verdict}"
        )
    for mine, generic, limit in CYCLE_CLAIMS:
        ratio, low, high = _paired(per_cycle[mine], per_cycle[generic])
        verdict = "ok" if ratio <= limit else "MISSED"
        missed += verdict != "ok"
        print(
            f"  {mine} / {generic}: {ratio:.2f}x the time ({low:.2f}-{high:.2f}) "
            f"(target <= {limit}) {verdict}"
        )
    print("\nfor reference")
    for mine, theirs in REFERENCES:
        ratio, low, high = _paired(qps[mine], qps[theirs])
        print(f"  {mine} / {theirs}: {ratio:.2f}x ({low:.2f}-{high:.2f})")
    return 1 if missed else 0


if __name__ == "__main__":
    raise SystemExit(main())
