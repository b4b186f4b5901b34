"""AsyncScope: the Scope error rule, plus async cleanups that survive cancellation."""

from __future__ import annotations

import asyncio
import gc
import math
import sys
from collections.abc import Awaitable, Callable, Generator
from types import TracebackType
from typing import Self

import anyio
import anyio.lowlevel
import pytest

from tether import AsyncScope, CleanupError, cleanup_errors

BOTH_BACKENDS = pytest.mark.parametrize("anyio_backend", ["asyncio", "trio"])


class AsyncRecorder:
    """An async context manager that logs entry and exit and what its ``__aexit__`` saw."""

    def __init__(
        self,
        label: str,
        log: list[str],
        *,
        raises: BaseException | None = None,
        suppress: bool = False,
    ) -> None:
        self.label = label
        self.log = log
        self.raises = raises
        self.suppress = suppress
        self.shown: BaseException | None = None

    async def __aenter__(self) -> Self:
        await anyio.lowlevel.checkpoint()
        self.log.append(f"enter {self.label}")
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool:
        self.shown = exc
        # An await inside a cleanup is where an unshielded cancellation would strike.
        await anyio.lowlevel.checkpoint()
        self.log.append(f"exit {self.label}")
        if self.raises is not None:
            raise self.raises
        return self.suppress


class SyncRecorder:
    """A plain context manager, for mixing sync and async cleanups."""

    def __init__(self, label: str, log: list[str]) -> None:
        self.label = label
        self.log = log

    def __enter__(self) -> Self:
        self.log.append(f"enter {self.label}")
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.log.append(f"exit {self.label}")


async def slow_cleanup(log: list[str], seconds: float = 0.02) -> None:
    """A cleanup that must sleep to finish: an unshielded cancellation would cut it short."""
    log.append("cleanup start")
    await anyio.sleep(seconds)
    log.append("cleanup end")


def _raise(error: BaseException) -> None:
    raise error


async def afail(error: BaseException) -> None:
    await anyio.lowlevel.checkpoint()
    raise error


async def araised(body: Callable[[], Awaitable[object]]) -> BaseException:
    """Await ``body()`` and return what it raised; fail the test if it raised nothing."""
    try:
        await body()
    except BaseException as exc:
        return exc
    pytest.fail("nothing was raised")


# --- order and the error rule ---------------------------------------------------------


@BOTH_BACKENDS
async def test_sync_and_async_cleanups_run_last_in_first_out() -> None:
    """Sync and async cleanups share one stack, unwound in reverse order."""
    log: list[str] = []
    async with AsyncScope() as scope:
        scope.enter(SyncRecorder("sync cm", log))
        recorder = await scope.enter_async(AsyncRecorder("async cm", log))
        scope.callback(log.append, "callback")
        scope.callback_async(slow_cleanup, log, 0)
        assert isinstance(recorder, AsyncRecorder)
    assert log == [
        "enter sync cm",
        "enter async cm",
        "cleanup start",
        "cleanup end",
        "callback",
        "exit async cm",
        "exit sync cm",
    ]


@BOTH_BACKENDS
async def test_body_error_without_cleanup_errors_propagates_unchanged() -> None:
    """Row 1: the body's exception propagates as itself."""
    error = ValueError("body")
    log: list[str] = []

    async def body() -> None:
        async with AsyncScope() as scope:
            await scope.enter_async(AsyncRecorder("a", log))
            raise error

    assert await araised(body) is error
    assert cleanup_errors(error) == ()
    assert log == ["enter a", "exit a"]


@BOTH_BACKENDS
async def test_body_error_wins_and_carries_async_cleanup_errors() -> None:
    """Row 2: the body's error propagates with the async cleanup errors attached, in order."""
    body_error = ValueError("body")
    first, second = OSError("first"), KeyError("second")
    log: list[str] = []

    async def body() -> None:
        async with AsyncScope(name="job") as scope:
            scope.callback_async(afail, second, name="notify")
            await scope.enter_async(AsyncRecorder("a", log, raises=first), name="conn")
            raise body_error

    assert await araised(body) is body_error
    assert cleanup_errors(body_error) == (first, second)
    assert body_error.__notes__ == [
        "cleanup 'conn' of scope 'job' also failed: OSError: first",
        "cleanup 'notify' of scope 'job' also failed: KeyError: 'second'",
    ]


@BOTH_BACKENDS
async def test_one_failed_async_cleanup_after_success_propagates_itself() -> None:
    """Row 3: body succeeded, one async cleanup raised: that exception propagates."""
    error = OSError("close failed")
    log: list[str] = []

    async def body() -> None:
        async with AsyncScope() as scope:
            await scope.enter_async(AsyncRecorder("a", log))
            scope.callback_async(afail, error)

    assert await araised(body) is error
    assert log == ["enter a", "exit a"]


@BOTH_BACKENDS
async def test_several_failed_cleanups_after_success_raise_cleanup_error() -> None:
    """Row 4: a CleanupError holds every cleanup error, sync and async, in run order."""
    first, second = OSError("first"), ValueError("second")

    async def body() -> None:
        async with AsyncScope(name="job") as scope:
            scope.callback(_raise, second)
            scope.callback_async(afail, first)

    caught = await araised(body)
    assert isinstance(caught, CleanupError)
    assert caught.exceptions == (first, second)
    assert caught.message == "2 cleanups of scope 'job' failed"


async def test_async_context_manager_can_suppress_the_body_error() -> None:
    """An ``__aexit__`` returning True suppresses the body's error, as ``async with`` would."""
    log: list[str] = []
    outer = AsyncRecorder("outer", log)
    async with AsyncScope() as scope:
        await scope.enter_async(outer)
        await scope.enter_async(AsyncRecorder("suppressor", log, suppress=True))
        raise ValueError("suppressed")
    assert outer.shown is None


async def test_async_exits_are_shown_the_body_error() -> None:
    """Each ``__aexit__`` receives the body's exception."""
    body_error = ValueError("body")
    log: list[str] = []
    first, second = AsyncRecorder("first", log), AsyncRecorder("second", log)

    async def body() -> None:
        async with AsyncScope() as scope:
            await scope.enter_async(first)
            await scope.enter_async(second)
            raise body_error

    assert await araised(body) is body_error
    assert (first.shown, second.shown) == (body_error, body_error)


# --- cancellation -------------------------------------------------------------------------


async def test_task_cancel_runs_the_async_cleanup_to_its_end_then_cancels() -> None:
    """``task.cancel()`` in the body, and again during the cleanup: it still finishes."""
    log: list[str] = []
    body_waiting = asyncio.Event()
    cleanup_started = asyncio.Event()
    release = asyncio.Event()

    async def cleanup() -> None:
        log.append("cleanup start")
        cleanup_started.set()
        await release.wait()
        await asyncio.sleep(0)
        log.append("cleanup end")

    async def work() -> None:
        async with AsyncScope() as scope:
            scope.callback_async(cleanup)
            body_waiting.set()
            await asyncio.sleep(60)  # failure guard: the test cancels this

    task = asyncio.create_task(work())
    await body_waiting.wait()
    task.cancel()
    await cleanup_started.wait()
    task.cancel()  # a second cancellation while the cleanup runs
    await asyncio.sleep(0)
    release.set()
    await asyncio.wait([task])
    assert task.cancelled()
    assert log == ["cleanup start", "cleanup end"]


async def test_asyncio_timeout_runs_the_cleanup_then_raises_timeout_error() -> None:
    """``asyncio.timeout`` expiring in the body: the cleanup completes, then TimeoutError."""
    log: list[str] = []

    async def work() -> None:
        async with asyncio.timeout(0.01):
            async with AsyncScope() as scope:
                scope.callback_async(slow_cleanup, log, 0.05)
                await asyncio.sleep(60)  # failure guard: the timeout cancels this

    assert isinstance(await araised(work), TimeoutError)
    assert log == ["cleanup start", "cleanup end"]


@BOTH_BACKENDS
async def test_anyio_cancel_scope_runs_the_cleanup_then_is_caught() -> None:
    """A cancelled anyio scope (level-triggered) cannot interrupt the cleanup, then catches."""
    log: list[str] = []
    with anyio.CancelScope() as cancel_scope:
        async with AsyncScope() as scope:
            scope.callback_async(slow_cleanup, log)
            cancel_scope.cancel()
            await anyio.sleep(60)  # failure guard: cancelled at once
    assert cancel_scope.cancelled_caught
    assert log == ["cleanup start", "cleanup end"]


@BOTH_BACKENDS
async def test_move_on_after_runs_the_cleanup_then_moves_on() -> None:
    """``anyio.move_on_after`` expiring in the body: cleanup completes, the scope catches."""
    log: list[str] = []
    with anyio.move_on_after(0.01) as cancel_scope:
        async with AsyncScope() as scope:
            scope.callback_async(slow_cleanup, log, 0.05)
            await anyio.sleep(60)  # failure guard: the deadline cancels this
    assert cancel_scope.cancelled_caught
    assert log == ["cleanup start", "cleanup end"]


@BOTH_BACKENDS
async def test_cancel_scope_cancelled_during_cleanup_of_a_successful_body() -> None:
    """A cancellation that arrives while cleaning up after success still cancels the task,
    and carries the cleanup errors."""
    log: list[str] = []
    seen: list[BaseException] = []
    failure = OSError("cleanup failed")
    with anyio.CancelScope() as cancel_scope:

        async def cancel_then_finish() -> None:
            cancel_scope.cancel()
            await anyio.sleep(0.01)  # would be cut short without the shield
            log.append("cleanup end")

        try:
            async with AsyncScope() as scope:
                scope.callback(_raise, failure)
                scope.callback_async(cancel_then_finish)
                log.append("body done")
        except BaseException as exc:
            seen.append(exc)
            raise
    assert cancel_scope.cancelled_caught
    assert log == ["body done", "cleanup end"]
    assert [cleanup_errors(exc) for exc in seen] == [(failure,)]


async def test_task_cancelled_during_cleanup_of_a_successful_body_ends_cancelled() -> None:
    """``task.cancel()`` while cleaning up after success: the task ends cancelled, and the
    CancelledError carries the cleanup errors."""
    log: list[str] = []
    seen: list[BaseException] = []
    failure = OSError("cleanup failed")
    cleanup_started = asyncio.Event()
    release = asyncio.Event()

    async def cleanup() -> None:
        cleanup_started.set()
        await release.wait()
        log.append("cleanup end")

    async def work() -> None:
        try:
            async with AsyncScope() as scope:
                scope.callback(_raise, failure)
                scope.callback_async(cleanup)
        except BaseException as exc:
            seen.append(exc)
            raise

    task = asyncio.create_task(work())
    await cleanup_started.wait()
    task.cancel()
    await asyncio.sleep(0)
    release.set()
    await asyncio.wait([task])
    assert task.cancelled()
    assert log == ["cleanup end"]
    assert [type(exc) for exc in seen] == [asyncio.CancelledError]
    assert cleanup_errors(seen[0]) == (failure,)


async def test_asyncio_timeout_expiring_during_cleanup_raises_timeout_error() -> None:
    """``asyncio.timeout`` expiring during the cleanup of a successful body still fires."""
    log: list[str] = []

    async def work() -> None:
        async with asyncio.timeout(0.01), AsyncScope() as scope:
            scope.callback_async(slow_cleanup, log, 0.05)

    assert isinstance(await araised(work), TimeoutError)
    assert log == ["cleanup start", "cleanup end"]


async def test_body_error_still_wins_over_a_cancellation_during_cleanup() -> None:
    """The body's real error is never masked, not even by a cancellation during cleanup."""
    body_error = ValueError("body")
    cleanup_started = asyncio.Event()
    release = asyncio.Event()

    async def work() -> None:
        async with AsyncScope() as scope:
            scope.callback_async(release.wait)
            cleanup_started.set()
            raise body_error

    task = asyncio.create_task(work())
    await cleanup_started.wait()
    await asyncio.sleep(0)  # the task is now waiting for its cleanup
    task.cancel()
    await asyncio.sleep(0)
    release.set()
    await asyncio.wait([task])
    assert task.exception() is body_error


async def test_a_cancellation_during_cleanup_reaches_the_task_after_the_body_error() -> None:
    """The body's error wins, but a ``task.cancel()`` that arrived during the cleanup is not
    lost: the code that catches the error is cancelled at its next await."""
    body_error = ValueError("body")
    log: list[object] = []

    async def work() -> None:
        task = asyncio.current_task()
        assert task is not None
        try:
            async with AsyncScope() as scope:
                scope.callback_async(slow_cleanup, log)
                # Runs once the task waits, which is for its cleanup.
                asyncio.get_running_loop().call_soon(task.cancel)
                raise body_error
        except ValueError as exc:
            log.append(exc)
        await asyncio.sleep(0.5)  # failure guard: the cancellation cuts this short
        log.append("ran on")

    task = asyncio.create_task(work())
    await asyncio.wait([task])
    assert (log, task.cancelled()) == (["cleanup start", "cleanup end", body_error], True)


async def test_an_asyncio_timeout_expiring_during_cleanup_fires_after_the_body_error() -> None:
    """An ``asyncio.timeout`` that expires during the cleanup after the body's error fires
    all the same, in the code that catches that error: TimeoutError, not an overrun."""
    body_error = ValueError("body")
    log: list[object] = []

    async def work() -> None:
        async with asyncio.timeout(None) as deadline:
            try:
                async with AsyncScope() as scope:
                    scope.callback_async(slow_cleanup, log)
                    deadline.reschedule(asyncio.get_running_loop().time())  # due at once
                    raise body_error
            except ValueError as exc:
                log.append(exc)
            await asyncio.sleep(0.5)  # failure guard: the deadline cuts this short
            log.append("ran on")

    assert isinstance(await araised(work), TimeoutError)
    assert log == ["cleanup start", "cleanup end", body_error]


async def test_a_timeout_that_the_body_error_leaves_cancels_nothing_afterwards() -> None:
    """When the body's error goes out through an ``asyncio.timeout`` that expired during
    the cleanup, the timeout withdraws its cancellation: the task is not cancelled later."""
    body_error = ValueError("body")

    async def leaves_through_the_timeout() -> None:
        async with asyncio.timeout(None) as deadline, AsyncScope() as scope:
            scope.callback_async(slow_cleanup, [])
            deadline.reschedule(asyncio.get_running_loop().time())  # due at once
            raise body_error

    async def work() -> BaseException:
        error = await araised(leaves_through_the_timeout)
        await asyncio.sleep(0.01)  # where a stray cancellation would strike
        return error

    task = asyncio.create_task(work())
    await asyncio.wait([task])
    assert not task.cancelled()
    assert (task.result(), task.cancelling()) == (body_error, 0)


@pytest.mark.parametrize("interrupt", [KeyboardInterrupt, SystemExit])
def test_an_async_cleanup_raising_keyboard_interrupt_is_attached_to_the_body_error(
    interrupt: type[BaseException],
) -> None:
    """As in a Scope, an async cleanup's ``KeyboardInterrupt`` or ``SystemExit`` is a
    cleanup error: the body's error propagates carrying it, and every cleanup runs. (It
    must not escape the event loop, as asyncio makes those two do from a task.)"""
    body_error = ValueError("body")
    log: list[str] = []

    async def main() -> None:
        async with AsyncScope(name="job") as scope:
            scope.callback(log.append, "registered first")
            scope.callback_async(afail, interrupt(), name="interrupted")
            raise body_error

    try:
        asyncio.run(main())
    except BaseException as exc:
        caught = exc
    assert caught is body_error
    assert [type(error) for error in cleanup_errors(body_error)] == [interrupt]
    assert log == ["registered first"]


def test_an_async_cleanup_raising_keyboard_interrupt_does_not_stop_the_others() -> None:
    """After a successful body the interrupt propagates, once every cleanup has run, also
    under ``run_until_complete``, which leaves the loop at the first escaping interrupt."""
    log: list[str] = []

    async def main() -> None:
        async with AsyncScope() as scope:
            scope.callback_async(slow_cleanup, log, 0)
            scope.callback(log.append, "sync cleanup")
            scope.callback_async(afail, KeyboardInterrupt(), name="interrupted")

    loop = asyncio.new_event_loop()
    try:
        with pytest.raises(KeyboardInterrupt):
            loop.run_until_complete(main())
        assert log == ["sync cleanup", "cleanup start", "cleanup end"]
    finally:
        loop.close()


# --- cleanup_timeout --------------------------------------------------------------------


@BOTH_BACKENDS
async def test_overrunning_cleanup_is_abandoned_and_reported_as_timeout_error() -> None:
    """A cleanup overrunning ``cleanup_timeout`` is cut off; after success its TimeoutError
    propagates, and the cleanups registered before it still run."""
    log: list[str] = []
    never = anyio.Event()

    async def hang() -> None:
        log.append("hang start")
        await never.wait()
        log.append("hang end")  # pragma: no cover - abandoned before this

    async def body() -> None:
        async with AsyncScope(cleanup_timeout=0.01) as scope:
            scope.callback(log.append, "earlier cleanup")
            scope.callback_async(hang, name="hang")

    caught = await araised(body)
    assert isinstance(caught, TimeoutError)
    assert "within 0.01 seconds" in str(caught)
    assert log == ["hang start", "earlier cleanup"]


@BOTH_BACKENDS
async def test_overrunning_cleanup_is_attached_to_the_body_error() -> None:
    """With a body error, the cleanup's TimeoutError is attached to it."""
    never = anyio.Event()
    body_error = ValueError("body")

    async def body() -> None:
        async with AsyncScope(name="job", cleanup_timeout=0.01) as scope:
            scope.callback_async(never.wait, name="wait forever")
            raise body_error

    assert await araised(body) is body_error
    assert [type(error) for error in cleanup_errors(body_error)] == [TimeoutError]
    assert body_error.__notes__[0].startswith(
        "cleanup 'wait forever' of scope 'job' also failed: TimeoutError"
    )


async def test_cleanup_timeout_does_not_bound_sync_cleanups_or_fast_ones() -> None:
    """Cleanups that finish in time are unaffected by the bound."""
    log: list[str] = []
    async with AsyncScope(cleanup_timeout=30) as scope:
        scope.callback_async(slow_cleanup, log, 0)
    assert log == ["cleanup start", "cleanup end"]
    assert scope.cleanup_timeout == 30


# --- lifecycle --------------------------------------------------------------------------


async def test_aclose_runs_cleanups_early_and_twice_is_harmless() -> None:
    """``aclose()`` runs the cleanups now; a second call and leaving the block add nothing."""
    log: list[str] = []
    async with AsyncScope() as scope:
        scope.callback_async(slow_cleanup, log, 0)
        await scope.aclose()
        await scope.aclose()
        log.append("after close")
    assert log == ["cleanup start", "cleanup end", "after close"]


async def test_aclose_raises_per_the_error_rule() -> None:
    """``aclose()`` raises the one cleanup error, as a successful body would."""
    error = OSError("one")
    scope = AsyncScope()
    scope.callback_async(afail, error)
    assert await araised(scope.aclose) is error


async def test_body_error_after_aclose_propagates() -> None:
    """Leaving the block with an error after ``aclose()`` re-raises it."""
    error = ValueError("late")

    async def body() -> None:
        async with AsyncScope() as scope:
            await scope.aclose()
            raise error

    assert await araised(body) is error


async def test_registration_after_aclose_is_rejected() -> None:
    """A closed scope refuses every kind of registration, naming itself."""
    log: list[str] = []
    scope = AsyncScope(name="done")
    await scope.aclose()
    for register in (
        lambda: scope.callback(print),
        lambda: scope.callback_async(slow_cleanup, log),
        lambda: scope.enter(SyncRecorder("late", log)),
    ):
        with pytest.raises(RuntimeError, match="scope 'done' is closed"):
            register()
    with pytest.raises(RuntimeError, match="scope 'done' is closed"):
        await scope.enter_async(AsyncRecorder("late", log))
    assert log == []


async def test_entering_twice_is_an_error() -> None:
    """An AsyncScope is entered once."""
    scope = AsyncScope(name="once")
    async with scope:
        with pytest.raises(RuntimeError, match="already entered"):
            await scope.__aenter__()


async def test_enter_async_finishing_after_another_task_closed_the_scope() -> None:
    """If the scope closed while ``__aenter__`` ran, the context manager is exited at once."""
    log: list[str] = []
    entering = asyncio.Event()
    release = asyncio.Event()

    class SlowToEnter(AsyncRecorder):
        async def __aenter__(self) -> Self:
            entering.set()
            await release.wait()
            return await super().__aenter__()

    scope = AsyncScope(name="raced")
    task = asyncio.create_task(scope.enter_async(SlowToEnter("slow", log)))
    await entering.wait()
    await scope.aclose()
    release.set()
    with pytest.raises(RuntimeError, match="scope 'raced' is closed"):
        await task
    assert log == ["enter slow", "exit slow"]


# --- bad input ----------------------------------------------------------------------------


@pytest.mark.parametrize("timeout", [-1, -0.5, math.nan])
def test_bad_cleanup_timeout_is_a_value_error(timeout: float) -> None:
    """Negative or NaN bounds are rejected at construction, naming the parameter."""
    with pytest.raises(ValueError, match="'cleanup_timeout' must be >= 0"):
        AsyncScope(cleanup_timeout=timeout)


@pytest.mark.parametrize("timeout", ["5", True])
def test_non_number_cleanup_timeout_is_a_type_error(timeout: object) -> None:
    """A bound that is not a number is a TypeError naming the parameter."""
    with pytest.raises(TypeError, match="'cleanup_timeout' must be a number"):
        AsyncScope(cleanup_timeout=timeout)  # type: ignore[arg-type]


async def test_enter_async_of_a_plain_context_manager_points_to_enter() -> None:
    """A sync context manager given to ``enter_async`` says to use ``enter``."""
    async with AsyncScope() as scope:
        with pytest.raises(TypeError, match=r"plain context manager .* use scope\.enter"):
            await scope.enter_async(SyncRecorder("x", []))  # type: ignore[arg-type]
        with pytest.raises(TypeError, match="must be an async context manager, not object"):
            await scope.enter_async(object())  # type: ignore[arg-type]


async def test_enter_of_an_async_context_manager_points_to_enter_async() -> None:
    """``enter`` of an async context manager says to use ``enter_async``."""
    async with AsyncScope() as scope:
        with pytest.raises(TypeError, match="enter_async"):
            scope.enter(AsyncRecorder("x", []))  # type: ignore[arg-type]


async def test_bad_callbacks_are_type_errors() -> None:
    """A non-callable async callback and an async function as sync callback are refused."""
    async with AsyncScope() as scope:
        with pytest.raises(TypeError, match=r"callback_async\(\) argument 'fn' must be callable"):
            scope.callback_async(42)  # type: ignore[arg-type]
        with pytest.raises(TypeError, match=r"use scope\.callback_async"):
            scope.callback(slow_cleanup, [])


async def test_async_callback_returning_a_non_awaitable_is_a_cleanup_error() -> None:
    """A ``callback_async`` function that returns no awaitable fails as a cleanup."""

    def not_async() -> int:
        return 1

    async def body() -> None:
        async with AsyncScope() as scope:
            scope.callback_async(not_async)  # type: ignore[arg-type]

    caught = await araised(body)
    assert isinstance(caught, TypeError)
    assert "returned int, not an awaitable" in str(caught)


async def test_async_callback_raising_before_awaiting_is_a_cleanup_error() -> None:
    """A ``callback_async`` function that raises when called fails as a cleanup."""
    error = OSError("at call time")

    def broken() -> Awaitable[None]:
        raise error

    async def body() -> None:
        async with AsyncScope() as scope:
            scope.callback_async(broken)

    assert await araised(body) is error


async def test_async_callback_may_return_any_awaitable() -> None:
    """Not only coroutines: any awaitable returned by the callback is awaited."""
    log: list[str] = []

    class Ready(Awaitable[None]):
        def __await__(self) -> Generator[None, None, None]:
            log.append("awaited")
            yield from ()

    async with AsyncScope() as scope:
        scope.callback_async(Ready)
    assert log == ["awaited"]


# --- leaks and plain asyncio ------------------------------------------------------------------


def test_unclosed_async_scope_warns() -> None:
    """An AsyncScope dropped with pending cleanups emits a ResourceWarning naming its site."""
    scope = AsyncScope(name="leaky")
    scope.callback_async(slow_cleanup, [])
    with pytest.warns(ResourceWarning, match=r"scope 'leaky' was never closed.*test_async_scope"):
        del scope
    gc.collect()


def test_works_on_plain_asyncio_without_anyio_loaded(monkeypatch: pytest.MonkeyPatch) -> None:
    """Nothing in AsyncScope needs anyio: on plain asyncio it is never consulted."""
    monkeypatch.delitem(sys.modules, "anyio")
    log: list[str] = []

    async def cleanup() -> None:
        await asyncio.sleep(0)
        log.append("cleanup")

    async def main() -> None:
        async with AsyncScope() as scope:
            scope.callback_async(cleanup)

    asyncio.run(main())
    assert log == ["cleanup"]
