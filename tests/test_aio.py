"""Shielded cleanup: runs to the end under every kind of cancellation, then lets it through."""

from __future__ import annotations

import asyncio

import anyio
import pytest
import trio

from tether._aio import current_async_library, run_shielded, run_shielded_outcome


async def _slow_cleanup(log: list[str], seconds: float = 0.05) -> str:
    log.append("start")
    await asyncio.sleep(seconds)
    log.append("end")
    return "done"


def test_outside_any_loop_is_an_error() -> None:
    """Calling the async helpers with no event loop says what is wrong."""
    with pytest.raises(RuntimeError, match="asyncio or trio"):
        current_async_library()


async def test_returns_the_cleanup_result() -> None:
    """Without cancellation the cleanup's own value comes back."""
    log: list[str] = []
    assert await run_shielded(_slow_cleanup(log, 0)) == "done"
    assert log == ["start", "end"]


async def test_task_cancel_waits_for_the_cleanup_then_propagates() -> None:
    """A plain ``task.cancel()`` during the cleanup is held until it has finished."""
    log: list[str] = []
    task = asyncio.create_task(run_shielded(_slow_cleanup(log)))
    await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert log == ["start", "end"]


async def test_asyncio_timeout_waits_for_the_cleanup_then_times_out() -> None:
    """``asyncio.timeout`` expiring during the cleanup still turns into its TimeoutError."""
    log: list[str] = []
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.01):
            await run_shielded(_slow_cleanup(log))
    assert log == ["start", "end"]
    assert asyncio.current_task().cancelling() == 0  # type: ignore[union-attr]


async def test_anyio_cancel_scope_waits_for_the_cleanup() -> None:
    """An anyio cancel scope (level-triggered) cannot interrupt the cleanup either."""
    log: list[str] = []
    with anyio.move_on_after(0.01) as scope:
        await run_shielded(_slow_cleanup(log))
        await anyio.sleep(1)
        log.append("after")
    assert scope.cancelled_caught
    assert log == ["start", "end"]


async def test_overrunning_cleanup_is_abandoned_with_timeout_error() -> None:
    """A cleanup that takes longer than ``timeout`` is cancelled and reported."""
    log: list[str] = []
    with pytest.raises(TimeoutError, match=r"within 0\.01 seconds"):
        await run_shielded(_slow_cleanup(log, 10), timeout=0.01)
    assert log == ["start"]


async def test_cleanup_error_is_the_cause_of_the_cancellation() -> None:
    """When the caller was cancelled and the cleanup failed, neither is lost."""

    async def failing() -> None:
        await asyncio.sleep(0.02)
        raise KeyError("cleanup broke")

    task = asyncio.create_task(run_shielded(failing()))
    await asyncio.sleep(0.005)
    task.cancel()
    with pytest.raises(asyncio.CancelledError) as caught:
        await task
    assert isinstance(caught.value.__cause__, KeyError)


async def test_outcome_reports_error_and_cancellation() -> None:
    """``run_shielded_outcome`` reports instead of raising."""

    async def failing() -> None:
        raise ValueError("nope")

    outcome = await run_shielded_outcome(failing())
    assert (outcome.value, type(outcome.error), outcome.cancelled) == (None, ValueError, False)


@pytest.mark.parametrize("interrupt", [KeyboardInterrupt, SystemExit])
def test_keyboard_interrupt_in_the_cleanup_is_raised_in_the_calling_task(
    interrupt: type[BaseException],
) -> None:
    """asyncio re-raises ``KeyboardInterrupt`` and ``SystemExit`` from a task out of the
    event loop; from the cleanup's helper task they reach the calling task instead, which
    can handle them (and report them, with ``run_shielded_outcome``)."""

    async def interrupted() -> None:
        await asyncio.sleep(0)
        raise interrupt

    async def main() -> list[str]:
        seen = []
        try:
            await run_shielded(interrupted())
        except interrupt:
            seen.append("raised in the calling task")
        outcome = await run_shielded_outcome(interrupted())
        seen.append(f"reported: {type(outcome.error).__name__}")
        return seen

    try:
        seen = asyncio.run(main())
    except (KeyboardInterrupt, SystemExit) as escaped:
        pytest.fail(f"{escaped!r} escaped the event loop")
    assert seen == ["raised in the calling task", f"reported: {interrupt.__name__}"]


async def test_a_cleanup_abandoned_before_it_started_is_closed() -> None:
    """With ``timeout=0`` the cleanup never starts; it is closed, not left to warn that it
    was never awaited (warnings are errors here)."""
    started: list[str] = []

    async def cleanup() -> None:
        started.append("started")  # pragma: no cover - never runs

    coro = cleanup()
    with pytest.raises(TimeoutError, match=r"within 0 seconds"):
        await run_shielded(coro, timeout=0)
    for _ in range(3):  # the abandoned task takes a step to end, its callbacks another
        await asyncio.sleep(0)
    assert (started, coro.cr_frame) == ([], None)


def test_trio_shield_and_timeout() -> None:
    """Under trio the cleanup is shielded by trio's own cancel scope, and bounded."""
    log: list[str] = []

    async def cleanup() -> str:
        log.append("start")
        await trio.sleep(0.05)
        log.append("end")
        return "done"

    async def main() -> None:
        assert current_async_library() == "trio"
        with trio.move_on_after(0.01) as scope:
            assert await run_shielded(cleanup()) == "done"
            await trio.sleep(1)
        assert scope.cancelled_caught
        with pytest.raises(TimeoutError):
            await run_shielded(cleanup(), timeout=0.01)

    trio.run(main)
    assert log == ["start", "end", "start"]
