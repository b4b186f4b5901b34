"""The async shell's written-out short ways decide exactly what the core would.

``AsyncPool``'s context manager carries out :meth:`PoolCore.take` and the short way of
:meth:`PoolCore.give_back` itself, without calling them (see "Short ways" in
``_pool_core``). Here a pool and a bare core (the reference, driven only through its
methods) go through the same random sequence of acquires, returns, broken returns, time
passing and housekeeping on one fake clock; after every step every field of every slot,
the idle stack's order, the recent holds and the statistics must be the same in both.
"""

from __future__ import annotations

import asyncio
import dataclasses
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

import tether
from tether import _async_pool
from tether._pool_core import CREATE, PoolConfig, PoolCore, Slot, Waiter

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
            if grant is CREATE:
                grant = core.created(object(), now, waiter)
                self.settle(now)
            assert isinstance(grant, Slot)
            slot = grant
            if check and core.needs_check(slot, now):
                core.check_passed(slot, now)
        return slot, slot.lease

    def give_back(self, slot: Slot[object], lease: int, now: float) -> None:
        self.core.give_back(slot, lease, now)
        self.settle(now)

    def give_back_broken(self, slot: Slot[object], lease: int, now: float) -> None:
        self.core.release(slot, lease, now, broken=True)
        self.settle(now)

    def housekeeping(self, now: float) -> None:
        self.core.maintain(now)
        self.settle(now)


async def side_by_side(plan: list[tuple[Any, ...]], opts: dict[str, Any]) -> None:
    clock = Clock()
    _async_pool._monotonic = clock  # type: ignore[misc]
    check = opts.pop("check")
    pool = tether.AsyncPool(
        object,
        check=(lambda resource: True) if check else None,
        is_broken=lambda error: True,
        acquire_timeout=None,
        **opts,
    )
    pool._core._jitter = lambda: 0.5
    reference = Reference(pool._core.config)
    await pool.open()
    assert pool._housekeeper is not None
    pool._housekeeper.cancel()  # its work is a step of the plan here
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
                manager, slot, lease = held.pop(step[1] % len(held))
                if step[0] == "return":
                    await manager.__aexit__(None, None, None)
                    reference.give_back(slot, lease, now)
                else:
                    error = RuntimeError("broken")
                    await manager.__aexit__(RuntimeError, error, None)
                    reference.give_back_broken(slot, lease, now)
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
