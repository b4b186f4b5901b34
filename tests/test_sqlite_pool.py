"""tether.sqlite.pool: a real SQLite file (or shared memory) used by real threads."""

from __future__ import annotations

import gc
import inspect
import sqlite3
import threading
import time
from collections.abc import Callable
from contextlib import closing
from pathlib import Path

import pytest

import tether
import tether.db
import tether.sqlite
from tether import sqlite as tether_sqlite

GUARD = 15.0  # seconds: a failure guard only, never a measurement


def count(conn: sqlite3.Connection, table: str = "t") -> int:
    (n,) = conn.execute(f"SELECT count(*) FROM {table}").fetchone()
    return int(n)


@pytest.fixture
def opened(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, sqlite3.Connection]]:
    """Every connection sqlite3.connect opens during the test, with the database named."""
    connections: list[tuple[str, sqlite3.Connection]] = []
    real_connect = sqlite3.connect

    def recording_connect(database: str, *args: object, **kwargs: object) -> sqlite3.Connection:
        conn = real_connect(database, *args, **kwargs)  # type: ignore[call-overload]
        connections.append((database, conn))
        return conn  # type: ignore[no-any-return]

    monkeypatch.setattr(sqlite3, "connect", recording_connect)
    return connections


def still_open(opened: list[tuple[str, sqlite3.Connection]]) -> list[sqlite3.Connection]:
    """The connections of ``opened`` that have not been closed."""
    left = []
    for _, conn in opened:
        try:
            conn.execute("SELECT 1")
        except sqlite3.ProgrammingError:
            continue
        left.append(conn)
    return left


def wait_until_idle_closed(pool: tether.Pool[sqlite3.Connection]) -> None:
    """Wait for max_idle to close every connection of ``pool``."""
    deadline = time.monotonic() + GUARD
    while pool.stats().size and time.monotonic() < deadline:
        time.sleep(0.01)
    assert pool.stats().size == 0


def insert_elsewhere(path: Path, value: object) -> None:
    """Commit a row into ``t`` from a connection outside the pool, failing at once if the
    database is locked."""
    with closing(sqlite3.connect(path, timeout=0, isolation_level=None)) as other:
        other.execute("INSERT INTO t VALUES (?)", (value,))


def is_closed(cursor: sqlite3.Cursor) -> bool:
    try:
        cursor.fetchone()
    except sqlite3.ProgrammingError as error:
        return "closed cursor" in str(error)
    return False


def test_threads_share_a_file_with_transactions_and_wal(tmp_path: Path) -> None:
    """Eight threads on a pool of three commit every transaction; the file is in WAL mode."""
    with tether.sqlite.pool(tmp_path / "shop.db", max_size=3) as pool:
        with tether.db.transaction(pool) as conn:
            conn.execute("CREATE TABLE t (worker INTEGER, n INTEGER)")
        errors: list[BaseException] = []

        def work(worker: int) -> None:
            try:
                for n in range(25):
                    with tether.db.transaction(pool) as conn:
                        conn.execute("INSERT INTO t VALUES (?, ?)", (worker, n))
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=work, args=(w,)) for w in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(GUARD)
        with pool.acquire() as conn:
            assert (errors, count(conn)) == ([], 200)
            assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)
        stats = pool.stats()
    assert stats.created <= 3
    assert (stats.in_use, stats.name) == (0, f"sqlite {tmp_path / 'shop.db'}")


def test_connections_are_in_autocommit_mode_and_usable_from_any_thread(tmp_path: Path) -> None:
    """A statement outside a transaction commits by itself, from a thread that did not
    open the connection."""
    path = tmp_path / "db.sqlite"
    with tether.sqlite.pool(path, max_size=1) as pool:
        with pool.acquire() as conn:
            conn.execute("CREATE TABLE t (v)")
        done = threading.Event()

        def insert() -> None:
            with pool.acquire() as conn:
                conn.execute("INSERT INTO t VALUES (1)")
                assert not conn.in_transaction
            done.set()

        thread = threading.Thread(target=insert)
        thread.start()
        thread.join(GUARD)
        assert done.is_set()
    with sqlite3.connect(path) as other:
        assert count(other) == 1
    other.close()


def test_an_open_transaction_is_rolled_back_when_the_connection_returns(tmp_path: Path) -> None:
    """A transaction begun by hand and not finished is rolled back on return."""
    with tether.sqlite.pool(tmp_path / "db.sqlite", max_size=1) as pool:
        with pool.acquire() as conn:
            conn.execute("CREATE TABLE t (v)")
            conn.execute("BEGIN")
            conn.execute("INSERT INTO t VALUES (1)")
        with pool.acquire() as conn:
            assert (conn.in_transaction, count(conn)) == (False, 0)
        assert pool.stats().created == 1  # rolled back and reused, not replaced


def test_a_connection_closed_while_held_is_discarded(tmp_path: Path) -> None:
    """A connection closed by its holder is destroyed on return and replaced next time."""
    with tether.sqlite.pool(tmp_path / "db.sqlite", max_size=1) as pool:
        with pool.acquire() as conn:
            conn.close()
        with pool.acquire() as conn:
            assert conn.execute("SELECT 1").fetchone() == (1,)
        stats = pool.stats()
    assert (stats.created, stats.destroyed, stats.broken) == (2, 1, 1)


def test_memory_database_is_shared_by_the_pools_connections() -> None:
    """``:memory:`` is one database for all connections of the pool, and only this pool."""
    with (
        tether.sqlite.pool(":memory:", max_size=2) as pool,
        tether.sqlite.pool(":memory:", max_size=1) as other,
    ):
        with pool.acquire() as first, pool.acquire() as second:
            first.execute("CREATE TABLE t (v)")
            first.execute("INSERT INTO t VALUES (1)")
            assert count(second) == 1
            assert first is not second
        with other.acquire() as conn, pytest.raises(sqlite3.OperationalError, match="no such"):
            count(conn)
        assert pool.stats().name == "sqlite :memory:"


def test_memory_database_survives_every_connection_being_idle_closed() -> None:
    """Idle connections closed by max_idle do not take the in-memory database with them."""
    with tether.sqlite.pool(":memory:", max_size=2, max_idle=0.01) as pool:
        with pool.acquire() as conn:
            conn.execute("CREATE TABLE t (v)")
            conn.execute("INSERT INTO t VALUES (42)")
        wait_until_idle_closed(pool)
        with pool.acquire() as conn:
            assert conn.execute("SELECT v FROM t").fetchall() == [(42,)]


def test_memory_database_writers_wait_for_each_other() -> None:
    """A second writer waits for the first to commit (busy_timeout), instead of failing."""
    with tether.sqlite.pool(":memory:", max_size=2, busy_timeout=GUARD) as pool:
        with tether.db.transaction(pool) as conn:
            conn.execute("CREATE TABLE t (v)")
        first_wrote = threading.Event()
        outcome: list[object] = []

        def second_writer() -> None:
            first_wrote.wait(GUARD)
            try:
                with tether.db.transaction(pool) as conn:
                    conn.execute("INSERT INTO t VALUES (2)")
                outcome.append("committed")
            except BaseException as exc:
                outcome.append(exc)

        thread = threading.Thread(target=second_writer)
        thread.start()
        with tether.db.transaction(pool) as conn:
            conn.execute("INSERT INTO t VALUES (1)")
            first_wrote.set()
            time.sleep(0.2)  # hold the write lock while the other writer tries
        thread.join(GUARD)
        with pool.acquire() as conn:
            assert (outcome, count(conn)) == (["committed"], 2)


def test_memory_database_keeper_is_closed_with_the_pool(
    opened: list[tuple[str, sqlite3.Connection]],
) -> None:
    """The connection that keeps ``:memory:`` alive is closed once the pool has closed."""
    with tether.sqlite.pool(":memory:", max_size=1) as pool:
        with pool.acquire() as conn:
            conn.execute("SELECT 1")
    assert (len(opened), still_open(opened)) == (2, [])


def test_memory_database_is_freed_on_close_after_max_idle_closed_every_connection(
    opened: list[tuple[str, sqlite3.Connection]],
) -> None:
    """With no pooled connection left (max_idle closed them all), closing the pool still
    frees the in-memory database, though the pool object lives on."""
    pool = tether.sqlite.pool(":memory:", max_size=2, max_idle=0.01)
    with pool:
        with pool.acquire() as conn:
            conn.execute("CREATE TABLE t (v)")
        wait_until_idle_closed(pool)
    ((database, _), *_) = opened
    assert still_open(opened) == []
    with closing(sqlite3.connect(database, uri=True)) as anew:
        assert count(anew, "sqlite_master") == 0  # a new, empty database of that name


def test_memory_database_keeper_is_closed_when_open_fails(
    opened: list[tuple[str, sqlite3.Connection]],
) -> None:
    """``configure`` failing while ``open()`` makes ``min_size`` connections closes the pool
    and every connection it opened."""

    def broken(conn: sqlite3.Connection) -> None:
        raise RuntimeError("bad pragma")

    pool = tether.sqlite.pool(":memory:", min_size=1, configure=broken)
    with pytest.raises(RuntimeError, match="bad pragma"):
        pool.open()
    assert (pool.closed, len(opened), still_open(opened)) == (True, 2, [])


def test_memory_database_stays_for_a_connection_held_at_close(
    opened: list[tuple[str, sqlite3.Connection]],
) -> None:
    """A connection held when the pool closes still has the database until it returns."""
    pool = tether.sqlite.pool(":memory:")
    pool.open()
    conn = pool.get()
    conn.execute("CREATE TABLE t (v)")
    pool.close()
    conn.execute("INSERT INTO t VALUES (1)")
    assert (count(conn), still_open(opened)) == (1, [conn])  # the keeper is closed
    pool.put(conn)
    assert still_open(opened) == []


def test_memory_database_keeper_is_not_made_again_after_close(
    opened: list[tuple[str, sqlite3.Connection]],
) -> None:
    """A creation that starts after the close (in a thread given room just before it)
    opens its own connection, which the pool retires, and no keeper that would outlive
    the pool."""
    pool = tether.sqlite.pool(":memory:")
    with pool:
        pass
    late = pool._create()  # what that thread runs
    late.close()  # what the pool then does
    assert (len(opened), still_open(opened)) == (1, [])


def test_memory_database_outlives_a_close_refused_for_its_timeout() -> None:
    """``close(timeout=-1)`` is refused before anything closes: the pool and its database
    carry on."""
    with tether.sqlite.pool(":memory:") as pool:
        with pool.acquire() as conn:
            conn.execute("CREATE TABLE t (v)")
        with pytest.raises(ValueError, match="timeout must not be negative"):
            pool.close(timeout=-1)
        with pool.acquire() as conn:
            assert (pool.closed, count(conn)) == (False, 0)


def test_close_taken_from_a_memory_pool_since_collected_does_nothing() -> None:
    """``pool.close`` holds its ``:memory:`` pool weakly: called after the pool was
    collected (its finalizer released the database), it does nothing."""
    close = tether.sqlite.pool(":memory:").close
    gc.collect()
    assert close() is None


def test_shared_cache_fallback_without_memdb(monkeypatch: pytest.MonkeyPatch) -> None:
    """On an SQLite without the memdb VFS, ``:memory:`` falls back to a shared cache."""
    monkeypatch.setattr(tether_sqlite, "_MEMDB", False)
    with tether.sqlite.pool(":memory:", max_size=2) as pool:
        with pool.acquire() as first, pool.acquire() as second:
            first.execute("CREATE TABLE t (v)")
            first.execute("INSERT INTO t VALUES (1)")
            assert count(second) == 1


@pytest.mark.parametrize(
    ("mode", "statement"),
    [("DEFERRED", "BEGIN"), ("IMMEDIATE", "BEGIN IMMEDIATE"), ("EXCLUSIVE", "BEGIN EXCLUSIVE")],
)
def test_transaction_mode_decides_how_transactions_begin(
    tmp_path: Path, mode: tether_sqlite.TransactionMode, statement: str
) -> None:
    """``transaction_mode`` is the BEGIN that tether.db.transaction sends."""
    seen: list[str] = []
    with tether.sqlite.pool(
        tmp_path / "db.sqlite",
        transaction_mode=mode,
        configure=lambda c: c.set_trace_callback(seen.append),
    ) as pool:
        with tether.db.transaction(pool) as conn:
            conn.execute("SELECT 1")
    assert seen[:2] == [statement, "SELECT 1"]


def test_immediate_transactions_take_the_write_lock_at_begin(tmp_path: Path) -> None:
    """With IMMEDIATE a second transaction cannot even begin while one is open."""
    with tether.sqlite.pool(
        tmp_path / "db.sqlite", transaction_mode="IMMEDIATE", busy_timeout=0, max_size=2
    ) as pool:
        with tether.db.transaction(pool):
            with pytest.raises(sqlite3.OperationalError, match="locked"):
                with tether.db.transaction(pool):
                    pass  # never reached: BEGIN IMMEDIATE fails
        assert pool.stats().in_use == 0


@pytest.mark.parametrize(
    "make_cursor",
    [
        pytest.param(lambda conn: conn.execute("SELECT v FROM t"), id="execute"),
        pytest.param(lambda conn: conn.cursor().execute("SELECT v FROM t"), id="cursor"),
        pytest.param(
            lambda conn: conn.cursor(factory=sqlite3.Cursor).execute("SELECT v FROM t"),
            id="cursor-factory",
        ),
    ],
)
def test_a_query_left_unfinished_is_closed_on_return(
    tmp_path: Path, make_cursor: Callable[[sqlite3.Connection], sqlite3.Cursor]
) -> None:
    """A query not read to the end keeps SQLite's read transaction open, in autocommit mode
    too. Its cursor is closed on return: the connection's next holder sees what others
    committed meanwhile, and can write at once."""
    path = tmp_path / "db.sqlite"
    with tether.sqlite.pool(path, max_size=1, busy_timeout=0) as pool:
        with pool.acquire() as conn:
            conn.execute("CREATE TABLE t (v)")
            conn.executemany("INSERT INTO t VALUES (?)", [(1,), (2,), (3,)])
        with pool.acquire() as conn:
            cursor = make_cursor(conn)
            assert (cursor.fetchone(), conn.in_transaction) == ((1,), False)
        insert_elsewhere(path, 4)
        with pool.acquire() as again, tether.db.transaction(again):
            assert (again is conn, count(again)) == (True, 4)
            again.execute("INSERT INTO t VALUES (5)")
        assert is_closed(cursor)
        with pool.acquire() as conn:
            assert count(conn) == 5
        assert pool.stats().created == 1  # cleaned and reused, not replaced


def test_a_blob_left_open_is_closed_on_return(tmp_path: Path) -> None:
    """An open writable blob holds the write lock; returning its connection closes it,
    keeping what was written, and other connections can write again."""
    path = tmp_path / "db.sqlite"
    with tether.sqlite.pool(path, max_size=1) as pool:
        with pool.acquire() as conn:
            conn.execute("CREATE TABLE t (v)")
            conn.execute("INSERT INTO t VALUES (zeroblob(4))")
            blob = conn.blobopen("t", "v", 1)
            blob.write(b"abcd")
        insert_elsewhere(path, b"efgh")
        with pool.acquire() as conn:
            assert conn.execute("SELECT v FROM t").fetchall() == [(b"abcd",), (b"efgh",)]
        with pytest.raises(sqlite3.ProgrammingError, match="closed blob"):
            blob.read()


def test_every_cursor_left_open_is_closed_among_many_dropped_ones() -> None:
    """Cursors kept among hundreds dropped at once are all closed on return (the dropped
    ones are forgotten as the holder goes on: remembering them costs no memory)."""
    with tether.sqlite.pool(":memory:", max_size=1) as pool:
        with pool.acquire() as conn:
            conn.execute("CREATE TABLE t (v)")
            kept = [conn.executemany("INSERT INTO t VALUES (?)", [(1,), (2,)])]
            for n in range(1000):
                cursor = conn.execute("SELECT ? FROM t", (n,))
                if n % 10 == 0:
                    kept.append(cursor)
        assert [is_closed(cursor) for cursor in kept] == [True] * 101


def test_configure_runs_on_each_new_connection_and_its_failure_is_the_error(
    tmp_path: Path,
) -> None:
    """``configure`` sets up every connection; if it raises, the acquire raises that."""
    with tether.sqlite.pool(
        tmp_path / "db.sqlite", configure=lambda c: c.execute("PRAGMA foreign_keys = ON")
    ) as pool:
        with pool.acquire() as conn:
            assert conn.execute("PRAGMA foreign_keys").fetchone() == (1,)

    def broken(conn: sqlite3.Connection) -> None:
        raise RuntimeError("bad pragma")

    with tether.sqlite.pool(tmp_path / "db.sqlite", configure=broken, name="cfg") as pool:
        with pytest.raises(RuntimeError, match="bad pragma") as caught:
            with pool.acquire():
                pass  # never reached
    assert "(while pool 'cfg' was creating a resource)" in caught.value.__notes__


def test_wal_false_keeps_the_journal_mode(tmp_path: Path) -> None:
    """``wal=False`` leaves the database's journal mode alone."""
    with tether.sqlite.pool(tmp_path / "db.sqlite", wal=False) as pool:
        with pool.acquire() as conn:
            assert conn.execute("PRAGMA journal_mode").fetchone() == ("delete",)


def test_file_uri_opens_read_only(tmp_path: Path) -> None:
    """A ``file:`` URI is passed to SQLite as a URI (here: a read-only database)."""
    path = tmp_path / "db.sqlite"
    with sqlite3.connect(path) as setup:
        setup.execute("CREATE TABLE t (v)")
    setup.close()
    with tether.sqlite.pool(f"file:{path}?mode=ro", wal=False) as pool:
        with pool.acquire() as conn:
            assert count(conn) == 0
            with pytest.raises(sqlite3.OperationalError, match="readonly"):
                conn.execute("INSERT INTO t VALUES (1)")


@pytest.mark.parametrize(
    ("arguments", "error", "message"),
    [
        ({"path": 42}, TypeError, "path must be a str or os.PathLike"),
        ({"path": b"x.db"}, TypeError, "path must be a str or os.PathLike"),
        ({"path": ""}, ValueError, "path must not be empty"),
        ({"path": "x", "busy_timeout": -1}, ValueError, "busy_timeout must not be negative"),
        ({"path": "x", "transaction_mode": "LAZY"}, ValueError, "transaction_mode must be"),
        ({"path": "x", "configure": 3}, TypeError, "configure must be callable"),
        ({"path": "x", "max_size": 0}, ValueError, "max_size must be at least 1"),
        ({"path": "x", "reset": print}, TypeError, "sets 'reset' itself"),
        ({"path": "x", "max_sise": 3}, TypeError, "unexpected keyword argument 'max_sise'"),
    ],
)
def test_bad_arguments_are_refused_at_the_call(
    arguments: dict[str, object], error: type[Exception], message: str
) -> None:
    """Each bad argument raises at once, naming it; nothing is opened."""
    with pytest.raises(error, match=message):
        tether.sqlite.pool(**arguments)  # type: ignore[arg-type]


def test_holders_name_the_line_of_the_pool_transaction(tmp_path: Path) -> None:
    """``transaction(pool)`` keeps the holder's site at the caller's own line."""
    with tether.sqlite.pool(tmp_path / "db.sqlite") as pool:
        with tether.db.transaction(pool):
            line = inspect.currentframe().f_lineno - 1  # type: ignore[union-attr]
            (holder,) = pool.holders()
    assert holder.site.endswith(f"test_sqlite_pool.py:{line}")
    assert holder.owner == threading.current_thread().name
