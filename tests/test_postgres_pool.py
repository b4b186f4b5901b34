"""tether.postgres pools against the shared PostgreSQL server on 127.0.0.1:5432.

The connections of each test carry an ``application_name`` of their own, so that counting
backends in ``pg_stat_activity`` counts only them. Faults that need a server or a network
of their own (a proxy that cuts connections, a server that restarts) are in
test_postgres_outage.py.
"""

from __future__ import annotations

import asyncio
import itertools
import re
import sys
import threading
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import psycopg
import pytest

import tether
import tether.db
import tether.postgres
from infra.fixtures import ProxyFactory
from infra.proxy import TcpProxy

GUARD = 15.0  # seconds: a failure guard only, never a measurement
ASYNC_DRIVERS = ["asyncpg", "psycopg"]


def via(dsn: str, proxy: TcpProxy) -> str:
    """The URL ``dsn``, pointed at ``proxy`` (asyncpg takes URLs only)."""
    url = urlsplit(dsn)
    user = f"{url.username}@" if url.username else ""
    return urlunsplit(url._replace(netloc=f"{user}{proxy.host}:{proxy.port}"))


def tagged(dsn: str) -> tuple[str, str]:
    """``dsn`` with an ``application_name`` unique to the caller, and that name."""
    name = f"tether-test-{uuid.uuid4().hex[:10]}"
    separator = "&" if "?" in dsn else "?"
    return f"{dsn}{separator}application_name={name}", name


def backends(observer: psycopg.Connection[Any], application_name: str) -> int:
    """How many server backends carry ``application_name`` right now."""
    row = observer.execute(
        "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s",
        (application_name,),
    ).fetchone()
    assert row is not None
    return int(row[0])


def wait_until(condition: Callable[[], bool], timeout: float = GUARD) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.01)
    return condition()


async def await_until(condition: Callable[[], Awaitable[bool]], timeout: float = GUARD) -> bool:
    deadline = time.monotonic() + timeout
    for _ in itertools.count():
        if await condition() or time.monotonic() >= deadline:
            break
        await asyncio.sleep(0.01)
    return await condition()


@pytest.fixture
def observer(postgres_dsn: str) -> Iterator[psycopg.Connection[Any]]:
    """A connection of the test's own, outside every pool, to look at the server."""
    with psycopg.connect(postgres_dsn, autocommit=True) as conn:
        yield conn


def async_pool(dsn: str, driver: str, **options: Any) -> tether.AsyncPool[Any]:
    return tether.postgres.async_pool(dsn, driver=driver, **options)  # type: ignore[no-any-return]


async def run_query(conn: Any, query: str = "SELECT 1") -> Any:
    """Run ``query`` on an asyncpg or psycopg async connection; return the first value."""
    if isinstance(conn, psycopg.AsyncConnection):
        cursor = await conn.execute(query)
        if cursor.description is None:  # a command, not a query
            return None
        row = await cursor.fetchone()
        return None if row is None else row[0]
    return await conn.fetchval(query)


def server_pid(conn: Any) -> int:
    if isinstance(conn, psycopg.AsyncConnection | psycopg.Connection):
        return int(conn.info.backend_pid)
    return int(conn.get_server_pid())


# ---------------------------------------------------------------------------- size


@pytest.mark.parametrize("driver", ASYNC_DRIVERS)
async def test_200_tasks_on_ten_connections_never_use_more_than_ten_backends(
    postgres_dsn: str, observer: psycopg.Connection[Any], driver: str
) -> None:
    """200 tasks looping over a pool of 10: pg_stat_activity, sampled all along, never
    shows more than 10 of the pool's backends, and none once the pool is closed."""
    dsn, application_name = tagged(postgres_dsn)
    samples: list[int] = []
    load_done = threading.Event()

    def sample() -> None:
        with psycopg.connect(postgres_dsn, autocommit=True) as monitor:
            while not load_done.is_set():
                samples.append(backends(monitor, application_name))

    sampler = threading.Thread(target=sample, name="pg_stat_activity sampler")
    sampler.start()
    try:
        async with async_pool(dsn, driver, max_size=10) as pool:

            async def worker() -> None:
                for _ in range(20):
                    async with pool.acquire() as conn:
                        assert await run_query(conn) == 1

            await asyncio.gather(*(worker() for _ in range(200)))
            stats = pool.stats()
    finally:
        load_done.set()
        sampler.join(GUARD)
    assert (stats.acquired, stats.timeouts, stats.broken, stats.in_use) == (4000, 0, 0, 0)
    assert 1 <= max(samples) <= 10, samples
    assert stats.created <= 10
    assert wait_until(lambda: backends(observer, application_name) == 0)


def test_threads_never_use_more_backends_than_max_size(
    postgres_dsn: str, observer: psycopg.Connection[Any]
) -> None:
    """The threaded pool: 16 threads on a pool of 4, sampled the same way."""
    dsn, application_name = tagged(postgres_dsn)
    samples: list[int] = []
    errors: list[BaseException] = []
    with tether.postgres.pool(dsn, max_size=4) as pool:

        def worker() -> None:
            try:
                for _ in range(50):
                    with pool.acquire() as conn:
                        conn.execute("SELECT 1")
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=worker) for _ in range(16)]
        for thread in threads:
            thread.start()
        while any(thread.is_alive() for thread in threads):
            samples.append(backends(observer, application_name))
        for thread in threads:
            thread.join(GUARD)
        stats = pool.stats()
    assert (errors, stats.acquired, stats.in_use) == ([], 800, 0)
    assert 1 <= max(samples) <= 4
    assert wait_until(lambda: backends(observer, application_name) == 0)


# ---------------------------------------------------------------------------- killed backends


def test_terminated_idle_backend_is_never_handed_out_sync(
    postgres_dsn: str, observer: psycopg.Connection[Any]
) -> None:
    """A backend killed with pg_terminate_backend while its connection is idle is
    caught by the check on borrow and replaced: the caller gets a working connection."""
    with tether.postgres.pool(postgres_dsn, max_size=1, check_after=0) as pool:
        with pool.acquire() as conn:
            victim = conn.info.backend_pid
        observer.execute("SELECT pg_terminate_backend(%s)", (victim,))
        assert wait_until(lambda: not _alive(observer, victim))
        with pool.acquire() as conn:
            assert conn.execute("SELECT 1").fetchone() == (1,)
            assert conn.info.backend_pid != victim
        stats = pool.stats()
    assert (stats.check_failures, stats.created, stats.broken) == (1, 2, 0)


@pytest.mark.parametrize("driver", ASYNC_DRIVERS)
async def test_terminated_idle_backend_is_never_handed_out_async(
    postgres_dsn: str, observer: psycopg.Connection[Any], driver: str
) -> None:
    """The same for the async pools."""
    async with async_pool(postgres_dsn, driver, max_size=1, check_after=0) as pool:
        async with pool.acquire() as conn:
            victim = server_pid(conn)
        observer.execute("SELECT pg_terminate_backend(%s)", (victim,))
        assert wait_until(lambda: not _alive(observer, victim))
        async with pool.acquire() as conn:
            assert await run_query(conn) == 1
            assert server_pid(conn) != victim
        stats = pool.stats()
    assert (stats.check_failures, stats.created, stats.broken) == (1, 2, 0)


def _alive(observer: psycopg.Connection[Any], pid: int) -> bool:
    row = observer.execute("SELECT count(*) FROM pg_stat_activity WHERE pid = %s", (pid,))
    return row.fetchone() == (1,)


def test_connection_idle_for_longer_than_check_after_is_checked(
    postgres_dsn: str, observer: psycopg.Connection[Any]
) -> None:
    """With the default check_after, a connection idle for more than it is checked too."""
    with tether.postgres.pool(postgres_dsn, max_size=1, check_after=0.05) as pool:
        with pool.acquire() as conn:
            victim = conn.info.backend_pid
        observer.execute("SELECT pg_terminate_backend(%s)", (victim,))
        assert wait_until(lambda: not _alive(observer, victim))
        time.sleep(0.1)  # the connection has now idled for longer than check_after
        with pool.acquire() as conn:
            assert conn.execute("SELECT 2").fetchone() == (2,)
    assert pool.stats().check_failures == 1


@pytest.mark.parametrize("driver", ["psycopg-threads", *ASYNC_DRIVERS])
async def test_recently_used_connection_fails_once_and_the_pool_heals(
    postgres_dsn: str, observer: psycopg.Connection[Any], driver: str
) -> None:
    """A backend killed moments after its connection was used: the next query on it
    fails with the driver's error and the connection is destroyed, not reused; every
    other connection is then checked before reuse, and the next borrow works."""
    if driver == "psycopg-threads":
        with tether.postgres.pool(postgres_dsn, max_size=2, check_after=60) as sync_pool:
            with sync_pool.acquire() as first, sync_pool.acquire():
                victim = first.info.backend_pid
            observer.execute("SELECT pg_terminate_backend(%s)", (victim,))
            assert wait_until(lambda: not _alive(observer, victim))
            with pytest.raises(psycopg.OperationalError):
                with sync_pool.acquire() as conn:
                    conn.execute("SELECT 1")
            with sync_pool.acquire() as conn:
                assert conn.execute("SELECT 1").fetchone() == (1,)
            stats = sync_pool.stats()
    else:
        async with async_pool(postgres_dsn, driver, max_size=2, check_after=60) as pool:
            async with pool.acquire() as first, pool.acquire():
                victim = server_pid(first)
            observer.execute("SELECT pg_terminate_backend(%s)", (victim,))
            assert wait_until(lambda: not _alive(observer, victim))

            async def query_on_the_dead_one() -> None:
                async with pool.acquire() as conn:
                    await run_query(conn)

            with pytest.raises(Exception) as caught:  # noqa: PT011 - checked below
                await query_on_the_dead_one()
            async with pool.acquire() as conn:
                assert await run_query(conn) == 1
            stats = pool.stats()
        assert type(caught.value).__name__ in (
            "AdminShutdown",
            "OperationalError",
            "ConnectionDoesNotExistError",
            "InterfaceError",
            "InternalClientError",  # asyncpg, when the server's FATAL arrives mid-request
        )
    # One destroyed as broken; the other, suspect since, passed its check and served.
    assert (stats.broken, stats.destroyed, stats.check_failures) == (1, 1, 0)


# ---------------------------------------------------------------------------- returns


@pytest.mark.parametrize("driver", ["psycopg-threads", *ASYNC_DRIVERS])
async def test_returning_a_clean_connection_or_borrowing_a_fresh_one_costs_no_round_trip(
    postgres_dsn: str, tcp_proxy: ProxyFactory, driver: str
) -> None:
    """With the network to the server stalled, a connection used moments ago is still
    borrowed and returned at once: neither direction waits for the server."""
    proxy = tcp_proxy("127.0.0.1", 5432)
    dsn = via(postgres_dsn, proxy)
    options: dict[str, Any] = {"max_size": 1, "connect_timeout": 60}
    if driver == "psycopg-threads":
        with tether.postgres.pool(dsn, **options) as sync_pool:
            with sync_pool.acquire() as conn:
                conn.execute("SELECT 1")
            proxy.blackhole()
            released = threading.Event()

            def borrow_and_return() -> None:
                with sync_pool.acquire():
                    pass
                released.set()

            worker = threading.Thread(target=borrow_and_return)
            worker.start()
            assert released.wait(GUARD)
            worker.join(GUARD)
            proxy.restore()
        return
    async with async_pool(dsn, driver, **options) as pool:
        async with pool.acquire() as conn:
            await run_query(conn)
        proxy.blackhole()

        async def borrow_and_return() -> None:
            async with pool.acquire():
                pass

        await asyncio.wait_for(borrow_and_return(), GUARD)
        proxy.restore()
        async with pool.acquire() as conn:
            assert await run_query(conn, "SELECT 3") == 3


@pytest.mark.parametrize("driver", ["psycopg-threads", *ASYNC_DRIVERS])
async def test_an_open_transaction_is_rolled_back_on_return(postgres_dsn: str, driver: str) -> None:
    """A connection returned inside a transaction (or a failed one) is rolled back and
    reused; its changes are gone."""
    if driver == "psycopg-threads":
        with tether.postgres.pool(postgres_dsn, max_size=1) as sync_pool:
            with sync_pool.acquire() as conn:
                conn.execute("BEGIN")
                conn.execute("CREATE TEMP TABLE scratch (v int)")
            with sync_pool.acquire() as conn:
                status = conn.info.transaction_status
                exists = conn.execute("SELECT to_regclass('pg_temp.scratch')").fetchone()
            with sync_pool.acquire() as conn:
                conn.execute("BEGIN")
                with pytest.raises(psycopg.errors.DivisionByZero):
                    conn.execute("SELECT 1 / 0")
            with sync_pool.acquire() as conn:
                failed_then = conn.info.transaction_status
            stats = sync_pool.stats()
        assert (status, exists, failed_then) == (0, (None,), 0)
    else:
        async with async_pool(postgres_dsn, driver, max_size=1) as pool:
            async with pool.acquire() as conn:
                await run_query(conn, "BEGIN")
                await run_query(conn, "CREATE TEMP TABLE scratch (v int)")
            async with pool.acquire() as conn:
                exists = await run_query(conn, "SELECT to_regclass('pg_temp.scratch')")
                in_transaction = (
                    conn.info.transaction_status != 0
                    if driver == "psycopg"
                    else conn.is_in_transaction()
                )
            stats = pool.stats()
        assert (exists, in_transaction) == (None, False)
    assert (stats.created, stats.broken) == (1, 0)


def test_a_connection_returned_mid_query_is_destroyed(postgres_dsn: str) -> None:
    """Returned while a result is still streaming (state ACTIVE), a connection cannot be
    trusted: it is destroyed instead of reused."""
    with tether.postgres.pool(postgres_dsn, max_size=1) as pool:
        with pool.acquire() as conn:
            stream = conn.cursor().stream("SELECT generate_series(1, 100000)")
            assert next(stream) == (1,)
        with pool.acquire() as conn:
            assert conn.execute("SELECT 1").fetchone() == (1,)
        stats = pool.stats()
    stream.close()
    assert (stats.created, stats.broken) == (2, 1)


@pytest.mark.parametrize("driver", ASYNC_DRIVERS)
async def test_a_query_cancelled_outside_a_transaction_leaves_a_reusable_connection(
    postgres_dsn: str, driver: str
) -> None:
    """A holder cancelled mid-query returns its connection; once the server has
    cancelled the query the connection is reused, not replaced."""
    async with async_pool(postgres_dsn, driver, max_size=1) as pool:

        async def slow() -> None:
            async with pool.acquire() as conn:
                await run_query(conn, "SELECT pg_sleep(30)")

        with pytest.raises(TimeoutError):
            await asyncio.wait_for(slow(), 0.3)
        async with pool.acquire() as conn:
            assert await run_query(conn) == 1
        stats = pool.stats()
    assert (stats.created, stats.broken) == (1, 0)


async def test_an_asyncpg_transaction_cancelled_while_starting_leaves_nothing_behind(
    postgres_dsn: str,
) -> None:
    """A task cancelled while asyncpg's ``transaction()`` sends its BEGIN leaves asyncpg
    believing a transaction is open on that connection. Its return to the pool clears
    that: the next borrower's ``transaction()`` begins a real transaction (rather than a
    SAVEPOINT, which the server refuses outside one)."""
    async with tether.postgres.async_pool(postgres_dsn, max_size=1) as pool:
        for _ in range(5):  # the cancellation lands before or after BEGIN reaches the server
            async with pool.acquire() as conn:
                starting = asyncio.get_running_loop().create_task(conn.transaction().start())
                await asyncio.sleep(0)  # BEGIN is on its way
                starting.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await starting
            async with pool.acquire() as conn, conn.transaction():
                assert conn.is_in_transaction()
                assert await conn.fetchval("SELECT 1") == 1
            assert not conn.is_in_transaction()
        stats = pool.stats()
    assert (stats.created, stats.broken) == (1, 0)


# ---------------------------------------------------------------------------- bad input

BAD_TARGETS = {
    "unknown host": ("postgresql://postgres@no-such-host.invalid/test", r"no-such-host"),
    "closed port": ("postgresql://postgres@127.0.0.1:1/test", r"refused|Connect call failed"),
    "missing database": (
        "postgresql://postgres@127.0.0.1:5432/tether_no_such_db",
        r"tether_no_such_db.*does not exist",
    ),
    "unknown role": (
        "postgresql://tether_no_such_role@127.0.0.1:5432/test",
        r"tether_no_such_role.*does not exist",
    ),
}


@pytest.mark.parametrize("target", list(BAD_TARGETS))
@pytest.mark.parametrize("driver", ["psycopg-threads", *ASYNC_DRIVERS])
async def test_unreachable_targets_fail_promptly_naming_the_pool(
    postgres_dsn: str, driver: str, target: str
) -> None:
    """Each bad target: the first acquire raises the driver's error with a note naming the
    pool, well within acquire_timeout; the next ones fail at once with PoolUnavailable
    (whose cause is that error) and do not connect again until the backoff allows."""
    dsn, pattern = BAD_TARGETS[target]
    options: dict[str, Any] = {"name": "orders-db", "acquire_timeout": 30, "retry_delay": (30, 60)}
    started = time.monotonic()
    errors: list[BaseException] = []
    if driver == "psycopg-threads":
        with tether.postgres.pool(dsn, **options) as sync_pool:
            for _ in range(20):
                try:
                    with sync_pool.acquire():
                        pass  # never reached
                except Exception as exc:
                    errors.append(exc)
            stats = sync_pool.stats()
    else:
        async with async_pool(dsn, driver, **options) as pool:
            for _ in range(20):
                try:
                    async with pool.acquire():
                        pass  # never reached
                except Exception as exc:
                    errors.append(exc)
            stats = pool.stats()
    elapsed = time.monotonic() - started
    first, *rest = errors
    assert not isinstance(first, tether.PoolError)
    shown = "\n".join([str(first), *first.__notes__])
    assert "(while pool 'orders-db' was creating a resource)" in first.__notes__
    assert re.search(pattern, shown), shown
    assert [type(e) for e in rest] == [tether.PoolUnavailable] * 19
    assert all(e.__cause__ is first and "orders-db" in str(e) for e in rest)
    assert stats.create_errors == 1
    assert elapsed < 30 / 3


@pytest.mark.parametrize(
    ("driver", "dsn", "message"),
    [
        ("psycopg-threads", "postgresql://[bad", r"dsn is not a valid PostgreSQL connection"),
        ("psycopg", "host=127.0.0.1 port", r"dsn is not a valid PostgreSQL connection"),
        ("psycopg-threads", "postgresql://u@h:5432:99/db", r"invalid port '5432:99'"),
        ("psycopg", "host=h port=70000", r"invalid port '70000': a number from 1 to 65535"),
        ("psycopg", "host=h port=0", r"invalid port '0'"),
        ("psycopg", "host=a,b,c port=5432,5433", r"2 ports given for 3 hosts"),
        ("asyncpg", "postgresql://[bad", r"dsn is not a valid PostgreSQL connection"),
        ("asyncpg", "postgresql://u@h:port/db", r"dsn is not a valid.*port"),
        ("asyncpg", "postgresql://u@h:0/db", r"invalid port '0': a number from 1 to 65535"),
        ("asyncpg", "postgresql://u@h1:5432,h2:x/db", r"invalid port 'x'"),
        ("asyncpg", "postgresql://u@[::1]x/db", r"invalid IPv6 address '\[::1\]x'"),
        ("asyncpg", "mysql://u@h/db", r"asyncpg needs a postgresql:// URL, got scheme 'mysql'"),
        ("asyncpg", "host=127.0.0.1", r"got scheme 'none'"),
    ],
)
def test_malformed_dsn_is_refused_when_the_pool_is_made(
    driver: str, dsn: str, message: str
) -> None:
    """A DSN that cannot be parsed raises ValueError at once, naming the pool if named."""

    def make() -> object:
        if driver == "psycopg-threads":
            return tether.postgres.pool(dsn, name="orders-db")
        return tether.postgres.async_pool(dsn, driver=driver, name="orders-db")  # type: ignore[call-overload]

    with pytest.raises(ValueError, match=message) as caught:
        make()
    assert str(caught.value).startswith("pool 'orders-db': dsn")


BAD_ARGUMENTS = [
    ({"dsn": 5}, TypeError, "dsn must be a str"),
    ({"pgbouncer": "yes"}, TypeError, "pgbouncer must be a bool"),
    ({"connect_timeout": 0}, ValueError, "connect_timeout must be positive"),
    ({"connect_timeout": -1}, ValueError, "connect_timeout must not be negative"),
    ({"connect_timeout": float("inf")}, ValueError, "connect_timeout must be a finite number"),
    ({"connect_args": [("a", 1)]}, TypeError, "connect_args must be a mapping"),
    ({"configure": "SET x"}, TypeError, "configure must be callable"),
    ({"acquire_timeout": "soon"}, TypeError, "acquire_timeout must be a number"),
    ({"check": print}, TypeError, "sets 'check' itself"),
    ({"maxsize": 3}, TypeError, "unexpected keyword argument 'maxsize'"),
    ({"min_size": 3, "max_size": 2}, ValueError, r"min_size \(3\) must not exceed"),
]


@pytest.mark.parametrize(("arguments", "error", "message"), BAD_ARGUMENTS)
def test_bad_arguments_to_pool_are_refused_at_the_call(
    arguments: dict[str, Any], error: type[Exception], message: str
) -> None:
    """Each bad argument raises at once, naming it."""
    with pytest.raises(error, match=message):
        tether.postgres.pool(**{"dsn": "postgresql://u@127.0.0.1/db", **arguments})


@pytest.mark.parametrize(
    ("arguments", "error", "message"),
    [*BAD_ARGUMENTS, ({"driver": "mysql"}, ValueError, "driver must be 'asyncpg' or 'psycopg'")],
)
@pytest.mark.parametrize("driver", ASYNC_DRIVERS)
def test_bad_arguments_to_async_pool_are_refused_at_the_call(
    driver: str, arguments: dict[str, Any], error: type[Exception], message: str
) -> None:
    """The same for async_pool(), with either driver."""
    with pytest.raises(error, match=message):
        tether.postgres.async_pool(
            **{"dsn": "postgresql://u@127.0.0.1/db", "driver": driver, **arguments}
        )


@pytest.mark.parametrize(
    ("call", "extra"),
    [
        (lambda: tether.postgres.pool("postgresql://x"), "tether[postgres]"),
        (
            lambda: tether.postgres.async_pool("postgresql://x", driver="psycopg"),
            "tether[postgres]",
        ),
        (lambda: tether.postgres.async_pool("postgresql://x"), "tether[asyncpg]"),
    ],
)
def test_a_missing_driver_names_the_extra_to_install(
    monkeypatch: pytest.MonkeyPatch, call: Callable[[], object], extra: str
) -> None:
    """Without the driver, making a pool raises ImportError naming the extra."""
    for module in ("psycopg", "asyncpg"):
        monkeypatch.setitem(sys.modules, module, None)
    for module in ("tether._pg_psycopg", "tether._pg_asyncpg"):
        monkeypatch.delitem(sys.modules, module, raising=False)
        monkeypatch.delattr(tether, module.split(".")[1], raising=False)
    with pytest.raises(ImportError, match=re.escape(f"pip install '{extra}'")):
        call()


# ---------------------------------------------------------------------------- options


def test_connect_timeout_follows_acquire_timeout(postgres_dsn: str) -> None:
    """Each connection attempt is bounded by the pool's acquire_timeout unless told
    otherwise (whole seconds, 2 at least, as libpq counts them)."""
    seen = {}
    for label, options in {
        "acquire_timeout=7": {"acquire_timeout": 7},
        "acquire_timeout=None": {"acquire_timeout": None},
        "connect_timeout=0.5": {"connect_timeout": 0.5},
        "default": {},
    }.items():
        with tether.postgres.pool(postgres_dsn, **options) as pool, pool.acquire() as conn:
            seen[label] = conn.info.get_parameters()["connect_timeout"]
    assert seen == {
        "acquire_timeout=7": "7",
        "acquire_timeout=None": "10",
        "connect_timeout=0.5": "2",
        "default": "30",
    }


@pytest.mark.parametrize("driver", ["psycopg-threads", *ASYNC_DRIVERS])
async def test_an_infinite_acquire_timeout_leaves_the_default_connect_timeout(
    postgres_dsn: str, driver: str
) -> None:
    """A pool that waits as long as it takes for a connection still bounds each attempt to
    connect by the default, as with ``acquire_timeout=None``."""
    options: dict[str, Any] = {"acquire_timeout": float("inf"), "max_size": 1}
    if driver == "psycopg-threads":
        with tether.postgres.pool(postgres_dsn, **options) as pool, pool.acquire() as conn:
            seen = conn.info.get_parameters()["connect_timeout"]
        assert seen == "10"
        return
    async with async_pool(postgres_dsn, driver, **options) as apool, apool.acquire() as aconn:
        assert await run_query(aconn) == 1
        if driver == "psycopg":
            assert aconn.info.get_parameters()["connect_timeout"] == "10"


def test_default_name_describes_the_server_without_secrets() -> None:
    """A pool's default name says user, host, port and database, never the password."""
    pool = tether.postgres.pool("postgresql://alice:s3cret@db.example:6432/shop")
    apool = tether.postgres.async_pool("postgresql://alice:s3cret@db.example/shop")
    bare = tether.postgres.pool("")
    assert (pool.name, apool.name, bare.name) == (
        "postgres alice@db.example:6432/shop",
        "postgres alice@db.example/shop",
        "postgres",
    )


@pytest.mark.parametrize(
    ("dsn", "name"),
    [
        ("host=a,b port=5432,5433 dbname=shop", "postgres a,b:5432,5433/shop"),
        ("host=a,b port=6432", "postgres a,b:6432"),
        ("postgresql://u@h1:5432,h2:5433/db", "postgres u@h1,h2:5432,5433/db"),
        ("host=a,b port=,5433", "postgres a,b:,5433"),
        ("host=/run/postgresql port=5433", "postgres /run/postgresql:5433"),
    ],
)
def test_ports_libpq_accepts_are_accepted(dsn: str, name: str) -> None:
    """Several hosts with one port each, one port for all of them, or a default (empty)
    port in the list: what libpq accepts is not refused."""
    assert tether.postgres.pool(dsn).name == name


@pytest.mark.parametrize(
    ("dsn", "name"),
    [
        ("postgresql://u@h1:5432,h2:5433/db", "postgres u@h1,h2:5432,5433/db"),
        ("postgresql://h1,h2:5433/db", "postgres h1,h2:,5433/db"),
        ("postgresql://u:p%40ss@[::1]:6432/db", "postgres u@::1:6432/db"),
        ("postgres://u%40corp@Db.Example/shop", "postgres u@corp@Db.Example/shop"),
        ("postgresql:///shop", "postgres /shop"),
    ],
)
def test_urls_asyncpg_accepts_are_accepted(dsn: str, name: str) -> None:
    """asyncpg's URLs may list several hosts, each with a port or none, and bracket IPv6
    addresses: the pool takes them, and names itself after them (never the password)."""
    assert tether.postgres.async_pool(dsn).name == name


@pytest.mark.parametrize(
    ("driver", "variable"),
    [
        ("psycopg-threads", "PGHOST"),
        ("psycopg-threads", "PGHOSTADDR"),
        ("psycopg", "PGHOST"),
        ("asyncpg", "PGHOST"),  # asyncpg does not read PGHOSTADDR
    ],
)
def test_ports_may_match_hosts_from_the_environment(
    postgres_dsn: str, monkeypatch: pytest.MonkeyPatch, driver: str, variable: str
) -> None:
    """A DSN that names no host takes libpq's (or asyncpg's) from the environment: a list
    of ports is counted against that list, and the pool connects through the second."""
    url = urlsplit(postgres_dsn)
    monkeypatch.setenv(variable, "127.0.0.1,127.0.0.1")
    if driver == "asyncpg":
        dsn = f"postgresql://{url.username}@{url.path}?port=1,{url.port or 5432}"
    else:
        dsn = f"port=1,{url.port or 5432} dbname={url.path[1:]} user={url.username}"

    async def main() -> object:
        async with tether.postgres.async_pool(dsn, driver=driver, max_size=1) as apool:  # type: ignore[call-overload]
            async with apool.acquire() as conn:
                return await run_query(conn)

    if driver == "psycopg-threads":
        with tether.postgres.pool(dsn, max_size=1) as pool, pool.acquire() as conn:
            assert conn.execute("SELECT 1").fetchone() == (1,)
    else:
        assert asyncio.run(main()) == 1
    monkeypatch.setenv(variable, "127.0.0.1,127.0.0.1,127.0.0.1")

    def make() -> object:
        if driver == "psycopg-threads":
            return tether.postgres.pool(dsn)
        return tether.postgres.async_pool(dsn, driver=driver)  # type: ignore[call-overload]

    with pytest.raises(ValueError, match="2 ports given for 3 hosts"):
        make()


# {where}: the test server's "user@host:port/db"; {user}, {db}: its parts.
URLS_ASYNCPG_REFUSES = [
    ("postgresql://{user}@127.0.0.1,/{db}", "empty host in the host list"),
    ("postgresql://{user}@127.0.0.1,,127.0.0.1/{db}", "empty host in the host list"),
    ("postgresql://{user}@/{db}?host=127.0.0.1&port=notaport", "invalid port 'notaport'"),
    ("postgresql://{user}@/{db}?host=127.0.0.1&port=5432,", "invalid port ''"),
    ("postgresql://{user}@/{db}?host=127.0.0.1,&port=5432", "empty host in the host list"),
    ("postgresql://{user}@/{db}?host=127.0.0.1:x", "invalid port 'x'"),
    ("postgresql://{user}@/{db}?host=a,b,c&port=1,2", "2 ports given for 3 hosts"),
    ("postgresql://{where}?sslmode", "bad query field: 'sslmode'"),
    ("postgresql://{where}?a=1&&b=2", "bad query field: ''"),
]
URLS_ASYNCPG_TAKES = [
    # The query's host and port count only when the network location names no host.
    ("postgresql:///{db}?host=127.0.0.1&port={port}&user={user}", "{user}@127.0.0.1:{port}/{db}"),
    ("postgresql://{where}?port=notaport&host=", "{where}"),
    ("postgresql://{user}@/{db}?host=127.0.0.1:x&port={port}", "{user}@127.0.0.1:{port}/{db}"),
    ("postgresql://{where}?sslmode=&application_name=tether", "{where}"),
    ("postgresql://127.0.0.1:{port}?user={user}&dbname={db}", "{user}@127.0.0.1:{port}/{db}"),
]


def url_parts(postgres_dsn: str) -> dict[str, object]:
    url = urlsplit(postgres_dsn)
    port = url.port or 5432
    return {
        "user": url.username,
        "db": url.path[1:],
        "port": port,
        "where": f"{url.username}@{url.hostname}:{port}{url.path}",
    }


@pytest.mark.parametrize(("template", "message"), URLS_ASYNCPG_REFUSES)
async def test_urls_asyncpg_cannot_use_are_refused_when_the_pool_is_made(
    postgres_dsn: str, template: str, message: str
) -> None:
    """What asyncpg would refuse only when connecting (and the pool would take for an
    outage) raises ValueError at once; asyncpg itself does refuse it."""
    dsn = template.format(**url_parts(postgres_dsn))
    with pytest.raises(ValueError, match=re.escape(message)):
        tether.postgres.async_pool(dsn)
    with pytest.raises((ValueError, IndexError, asyncpg.InterfaceError)):
        await asyncpg.connect(dsn, timeout=GUARD)


@pytest.mark.parametrize(("template", "where"), URLS_ASYNCPG_TAKES)
async def test_urls_asyncpg_takes_are_taken_and_named_alike_by_both_drivers(
    postgres_dsn: str, template: str, where: str
) -> None:
    """A URL asyncpg connects with is taken, and named after the server it reaches, from
    the query string where the network location says nothing."""
    parts = url_parts(postgres_dsn)
    dsn = template.format(**parts)
    async with tether.postgres.async_pool(dsn, max_size=1) as pool, pool.acquire() as conn:
        assert await conn.fetchval("SELECT 1") == 1
    assert pool.name == f"postgres {where.format(**parts)}"
    if "notaport" not in dsn and "127.0.0.1:x" not in dsn:  # libpq reads every parameter
        assert tether.postgres.async_pool(dsn, driver="psycopg").name == pool.name


@pytest.mark.parametrize("driver", ["psycopg-threads", "psycopg", "asyncpg"])
def test_a_dsn_with_several_hosts_connects_to_one_that_answers(
    postgres_dsn: str, driver: str
) -> None:
    """The first host of the list refuses connections (a closed port): the driver moves on
    to the next, and the pool serves."""
    url = urlsplit(postgres_dsn)
    user = f"{url.username}@" if url.username else ""
    dsn = f"{url.scheme}://{user}127.0.0.1:1,{url.hostname}:{url.port or 5432}{url.path}"
    if driver == "psycopg-threads":
        with tether.postgres.pool(dsn, max_size=1) as pool, pool.acquire() as conn:
            assert conn.execute("SELECT 1").fetchone() == (1,)
        return

    async def main() -> object:
        async with tether.postgres.async_pool(dsn, driver=driver, max_size=1) as apool:  # type: ignore[call-overload]
            async with apool.acquire() as conn:
                if driver == "asyncpg":
                    return await conn.fetchval("SELECT 1")
                return (await (await conn.execute("SELECT 1")).fetchone())[0]

    assert asyncio.run(main()) == 1


def test_sync_configure_runs_on_each_new_connection(postgres_dsn: str) -> None:
    """``configure`` prepares every new connection; if it fails, the connection is closed
    and the acquire raises its error."""
    with tether.postgres.pool(
        postgres_dsn, configure=lambda c: c.execute("SET application_name = 'configured'")
    ) as pool:
        with pool.acquire() as conn:
            assert conn.execute("SHOW application_name").fetchone() == ("configured",)
    made: list[psycopg.Connection[Any]] = []

    def broken(conn: psycopg.Connection[Any]) -> None:
        made.append(conn)
        raise RuntimeError("no such extension")

    with tether.postgres.pool(postgres_dsn, configure=broken) as pool:
        with pytest.raises(RuntimeError, match="no such extension"):
            with pool.acquire():
                pass  # never reached
    assert [conn.closed for conn in made] == [True]


@pytest.mark.parametrize("driver", ASYNC_DRIVERS)
async def test_async_configure_may_be_a_coroutine(postgres_dsn: str, driver: str) -> None:
    """An async pool awaits what ``configure`` returns; a failure closes the connection."""

    async def configure(conn: Any) -> None:
        await run_query(conn, "SET application_name = 'configured'")

    async with async_pool(postgres_dsn, driver, configure=configure) as pool:
        async with pool.acquire() as conn:
            assert await run_query(conn, "SHOW application_name") == "configured"
    made: list[Any] = []

    async def broken(conn: Any) -> None:
        made.append(conn)
        raise RuntimeError("no such extension")

    async with async_pool(postgres_dsn, driver, configure=broken) as pool:

        async def borrow() -> None:
            async with pool.acquire():
                pass  # never reached

        with pytest.raises(RuntimeError, match="no such extension"):
            await borrow()
    closed = [c.closed if driver == "psycopg" else c.is_closed() for c in made]
    assert closed == [True]


def test_transaction_on_a_sync_pool_commits_through_the_pool(postgres_dsn: str) -> None:
    """``with transaction(pool) as conn`` commits on the pool's connection and returns it."""
    table = f"tether_tx_{uuid.uuid4().hex[:12]}"
    with tether.postgres.pool(postgres_dsn, max_size=2) as pool:
        with pool.acquire() as conn:
            conn.execute(f"CREATE TABLE {table} (v int)")
        try:
            with tether.db.transaction(pool) as conn:
                conn.execute(f"INSERT INTO {table} VALUES (1)")
                assert pool.stats().in_use == 1
            with pool.acquire() as conn:
                rows = conn.execute(f"SELECT v FROM {table}").fetchall()
        finally:
            with pool.acquire() as conn:
                conn.execute(f"DROP TABLE {table}")
        assert (rows, pool.stats().in_use) == ([(1,)], 0)


@pytest.mark.parametrize("driver", ["psycopg-threads", "psycopg"])
async def test_the_check_leaves_connections_without_autocommit_idle(
    postgres_dsn: str, driver: str
) -> None:
    """Connections made without autocommit (``connect_args``) are checked without opening
    a transaction, and keep their mode."""
    options: dict[str, Any] = {"max_size": 1, "check_after": 0}
    connect_args = {"autocommit": False}
    if driver == "psycopg-threads":
        with tether.postgres.pool(postgres_dsn, connect_args=connect_args, **options) as pool:
            for _ in range(3):
                with pool.acquire() as conn:
                    state = (conn.autocommit, conn.info.transaction_status)
            stats = pool.stats()
    else:
        async with async_pool(postgres_dsn, driver, connect_args=connect_args, **options) as apool:
            for _ in range(3):
                async with apool.acquire() as conn:
                    state = (conn.autocommit, conn.info.transaction_status)
            stats = apool.stats()
    assert state == (False, 0)
    assert (stats.created, stats.check_failures) == (1, 0)


@pytest.mark.parametrize("driver", ASYNC_DRIVERS)
async def test_async_configure_may_be_a_plain_function(postgres_dsn: str, driver: str) -> None:
    """A ``configure`` that is not a coroutine function is simply called."""
    seen: list[object] = []
    async with async_pool(postgres_dsn, driver, configure=seen.append) as pool:
        async with pool.acquire() as conn:
            assert seen == [conn]


async def test_an_async_connection_returned_mid_query_is_destroyed(postgres_dsn: str) -> None:
    """A psycopg async connection returned while a result is still streaming is destroyed."""
    async with async_pool(postgres_dsn, "psycopg", max_size=1) as pool:
        async with pool.acquire() as conn:
            stream = conn.cursor().stream("SELECT generate_series(1, 100000)")
            assert await anext(stream) == (1,)
        async with pool.acquire() as conn:
            assert await run_query(conn) == 1
        stats = pool.stats()
    await stream.aclose()
    assert (stats.created, stats.broken) == (2, 1)


@pytest.mark.parametrize(
    ("sqlstate", "lost"),
    [
        ("08006", True),  # connection_failure
        ("57P01", True),  # admin_shutdown
        ("57P05", True),  # idle_session_timeout: the server ended the session
        ("25P03", True),  # idle_in_transaction_session_timeout: likewise
        ("57014", False),  # query_canceled: the connection is fine
        ("55P03", False),  # lock_not_available
        ("22012", False),  # division_by_zero
    ],
)
def test_psycopg_errors_that_mean_a_lost_connection(sqlstate: str, lost: bool) -> None:
    """is_broken says "lost" for the SQLSTATEs with which the server ends or has ended
    the session, whatever psycopg's class for them, and not for errors that leave the
    connection usable."""
    import psycopg.errors

    from tether import _pg_psycopg

    assert _pg_psycopg.is_broken(psycopg.errors.lookup(sqlstate)("x")) is lost
