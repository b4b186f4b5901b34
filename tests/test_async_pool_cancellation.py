"""Cancelling an ``AsyncPool`` caller at any await point loses nothing and breaks nothing.

Each test cancels one caller at one point of its life with the pool, in one of the ways
asyncio code gets cancelled:

points
    ``queued`` waiting in line; ``granted`` handed a resource but not yet resumed;
    ``permitted`` allowed to create one (room appeared) but not yet resumed;
    ``create``, ``check``, ``reset`` inside those (async) callables; ``body`` inside the
    ``async with pool.acquire()`` block; ``reset-after-body`` cancelled in the block and
    again during the shielded reset that follows; ``is_broken`` while an async is_broken
    judges the error the block raised; ``destroy`` waiting for the room that a resource
    being destroyed will leave.
kinds
    ``task.cancel()``, ``asyncio.timeout``, ``anyio.CancelScope.cancel()`` and an anyio
    ``move_on_after`` deadline.

Afterwards the pool must be intact: its statistics add up, nothing is held, no resource
was handed to two callers or destroyed twice, every resource ever created is either idle
or destroyed, the pool still serves, and closing it destroys everything exactly once.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import anyio
import pytest

import tether
from pool_flavours import GUARD, Gate, Thing, Things, eventually, within
from tether import _async_pool

POINTS = [
    "queued",
    "granted",
    "permitted",
    "create",
    "check",
    "body",
    "reset",
    "reset-after-body",
    "is_broken",
    "destroy",
]
KINDS = ["task.cancel", "asyncio.timeout", "anyio.CancelScope", "anyio.move_on_after"]


class Rig:
    """Async resource callables, each of which can be held at a :class:`Gate`."""

    def __init__(self) -> None:
        self.things = Things()
        self.gates: dict[str, Gate] = {}

    def arm(self, name: str) -> Gate:
        gate = self.gates[name] = Gate()
        return gate

    async def _pass(self, name: str) -> None:
        await asyncio.sleep(0)
        gate = self.gates.get(name)
        if gate is not None:
            await gate.pass_async()

    async def create(self) -> Thing:
        await self._pass("create")
        return self.things.create()

    async def check(self, thing: Thing) -> bool:
        await self._pass("check")
        return self.things.check(thing)

    async def reset(self, thing: Thing) -> None:
        await self._pass("reset")
        self.things.reset(thing)

    async def is_broken(self, error: BaseException) -> bool:
        await self._pass("is_broken")
        return False

    async def destroy(self, thing: Thing) -> None:
        await self._pass("destroy")
        self.things.destroy(thing)

    def open_all(self) -> None:
        for gate in self.gates.values():
            gate.open()
        self.gates.clear()


class Cancellation:
    """One way of cancelling the victim: enter :meth:`scope` in it, then :meth:`fire`."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.fire: Callable[[], object] = lambda: None
        self.delivered = False
        """Whether the cancellation ended the victim's block (rather than it finishing)."""

    @asynccontextmanager
    async def scope(self) -> AsyncIterator[None]:
        if self.kind == "task.cancel":
            task = asyncio.current_task()
            assert task is not None
            self.fire = task.cancel
            try:
                yield
            except asyncio.CancelledError:
                self.delivered = True
                raise
        elif self.kind == "asyncio.timeout":
            loop = asyncio.get_running_loop()
            try:
                async with asyncio.timeout(None) as timeout:
                    self.fire = lambda: timeout.reschedule(loop.time())
                    yield
            except TimeoutError:
                self.delivered = True
        elif self.kind == "anyio.CancelScope":
            with anyio.CancelScope() as cancel_scope:
                self.fire = cancel_scope.cancel
                yield
            self.delivered = cancel_scope.cancelled_caught
        else:
            with anyio.move_on_after(None) as deadline_scope:
                self.fire = lambda: setattr(deadline_scope, "deadline", anyio.current_time())
                yield
            self.delivered = deadline_scope.cancelled_caught


async def check_intact(pool: tether.AsyncPool[Thing], things: Things) -> None:
    """The pool lost nothing, holds nothing, double-handed nothing, and still works."""
    await eventually(
        lambda: pool.stats().size == pool.stats().idle + pool.stats().in_use,
        "creations and destructions to finish",
    )
    stats = pool.stats()
    assert (stats.in_use, stats.waiting) == (0, 0)
    assert pool.holders() == []
    assert all(thing.holder is None for thing in things.made)
    assert all(thing.destroyed <= 1 for thing in things.made)
    alive = [thing for thing in things.made if not thing.destroyed]
    assert len(alive) == stats.idle == stats.size
    assert (stats.created, stats.destroyed) == (len(things.made), len(things.made) - len(alive))
    async with within(), pool.acquire(timeout=None) as thing:
        thing.take("after")
        thing.drop()
    await pool.close()
    assert pool.stats().size == 0
    things.assert_all_destroyed_once()


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("point", POINTS)
async def test_a_cancelled_caller_loses_nothing(point: str, kind: str) -> None:
    """Cancelling a caller at ``point`` in the manner of ``kind`` leaves the pool intact
    (see the module docstring)."""
    rig = Rig()
    things = rig.things
    pool = tether.AsyncPool(
        rig.create,
        destroy=rig.destroy,
        check=rig.check,
        reset=rig.reset,
        is_broken=rig.is_broken,
        max_size=1,
        check_after=0.0,
        acquire_timeout=None,
        name=f"{point}/{kind}",
    )
    await pool.open()
    cancellation = Cancellation(kind)
    finish_body = asyncio.Event()
    in_body = asyncio.Event()

    async def victim() -> None:
        async with cancellation.scope(), pool.acquire() as thing:
            thing.take("victim")
            try:
                in_body.set()
                if point == "is_broken":
                    raise LookupError("application error")
                await finish_body.wait()
            finally:
                thing.drop()

    def start_victim() -> asyncio.Task[None]:
        return asyncio.get_running_loop().create_task(victim(), name="victim")

    held: Thing | None = None
    if point in ("queued", "granted", "permitted"):
        held = await pool.get()
        task = start_victim()
        await eventually(lambda: pool.stats().waiting == 1, "the victim to queue")
        if point == "granted":
            await pool.put(held)
            held = None
        elif point == "permitted":
            pool.resize(max_size=2)  # room for one more: the victim may create it
        cancellation.fire()
    elif point == "create":
        gate = rig.arm("create")
        task = start_victim()
        await gate.reached()
        cancellation.fire()
    elif point == "check":
        await pool.put(await pool.get())  # an idle resource, due for a check
        gate = rig.arm("check")
        task = start_victim()
        await gate.reached()
        cancellation.fire()
    elif point == "body":
        task = start_victim()
        await in_body.wait()
        cancellation.fire()
    elif point == "reset":
        gate = rig.arm("reset")
        finish_body.set()
        task = start_victim()
        await gate.reached()
        cancellation.fire()
    elif point == "reset-after-body":
        gate = rig.arm("reset")
        task = start_victim()
        await in_body.wait()
        cancellation.fire()
        await gate.reached()
        if kind == "task.cancel":
            task.cancel()  # and once more, during the shielded reset
        gate.open()
    elif point == "is_broken":
        gate = rig.arm("is_broken")
        task = start_victim()
        await gate.reached()
        cancellation.fire()
        gate.open()
    else:
        assert point == "destroy"
        held = await pool.get()
        gate = rig.arm("destroy")
        await pool.put(held, broken=True)
        held = None
        await gate.reached()
        task = start_victim()
        await eventually(lambda: pool.stats().waiting == 1, "the victim to queue")
        cancellation.fire()

    async with within():
        await asyncio.wait([task])
    if point == "is_broken" and kind.startswith("anyio"):
        # Every await after the failed block is shielded, so an anyio scope has nowhere
        # to deliver its cancellation: the block's own error comes out instead.
        assert isinstance(task.exception(), LookupError)
    else:
        assert cancellation.delivered
        assert task.cancelled() == (kind == "task.cancel")
    rig.open_all()
    if held is not None:
        await pool.put(held)
    await check_intact(pool, things)


async def test_a_cancelled_close_can_be_finished_by_closing_again() -> None:
    """A close() cancelled while it waits for destructions leaves the pool closed; a
    second close() waits for them and leaves nothing behind."""
    rig = Rig()
    pool = tether.AsyncPool(rig.create, destroy=rig.destroy, min_size=2)
    await pool.open()
    gate = rig.arm("destroy")
    closer = asyncio.get_running_loop().create_task(pool.close())
    await gate.reached(2)
    closer.cancel()
    async with within():
        await asyncio.wait([closer])
    assert closer.cancelled()
    assert pool.closed
    rig.open_all()
    async with within():
        await pool.close()
    assert pool.stats().size == 0
    rig.things.assert_all_destroyed_once()


@pytest.mark.parametrize("returned_by", ["async with", "put"])
async def test_a_resource_handed_to_a_caller_cancelled_a_moment_before_goes_on(
    returned_by: str,
) -> None:
    """A waiting task is cancelled, and before it runs again the resource it waits for
    comes back: the pool hands it over all the same (it cannot know yet), the cancelled
    task passes it on to the next in line when it runs, and nothing is lost."""
    things = Things()
    pool = tether.AsyncPool(things.create, destroy=things.destroy, max_size=1)
    await pool.open()
    manager = pool.acquire()
    held = await manager.__aenter__()
    loop = asyncio.get_running_loop()
    victim = loop.create_task(pool.get(), name="victim")
    heir = loop.create_task(pool.get(), name="heir")
    await eventually(lambda: pool.stats().waiting == 2, "both callers to queue")
    victim.cancel()  # its wait is over, but it has not run yet: the pool cannot tell
    if returned_by == "async with":
        await manager.__aexit__(None, None, None)
    else:
        await pool.put(held)
    async with within():
        inherited = await heir
    assert victim.cancelled()
    assert inherited is held
    await pool.put(inherited)
    await check_intact(pool, things)


@pytest.mark.parametrize("gives_up_by", ["its deadline", "cancellation"])
async def test_a_resource_made_just_as_its_caller_gives_up_is_not_lost(
    gives_up_by: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A caller's creation finishes, and the caller's deadline passes (or the caller is
    cancelled) just before the pool hands the new resource over, in the same turn of
    the event loop: the hand-over still happens (the pool cannot know yet). Then a
    caller whose deadline passed gets the resource after all, and a cancelled caller
    passes it on; either way the pool holds nothing for a caller that is gone."""
    things = Things()
    pool = tether.AsyncPool(things.create, destroy=things.destroy, max_size=1)
    await pool.open()
    caller: asyncio.Task[Thing] | None = None
    real_on_created = tether.AsyncPool._on_created

    def just_too_late(self: Any, task: asyncio.Task[object], waiter: Any) -> None:
        if gives_up_by == "its deadline":
            _async_pool._time_out_creation(waiter.handle)  # its timer fired a moment ago
        else:
            assert caller is not None
            caller.cancel()
        real_on_created(self, task, waiter)

    monkeypatch.setattr(tether.AsyncPool, "_on_created", just_too_late)
    caller = asyncio.create_task(pool.get(timeout=30.0))
    async with within():
        if gives_up_by == "its deadline":
            thing = await caller
            assert thing is things.made[0]
            assert pool.stats().in_use == 1
            await pool.put(thing)
        else:
            with pytest.raises(asyncio.CancelledError):
                await caller
    monkeypatch.setattr(tether.AsyncPool, "_on_created", real_on_created)
    assert pool.stats().timeouts == 0
    await check_intact(pool, things)


@pytest.mark.parametrize("min_size", [0, 3], ids=["idle resources", "kept at min_size"])
async def test_a_deadline_passing_during_a_check_retires_only_the_resource_checked(
    min_size: int,
) -> None:
    """A caller whose deadline passes while an (async) check of its resource runs gets
    PoolTimeout. The check was cut short, so that resource, its state unknown, is
    destroyed; but it did not fail (check_failures stays 0), and no other check starts
    after the deadline: the other idle resources survive, and with check_after=0 and
    min_size refilling the pool, the acquire does not go on checking, destroying and
    making resources for ever."""
    rig = Rig()
    things = rig.things
    pool = tether.AsyncPool(
        rig.create,
        destroy=rig.destroy,
        check=rig.check,
        min_size=min_size,
        max_size=3,
        check_after=0.0,
    )
    async with pool:
        if not min_size:
            borrowed = [await pool.get() for _ in range(3)]
            for thing in borrowed:
                await pool.put(thing)
        gate = rig.arm("check")  # each check hangs until the gate opens
        async with within():
            with pytest.raises(tether.PoolTimeout):
                await pool.get(timeout=0.02)
        stats = pool.stats()
        assert (stats.check_failures, stats.timeouts, stats.in_use) == (0, 1, 0)
        assert gate.arrivals == 1
        left = 3 if min_size else 2  # a pool kept at min_size makes up for the one gone
        await eventually(
            lambda: (len(things.destroyed), pool.stats().idle) == (1, left),
            "the destruction (and refill)",
        )
        rig.open_all()
        assert len(things.made) == 3 + (min_size > 0)
        async with pool.acquire(timeout=None) as thing:  # checked, and passes
            assert thing.checks == 1
    things.assert_all_destroyed_once()


async def test_a_create_that_raises_cancelled_error_itself_is_a_failed_creation() -> None:
    """A create() that raises CancelledError of its own (a driver whose inner future was
    cancelled under it), while neither its caller nor the pool is being cancelled, is a
    failed creation like any other: the caller gets an error that is not PoolClosed (the
    pool is open), the failure is counted, and the pool backs off."""

    async def create() -> Thing:
        cancelled = asyncio.get_running_loop().create_future()
        cancelled.cancel()
        return await cancelled  # type: ignore[no-any-return]

    async with tether.AsyncPool(create, max_size=1) as pool:
        async with within():
            with pytest.raises(RuntimeError, match="cancelled") as caught:
                await pool.get()
        assert not isinstance(caught.value, tether.PoolClosed)
        assert not pool.closed
        stats = pool.stats()
        assert (stats.create_errors, stats.last_create_error) == (1, repr(caught.value))
        with pytest.raises(tether.PoolUnavailable):
            await pool.get()


async def test_open_fails_when_a_create_raises_cancelled_error_itself() -> None:
    """open() makes min_size resources and fails (closing the pool) if one of them cannot
    be made: a create() that raises CancelledError of its own is such a failure, not a
    creation to skip, and open() must not return a pool that is short of min_size."""

    async def create() -> Thing:
        cancelled = asyncio.get_running_loop().create_future()
        cancelled.cancel()
        return await cancelled  # type: ignore[no-any-return]

    pool = tether.AsyncPool(create, min_size=1, max_size=1)
    async with within():
        with pytest.raises(RuntimeError, match="cancelled"):
            await pool.open()
    assert pool.closed


async def test_open_closed_meanwhile_is_not_a_failed_open() -> None:
    """close() while open() waits for its first resources cancels those creations: that
    is the pool closing, not create() failing, so open() does not raise an error of
    creation (nor anything else made up), and nothing was counted as a failure."""
    started = asyncio.Event()

    async def create() -> Thing:
        started.set()
        await asyncio.sleep(GUARD)
        return Thing(1)

    pool = tether.AsyncPool(create, min_size=1, max_size=1)
    opening = asyncio.ensure_future(pool.open())
    async with within():
        await started.wait()
        await pool.close()
        await opening  # returns: the pool it opened is closed now, as asked
    assert pool.closed
    assert pool.stats().create_errors == 0


async def test_a_check_cut_short_after_close_took_its_resource_back_destroys_it_once() -> None:
    """close(timeout=...) takes back, to destroy, a resource whose check is still running;
    when that check is then cut short (its caller cancelled), the resource must not be
    retired a second time: each resource is destroyed exactly once, and the pool ends
    closed with nothing counted as held."""
    things = Things()
    checking = asyncio.Event()

    async def check(thing: Thing) -> bool:
        checking.set()
        await asyncio.sleep(GUARD)
        return True

    pool = tether.AsyncPool(
        things.create, destroy=things.destroy, check=check, min_size=1, check_after=0.0
    )
    async with within():
        await pool.open()
        caller = asyncio.ensure_future(pool.get())
        await checking.wait()
        await pool.close(timeout=0.01)  # reclaims the resource being checked
        caller.cancel()
        with pytest.raises((asyncio.CancelledError, tether.PoolClosed)):
            await caller
        await eventually(lambda: pool.stats().size == 0, "the pool emptied")
    things.assert_all_destroyed_once()
    assert pool.stats().in_use == 0


async def test_a_hand_out_to_a_caller_cancelled_before_it_ran_is_not_a_use() -> None:
    """With max_uses, a resource handed to a waiting task that was cancelled a moment
    before (it cannot take the resource, and passes it on unused) is not charged a use:
    it still serves max_uses real callers before it retires."""
    things = Things()
    pool = tether.AsyncPool(things.create, destroy=things.destroy, max_size=1, max_uses=2)
    async with pool:
        held = await pool.get()  # the first real use
        victim = asyncio.get_running_loop().create_task(pool.get(), name="victim")
        await eventually(lambda: pool.stats().waiting == 1, "the victim to queue")
        victim.cancel()  # its wait is over, but it has not run yet: the pool cannot tell
        await pool.put(held)
        async with within():
            await asyncio.wait([victim])
        assert victim.cancelled()
        async with pool.acquire() as again:  # the second real use
            assert again is held
        await eventually(lambda: held.destroyed == 1, "the spent resource to be destroyed")
    assert len(things.made) == 1
    things.assert_all_destroyed_once()
