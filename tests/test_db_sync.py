"""tether.db.transaction on synchronous connections: sqlite3 and psycopg, real databases.

Every test runs on four kinds of connection: sqlite3 in autocommit mode (as
``tether.sqlite.pool`` makes them) and in the module's default legacy mode, and psycopg
with autocommit (as ``tether.postgres.pool`` makes them) and without (psycopg's default).
What committed is always read through a second connection.
"""

from __future__ import annotations

import contextlib
import sqlite3
import sys
import threading
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

import tether
import tether.db
from pool_flavours import ctrl_c_when


class Case:
    """One connection under test, and a second one to see what was committed."""

    def __init__(self, kind: str, conn: Any, observer: Any, table: str) -> None:
        self.kind = kind
        self.conn = conn
        self.observer = observer
        self.table = table

    @property
    def postgres(self) -> bool:
        return self.kind.startswith("psycopg")

    def committed(self) -> list[int]:
        """The values committed so far, as another connection sees them."""
        rows = self.observer.execute(f"SELECT v FROM {self.table} ORDER BY v").fetchall()
        return [row[0] for row in rows]

    def insert(self, value: int) -> None:
        self.conn.execute(f"INSERT INTO {self.table} (v) VALUES ({value})")

    def in_transaction(self) -> bool:
        if self.postgres:
            return bool(self.conn.info.transaction_status != 0)
        return bool(self.conn.in_transaction)

    def violate_a_deferred_constraint(self) -> None:
        """A change that only fails when the transaction commits."""
        if self.postgres:
            self.insert(7)
            self.insert(7)  # UNIQUE ... DEFERRABLE INITIALLY DEFERRED
        else:
            self.conn.execute(f"INSERT INTO {self.table} (v, parent) VALUES (7, 99)")


KINDS = ["sqlite-autocommit", "sqlite-legacy", "psycopg-autocommit", "psycopg-implicit"]


@pytest.fixture(params=KINDS)
def case(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Case]:
    kind: str = request.param
    if kind.startswith("sqlite"):
        path = tmp_path / "tx.db"
        with sqlite3.connect(path, isolation_level=None) as setup:
            setup.execute("CREATE TABLE parent (id INTEGER PRIMARY KEY)")
            setup.execute(
                "CREATE TABLE t (v INTEGER, parent INTEGER "
                "REFERENCES parent (id) DEFERRABLE INITIALLY DEFERRED)"
            )
        setup.close()
        isolation = {} if kind == "sqlite-legacy" else {"isolation_level": None}
        conn = sqlite3.connect(path, **isolation)  # type: ignore[arg-type]
        conn.execute("PRAGMA foreign_keys = ON")
        observer = sqlite3.connect(path, isolation_level=None)
        try:
            yield Case(kind, conn, observer, "t")
        finally:
            conn.close()
            observer.close()
        return
    dsn: str = request.getfixturevalue("postgres_dsn")
    import psycopg

    table = f"tether_tx_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(dsn, autocommit=True) as observer:
        observer.execute(f"CREATE TABLE {table} (v int UNIQUE DEFERRABLE INITIALLY DEFERRED)")
        try:
            with psycopg.connect(dsn, autocommit=kind == "psycopg-autocommit") as conn:
                yield Case(kind, conn, observer, table)
        finally:
            observer.execute(f"DROP TABLE {table}")


def test_commits_when_the_block_succeeds(case: Case) -> None:
    """The block's changes are committed, and the connection is left out of transaction."""
    with tether.db.transaction(case.conn) as conn:
        assert conn is case.conn
        case.insert(1)
        assert case.committed() == []
    assert (case.committed(), case.in_transaction()) == ([1], False)


def test_rolls_back_when_the_block_raises(case: Case) -> None:
    """An exception rolls the block back and propagates unchanged."""
    error = ValueError("bad row")

    def block() -> None:
        with tether.db.transaction(case.conn):
            case.insert(1)
            raise error

    with pytest.raises(ValueError, match="bad row") as caught:
        block()
    assert caught.value is error
    assert tether.cleanup_errors(error) == ()
    assert (case.committed(), case.in_transaction()) == ([], False)


def test_rolls_back_on_keyboard_interrupt(case: Case) -> None:
    """Ctrl-C in the block rolls it back, then propagates."""

    def block() -> None:
        with tether.db.transaction(case.conn):
            case.insert(1)
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        block()
    assert (case.committed(), case.in_transaction()) == ([], False)


def test_nested_blocks_are_savepoints(case: Case) -> None:
    """A failed inner block undoes only itself; the outer block commits the rest."""

    def failing_inner_block() -> None:
        with tether.db.transaction(case.conn):
            case.insert(2)
            _ = 1 / 0

    with tether.db.transaction(case.conn):
        case.insert(1)
        with pytest.raises(ZeroDivisionError):
            failing_inner_block()
        with tether.db.transaction(case.conn):
            case.insert(3)
            with tether.db.transaction(case.conn):
                case.insert(4)
        assert case.committed() == []
    assert case.committed() == [1, 3, 4]


def test_a_failed_outer_block_undoes_its_committed_savepoints(case: Case) -> None:
    """What an inner block released is still rolled back with the outer block."""

    def block() -> None:
        with tether.db.transaction(case.conn):
            with tether.db.transaction(case.conn):
                case.insert(1)
            raise LookupError

    with pytest.raises(LookupError):
        block()
    assert case.committed() == []


def test_a_failing_rollback_is_attached_to_the_blocks_error(case: Case) -> None:
    """The block's error wins over the rollback's; the rollback's is attached to it."""

    def block() -> None:
        with tether.db.transaction(case.conn):
            case.insert(1)
            case.conn.close()  # the rollback cannot reach the database any more
            raise ValueError("the real problem")

    with pytest.raises(ValueError, match="the real problem") as caught:
        block()
    (rollback_error,) = tether.cleanup_errors(caught.value)
    expected = "OperationalError" if case.postgres else "ProgrammingError"
    assert type(rollback_error).__name__ == expected
    assert any(
        note.startswith(f"cleanup 'ROLLBACK' of transaction() also failed: {expected}")
        for note in caught.value.__notes__
    )
    assert case.committed() == []


def test_a_failing_commit_raises_and_leaves_nothing_open(case: Case) -> None:
    """A commit refused by a deferred constraint raises its error; nothing stays open."""
    expected = "UniqueViolation" if case.postgres else "IntegrityError"

    def block() -> None:
        with tether.db.transaction(case.conn):
            case.insert(1)
            case.violate_a_deferred_constraint()

    with pytest.raises(Exception, match=r"unique|FOREIGN KEY") as caught:
        block()
    assert type(caught.value).__name__ == expected
    assert (case.committed(), case.in_transaction()) == ([], False)
    with tether.db.transaction(case.conn):  # the connection is fine afterwards
        case.insert(2)
    assert case.committed() == [2]


def test_a_transaction_the_caller_began_is_joined_as_a_savepoint(case: Case) -> None:
    """Inside the caller's own transaction, the block is a savepoint and does not commit."""
    if case.kind in ("sqlite-autocommit", "psycopg-autocommit"):
        case.conn.execute("BEGIN")
    case.insert(1)  # legacy sqlite3 and psycopg without autocommit begin by themselves

    def failing_block() -> None:
        with tether.db.transaction(case.conn):
            case.insert(2)
            raise ArithmeticError

    with pytest.raises(ArithmeticError):
        failing_block()
    with tether.db.transaction(case.conn):
        case.insert(3)
    assert (case.committed(), case.in_transaction()) == ([], True)
    case.conn.execute("COMMIT")
    assert case.committed() == [1, 3]


def test_a_transaction_object_is_entered_once(case: Case) -> None:
    """Entering the same transaction() object twice is refused."""
    block = tether.db.transaction(case.conn)
    with block:
        pass
    with pytest.raises(RuntimeError, match="entered only once"):
        with block:
            pass  # never reached


async def test_async_with_on_a_sync_connection_says_which_form_to_use(case: Case) -> None:
    """``async with`` on a sync connection raises TypeError pointing at ``with``."""
    with pytest.raises(TypeError, match=r"use `with tether\.db\.transaction"):
        async with tether.db.transaction(case.conn):  # type: ignore[attr-defined]
            pass  # never reached
    assert case.in_transaction() is False


@pytest.mark.parametrize("case", ["psycopg-autocommit", "psycopg-implicit"], indirect=True)
def test_statement_failure_inside_postgres_transaction_cannot_be_committed(
    case: Case,
) -> None:
    """A block that swallowed a failed statement gets TransactionAborted, not a fake commit.

    (SQLite keeps a transaction usable after a failed statement, so this is PostgreSQL's.)
    """
    import psycopg

    def block() -> None:
        with tether.db.transaction(case.conn):
            case.insert(1)
            # The error is swallowed, but the transaction is aborted.
            with contextlib.suppress(psycopg.errors.DivisionByZero):
                case.conn.execute("SELECT 1 / 0")

    with pytest.raises(tether.TransactionAborted, match="rolled back, not committed"):
        block()
    assert (case.committed(), case.in_transaction()) == ([], False)


def test_anything_else_is_refused_with_a_type_error() -> None:
    """transaction() of something that is not a connection or a pool raises TypeError."""
    with pytest.raises(TypeError, match="needs a sqlite3, psycopg or asyncpg connection"):
        tether.db.transaction(object())  # type: ignore[call-overload]


def test_a_pool_of_something_else_is_refused_and_keeps_its_resource() -> None:
    """transaction(pool) on a pool of non-connections raises TypeError, returning it."""
    with tether.Pool(object, max_size=1) as pool:
        with pytest.raises(TypeError, match=r"got builtins\.object"):
            with tether.db.transaction(pool):
                pass  # never reached
        assert pool.stats().in_use == 0


async def test_an_async_pool_of_something_else_is_refused_and_keeps_its_resource() -> None:
    """The same for an AsyncPool."""
    async with tether.AsyncPool(object, max_size=1) as pool:
        with pytest.raises(TypeError, match=r"got builtins\.object"):
            async with tether.db.transaction(pool):
                pass  # never reached
        assert pool.stats().in_use == 0


def test_begin_failure_returns_the_pooled_connection(tmp_path: Path) -> None:
    """If BEGIN fails, the block raises and the pool gets its connection back."""
    import tether.sqlite

    with tether.sqlite.pool(
        tmp_path / "db.sqlite", transaction_mode="EXCLUSIVE", busy_timeout=0, max_size=2
    ) as pool:
        with tether.db.transaction(pool):
            with pytest.raises(sqlite3.OperationalError, match="locked"):
                with tether.db.transaction(pool):
                    pass  # never reached
            assert pool.stats().in_use == 1
        assert pool.stats().in_use == 0


class _Pep249StandIn(sqlite3.Connection):
    """Python 3.11 has no ``autocommit`` attribute: a connection claiming
    ``autocommit=False`` in the module's legacy mode behaves like 3.12's PEP 249 mode for
    what the block does (the module opens transactions by itself; commit() ends them)."""

    autocommit = False


def _pep249_connection(path: Path) -> sqlite3.Connection:
    if sys.version_info >= (3, 12):
        return sqlite3.connect(path, autocommit=False)  # type: ignore[call-arg]
    return sqlite3.connect(path, factory=_Pep249StandIn)


def test_sqlite_pep249_mode_commits_and_rolls_back_its_implicit_transaction(
    tmp_path: Path,
) -> None:
    """With ``autocommit=False`` (Python 3.12+) a transaction is always open: the outermost
    block ends it with commit() or rollback(), and inner blocks are savepoints."""
    path = tmp_path / "pep249.db"
    conn = _pep249_connection(path)
    observer = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("CREATE TABLE t (v INTEGER)")
        conn.commit()

        def failing_inner_block() -> None:
            with tether.db.transaction(conn):
                conn.execute("INSERT INTO t VALUES (2)")
                raise ArithmeticError

        def failing_block() -> None:
            with tether.db.transaction(conn):
                conn.execute("INSERT INTO t VALUES (3)")
                raise KeyError

        with tether.db.transaction(conn):
            conn.execute("INSERT INTO t VALUES (1)")
            with pytest.raises(ArithmeticError):
                failing_inner_block()
        with pytest.raises(KeyError):
            failing_block()
        assert observer.execute("SELECT v FROM t").fetchall() == [(1,)]
    finally:
        conn.close()
        observer.close()


@pytest.mark.parametrize("case", ["psycopg-autocommit", "psycopg-implicit"], indirect=True)
def test_an_inner_block_that_swallowed_a_failure_undoes_itself_and_the_outer_goes_on(
    case: Case,
) -> None:
    """An inner block whose failed statement was swallowed cannot release its savepoint:
    it rolls back to it and raises; the outer transaction is usable again and commits."""
    import psycopg

    def inner_block() -> None:
        with tether.db.transaction(case.conn):
            case.insert(2)
            with contextlib.suppress(psycopg.errors.DivisionByZero):
                case.conn.execute("SELECT 1 / 0")

    with tether.db.transaction(case.conn):
        case.insert(1)
        with pytest.raises(psycopg.errors.InFailedSqlTransaction):
            inner_block()
        case.insert(3)
    assert case.committed() == [1, 3]


def test_a_failed_commit_through_a_pool_returns_the_connection(tmp_path: Path) -> None:
    """``transaction(pool)``: a commit refused by a deferred constraint raises, and the
    connection goes back to the pool, clean."""
    import tether.sqlite

    with tether.sqlite.pool(
        tmp_path / "db.sqlite",
        max_size=1,
        configure=lambda c: c.execute("PRAGMA foreign_keys = ON"),
    ) as pool:
        with pool.acquire() as conn:
            conn.execute("CREATE TABLE parent (id INTEGER PRIMARY KEY)")
            conn.execute(
                "CREATE TABLE child (p INTEGER REFERENCES parent (id) "
                "DEFERRABLE INITIALLY DEFERRED)"
            )

        def orphan() -> None:
            with tether.db.transaction(pool) as conn:
                conn.execute("INSERT INTO child VALUES (99)")

        with pytest.raises(sqlite3.IntegrityError, match="FOREIGN KEY"):
            orphan()
        with pool.acquire() as conn:
            assert (conn.in_transaction, conn.execute("SELECT count(*) FROM child").fetchone()) == (
                False,
                (0,),
            )
        stats = pool.stats()
    assert (stats.in_use, stats.created) == (0, 1)


# --- Ctrl-C while BEGIN is in flight -------------------------------------------------------


def test_ctrl_c_while_psycopg_sends_begin_leaves_no_transaction_open(
    postgres_dsn: str, tcp_proxy: Callable[[str, int], Any]
) -> None:
    """Ctrl-C while BEGIN is on its way: psycopg lets BEGIN finish on the server before it
    raises KeyboardInterrupt, and the block rolls back the transaction BEGIN began. Left
    open, it would take in the connection's next statements, and the next block would
    take it for the caller's and only make a savepoint: its rows never committed."""
    import psycopg

    from infra.fixtures import proxied_dsn

    address = urlsplit(postgres_dsn)
    proxy = tcp_proxy(address.hostname or "127.0.0.1", address.port or 5432)
    table = f"tether_tx_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(postgres_dsn, autocommit=True) as observer:
        observer.execute(f"CREATE TABLE {table} (v int)")
        try:
            with psycopg.connect(proxied_dsn(postgres_dsn, proxy), autocommit=True) as conn:
                case = Case("psycopg-autocommit", conn, observer, table)
                proxy.blackhole()  # BEGIN waits in the proxy until Ctrl-C is pressed

                active = psycopg.pq.TransactionStatus.ACTIVE

                def sending() -> bool:
                    return bool(conn.pgconn.transaction_status == active)

                entered = False
                with ctrl_c_when(sending, then=proxy.restore), pytest.raises(KeyboardInterrupt):
                    with tether.db.transaction(conn):
                        entered = True  # pragma: no cover - interrupted before
                pid = conn.info.backend_pid
                state = observer.execute(
                    "SELECT state FROM pg_stat_activity WHERE pid = %s", (pid,)
                ).fetchone()
                assert (entered, case.in_transaction(), state) == (False, False, ("idle",))
                with tether.db.transaction(conn):
                    case.insert(1)
                assert case.committed() == [1]
        finally:
            observer.execute(f"DROP TABLE {table}")


def test_ctrl_c_while_sqlite_begin_waits_for_the_lock_leaves_no_transaction_open(
    tmp_path: Path,
) -> None:
    """sqlite3: Ctrl-C while ``BEGIN IMMEDIATE`` waits for another connection's write
    lock. KeyboardInterrupt is raised once BEGIN has returned with the lock, and the block
    rolls back the transaction BEGIN began instead of keeping the lock from everyone."""
    import tether.sqlite

    begin = tether.db._Sqlite.begin.__code__
    main = threading.main_thread().ident or 0

    def waiting_in_begin() -> bool:
        frame = sys._current_frames().get(main)
        while frame is not None and frame.f_code is not begin:
            frame = frame.f_back
        return frame is not None

    path = tmp_path / "db.sqlite"
    writer = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    with tether.sqlite.pool(path, transaction_mode="IMMEDIATE", max_size=1) as pool:
        with pool.acquire() as conn:
            writer.execute("BEGIN IMMEDIATE")  # holds the write lock
            with (
                ctrl_c_when(waiting_in_begin, then=lambda: writer.execute("COMMIT")),
                pytest.raises(KeyboardInterrupt),
            ):
                with tether.db.transaction(conn):
                    pass  # pragma: no cover - interrupted before
            in_transaction = conn.in_transaction
            writer.execute("BEGIN IMMEDIATE")  # would time out if the lock were still held
            writer.execute("COMMIT")
    writer.close()
    assert in_transaction is False
