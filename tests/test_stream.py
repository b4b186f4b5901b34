"""accumulate(): every outcome on sync and async sources, exactly-once close, metrics, leaks."""

from __future__ import annotations

import asyncio
import gc
import logging
import statistics
import sys
import time
import weakref
from collections.abc import AsyncIterable, AsyncIterator, Iterable, Iterator, Sequence
from typing import TypeVar

import anyio
import pytest

import tether
from tether import StreamOutcome

T = TypeVar("T")

BOTH_BACKENDS = pytest.mark.parametrize("anyio_backend", ["asyncio", "trio"])


class Boom(Exception):
    """The source's own error."""


class Probe:
    """Sources that count how often their cleanup ran, and in which task."""

    def __init__(self, hanging: anyio.Event | None = None) -> None:
        self.finally_count = 0
        self.finally_task: object = None
        self.first_task: object = None
        self.hanging = hanging
        """Set when an ``achunks(hang=True)`` source has sent its items and waits."""

    def chunks(
        self, items: Sequence[str] = ("a", "b", "c"), *, then: BaseException | None = None
    ) -> Iterator[str]:
        try:
            yield from items
            if then is not None:
                raise then
        finally:
            self.finally_count += 1

    async def achunks(
        self,
        items: Sequence[str] = ("a", "b", "c"),
        *,
        then: BaseException | None = None,
        hang: bool = False,
    ) -> AsyncIterator[str]:
        """Yield ``items``; then raise ``then``, or wait forever when ``hang``."""
        try:
            self.first_task = _current_task()
            for item in items:
                yield item
            if then is not None:
                raise then
            if hang:
                if self.hanging is not None:
                    self.hanging.set()
                await anyio.sleep_forever()
        finally:
            self.finally_count += 1
            self.finally_task = _current_task()


def _current_task() -> object:
    try:
        return asyncio.current_task()
    except RuntimeError:
        import trio

        return trio.lowlevel.current_task()


def raise_in_loop(stream: Iterable[object], error: BaseException) -> None:
    """Consume ``stream``, raising ``error`` in the loop body at the first chunk."""
    for _chunk in stream:
        raise error


def break_after_first(stream: Iterable[object]) -> None:
    """Leave a ``for`` loop over ``stream`` at its first chunk."""
    for _chunk in stream:
        break


async def drain(stream: AsyncIterable[T]) -> list[T]:
    """Read an async stream to its end."""
    return [chunk async for chunk in stream]


async def araise_in_loop(stream: AsyncIterable[object], error: BaseException) -> None:
    """Consume ``stream``, raising ``error`` in the loop body at the first chunk."""
    async for _chunk in stream:
        raise error


class ClosableSource:
    """An iterable object with its own close(), like an SDK stream."""

    def __init__(self, items: Sequence[str] = ("x", "y")) -> None:
        self.items = list(items)
        self.closed = 0

    def __iter__(self) -> Iterator[str]:
        return iter(self.items)

    def close(self) -> None:
        self.closed += 1


class AsyncClosableSource:
    """An async iterable object with its own aclose(), like an SDK async stream."""

    def __init__(self, items: Sequence[bytes] = (b"x", b"y")) -> None:
        self.items = list(items)
        self.closed = 0

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[bytes]:
        for item in self.items:
            yield item

    async def aclose(self) -> None:
        self.closed += 1


class Recorder:
    """An on_complete callback that keeps every snapshot it receives."""

    def __init__(self) -> None:
        self.snapshots: list[tether.StreamSnapshot[object, object]] = []

    def __call__(self, snapshot: tether.StreamSnapshot[object, object]) -> None:
        self.snapshots.append(snapshot)

    @property
    def outcomes(self) -> list[StreamOutcome]:
        return [snapshot.outcome for snapshot in self.snapshots]


# -- sync: every outcome ---------------------------------------------------------------


def test_sync_completed() -> None:
    """A source read to its end: COMPLETED, content joined, source closed and reported once."""
    probe, done = Probe(), Recorder()
    stream = tether.accumulate(probe.chunks(), on_complete=done)
    assert list(stream) == ["a", "b", "c"]
    assert (stream.outcome, stream.content, list(stream.chunks)) == (
        StreamOutcome.COMPLETED,
        "abc",
        ["a", "b", "c"],
    )
    assert (probe.finally_count, done.outcomes) == (1, [StreamOutcome.COMPLETED])
    assert (done.snapshots[0].content, done.snapshots[0].chunks) == ("abc", ("a", "b", "c"))
    assert stream.error is None


def test_sync_break_inside_with_closes() -> None:
    """Breaking out of the loop inside ``with`` closes the source at the end of the block."""
    probe, done = Probe(), Recorder()
    with tether.accumulate(probe.chunks(), on_complete=done) as stream:
        for _chunk in stream:
            break
        assert probe.finally_count == 0
    assert (stream.outcome, stream.content, probe.finally_count) == (StreamOutcome.CLOSED, "a", 1)
    assert done.outcomes == [StreamOutcome.CLOSED]


def test_sync_consumer_exception_inside_with_is_closed_and_propagates() -> None:
    """An exception in the loop body closes the source as CLOSED and propagates unchanged."""
    probe, done = Probe(), Recorder()
    error = KeyError("consumer")
    with (
        pytest.raises(KeyError) as caught,
        tether.accumulate(probe.chunks(), on_complete=done) as s,
    ):
        raise_in_loop(s, error)
    assert caught.value is error
    assert (s.outcome, s.error, probe.finally_count) == (StreamOutcome.CLOSED, None, 1)
    assert done.outcomes == [StreamOutcome.CLOSED]


def test_sync_source_exception_is_error_and_propagates_unchanged() -> None:
    """The source's exception reaches the consumer as itself; outcome ERROR, error kept."""
    probe, done = Probe(), Recorder()
    error = Boom("upstream broke")
    stream = tether.accumulate(probe.chunks(then=error), on_complete=done)
    with pytest.raises(Boom) as caught:
        list(stream)
    assert caught.value is error
    assert (stream.chunks, stream.outcome, stream.error) == (
        ["a", "b", "c"],
        StreamOutcome.ERROR,
        error,
    )
    assert (probe.finally_count, done.outcomes) == (1, [StreamOutcome.ERROR])
    assert done.snapshots[0].error is error


def test_sync_interrupt_in_source_is_cancelled() -> None:
    """A KeyboardInterrupt raised while reading ends the stream CANCELLED, not ERROR."""
    probe, done = Probe(), Recorder()
    stream = tether.accumulate(probe.chunks(then=KeyboardInterrupt()), on_complete=done)
    with pytest.raises(KeyboardInterrupt):
        list(stream)
    assert (stream.outcome, stream.error, probe.finally_count) == (StreamOutcome.CANCELLED, None, 1)
    assert done.outcomes == [StreamOutcome.CANCELLED]


def test_sync_interrupt_in_consumer_inside_with_is_cancelled() -> None:
    """A KeyboardInterrupt in the loop body inside ``with`` ends the stream CANCELLED."""
    probe = Probe()
    with pytest.raises(KeyboardInterrupt), tether.accumulate(probe.chunks()) as stream:
        raise_in_loop(stream, KeyboardInterrupt())
    assert (stream.outcome, probe.finally_count) == (StreamOutcome.CANCELLED, 1)


def test_sync_idle_timeout_is_timed_out() -> None:
    """A chunk that took longer than idle_timeout ends the stream TIMED_OUT."""
    probe, done = Probe(), Recorder()

    def slow() -> Iterator[str]:
        try:
            yield "fast"
            time.sleep(0.05)
            yield "late"
        finally:
            probe.finally_count += 1

    stream = tether.accumulate(slow(), idle_timeout=0.01, on_complete=done)
    with pytest.raises(tether.StreamIdleTimeout) as caught:
        list(stream)
    assert isinstance(caught.value, TimeoutError)
    assert (stream.chunks, stream.outcome, stream.error) == (
        ["fast"],
        StreamOutcome.TIMED_OUT,
        caught.value,
    )
    assert (probe.finally_count, done.outcomes) == (1, [StreamOutcome.TIMED_OUT])
    assert "idle_timeout=0.01" in str(caught.value)


def test_sync_close_inside_the_loop_ends_it() -> None:
    """close() from inside the loop closes the source, ends the loop, returns the snapshot."""
    probe = Probe()
    stream = tether.accumulate(probe.chunks())
    seen, snapshots = [], []
    for chunk in stream:
        seen.append(chunk)
        snapshots.append(stream.close())
    assert (seen, probe.finally_count) == (["a"], 1)
    assert (snapshots[0].outcome, snapshots[0].content) == (StreamOutcome.CLOSED, "a")


def test_sync_close_twice_closes_once_and_returns_the_same_snapshot() -> None:
    """close() is idempotent: one close of the source, one callback, one snapshot."""
    source, done = ClosableSource(), Recorder()
    stream = tether.accumulate(source, on_complete=done)
    first, second = stream.close(), stream.close()
    assert first is second
    assert (source.closed, done.outcomes, first.outcome) == (
        1,
        [StreamOutcome.CLOSED],
        first.outcome,
    )
    assert list(stream) == []


def test_sync_object_source_is_closed_on_every_path() -> None:
    """An iterable with close() is closed once when it completes, errors or is closed."""
    completed = ClosableSource()
    assert list(tether.accumulate(completed)) == ["x", "y"]
    closed = ClosableSource()
    with tether.accumulate(closed) as stream:
        next(iter(stream))
    assert (completed.closed, closed.closed) == (1, 1)


def test_sync_resume_after_break_then_close() -> None:
    """Breaking out of ``for`` without closing keeps the stream: a second loop resumes."""
    probe = Probe()
    stream = tether.accumulate(probe.chunks())
    for _chunk in stream:
        break
    rest = list(stream)
    assert (rest, stream.content, stream.outcome) == (["b", "c"], "abc", StreamOutcome.COMPLETED)
    assert probe.finally_count == 1


def test_sync_close_from_inside_the_source_is_refused() -> None:
    """A source cannot close the stream that is reading it; the error surfaces as ERROR."""
    holder: list[tether.Stream[str, str]] = []

    def source() -> Iterator[str]:
        yield "a"
        holder[0].close()

    stream = tether.accumulate(source())
    holder.append(stream)
    with pytest.raises(RuntimeError, match="being read right now"):
        list(stream)
    assert stream.outcome is StreamOutcome.ERROR


# -- on_complete ---------------------------------------------------------------------


def test_on_complete_error_is_logged_and_raised_at_the_end(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A failing callback is logged and raised to the consumer after the source closed."""
    probe = Probe()
    calls = Recorder()

    def failing(snapshot: object) -> None:
        raise ValueError("callback broke")

    stream = tether.accumulate(probe.chunks(), on_complete=[failing, calls])
    with caplog.at_level(logging.ERROR, "tether.stream"), pytest.raises(ValueError, match="broke"):
        list(stream)
    assert (stream.outcome, probe.finally_count, calls.outcomes) == (
        StreamOutcome.COMPLETED,
        1,
        [StreamOutcome.COMPLETED],
    )
    assert "on_complete callback" in caplog.text


def test_on_complete_error_during_source_error_becomes_a_note(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """When the source raised, a failing callback is attached to that error, not raised."""
    error = Boom("source")

    def failing(snapshot: object) -> None:
        raise ValueError("callback broke")

    stream = tether.accumulate(Probe().chunks(then=error), on_complete=failing)
    with caplog.at_level(logging.ERROR, "tether.stream"), pytest.raises(Boom) as caught:
        list(stream)
    assert caught.value is error
    assert any("callback broke" in note for note in caught.value.__notes__)
    assert "callback broke" in caplog.text


def test_several_failing_callbacks_raise_a_cleanup_error(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Two failing callbacks at close() raise one CleanupError holding both."""

    def first(snapshot: object) -> None:
        raise ValueError("one")

    def second(snapshot: object) -> None:
        raise KeyError("two")

    stream = tether.accumulate(["a"], on_complete=(first, second))
    with (
        caplog.at_level(logging.ERROR, "tether.stream"),
        pytest.raises(tether.CleanupError) as caught,
    ):
        stream.close()
    assert [type(e) for e in caught.value.exceptions] == [ValueError, KeyError]


def test_on_complete_error_with_consumer_error_is_attached(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Leaving ``with`` by an exception attaches a failing callback to that exception."""

    def failing(snapshot: object) -> None:
        raise ValueError("callback broke")

    with (
        caplog.at_level(logging.ERROR, "tether.stream"),
        pytest.raises(KeyError) as caught,
        tether.accumulate(["a"], on_complete=failing),
    ):
        raise KeyError("body")
    assert any("callback broke" in note for note in caught.value.__notes__)


def test_source_close_error_is_raised_from_close(caplog: pytest.LogCaptureFixture) -> None:
    """A source whose close() fails: close() raises it, and it is logged."""

    class BadClose(ClosableSource):
        def close(self) -> None:
            raise OSError("close failed")

    stream = tether.accumulate(BadClose())
    with (
        caplog.at_level(logging.ERROR, "tether.stream"),
        pytest.raises(OSError, match="close failed"),
    ):
        stream.close()
    assert stream.outcome is StreamOutcome.CLOSED
    assert "closing the source" in caplog.text


# -- content, join, metrics -----------------------------------------------------------


def test_content_while_running_is_what_has_arrived() -> None:
    """Reading content inside the loop returns the chunks so far."""
    stream = tether.accumulate(["a", "b", "c"])
    seen = [stream.content for _chunk in stream]
    assert seen == ["a", "ab", "abc"]


def test_content_is_joined_once_and_cached() -> None:
    """After the loop, content is joined once; reading it again returns the same object."""
    calls = []

    def join(chunks: Sequence[str]) -> str:
        calls.append(len(chunks))
        return "|".join(chunks)

    stream = tether.accumulate(["a", "b"], join=join)
    list(stream)
    first, second = stream.content, stream.content
    assert (first, first is second, calls) == ("a|b", True, [2])
    assert stream.close().content is first
    assert calls == [2]


def test_default_join_for_bytes_and_empty_streams() -> None:
    """Bytes join to bytes; an empty stream's default content is ''."""
    stream = tether.accumulate([b"a", bytearray(b"b"), memoryview(b"c")])
    list(stream)
    assert (stream.content, stream.metrics.byte_count) == (b"abc", 3)
    empty = tether.accumulate([])
    list(empty)
    assert (empty.content, empty.metrics.chunk_count, empty.metrics.ttfb) == ("", 0, None)


def test_content_of_unjoinable_chunks_names_join() -> None:
    """Chunks with no default join, or of mixed types, say to pass join=."""
    numbers = tether.accumulate([1, 2])
    list(numbers)
    with pytest.raises(TypeError, match="join="):
        _ = numbers.content
    mixed = tether.accumulate(["a", b"b"])
    list(mixed)
    with pytest.raises(TypeError, match="mix types"):
        _ = mixed.content
    assert tether.accumulate([1, 2], join=sum).close().content == 0
    summed = tether.accumulate([1, 2], join=sum)
    list(summed)
    assert (summed.content, summed.metrics.byte_count) == (3, 0)


def test_byte_count_is_utf8_size() -> None:
    """byte_count counts UTF-8 bytes of text, including while running."""
    stream = tether.accumulate(["ab", "é", "€"])
    counts = [stream.metrics.byte_count for _chunk in stream]
    assert counts == [2, 4, 7]
    assert tether.accumulate(["a", b"bc"], join=list).close().metrics.byte_count == 0
    mixed = tether.accumulate(["a", b"bc", 7], join=list)
    list(mixed)
    assert mixed.metrics.byte_count == 3


class FakeClock:
    """A clock that advances one second per reading, and counts the readings."""

    def __init__(self) -> None:
        self.readings = 0

    def __call__(self) -> float:
        self.readings += 1
        return float(self.readings)


def test_basic_timing_reads_the_clock_three_times(monkeypatch: pytest.MonkeyPatch) -> None:
    """Basic timing reads the clock at start, first chunk and end only, however many chunks."""
    clock = FakeClock()
    monkeypatch.setattr("tether._stream._clock", clock)
    stream = tether.accumulate(["x"] * 1000)
    list(stream)
    assert clock.readings == 3
    metrics = stream.metrics
    assert (metrics.chunk_count, metrics.byte_count) == (1000, 1000)
    assert (metrics.ttfb, metrics.duration, metrics.max_gap) == (1.0, 2.0, None)


def test_detailed_timing_records_the_largest_gap(monkeypatch: pytest.MonkeyPatch) -> None:
    """Detailed timing reads the clock per chunk and keeps the largest gap between chunks."""
    now = [0.0]
    monkeypatch.setattr("tether._stream._clock", lambda: now[0])

    def source() -> Iterator[str]:
        for gap in (1.0, 0.5, 3.0, 0.25):
            now[0] += gap
            yield "x"

    stream = tether.accumulate(source(), timing="detailed")
    list(stream)
    assert (stream.metrics.ttfb, stream.metrics.max_gap, stream.metrics.duration) == (
        1.0,
        3.0,
        4.75,
    )


def test_metrics_before_iteration() -> None:
    """A stream not yet iterated has no timings."""
    stream = tether.accumulate(["a"])
    metrics = stream.metrics
    stream.close()
    assert (metrics.chunk_count, metrics.ttfb, metrics.duration) == (0, None, None)


def test_repr_says_outcome_and_site() -> None:
    """repr() names the outcome, the chunk count and where the stream was created."""
    stream = tether.accumulate(["a"])
    list(stream)
    assert repr(stream).startswith("<tether.Stream completed chunks=1 created at ")
    assert "test_stream.py:" in repr(stream)


# -- bad input -----------------------------------------------------------------------


def test_non_iterable_source_is_a_type_error() -> None:
    """A non-iterable source fails at accumulate(), naming what it got."""
    with pytest.raises(TypeError, match="got int"):
        tether.accumulate(42)  # type: ignore[call-overload]


def test_coroutine_source_hints_at_await() -> None:
    """Passing a coroutine instead of its result suggests the missing await."""

    async def make() -> list[str]:
        return []

    coroutine = make()
    with pytest.raises(TypeError, match="forget 'await'"):
        tether.accumulate(coroutine)  # type: ignore[call-overload]
    coroutine.close()


@pytest.mark.parametrize(
    ("options", "error", "message"),
    [
        ({"idle_timeout": 0}, ValueError, "idle_timeout must be positive"),
        ({"idle_timeout": -1.5}, ValueError, "idle_timeout must be positive"),
        ({"idle_timeout": True}, TypeError, "idle_timeout must be a number"),
        ({"idle_timeout": "1"}, TypeError, "idle_timeout must be a number"),
        ({"timing": "precise"}, ValueError, "timing must be"),
        ({"join": "".join("x")}, TypeError, "join must be a callable"),
        ({"on_complete": 5}, TypeError, "on_complete must be a callable"),
        ({"on_complete": [print, 5]}, TypeError, "on_complete must hold callables"),
    ],
)
def test_bad_options_are_rejected_at_the_call(
    options: dict[str, object], error: type[Exception], message: str
) -> None:
    """Each bad option raises at accumulate(), naming the parameter."""
    with pytest.raises(error, match=message):
        tether.accumulate(["a"], **options)  # type: ignore[call-overload]


async def test_async_forms_on_a_sync_stream_say_which_form_to_use() -> None:
    """``async with`` / ``async for`` over a sync source name ``with`` / ``for``."""
    stream = tether.accumulate(["a"])
    with pytest.raises(TypeError, match="use 'with accumulate"):
        async with stream:  # type: ignore[attr-defined]
            pass
    with pytest.raises(TypeError, match="with 'for'"):
        async for _chunk in stream:  # type: ignore[attr-defined]
            pass
    stream.close()


async def test_sync_forms_on_an_async_stream_say_which_form_to_use() -> None:
    """``with`` / ``for`` over an async source name ``async with`` / ``async for``."""
    stream = tether.accumulate(Probe().achunks())
    with pytest.raises(TypeError, match="use 'async with"), stream:  # type: ignore[attr-defined]
        pass
    with pytest.raises(TypeError, match="with 'async for'"):
        for _chunk in stream:  # type: ignore[attr-defined]
            pass
    await stream.aclose()


# -- dropped streams -----------------------------------------------------------------


def test_dropped_sync_stream_warns_at_once_and_closes() -> None:
    """Dropping the last reference to an unfinished stream warns immediately, naming the
    accumulate() call, with the stream as the warning's source; the source is closed."""
    probe, done = Probe(), Recorder()
    gc.collect()
    gc.disable()
    try:
        line = sys._getframe().f_lineno + 1
        stream = tether.accumulate(probe.chunks(), on_complete=done)
        next(iter(stream))
        stream_id = id(stream)
        with pytest.warns(ResourceWarning, match=f"test_stream.py:{line} ") as record:
            del stream
        assert (probe.finally_count, done.outcomes) == (1, [StreamOutcome.CLOSED])
        [warning] = record
        assert (id(warning.source), type(warning.source)) == (stream_id, tether.Stream)
    finally:
        gc.enable()


def test_dropped_stream_makes_no_reference_cycle() -> None:
    """With the cyclic collector off, reference counting alone frees a dropped stream, its
    iterator and its source."""
    probe = Probe()
    gc.collect()
    gc.disable()
    try:
        source = probe.chunks()
        stream = tether.accumulate(source)
        iterator = iter(stream)
        next(iterator)
        refs = [weakref.ref(stream), weakref.ref(iterator), weakref.ref(source)]
        del source, iterator
        with pytest.warns(ResourceWarning) as record:
            del stream
        record.clear()
        assert [ref() for ref in refs] == [None, None, None]
        assert probe.finally_count == 1
    finally:
        gc.enable()


def test_never_iterated_stream_warns_and_closes_its_source() -> None:
    """A stream dropped before its first read still closes an object source, and warns."""
    source = ClosableSource()
    stream = tether.accumulate(source)
    with pytest.warns(ResourceWarning, match="garbage collector"):
        del stream
    assert source.closed == 1


def test_anonymous_loop_that_breaks_warns_and_closes() -> None:
    """``for chunk in accumulate(...): break`` without ``with`` closes at once, and warns."""
    probe, done = Probe(), Recorder()
    with pytest.warns(ResourceWarning, match="dropped before it finished"):
        break_after_first(tether.accumulate(probe.chunks(), on_complete=done))
    assert (probe.finally_count, done.outcomes) == (1, [StreamOutcome.CLOSED])


def test_anonymous_loop_to_the_end_does_not_warn() -> None:
    """``for chunk in accumulate(...)`` read to the end finishes quietly."""
    probe, done = Probe(), Recorder()
    chunks = list(tether.accumulate(probe.chunks(), on_complete=done))
    assert (chunks, probe.finally_count, done.outcomes) == (
        ["a", "b", "c"],
        1,
        [StreamOutcome.COMPLETED],
    )


# -- async: every outcome --------------------------------------------------------------


@BOTH_BACKENDS
async def test_async_completed() -> None:
    """An async source read to its end: COMPLETED, source closed and reported once."""
    probe, done = Probe(), Recorder()
    async with tether.accumulate(probe.achunks(), on_complete=done) as stream:
        seen = [chunk async for chunk in stream]
    assert (seen, stream.content, stream.outcome) == (
        ["a", "b", "c"],
        "abc",
        StreamOutcome.COMPLETED,
    )
    assert (probe.finally_count, done.outcomes) == (1, [StreamOutcome.COMPLETED])
    assert stream.metrics.chunk_count == 3


@BOTH_BACKENDS
async def test_async_break_inside_with_closes() -> None:
    """Breaking out of ``async for`` inside ``async with`` closes the source as CLOSED."""
    probe, done = Probe(), Recorder()
    async with tether.accumulate(probe.achunks(), on_complete=done) as stream:
        async for _chunk in stream:
            break
    assert (stream.outcome, stream.content, probe.finally_count) == (StreamOutcome.CLOSED, "a", 1)
    assert done.outcomes == [StreamOutcome.CLOSED]
    assert probe.finally_task is probe.first_task


@BOTH_BACKENDS
async def test_async_consumer_exception_is_closed_and_propagates() -> None:
    """An exception in the loop body closes the source as CLOSED and propagates unchanged."""
    probe = Probe()
    error = KeyError("consumer")
    with pytest.raises(KeyError) as caught:
        async with tether.accumulate(probe.achunks()) as stream:
            await araise_in_loop(stream, error)
    assert caught.value is error
    assert (stream.outcome, probe.finally_count) == (StreamOutcome.CLOSED, 1)


@BOTH_BACKENDS
async def test_async_source_exception_is_error_and_propagates_unchanged() -> None:
    """The source's exception reaches the consumer as itself; outcome ERROR."""
    probe, done = Probe(), Recorder()
    error = Boom("upstream broke")
    stream = tether.accumulate(probe.achunks(then=error), on_complete=done)
    with pytest.raises(Boom) as caught:
        await drain(stream)
    assert caught.value is error
    assert (stream.outcome, stream.error, probe.finally_count) == (StreamOutcome.ERROR, error, 1)
    assert done.outcomes == [StreamOutcome.ERROR]


@BOTH_BACKENDS
async def test_async_cancel_scope_during_a_read_is_cancelled() -> None:
    """A cancel scope expiring while a read is pending: CANCELLED, source closed once."""
    probe, done = Probe(), Recorder()
    stream = tether.accumulate(probe.achunks(hang=True), on_complete=done)
    with anyio.move_on_after(0.05) as scope:
        async for _chunk in stream:
            pass
    assert scope.cancelled_caught
    assert (stream.outcome, stream.content, probe.finally_count) == (
        StreamOutcome.CANCELLED,
        "abc",
        1,
    )
    assert done.outcomes == [StreamOutcome.CANCELLED]


@BOTH_BACKENDS
async def test_async_cancel_in_the_loop_body_inside_with_is_cancelled() -> None:
    """A cancellation that lands in the loop body inside ``async with``: CANCELLED."""
    probe = Probe()
    with anyio.move_on_after(0.05):
        async with tether.accumulate(probe.achunks()) as stream:
            async for _chunk in stream:
                await anyio.sleep_forever()
    assert (stream.outcome, probe.finally_count) == (StreamOutcome.CANCELLED, 1)


async def test_async_task_cancel_during_a_read_is_cancelled() -> None:
    """A plain ``task.cancel()`` of the consuming task: CANCELLED, closed in that task."""
    hanging = anyio.Event()
    probe, done = Probe(hanging), Recorder()
    stream = tether.accumulate(probe.achunks(hang=True), on_complete=done)
    task = asyncio.create_task(drain(stream))
    await hanging.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert (stream.outcome, probe.finally_count, done.outcomes) == (
        StreamOutcome.CANCELLED,
        1,
        [StreamOutcome.CANCELLED],
    )
    assert probe.finally_task is task


@BOTH_BACKENDS
async def test_async_idle_timeout_cancels_the_read() -> None:
    """No chunk within idle_timeout: the read is cancelled, TIMED_OUT, StreamIdleTimeout."""
    probe, done = Probe(), Recorder()
    stream = tether.accumulate(probe.achunks(hang=True), idle_timeout=0.05, on_complete=done)
    with pytest.raises(tether.StreamIdleTimeout) as caught:
        await drain(stream)
    assert isinstance(caught.value, TimeoutError)
    assert (stream.chunks, stream.outcome, stream.error) == (
        ["a", "b", "c"],
        StreamOutcome.TIMED_OUT,
        caught.value,
    )
    assert (probe.finally_count, done.outcomes) == (1, [StreamOutcome.TIMED_OUT])


async def test_async_source_timeout_error_is_not_an_idle_timeout() -> None:
    """The source's own TimeoutError is an ERROR, even with idle_timeout set."""
    error = TimeoutError("upstream's own")
    stream = tether.accumulate(Probe().achunks(then=error), idle_timeout=10)
    with pytest.raises(TimeoutError) as caught:
        await drain(stream)
    assert (caught.value, stream.outcome) == (error, StreamOutcome.ERROR)


@BOTH_BACKENDS
async def test_aclose_from_another_task_cancels_the_pending_read() -> None:
    """aclose() while another task's read is pending: the read is cancelled in that task,
    which closes the source and ends its loop quietly; no "already running" error."""
    hanging = anyio.Event()
    probe, done = Probe(hanging), Recorder()
    stream = tether.accumulate(probe.achunks(hang=True), on_complete=done)
    loop_ended = anyio.Event()
    seen: list[str] = []

    async def consume() -> None:
        seen.extend(await drain(stream))
        loop_ended.set()

    async with anyio.create_task_group() as group:
        group.start_soon(consume)
        await hanging.wait()
        snapshot = await stream.aclose()
        with anyio.fail_after(10):
            await loop_ended.wait()
    assert (snapshot.outcome, snapshot.content, seen) == (
        StreamOutcome.CLOSED,
        "abc",
        ["a", "b", "c"],
    )
    assert (probe.finally_count, done.outcomes) == (1, [StreamOutcome.CLOSED])
    assert probe.finally_task is probe.first_task
    assert await stream.aclose() is snapshot


@BOTH_BACKENDS
async def test_aclose_from_another_task_between_reads() -> None:
    """aclose() while the consumer is busy between two reads closes the source; the
    consumer's next read ends its loop quietly."""
    probe = Probe()
    stream = tether.accumulate(probe.achunks())
    got_one, closed = anyio.Event(), anyio.Event()
    seen: list[str] = []

    async def consume() -> None:
        async for chunk in stream:
            seen.append(chunk)
            got_one.set()
            await closed.wait()

    async with anyio.create_task_group() as group:
        group.start_soon(consume)
        await got_one.wait()
        snapshot = await stream.aclose()
        closed.set()
    assert (snapshot.outcome, seen, probe.finally_count) == (StreamOutcome.CLOSED, ["a"], 1)


@BOTH_BACKENDS
async def test_aclose_before_iteration_closes_the_source_object() -> None:
    """aclose() on a stream never iterated closes an object source once."""
    source, done = AsyncClosableSource(), Recorder()
    stream = tether.accumulate(source, on_complete=done)
    snapshot = await stream.aclose()
    assert (snapshot.outcome, source.closed, done.outcomes) == (
        StreamOutcome.CLOSED,
        1,
        [StreamOutcome.CLOSED],
    )
    assert [chunk async for chunk in stream] == []


async def test_async_object_source_is_closed_after_completing() -> None:
    """An async iterable with aclose() is closed once after it ran out."""
    source = AsyncClosableSource()
    stream = tether.accumulate(source)
    assert [chunk async for chunk in stream] == [b"x", b"y"]
    assert (source.closed, stream.content) == (1, b"xy")


async def test_async_sync_close_method_is_called() -> None:
    """An async iterable whose close() is sync (or returns an awaitable) is closed."""
    closes: list[str] = []

    class SyncClose(AsyncClosableSource):
        aclose = None  # type: ignore[assignment]

        def close(self) -> None:
            closes.append("sync")

    class AwaitableClose(AsyncClosableSource):
        aclose = None  # type: ignore[assignment]

        def close(self) -> asyncio.Future[None]:
            closes.append("awaitable")
            future = asyncio.get_running_loop().create_future()
            future.set_result(None)
            return future

    for source in (SyncClose(), AwaitableClose()):
        async with tether.accumulate(source) as stream:
            pass
        assert stream.outcome is StreamOutcome.CLOSED
    assert closes == ["sync", "awaitable"]


async def test_async_on_complete_error_is_raised_at_the_end(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A failing callback on an async stream is raised after the loop's last chunk."""

    def failing(snapshot: object) -> None:
        raise ValueError("callback broke")

    stream = tether.accumulate(Probe().achunks(), on_complete=failing)
    with caplog.at_level(logging.ERROR, "tether.stream"), pytest.raises(ValueError, match="broke"):
        await drain(stream)
    assert stream.outcome is StreamOutcome.COMPLETED


async def test_async_detailed_timing_and_metrics() -> None:
    """Detailed timing on an async source records a gap; basic timing does not."""
    detailed = tether.accumulate(Probe().achunks(), timing="detailed")
    await drain(detailed)
    basic = tether.accumulate(Probe().achunks())
    await drain(basic)
    assert detailed.metrics.max_gap is not None
    assert detailed.metrics.max_gap >= 0
    assert basic.metrics.max_gap is None
    assert repr(basic).startswith("<tether.AsyncStream completed chunks=3")


async def test_async_dropped_after_reading_warns_when_finalised() -> None:
    """An async stream dropped mid-way is closed by the event loop's finaliser, with a
    ResourceWarning naming where it was created."""
    probe = Probe()
    finished = asyncio.Event()
    stream = tether.accumulate(probe.achunks(), on_complete=lambda _: finished.set())
    async for _chunk in stream:
        break
    holder = [stream]
    del stream

    async def drop_and_wait() -> None:
        holder.clear()
        with anyio.fail_after(10):
            await finished.wait()

    with pytest.warns(ResourceWarning, match="test_stream.py:.*finaliser"):
        await drop_and_wait()
    assert probe.finally_count == 1


async def test_async_never_iterated_stream_warns_at_once() -> None:
    """An async stream dropped before its first read warns immediately, as its own source."""
    source = AsyncClosableSource()
    closed = asyncio.Event()
    stream = tether.accumulate(source, on_complete=lambda _: closed.set())
    stream_id = id(stream)
    with pytest.warns(ResourceWarning, match="never iterated") as record:
        del stream
    assert id(record[0].source) == stream_id
    with anyio.fail_after(10):
        await closed.wait()
    assert source.closed == 1


async def test_async_anonymous_loop_to_the_end_does_not_warn() -> None:
    """``async for chunk in accumulate(...)`` read to the end finishes quietly."""
    probe, done = Probe(), Recorder()
    seen = [chunk async for chunk in tether.accumulate(probe.achunks(), on_complete=done)]
    assert (seen, probe.finally_count, done.outcomes) == (
        ["a", "b", "c"],
        1,
        [StreamOutcome.COMPLETED],
    )


def test_async_stream_dropped_outside_any_loop() -> None:
    """Without an event loop, a dropped never-iterated async stream still finishes."""
    source, done = AsyncClosableSource(), Recorder()
    stream = tether.accumulate(source, on_complete=done)
    with pytest.warns(ResourceWarning, match="no event loop"):
        del stream
    assert (done.outcomes, source.closed) == ([StreamOutcome.CLOSED], 0)


# -- accumulation is linear ----------------------------------------------------------


def _accumulate_time(count: int) -> float:
    source = ["abcdefgh"] * count
    started = time.perf_counter()
    stream = tether.accumulate(source)
    for _chunk in stream:
        pass
    content = stream.content
    elapsed = time.perf_counter() - started
    assert len(content) == 8 * count
    return elapsed


def test_accumulation_is_linear() -> None:
    """Ten times the chunks cost about ten times as much, not a hundred (no quadratic
    behaviour). Sizes alternate so that a busy machine slows both alike; the bounds are
    wide because only the order of growth is claimed."""
    small, large = [], []
    for _ in range(5):
        small.append(_accumulate_time(100_000))
        large.append(_accumulate_time(1_000_000))
    assert 4 < statistics.median(large) / statistics.median(small) < 40


# -- edges ---------------------------------------------------------------------------


def test_with_block_after_the_stream_completed() -> None:
    """Leaving ``with`` after the loop ran out keeps COMPLETED and closes nothing twice."""
    source = ClosableSource()
    with tether.accumulate(source) as stream:
        assert list(stream) == ["x", "y"]
    assert (stream.outcome, source.closed) == (StreamOutcome.COMPLETED, 1)


def test_anonymous_for_loop_keeps_running_after_its_stream_is_dropped() -> None:
    """In ``for c in accumulate(src)`` the wrapper is dropped at once; the loop still runs
    to the end and finishes the stream without a warning."""
    probe, done = Probe(), Recorder()
    seen = [chunk for chunk in tether.accumulate(probe.chunks(), on_complete=done)]  # noqa: C416 - the comprehension's own iteration is what is tested
    assert (seen, probe.finally_count, done.outcomes) == (
        ["a", "b", "c"],
        1,
        [StreamOutcome.COMPLETED],
    )


def test_bytes_metrics_and_content_after_the_snapshot() -> None:
    """Bytes chunks count their length; content read first from the snapshot is shared."""
    stream = tether.accumulate([b"ab", bytearray(b"cde")])
    list(stream)
    snapshot = stream.close()
    assert (snapshot.content, snapshot.metrics.byte_count) == (b"abcde", 5)
    assert stream.content is snapshot.content


def test_interrupt_in_a_callback_is_not_reduced_to_a_note(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A KeyboardInterrupt raised by a callback while the source's error propagates wins,
    chained to that error."""
    error = Boom("source")

    def interrupted(snapshot: object) -> None:
        raise KeyboardInterrupt

    stream = tether.accumulate(Probe().chunks(then=error), on_complete=interrupted)
    with (
        caplog.at_level(logging.CRITICAL, "tether.stream"),
        pytest.raises(KeyboardInterrupt) as caught,
    ):
        list(stream)
    assert caught.value.__cause__ is error


async def test_async_source_close_error_is_raised_from_aclose(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """An async source whose aclose() fails: aclose() raises it, once."""

    class BadClose(AsyncClosableSource):
        async def aclose(self) -> None:
            raise OSError("close failed")

    stream = tether.accumulate(BadClose())
    with caplog.at_level(logging.ERROR, "tether.stream"), pytest.raises(OSError, match="failed"):
        await stream.aclose()
    assert (await stream.aclose()).outcome is StreamOutcome.CLOSED


@BOTH_BACKENDS
async def test_concurrent_acloses_close_once_and_agree() -> None:
    """Two tasks closing at once: the source is closed once, both get the same snapshot."""
    release = anyio.Event()
    closes: list[int] = []

    class SlowClose(AsyncClosableSource):
        async def aclose(self) -> None:
            closes.append(1)
            await release.wait()

    stream = tether.accumulate(SlowClose())
    snapshots: list[tether.StreamSnapshot[bytes, bytes]] = []

    async def close() -> None:
        snapshots.append(await stream.aclose())

    async with anyio.create_task_group() as group:
        group.start_soon(close)
        group.start_soon(close)
        await anyio.wait_all_tasks_blocked()
        release.set()
    assert (closes, snapshots[0] is snapshots[1]) == ([1], True)


@BOTH_BACKENDS
async def test_empty_async_source_completes() -> None:
    """An async source with no chunks completes with empty content and no first byte."""
    stream = tether.accumulate(Probe().achunks(()))
    assert await drain(stream) == []
    assert (stream.outcome, stream.content, stream.metrics.ttfb) == (
        StreamOutcome.COMPLETED,
        "",
        None,
    )


@BOTH_BACKENDS
async def test_source_that_swallows_the_close_still_ends_the_loop() -> None:
    """A source that catches the cancellation of its read and sends one more chunk: the
    chunk is not delivered, the loop ends, the stream is CLOSED."""
    hanging = anyio.Event()
    cancelled = anyio.get_cancelled_exc_class()

    async def stubborn() -> AsyncIterator[str]:
        yield "a"
        try:
            hanging.set()
            await anyio.sleep_forever()
        except cancelled:
            yield "swallowed"

    stream = tether.accumulate(stubborn(), timing="detailed")
    seen: list[str] = []

    async def consume() -> None:
        seen.extend(await drain(stream))

    async with anyio.create_task_group() as group:
        group.start_soon(consume)
        await hanging.wait()
        snapshot = await stream.aclose()
    assert (seen, snapshot.outcome, snapshot.chunks) == (["a"], StreamOutcome.CLOSED, ("a",))


async def test_aclose_and_cancel_of_the_reader_together() -> None:
    """The reader cancelled and closed at once: the source closes once, the reader's own
    cancellation still propagates, and aclose() returns."""
    hanging = anyio.Event()
    probe = Probe(hanging)
    stream = tether.accumulate(probe.achunks(hang=True))
    task = asyncio.create_task(drain(stream))
    await hanging.wait()
    task.cancel()
    snapshot = await stream.aclose()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert (snapshot.outcome, probe.finally_count) == (StreamOutcome.CLOSED, 1)


async def test_aclose_when_the_read_is_in_an_unknown_task_is_refused() -> None:
    """A read pending in a task other than the one that started iterating cannot be
    interrupted; aclose() says so instead of hanging."""
    hanging = anyio.Event()
    probe = Probe(hanging)
    stream = tether.accumulate(probe.achunks(("a",), hang=True))
    iterator = aiter(stream)
    assert await asyncio.create_task(anext(iterator)) == "a"
    pending = asyncio.create_task(anext(iterator))
    await hanging.wait()
    with pytest.raises(RuntimeError, match="close it from the reading task"):
        await stream.aclose()
    pending.cancel()
    with pytest.raises(asyncio.CancelledError):
        await pending
    assert (stream.outcome, probe.finally_count) == (StreamOutcome.CANCELLED, 1)


async def test_aclose_from_inside_the_source_is_refused() -> None:
    """A source cannot close the stream that is reading it."""
    holder: list[tether.AsyncStream[str, str]] = []

    async def source() -> AsyncIterator[str]:
        yield "a"
        await holder[0].aclose()
        yield "b"

    stream = tether.accumulate(source())
    holder.append(stream)
    with pytest.raises(RuntimeError, match="inside its own read"):
        await drain(stream)
    assert stream.outcome is StreamOutcome.ERROR


async def test_read_resumed_during_a_close_ends_quietly() -> None:
    """The consumer reading again while another task is still closing the source: its loop
    ends quietly instead of failing with "already running"."""
    closing, resume, got_one = asyncio.Event(), asyncio.Event(), asyncio.Event()

    async def source() -> AsyncIterator[str]:
        try:
            yield "a"
            yield "b"
        finally:
            closing.set()
            await asyncio.sleep(0.05)

    stream = tether.accumulate(source())
    seen: list[str] = []

    async def consume() -> None:
        async for chunk in stream:
            seen.append(chunk)
            got_one.set()
            await resume.wait()

    consumer = asyncio.create_task(consume())
    await got_one.wait()
    closer = asyncio.create_task(stream.aclose())
    await closing.wait()
    resume.set()
    await consumer
    snapshot = await closer
    assert (seen, snapshot.outcome) == (["a"], StreamOutcome.CLOSED)


async def test_async_unstarted_iterator_dropped_with_its_stream() -> None:
    """An async stream whose iterator was taken but never read, dropped with it, warns."""
    stream = tether.accumulate(Probe().achunks())
    aiter(stream)
    with pytest.warns(ResourceWarning, match="it was never iterated"):
        del stream


async def test_reader_cancelled_while_closing_for_another_task_keeps_its_cancellation() -> None:
    """A reader closing the source for aclose() in another task, cancelled meanwhile: the
    cancellation ends the reader, and the closer gets its snapshot, not the cancellation."""
    hanging, closing, done = asyncio.Event(), asyncio.Event(), Recorder()

    class SlowClose(AsyncClosableSource):
        def __aiter__(self) -> AsyncIterator[bytes]:
            return self._hang()

        async def _hang(self) -> AsyncIterator[bytes]:
            yield b"x"
            hanging.set()
            await asyncio.sleep(3600)

        async def aclose(self) -> None:
            closing.set()
            await asyncio.sleep(3600)

    stream = tether.accumulate(SlowClose(), on_complete=done)
    reader = asyncio.create_task(drain(stream))
    await hanging.wait()
    closer = asyncio.create_task(stream.aclose())
    await closing.wait()
    reader.cancel()
    with pytest.raises(asyncio.CancelledError):
        await reader
    snapshot = await closer
    assert (snapshot.outcome, done.outcomes) == (StreamOutcome.CLOSED, [StreamOutcome.CLOSED])


@pytest.mark.parametrize("then", ["sends another chunk", "ends"])
async def test_source_that_swallows_the_close_in_the_fast_loop_is_closed(then: str) -> None:
    """Default options on asyncio (the per-chunk fast path): a source that catches the
    cancellation of its read, then sends a chunk or ends, still ends the loop at once as
    CLOSED, and the reading task is left with no cancellation pending."""
    hanging = asyncio.Event()

    async def stubborn() -> AsyncIterator[str]:
        yield "a"
        try:
            hanging.set()
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            if then == "ends":
                return
            yield "swallowed"
        yield "later"

    stream = tether.accumulate(stubborn())

    async def consume() -> tuple[list[str], int]:
        seen = await drain(stream)
        task = asyncio.current_task()
        assert task is not None
        return seen, task.cancelling()

    reader = asyncio.create_task(consume())
    await hanging.wait()
    snapshot = await stream.aclose()
    assert await reader == (["a"], 0)
    assert (snapshot.outcome, snapshot.chunks) == (StreamOutcome.CLOSED, ("a",))


async def test_aclose_cancels_the_task_reading_now_not_an_earlier_one() -> None:
    """A stream first read in one task (which broke out of its loop and went on with other
    work), then in a second: aclose() interrupts the second task's read, which ends its loop
    quietly, and leaves the first task alone."""
    hanging, first_done, release_first = asyncio.Event(), asyncio.Event(), asyncio.Event()
    stream = tether.accumulate(Probe(hanging).achunks(("a",), hang=True))

    async def first() -> str:
        async for _chunk in stream:
            break
        first_done.set()
        await release_first.wait()  # unrelated work, which must not be cancelled
        return "finished its own work"

    first_task = asyncio.create_task(first())
    await first_done.wait()
    second_task = asyncio.create_task(drain(stream))
    await hanging.wait()
    with anyio.fail_after(10):  # a guard: aclose() waits for a read nobody interrupts
        snapshot = await stream.aclose()
    assert await second_task == []
    release_first.set()
    assert await first_task == "finished its own work"
    assert (snapshot.outcome, snapshot.chunks) == (StreamOutcome.CLOSED, ("a",))


async def test_aclose_interrupts_a_read_made_through_a_wrapping_generator() -> None:
    """A task reading the stream through an async generator of its own is found as the
    reader: its read is interrupted and its loop ends quietly."""
    hanging = asyncio.Event()
    stream = tether.accumulate(Probe(hanging).achunks(("a",), hang=True))

    async def shouting(chunks: AsyncIterable[str]) -> AsyncIterator[str]:
        async for chunk in chunks:
            yield chunk.upper()

    reader = asyncio.create_task(drain(shouting(stream)))
    await hanging.wait()
    with anyio.fail_after(10):  # a guard: aclose() waits for a read nobody interrupts
        snapshot = await stream.aclose()
    assert (await reader, snapshot.outcome) == (["A"], StreamOutcome.CLOSED)


async def test_aclose_never_cancels_a_task_that_is_not_reading() -> None:
    """The task that last started a loop broke out of it, and another task reads on through
    an iterator it took earlier: aclose() refuses, and cancels neither task."""
    hanging, first_done, release_first = asyncio.Event(), asyncio.Event(), asyncio.Event()
    probe = Probe(hanging)
    stream = tether.accumulate(probe.achunks(("a",), hang=True))
    iterator = aiter(stream)

    async def first() -> str:
        async for _chunk in stream:
            break
        first_done.set()
        await release_first.wait()
        return "finished its own work"

    first_task = asyncio.create_task(first())
    await first_done.wait()
    pending = asyncio.create_task(anext(iterator))
    await hanging.wait()
    with anyio.fail_after(10), pytest.raises(RuntimeError, match="close it from the reading"):
        await stream.aclose()
    release_first.set()
    assert await first_task == "finished its own work"
    assert not pending.done()
    pending.cancel()
    with pytest.raises(asyncio.CancelledError):
        await pending
    assert (stream.outcome, probe.finally_count) == (StreamOutcome.CANCELLED, 1)


async def test_two_acloses_during_a_pending_read_end_the_loop_quietly() -> None:
    """Two tasks closing while a read is pending: the read is interrupted once, the reader's
    loop ends quietly (its task is not cancelled), the source closes once."""
    hanging = asyncio.Event()
    probe, done = Probe(hanging), Recorder()
    stream = tether.accumulate(probe.achunks(("a",), hang=True), on_complete=done)

    async def consume() -> list[str]:
        seen = await drain(stream)
        await asyncio.sleep(0)  # the task carries on after its loop
        return seen

    reader = asyncio.create_task(consume())
    await hanging.wait()
    snapshots = await asyncio.gather(stream.aclose(), stream.aclose())
    assert await reader == ["a"]
    assert snapshots[0] is snapshots[1]
    assert (done.outcomes, probe.finally_count) == ([StreamOutcome.CLOSED], 1)


async def test_cancellation_during_a_read_while_another_task_closes_propagates() -> None:
    """Another task closes the source between two reads; the consumer reads again and is
    cancelled during that read: the cancellation reaches it instead of ending its loop."""
    closing, release_close, reading_again = asyncio.Event(), asyncio.Event(), asyncio.Event()
    got_one, resume = asyncio.Event(), asyncio.Event()

    class SlowClose:
        """An SDK-style stream: its own iterator, which has no close of its own."""

        def __init__(self) -> None:
            self.sent = 0

        def __aiter__(self) -> SlowClose:
            return self

        async def __anext__(self) -> str:
            self.sent += 1
            if self.sent == 1:
                return "a"
            reading_again.set()
            await asyncio.sleep(3600)
            return "b"

        async def aclose(self) -> None:
            closing.set()
            await release_close.wait()

    stream = tether.accumulate(SlowClose())
    after_loop: list[str] = []

    async def consume() -> None:
        async for _chunk in stream:
            got_one.set()
            await resume.wait()
        after_loop.append("the loop ended as though nothing happened")

    reader = asyncio.create_task(consume())
    await got_one.wait()
    closer = asyncio.create_task(stream.aclose())
    await closing.wait()
    resume.set()
    await reading_again.wait()
    reader.cancel()
    with pytest.raises(asyncio.CancelledError):
        await reader
    release_close.set()
    assert (await closer).outcome is StreamOutcome.CLOSED
    assert after_loop == []


class _SlowCloseAtEnd:
    """An SDK-style stream with one chunk whose aclose() waits (releasing a connection)."""

    def __init__(self) -> None:
        self.closing = asyncio.Event()

    def __aiter__(self) -> AsyncIterator[str]:
        return self._chunks()

    async def _chunks(self) -> AsyncIterator[str]:
        yield "a"

    async def aclose(self) -> None:
        self.closing.set()
        await asyncio.sleep(3600)


def _metrics_backend_down(snapshot: object) -> None:
    raise ValueError("metrics backend down")


async def test_cancellation_while_closing_the_source_stays_a_cancellation(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The consumer cancelled while the finished stream closes its source, and a callback
    failing too: the task ends cancelled (not with CleanupError), the callback's error noted
    on the cancellation."""
    source = _SlowCloseAtEnd()
    caught: list[BaseException] = []

    async def consume() -> None:
        try:
            await drain(tether.accumulate(source, on_complete=_metrics_backend_down))
        except BaseException as exc:
            caught.append(exc)
            raise

    with caplog.at_level(logging.CRITICAL, "tether.stream"):
        task = asyncio.create_task(consume())
        await source.closing.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert task.cancelled()
    assert isinstance(caught[0], asyncio.CancelledError)
    assert any("metrics backend down" in note for note in caught[0].__notes__)


async def test_timeout_while_closing_the_source_is_a_timeout(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """An asyncio.timeout expiring while the finished stream closes its source, with a
    callback failing too, raises the timeout's TimeoutError."""
    source = _SlowCloseAtEnd()
    loop = asyncio.get_running_loop()

    async def expire_when_closing(timeout: asyncio.Timeout) -> None:
        await source.closing.wait()
        timeout.reschedule(loop.time())

    expiries: list[asyncio.Task[None]] = []

    async def read_within_a_timeout() -> None:
        async with asyncio.timeout(None) as timeout:
            expiries.append(asyncio.create_task(expire_when_closing(timeout)))
            await drain(tether.accumulate(source, on_complete=_metrics_backend_down))

    with caplog.at_level(logging.CRITICAL, "tether.stream"), pytest.raises(TimeoutError):
        await read_within_a_timeout()
    await expiries[0]
