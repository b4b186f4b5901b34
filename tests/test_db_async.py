"""tether.db.transaction on asynchronous connections: asyncpg and psycopg, real PostgreSQL.

Each test runs on asyncpg, psycopg's AsyncConnection with autocommit (as
``tether.postgres.async_pool`` makes them) and without. What committed is always read
through a second connection. Cancellation is tried the ways it reaches real code: a
plain ``task.cancel()``, ``asyncio.timeout`` and an anyio cancel scope, in the middle of
a query.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import linecache
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import anyio
import psycopg
import pytest

import tether
import tether.db
import tether.postgres

GUARD = 15.0  # seconds: a failure guard only, never a measurement


class Case:
    """One async connection under test, and a second one to see what was committed."""

    def __init__(self, kind: str, conn: Any, observer: Any, table: str) -> None:
        self.kind = kind
        self.conn = conn
        self.observer = observer
        self.table = table

    async def committed(self) -> list[int]:
        cursor = await self.observer.execute(f"SELECT v FROM {self.table} ORDER BY v")
        return [row[0] for row in await cursor.fetchall()]

    async def execute(self, statement: str) -> None:
        await self.conn.execute(statement)

    async def insert(self, value: int) -> None:
        await self.execute(f"INSERT INTO {self.table} (v) VALUES ({value})")

    def in_transaction(self) -> bool:
        if self.kind == "asyncpg":
            return bool(self.conn.is_in_transaction())
        return bool(self.conn.info.transaction_status != 0)

    async def backend_state(self) -> str | None:
        """What pg_stat_activity says the connection's backend is doing."""
        pid = self.conn.get_server_pid() if self.kind == "asyncpg" else self.conn.info.backend_pid
        return await self.backend_state_of(pid)

    async def backend_state_of(self, pid: int) -> str | None:
        """What pg_stat_activity says backend ``pid`` is doing (``None``: it is gone)."""
        cursor = await self.observer.execute(
            "SELECT state FROM pg_stat_activity WHERE pid = %s", (pid,)
        )
        row = await cursor.fetchone()
        return None if row is None else str(row[0])


KINDS = ["asyncpg", "psycopg-autocommit", "psycopg-implicit"]


async def eventually(probe: Callable[[], Awaitable[object]], expected: object) -> None:
    """Poll ``probe`` until it returns ``expected`` (the caller bounds the wait)."""
    for _ in itertools.count():
        if await probe() == expected:
            return
        await asyncio.sleep(0.01)


@pytest.fixture(params=KINDS)
async def case(request: pytest.FixtureRequest, postgres_dsn: str) -> AsyncIterator[Case]:
    kind: str = request.param
    table = f"tether_tx_{uuid.uuid4().hex[:12]}"
    async with await psycopg.AsyncConnection.connect(postgres_dsn, autocommit=True) as observer:
        await observer.execute(f"CREATE TABLE {table} (v int UNIQUE DEFERRABLE INITIALLY DEFERRED)")
        try:
            if kind == "asyncpg":
                import asyncpg

                conn = await asyncpg.connect(postgres_dsn)
                try:
                    yield Case(kind, conn, observer, table)
                finally:
                    await conn.close()
            else:
                async with await psycopg.AsyncConnection.connect(
                    postgres_dsn, autocommit=kind == "psycopg-autocommit"
                ) as conn:
                    yield Case(kind, conn, observer, table)
        finally:
            await observer.execute(f"DROP TABLE {table}")


async def test_commits_when_the_block_succeeds(case: Case) -> None:
    """The block's changes are committed, and the connection is left out of transaction."""
    async with tether.db.transaction(case.conn) as conn:
        assert conn is case.conn
        await case.insert(1)
        assert await case.committed() == []
    assert (await case.committed(), case.in_transaction()) == ([1], False)


async def test_rolls_back_when_the_block_raises(case: Case) -> None:
    """An exception rolls the block back and propagates unchanged."""
    error = ValueError("bad row")

    async def block() -> None:
        async with tether.db.transaction(case.conn):
            await case.insert(1)
            raise error

    with pytest.raises(ValueError, match="bad row") as caught:
        await block()
    assert caught.value is error
    assert (await case.committed(), case.in_transaction()) == ([], False)


async def test_nested_blocks_are_savepoints(case: Case) -> None:
    """A failed inner block undoes only itself; the outer block commits the rest."""

    async def failing_inner_block() -> None:
        async with tether.db.transaction(case.conn):
            await case.insert(2)
            _ = 1 / 0

    async with tether.db.transaction(case.conn):
        await case.insert(1)
        with pytest.raises(ZeroDivisionError):
            await failing_inner_block()
        async with tether.db.transaction(case.conn):
            await case.insert(3)
    assert await case.committed() == [1, 3]


async def _cancel_mid_query(case: Case, how: str) -> BaseException | None:
    """Run a transaction whose query is interrupted ``how``; return what propagated."""

    async def block() -> None:
        async with tether.db.transaction(case.conn):
            await case.insert(1)
            await case.execute("SELECT pg_sleep(30)")

    try:
        if how == "task.cancel()":
            task = asyncio.ensure_future(block())
            await eventually(case.backend_state, "active")
            task.cancel()
            await task
        elif how == "asyncio.timeout":
            async with asyncio.timeout(0.3):
                await block()
        else:
            with anyio.move_on_after(0.3) as scope:
                await block()
            assert scope.cancelled_caught
    except BaseException as exc:
        return exc
    return None


CANCELLATIONS = {
    "task.cancel()": asyncio.CancelledError,
    "asyncio.timeout": TimeoutError,
    "anyio cancel scope": type(None),  # the scope catches its own cancellation
}


@pytest.mark.parametrize(
    ("case", "how"),
    [
        (kind, how)
        for kind in KINDS
        for how in CANCELLATIONS
        # psycopg under an anyio cancel scope closes the connection: see the next test
        if kind == "asyncpg" or how != "anyio cancel scope"
    ],
    indirect=["case"],
)
async def test_cancellation_mid_query_rolls_back_shielded(case: Case, how: str) -> None:
    """Cancelled in the middle of a query, the transaction is rolled back all the same:
    the rollback waits for the query to be cancelled on the server, whatever keeps
    cancelling the task meanwhile, and the connection is left idle and usable."""
    with anyio.fail_after(GUARD):
        propagated = await _cancel_mid_query(case, how)
    assert type(propagated) is CANCELLATIONS[how]
    assert (await case.committed(), case.in_transaction()) == ([], False)
    assert await case.backend_state() == "idle"
    async with tether.db.transaction(case.conn):
        await case.insert(2)
    assert await case.committed() == [2]


@pytest.mark.parametrize("case", ["psycopg-autocommit", "psycopg-implicit"], indirect=True)
async def test_psycopg_under_an_anyio_cancel_scope_loses_the_connection_not_the_data(
    case: Case,
) -> None:
    """psycopg cannot finish cancelling a query while an anyio cancel scope keeps
    cancelling it: it closes the connection. Nothing is committed; the rollback that
    could not be sent is left to the server, which rolls back a disconnected session."""
    pid = case.conn.info.backend_pid
    with anyio.fail_after(GUARD):
        propagated = await _cancel_mid_query(case, "anyio cancel scope")
    assert (propagated, case.conn.closed, await case.committed()) == (None, True, [])
    # The server only notices the disconnection when pg_sleep ends: end it now.
    await case.observer.execute("SELECT pg_terminate_backend(%s)", (pid,))
    await eventually(lambda: case.backend_state_of(pid), None)
    assert await case.committed() == []


async def test_a_failing_rollback_is_attached_to_the_blocks_error(case: Case) -> None:
    """The block's error wins over the rollback's; the rollback's is attached to it."""

    async def block() -> None:
        async with tether.db.transaction(case.conn):
            await case.insert(1)
            await case.conn.close()
            raise ValueError("the real problem")

    with pytest.raises(ValueError, match="the real problem") as caught:
        await block()
    (rollback_error,) = tether.cleanup_errors(caught.value)
    assert type(rollback_error).__name__ in ("InterfaceError", "OperationalError")
    assert any("cleanup 'ROLLBACK' of transaction()" in n for n in caught.value.__notes__)
    assert await case.committed() == []


async def test_a_failing_savepoint_rollback_is_attached_too(case: Case) -> None:
    """The same inside a nested block, naming the savepoint; the outer block's error wins."""

    async def block() -> None:
        async with tether.db.transaction(case.conn):
            async with tether.db.transaction(case.conn):
                await case.conn.close()
                raise KeyError("inner")

    with pytest.raises(KeyError) as caught:
        await block()
    notes = caught.value.__notes__
    assert len(tether.cleanup_errors(caught.value)) == 2
    assert "'ROLLBACK TO SAVEPOINT tether_savepoint_1'" in notes[0]
    assert "'ROLLBACK'" in notes[1]


async def test_a_failing_commit_raises_and_leaves_nothing_open(case: Case) -> None:
    """A commit refused by a deferred constraint raises its error; nothing stays open."""

    async def block() -> None:
        async with tether.db.transaction(case.conn):
            await case.insert(7)
            await case.insert(7)

    with pytest.raises(Exception, match=r"unique|duplicate") as caught:
        await block()
    assert "Unique" in type(caught.value).__name__
    assert (await case.committed(), case.in_transaction()) == ([], False)


async def test_swallowed_statement_failure_raises_transaction_aborted(case: Case) -> None:
    """A block that swallowed a failed statement gets TransactionAborted, not a fake commit."""
    swallowed: list[str] = []

    async def block() -> None:
        async with tether.db.transaction(case.conn):
            await case.insert(1)
            try:
                await case.execute("SELECT 1 / 0")
            except Exception as exc:  # swallowed, but the transaction is aborted
                swallowed.append(str(exc))

    with pytest.raises(tether.TransactionAborted):
        await block()
    assert swallowed == ["division by zero"]
    assert (await case.committed(), case.in_transaction()) == ([], False)


async def test_with_on_an_async_connection_says_which_form_to_use(case: Case) -> None:
    """``with`` on an async connection raises TypeError pointing at ``async with``."""
    with pytest.raises(TypeError, match=r"use `async with tether\.db\.transaction"):
        with tether.db.transaction(case.conn):  # type: ignore[attr-defined]
            pass  # never reached
    assert case.in_transaction() is False


async def test_a_transaction_object_is_entered_once(case: Case) -> None:
    """Entering the same transaction() object twice is refused."""
    block = tether.db.transaction(case.conn)
    async with block:
        pass
    with pytest.raises(RuntimeError, match="entered only once"):
        async with block:
            pass  # never reached


PoolFactory = Callable[[str], Awaitable[Any]]


@pytest.mark.parametrize("driver", ["asyncpg", "psycopg"])
async def test_transaction_on_a_pool_acquires_and_returns(postgres_dsn: str, driver: str) -> None:
    """``async with transaction(pool) as conn`` acquires, commits or rolls back, and returns
    the connection; the holder's site is the line of the call."""
    table = f"tether_tx_{uuid.uuid4().hex[:12]}"
    pool = tether.postgres.async_pool(postgres_dsn, driver=driver, max_size=2)  # type: ignore[call-overload]
    async with pool:
        async with pool.acquire() as conn:
            await conn.execute(f"CREATE TABLE {table} (v int)")
        try:
            async with tether.db.transaction(pool) as conn:
                await conn.execute(f"INSERT INTO {table} VALUES (1)")
                (holder,) = pool.holders()
                line = holder.site.rsplit(":", 1)[1]

            async def failing_block() -> None:
                async with tether.db.transaction(pool) as conn:
                    await conn.execute(f"INSERT INTO {table} VALUES (2)")
                    raise RuntimeError

            with pytest.raises(RuntimeError):
                await failing_block()
            async with pool.acquire() as conn:
                rows = await (
                    conn.fetch(f"SELECT v FROM {table}")
                    if driver == "asyncpg"
                    else (await conn.execute(f"SELECT v FROM {table}")).fetchall()
                )
        finally:
            async with pool.acquire() as conn:
                await conn.execute(f"DROP TABLE {table}")
        stats = pool.stats()
    assert [tuple(row) for row in rows] == [(1,)]
    assert holder.site.startswith("tests/test_db_async.py:")
    source = linecache.getline(__file__, int(line))
    assert "tether.db.transaction(pool) as conn" in source
    assert (stats.in_use, stats.broken) == (0, 0)


async def test_an_inner_block_that_swallowed_a_failure_undoes_itself_and_the_outer_goes_on(
    case: Case,
) -> None:
    """An inner block whose failed statement was swallowed cannot release its savepoint:
    it rolls back to it and raises; the outer transaction is usable again and commits."""
    swallowed: list[str] = []

    async def inner_block() -> None:
        async with tether.db.transaction(case.conn):
            await case.insert(2)
            try:
                await case.execute("SELECT 1 / 0")
            except Exception as exc:
                swallowed.append(type(exc).__name__)

    async with tether.db.transaction(case.conn):
        await case.insert(1)
        with pytest.raises(Exception, match="current transaction is aborted") as caught:
            await inner_block()
        await case.insert(3)
    division = "DivisionByZeroError" if case.kind == "asyncpg" else "DivisionByZero"
    assert "InFailed" in type(caught.value).__name__
    assert (swallowed, await case.committed()) == ([division], [1, 3])


@pytest.mark.parametrize("driver", ["asyncpg", "psycopg"])
async def test_a_failed_commit_through_a_pool_returns_the_connection(
    postgres_dsn: str, driver: str
) -> None:
    """``async with transaction(pool)``: a commit refused by a deferred constraint raises,
    and the connection goes back to the pool, clean, to be reused."""
    table = f"tether_tx_{uuid.uuid4().hex[:12]}"
    pool = tether.postgres.async_pool(postgres_dsn, driver=driver, max_size=1)  # type: ignore[call-overload]
    async with pool:
        async with pool.acquire() as conn:
            await conn.execute(f"CREATE TABLE {table} (v int UNIQUE DEFERRABLE INITIALLY DEFERRED)")

        async def duplicate() -> None:
            async with tether.db.transaction(pool) as conn:
                await conn.execute(f"INSERT INTO {table} VALUES (1), (1)")

        try:
            with pytest.raises(Exception, match="duplicate key") as caught:
                await duplicate()
        finally:
            async with pool.acquire() as conn:
                await conn.execute(f"DROP TABLE {table}")
        stats = pool.stats()
    assert "Unique" in type(caught.value).__name__
    assert (stats.in_use, stats.created, stats.broken) == (0, 1, 0)


@pytest.mark.parametrize("driver", ["asyncpg", "psycopg"])
async def test_a_begin_that_fails_on_a_dead_connection_gives_it_up(
    postgres_dsn: str, driver: str
) -> None:
    """A transaction whose BEGIN finds the connection's backend gone raises the driver's
    error; the pool destroys that connection and the next transaction gets a new one."""
    pool = tether.postgres.async_pool(postgres_dsn, driver=driver, max_size=1, check_after=60)  # type: ignore[call-overload]
    async with pool:
        async with pool.acquire() as conn:
            pid = conn.get_server_pid() if driver == "asyncpg" else conn.info.backend_pid
        async with await psycopg.AsyncConnection.connect(postgres_dsn, autocommit=True) as admin:
            await admin.execute("SELECT pg_terminate_backend(%s)", (pid,))

        async def begin() -> None:
            async with tether.db.transaction(pool):
                pass  # never reached: BEGIN fails

        with pytest.raises(Exception) as caught:  # noqa: PT011 - the driver's own, checked below
            await begin()
        async with tether.db.transaction(pool) as conn:
            assert (
                await (conn.fetchval("SELECT 1") if driver == "asyncpg" else _fetch_one(conn)) == 1
            )
        stats = pool.stats()
    assert type(caught.value).__name__ in (
        "AdminShutdown",
        "OperationalError",
        "ConnectionDoesNotExistError",
        "InterfaceError",
        # asyncpg, when the server's FATAL arrives as BEGIN is being sent
        "InternalClientError",
    )
    assert (stats.broken, stats.created) == (1, 2)


async def _fetch_one(conn: Any) -> Any:
    cursor = await conn.execute("SELECT 1")
    row = await cursor.fetchone()
    return row[0]


async def test_connections_of_asyncpgs_own_pool_work_too(postgres_dsn: str) -> None:
    """The proxy objects asyncpg's own pool hands out are asyncpg connections too."""
    import asyncpg

    async with asyncpg.create_pool(postgres_dsn, min_size=1, max_size=1) as pool:
        async with pool.acquire() as conn:
            async with tether.db.transaction(conn):
                await conn.execute("CREATE TEMP TABLE scratch (v int)")
                inside = conn.is_in_transaction()
            with pytest.raises(LookupError):
                await _insert_then_fail(conn)
            rows = await conn.fetch("SELECT v FROM scratch")
    assert (inside, rows) == (True, [])


async def _insert_then_fail(conn: Any) -> None:
    async with tether.db.transaction(conn):
        await conn.execute("INSERT INTO scratch VALUES (1)")
        raise LookupError


# --- a cancellation while rolling back after the block's own error -----------------------

LANDINGS = {"task.cancel()": "cancelled", "asyncio.timeout": TimeoutError}


async def _cancel_during_the_rollback(
    transaction: Callable[[], Any], table: str, how: str
) -> tuple[list[BaseException], object]:
    """Run, in a task of its own, a block that inserts a row and raises, then is cancelled
    (``how``) while its rollback runs, and the code around the block, which catches the
    block's error and goes on. Return the errors it caught, and how the task ended."""
    block_error = LookupError("the block's own error")
    caught: list[BaseException] = []

    async def work() -> None:
        task = asyncio.current_task()
        assert task is not None
        async with asyncio.timeout(None) as deadline:
            try:
                async with transaction() as conn:
                    await conn.execute(f"INSERT INTO {table} (v) VALUES (1)")
                    # Either lands when the task next waits: for the shielded rollback.
                    if how == "task.cancel()":
                        asyncio.get_running_loop().call_soon(task.cancel)
                    else:
                        deadline.reschedule(asyncio.get_running_loop().time())
                    raise block_error
            except LookupError as exc:
                caught.append(exc)
            await asyncio.sleep(1)  # failure guard: the cancellation cuts this short

    task = asyncio.create_task(work())
    with anyio.fail_after(GUARD):
        await asyncio.wait([task])
    assert caught == [block_error]
    return caught, "cancelled" if task.cancelled() else type(task.exception())


@pytest.mark.parametrize("how", list(LANDINGS))
async def test_a_cancellation_during_the_rollback_after_the_blocks_error_is_not_lost(
    case: Case, how: str
) -> None:
    """The block raised, and the task is cancelled while the rollback runs: the rollback
    ends, the block's error propagates (it wins), and the cancellation is not lost: the
    code that caught the error is cancelled at its next await (``asyncio.timeout`` raises
    its TimeoutError) instead of running on."""
    _, ended = await _cancel_during_the_rollback(
        lambda: tether.db.transaction(case.conn), case.table, how
    )
    assert ended == LANDINGS[how]
    assert (await case.committed(), case.in_transaction()) == ([], False)
    async with tether.db.transaction(case.conn):
        await case.insert(2)
    assert await case.committed() == [2]


@pytest.mark.parametrize("how", list(LANDINGS))
@pytest.mark.parametrize("driver", ["asyncpg", "psycopg"])
async def test_a_cancellation_during_the_rollback_through_a_pool_is_not_lost(
    postgres_dsn: str, driver: str, how: str
) -> None:
    """The same for ``transaction(pool)``: the connection goes back to the pool first, and
    the cancellation reaches the task afterwards."""
    table = f"tether_tx_{uuid.uuid4().hex[:12]}"
    pool = tether.postgres.async_pool(postgres_dsn, driver=driver, max_size=1)  # type: ignore[call-overload]
    async with (
        pool,
        await psycopg.AsyncConnection.connect(postgres_dsn, autocommit=True) as observer,
    ):
        await observer.execute(f"CREATE TABLE {table} (v int)")
        try:
            _, ended = await _cancel_during_the_rollback(
                lambda: tether.db.transaction(pool), table, how
            )
            cursor = await observer.execute(f"SELECT count(*) FROM {table}")
            committed = await cursor.fetchone()
        finally:
            await observer.execute(f"DROP TABLE {table}")
        stats = pool.stats()
    assert (ended, committed) == (LANDINGS[how], (0,))
    assert (stats.in_use, stats.idle, stats.broken) == (0, 1, 0)


async def test_a_cancellation_during_the_rollback_after_a_failed_release_is_not_lost(
    postgres_dsn: str,
) -> None:
    """The same when the end of the block fails: an inner block that swallowed a failed
    statement cannot release its savepoint and rolls back to it, and the task is cancelled
    meanwhile. The release's error propagates; the cancellation follows it."""
    import asyncpg

    conn = await asyncpg.connect(postgres_dsn)
    caught: list[str] = []

    async def work() -> None:
        task = asyncio.current_task()
        assert task is not None

        def cancel_once_the_release_failed(query: Any) -> None:
            # asyncpg calls this soon after the query, when the task already waits for
            # the shielded rollback to its savepoint.
            if query.query.startswith("RELEASE") and query.exception is not None:
                task.cancel()

        conn.add_query_logger(cancel_once_the_release_failed)
        async with tether.db.transaction(conn):
            try:
                async with tether.db.transaction(conn):
                    with contextlib.suppress(asyncpg.DivisionByZeroError):
                        await conn.execute("SELECT 1 / 0")
            except asyncpg.InFailedSQLTransactionError as exc:
                caught.append(type(exc).__name__)
            conn.remove_query_logger(cancel_once_the_release_failed)
            await asyncio.sleep(1)  # failure guard: the cancellation cuts this short

    try:
        task = asyncio.create_task(work())
        with anyio.fail_after(GUARD):
            await asyncio.wait([task])
        in_transaction = conn.is_in_transaction()
    finally:
        await conn.close()
    assert (caught, task.cancelled(), in_transaction) == (
        ["InFailedSQLTransactionError"],
        True,
        False,
    )


# --- a cancellation while BEGIN is on its way ---------------------------------------------


@pytest.mark.parametrize("case", ["asyncpg", "psycopg-autocommit"], indirect=True)
async def test_a_cancellation_while_begin_is_sent_leaves_no_transaction_open(
    case: Case,
) -> None:
    """Cancelled while its BEGIN is on its way, the block is never entered, but both
    drivers let BEGIN finish on the server: the block rolls back the transaction BEGIN
    began. Left open, it would take in the connection's next statements, and the next
    block would take it for the caller's and only make a savepoint: its rows would never
    be committed."""
    entered: list[bool] = []

    async def block() -> None:
        async with tether.db.transaction(case.conn):
            entered.append(True)

    with anyio.fail_after(GUARD):
        task = asyncio.create_task(block())
        await asyncio.sleep(0)  # the task sends BEGIN and waits for the answer
        task.cancel()
        await asyncio.wait([task])
        await case.execute("SELECT 1")  # whatever the driver had left to finish is done
    assert (task.cancelled(), entered, case.in_transaction()) == (True, [], False)
    assert await case.backend_state() == "idle"
    async with tether.db.transaction(case.conn):
        await case.insert(1)
    assert await case.committed() == [1]


@pytest.mark.parametrize("driver", ["asyncpg", "psycopg"])
async def test_a_cancellation_while_a_pool_transaction_begins_leaves_a_clean_connection(
    postgres_dsn: str, driver: str
) -> None:
    """The same through ``transaction(pool)``, cancelled at each of its first awaits: the
    connection goes back to the pool out of any transaction, and is not destroyed."""
    pool = tether.postgres.async_pool(postgres_dsn, driver=driver, max_size=1)  # type: ignore[call-overload]
    async with pool:

        async def block() -> None:
            async with tether.db.transaction(pool):
                await asyncio.sleep(GUARD)  # failure guard: cancelled if ever entered

        for awaits in range(1, 4):
            task = asyncio.create_task(block())
            for _ in range(awaits):
                await asyncio.sleep(0)
            task.cancel()
            with anyio.fail_after(GUARD):
                await asyncio.wait([task])
            async with pool.acquire() as conn:
                in_transaction = (
                    conn.is_in_transaction()
                    if driver == "asyncpg"
                    else conn.info.transaction_status != 0
                )
            assert (task.cancelled(), in_transaction) == (True, False)
        stats = pool.stats()
    assert (stats.created, stats.broken) == (1, 0)
