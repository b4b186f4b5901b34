"""What the shells are compared with: a bare core driven only through its methods (see
"Short ways" in ``_pool_core``), the plans of steps both go through, and what of a core
is compared after every step.

``test_async_pool_short_ways`` drives an :class:`tether.AsyncPool` (whose context
manager writes the short ways out) and ``test_pool_threads_hand_over`` a
:class:`tether.Pool` with real threads in line next to these references, on one fake
clock.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any, TypeVar

from hypothesis import example
from hypothesis import strategies as st

from tether._pool_core import CREATE, PoolConfig, PoolCore, Slot, Waiter

P = TypeVar("P")

FIELDS = (
    "state",
    "lease",
    "created_at",
    "expires_at",
    "uses_left",
    "idle_since",
    "acquired_at",
    "fresh_until",
    "fast_until",
    "trusted_since",
    "must_check",
)

steps = st.lists(
    st.one_of(
        st.tuples(st.just("acquire")),
        st.tuples(st.just("return"), st.integers(0, 7)),
        st.tuples(st.just("return broken"), st.integers(0, 7)),
        st.tuples(st.just("wait"), st.sampled_from([0.1, 0.5, 1.0, 3.0])),
        st.tuples(st.just("housekeeping")),
    ),
    max_size=40,
)
options = st.fixed_dictionaries(
    {
        "max_size": st.integers(1, 4),
        "check_after": st.sampled_from([0.0, 0.5, 1.0, 100.0]),
        "max_lifetime": st.sampled_from([None, 2.0, 5.0]),
        "max_idle": st.sampled_from([None, 1.0]),
        "check": st.booleans(),
    }
)


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def snapshot(core: PoolCore[Any]) -> dict[str, Any]:
    slots = list(core._slots.values())
    index = {id(slot): number for number, slot in enumerate(slots)}
    return {
        "slots": [{name: getattr(slot, name) for name in FIELDS} for slot in slots],
        "idle": [index[id(slot)] for slot in core.idle],
        "holds": list(core.holds),
        "waits": list(core._waits),
        "steady": core.steady,
        "stats": dataclasses.replace(core.stats(), name="same"),
    }


class Reference:
    """A bare core, driven the way the shell would drive it if it called every method."""

    def __init__(self, config: PoolConfig) -> None:
        self.core: PoolCore[object] = PoolCore(config, jitter=lambda: 0.5)
        self.core.open()

    def settle(self, now: float) -> None:
        core = self.core
        core.woken.clear()
        while core.doomed:
            doomed, core.doomed = core.doomed, []
            for slot in doomed:
                core.destroyed(slot, now)

    def acquire(self, now: float, check: bool) -> tuple[Slot[object], int]:
        core = self.core
        slot = core.take(now)
        if slot is None:
            waiter: Waiter[object] = Waiter(None, None, None, 0, now)
            grant = core.acquire(now, waiter)
            self.settle(now)
            if grant is None:
                # Queued behind an expired resource the core retired: destroying it made
                # room, and the waiter was granted a creation.
                grant = waiter.grant
            slot = self.receive(waiter, grant, now, check)
        return slot, slot.lease

    def receive(
        self, waiter: Waiter[object], grant: object, now: float, check: bool
    ) -> Slot[object]:
        """What a caller granted ``grant`` ends up holding: it creates a resource on a
        permit, and checks one that needs it."""
        core = self.core
        if grant is CREATE:
            grant = core.created(object(), now, waiter)
            self.settle(now)
        assert isinstance(grant, Slot)
        if check and core.needs_check(grant, now):
            core.check_passed(grant, now)
        return grant

    def give_back(self, slot: Slot[object], lease: int, now: float) -> None:
        self.core.give_back(slot, lease, now)
        self.settle(now)

    def give_back_broken(self, slot: Slot[object], lease: int, now: float) -> None:
        self.core.release(slot, lease, now, broken=True)
        self.settle(now)

    def housekeeping(self, now: float) -> None:
        self.core.maintain(now)
        self.settle(now)


# ---------------------------------------------------------------------------- busy pool

# A timeout long enough never to pass here (the fake clock moves by seconds), but
# different ones put waiters' deadlines out of line order.
an_acquire = st.tuples(st.just("acquire"), st.sampled_from([None, 1000.0, 2000.0, 3000.0]))
busy_step = st.one_of(
    an_acquire,
    st.tuples(st.just("return"), st.integers(0, 7)),
    st.tuples(st.just("return broken"), st.integers(0, 7)),
    st.tuples(st.just("leave the line"), st.integers(0, 7)),
    st.tuples(st.just("wait"), st.sampled_from([0.1, 0.5, 1.0, 3.0])),
    st.tuples(st.just("housekeeping")),
)
busy_steps = st.lists(busy_step, max_size=50)


class BusyReference(Reference):
    """The reference for a pool with callers waiting in line: a queued caller is a
    :class:`Waiter`, given what it is granted the way the shell would (creating a
    resource on a permit, checking one that needs it)."""

    def __init__(self, config: PoolConfig) -> None:
        super().__init__(config)
        self.line: list[Waiter[object]] = []

    def enqueue(
        self, now: float, timeout: float | None, check: bool
    ) -> Waiter[object] | tuple[Slot[object], int]:
        core = self.core
        slot = core.take(now)
        if slot is not None:
            return slot, slot.lease
        deadline = math.inf if timeout is None else now + timeout
        waiter: Waiter[object] = Waiter(None, None, None, 0, now, deadline=deadline)
        grant = core.acquire(now, waiter)
        self.settle(now)
        if grant is None:
            grant = waiter.grant  # granted already, by the room a retired resource left
        if grant is None:
            self.line.append(waiter)
            return waiter
        slot = self.receive(waiter, grant, now, check)
        return slot, slot.lease

    def served(self, now: float, check: bool) -> list[tuple[Slot[object], int]]:
        """The callers in line that were granted something, in line order."""
        served = []
        while self.line and self.line[0].grant is not None:
            waiter = self.line.pop(0)
            slot = self.receive(waiter, waiter.grant, now, check)
            served.append((slot, slot.lease))
        return served


def line_of(core: PoolCore[Any]) -> dict[str, Any]:
    """The core's line of waiters, as far as it can be compared between two cores."""
    return {
        "waiting": core._waiting,
        "deadlines": [w.deadline for w in core._waiters if w.grant is None and not w.cancelled],
        "last deadline": core._last_deadline,
        "early": sorted(deadline for deadline, _, _ in core._early),
    }


ONE_AT_A_TIME = {
    "max_size": 1,
    "check_after": 1.0,
    "max_lifetime": None,
    "max_idle": None,
    "check": False,
}
"""Options for the explicit examples: one resource, no lifetime, no check."""

BUSY_EXAMPLES: list[tuple[str, list[tuple[Any, ...]], dict[str, Any]]] = [
    (
        "handed over after time passed: every time the hand-over sets is compared",
        [("acquire", None), ("acquire", None), ("wait", 1.0), ("return", 0)],
        ONE_AT_A_TIME,
    ),
    (
        "the caller at the head of the line left: the next one is served instead",
        [("acquire", None)] * 3 + [("leave the line", 0), ("return", 0)],
        ONE_AT_A_TIME,
    ),
    (
        "the line empties on a hand-over: the pool is steady again",
        [("acquire", None)] * 2 + [("return", 0), ("return", 0), ("acquire", None)],
        ONE_AT_A_TIME,
    ),
    (
        "a resource past its lifetime is not handed over but retired (its fast_until)",
        [("acquire", None), ("acquire", None), ("wait", 3.0), ("return", 0)],
        {**ONE_AT_A_TIME, "max_lifetime": 2.0},
    ),
    (
        "after a broken return the other resource is suspect: checked, not handed over",
        [("acquire", None)] * 4 + [("return broken", 0), ("return", 0)],
        {**ONE_AT_A_TIME, "max_size": 2, "check": True},
    ),
]
"""Busy plans that random ones find only sometimes, each with why it matters."""


def with_busy_examples(test: Callable[..., None]) -> Callable[..., None]:
    """Run a busy side-by-side test on every one of :data:`BUSY_EXAMPLES` too."""
    for _, plan, opts in BUSY_EXAMPLES:
        test = example(plan=plan, opts=opts)(test)
    return test


def side_by_side_pool(pool_class: Callable[..., P], opts: dict[str, Any]) -> tuple[P, bool]:
    """A pool of plain objects made with ``opts`` (drawn by ``options``) to run beside a
    reference, with the same lifetimes' jitter; and whether it checks resources."""
    check = opts.pop("check")
    pool = pool_class(
        object,
        check=(lambda resource: True) if check else None,
        is_broken=lambda error: True,
        acquire_timeout=None,
        **opts,
    )
    pool._core._jitter = lambda: 0.5
    return pool, check
