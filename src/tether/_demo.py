"""``tether demo``: a guided tour of tether on a real SQLite file, in plain words.

The tour is a list of steps (:data:`STEPS`), each a small function that receives the
shared :class:`Tour` (a temporary working directory, the database path, and ``say`` for
output) and shows one capability. A new capability adds its own step to the list. The
whole tour runs inside a :class:`~tether.Scope` that owns the temporary directory, so
the last thing it shows is that scope cleaning up after itself.

Only the standard library is used, so the demo runs on a core install. With ``--dsn``
the pool step runs on PostgreSQL instead (that needs ``tether[postgres]``).
"""

from __future__ import annotations

import json
import logging
import sqlite3
import sys
import tempfile
import threading
import uuid
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, closing, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO, TypeVar, final

from . import db, sqlite
from ._files import atomic_write
from ._pool import Pool
from ._scope import Scope, cleanup_errors
from ._stream import StreamSnapshot, accumulate
from ._suppress import suppress
from ._timing import format_seconds, timed

__all__ = ["STEPS", "DatabaseUnusable", "Step", "Tour", "check_database", "run_demo"]

T = TypeVar("T")

INDENT = "   "


@final
class Tour:
    """What every step of the tour shares."""

    def __init__(
        self, workdir: Path, out: TextIO, logger: logging.Logger, dsn: str | None = None
    ) -> None:
        self.workdir = workdir
        self.database = workdir / "shop.db"
        self.out = out
        self.logger = logger
        """A logger whose records are printed as part of the tour."""
        self.dsn = dsn
        """A PostgreSQL URL for the pool steps, or ``None`` to run them on SQLite."""

    def say(self, text: str = "", *, level: int = 1) -> None:
        """Print one line of the tour, indented under its step."""
        self.out.write(f"{INDENT * level}{text}\n" if text else "\n")

    def connect(self) -> sqlite3.Connection:
        """Open a connection to the tour's database."""
        return sqlite3.connect(self.database)

    def pool(self, **options: Any) -> Pool[Any]:
        """A connection pool on the tour's database (PostgreSQL with ``--dsn``)."""
        if self.dsn is None:
            # WAL with synchronous=NORMAL: durable against crashes of the program, and a
            # commit does not wait for the disk.
            return sqlite.pool(
                self.database,
                transaction_mode="IMMEDIATE",
                configure=lambda conn: conn.execute("PRAGMA synchronous = NORMAL"),
                **options,
            )
        from . import postgres  # noqa: PLC0415 - only with --dsn, which needs the extra

        return postgres.pool(self.dsn, **options)


@dataclass(frozen=True, slots=True)
class Step:
    """One step of the tour: a title and the function that shows it."""

    title: str
    run: Callable[[Tour], None]


@contextmanager
def _announced(tour: Tour, cm: AbstractContextManager[T], opened: str, closed: str) -> Iterator[T]:
    """Enter ``cm``, saying so, and say so again once it has been exited."""
    with cm as value:
        tour.say(opened, level=2)
        yield value
    tour.say(closed, level=3)


def lifo_cleanup(tour: Tour) -> None:
    """Open a connection and a file in a scope; they are closed last in, first out."""
    with Scope(name="setup") as scope:
        conn = scope.enter(
            _announced(
                tour,
                closing(tour.connect()),
                f"opened a connection to {tour.database.name}",
                "closed the connection",
            )
        )
        report = scope.enter(
            _announced(
                tour,
                (tour.workdir / "orders.csv").open("w", encoding="utf-8"),
                "opened orders.csv for writing",
                "closed orders.csv (its data is now on disk)",
            )
        )
        scope.callback(tour.say, "ran the callback registered last: 'goodbye'", level=3)
        tour.say("registered a callback to run at the end", level=2)
        with conn:
            conn.execute("CREATE TABLE orders (id INTEGER PRIMARY KEY, customer TEXT, amount REAL)")
            conn.executemany(
                "INSERT INTO orders VALUES (?, ?, ?)",
                [(1, "ada", 12.5), (2, "grace", 30.0), (3, "ada", 7.25)],
            )
        for row in conn.execute("SELECT * FROM orders ORDER BY id"):
            report.write(",".join(map(str, row)) + "\n")
        tour.say("created the table 'orders' with 3 rows and wrote them to orders.csv", level=2)
        tour.say("leaving the scope; the cleanups run in reverse order:", level=2)
    tour.say("every cleanup ran, newest first, and nothing was left open.")


def body_error_wins(tour: Tour) -> None:
    """A failing body and a failing cleanup: the body's error propagates, carrying the other."""

    def upload_audit_log() -> None:
        raise ConnectionError("audit server unreachable (simulated)")

    try:
        with Scope(name="import") as scope:
            conn = scope.enter(closing(tour.connect()), name="connection")
            scope.enter(conn, name="transaction")  # commits on success, rolls back on error
            scope.callback(upload_audit_log, name="upload audit log")
            tour.say(
                "in one transaction: insert order 4, then order 1 again (a duplicate)", level=2
            )
            tour.say(
                "cleanups, newest first: upload the audit log (it fails: the server is "
                "unreachable), end the transaction, close the connection",
                level=2,
            )
            conn.execute("INSERT INTO orders VALUES (4, 'linus', 99.0)")
            conn.execute("INSERT INTO orders VALUES (1, 'ada', 12.5)")
    except sqlite3.IntegrityError as error:
        tour.say(f"the error that came out is the body's own: {_describe(error)}", level=2)
        for cleanup_error in cleanup_errors(error):
            tour.say(
                f"the cleanup's failure is attached to it, not lost: {_describe(cleanup_error)}",
                level=2,
            )
        for note in getattr(error, "__notes__", ()):
            tour.say(f'and its traceback says: "{note}"', level=2)
    with closing(tour.connect()) as conn:
        (count,) = conn.execute("SELECT count(*) FROM orders").fetchone()
    tour.say(
        f"the transaction saw the body's error and rolled back: still {count} orders, no order 4."
    )


def _describe(error: BaseException) -> str:
    return f"{type(error).__name__}: {error}"


def timing_queries(tour: Tour) -> None:
    """Time a few queries with ``timed``; the log lines are printed as they are written."""
    with closing(tour.connect()) as conn:
        with timed("insert 2,000 orders", logger=tour.logger), conn:
            conn.executemany(
                "INSERT INTO orders (customer, amount) VALUES (?, ?)",
                ((f"customer {n % 50}", n % 97 + 0.5) for n in range(2000)),
            )

        @timed("top customers", logger=tour.logger)
        def top_customers() -> list[tuple[str, float]]:
            return conn.execute(
                "SELECT customer, sum(amount) AS total FROM orders "
                "GROUP BY customer ORDER BY total DESC LIMIT 3"
            ).fetchall()

        best = top_customers()
        tour.say(f"the decorated function returned {len(best)} rows; best: {best[0][0]}", level=2)
        with timed("count orders", logger=tour.logger, threshold=1.0) as timer:
            (count,) = conn.execute("SELECT count(*) FROM orders").fetchone()
        tour.say(
            f"counted {count} orders in {format_seconds(timer.elapsed)}: under its 1 s "
            "threshold, so it was not logged",
            level=2,
        )


def suppressing(tour: Tour) -> None:
    """``suppress`` swallows only what it is told to, and keeps and logs it."""
    lock = tour.workdir / "import.lock"
    with suppress(FileNotFoundError, logger=tour.logger) as ignored:
        lock.unlink()
    tour.say(f"the missing lock file was ignored, and kept: {ignored.suppressed!r}", level=2)


def streaming_report(tour: Tour) -> None:
    """Stream rows through ``accumulate``, keeping the text and metrics, then write the
    report atomically: the file is replaced whole, or not at all."""
    closed: list[str] = []

    def csv_lines() -> Iterator[str]:
        with closing(tour.connect()) as conn:
            try:
                query = "SELECT customer, round(sum(amount), 2) FROM orders GROUP BY customer"
                for customer, total in conn.execute(query):
                    yield f"{customer},{total}\n"
            finally:
                closed.append("rows")

    report = tour.workdir / "totals.csv"
    with accumulate(csv_lines()) as stream:
        for _line in stream:
            pass  # a real consumer would send each line on as it comes
    m = stream.metrics
    tour.say(
        f"streamed {m.chunk_count} lines, {m.byte_count} bytes; the source was closed "
        f"({', '.join(closed)}) and the outcome is {stream.outcome.value}",
        level=2,
    )
    with atomic_write(report) as f:
        f.write(stream.content)
    tour.say(f"wrote {report.name} in one piece from the accumulated content", level=2)
    try:
        with atomic_write(report) as f:
            f.write("half a report")
            _fill_the_disk()
    except OSError as error:
        tour.say(f"a second write failed: {error}", level=2)
    intact = report.read_text() == stream.content
    leftovers = [p.name for p in tour.workdir.iterdir() if p.name.endswith(".tmp")]
    tour.say(
        f"{report.name} still holds the first report: {'yes' if intact else 'NO'}; "
        f"temporary files left behind: {len(leftovers)}"
    )


def _fill_the_disk() -> None:
    raise OSError(28, "No space left on device (simulated)")


def abandoned_stream(tour: Tour) -> None:
    """A consumer that stops early still closes the source, exactly once."""
    events: list[str] = []

    def export() -> Iterator[str]:
        try:
            for n in range(1_000_000):
                yield json.dumps({"row": n})
        finally:
            events.append("the source closed")

    def done(snapshot: StreamSnapshot[str, str]) -> None:
        events.append(f"on_complete saw {snapshot.outcome.value} after {len(snapshot.chunks)}")

    with accumulate(export(), on_complete=done) as stream:
        for line in stream:
            if line.endswith("2}"):
                tour.say("the consumer found what it wanted after 3 rows and stopped", level=2)
                break
    for event in events:
        tour.say(event, level=2)
    tour.say(f"1,000,000 rows were never produced: the source ran {len(stream.chunks)}.")


class OutOfStock(Exception):
    """A sale of an item that has run out (raised inside the sale's transaction)."""


WORKERS = 8
SALES_PER_WORKER = 25
CAKES = 5
TEA = 1000


def pooled_workers(tour: Tour) -> None:
    """Worker threads share a small pool; each sale is one transaction, and a sale that
    fails half-way is rolled back."""
    postgres = tour.dsn is not None
    suffix = f"_{uuid.uuid4().hex[:8]}" if postgres else ""
    names = {
        "stock": f"tether_demo_stock{suffix}",
        "sales": f"tether_demo_sales{suffix}",
        "mark": "%s" if postgres else "?",  # the drivers' parameter markers
    }

    def sql(template: str) -> str:
        """A statement on this step's own tables (no user input ever goes in)."""
        return template.format_map(names)

    with Scope(name="pool step") as scope:
        pool = scope.enter(tour.pool(max_size=3, name="shop"))
        where = "PostgreSQL" if postgres else f"SQLite ({tour.database.name}, WAL mode)"
        tour.say(f"{WORKERS} worker threads share a pool of 3 connections to {where}", level=2)
        with db.transaction(pool) as conn:
            conn.execute(sql("CREATE TABLE {stock} (item TEXT PRIMARY KEY, units INTEGER)"))
            conn.execute(sql("CREATE TABLE {sales} (worker INTEGER, item TEXT)"))
            conn.execute(
                sql("INSERT INTO {stock} VALUES ({mark}, {mark}), ({mark}, {mark})"),
                ("tea", TEA, "cake", CAKES),
            )
        if postgres:
            scope.callback(_drop, pool, names["stock"], names["sales"])

        def sell(worker: int, item: str) -> None:
            with db.transaction(pool) as conn:
                conn.execute(
                    sql("UPDATE {stock} SET units = units - 1 WHERE item = {mark}"), (item,)
                )
                conn.execute(sql("INSERT INTO {sales} VALUES ({mark}, {mark})"), (worker, item))
                (left,) = conn.execute(
                    sql("SELECT units FROM {stock} WHERE item = {mark}"), (item,)
                ).fetchone()
                if left < 0:
                    raise OutOfStock(item)

        outcomes = {"committed": 0, "rolled back": 0}
        lock = threading.Lock()

        def work(worker: int) -> None:
            for sale in range(SALES_PER_WORKER):
                try:
                    sell(worker, "cake" if sale % 5 == 0 else "tea")
                    outcome = "committed"
                except OutOfStock:
                    outcome = "rolled back"
                with lock:
                    outcomes[outcome] += 1

        tour.say(
            f"each sells {SALES_PER_WORKER} items, one transaction per sale; only 5 cakes "
            "are in stock, so most cake sales fail half-way and roll back",
            level=2,
        )
        threads = [threading.Thread(target=work, args=(n,)) for n in range(WORKERS)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        tour.say(
            f"{WORKERS * SALES_PER_WORKER} transactions: {outcomes['committed']} committed, "
            f"{outcomes['rolled back']} rolled back",
            level=2,
        )
        with pool.acquire() as conn:
            left = dict(conn.execute(sql("SELECT item, units FROM {stock}")).fetchall())
            sold = dict(
                conn.execute(sql("SELECT item, count(*) FROM {sales} GROUP BY item")).fetchall()
            )
        for item, start in (("tea", TEA), ("cake", CAKES)):
            tour.say(
                f"{item}: {start} in stock, {sold.get(item, 0)} sold, {left[item]} left "
                f"({'adds up' if sold.get(item, 0) + left[item] == start else 'DOES NOT ADD UP'})",
                level=2,
            )
        stats = pool.stats()
        tour.say(
            f"pool stats: {stats.created} connections made for {stats.acquired} acquisitions, "
            f"{stats.in_use} in use now, longest wait {stats.wait.max * 1000:.1f} ms, "
            f"{stats.timeouts} timeouts",
            level=2,
        )
    tour.say("the pool closed with the step's scope: every connection was returned and closed.")


def _drop(pool: Pool[Any], *tables: str) -> None:
    with pool.acquire() as conn:
        for table in tables:
            conn.execute(f"DROP TABLE {table}")


STEPS: list[Step] = [
    Step("A scope closes everything, last in first out", lifo_cleanup),
    Step("The body's error wins; a failed cleanup is attached, not lost", body_error_wins),
    Step("Timing queries with tether.timed", timing_queries),
    Step("Suppressing an expected error without losing it", suppressing),
    Step("A connection pool shared by worker threads, with transactions", pooled_workers),
    Step("A streamed report, written atomically", streaming_report),
    Step("A stream abandoned early is still closed", abandoned_stream),
]
"""The tour, in order. Each capability of tether adds its own step here."""


class DatabaseUnusable(Exception):
    """The database given with ``--dsn`` cannot be used; the message says why, in one line.

    Like a bad option, this is the caller's mistake, not the demo's: the command reports it
    in one line rather than with a traceback.
    """


def check_database(dsn: str) -> None:
    """Connect to ``dsn`` once, so that a bad URL fails before the tour starts.

    Raises:
        DatabaseUnusable: the URL is malformed, the server cannot be reached or refuses
            the connection, or the PostgreSQL extra is not installed. The original error
            is the ``__cause__``.
    """
    try:
        from . import postgres  # noqa: PLC0415 - only with --dsn, which needs the extra

        with postgres.pool(dsn, max_size=1, name="shop") as pool, pool.acquire():
            pass
    except Exception as error:
        # Whatever went wrong, the URL is what the user must fix. The reason is kept to
        # one line (libpq's messages span several); the URL itself is not repeated, as
        # it may hold a password.
        reason = " ".join(str(error).split()) or type(error).__name__
        raise DatabaseUnusable(f"cannot use the database given with --dsn: {reason}") from error


class _PlainFormatter(logging.Formatter):
    """Log lines for people following the tour: the message, no traceback."""

    def formatException(self, ei: object) -> str:  # noqa: N802 - overrides logging's name
        return ""


def run_demo(out: TextIO, dsn: str | None = None) -> int:
    """Run every step of the tour, printing to ``out``.

    Args:
        out: where the tour is printed.
        dsn: a PostgreSQL URL: the pool step runs there instead of on SQLite.

    Returns:
        The exit status: 0.

    Raises:
        DatabaseUnusable: ``dsn`` cannot be used (checked before the tour starts).
    """
    if dsn is not None:
        check_database(dsn)
    out.write("tether demo: deterministic cleanup, shown on a real SQLite database\n")
    if dsn is not None:
        out.write("the pool step runs on PostgreSQL\n")
    with Scope(name="demo") as scope:
        workdir = Path(scope.enter(tempfile.TemporaryDirectory(prefix="tether-demo-")))
        logger = scope.enter(_printing_logger(out))
        tour = Tour(workdir, out, logger, dsn)
        out.write(f"working in a temporary directory: {workdir}\n")
        for number, step in enumerate(STEPS, start=1):
            out.write(f"\n{number}. {step.title}\n")
            step.run(tour)
    gone = "yes" if not workdir.exists() else "NO"
    out.write(f"\nThe demo's own scope removed the temporary directory: {gone}.\n")
    out.write("Done: every resource opened above was released exactly once.\n")
    return 0


class _TourHandler(logging.StreamHandler[TextIO]):
    """Prints the tour's log records; a reader that went away ends the tour.

    ``logging`` reports a failed write on stderr and carries on, which suits a log but not
    a tour whose reader has left (``tether demo | head``): the ``BrokenPipeError``
    propagates instead, as from any other line of the tour, and the command ends quietly.
    """

    def handleError(self, record: logging.LogRecord) -> None:  # noqa: N802 - logging's name
        error = sys.exc_info()[1]
        if isinstance(error, BrokenPipeError):
            raise error
        super().handleError(record)


@contextmanager
def _printing_logger(out: TextIO) -> Iterator[logging.Logger]:
    """The ``tether.demo`` logger, printing to ``out`` while the tour runs, then restored."""
    logger = logging.getLogger("tether.demo")
    handler = _TourHandler(out)
    handler.setFormatter(_PlainFormatter(f"{INDENT * 2}log: %(message)s"))
    saved = logger.level, logger.propagate
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    try:
        yield logger
    finally:
        logger.removeHandler(handler)
        logger.setLevel(saved[0])
        logger.propagate = saved[1]
