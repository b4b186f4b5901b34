"""asyncpg behind :mod:`tether.postgres`: how to make, check, reset and judge a connection.

Imported only by :mod:`tether.postgres`, once asyncpg is known to be installed.

Resetting is decided locally (no round trip for a clean connection, unlike asyncpg's own
pool, which sends ``RESET ALL`` on every release): a connection in a transaction, or
whose last query was cancelled and may still be running on the server, is rolled back
once the cancellation has been acknowledged; a closed one, or one given back with a
request still in flight (a query shielded from the holder's cancellation), is destroyed
(asyncpg's ``close()`` cancels that request first); any other connection goes straight
back. A request in flight is looked for when the holder's block raised: that is how one
outlives its block, and the look costs more than the rest of a return.

asyncpg has no public way to ask whether a cancellation or a request is still in flight,
nor whether a ``transaction()`` block whose ``BEGIN`` was interrupted is still recorded
as open; the pool asks the connection's protocol and bookkeeping, as asyncpg's own pool
does, and destroys the connection if that ever stops being possible. A request in flight
is seen through the garbage collector: asyncpg's protocol holds the future its caller
awaits (and that request's timer) for exactly as long as it refuses another operation
("another operation is in progress"), and that future, whose callback holds the protocol
in turn, must be visible to the collector for the cycle to be collectable.
"""

from __future__ import annotations

import asyncio
import gc
import inspect
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Final

import asyncpg

from ._async_pool import AsyncPool
from ._pool_options import PoolOptions

__all__ = ["async_pool", "is_broken"]

_LOST: Final = (
    asyncpg.PostgresConnectionError,  # SQLSTATE class 08, and "connection was closed
    # in the middle of operation" (ConnectionDoesNotExistError)
    asyncpg.AdminShutdownError,
    asyncpg.CrashShutdownError,
    asyncpg.CannotConnectNowError,
    # asyncpg's protocol lost track of the connection's state (an unsolicited FATAL from
    # the server in the middle of a request, say): it cannot be trusted again.
    asyncpg.InternalClientError,
    ConnectionError,
)


_IN_FLIGHT: Final = frozenset({asyncio.Future, asyncio.TimerHandle})
"""What asyncpg's protocol holds only while a request is in flight: the future made by
``loop.create_future()`` (an ``asyncio.Future`` on asyncio's loops and uvloop alike) and
its timeout's timer. Exact types, not ``isinstance``: cheaper, and nothing else is meant."""


def is_broken(error: BaseException) -> bool:
    """Whether ``error`` says the connection it came from is lost.

    A connection-class error (SQLSTATE ``08``, which includes asyncpg's "connection was
    closed in the middle of operation"), a server shutdown (``57P01``-``57P03``), asyncpg's
    ``InternalClientError`` (its protocol lost track of the connection), or the socket's
    own ``ConnectionError``. A query timeout or cancellation is not: asyncpg
    cancels the query and the connection stays usable (returning it waits for that).
    """
    return isinstance(error, _LOST)


class ConnectionStateUnknown(asyncpg.InterfaceError):  # type: ignore[misc]
    """A connection came back closed, or in a state tether cannot inspect."""


def async_pool(
    dsn: str,
    *,
    connect_timeout: float,
    pgbouncer: bool,
    configure: Callable[[Any], object] | None,
    connect_args: Mapping[str, object] | None,
    description: str,
    options: PoolOptions,
) -> AsyncPool[Any]:
    """An :class:`tether.AsyncPool` of asyncpg connections (see
    :func:`tether.postgres.async_pool`)."""
    connect_options: dict[str, Any] = {"timeout": connect_timeout}
    if pgbouncer:
        # Named prepared statements do not survive transaction pooling; with no cache,
        # asyncpg uses unnamed ones.
        connect_options["statement_cache_size"] = 0
    connect_options.update(connect_args or {})
    server_timeout = connect_timeout

    async def create() -> Any:
        try:
            conn = await asyncpg.connect(dsn, **connect_options)
        except (OSError, TimeoutError) as error:
            # Socket errors do not say where they were going ("Name or service not known").
            error.add_note(f"(connecting to {description})")
            raise
        if configure is not None:
            try:
                configured = configure(conn)
                if inspect.isawaitable(configured):
                    await configured
            except BaseException:
                conn.terminate()
                raise
        return conn

    async def check(conn: Any) -> bool:
        if conn.is_closed():
            return False
        await conn.execute("SELECT 1", timeout=server_timeout)
        return True

    def reset(conn: Any) -> Awaitable[None] | None:
        if conn.is_closed():
            raise ConnectionStateUnknown("connection returned closed: it cannot be reused")
        try:
            protocol = conn._protocol
            cancelling = protocol._is_cancelling()
            block = conn._top_xact
        except AttributeError:
            raise ConnectionStateUnknown(
                "this asyncpg cannot tell whether a cancelled query is still running, "
                "or whether a transaction block is still open"
            ) from None
        if cancelling:  # the cancelled request has no task left waiting for it
            return _settle(conn, server_timeout)
        # conn.is_in_transaction(), less a call; `block`: a transaction() whose BEGIN was
        # interrupted leaves asyncpg believing it is open, server or not.
        if block is not None or protocol.is_in_transaction():
            return _settle(conn, server_timeout)
        return None

    async def destroy(conn: Any) -> None:
        if conn.is_closed():
            conn.terminate()  # frees what asyncpg still holds for it
            return
        try:
            await conn.close(timeout=server_timeout)
        except Exception:  # noqa: BLE001 - asyncpg aborted it: it is gone either way
            conn.terminate()

    def reset_after_error(conn: Any) -> Awaitable[None] | None:
        # The holder's block raised (a cancellation, a timeout): the way a request it
        # started can outlive it, awaited through asyncio.shield() or by a task of its
        # own. Looking for one costs more than the rest of a return, so clean returns
        # do without.
        try:
            protocol = conn._protocol
            idle = conn.is_closed() or protocol._is_cancelling()
            # Set from a statement's preparation to its last row, including the moments
            # between two requests when the protocol itself is idle.
            executing = not idle and conn._stmt_exclusive_section._acquired
        except AttributeError:
            idle, executing = True, False  # reset() says what it cannot tell
        if executing or (not idle and _request_in_flight(protocol)):
            raise _still_running()
        return reset(conn)

    pool = AsyncPool(
        create,
        destroy=destroy,
        check=check,
        reset=reset,
        is_broken=is_broken,
        **options,
    )
    pool._reset_after_error = reset_after_error
    return pool


def _still_running() -> ConnectionStateUnknown:
    return ConnectionStateUnknown(
        "connection returned with a query still running for another task: it cannot be reused"
    )


def _request_in_flight(protocol: object) -> bool:
    """Whether asyncpg's ``protocol`` is waiting for the server on some task's behalf.

    It holds the future that task awaits, and the timer of the request's timeout, from
    the moment it sends the request until the answer is handed over: what it reads itself
    to refuse a second operation. Neither is reachable as an attribute (they are C fields
    of a Cython class), but both are among the objects it holds. A protocol the collector
    does not track is one whose requests cannot be seen this way: its connections are
    never trusted.
    """
    if not gc.is_tracked(protocol):
        raise ConnectionStateUnknown("this asyncpg cannot tell whether a query is still running")
    return not _IN_FLIGHT.isdisjoint(map(type, gc.get_referents(protocol)))


async def _settle(conn: Any, timeout: float) -> None:
    """Wait for a cancelled query to end, then roll back what is left open, on the server
    and in asyncpg's own bookkeeping (as asyncpg's ``Connection.reset()`` does)."""
    async with asyncio.timeout(timeout):
        if conn._protocol._is_cancelling():
            await conn._protocol._wait_for_cancellation()
        conn._top_xact = None  # else the next transaction() would send SAVEPOINT
        if conn.is_in_transaction():
            await conn.execute("ROLLBACK")
