"""SQLite connection pools: tether's embedded default, standard library only.

``tether.sqlite.pool(path)`` is a :class:`tether.Pool` of :class:`sqlite3.Connection`
objects set up for sharing between threads and for :func:`tether.db.transaction`:

* **Any thread.** Connections are opened with ``check_same_thread=False``; the pool makes
  sure that one thread at a time holds each of them.
* **Explicit transactions.** Connections are in autocommit mode (``isolation_level=None``):
  a statement outside a transaction commits by itself, and
  ``with tether.db.transaction(conn):`` runs ``BEGIN`` (or ``BEGIN IMMEDIATE`` /
  ``EXCLUSIVE``, see ``transaction_mode``), ``COMMIT`` or ``ROLLBACK``, and savepoints
  when nested. The sqlite3 module never opens a transaction on its own.
* **WAL** for files: readers do not block the writer, nor the writer the readers. Writers
  wait for each other up to ``busy_timeout`` seconds.
* **Returned clean.** A connection returned with a transaction still open (the block
  raised, or a transaction was begun by hand and not finished) is rolled back; one that
  was closed meanwhile is discarded.

``":memory:"`` is one in-memory database shared by all of the pool's connections, private
to this pool. It lives in SQLite's ``memdb`` VFS (SQLite 3.36+), where writers wait for
each other like on a file; on an older SQLite it falls back to a shared-cache database,
where a writer that finds the database locked fails at once instead of waiting. The pool
keeps one extra connection open outside its count, so the database outlives moments when
every pooled connection has been closed (``max_idle``, ``max_lifetime``); that connection is
closed with the last pooled one after the pool closes.

There is no async SQLite pool: sqlite3 calls block, so async code is better served by
running its database work in a thread, with this pool.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import uuid
import weakref
from collections.abc import Callable
from typing import Final, Literal, Unpack, final

from ._pool import Pool
from ._pool_core import non_negative
from ._pool_options import PoolOptions, pool_options

__all__ = ["pool"]

TransactionMode = Literal["DEFERRED", "IMMEDIATE", "EXCLUSIVE"]
_MODES: Final = ("DEFERRED", "IMMEDIATE", "EXCLUSIVE")
_MEMDB: Final = sqlite3.sqlite_version_info >= (3, 36, 0)
"""Whether this SQLite has the ``memdb`` VFS, where in-memory databases can be shared
between connections with normal locking (and so honour the busy timeout)."""


@final
class _PooledConnection(sqlite3.Connection):
    """A connection of a :func:`pool`: it remembers how its transactions begin."""

    tether_begin: str = "BEGIN"
    """The statement :func:`tether.db.transaction` begins a transaction with."""


def _reset(conn: sqlite3.Connection) -> None:
    # Raises on a connection closed while it was held: the pool then discards it.
    if conn.in_transaction:
        conn.rollback()


@final
class _Connector:
    """Opens and closes the connections of one pool (and the keeper of ``:memory:``)."""

    def __init__(
        self,
        database: str,
        *,
        uri: bool,
        memory: bool,
        busy_timeout: float,
        begin: str,
        wal: bool,
        configure: Callable[[sqlite3.Connection], object] | None,
    ) -> None:
        self._database = database
        self._uri = uri
        self._busy_timeout = busy_timeout
        self._begin = begin
        self._wal = wal and not memory
        self._configure = configure
        self._memory = memory
        self._lock = threading.Lock()
        self._live = 0
        self._keeper: _PooledConnection | None = None
        self._pool: weakref.ref[Pool[sqlite3.Connection]] | None = None

    def bind(self, pool: Pool[sqlite3.Connection]) -> None:
        """Remember the pool these connections belong to (to know when it has closed)."""
        self._pool = weakref.ref(pool)
        if self._memory:
            # Collected unclosed: the keeper goes with it, so the memory is freed.
            weakref.finalize(pool, _close_keeper, self)

    def _connect(self) -> _PooledConnection:
        conn = sqlite3.connect(
            self._database,
            timeout=self._busy_timeout,
            isolation_level=None,
            check_same_thread=False,
            uri=self._uri,
            factory=_PooledConnection,
        )
        assert isinstance(conn, _PooledConnection)
        return conn

    def create(self) -> sqlite3.Connection:
        """Open and set up one connection."""
        if self._memory:
            with self._lock:
                if self._keeper is None:
                    self._keeper = self._connect()
        conn = self._connect()
        try:
            conn.tether_begin = self._begin
            if self._wal:
                conn.execute("PRAGMA journal_mode=WAL")
            if self._configure is not None:
                self._configure(conn)
        except BaseException:
            conn.close()
            raise
        with self._lock:
            self._live += 1
        return conn

    def destroy(self, conn: sqlite3.Connection) -> None:
        """Close one connection; after the pool closed, the last one takes the keeper."""
        try:
            conn.close()
        finally:
            with self._lock:
                self._live -= 1
                last = self._live == 0
            pool = None if self._pool is None else self._pool()
            if last and (pool is None or pool.closed):
                _close_keeper(self)


def _close_keeper(connector: _Connector) -> None:
    with connector._lock:
        keeper, connector._keeper = connector._keeper, None
    if keeper is not None:
        keeper.close()


def pool(
    path: str | os.PathLike[str],
    *,
    busy_timeout: float = 5.0,
    transaction_mode: TransactionMode = "DEFERRED",
    wal: bool = True,
    configure: Callable[[sqlite3.Connection], object] | None = None,
    **pool_options_: Unpack[PoolOptions],
) -> Pool[sqlite3.Connection]:
    """A thread-safe pool of connections to the SQLite database at ``path``.

    Open it with ``with`` (or ``open()``), borrow with ``pool.acquire()``, and run
    transactions with ``tether.db.transaction(conn)`` or, in one block,
    ``tether.db.transaction(pool)``.

    Args:
        path: the database file, ``":memory:"`` for an in-memory database shared by the
            pool's connections, or a ``file:`` URI (passed to SQLite as such).
        busy_timeout: seconds a connection waits for another one's write lock before
            failing with ``sqlite3.OperationalError: database is locked``.
        transaction_mode: how :func:`tether.db.transaction` begins on these connections:
            ``"DEFERRED"`` (SQLite's default: the write lock is taken at the first
            write), ``"IMMEDIATE"`` (taken at once, so a transaction that reads and then
            writes cannot fail on a lock it could not upgrade) or ``"EXCLUSIVE"``.
        wal: switch a database file to write-ahead logging (it stays so); pass ``False``
            for a read-only database, or to keep another journal mode.
        configure: called with each new connection before it is used (pragmas, custom
            functions, a row factory).
        **pool_options_: options of :class:`tether.Pool` (``max_size``, ``acquire_timeout``,
            ``max_idle``, ...). The name defaults to ``"sqlite <path>"``.

    Returns:
        The pool, not yet open.

    Raises:
        TypeError: ``path`` is not a string or path, or an option is unknown.
        ValueError: an option is out of range.
    """
    pool_options(f"{__name__}.pool", pool_options_)
    database = os.fspath(path) if isinstance(path, str | os.PathLike) else None
    if not isinstance(database, str):
        raise TypeError(f"path must be a str or os.PathLike[str], not {type(path).__name__}")
    if database == "":
        raise ValueError(
            "path must not be empty: SQLite would give every connection a private "
            "temporary database"
        )
    busy_timeout = non_negative("busy_timeout", busy_timeout)
    if transaction_mode not in _MODES:
        raise ValueError(
            f"transaction_mode must be one of {', '.join(_MODES)}, got {transaction_mode!r}"
        )
    if configure is not None and not callable(configure):
        raise TypeError(f"configure must be callable, got {configure!r}")
    memory = database == ":memory:"
    uri = memory or database.startswith("file:")
    if memory:
        # Unique per pool: two pools never share an in-memory database by accident.
        token = uuid.uuid4().hex
        database = (
            f"file:/tether-{token}?vfs=memdb"
            if _MEMDB
            else f"file:tether-{token}?mode=memory&cache=shared"
        )
    connector = _Connector(
        database,
        uri=uri,
        memory=memory,
        busy_timeout=busy_timeout,
        begin="BEGIN" if transaction_mode == "DEFERRED" else f"BEGIN {transaction_mode}",
        wal=wal,
        configure=configure,
    )
    if pool_options_.get("name") is None:
        pool_options_["name"] = f"sqlite {os.fspath(path)}"
    result: Pool[sqlite3.Connection] = Pool(
        connector.create, destroy=connector.destroy, reset=_reset, **pool_options_
    )
    connector.bind(result)
    return result
