"""tether.sqlite.pool: a real SQLite file (or shared memory) used by real threads."""

from __future__ import annotations

import inspect
import sqlite3
import threading
import time
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
        deadline = time.monotonic() + GUARD
        while pool.stats().size and time.monotonic() < deadline:
            time.sleep(0.01)
        assert pool.stats().size == 0
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


def test_memory_database_keeper_is_closed_with_the_last_connection(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The connection that keeps ``:memory:`` alive is closed once the pool has closed."""
    opened: list[sqlite3.Connection] = []
    real_connect = sqlite3.connect

    def recording_connect(*args: object, **kwargs: object) -> sqlite3.Connection:
        conn = real_connect(*args, **kwargs)  # type: ignore[call-overload]
        opened.append(conn)
        return conn  # type: ignore[no-any-return]

    monkeypatch.setattr(sqlite3, "connect", recording_connect)
    with tether.sqlite.pool(":memory:", max_size=1) as pool:
        with pool.acquire() as conn:
            conn.execute("SELECT 1")
    closed = []
    for conn in opened:
        try:
            conn.execute("SELECT 1")
        except sqlite3.ProgrammingError:
            closed.append(conn)
    assert (len(opened), len(closed)) == (2, 2)


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
