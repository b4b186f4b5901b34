"""A busy ``Pool`` hands over with real threads exactly what its core decides.

A pool, with real threads waiting in its line, and a bare core (the reference, driven
only through its methods) go through the same random sequence of acquires, returns,
broken returns, callers leaving the line, time passing and housekeeping on one fake
clock; after every step the slots, the idle stack, the line of waiters, the recent holds
and waits and the statistics must be the same in both, the callers served must be the
ones at the head of the line, and each resource must be held by the thread it was
handed to, with that thread's own line of code.

A waiting thread sleeps on a stand-in for its lock that the test can interrupt, which is
how a caller leaves the line here (as a ``KeyboardInterrupt`` would make it). The
waiters' deadlines are the core's to keep, as in the reference; the pool's timekeeper
does not run (the timeouts are too long to pass on the fake clock anyway).
"""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import tether
from short_ways import (
    BusyReference,
    Clock,
    an_acquire,
    busy_step,
    line_of,
    options,
    side_by_side_pool,
    snapshot,
    with_busy_examples,
)
from tether import _pool
from tether._pool_core import Slot, Waiter

crowded_steps = st.lists(
    st.integers(0, 9).flatmap(lambda n: an_acquire if n < 4 else busy_step), min_size=4, max_size=40
)
"""Plans with more acquires than returns, on the whole: a line forms, and stays."""
small_options = options.map(lambda opts: {**opts, "max_size": min(opts["max_size"], 2)})

PATIENCE = 10.0
"""Seconds a step may take before the test calls the pool stuck."""


class Sleeper:
    """Stands in for a waiting thread's lock: the same acquire/release, no timeouts (the
    clock is fake), and the test can interrupt a thread asleep on it."""

    def __init__(self) -> None:
        self._changed = threading.Condition()
        self._held = False
        self._interrupted = False
        self.asleep = threading.Event()

    def acquire(self, blocking: bool = True, timeout: float = -1) -> bool:
        with self._changed:
            if not self._held:
                self._held = True
                return True
            self.asleep.set()
            while self._held and not self._interrupted:
                self._changed.wait(PATIENCE)
            if self._held:
                raise KeyboardInterrupt
            self._held = True
            return True

    def release(self) -> None:
        with self._changed:
            self._held = False
            self._changed.notify_all()

    def interrupt(self) -> None:
        with self._changed:
            self._interrupted = True
            self._changed.notify_all()


# Two lines of code to acquire from, taken in turns: a hand-off that left the last
# holder's site on the resource would show.
# (The second calls acquire() further into its code, so the offsets differ too.)
SITES = (
    lambda pool, timeout: pool.acquire(timeout=timeout),
    lambda pool, timeout: (pool, timeout, pool.acquire(timeout=timeout))[-1],
)


def held_sleeper() -> Sleeper:
    """What the pool's ``_sleeper()`` makes, with the stand-in: already held."""
    sleeper = Sleeper()
    sleeper.acquire()
    return sleeper


class Caller:
    """A thread entering ``manager``: it holds the resource once it is through."""

    def __init__(self, pool: tether.Pool[object], timeout: float | None, number: int) -> None:
        self.manager = SITES[number % 2](pool, timeout)
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._enter, daemon=True)
        self.thread.start()

    def _enter(self) -> None:
        try:
            self.manager.__enter__()
        except BaseException as error:
            self.error = error

    @property
    def through(self) -> bool:
        return not self.thread.is_alive()

    def settled(self) -> bool:
        """Wait until the caller is through, or asleep in line; say which."""
        deadline = time.monotonic() + PATIENCE
        while time.monotonic() < deadline:
            if self.through:
                return True
            sleeper = getattr(self.manager, "handle", None)
            if isinstance(sleeper, Sleeper):
                if sleeper.asleep.wait(0.001):
                    return False
            else:
                time.sleep(0.0005)
        raise AssertionError("the caller neither got a resource nor fell asleep")

    def finish(self) -> None:
        self.thread.join(PATIENCE)
        assert self.through, "a woken caller did not get through"


def open_pool(
    opts: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> tuple[Clock, tether.Pool[object], bool]:
    clock = Clock()
    monkeypatch.setattr(_pool, "_monotonic", clock)
    monkeypatch.setattr(_pool, "_sleeper", held_sleeper)
    pool, check = side_by_side_pool(tether.Pool, opts)
    # No housekeeper: its rounds are steps of the plan. No timekeeper either: it would
    # look at the core from a thread of its own, at any moment.
    monkeypatch.setattr(pool, "_start_housekeeper", lambda: None)
    monkeypatch.setattr(pool, "_call_timekeeper", lambda waiter: None)
    pool.open()
    return clock, pool, check


def busy_side_by_side(
    plan: list[tuple[Any, ...]], opts: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    clock, pool, check = open_pool(opts, monkeypatch)
    reference = BusyReference(pool._core.config)
    held: list[tuple[Caller, Slot[object], int]] = []
    line: list[Caller] = []

    def let_the_line_move(now: float) -> None:
        served = reference.served(now, check)
        with pool._lock:
            granted = [caller.manager.grant is not None for caller in line]
        assert granted == [True] * len(served) + [False] * (len(line) - len(served))
        for caller in line[: len(served)]:
            caller.finish()  # woken with a resource, or with room to create one
        while line and line[0].through:
            caller = line.pop(0)
            assert caller.error is None, caller.error
            slot, lease = served.pop(0)
            held.append((caller, slot, lease))
        assert served == []

    try:
        for number, step in enumerate(plan):
            now = clock.now
            if step[0] == "acquire":
                if len(line) >= 6:
                    continue
                caller = Caller(pool, step[1], number)
                through = caller.settled()
                queued = reference.enqueue(now, step[1], check)
                if isinstance(queued, Waiter):
                    assert not through
                    line.append(caller)
                else:
                    assert through
                    assert caller.error is None, caller.error
                    held.append((caller, *queued))
            elif step[0] in ("return", "return broken"):
                if not held:
                    continue
                caller, slot, lease = held.pop(step[1] % len(held))
                if step[0] == "return":
                    caller.manager.__exit__(None, None, None)
                    reference.give_back(slot, lease, now)
                else:
                    error = RuntimeError("broken")
                    caller.manager.__exit__(RuntimeError, error, None)
                    reference.give_back_broken(slot, lease, now)
            elif step[0] == "leave the line":
                if not line:
                    continue
                index = step[1] % len(line)
                caller = line.pop(index)
                caller.manager.handle.interrupt()
                caller.finish()
                assert isinstance(caller.error, KeyboardInterrupt)
                reference.core.cancel_wait(reference.line.pop(index), now, timed_out=False)
                reference.settle(now)
            elif step[0] == "wait":
                clock.now += step[1]
            else:
                with pool._lock:
                    pool._core.maintain(now)
                pool._flush()
                reference.housekeeping(now)
            let_the_line_move(clock.now)
            assert len(line) == len(reference.line), step
            with pool._lock:
                seen = line_of(pool._core), snapshot(pool._core)
            assert seen == (line_of(reference.core), snapshot(reference.core)), step
            for caller, _, _ in held:
                # Each resource is held by the thread it was handed to, from its line.
                manager = caller.manager
                assert manager._slot.owner is caller.thread
                assert manager._slot.site_code is manager.site_code
                assert manager._slot.site_offset == manager.site_offset
    finally:
        for caller in line:
            caller.manager.handle.interrupt()
            caller.finish()
        for caller, _, _ in held:
            caller.manager.__exit__(None, None, None)
        pool.close()


@settings(max_examples=200, deadline=None)
@given(plan=crowded_steps, opts=small_options)
@with_busy_examples
def test_a_busy_threaded_pool_hands_over_as_the_core_would(
    plan: list[tuple[Any, ...]], opts: dict[str, Any]
) -> None:
    """With threads waiting in line, the pool leaves its core exactly as a core driven
    through its methods, and wakes the threads the core served, through hand-offs,
    callers leaving the line, broken returns, expiries and housekeeping."""
    with pytest.MonkeyPatch.context() as monkeypatch:
        busy_side_by_side(plan, dict(opts), monkeypatch)
