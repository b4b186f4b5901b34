"""timed: elapsed time of a block or of each call, logged through logging or structlog."""

from __future__ import annotations

import asyncio
import logging
import math
import sys
from collections.abc import AsyncGenerator, AsyncIterator, Generator, Iterator

import pytest
import structlog
from structlog.testing import capture_logs

import tether
from tether import Timer, timed
from tether._timing import format_seconds


class FakeClock:
    """Stands in for ``time.perf_counter`` so durations are exact and tests never sleep."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> FakeClock:
    fake = FakeClock()
    monkeypatch.setattr(tether._timing, "perf_counter", fake)
    return fake


@pytest.fixture
def records(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    """Captures records logged through ``tether.timing`` at DEBUG and above."""
    caplog.set_level(logging.DEBUG, logger="tether.timing")
    return caplog


# --- the handle ----------------------------------------------------------------------------


def test_elapsed_runs_inside_the_block_and_is_final_after_it(clock: FakeClock) -> None:
    """Inside the block ``elapsed`` is the running time; after it, the final time."""
    timer = timed("load")
    before = (timer.elapsed, timer.ok)
    with timer:
        clock.advance(0.5)
        during = timer.elapsed
        clock.advance(1.0)
    clock.advance(7.0)  # the clock runs on; the final time does not
    assert before == (0.0, None)
    assert (during, timer.elapsed, timer.ok, timer.name) == (0.5, 1.5, True, "load")


def test_with_statement_returns_the_handle() -> None:
    """``with timed(...) as t`` binds the Timer itself."""
    timer = timed("x")
    with timer as bound:
        pass
    assert bound is timer
    assert isinstance(bound, Timer)


def test_exceptions_propagate_unchanged_and_mark_the_run_failed(clock: FakeClock) -> None:
    """The block's exception passes through as itself; ``ok`` becomes False."""
    error = ValueError("boom")
    timer = timed("load")

    def body() -> None:
        with timer:
            clock.advance(0.25)
            raise error

    with pytest.raises(ValueError, match="boom") as caught:
        body()
    assert caught.value is error
    assert (timer.ok, timer.elapsed) == (False, 0.25)


def test_timer_is_entered_by_one_block_at_a_time() -> None:
    """Entering a running timer again is an error; once finished it can run again."""
    timer = timed("once")
    with timer, pytest.raises(RuntimeError, match="'once' is already running"), timer:
        pass  # pragma: no cover - never reached
    with timer:
        pass
    assert timer.ok is True


def test_repr_shows_the_state(clock: FakeClock) -> None:
    """The repr names the timer and shows whether it runs and how it ended."""
    timer = timed("load")
    with timer:
        clock.advance(0.002)
        assert repr(timer) == "<Timer 'load' running, elapsed 2.0 ms>"
    assert repr(timer) == "<Timer 'load' ok=True, elapsed 2.0 ms>"


# --- logging -----------------------------------------------------------------------------------


def test_logs_name_duration_and_ok_through_stdlib_logging(
    clock: FakeClock, records: pytest.LogCaptureFixture
) -> None:
    """A successful run logs ``name: ok in <duration>`` at INFO on ``tether.timing``."""
    with timed("load users"):
        clock.advance(0.0123)
    assert [(r.name, r.levelno, r.getMessage()) for r in records.records] == [
        ("tether.timing", logging.INFO, "load users: ok in 12.3 ms")
    ]
    facts = records.records[0].__dict__
    assert (facts["timer"], facts["elapsed"], facts["ok"]) == ("load users", 0.0123, True)


def test_logs_a_failure_with_the_error_type(
    clock: FakeClock, records: pytest.LogCaptureFixture
) -> None:
    """A failed run logs ``name: failed (ErrorType) after <duration>``."""

    def body() -> None:
        with timed("lookup"):
            clock.advance(2.5)
            raise KeyError("missing")

    with pytest.raises(KeyError, match="missing"):
        body()
    assert [r.getMessage() for r in records.records] == ["lookup: failed (KeyError) after 2.50 s"]
    assert (records.records[0].__dict__["ok"], records.records[0].__dict__["error"]) == (
        False,
        "KeyError",
    )


def test_logs_to_the_given_logger_and_level(
    clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    """``logger`` and ``level`` choose where and how loud the record is."""
    caplog.set_level(logging.DEBUG, logger="app")
    with timed("step", logger=logging.getLogger("app"), level=logging.WARNING):
        clock.advance(12.0)
    assert [(r.name, r.levelname, r.getMessage()) for r in caplog.records] == [
        ("app", "WARNING", "step: ok in 12.0 s")
    ]


def test_logs_through_a_logger_adapter(clock: FakeClock, caplog: pytest.LogCaptureFixture) -> None:
    """A ``logging.LoggerAdapter`` is a stdlib logger too."""
    caplog.set_level(logging.INFO, logger="adapted")
    adapter = logging.LoggerAdapter(logging.getLogger("adapted"), {"request": "r1"})
    with timed("step", logger=adapter):
        clock.advance(0.0000004)
    assert [(r.getMessage(), r.__dict__["request"]) for r in caplog.records] == [
        ("step: ok in 0 µs", "r1")
    ]


def test_nothing_is_logged_below_the_logger_level(
    clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    """A record the logger would drop is not even built."""
    caplog.set_level(logging.INFO, logger="tether.timing")
    timer = timed("quiet", level=logging.DEBUG)
    with timer:
        clock.advance(1)
    assert caplog.records == []
    assert timer.elapsed == 1


def test_logs_structured_fields_through_structlog(clock: FakeClock) -> None:
    """A structlog logger gets the event ``timed`` with the facts as fields."""
    logger = structlog.get_logger()

    def failing() -> None:
        with timed("query", logger=logger):
            clock.advance(0.25)
            raise OSError("gone")

    with capture_logs() as events:
        with timed("query", logger=logger):
            clock.advance(0.5)
        with pytest.raises(OSError, match="gone"):
            failing()
    assert events == [
        {"event": "timed", "timer": "query", "elapsed": 0.5, "ok": True, "log_level": "info"},
        {
            "event": "timed",
            "timer": "query",
            "elapsed": 0.25,
            "ok": False,
            "error": "OSError",
            "log_level": "info",
        },
    ]


def test_threshold_logs_only_slow_runs(clock: FakeClock, records: pytest.LogCaptureFixture) -> None:
    """With ``threshold``, runs faster than it are not logged; ones at least as slow are."""
    for seconds in (0.05, 0.1, 0.3):
        with timed(f"run {seconds}", threshold=0.1):
            clock.advance(seconds)
    assert [r.getMessage() for r in records.records] == [
        "run 0.1: ok in 100.0 ms",
        "run 0.3: ok in 300.0 ms",
    ]


# --- decorator ---------------------------------------------------------------------------------


def test_decorator_times_each_sync_call_separately(
    clock: FakeClock, records: pytest.LogCaptureFixture
) -> None:
    """Each call of a decorated function is timed and logged on its own."""

    @timed("double")
    def double(value: int, *, pause: float) -> int:
        """Double a value."""
        clock.advance(pause)
        return value * 2

    assert (double(2, pause=0.5), double(3, pause=1.5)) == (4, 6)
    assert [r.getMessage() for r in records.records] == [
        "double: ok in 500.0 ms",
        "double: ok in 1.50 s",
    ]
    assert (double.__name__, double.__doc__) == ("double", "Double a value.")


def test_decorator_times_each_async_call_until_it_finishes(
    clock: FakeClock, records: pytest.LogCaptureFixture
) -> None:
    """An ``async def`` is timed from the start of the call to the end of the coroutine."""

    @timed("fetch")
    async def fetch(pause: float) -> str:
        await asyncio.sleep(0)
        clock.advance(pause)
        return "data"

    async def main() -> list[str]:
        return [await fetch(0.25), await fetch(0.75)]

    assert asyncio.run(main()) == ["data", "data"]
    assert [r.getMessage() for r in records.records] == [
        "fetch: ok in 250.0 ms",
        "fetch: ok in 750.0 ms",
    ]


async def test_decorated_async_function_failure_propagates(
    clock: FakeClock, records: pytest.LogCaptureFixture
) -> None:
    """A decorated coroutine's exception passes through and is logged as a failure."""
    error = LookupError("nope")

    @timed("lookup")
    async def lookup() -> None:
        clock.advance(0.001)
        raise error

    with pytest.raises(LookupError) as caught:
        await lookup()
    assert caught.value is error
    assert [r.getMessage() for r in records.records] == [
        "lookup: failed (LookupError) after 1.0 ms"
    ]


def test_decorated_generator_is_timed_over_its_whole_iteration(
    clock: FakeClock, records: pytest.LogCaptureFixture
) -> None:
    """A generator function's run is its iteration, from the first ``next()`` to its end:
    creating the generator logs nothing, and an error raised while iterating is a failure."""

    @timed("rows")
    def rows(count: int) -> Iterator[int]:
        """Produce rows."""
        for row in range(count):
            clock.advance(0.25)
            yield row
        if count > 1:
            raise RuntimeError("failed while iterating")

    created = rows(1)
    clock.advance(5)  # before the first next(): not part of the run
    assert records.records == []
    assert list(created) == [0]
    with pytest.raises(RuntimeError, match="failed while iterating"):
        list(rows(2))
    assert [r.getMessage() for r in records.records] == [
        "rows: ok in 250.0 ms",
        "rows: failed (RuntimeError) after 500.0 ms",
    ]
    assert (rows.__name__, rows.__doc__) == ("rows", "Produce rows.")


def test_decorated_generator_forwards_send_throw_and_close(
    clock: FakeClock, records: pytest.LogCaptureFixture
) -> None:
    """``send``, ``throw`` and ``close`` reach the generator as though undecorated; closing
    it before its end (a consumer that stops early) is not a failure."""
    seen: list[object] = []

    @timed("echo")
    def echo() -> Generator[int, str, str]:
        try:
            while True:
                try:
                    seen.append((yield len(seen)))
                except KeyError as error:
                    seen.append(error)
        finally:
            clock.advance(1)
            seen.append("closed")

    generator = echo()
    assert next(generator) == 0
    assert generator.send("a") == 1
    assert isinstance(generator.throw(KeyError("k")), int)
    generator.close()
    assert [type(item).__name__ if isinstance(item, BaseException) else item for item in seen] == [
        "a",
        "KeyError",
        "closed",
    ]
    assert [r.getMessage() for r in records.records] == ["echo: ok in 1.00 s"]

    @timed("returns")
    def returns() -> Generator[int, None, str]:
        yield 1
        return "result"

    def delegate() -> Generator[int, None, str]:
        return (yield from returns())

    delegating = delegate()
    next(delegating)
    with pytest.raises(StopIteration) as stopped:
        next(delegating)
    assert stopped.value.value == "result"


def test_decorated_async_generator_is_timed_over_its_whole_iteration(
    clock: FakeClock, records: pytest.LogCaptureFixture
) -> None:
    """The same for an async generator function: the whole ``async for`` is the run, and
    ``asend``, ``athrow`` and ``aclose`` reach the generator."""
    seen: list[object] = []

    @timed("arows")
    async def arows(count: int) -> AsyncIterator[int]:
        for row in range(count):
            await asyncio.sleep(0)
            clock.advance(0.25)
            yield row
        if count > 1:
            raise RuntimeError("failed while iterating")

    @timed("aecho")
    async def aecho() -> AsyncGenerator[int, str]:
        try:
            while True:
                try:
                    seen.append((yield len(seen)))
                except KeyError as error:
                    seen.append(type(error).__name__)
        finally:
            await asyncio.sleep(0)
            clock.advance(1)
            seen.append("closed")

    async def collect(rows: AsyncIterator[int], into: list[int]) -> None:
        async for row in rows:
            into.append(row)  # noqa: PERF401 - keeps the rows got before the error

    async def main() -> list[int]:
        rows: list[int] = []
        await collect(arows(1), rows)
        with pytest.raises(RuntimeError, match="failed while iterating"):
            await collect(arows(2), rows)
        generator = aecho()
        assert await generator.asend(None) == 0  # type: ignore[arg-type]
        assert await generator.asend("a") == 1
        assert await generator.athrow(KeyError("k")) == 2
        await generator.aclose()
        return rows

    assert asyncio.run(main()) == [0, 0, 1]
    assert seen == ["a", "KeyError", "closed"]
    assert [r.getMessage() for r in records.records] == [
        "arows: ok in 250.0 ms",
        "arows: failed (RuntimeError) after 500.0 ms",
        "aecho: ok in 1.00 s",
    ]


def test_records_point_at_the_users_code(records: pytest.LogCaptureFixture) -> None:
    """A record's file and line are where the user's block ended or the call was made,
    not tether's own code."""

    @timed("call")
    def call() -> None:
        pass

    line = sys._getframe().f_lineno + 1
    with timed("block"):
        pass
    call()
    assert [(r.filename, r.lineno) for r in records.records] == [
        ("test_timing.py", line),
        ("test_timing.py", line + 2),
    ]


def test_logger_adapter_records_carry_the_facts_and_its_own_extra(
    clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    """Through a ``LoggerAdapter``, the record has tether's facts beside the adapter's own
    ``extra`` (which ``LoggerAdapter.process`` would otherwise replace them with)."""
    caplog.set_level(logging.INFO, logger="adapted.facts")
    adapter = logging.LoggerAdapter(logging.getLogger("adapted.facts"), {"request": "r1"})

    def failing() -> None:
        with timed("step", logger=adapter):
            clock.advance(0.5)
            raise KeyError("k")

    with pytest.raises(KeyError):
        failing()
    record = caplog.records[0]
    facts = {key: record.__dict__.get(key) for key in ("request", "timer", "ok", "error")}
    assert facts == {"request": "r1", "timer": "step", "ok": False, "error": "KeyError"}
    assert record.__dict__.get("elapsed") == 0.5
    assert record.getMessage() == "step: failed (KeyError) after 500.0 ms"


# --- bad input ----------------------------------------------------------------------------------


@pytest.mark.parametrize("threshold", [-0.1, math.nan])
def test_bad_threshold_is_a_value_error(threshold: float) -> None:
    """A negative or NaN threshold is rejected, naming it."""
    with pytest.raises(ValueError, match="'threshold' must be >= 0"):
        timed("x", threshold=threshold)


def test_bad_arguments_are_type_errors() -> None:
    """Wrong types for name, threshold, level or logger fail at the call, naming them."""
    with pytest.raises(TypeError, match="'name' must be a str"):
        timed(b"x")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="'threshold' must be a number"):
        timed("x", threshold="1")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="'level' must be a logging level"):
        timed("x", level="INFO")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"'logger' must be a logging\.Logger"):
        timed("x", logger=print)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="decorates a callable, not int"):
        timed("x")(42)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0.0000004, "0 µs"),
        (0.000850, "850 µs"),
        (0.0123, "12.3 ms"),
        (1.234, "1.23 s"),
        (95, "95.0 s"),
    ],
)
def test_durations_are_formatted_for_people(seconds: float, text: str) -> None:
    """Durations read in the unit that suits them."""
    assert format_seconds(seconds) == text
