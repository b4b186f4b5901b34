"""Streams: iterate a source while keeping its accumulated content and metrics.

:func:`accumulate` wraps a sync or async source in a :class:`Stream` or
:class:`AsyncStream`. Iterating the wrapper yields each chunk unchanged and keeps it; the
source is closed exactly once on every path, ``on_complete`` callbacks run exactly once,
and a wrapper dropped before it finished says where it was created.

Theory of operation
-------------------
Three objects, no reference cycle between them:

* the wrapper (:class:`Stream` / :class:`AsyncStream`), which users hold;
* its iterator, a (async) generator made by ``_iterate`` / ``_aiterate``, which the
  wrapper holds and which ``for`` / ``async for`` hold while they run;
* a ``_StreamState`` that both of them point at, holding the source, the chunks, the
  clock readings and the lifecycle: ``RUNNING`` → ``CLOSING`` → ``DONE``.

Whoever learns the outcome first finishes the state: the iterator when the source ends,
raises or is cancelled; ``close()`` / ``aclose()`` / leaving a ``with`` block when the
consumer stops; the iterator's own ``GeneratorExit`` handler when it is garbage-collected.
Finishing closes the source, then builds the snapshot and runs the callbacks; it happens
once, because only the first caller finds the state ``RUNNING``.

The per-chunk path is the whole point of the design: in basic timing each chunk costs one
``list.append`` and one ``yield``. The clock is read at the start, at the first chunk and
at the end; sizes and content are computed from the chunk list only when asked for.

An async read that is pending when ``aclose()`` is called from another task is cancelled
in the reading task (a one-shot ``Task.cancel()`` on asyncio, withdrawn again with
``uncancel()``; a per-read cancel scope on trio). The reading task then closes the source
itself and ends its iteration quietly, while ``aclose()`` waits for it: the source is
never touched by two tasks at once, so there is no "already running" error. On asyncio the
reading task is the one that last started a loop over the stream (``__aiter__``), and it
is cancelled only once its await is seen to lead down to the stream's iterator; recording
it per loop rather than per read keeps the task lookup off the per-chunk path. A source
that swallows the cancellation is stopped at its next chunk, or at its end, by the
``close_requested`` flag, which every loop checks after each read. A second ``aclose()``
meanwhile only waits.
"""

from __future__ import annotations

import asyncio
import enum
import gc
import inspect
import logging
import sys
import time
import warnings
import weakref
from collections.abc import (
    AsyncIterable,
    AsyncIterator,
    Callable,
    Coroutine,
    Generator,
    Iterable,
    Iterator,
    Sequence,
)
from dataclasses import dataclass, field
from typing import (
    TYPE_CHECKING,
    Any,
    Final,
    Generic,
    Literal,
    NoReturn,
    Protocol,
    TypeAlias,
    TypeVar,
    cast,
    final,
    overload,
)

from ._aio import current_async_library, run_shielded_outcome
from ._exceptions import CleanupError, StreamIdleTimeout
from ._sites import Site, user_site

if TYPE_CHECKING:
    from types import TracebackType

__all__ = [
    "AsyncStream",
    "Stream",
    "StreamMetrics",
    "StreamOutcome",
    "StreamSnapshot",
    "accumulate",
]

T = TypeVar("T")
C = TypeVar("C")
T_co = TypeVar("T_co", covariant=True)
C_co = TypeVar("C_co", covariant=True)

Timing: TypeAlias = Literal["basic", "detailed"]

_logger: Final = logging.getLogger("tether.stream")
_clock: Final = time.perf_counter
# How far down a task's chain of awaits to look for a stream's iterator; chains of
# wrappers (async generators over async generators) are far shorter in practice.
_AWAIT_DEPTH: Final = 64


class StreamOutcome(enum.Enum):
    """How a stream ended (or that it has not ended yet)."""

    RUNNING = "running"
    """Not finished: chunks may still arrive."""
    COMPLETED = "completed"
    """The source ran to its end."""
    CLOSED = "closed"
    """The consumer stopped early: ``close()``, leaving a ``with`` block, an exception in
    the consumer's code, a client disconnect, or the wrapper being garbage-collected."""
    CANCELLED = "cancelled"
    """The consuming task was cancelled (or interrupted by ``KeyboardInterrupt``)."""
    ERROR = "error"
    """The source raised; the exception is in ``error`` and reached the consumer unchanged."""
    TIMED_OUT = "timed_out"
    """The source sent no chunk within ``idle_timeout``; ``error`` is the
    :class:`~tether.StreamIdleTimeout` the consumer received."""


@final
@dataclass(frozen=True, slots=True)
class StreamMetrics:
    """Counts and timings of a stream, as of the moment they were read.

    Times are in seconds, measured with :func:`time.perf_counter`.
    """

    chunk_count: int
    """Chunks received so far."""
    byte_count: int
    """Size of the chunks: UTF-8 bytes for ``str``, length for bytes-like chunks; other
    chunks count as zero."""
    ttfb: float | None
    """Time to first byte: from the start of iteration to the first chunk; ``None``
    before the first chunk."""
    duration: float | None
    """From the start of iteration to its end (to now while running); ``None`` before
    iteration started."""
    max_gap: float | None
    """The longest time between two consecutive chunks, with ``timing="detailed"`` only
    (``None`` in basic timing or with fewer than two chunks)."""


@final
@dataclass(frozen=True, slots=True)
class StreamSnapshot(Generic[T_co, C_co]):
    """The final state of a stream: what ``close()`` returns and ``on_complete`` receives.

    ``content`` is joined on first access and then kept, so reading it costs O(total
    size) once.
    """

    chunks: tuple[T_co, ...]
    """Every chunk the consumer received, in order."""
    metrics: StreamMetrics
    """Counts and timings at the end."""
    outcome: StreamOutcome
    """How the stream ended."""
    error: BaseException | None
    """The source's exception (``ERROR``), the :class:`~tether.StreamIdleTimeout`
    (``TIMED_OUT``), otherwise ``None``."""
    _join: Callable[[Sequence[T_co]], C_co] = field(repr=False, compare=False)
    _joined: list[C_co] = field(default_factory=list, repr=False, compare=False)

    @property
    def content(self) -> C_co:
        """The chunks joined: ``''.join`` for text, ``b''.join`` for bytes, or ``join``."""
        joined = self._joined
        if not joined:
            joined.append(self._join(self.chunks))
        return joined[0]


OnComplete: TypeAlias = Callable[[StreamSnapshot[T, C]], object]
"""A callback that receives the final snapshot of a stream."""
Callbacks: TypeAlias = OnComplete[T, C] | Iterable[OnComplete[T, C]] | None


class _Phase(enum.Enum):
    RUNNING = 0
    CLOSING = 1  # the outcome is known, the source is being closed
    DONE = 2  # source closed, callbacks ran


_RUNNING: Final = _Phase.RUNNING
_CLOSING: Final = _Phase.CLOSING
_DONE: Final = _Phase.DONE


class _Signal(enum.Enum):
    END = "end"  # the source is exhausted
    IDLE = "idle"  # no chunk within idle_timeout


_END: Final = _Signal.END
_IDLE: Final = _Signal.IDLE


class _ReadInterrupted(BaseException):
    """A pending read was cancelled because ``aclose()`` was called from another task."""

    @classmethod
    def throw(cls) -> NoReturn:
        raise cls


@final
class _DefaultJoin:
    """``''.join`` for text, ``b''.join`` for bytes; names ``join=`` for anything else."""

    __slots__ = ("empty", "site")

    def __init__(self, empty: str | bytes, site: Site) -> None:
        self.empty = empty
        self.site = site

    def __call__(self, chunks: Sequence[object]) -> str | bytes:
        if not chunks:
            return self.empty
        first = chunks[0]
        try:
            if isinstance(first, str):
                return "".join(cast("Sequence[str]", chunks))
            if isinstance(first, bytes | bytearray | memoryview):
                return b"".join(cast("Sequence[bytes]", chunks))
        except TypeError as exc:
            raise TypeError(
                f"the chunks of the stream created at {self.site} mix types ({exc}); "
                "pass join= to accumulate() to combine them"
            ) from None
        raise TypeError(
            f"chunks of type {type(first).__name__} have no default join (stream created "
            f"at {self.site}); pass join= to accumulate() to combine them"
        )


def _size_of(chunk: object) -> int:
    if isinstance(chunk, str):
        return len(chunk) if chunk.isascii() else len(chunk.encode("utf-8", "surrogatepass"))
    if isinstance(chunk, bytes | bytearray):
        return len(chunk)
    if isinstance(chunk, memoryview):
        return chunk.nbytes
    return 0


def _size_of_all(chunks: Sequence[object]) -> int:
    # Whole-list fast paths run in C; the per-chunk function is for mixed content only.
    kinds = set(map(type, chunks))
    if kinds == {str}:
        text = cast("Sequence[str]", chunks)
        if all(map(str.isascii, text)):
            return sum(map(len, text))
    elif kinds <= {bytes, bytearray}:
        return sum(map(len, cast("Sequence[bytes]", chunks)))
    return sum(map(_size_of, chunks))


def _callbacks(on_complete: object) -> tuple[Callable[[Any], object], ...]:
    if on_complete is None:
        return ()
    if callable(on_complete):
        return (on_complete,)
    if isinstance(on_complete, Iterable):
        callbacks = tuple(on_complete)
        for callback in callbacks:
            if not callable(callback):
                raise TypeError(f"on_complete must hold callables, got {type(callback).__name__}")
        return callbacks
    raise TypeError(
        f"on_complete must be a callable or a list of callables, got {type(on_complete).__name__}"
    )


def _is_cancellation(exc: BaseException) -> bool:
    # asyncio.CancelledError, trio.Cancelled, KeyboardInterrupt, SystemExit: the run was
    # interrupted from outside, which is not the source's fault.
    return not isinstance(exc, Exception)


def _new_event() -> asyncio.Event:
    if current_async_library() == "trio":
        event: asyncio.Event = sys.modules["trio"].Event()
        return event
    return asyncio.Event()


def _report(primary: BaseException, errors: list[BaseException], site: Site) -> None:
    """Attach cleanup errors to ``primary``, which is about to propagate."""
    for error in errors:
        primary.add_note(f"while finishing the stream created at {site}: {error!r}")
    for error in errors:
        if _is_cancellation(error) and error is not primary:
            # A KeyboardInterrupt during cleanup must not turn into a note.
            raise error from primary


def _raise_all(errors: list[BaseException], site: Site) -> None:
    if len(errors) == 1:
        raise errors[0]
    for error in errors:
        if _is_cancellation(error):
            # A cancellation (or KeyboardInterrupt) that interrupted the close must stay
            # one: folded into a CleanupError, an Exception, it would no longer cancel the
            # task, and asyncio.timeout would not turn it into its TimeoutError.
            _report(error, [other for other in errors if other is not error], site)
            raise error
    if errors:
        raise CleanupError(f"finishing the stream created at {site} failed", errors)


def _awaits(task: asyncio.Task[Any], target: object) -> bool:
    """Whether ``task`` is suspended in an await that leads down to ``target``."""
    awaited: object = task.get_coro()
    for _ in range(_AWAIT_DEPTH):
        if awaited is target:
            return True
        if awaited is None:
            return False
        if inspect.iscoroutine(awaited):
            awaited = awaited.cr_await
        elif inspect.isasyncgen(awaited):  # a generator wrapping the stream
            awaited = awaited.ag_await
        else:
            # An async generator's asend() / athrow() (what `async for` awaits) shows
            # the generator it drives only to the garbage collector; a future, the end
            # of every chain, refers to none.
            generators = [r for r in gc.get_referents(awaited) if inspect.isasyncgen(r)]
            awaited = generators[0] if len(generators) == 1 else None
    return False


class _StreamState(Generic[T, C]):
    """Everything a stream knows; shared by the wrapper and its iterator."""

    __slots__ = (
        "callbacks",
        "cancel_sent",
        "chunks",
        "close_requested",
        "content_cache",
        "content_count",
        "detailed",
        "done_event",
        "ended_at",
        "error",
        "first_at",
        "idle_error",
        "idle_timeout",
        "iterator",
        "join",
        "max_gap",
        "outcome",
        "pending_errors",
        "phase",
        "read_scope",
        "reader",
        "site",
        "size_count",
        "size_total",
        "snapshot_cache",
        "source",
        "started_at",
        "stop_outcome",
        "warned",
    )

    def __init__(
        self,
        source: object,
        iterator: object,
        *,
        join: Callable[[Sequence[T]], C],
        callbacks: tuple[Callable[[StreamSnapshot[T, C]], object], ...],
        idle_timeout: float | None,
        detailed: bool,
        site: Site,
    ) -> None:
        self.source: object = source
        self.iterator: Any = iterator
        self.chunks: list[T] = []
        self.join = join
        self.callbacks = callbacks
        self.idle_timeout = idle_timeout
        self.detailed = detailed
        self.site = site
        self.phase = _RUNNING
        self.outcome = StreamOutcome.RUNNING
        self.error: BaseException | None = None
        self.started_at: float | None = None
        self.first_at: float | None = None
        self.ended_at: float | None = None
        self.max_gap: float | None = None
        self.content_cache: C | None = None
        self.content_count = -1
        self.size_count = 0
        self.size_total = 0
        self.snapshot_cache: StreamSnapshot[T, C] | None = None
        self.idle_error: StreamIdleTimeout | None = None
        # Closing from another task while a read is pending.
        self.reader: weakref.ref[asyncio.Task[Any]] | None = None
        self.read_scope: Any = None
        self.close_requested = False
        self.cancel_sent = False
        self.done_event: asyncio.Event | None = None
        self.pending_errors: list[BaseException] = []
        # What a cancellation that cuts the run short reports (a client disconnect is
        # delivered as a cancellation but is a CLOSED stream).
        self.stop_outcome = StreamOutcome.CANCELLED
        self.warned = False

    # -- reading -----------------------------------------------------------------

    def content(self) -> C:
        chunks = self.chunks
        if self.content_count != len(chunks):
            snapshot = self.snapshot_cache
            if snapshot is not None and snapshot._joined:
                self.content_cache = snapshot._joined[0]
            else:
                self.content_cache = self.join(chunks)
            self.content_count = len(chunks)
        return cast("C", self.content_cache)

    def byte_count(self) -> int:
        chunks = self.chunks
        count = len(chunks)
        if self.size_count != count:
            start = self.size_count
            self.size_total += _size_of_all(chunks[start:] if start else chunks)
            self.size_count = count
        return self.size_total

    def metrics(self) -> StreamMetrics:
        started, first, ended = self.started_at, self.first_at, self.ended_at
        end = _clock() if ended is None else ended
        return StreamMetrics(
            chunk_count=len(self.chunks),
            byte_count=self.byte_count(),
            ttfb=None if first is None or started is None else first - started,
            duration=None if started is None else end - started,
            max_gap=self.max_gap,
        )

    def snapshot(self) -> StreamSnapshot[T, C]:
        snapshot = self.snapshot_cache
        if snapshot is None:
            joined: list[C] = []
            if self.content_count == len(self.chunks):
                joined.append(cast("C", self.content_cache))
            snapshot = StreamSnapshot(
                chunks=tuple(self.chunks),
                metrics=self.metrics(),
                outcome=self.outcome,
                error=self.error,
                _join=self.join,
                _joined=joined,
            )
            self.snapshot_cache = snapshot
        return snapshot

    def running(self) -> bool:
        # A method, not a comparison at the call site: the phase changes across awaits
        # and yields, which a type checker's narrowing does not see.
        return self.phase is _RUNNING

    def raise_idle_timeout(self) -> NoReturn:
        self.idle_error = StreamIdleTimeout(
            f"the source of the stream created at {self.site} sent no chunk "
            f"within idle_timeout={self.idle_timeout} seconds"
        )
        raise self.idle_error

    def outcome_of(self, exc: BaseException) -> StreamOutcome:
        if exc is self.idle_error:
            return StreamOutcome.TIMED_OUT
        if _is_cancellation(exc):
            return self.stop_outcome
        return StreamOutcome.ERROR

    # -- finishing ---------------------------------------------------------------

    def begin_finish(self, outcome: StreamOutcome, error: BaseException | None) -> None:
        self.phase = _CLOSING
        self.outcome = outcome
        self.error = error
        if self.started_at is not None:
            self.ended_at = _clock()

    def close_targets(self) -> list[object]:
        iterator, source = self.iterator, self.source
        self.iterator = self.source = None
        return [iterator] if source is iterator else [iterator, source]

    def close_source(self) -> list[BaseException]:
        errors: list[BaseException] = []
        for target in self.close_targets():
            close = getattr(target, "close", None)
            if close is None:
                continue
            try:
                close()
            except BaseException as exc:  # noqa: BLE001 - reported by the caller
                errors.append(exc)
        return errors

    async def aclose_source(self) -> list[BaseException]:
        errors: list[BaseException] = []
        for target in self.close_targets():
            try:
                aclose = getattr(target, "aclose", None)
                if aclose is not None:
                    await aclose()
                    continue
                close = getattr(target, "close", None)
                if close is not None:
                    result = close()
                    if inspect.isawaitable(result):
                        await result
            except BaseException as exc:  # noqa: BLE001 - reported by the caller
                errors.append(exc)
        return errors

    def complete(self, errors: list[BaseException]) -> list[BaseException]:
        """Build the snapshot, run the callbacks, wake waiters; return every error."""
        try:
            for error in errors:
                _logger.error(
                    "closing the source of the stream created at %s failed",
                    self.site,
                    exc_info=error,
                )
            if self.callbacks:
                snapshot = self.snapshot()
                for callback in self.callbacks:
                    try:
                        callback(snapshot)
                    except BaseException as exc:
                        # Every callback runs; each error is logged, and raised where sound.
                        _logger.exception(
                            "on_complete callback %r of the stream created at %s raised",
                            callback,
                            self.site,
                        )
                        errors.append(exc)
        finally:
            self.phase = _DONE
            self.callbacks = ()
            if self.done_event is not None:
                self.done_event.set()
        return errors

    def finish(
        self, outcome: StreamOutcome, error: BaseException | None = None
    ) -> list[BaseException]:
        """Finish a sync stream; return the errors of closing and of the callbacks."""
        if self.phase is not _RUNNING:
            return []
        self.begin_finish(outcome, error)
        return self.complete(self.close_source())

    async def afinish(
        self, outcome: StreamOutcome, error: BaseException | None = None, *, shield: bool = False
    ) -> list[BaseException]:
        """Finish an async stream; ``shield`` closes the source through run_shielded."""
        if self.phase is not _RUNNING:
            await self.wait_done()
            return []
        self.begin_finish(outcome, error)
        if shield:
            shielded = await run_shielded_outcome(self.aclose_source())
            errors = shielded.value if shielded.value is not None else []
            if shielded.error is not None:
                errors.append(shielded.error)
        else:
            errors = await self.aclose_source()
        return self.complete(errors)

    async def wait_done(self) -> None:
        if self.phase is _DONE:
            return
        if self.done_event is None:
            self.done_event = _new_event()
        await self.done_event.wait()

    def warn_dropped(self, source: object, how: str) -> None:
        if self.warned:
            return
        self.warned = True
        warnings.warn(
            f"the stream created at {self.site} was dropped before it finished; {how}. "
            "Use 'with' / 'async with' on accumulate(), or call close() / aclose().",
            ResourceWarning,
            stacklevel=2,
            source=source,
        )

    # -- closing from another task while a read is pending ------------------------

    def note_reader(self) -> None:
        """Record the current asyncio task as the one reading (a loop starts or resumes)."""
        try:
            task = asyncio.current_task()
        except RuntimeError:  # not on asyncio: trio's reads each open a cancel scope
            return
        reader = self.reader
        if task is not None and (reader is None or reader() is not task):
            self.reader = weakref.ref(task)

    def cancel_pending_read(self, iterator: object) -> None:
        """Interrupt the read of ``iterator`` in progress in another task (asyncio or trio)."""
        if current_async_library() == "trio":
            scope = self.read_scope
            if scope is None:
                raise RuntimeError(
                    f"the stream created at {self.site} is being read by a task tether "
                    "cannot interrupt"
                )
            self.close_requested = True
            scope.cancel()
            return
        if getattr(iterator, "ag_await", None) is None:
            # Running rather than suspended in an await: this very task is inside the read.
            raise RuntimeError(
                f"the stream created at {self.site} cannot be closed from inside its own read"
            )
        task = None if self.reader is None else self.reader()
        if task is None or task.done() or not _awaits(task, iterator):
            # Never cancel a task that is not waiting for the source: it would be
            # interrupted in unrelated work while the read went on.
            raise RuntimeError(
                f"the stream created at {self.site} is being read by a task other than "
                "the one that last started a loop over it; close it from the reading task"
            )
        self.close_requested = True
        self.cancel_sent = True
        task.cancel()

    def withdraw_cancel(self) -> bool:
        """Take back the cancellation sent by :meth:`cancel_pending_read`.

        Returns whether another cancellation of the reading task is still pending.
        """
        self.cancel_sent = False
        task = asyncio.current_task()
        return task is not None and task.uncancel() > 0


# -- the iterators -------------------------------------------------------------------


def _iterate(state: _StreamState[T, C]) -> Iterator[T]:
    """Yield the chunks of a sync source, keeping each; finish the state at the end."""
    if state.phase is not _RUNNING:
        return
    it = cast("Iterator[T]", state.iterator)
    append = state.chunks.append
    state.started_at = _clock()
    try:
        if state.idle_timeout is None and not state.detailed:
            for chunk in it:
                state.first_at = _clock()
                append(chunk)
                yield chunk
                break
            # The hot loop: one append and one yield per chunk.
            for chunk in it:
                append(chunk)
                yield chunk
        else:
            idle = state.idle_timeout
            last: float | None = None
            max_gap = 0.0
            while True:
                read_started = _clock()
                try:
                    chunk = next(it)
                except StopIteration:
                    break
                now = _clock()
                if idle is not None and now - read_started > idle:
                    # A blocking next() cannot be interrupted; it is judged when it returns.
                    state.raise_idle_timeout()
                if last is None:
                    state.first_at = now
                else:
                    gap = now - last
                    if gap >= max_gap:
                        max_gap = gap
                        if state.detailed:
                            state.max_gap = gap
                last = now
                append(chunk)
                yield chunk
    except GeneratorExit:
        if state.running():
            # Closed without close(): the iterator was garbage-collected unfinished.
            errors = state.finish(StreamOutcome.CLOSED)
            state.warn_dropped(state, "its source was closed when its iterator was collected")
            _raise_all(errors, state.site)
        raise
    except BaseException as exc:
        # Only this thread reads, and close() finishes the state only while the iterator
        # waits at a yield: the state is still running here.
        errors = state.finish(state.outcome_of(exc), None if _is_cancellation(exc) else exc)
        _report(exc, errors, state.site)
        raise
    else:
        _raise_all(state.finish(StreamOutcome.COMPLETED), state.site)


async def _read_asyncio(state: _StreamState[T, C], it: AsyncIterator[T]) -> T | _Signal:
    idle = state.idle_timeout
    try:
        if idle is None:
            return await it.__anext__()
        async with asyncio.timeout(idle) as window:
            return await it.__anext__()
    except StopAsyncIteration:
        return _END
    except TimeoutError:
        if idle is not None and window.expired():
            return _IDLE
        raise


async def _read_trio(state: _StreamState[T, C], it: AsyncIterator[T]) -> T | _Signal:
    trio = sys.modules["trio"]
    result: T | _Signal = _IDLE  # what is left when the deadline cancels the read
    with trio.CancelScope() as scope:
        if state.idle_timeout is not None:
            scope.deadline = trio.current_time() + state.idle_timeout
        state.read_scope = scope
        try:
            result = await it.__anext__()
        except StopAsyncIteration:
            result = _END
        finally:
            state.read_scope = None
    if scope.cancelled_caught and state.close_requested:
        raise _ReadInterrupted
    return result


async def _aiterate(state: _StreamState[T, C]) -> AsyncIterator[T]:
    """Yield the chunks of an async source, keeping each; finish the state at the end."""
    if state.phase is not _RUNNING:
        return
    it = cast("AsyncIterator[T]", state.iterator)
    append = state.chunks.append
    on_asyncio = current_async_library() == "asyncio"
    if on_asyncio:
        # The loop that made this iterator may have run in another task than this read.
        state.note_reader()
    state.started_at = _clock()
    try:
        if on_asyncio and state.idle_timeout is None and not state.detailed:
            async for chunk in it:
                if state.close_requested:
                    # The source swallowed the cancellation of its read.
                    _ReadInterrupted.throw()
                state.first_at = _clock()
                append(chunk)
                yield chunk
                break
            # The hot loop: one flag test, one append and one yield per chunk.
            async for chunk in it:
                if state.close_requested:
                    _ReadInterrupted.throw()
                append(chunk)
                yield chunk
        else:
            read = _read_asyncio if on_asyncio else _read_trio
            last: float | None = None
            max_gap = 0.0
            while True:
                result = await read(state, it)
                if result is _END:
                    break
                if result is _IDLE:
                    state.raise_idle_timeout()
                if state.close_requested:
                    # The source swallowed the cancellation of its read.
                    _ReadInterrupted.throw()
                now = _clock()
                if last is None:
                    state.first_at = now
                else:
                    gap = now - last
                    if gap >= max_gap:
                        max_gap = gap
                        if state.detailed:
                            state.max_gap = gap
                last = now
                append(result)
                yield result
        if state.close_requested:
            # The source swallowed the cancellation of its read, then ended: the stream
            # was still closed, and the cancellation must be withdrawn all the same.
            _ReadInterrupted.throw()
    except GeneratorExit:
        if state.running():
            # Closed without aclose(): the event loop finalised the collected iterator.
            errors = await state.afinish(StreamOutcome.CLOSED)
            state.warn_dropped(
                state, "its source was closed later, by the event loop's generator finaliser"
            )
            _raise_all(errors, state.site)
        raise
    except BaseException as exc:
        if state.close_requested and state.running():
            # aclose() from another task cancelled this read: close here, end quietly.
            if state.cancel_sent:
                still_cancelled = state.withdraw_cancel()
            else:
                still_cancelled = _is_cancellation(exc) and not isinstance(exc, _ReadInterrupted)
            errors = await state.afinish(StreamOutcome.CLOSED, shield=still_cancelled)
            # Errors go to the closing task, which raises them; an interruption of this
            # task while it closed the source stays here.
            state.pending_errors = [e for e in errors if not _is_cancellation(e)]
            if still_cancelled and not isinstance(exc, _ReadInterrupted):
                raise
            for error in errors:
                if _is_cancellation(error):
                    raise error from None
            return
        if not state.running():
            # Closed meanwhile by another task between two reads: reading the closed
            # source failed, which ends the loop quietly. A cancellation of this task
            # during that read is the task's own, though, and must reach it.
            if _is_cancellation(exc) and not isinstance(exc, _ReadInterrupted):
                raise
            return
        cancelled = _is_cancellation(exc)
        errors = await state.afinish(
            state.outcome_of(exc), None if cancelled else exc, shield=cancelled
        )
        _report(exc, errors, state.site)
        raise
    else:
        _raise_all(await state.afinish(StreamOutcome.COMPLETED), state.site)


# -- the wrappers --------------------------------------------------------------------


class _StreamView(Generic[T_co, C_co]):
    """What :class:`Stream` and :class:`AsyncStream` share: the state they read from."""

    __slots__ = ("__weakref__", "_iterator", "_state")

    _iterator: Iterator[T_co] | AsyncIterator[T_co] | None

    def __init__(self, state: _StreamState[T_co, C_co]) -> None:
        self._state = state
        self._iterator = None

    @property
    def content(self) -> C_co:
        """The chunks so far, joined (``''.join`` / ``b''.join`` / ``join``).

        Computed once per new chunk count and cached, so reading it after the loop costs
        O(total size) once. Raises ``TypeError`` for chunks with no default join.
        """
        return self._state.content()

    @property
    def chunks(self) -> Sequence[T_co]:
        """Every chunk received so far, in order (a live view: do not modify it)."""
        return self._state.chunks

    @property
    def metrics(self) -> StreamMetrics:
        """Counts and timings, as of now."""
        return self._state.metrics()

    @property
    def outcome(self) -> StreamOutcome:
        """How the stream ended, or :attr:`StreamOutcome.RUNNING`."""
        return self._state.outcome

    @property
    def error(self) -> BaseException | None:
        """The source's exception or the idle timeout that ended the stream, if any."""
        return self._state.error

    def __repr__(self) -> str:
        state = self._state
        return (
            f"<tether.{type(self).__name__} {state.outcome.value} chunks={len(state.chunks)} "
            f"created at {state.site}>"
        )


@final
class Stream(_StreamView[T_co, C_co]):
    """A sync source being iterated, with its chunks, content and metrics kept.

    Made by :func:`accumulate`. Iterate it with ``for`` (more than once resumes where the
    last loop stopped); use it in a ``with`` block, or call :meth:`close`, so that the
    source is closed as soon as you stop. Not thread-safe: read and close it from one
    thread at a time.
    """

    __slots__ = ()
    _iterator: Iterator[T_co] | None

    def __iter__(self) -> Iterator[T_co]:
        iterator = self._iterator
        if iterator is None:
            iterator = self._iterator = _iterate(self._state)
        return iterator

    def __enter__(self) -> Stream[T_co, C_co]:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        state = self._state
        if state.phase is not _RUNNING:
            return
        if exc is None:
            self.close()
            return
        outcome = StreamOutcome.CANCELLED if _is_cancellation(exc) else StreamOutcome.CLOSED
        errors = state.finish(outcome)
        self._close_iterator()
        _report(exc, errors, state.site)

    if not TYPE_CHECKING:

        def __aiter__(self):
            raise TypeError(
                "this stream's source is synchronous: iterate it with 'for', not 'async for'"
            )

        async def __aenter__(self):
            raise TypeError(
                "this stream's source is synchronous: use 'with accumulate(...)', not 'async with'"
            )

        async def __aexit__(self, *exc_info):  # pragma: no cover - __aenter__ refuses
            return None

    def close(self) -> StreamSnapshot[T_co, C_co]:
        """Close the source (once) and return the final snapshot.

        Closing an unfinished stream reports :attr:`StreamOutcome.CLOSED`; closing a
        finished one just returns its snapshot. Safe to call from inside the ``for`` loop:
        the loop then ends.

        Returns:
            The final snapshot.

        Raises:
            RuntimeError: the stream is being read in another thread right now.
            Exception: what closing the source or an ``on_complete`` callback raised (also
                logged); several errors raise :class:`~tether.CleanupError`.
        """
        state = self._state
        if state.phase is _RUNNING:
            iterator = self._iterator
            if iterator is not None and getattr(iterator, "gi_running", False):
                raise RuntimeError(
                    f"the stream created at {state.site} is being read right now; "
                    "close it from the thread that reads it"
                )
            errors = state.finish(StreamOutcome.CLOSED)
            self._close_iterator()
            _raise_all(errors, state.site)
        return state.snapshot()

    def _close_iterator(self) -> None:
        iterator = self._iterator
        if isinstance(iterator, Generator):
            # The state is finished, so the iterator's exit handler only returns.
            iterator.close()

    def __del__(self) -> None:
        state: _StreamState[T_co, C_co] | None = getattr(self, "_state", None)
        if state is None or state.phase is not _RUNNING:
            return
        iterator = self._iterator
        if iterator is not None:
            # Drop the iterator: if this wrapper held the last reference, the generator is
            # closed right now and finishes the state; if a for loop still runs it, it
            # stays alive and finishes the state itself when it ends or is dropped.
            state.warned = True  # reported below, with this wrapper as the source
            held = weakref.ref(iterator)
            self._iterator = None
            del iterator
            if held() is not None:
                state.warned = False
                return
        errors = state.finish(StreamOutcome.CLOSED)
        state.warned = False
        state.warn_dropped(self, "its source was closed by the garbage collector")
        _raise_all(errors, state.site)


@final
class AsyncStream(_StreamView[T_co, C_co]):
    """An async source being iterated, with its chunks, content and metrics kept.

    Made by :func:`accumulate`. Iterate it with ``async for``; use it in an
    ``async with`` block, or await :meth:`aclose`, so that the source is closed as soon
    as you stop. Works under asyncio (plain tasks and anyio cancel scopes) and trio.
    """

    __slots__ = ()
    _iterator: AsyncIterator[T_co] | None

    def __aiter__(self) -> AsyncIterator[T_co]:
        iterator = self._iterator
        if iterator is None:
            iterator = self._iterator = _aiterate(self._state)
        else:
            # A later loop, perhaps in another task: aclose() must interrupt this one.
            self._state.note_reader()
        return iterator

    async def __aenter__(self) -> AsyncStream[T_co, C_co]:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._state.phase is _DONE:
            return
        if exc is None:
            await self.aclose()
            return
        cancelled = _is_cancellation(exc)
        outcome = StreamOutcome.CANCELLED if cancelled else StreamOutcome.CLOSED
        errors = await self._close(outcome, shield=cancelled)
        _report(exc, errors, self._state.site)

    if not TYPE_CHECKING:

        def __iter__(self):
            raise TypeError(
                "this stream's source is asynchronous: iterate it with 'async for', not 'for'"
            )

        def __enter__(self):
            raise TypeError(
                "this stream's source is asynchronous: use 'async with accumulate(...)', not 'with'"
            )

        def __exit__(self, *exc_info):  # pragma: no cover - __enter__ refuses
            return None

    async def aclose(self) -> StreamSnapshot[T_co, C_co]:
        """Close the source (once) and return the final snapshot.

        Closing an unfinished stream reports :attr:`StreamOutcome.CLOSED`; closing a
        finished one just returns its snapshot. May be called from another task while a
        read is pending: that read is cancelled in the reading task, which closes the
        source and ends its loop quietly, and ``aclose()`` returns once it has (a source
        that swallows the cancellation is stopped at its next chunk, which is not
        delivered). Several ``aclose()`` calls at once cancel the read once; the others
        wait for it. On asyncio the read is cancelled with ``Task.cancel()``, as
        ``asyncio.timeout`` does, so work the source shields from anyio cancellation only
        (``anyio.to_thread.run_sync``) is not waited for.

        Returns:
            The final snapshot.

        Raises:
            RuntimeError: a read is pending in a task tether cannot interrupt (on asyncio,
                a task other than the one that last started a loop over the stream).
            Exception: what closing the source or an ``on_complete`` callback raised (also
                logged); several errors raise :class:`~tether.CleanupError`. A
                cancellation of the calling task while it closes the source propagates
                as such, with the other errors as notes.
        """
        _raise_all(await self._close(StreamOutcome.CLOSED), self._state.site)
        return self._state.snapshot()

    def _read_pending(self) -> bool:
        iterator = self._iterator
        return iterator is not None and (
            getattr(iterator, "ag_await", None) is not None
            or bool(getattr(iterator, "ag_running", False))
        )

    async def _close(self, outcome: StreamOutcome, *, shield: bool = False) -> list[BaseException]:
        state = self._state
        if state.phase is not _RUNNING:
            await state.wait_done()
            return []
        if self._read_pending():
            if not state.close_requested:
                # A second aclose() meanwhile waits for the first one's: cancelling again
                # would cancel the reading task itself, whose loop must end quietly.
                state.cancel_pending_read(self._iterator)
            await state.wait_done()
            errors, state.pending_errors = state.pending_errors, []
            return errors
        errors = await state.afinish(outcome, shield=shield)
        iterator = self._iterator
        if iterator is not None and not self._read_pending():
            # The state is finished, so the iterator's exit handler only returns.
            await cast("Coroutine[Any, Any, None]", iterator.aclose())  # type: ignore[attr-defined]
        return errors

    def _cancellation_means_closed(self) -> None:
        """Report a cancellation that cuts this stream short as ``CLOSED``.

        For a consumer that stops by cancelling the reading task's scope, such as a
        response whose client disconnected.
        """
        self._state.stop_outcome = StreamOutcome.CLOSED

    def __del__(self) -> None:
        state: _StreamState[T_co, C_co] | None = getattr(self, "_state", None)
        if state is None or state.phase is not _RUNNING:
            return
        iterator = self._iterator
        if iterator is not None:
            self._iterator = None
            if state.started_at is not None:
                # Nothing can be awaited here. A started async generator that nobody else
                # holds is closed later by the event loop's finaliser, and its exit handler
                # finishes the state and warns.
                return
            # An iterator not started yet may be held by an `async for` about to start.
            held = weakref.ref(iterator)
            del iterator
            if held() is not None:
                return
        how = _finish_dropped_unstarted(state)
        state.warn_dropped(self, how)


_closing_later: set[asyncio.Task[Any]] = set()


def _finish_dropped_unstarted(state: _StreamState[Any, Any]) -> str:
    """Finish an async stream dropped before its first read; say what became of the source."""
    state.begin_finish(StreamOutcome.CLOSED, None)
    targets = state.close_targets()
    needs_closing = [t for t in targets if hasattr(t, "aclose") or hasattr(t, "close")]
    # An async generator that never started has no code to run on closing.
    needs_closing = [t for t in needs_closing if not inspect.isasyncgen(t)]
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        loop = None
    if not needs_closing or loop is None:
        state.complete([])
        if needs_closing:
            return "it was never iterated, and with no event loop running its source was not closed"
        return "it was never iterated"

    async def close_later() -> None:
        state.iterator, state.source = needs_closing[0], needs_closing[-1]
        state.complete(await state.aclose_source())

    task = loop.create_task(close_later())
    _closing_later.add(task)
    task.add_done_callback(_closing_later.discard)
    return "it was never iterated; its source is being closed in a task of its own"


# -- accumulate ----------------------------------------------------------------------


class _AsyncByteResponse(Protocol):
    """A streaming HTTP response such as ``httpx.Response`` from ``AsyncClient``."""

    def aiter_bytes(self) -> AsyncIterator[bytes]: ...
    async def aclose(self) -> None: ...


def _check_options(idle_timeout: object, timing: object, join: object) -> None:
    if idle_timeout is not None:
        if isinstance(idle_timeout, bool) or not isinstance(idle_timeout, int | float):
            raise TypeError(
                f"idle_timeout must be a number of seconds or None, "
                f"got {type(idle_timeout).__name__}"
            )
        if not idle_timeout > 0:
            raise ValueError(f"idle_timeout must be positive, got {idle_timeout!r}")
    if timing not in ("basic", "detailed"):
        raise ValueError(f"timing must be 'basic' or 'detailed', got {timing!r}")
    if join is not None and not callable(join):
        raise TypeError(f"join must be a callable or None, got {type(join).__name__}")


@overload
def accumulate(
    source: AsyncIterable[str],
    *,
    join: None = None,
    on_complete: Callbacks[str, str] = None,
    idle_timeout: float | None = None,
    timing: Timing = "basic",
) -> AsyncStream[str, str]: ...
@overload
def accumulate(
    source: AsyncIterable[bytes] | _AsyncByteResponse,
    *,
    join: None = None,
    on_complete: Callbacks[bytes, bytes] = None,
    idle_timeout: float | None = None,
    timing: Timing = "basic",
) -> AsyncStream[bytes, bytes]: ...
@overload
def accumulate(
    source: AsyncIterable[T],
    *,
    join: Callable[[Sequence[T]], C],
    on_complete: Callbacks[T, C] = None,
    idle_timeout: float | None = None,
    timing: Timing = "basic",
) -> AsyncStream[T, C]: ...
@overload
def accumulate(
    source: AsyncIterable[T],
    *,
    join: None = None,
    on_complete: Callbacks[T, str | bytes] = None,
    idle_timeout: float | None = None,
    timing: Timing = "basic",
) -> AsyncStream[T, str | bytes]: ...
@overload
def accumulate(
    source: Iterable[str],
    *,
    join: None = None,
    on_complete: Callbacks[str, str] = None,
    idle_timeout: float | None = None,
    timing: Timing = "basic",
) -> Stream[str, str]: ...
@overload
def accumulate(
    source: Iterable[bytes],
    *,
    join: None = None,
    on_complete: Callbacks[bytes, bytes] = None,
    idle_timeout: float | None = None,
    timing: Timing = "basic",
) -> Stream[bytes, bytes]: ...
@overload
def accumulate(
    source: Iterable[T],
    *,
    join: Callable[[Sequence[T]], C],
    on_complete: Callbacks[T, C] = None,
    idle_timeout: float | None = None,
    timing: Timing = "basic",
) -> Stream[T, C]: ...
@overload
def accumulate(
    source: Iterable[T],
    *,
    join: None = None,
    on_complete: Callbacks[T, str | bytes] = None,
    idle_timeout: float | None = None,
    timing: Timing = "basic",
) -> Stream[T, str | bytes]: ...
def accumulate(
    source: object,
    *,
    join: Callable[[Sequence[Any]], object] | None = None,
    on_complete: object = None,
    idle_timeout: float | None = None,
    timing: Timing = "basic",
) -> Stream[Any, Any] | AsyncStream[Any, Any]:
    """Wrap ``source`` so that iterating it keeps every chunk, and closes it exactly once.

    ::

        with tether.accumulate(chunks(), on_complete=record) as stream:
            for chunk in stream:
                send(chunk)
        stream.content, stream.metrics.ttfb, stream.outcome

    An async source gives an :class:`AsyncStream` (``async for`` / ``async with``), a
    sync one a :class:`Stream` (``for`` / ``with``). The source is closed — generator
    ``close()`` / ``aclose()``, or the object's own ``close()`` / ``aclose()`` — when the
    stream ends, is closed, or its ``with`` block is left, whatever the reason.

    Args:
        source: any iterable or async iterable: a generator, an async generator, a list,
            an SDK stream object with ``close()`` / ``aclose()``. A streaming response
            with ``aiter_bytes()`` and ``aclose()`` (an ``httpx.Response`` from an
            ``AsyncClient``) is read as bytes and closed at the end.
        join: combines the chunks into ``content``. By default ``''.join`` for text and
            ``b''.join`` for bytes (an empty stream's default content is ``''``, or
            ``b''`` for a response); other chunk types need ``join``.
        on_complete: a callable, or several, called once with the final
            :class:`StreamSnapshot` as soon as the outcome is known and the source is
            closed. An exception in a callback is logged, and raised to the consumer
            where that is sound (the end of the loop, ``close()``, a ``with`` block left
            normally); otherwise it is attached as a note to the exception propagating.
        idle_timeout: seconds the source may go without a chunk; then the stream ends
            ``TIMED_OUT`` and the consumer gets :class:`~tether.StreamIdleTimeout`. An
            async read is cancelled at the deadline; a blocking sync ``next()`` cannot be
            interrupted, so it is judged when it returns.
        timing: ``"basic"`` reads the clock at the start, at the first chunk and at the
            end only (and per chunk where ``idle_timeout`` needs it); ``"detailed"``
            reads it per chunk to record ``max_gap``.

    Returns:
        A :class:`Stream` or an :class:`AsyncStream`.

    Raises:
        TypeError: ``source`` is not iterable, or an option has the wrong type.
        ValueError: ``idle_timeout`` is not positive or ``timing`` is unknown.
    """
    _check_options(idle_timeout, timing, join)
    callbacks = _callbacks(on_complete)
    site = user_site()
    kind = type(source)
    empty: str | bytes = ""
    iterator: object
    if hasattr(kind, "__aiter__"):
        iterator = aiter(cast("AsyncIterable[object]", source))
        is_async = True
    elif hasattr(kind, "__iter__") or hasattr(kind, "__getitem__"):
        iterator = iter(cast("Iterable[object]", source))
        is_async = False
    elif callable(getattr(source, "aiter_bytes", None)) and callable(
        getattr(source, "aclose", None)
    ):
        iterator = cast("_AsyncByteResponse", source).aiter_bytes()
        is_async = True
        empty = b""
    else:
        hint = "; did you forget 'await'?" if inspect.isawaitable(source) else ""
        raise TypeError(
            f"accumulate() needs an iterable or an async iterable source, got {kind.__name__}{hint}"
        )
    state: _StreamState[Any, Any] = _StreamState(
        source,
        iterator,
        join=join if join is not None else _DefaultJoin(empty, site),
        callbacks=callbacks,
        idle_timeout=None if idle_timeout is None else float(idle_timeout),
        detailed=timing == "detailed",
        site=site,
    )
    if is_async:
        return AsyncStream(state)
    return Stream(state)
