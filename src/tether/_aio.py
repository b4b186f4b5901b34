"""Async plumbing shared by every async part of tether: shielded cleanup.

Cleanup code (returning a resource, closing a stream, rolling back) must run to the end
even when the task that runs it is being cancelled, and the cancellation must still reach
the task afterwards. Three kinds of cancellation exist where tether runs:

* a plain asyncio ``task.cancel()`` (and ``asyncio.timeout``, which uses it): delivered
  once, at the next await;
* an anyio ``CancelScope`` on asyncio (Starlette, FastAPI): delivered again and again at
  every await until the scope is left;
* trio's cancel scopes, which only trio's own shield can hold off.

:func:`run_shielded` handles all three. On asyncio it runs the cleanup in a task of its
own and waits for it, absorbing cancellations meanwhile (and, when anyio is loaded, inside
a shielded anyio scope so that anyio does not retry its delivery in a busy loop); on trio
it uses a shielded trio cancel scope. Whatever the cleanup raises, ``KeyboardInterrupt``
and ``SystemExit`` included, comes back to the calling task: asyncio would re-raise those
two out of the event loop if the helper task raised them, losing the caller's own error
and the cleanups it has still to run. Afterwards, a cancellation that arrived meanwhile is
raised again; a caller whose own error must win over it hands it back to the task with
:func:`redeliver_cancellation` instead.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Coroutine
from contextlib import AbstractContextManager, nullcontext
from typing import Any, Generic, TypeVar, final

__all__ = [
    "ShieldedOutcome",
    "current_async_library",
    "redeliver_cancellation",
    "run_shielded",
    "run_shielded_outcome",
]

T = TypeVar("T")


def current_async_library() -> str:
    """Name the async library running the current task: ``"asyncio"`` or ``"trio"``.

    Raises:
        RuntimeError: when called outside of any event loop.
    """
    if asyncio._get_running_loop() is not None:
        return "asyncio"
    trio = sys.modules.get("trio")
    if trio is not None:
        try:
            trio.lowlevel.current_task()
        except RuntimeError:
            pass
        else:
            return "trio"
    raise RuntimeError("tether's async APIs must be called from an asyncio or trio task")


def _anyio_shield() -> AbstractContextManager[object]:
    anyio = sys.modules.get("anyio")
    if anyio is None:
        # Without anyio loaded no anyio cancel scope can exist to retry its delivery.
        return nullcontext()
    shield: AbstractContextManager[object] = anyio.CancelScope(shield=True)
    return shield


@final
class ShieldedOutcome(Generic[T]):
    """How a shielded cleanup ended, and whether the caller was cancelled meanwhile."""

    __slots__ = ("cancelled", "error", "value")

    def __init__(self, value: T | None, error: BaseException | None, *, cancelled: bool) -> None:
        self.value = value
        self.error = error
        self.cancelled = cancelled
        """A plain asyncio cancellation reached the caller while the cleanup ran; the
        caller owes it a ``raise asyncio.CancelledError`` once its own cleanup is done,
        or, when it raises an error of its own instead, a call to
        :func:`redeliver_cancellation`. (anyio and trio cancel scopes deliver theirs again
        by themselves.)"""


async def run_shielded(coro: Coroutine[Any, Any, T], *, timeout: float | None = None) -> T:
    """Run ``coro`` to completion even if the calling task is cancelled meanwhile.

    Args:
        coro: the cleanup to run. It is always run or closed, never dropped.
        timeout: seconds ``coro`` may take; ``None`` waits for as long as it takes.

    Returns:
        What ``coro`` returned.

    Raises:
        TimeoutError: ``coro`` overran ``timeout``; it has been cancelled and abandoned.
        asyncio.CancelledError: the calling task was cancelled while ``coro`` ran;
            ``coro`` finished first, and its error, if any, is the ``__cause__``.
        BaseException: whatever ``coro`` raised (``KeyboardInterrupt`` and ``SystemExit``
            included: they are raised here, in the calling task).
    """
    outcome = await run_shielded_outcome(coro, timeout=timeout)
    if outcome.cancelled:
        raise asyncio.CancelledError from outcome.error
    if outcome.error is not None:
        raise outcome.error
    return outcome.value  # type: ignore[return-value]


async def run_shielded_outcome(
    coro: Coroutine[Any, Any, T], *, timeout: float | None = None
) -> ShieldedOutcome[T]:
    """Like :func:`run_shielded`, but report the outcome instead of raising it.

    A cleanup that overran ``timeout`` reports a ``TimeoutError``. Callers that run several
    cleanups in a row use this to keep going after a failure or a cancellation and decide
    at the end what to raise.
    """
    if current_async_library() == "trio":
        return await _run_shielded_trio(coro, timeout)
    return await _run_shielded_asyncio(coro, timeout)


async def _run_shielded_asyncio(
    coro: Coroutine[Any, Any, T], timeout: float | None
) -> ShieldedOutcome[T]:
    loop = asyncio.get_running_loop()
    # The task runs _capture(coro), never coro itself: asyncio re-raises a
    # KeyboardInterrupt or SystemExit from a task out of the event loop, which would lose
    # the caller's own error and every cleanup still to run. _capture hands whatever coro
    # raises back as a value instead, for the caller's task to re-raise or report.
    # In the caller's own context where asyncio can say which that is (Python 3.12+), so
    # that a cleanup resetting a context variable it set on entry finds it; on 3.11 it
    # runs in a copy, as any new task does.
    caller = asyncio.current_task()
    get_context = getattr(caller, "get_context", None)
    context = get_context() if get_context is not None else None
    task = loop.create_task(_capture(coro), context=context)
    cancelled = False
    with _anyio_shield():
        deadline = None if timeout is None else loop.time() + timeout
        while not task.done():
            remaining = None if deadline is None else deadline - loop.time()
            if remaining is not None and remaining <= 0:
                break
            try:
                await asyncio.wait((task,), timeout=remaining)
            except asyncio.CancelledError:
                cancelled = True
    if not task.done():
        task.cancel()
        # Nobody awaits an abandoned cleanup; close coro once its task ends, in case the
        # task was cancelled before _capture ever started it (timeout=0).
        task.add_done_callback(lambda _: coro.close())
        return ShieldedOutcome(None, _overran(timeout), cancelled=cancelled)
    if task.cancelled():
        # Cancelled before _capture started (by someone holding the task): coro never
        # ran, and closing it spares it the "never awaited" warning.
        coro.close()
        return ShieldedOutcome(None, asyncio.CancelledError(), cancelled=cancelled)
    value, error = task.result()
    return ShieldedOutcome(value, error, cancelled=cancelled)


async def _capture(coro: Coroutine[Any, Any, T]) -> tuple[T | None, BaseException | None]:
    """Run ``coro``; return ``(value, None)``, or ``(None, error)`` for what it raised."""
    try:
        return await coro, None
    except BaseException as error:  # noqa: BLE001 - handed back to the caller's task
        return None, error


def redeliver_cancellation(raising: BaseException) -> None:
    """Hand a cancellation that a shielded cleanup absorbed back to the current task.

    For a caller that raises ``raising``, an error that wins over the cancellation, rather
    than the ``CancelledError`` it owes (:attr:`ShieldedOutcome.cancelled`): ``raising``
    propagates, and the task is cancelled again at its next await, as though the
    cancellation had arrived just then. The task's count of cancellation requests
    (``task.cancelling()``) is left as it is, so an expired ``asyncio.timeout`` still
    turns the cancellation into its ``TimeoutError``. Call it only once nothing is left to
    await before ``raising`` leaves the caller.

    Args:
        raising: what the caller raises. A ``CancelledError`` carries the cancellation on
            by itself: nothing is redelivered then.
    """
    if isinstance(raising, asyncio.CancelledError):
        return
    task = asyncio.current_task()
    requests = 0 if task is None else task.cancelling()
    if task is not None and requests:  # (else the request was withdrawn already)
        # Not task.cancel() now: the party that cancelled may withdraw its request before
        # the next await, as asyncio.timeout does (with uncancel()) when `raising` goes out
        # through it, and before Python 3.13 uncancel() does not disarm a cancel() made
        # already. This callback runs before the task's next step, so the cancellation
        # still reaches the next await if the request stands by then.
        task.get_loop().call_soon(_redeliver, task, requests)


def _redeliver(task: asyncio.Task[Any], requests: int) -> None:
    if not task.done() and task.cancelling() >= requests:
        # The same request again, not a new one: the count must not grow.
        task.uncancel()
        task.cancel()


def _overran(timeout: float | None) -> TimeoutError:
    return TimeoutError(f"cleanup did not finish within {timeout} seconds and was abandoned")


async def _run_shielded_trio(
    coro: Coroutine[Any, Any, T], timeout: float | None
) -> ShieldedOutcome[T]:
    trio = sys.modules["trio"]
    with trio.CancelScope(shield=True) as shield:
        if timeout is not None:
            shield.deadline = trio.current_time() + timeout
        try:
            value = await coro
        except BaseException as error:  # noqa: BLE001 - reported, not swallowed
            if shield.cancelled_caught or shield.cancel_called:
                return ShieldedOutcome(None, _overran(timeout), cancelled=False)
            return ShieldedOutcome(None, error, cancelled=False)
        return ShieldedOutcome(value, None, cancelled=False)
