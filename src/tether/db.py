"""Database transactions that end the same way on every path: ``tether.db.transaction``.

::

    with tether.db.transaction(conn):            # sqlite3, psycopg
        with tether.db.transaction(conn): ...    # nested: a savepoint
    async with tether.db.transaction(conn): ...  # asyncpg, psycopg's AsyncConnection
    with tether.db.transaction(pool) as conn: ...        # acquire + transaction, one block
    async with tether.db.transaction(async_pool) as conn: ...

The block commits when it succeeds and rolls back when it raises anything at all:
an exception, ``KeyboardInterrupt``, or a cancellation (the rollback of an async
transaction runs shielded from the cancellation, which is delivered once it is done). A
commit that fails raises its error, after rolling back whatever the database left open;
so does a ``BEGIN`` that fails or is interrupted (a cancellation, ``KeyboardInterrupt``)
after the server began the transaction. When the rollback itself fails, the block's own
error still propagates, carrying the rollback's error the way a :class:`~tether.Scope`
attaches a failed cleanup (a note, and :func:`tether.cleanup_errors`). A cancellation
that arrives while the rollback runs after such an error is not lost either: the error
propagates, and the task is cancelled at its next await.

Nesting: a ``transaction()`` entered while the connection is already in a transaction
(one of tether's, or one the caller began) is a savepoint: ``SAVEPOINT``, then ``RELEASE
SAVEPOINT`` on success or ``ROLLBACK TO SAVEPOINT`` on error. The outer transaction
decides the final outcome.

What each driver gets:

* **sqlite3**: ``BEGIN`` (``BEGIN IMMEDIATE`` or ``EXCLUSIVE`` for connections of a
  :func:`tether.sqlite.pool` made with that ``transaction_mode``), ``COMMIT``,
  ``ROLLBACK``. Connections opened by :func:`sqlite3.connect` with the default (legacy)
  ``isolation_level`` work too: the explicit ``BEGIN`` keeps the module from opening its
  own transaction, so the block holds exactly the statements run inside it. If such a
  connection already has a transaction open (an earlier ``INSERT`` not yet committed),
  the block becomes a savepoint inside it and committing that transaction stays the
  caller's job. On Python 3.12+ with ``autocommit=False`` a transaction is always open:
  the outermost block commits or rolls back through ``commit()`` / ``rollback()``.
* **psycopg** (``Connection`` and ``AsyncConnection``): ``BEGIN`` on autocommit
  connections (the ones tether's pools make); without autocommit psycopg begins by
  itself at the first statement. ``commit()`` / ``rollback()`` end it.
* **asyncpg**: ``BEGIN`` / ``COMMIT`` / ``ROLLBACK``.

On PostgreSQL a statement that fails inside a transaction aborts it. If the block caught
that error and went on to finish normally, the database can only roll back: the commit
raises :class:`~tether.TransactionAborted` instead of pretending to succeed.
"""

from __future__ import annotations

import sqlite3
import sys
from types import TracebackType
from typing import TYPE_CHECKING, Any, Final, Generic, NoReturn, Protocol, TypeVar, final, overload

from ._async_pool import AsyncPool
from ._async_pool import _AcquireAt as _AsyncAcquire
from ._exceptions import TransactionAborted
from ._pool import Pool
from ._pool import _Acquire as _SyncAcquire
from ._pool_base import DEFAULT
from ._scope import _attach
from ._sites import user_code

if TYPE_CHECKING:
    import psycopg
    from psycopg.rows import Row

__all__ = ["AsyncTransaction", "Transaction", "transaction"]

C = TypeVar("C")

_SCOPE: Final = "transaction()"

# Connections inside a transaction() block, by id(), with the connection itself (held so
# that its id cannot be reused while the entry exists) and how many blocks are open on it.
# A dict rather than an attribute: sqlite3 and asyncpg connections take no new attributes.
_open: dict[int, tuple[object, int]] = {}


def _enter(conn: object) -> int:
    """Count one more block on ``conn``; return how many were open before."""
    entry = _open.get(id(conn))
    depth = 0 if entry is None else entry[1]
    _open[id(conn)] = (conn, depth + 1)
    return depth


def _leave(conn: object, depth: int) -> None:
    """The block entered at ``depth`` is over."""
    if depth == 0:
        _open.pop(id(conn), None)
    else:
        _open[id(conn)] = (conn, depth)


def _savepoint(depth: int) -> str:
    return f"tether_savepoint_{depth}"


# ---------------------------------------------------------------------------- drivers


class _SyncDriver(Protocol):
    """How to run a transaction on one kind of synchronous connection."""

    def in_transaction(self, conn: Any) -> bool: ...
    def begin(self, conn: Any) -> None: ...
    def begun(self, conn: Any) -> bool:
        """After a ``BEGIN`` that raised: whether it began the transaction all the same."""

    def commit(self, conn: Any) -> None: ...
    def rollback(self, conn: Any) -> None: ...
    def execute(self, conn: Any, statement: str) -> None: ...


class _AsyncDriver(Protocol):
    """How to run a transaction on one kind of asynchronous connection."""

    def in_transaction(self, conn: Any) -> bool: ...
    async def begin(self, conn: Any) -> None: ...
    async def begun(self, conn: Any) -> bool:
        """After a ``BEGIN`` that raised: whether it began the transaction all the same."""

    async def commit(self, conn: Any) -> None: ...
    async def rollback(self, conn: Any) -> None: ...
    async def execute(self, conn: Any, statement: str) -> None: ...


@final
class _Sqlite:
    """sqlite3, whatever the connection's transaction control mode."""

    @staticmethod
    def _pep249(conn: sqlite3.Connection) -> bool:
        # Python 3.12+ with autocommit=False: the module keeps a transaction open at all
        # times and commit()/rollback() open the next one.
        return getattr(conn, "autocommit", None) is False

    def in_transaction(self, conn: sqlite3.Connection) -> bool:
        return conn.in_transaction and not self._pep249(conn)

    def begin(self, conn: sqlite3.Connection) -> None:
        if not self._pep249(conn):
            conn.execute(getattr(conn, "tether_begin", "BEGIN"))

    def begun(self, conn: sqlite3.Connection) -> bool:
        # sqlite3 runs a statement to its end before a KeyboardInterrupt is raised, and
        # the connection knows how it ended.
        return self.in_transaction(conn)

    def commit(self, conn: sqlite3.Connection) -> None:
        if self._pep249(conn):
            conn.commit()
        else:
            conn.execute("COMMIT")

    def rollback(self, conn: sqlite3.Connection) -> None:
        if self._pep249(conn):
            conn.rollback()
        elif conn.in_transaction:
            conn.execute("ROLLBACK")

    def execute(self, conn: sqlite3.Connection, statement: str) -> None:
        conn.execute(statement)


def _psycopg_status(conn: Any) -> int:
    status: int = conn.pgconn.transaction_status
    return status


# libpq's PGTransactionStatusType values (psycopg.pq.TransactionStatus); plain ints so
# that this module does not import psycopg.
_IDLE: Final = 0
_INTRANS: Final = 2
_INERROR: Final = 3


def _psycopg_begun(conn: Any) -> bool:
    # psycopg lets a BEGIN that is interrupted (KeyboardInterrupt, a cancellation) finish
    # before it raises. Not merely "not idle": a lost connection's status is UNKNOWN, and
    # the server rolls back a session it lost by itself.
    return _psycopg_status(conn) in (_INTRANS, _INERROR)


@final
class _Psycopg:
    """psycopg 3 ``Connection``."""

    def in_transaction(self, conn: psycopg.Connection[Any]) -> bool:
        return _psycopg_status(conn) != _IDLE

    def begin(self, conn: psycopg.Connection[Any]) -> None:
        if conn.autocommit:
            conn.execute("BEGIN")

    def begun(self, conn: psycopg.Connection[Any]) -> bool:
        return _psycopg_begun(conn)

    def commit(self, conn: psycopg.Connection[Any]) -> None:
        if _psycopg_status(conn) == _INERROR:
            conn.rollback()
            raise _aborted()
        conn.commit()

    def rollback(self, conn: psycopg.Connection[Any]) -> None:
        conn.rollback()

    def execute(self, conn: psycopg.Connection[Any], statement: str) -> None:
        # As bytes: psycopg types a query built at run time (a savepoint's name) that way.
        conn.execute(statement.encode())


@final
class _AsyncPsycopg:
    """psycopg 3 ``AsyncConnection``."""

    def in_transaction(self, conn: psycopg.AsyncConnection[Any]) -> bool:
        return _psycopg_status(conn) != _IDLE

    async def begin(self, conn: psycopg.AsyncConnection[Any]) -> None:
        if conn.autocommit:
            await conn.execute("BEGIN")

    async def begun(self, conn: psycopg.AsyncConnection[Any]) -> bool:
        return _psycopg_begun(conn)

    async def commit(self, conn: psycopg.AsyncConnection[Any]) -> None:
        if _psycopg_status(conn) == _INERROR:
            await conn.rollback()
            raise _aborted()
        await conn.commit()

    async def rollback(self, conn: psycopg.AsyncConnection[Any]) -> None:
        await conn.rollback()

    async def execute(self, conn: psycopg.AsyncConnection[Any], statement: str) -> None:
        await conn.execute(statement.encode())  # as bytes: see _Psycopg.execute


@final
class _Asyncpg:
    """asyncpg ``Connection`` (or the proxy an asyncpg pool hands out)."""

    def in_transaction(self, conn: Any) -> bool:
        return bool(conn.is_in_transaction())

    async def begin(self, conn: Any) -> None:
        await conn.execute("BEGIN")

    async def begun(self, conn: Any) -> bool:
        # A cancelled BEGIN goes on in the background: asyncpg asks the server to cancel
        # it and only learns whether it began a transaction when the server answers. Wait
        # for that, as the pool's reset does (asyncpg has no public way to).
        try:
            protocol = conn._protocol
            cancelling = protocol._is_cancelling()
        except AttributeError:
            # An asyncpg that cannot say: assume the worst. ROLLBACK waits for the
            # cancellation, and outside a transaction it merely draws a server warning.
            return True
        if cancelling:
            await protocol._wait_for_cancellation()
        return bool(conn.is_in_transaction())

    async def commit(self, conn: Any) -> None:
        # COMMIT of an aborted transaction "succeeds" with the tag ROLLBACK.
        if await conn.execute("COMMIT") == "ROLLBACK":
            raise _aborted()

    async def rollback(self, conn: Any) -> None:
        await conn.execute("ROLLBACK")

    async def execute(self, conn: Any, statement: str) -> None:
        await conn.execute(statement)


def _aborted() -> TransactionAborted:
    return TransactionAborted(
        "the transaction was rolled back, not committed: a statement in it failed, which "
        "aborted it (the block caught that error and carried on)"
    )


_SQLITE: Final = _Sqlite()
_PSYCOPG: Final = _Psycopg()
_ASYNC_PSYCOPG: Final = _AsyncPsycopg()
_ASYNCPG: Final = _Asyncpg()


def _sync_driver(conn: object) -> _SyncDriver | None:
    if isinstance(conn, sqlite3.Connection):
        return _SQLITE
    # A connection of a driver that was never imported cannot exist: no import here.
    psycopg = sys.modules.get("psycopg")
    if psycopg is not None and isinstance(conn, psycopg.Connection):
        return _PSYCOPG
    return None


def _async_driver(conn: object) -> _AsyncDriver | None:
    psycopg = sys.modules.get("psycopg")
    if psycopg is not None and isinstance(conn, psycopg.AsyncConnection):
        return _ASYNC_PSYCOPG
    asyncpg = sys.modules.get("asyncpg")
    if asyncpg is not None and isinstance(
        conn, asyncpg.Connection | asyncpg.pool.PoolConnectionProxy
    ):
        return _ASYNCPG
    return None


def _unsupported(conn: object) -> TypeError:
    return TypeError(
        "transaction() needs a sqlite3, psycopg or asyncpg connection, or a tether pool of "
        f"them; got {type(conn).__module__}.{type(conn).__qualname__}"
    )


# ---------------------------------------------------------------------------- the API


@overload
def transaction(conn: Pool[C], /) -> Transaction[C]: ...
@overload
def transaction(conn: AsyncPool[C], /) -> AsyncTransaction[C]: ...
@overload
def transaction(conn: sqlite3.Connection, /) -> Transaction[sqlite3.Connection]: ...
@overload
def transaction(conn: psycopg.Connection[Row], /) -> Transaction[psycopg.Connection[Row]]: ...
@overload
def transaction(
    conn: psycopg.AsyncConnection[Row], /
) -> AsyncTransaction[psycopg.AsyncConnection[Row]]: ...
def transaction(conn: object, /) -> Transaction[Any] | AsyncTransaction[Any]:
    """A transaction on ``conn``: commit on success, roll back on any exception.

    Use ``with`` for sqlite3 and psycopg ``Connection`` objects and for a
    :class:`~tether.Pool`; ``async with`` for asyncpg connections, psycopg
    ``AsyncConnection`` objects and an :class:`~tether.AsyncPool`. Given a pool, the block
    acquires a connection, runs the transaction on it and returns it to the pool; the
    pool's holder diagnostics name the line of this call.

    Args:
        conn: the connection, or a pool of connections.

    Returns:
        A context manager whose value is the connection.

    Raises:
        TypeError: ``conn`` is neither a supported connection nor a tether pool (and,
            when the block starts, the wrong form of ``with`` was used).
    """
    if isinstance(conn, Pool):
        code, offset = user_code(1)
        return Transaction(None, None, _SyncAcquire(conn, DEFAULT, code, offset))
    if isinstance(conn, AsyncPool):
        code, offset = user_code(1)
        return AsyncTransaction(None, None, _AsyncAcquire(conn, DEFAULT, code, offset))
    sync_driver = _sync_driver(conn)
    if sync_driver is not None:
        return Transaction(conn, sync_driver, None)
    async_driver = _async_driver(conn)
    if async_driver is not None:
        return AsyncTransaction(conn, async_driver, None)
    raise _unsupported(conn)


def _label(savepoint: str | None) -> str:
    """Name the rollback that failed, for the note attached to the block's error."""
    return "'ROLLBACK'" if savepoint is None else f"'ROLLBACK TO SAVEPOINT {savepoint}'"


def _reenter() -> RuntimeError:
    return RuntimeError("a transaction() context manager can be entered only once")


@final
class Transaction(Generic[C]):
    """A synchronous transaction block (what :func:`transaction` returns for sync use).

    Its value is the connection. Enter it once, with ``with``.
    """

    __slots__ = ("_acquire", "_conn", "_depth", "_driver", "_savepoint", "_state")

    def __init__(
        self,
        conn: C | None,
        driver: _SyncDriver | None,
        acquire: _SyncAcquire[C] | None,
    ) -> None:
        self._conn = conn
        self._driver = driver
        self._acquire = acquire
        self._savepoint: str | None = None
        self._depth = 0
        self._state = 0  # 0 new, 1 entered, 2 done

    def __enter__(self) -> C:
        if self._state:
            raise _reenter()
        self._state = 1
        acquire = self._acquire
        if acquire is None:
            conn = self._conn
            assert conn is not None
            self._begin(conn)
            return conn
        conn = acquire.__enter__()
        self._driver = _sync_driver(conn)
        if self._driver is None:
            acquire.__exit__(None, None, None)
            raise _unsupported(conn)
        self._conn = conn
        try:
            self._begin(conn)
        except BaseException as error:
            acquire.__exit__(type(error), error, error.__traceback__)
            raise
        return conn

    def _begin(self, conn: C) -> None:
        driver = self._driver
        assert driver is not None
        depth = self._depth = _enter(conn)
        began = False
        try:
            if depth == 0 and not driver.in_transaction(conn):
                began = True
                driver.begin(conn)
            else:
                self._savepoint = _savepoint(depth)
                driver.execute(conn, f"SAVEPOINT {self._savepoint}")
        except BaseException as error:
            # A BEGIN interrupted by KeyboardInterrupt may have begun the transaction all
            # the same: left open, it would swallow the connection's next statements, and
            # the next block on it would take it for the caller's and only make a savepoint.
            if began and driver.begun(conn):
                self._undo(conn, error)
            _leave(conn, depth)
            raise

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        conn = self._conn
        assert conn is not None, "__exit__ without __enter__"
        self._state = 2
        acquire = self._acquire
        try:
            if exc is None:
                self._finish(conn)
            else:
                self._undo(conn, exc)
        except BaseException as error:
            _leave(conn, self._depth)
            if acquire is not None:
                acquire.__exit__(type(error), error, error.__traceback__)
            raise
        _leave(conn, self._depth)
        if acquire is not None:
            acquire.__exit__(exc_type, exc, tb)

    def _finish(self, conn: C) -> None:
        """The block succeeded: commit (or release the savepoint)."""
        driver = self._driver
        assert driver is not None
        savepoint = self._savepoint
        try:
            if savepoint is None:
                driver.commit(conn)
            else:
                driver.execute(conn, f"RELEASE SAVEPOINT {savepoint}")
        except BaseException as error:
            # Whatever the failed commit left open must not outlive the block.
            if savepoint is not None or driver.in_transaction(conn):
                self._undo(conn, error)
            raise

    def _undo(self, conn: C, error: BaseException) -> None:
        """Roll back after ``error``; a failure of the rollback is attached to ``error``."""
        driver = self._driver
        assert driver is not None
        savepoint = self._savepoint
        try:
            if savepoint is None:
                driver.rollback(conn)
            else:
                driver.execute(conn, f"ROLLBACK TO SAVEPOINT {savepoint}")
                driver.execute(conn, f"RELEASE SAVEPOINT {savepoint}")
        except BaseException as failure:  # noqa: BLE001 - the block's own error wins
            _attach(error, [(_label(savepoint), failure)], _SCOPE)

    async def __aenter__(self) -> NoReturn:
        raise TypeError(
            "this transaction is synchronous (sqlite3, psycopg Connection, or a tether Pool): "
            "use `with tether.db.transaction(...)`, not `async with`"
        )

    async def __aexit__(self, *exc_info: object) -> None:  # pragma: no cover - never entered
        return None


@final
class AsyncTransaction(Generic[C]):
    """An asynchronous transaction block (what :func:`transaction` returns for async use).

    Its value is the connection. Enter it once, with ``async with``. The rollback runs
    shielded from cancellation; a cancellation that arrives meanwhile reaches the task
    afterwards, even when the block's own error is what propagates.
    """

    __slots__ = ("_acquire", "_cancelled", "_conn", "_depth", "_driver", "_savepoint", "_state")

    def __init__(
        self,
        conn: C | None,
        driver: _AsyncDriver | None,
        acquire: _AsyncAcquire[C] | None,
    ) -> None:
        self._conn = conn
        self._driver = driver
        self._acquire = acquire
        self._savepoint: str | None = None
        self._depth = 0
        self._state = 0
        # A plain asyncio cancellation reached the task while a rollback ran shielded.
        self._cancelled = False

    async def __aenter__(self) -> C:
        if self._state:
            raise _reenter()
        self._state = 1
        acquire = self._acquire
        if acquire is None:
            conn = self._conn
            assert conn is not None
        else:
            conn = await acquire.__aenter__()
            self._driver = _async_driver(conn)
            if self._driver is None:
                await acquire.__aexit__(None, None, None)
                raise _unsupported(conn)
            self._conn = conn
        try:
            await self._begin(conn)
        except BaseException as error:
            if acquire is not None:
                await acquire.__aexit__(type(error), error, error.__traceback__)
            self._pass_on_cancellation(error)
            raise
        return conn

    async def _begin(self, conn: C) -> None:
        driver = self._driver
        assert driver is not None
        depth = self._depth = _enter(conn)
        began = False
        try:
            if depth == 0 and not driver.in_transaction(conn):
                began = True
                await driver.begin(conn)
            else:
                self._savepoint = _savepoint(depth)
                await driver.execute(conn, f"SAVEPOINT {self._savepoint}")
        except BaseException as error:
            # Both drivers let a cancelled BEGIN finish on the server: the transaction it
            # began must not outlive the block (see Transaction._begin).
            if began:
                await self._undo(conn, error, begun=True)
            _leave(conn, depth)
            raise

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        conn = self._conn
        assert conn is not None, "__exit__ without __enter__"
        self._state = 2
        acquire = self._acquire
        try:
            if exc is None:
                await self._finish(conn)
            else:
                await self._undo(conn, exc)
        except BaseException as error:
            _leave(conn, self._depth)
            if acquire is not None:
                await acquire.__aexit__(type(error), error, error.__traceback__)
            self._pass_on_cancellation(error)
            raise
        _leave(conn, self._depth)
        if acquire is not None:
            await acquire.__aexit__(exc_type, exc, tb)
        if exc is not None:
            self._pass_on_cancellation(exc)

    async def _finish(self, conn: C) -> None:
        driver = self._driver
        assert driver is not None
        savepoint = self._savepoint
        try:
            if savepoint is None:
                await driver.commit(conn)
            else:
                await driver.execute(conn, f"RELEASE SAVEPOINT {savepoint}")
        except BaseException as error:
            if savepoint is not None or driver.in_transaction(conn):
                await self._undo(conn, error)
            raise

    async def _undo(self, conn: C, error: BaseException, *, begun: bool = False) -> None:
        """Roll back after ``error``, shielded from cancellation; a failure of the
        rollback is attached to ``error``, which propagates in any case.

        With ``begun``, ``error`` came from ``BEGIN``: roll back only if the driver says
        that it began the transaction all the same.
        """
        from ._aio import run_shielded_outcome  # noqa: PLC0415 - async callers only

        driver = self._driver
        cleanup = (
            _rollback_begun(driver, conn) if begun else _rollback(driver, conn, self._savepoint)
        )
        outcome = await run_shielded_outcome(cleanup)
        if outcome.error is not None:
            _attach(error, [(_label(self._savepoint), outcome.error)], _SCOPE)
        # A cancellation that arrived meanwhile is passed on once the block is over (its
        # connection back in its pool, if it came from one): see _pass_on_cancellation.
        self._cancelled = self._cancelled or outcome.cancelled

    def _pass_on_cancellation(self, error: BaseException) -> None:
        """``error`` wins over a cancellation that arrived while a rollback ran, but the
        task must still get it: at its next await, when ``error`` has left the block."""
        if self._cancelled:
            from ._aio import redeliver_cancellation  # noqa: PLC0415 - async callers only

            redeliver_cancellation(error)

    def __enter__(self) -> NoReturn:
        raise TypeError(
            "this transaction is asynchronous (asyncpg, psycopg AsyncConnection, or a tether "
            "AsyncPool): use `async with tether.db.transaction(...)`, not `with`"
        )

    def __exit__(self, *exc_info: object) -> None:  # pragma: no cover - never entered
        return None


async def _rollback(driver: _AsyncDriver | None, conn: object, savepoint: str | None) -> None:
    assert driver is not None
    if savepoint is None:
        await driver.rollback(conn)
    else:
        await driver.execute(conn, f"ROLLBACK TO SAVEPOINT {savepoint}")
        await driver.execute(conn, f"RELEASE SAVEPOINT {savepoint}")


async def _rollback_begun(driver: _AsyncDriver | None, conn: object) -> None:
    """Roll back what a ``BEGIN`` that raised began all the same, if anything."""
    assert driver is not None
    if await driver.begun(conn):
        await driver.rollback(conn)
