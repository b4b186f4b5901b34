"""psycopg 3 behind :mod:`tether.postgres`: how to make, check, reset and judge a connection.

Imported only by :mod:`tether.postgres`, once psycopg is known to be installed.

Resetting is decided locally, from the transaction status libpq keeps for the
connection (no round trip): ``IDLE`` needs nothing; ``INTRANS`` / ``INERROR`` (a
transaction left open, or failed) needs a ``ROLLBACK``; ``ACTIVE`` (a query still running)
and ``UNKNOWN`` (the connection is bad) mean its state cannot be trusted, so the pool
destroys it.

A connection returned ``ACTIVE`` may still have a task waiting on its socket (a query
shielded from the holder's cancellation, say). Closing the socket under that task would
leave its file descriptor registered with the event loop, and the next socket to get the
same number (the pool's next connection, often) would fail. Such a connection is first
cancelled, and closed once that task has let go of it.
"""

from __future__ import annotations

import asyncio
import inspect
import math
import selectors
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Final

import psycopg
from psycopg import pq
from psycopg.rows import TupleRow

from ._async_pool import AsyncPool
from ._pool import Pool
from ._pool_options import PoolOptions

__all__ = ["async_pool", "is_broken", "sync_pool"]

_IDLE: Final = pq.TransactionStatus.IDLE
_INTRANS: Final = pq.TransactionStatus.INTRANS
_INERROR: Final = pq.TransactionStatus.INERROR
_LOST: Final = frozenset({"57P01", "57P02", "57P03", "57P05", "25P03"})
"""admin_shutdown, crash_shutdown, cannot_connect_now: the server is going or gone;
idle_session_timeout, idle_in_transaction_session_timeout: it ended this session."""


class ConnectionStateUnknown(psycopg.InterfaceError):
    """A connection came back busy or bad: nobody can say what state it is in."""


def is_broken(error: BaseException) -> bool:
    """Whether ``error`` says the connection it came from is lost.

    A client-side connection failure (an ``OperationalError`` with no SQLSTATE, such as
    "server closed the connection unexpectedly"), a connection-class SQLSTATE (``08``), a
    server shutdown (``57P01``-``57P03``) or the server ending an idle session (``57P05``,
    ``25P03``). A cancelled query (``57014``) or a lock timeout is an ``OperationalError``
    too, but leaves the connection usable.
    """
    if isinstance(error, psycopg.Error):
        sqlstate = error.sqlstate
        if sqlstate is None:
            return isinstance(error, psycopg.OperationalError)
        return sqlstate.startswith("08") or sqlstate in _LOST
    return isinstance(error, ConnectionError)


def _unknown(conn: psycopg.BaseConnection[Any]) -> ConnectionStateUnknown:
    status = pq.TransactionStatus(conn.pgconn.transaction_status)
    return ConnectionStateUnknown(
        f"connection returned in transaction state {status.name}: it cannot be reused"
    )


def _connect_options(
    *, connect_timeout: float, pgbouncer: bool, connect_args: Mapping[str, object] | None
) -> dict[str, Any]:
    options: dict[str, Any] = {
        "autocommit": True,
        # libpq counts whole seconds, two at least.
        "connect_timeout": max(2, math.ceil(connect_timeout)),
    }
    if pgbouncer:
        # Server-side prepared statements do not survive transaction pooling.
        options["prepare_threshold"] = None
    options.update(connect_args or {})
    return options


# ---------------------------------------------------------------------------- threads


def sync_pool(
    dsn: str,
    *,
    connect_timeout: float,
    pgbouncer: bool,
    configure: Callable[[psycopg.Connection[TupleRow]], object] | None,
    connect_args: Mapping[str, object] | None,
    options: PoolOptions,
) -> Pool[psycopg.Connection[TupleRow]]:
    """A :class:`tether.Pool` of psycopg connections (see :func:`tether.postgres.pool`)."""
    connect_options = _connect_options(
        connect_timeout=connect_timeout, pgbouncer=pgbouncer, connect_args=connect_args
    )

    def create() -> psycopg.Connection[TupleRow]:
        conn = psycopg.Connection.connect(dsn, **connect_options)
        if configure is not None:
            try:
                configure(conn)
            except BaseException:
                conn.close()
                raise
        return conn

    return Pool(
        create,
        destroy=_close,
        check=_check,
        reset=_reset,
        is_broken=is_broken,
        **options,
    )


def _close(conn: psycopg.Connection[Any]) -> None:
    conn.close()


def _check(conn: psycopg.Connection[Any]) -> bool:
    if conn.closed:
        return False
    if conn.autocommit:
        conn.execute("")
        return True
    # The empty query must not open a transaction on a non-autocommit connection.
    conn.autocommit = True
    try:
        conn.execute("")
    finally:
        conn.autocommit = False
    return True


def _reset(conn: psycopg.Connection[Any]) -> None:
    status = conn.pgconn.transaction_status
    if status == _IDLE:
        return
    if status in (_INTRANS, _INERROR):
        conn.rollback()
        return
    raise _unknown(conn)


# ---------------------------------------------------------------------------- asyncio


def async_pool(
    dsn: str,
    *,
    connect_timeout: float,
    pgbouncer: bool,
    configure: Callable[[psycopg.AsyncConnection[TupleRow]], object] | None,
    connect_args: Mapping[str, object] | None,
    options: PoolOptions,
) -> AsyncPool[psycopg.AsyncConnection[TupleRow]]:
    """An :class:`tether.AsyncPool` of psycopg async connections."""
    connect_options = _connect_options(
        connect_timeout=connect_timeout, pgbouncer=pgbouncer, connect_args=connect_args
    )
    server_timeout = connect_timeout

    async def create() -> psycopg.AsyncConnection[TupleRow]:
        conn = await psycopg.AsyncConnection.connect(dsn, **connect_options)
        if configure is not None:
            try:
                configured = configure(conn)
                if inspect.isawaitable(configured):
                    await configured
            except BaseException:
                await conn.close()
                raise
        return conn

    async def check(conn: psycopg.AsyncConnection[Any]) -> bool:
        if conn.closed:
            return False
        async with asyncio.timeout(server_timeout):
            if conn.autocommit:
                await conn.execute("")
                return True
            await conn.set_autocommit(True)
            try:
                await conn.execute("")
            finally:
                await conn.set_autocommit(False)
        return True

    def reset(conn: psycopg.AsyncConnection[Any]) -> Awaitable[None] | None:
        status = conn.pgconn.transaction_status
        if status == _IDLE:
            return None
        if status in (_INTRANS, _INERROR):
            return _rollback(conn, server_timeout)
        raise _unknown(conn)

    return AsyncPool(
        create,
        destroy=lambda conn: _aclose(conn, server_timeout),
        check=check,
        reset=reset,
        is_broken=is_broken,
        **options,
    )


async def _rollback(conn: psycopg.AsyncConnection[Any], timeout: float) -> None:
    async with asyncio.timeout(timeout):
        await conn.rollback()


async def _aclose(conn: psycopg.AsyncConnection[Any], timeout: float) -> None:
    """Close ``conn``; if a task is waiting on its socket, cancel that task's query and
    wait (``timeout`` seconds at most) for it to let go of the connection first.

    A connection abandoned in the middle of a result (a cursor's ``stream()`` left
    suspended) holds its lock too, but no task waits on its socket, and nothing would
    ever let go of it: it is closed at once.
    """
    if not conn.closed and _socket_watched(conn):
        try:
            async with asyncio.timeout(timeout):
                await conn.cancel_safe()
                async with conn.lock:
                    await conn.close()
                    return
        except (TimeoutError, psycopg.Error):
            pass  # still running, or the cancellation failed: close it all the same
    await conn.close()


def _socket_watched(conn: psycopg.AsyncConnection[Any]) -> bool:
    """Whether the event loop is watching ``conn``'s socket for some task.

    asyncio has no public way to ask; its selector event loops answer through their
    selector. Any other loop (uvloop, say) is assumed to be watching it, which costs at
    most a wait for the connection's lock.
    """
    selector = getattr(asyncio.get_running_loop(), "_selector", None)
    if not isinstance(selector, selectors.BaseSelector):
        return True
    try:
        return conn.pgconn.socket in selector.get_map()
    except psycopg.Error:  # no socket: the connection is closed or broken
        return False
