"""The async shell's written-out short ways decide exactly what the core would.

``AsyncPool``'s context manager carries out :meth:`PoolCore.take`, the way of
:meth:`PoolCore.acquire` into the line of waiters, and the short ways of
:meth:`PoolCore.give_back` (to the idle stack, or straight to the longest waiter) itself,
without calling them (see "Short ways" in ``_pool_core``). Here a pool and a bare core
(the reference, driven only through its methods) go through the same random sequence of
acquires, returns, broken returns, callers leaving the line, time passing and
housekeeping on one fake clock; after every step every field of every slot, the idle
stack's order, the line of waiters, the recent holds and waits and the statistics must be
the same in both.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from hypothesis import given, settings

import tether
from short_ways import (
    BusyReference,
    Clock,
    Reference,
    busy_steps,
    line_of,
    options,
    side_by_side_pool,
    snapshot,
    steps,
    with_busy_examples,
)
from tether import _async_pool
from tether._pool_core import Slot, Waiter


async def open_pool(opts: dict[str, Any]) -> tuple[Clock, tether.AsyncPool[object], bool]:
    """A pool on a fake clock, opened, its housekeeper stopped (its work is a step of the
    plan); and whether it checks resources."""
    clock = Clock()
    _async_pool._monotonic = clock  # type: ignore[misc]
    pool, check = side_by_side_pool(tether.AsyncPool, opts)
    await pool.open()
    assert pool._housekeeper is not None
    pool._housekeeper.cancel()
    return clock, pool, check


async def give_back(
    holding: tuple[Any, Slot[object], int], how: str, reference: Reference, now: float
) -> None:
    """A "return" or "return broken" step: the pool's holder and the reference give back
    the same resource the same way."""
    manager, slot, lease = holding
    if how == "return":
        await manager.__aexit__(None, None, None)
        reference.give_back(slot, lease, now)
    else:
        error = RuntimeError("broken")
        await manager.__aexit__(RuntimeError, error, None)
        reference.give_back_broken(slot, lease, now)


async def side_by_side(plan: list[tuple[Any, ...]], opts: dict[str, Any]) -> None:
    clock, pool, check = await open_pool(opts)
    reference = Reference(pool._core.config)
    held: list[tuple[Any, Slot[object], int]] = []
    try:
        for step in plan:
            now = clock.now
            if step[0] == "acquire":
                if len(held) == opts["max_size"]:
                    continue
                manager = pool.acquire()
                await manager.__aenter__()
                held.append((manager, *reference.acquire(now, check)))
            elif step[0] in ("return", "return broken"):
                if not held:
                    continue
                await give_back(held.pop(step[1] % len(held)), step[0], reference, now)
            elif step[0] == "wait":
                clock.now += step[1]
            else:
                pool._core.maintain(now)
                pool._flush()
                reference.housekeeping(now)
            assert snapshot(pool._core) == snapshot(reference.core), step
    finally:
        for manager, _, _ in held:
            await manager.__aexit__(None, None, None)
        await pool.close()


@settings(max_examples=150, deadline=None)
@given(plan=steps, opts=options)
def test_the_async_shell_keeps_the_core_as_its_methods_would(
    plan: list[tuple[Any, ...]], opts: dict[str, Any]
) -> None:
    """Whatever happens, the pool's core ends up exactly as a core driven through
    take() and give_back() does."""
    real_clock = _async_pool._monotonic
    try:
        asyncio.run(side_by_side(plan, dict(opts)))
    finally:
        _async_pool._monotonic = real_clock  # type: ignore[misc]


# ---------------------------------------------------------------------------- busy pool


async def busy_side_by_side(plan: list[tuple[Any, ...]], opts: dict[str, Any]) -> None:
    clock, pool, check = await open_pool(opts)
    reference = BusyReference(pool._core.config)
    held: list[tuple[Any, Slot[object], int]] = []
    line: list[tuple[Any, asyncio.Task[object]]] = []

    async def let_the_line_move(now: float) -> None:
        for _ in range(5):  # a creation runs in a task of its own, then wakes its caller
            await asyncio.sleep(0)
        served = reference.served(now, check)
        while line and line[0][1].done():
            manager, task = line.pop(0)
            task.result()
            slot, lease = served.pop(0)
            held.append((manager, slot, lease))
        assert served == []

    try:
        for step in plan:
            now = clock.now
            if step[0] == "acquire":
                if len(line) >= 6:
                    continue
                manager = pool.acquire(timeout=step[1])
                task = asyncio.ensure_future(manager.__aenter__())
                for _ in range(5):  # time to be served, or to create, or to queue
                    await asyncio.sleep(0)
                queued = reference.enqueue(now, step[1], check)
                if isinstance(queued, Waiter):
                    assert not task.done()
                    line.append((manager, task))
                else:
                    assert task.done()
                    held.append((manager, *queued))
            elif step[0] in ("return", "return broken"):
                if not held:
                    continue
                await give_back(held.pop(step[1] % len(held)), step[0], reference, now)
            elif step[0] == "leave the line":
                if not line:
                    continue
                index = step[1] % len(line)
                _, task = line.pop(index)
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
                reference.core.cancel_wait(reference.line.pop(index), now, timed_out=False)
                reference.settle(now)
            elif step[0] == "wait":
                clock.now += step[1]
            else:
                pool._core.maintain(now)
                pool._flush()
                reference.housekeeping(now)
            await let_the_line_move(clock.now)
            assert len(line) == len(reference.line), step
            assert line_of(pool._core) == line_of(reference.core), step
            assert snapshot(pool._core) == snapshot(reference.core), step
    finally:
        for _, task in line:
            task.cancel()
        for manager, _, _ in held:
            await manager.__aexit__(None, None, None)
        await pool.close()


@settings(max_examples=400, deadline=None)
@given(plan=busy_steps, opts=options)
@with_busy_examples
def test_a_busy_pool_hands_over_as_the_core_would(
    plan: list[tuple[Any, ...]], opts: dict[str, Any]
) -> None:
    """With callers waiting in line, the shell's written-out ways into the line and
    straight to the longest waiter leave the core exactly as acquire() and give_back()
    would, through hand-offs, callers leaving the line, broken returns, expiries and
    housekeeping."""
    real_clock = _async_pool._monotonic
    try:
        asyncio.run(busy_side_by_side(plan, dict(opts)))
    finally:
        _async_pool._monotonic = real_clock  # type: ignore[misc]
