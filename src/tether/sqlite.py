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
  was closed meanwhile is discarded. The cursors and blobs made on it that are still
  open are closed, so read what you need before giving it back: a query not read to the
  end keeps SQLite's read transaction open even in autocommit mode, and with it an old
  view of the database that the next holder would see (an open writable blob keeps the
  write lock).

``":memory:"`` is one in-memory database shared by all of the pool's connections, private
to this pool. It lives in SQLite's ``memdb`` VFS (SQLite 3.36+), where writers wait for
each other like on a file; on an older SQLite it falls back to a shared-cache database,
where a writer that finds the database locked fails at once instead of waiting. The pool
keeps one extra connection open outside its count, so the database outlives moments when
every pooled connection has been closed (``max_idle``, ``max_lifetime``); that connection is
closed when the pool closes, and the database is freed once the connections still held
then have been returned.

There is no async SQLite pool: sqlite3 calls block, so async code is better served by
running its database work in a thread, with this pool.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import uuid
import weakref
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, Final, Literal, TypeVar, Unpack, cast, final, overload

from ._pool import Pool
from ._pool_core import non_negative
from ._pool_options import PoolOptions, pool_options

if TYPE_CHECKING:
    from sqlite3 import _Parameters  # typeshed's name for what execute() binds

__all__ = ["pool"]

TransactionMode = Literal["DEFERRED", "IMMEDIATE", "EXCLUSIVE"]
_MODES: Final = ("DEFERRED", "IMMEDIATE", "EXCLUSIVE")
_MEMDB: Final = sqlite3.sqlite_version_info >= (3, 36, 0)
"""Whether this SQLite has the ``memdb`` VFS, where in-memory databases can be shared
between connections with normal locking (and so honour the busy timeout)."""

_CursorT = TypeVar("_CursorT", bound=sqlite3.Cursor)
_new_cursor: Final = sqlite3.Connection.cursor
_ref: Final = weakref.ref
_PRUNE_AT: Final = 64
"""How many cursors a connection remembers before it forgets the collected ones."""


@final
class _PooledConnection(sqlite3.Connection):
    """A connection of a :func:`pool`: it remembers how its transactions begin, and the
    cursors and blobs it made, so that its return can close those left open.

    A query not read to the end keeps SQLite's read transaction open, even in autocommit
    mode where ``in_transaction`` is false: the connection's next borrower would see the
    database as it was then, and its first write would fail at once with "database is
    locked" (an open writable blob even keeps the write lock). ``BEGIN; ROLLBACK`` does not
    end it; only resetting the statement does, which Python does when the cursor is
    closed. ``Connection.execute`` makes its cursor without calling :meth:`cursor`, hence
    the overrides. They keep weak references: a cursor nobody holds is collected (and
    its statement reset) as usual, and the references to those are pruned as they pile
    up.
    """

    # Read on every statement, hence slots (faster than the instance dictionary). The
    # dictionary and weak references stay: tether_begin, or what ``configure`` sets.
    __slots__ = ("__dict__", "__weakref__", "_opened", "_prune_at")

    tether_begin: str = "BEGIN"
    """The statement :func:`tether.db.transaction` begins a transaction with."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._opened: list[weakref.ref[sqlite3.Cursor | sqlite3.Blob]] = []
        self._prune_at = _PRUNE_AT

    @overload
    def cursor(self, factory: None = None) -> sqlite3.Cursor: ...
    @overload
    def cursor(self, factory: Callable[[sqlite3.Connection], _CursorT]) -> _CursorT: ...
    def cursor(
        self, factory: Callable[[sqlite3.Connection], sqlite3.Cursor] | None = None
    ) -> sqlite3.Cursor:
        """A cursor, closed when the connection returns to the pool."""
        cursor = _new_cursor(self) if factory is None else _new_cursor(self, factory)
        self._remember(cursor)
        return cursor

    def execute(self, sql: str, parameters: _Parameters = (), /) -> sqlite3.Cursor:
        """``Connection.execute``, on a cursor closed when the connection returns."""
        cursor = _new_cursor(self)
        # Inlined _remember(): this is every statement's path.
        opened = self._opened
        opened.append(_ref(cursor))
        if len(opened) > self._prune_at:
            self._prune()
        return cursor.execute(sql, parameters)

    def executemany(self, sql: str, parameters: Iterable[_Parameters], /) -> sqlite3.Cursor:
        """``Connection.executemany``, on a cursor closed when the connection returns."""
        cursor = _new_cursor(self)
        self._remember(cursor)
        return cursor.executemany(sql, parameters)

    # executescript() needs no override: it runs every statement to its end.

    def blobopen(
        self, table: str, column: str, row: int, /, *, readonly: bool = False, name: str = "main"
    ) -> sqlite3.Blob:
        """``Connection.blobopen``, on a blob closed when the connection returns."""
        blob = super().blobopen(table, column, row, readonly=readonly, name=name)
        self._remember(blob)
        return blob

    def _remember(self, opened: sqlite3.Cursor | sqlite3.Blob) -> None:
        self._opened.append(_ref(opened))
        if len(self._opened) > self._prune_at:
            self._prune()

    def _prune(self) -> None:
        """Forget the collected cursors; the next pruning comes when the list has doubled,
        so that a holder keeping many cursors open does not make each statement slower."""
        self._opened = [ref for ref in self._opened if ref() is not None]
        self._prune_at = 2 * len(self._opened) + _PRUNE_AT


def _reset(conn: _PooledConnection) -> None:
    """Make a returned connection clean for its next holder.

    Raises on a connection closed while it was held (or a cursor of it in use in another
    thread): the pool then discards it.
    """
    opened = conn._opened
    if opened:
        # Every cursor still open, read to the end or not: nothing tells them apart.
        for ref in opened:
            cursor_or_blob = ref()
            if cursor_or_blob is not None:
                cursor_or_blob.close()  # resets its statement: the read transaction ends
        opened.clear()
        conn._prune_at = _PRUNE_AT
    if conn.in_transaction:
        conn.rollback()


@final
class _Connector:
    """Opens the connections of one pool, and keeps the keeper of its ``:memory:``."""

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
        self._keeper: _PooledConnection | None = None
        self._released = False
        """Whether the pool has closed (or been collected): no keeper is made any more."""

    def bind(self, pool: Pool[sqlite3.Connection]) -> None:
        """Release the keeper of ``:memory:`` when ``pool`` closes or is collected.

        Connections still held at the close keep the database until they are returned
        and closed.
        """
        if not self._memory:
            return
        pool._on_closed.append(self.release_keeper)
        # Collected unclosed: the keeper goes with it, so the memory is freed.
        weakref.finalize(pool, self.release_keeper)

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
                if self._keeper is None and not self._released:
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
        return conn

    def release_keeper(self) -> None:
        """Close the keeper for good (the pool has closed, or been collected)."""
        with self._lock:
            self._released = True
            keeper, self._keeper = self._keeper, None
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
    ``tether.db.transaction(pool)``. A connection goes back clean: a transaction left
    open is rolled back, and the cursors and blobs made on it are closed (read a query's
    rows before the block ends).

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
        connector.create,
        destroy=sqlite3.Connection.close,
        # connector.create makes every connection of the pool a _PooledConnection.
        reset=cast("Callable[[sqlite3.Connection], object]", _reset),
        **pool_options_,
    )
    connector.bind(result)
    return result
