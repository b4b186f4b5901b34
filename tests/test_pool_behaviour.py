"""What a pool does, as its users see it: one suite for ``Pool`` and ``AsyncPool``.

Every test here runs three times through the ``flavour`` fixture (see ``pool_flavours``):
on ``tether.Pool`` with each call in a real thread, and on ``tether.AsyncPool`` with async
and with plain callables. The few behaviours only one shell has are at the end.
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import logging
import os
import re
import time
import warnings
from typing import Any

import pytest

import tether
from pool_flavours import Flavour, Gate, Thing, Things, eventually, in_forked_child, within
from tether import _async_pool, _pool

# ---------------------------------------------------------------------------- helpers


def pool_with(flavour: Flavour, things: Things, **options: Any) -> Any:
    """A pool of :class:`Thing` whose ``create`` and ``destroy`` are the flavour's kind."""
    return flavour.make(
        flavour.hook(things.create), destroy=flavour.hook(things.destroy), **options
    )


async def opened(flavour: Flavour, things: Things, **options: Any) -> Any:
    """:func:`pool_with`, opened."""
    pool = pool_with(flavour, things, **options)
    await flavour.open(pool)
    return pool


async def settled(pool: Any) -> tether.PoolStats:
    """Wait until no creation or destruction is in flight; return the stats then."""
    await eventually(lambda: _quiet(pool.stats()), "creations and destructions to finish")
    return pool.stats()


def _quiet(stats: tether.PoolStats) -> bool:
    return stats.size == stats.idle + stats.in_use


def site_of(marker: str) -> str:
    """``file:line`` of the line of this file that ends with the comment ``# site: marker``."""
    with open(__file__, encoding="utf-8") as source:
        for number, line in enumerate(source, 1):
            if line.rstrip().endswith(f"# site: {marker}"):
                return f"{os.path.relpath(__file__)}:{number}"
    raise AssertionError(f"no line marked {marker!r}")


def borrower(flavour: Flavour, pool: Any, log: list[Any], **options: Any) -> Any:
    """A caller that borrows a resource, notes it in ``log`` and gives it straight back."""

    async def borrow() -> Any:
        async with flavour.acquire(pool, **options) as resource:
            log.append(resource)
            return resource

    return borrow


# ---------------------------------------------------------------------------- basics


async def test_a_returned_resource_is_reused(flavour: Flavour, things: Things) -> None:
    """acquire() hands out a resource and takes it back at the end of the block; the next
    acquire gets the same one instead of creating another."""
    pool = await opened(flavour, things)
    async with flavour.acquire(pool) as first:
        assert pool.stats().in_use == 1
    async with flavour.acquire(pool) as second:
        pass
    assert first is second
    assert [first] == things.made
    stats = pool.stats()
    assert (stats.size, stats.idle, stats.in_use, stats.created, stats.acquired) == (1, 1, 0, 1, 2)
    await flavour.close(pool)
    things.assert_all_destroyed_once()


async def test_get_and_put_borrow_by_hand(flavour: Flavour, things: Things) -> None:
    """get() hands out a resource until put() gives it back."""
    pool = await opened(flavour, things)
    resource = await flavour.get(pool)
    assert (pool.stats().in_use, pool.stats().idle) == (1, 0)
    await flavour.put(pool, resource)
    assert (pool.stats().in_use, pool.stats().idle) == (0, 1)
    assert resource is await flavour.get(pool)
    await flavour.put(pool, resource)


async def test_the_pool_is_a_context_manager_that_opens_and_closes(
    flavour: Flavour, things: Things
) -> None:
    """``with pool`` / ``async with pool`` opens it (filling min_size) and closes it,
    destroying every resource."""
    pool = pool_with(flavour, things, min_size=2)
    async with flavour.using(pool) as entered:
        assert pool is entered
        assert not pool.closed
        assert pool.stats().idle == 2
        async with flavour.acquire(pool):
            pass
    assert pool.closed
    assert pool.stats().size == 0
    things.assert_all_destroyed_once()


async def test_open_creates_min_size_resources_first(flavour: Flavour, things: Things) -> None:
    """open() returns once min_size resources exist."""
    pool = await opened(flavour, things, min_size=3, max_size=5)
    stats = pool.stats()
    assert (len(things.made), stats.size, stats.idle, stats.min_size) == (3, 3, 3, 3)


async def test_open_without_waiting_fills_min_size_in_the_background(
    flavour: Flavour, things: Things
) -> None:
    """open(wait=False) returns at once; the min_size resources arrive in the background."""
    gate = Gate()
    pool = flavour.make(flavour.hook(things.create, gate), min_size=2)
    await flavour.open(pool, wait=False)
    assert pool.stats().idle == 0
    gate.open()
    await eventually(lambda: pool.stats().idle == 2, "the background fill")
    assert len(things.made) == 2


async def test_the_pool_refills_to_min_size_in_the_background(
    flavour: Flavour, things: Things
) -> None:
    """When resources are destroyed, the pool creates new ones to get back to min_size."""
    pool = await opened(flavour, things, min_size=2)
    resource = await flavour.get(pool)
    await flavour.put(pool, resource, broken=True)
    await eventually(lambda: pool.stats().idle == 2, "the refill")
    assert len(things.made) == 3
    assert resource.destroyed == 1


# ---------------------------------------------------------------------------- limits


async def test_max_size_caps_resources_and_a_full_pool_times_out(
    flavour: Flavour, things: Things
) -> None:
    """No more than max_size resources exist; when all are held, acquire() waits
    acquire_timeout and raises PoolTimeout, which is a TimeoutError."""
    pool = await opened(flavour, things, max_size=2, acquire_timeout=0.05)
    async with flavour.acquire(pool), flavour.acquire(pool):
        with pytest.raises(tether.PoolTimeout) as caught:
            async with flavour.acquire(pool):
                pass
    assert isinstance(caught.value, TimeoutError)
    assert len(things.made) == 2
    assert pool.stats().timeouts == 1


async def test_resources_being_created_count_towards_max_size(
    flavour: Flavour, things: Things
) -> None:
    """A creation in progress takes a place: with max_size=2 and two creations under
    way, a third caller waits instead of creating a third resource."""
    gate = Gate()
    pool = flavour.make(flavour.hook(things.create, gate), max_size=2)
    await flavour.open(pool)
    log: list[Thing] = []
    for n in range(3):
        flavour.spawn(borrower(flavour, pool, log), name=f"caller-{n}")
    await gate.reached(2)
    await eventually(lambda: pool.stats().waiting == 1, "the third caller to queue")
    stats = pool.stats()
    assert (stats.size, stats.in_use, stats.idle, stats.waiting) == (2, 0, 0, 1)
    gate.open()
    await eventually(lambda: len(log) == 3, "every caller to be served")
    assert 2 == len(things.made) == things.most_alive


async def test_a_per_call_timeout_overrides_acquire_timeout(
    flavour: Flavour, things: Things
) -> None:
    """acquire(timeout=...) and get(timeout=...) replace the pool's acquire_timeout (here
    forever) for that call."""
    pool = await opened(flavour, things, max_size=1, acquire_timeout=None)
    async with flavour.acquire(pool), within():
        with pytest.raises(tether.PoolTimeout):
            async with flavour.acquire(pool, timeout=0.05):
                pass
        with pytest.raises(tether.PoolTimeout):
            await flavour.get(pool, timeout=0.05)
    assert pool.stats().timeouts == 2


async def test_a_timeout_of_none_waits_for_as_long_as_it_takes(
    flavour: Flavour, things: Things
) -> None:
    """acquire(timeout=None) waits past the pool's (tiny) acquire_timeout until a
    resource comes back."""
    pool = await opened(flavour, things, max_size=1, acquire_timeout=0.01)
    log: list[Thing] = []
    async with flavour.acquire(pool) as held:
        waiter = flavour.spawn(borrower(flavour, pool, log, timeout=None), name="patient")
        await eventually(lambda: pool.stats().waiting == 1, "the waiter to queue")
        await asyncio.sleep(0.1)  # ten times the pool's acquire_timeout
        assert not waiter.done()
    async with within():
        assert held is await waiter
    assert pool.stats().timeouts == 0


async def test_waiters_are_served_first_come_first_served(flavour: Flavour, things: Things) -> None:
    """Callers that wait for a resource get one strictly in the order they started
    waiting, and a late arrival queues behind them."""
    pool = await opened(flavour, things, max_size=1)
    served: list[int] = []

    def caller(number: int) -> Any:
        async def borrow() -> None:
            async with flavour.acquire(pool):
                served.append(number)

        return borrow

    async with flavour.acquire(pool):
        for number in range(6):
            flavour.spawn(caller(number), name=f"waiter-{number}")
            await eventually(
                lambda n=number: pool.stats().waiting == n + 1, f"waiter {number} to queue"
            )
    await eventually(lambda: len(served) == 6, "every waiter to be served")
    assert served == [0, 1, 2, 3, 4, 5]


# ---------------------------------------------------------------------------- retirement


async def test_max_lifetime_retires_resources(flavour: Flavour, things: Things) -> None:
    """A resource older than max_lifetime is destroyed: idle ones by the housekeeper, held
    ones when they come back; neither is handed out again."""
    pool = await opened(flavour, things, max_lifetime=0.1)
    async with flavour.acquire(pool) as idle_one:
        pass
    await eventually(lambda: idle_one.destroyed == 1, "the idle resource to expire")
    async with flavour.acquire(pool) as held_one:
        assert held_one is not idle_one
        await asyncio.sleep(0.2)  # outlive max_lifetime while held
    await eventually(lambda: held_one.destroyed == 1, "the held resource to expire")
    async with flavour.acquire(pool) as third:
        assert third not in (idle_one, held_one)


async def test_a_full_pool_replaces_an_expired_resource_at_once(
    flavour: Flavour, things: Things, monkeypatch: pytest.MonkeyPatch
) -> None:
    """When the only resource of a full pool outlived max_lifetime while idle, the next
    caller gets a new one right away: the expired one is destroyed on the spot, not at
    the housekeeper's next round (half an hour away here)."""
    clock = [time.monotonic()]
    for shell in (_async_pool, _pool):
        monkeypatch.setattr(shell, "_monotonic", lambda: clock[0])
    pool = await opened(flavour, things, min_size=1, max_size=1, max_lifetime=3600.0)
    (old,) = things.made
    clock[0] += 4000.0
    async with within(), flavour.acquire(pool) as thing:
        assert thing is not old
    assert old.destroyed == 1


async def test_max_lifetime_is_jittered(flavour: Flavour, things: Things) -> None:
    """Resources created together get slightly different lifetimes (up to 10 % less), so
    that they do not all retire at the same moment."""
    pool = await opened(flavour, things, min_size=8, max_size=8, max_lifetime=100.0)
    # Lifetimes are not visible from outside; read them from the pool's bookkeeping.
    lifetimes = [slot.expires_at - slot.created_at for slot in pool._core.slots()]
    assert 8 == len(lifetimes) == len(set(lifetimes))
    assert all(90.0 <= lifetime <= 100.0 for lifetime in lifetimes)


async def test_max_idle_closes_idle_resources_above_min_size(
    flavour: Flavour, things: Things
) -> None:
    """Resources idle for longer than max_idle are destroyed, down to min_size."""
    pool = await opened(flavour, things, min_size=1, max_size=3, max_idle=0.05)
    async with flavour.acquire(pool), flavour.acquire(pool), flavour.acquire(pool):
        assert pool.stats().size == 3
    await eventually(lambda: pool.stats().size == 1, "idle resources above min_size to go")
    await asyncio.sleep(0.2)  # several more max_idle periods: min_size stays
    assert (pool.stats().size, pool.stats().idle) == (1, 1)
    assert len(things.destroyed) == 2


async def test_max_uses_retires_a_resource_after_that_many_hand_outs(
    flavour: Flavour, things: Things
) -> None:
    """After max_uses hand-outs a resource is destroyed and the next caller gets a new one."""
    pool = await opened(flavour, things, max_uses=2)
    async with flavour.acquire(pool) as first:
        pass
    async with flavour.acquire(pool) as second:
        pass
    assert first is second
    await eventually(lambda: first.destroyed == 1, "the used-up resource to be destroyed")
    async with flavour.acquire(pool) as third:
        assert third is not first


# ---------------------------------------------------------------------------- callables


async def test_check_runs_only_on_resources_idle_longer_than_check_after(
    flavour: Flavour, things: Things
) -> None:
    """check runs on borrow, and only for a resource that has been idle longer than
    check_after; a new resource is not checked."""
    busy = await opened(flavour, things, check=flavour.hook(things.check), check_after=30.0)
    for _ in range(3):
        async with flavour.acquire(busy) as resource:
            pass
    assert resource.checks == 0

    pool = await opened(flavour, things, check=flavour.hook(things.check), check_after=0.05)
    async with flavour.acquire(pool) as resource:
        pass
    await asyncio.sleep(0.15)  # idle for longer than check_after
    async with flavour.acquire(pool) as again:
        assert again is resource
    assert resource.checks == 1


@pytest.mark.parametrize("failure", ["returns False", "raises"])
async def test_a_failed_check_destroys_the_resource_and_the_caller_gets_another(
    flavour: Flavour, things: Things, failure: str
) -> None:
    """A resource that fails its check (returns False, or raises) is destroyed and the
    caller transparently gets another one."""

    def check(thing: Thing) -> bool:
        thing.checks += 1
        if not thing.healthy and failure == "raises":
            raise ConnectionResetError("server closed the connection")
        return thing.healthy

    pool = await opened(flavour, things, check=flavour.hook(check), check_after=0.0)
    async with flavour.acquire(pool) as first:
        pass
    first.healthy = False
    async with flavour.acquire(pool) as second:
        assert second is not first
    await settled(pool)
    assert (first.destroyed, second.destroyed) == (1, 0)
    assert pool.stats().check_failures == 1


async def test_a_failed_check_in_a_full_pool_waits_for_the_room_it_leaves(
    flavour: Flavour, things: Things
) -> None:
    """When the pool is at max_size, a caller whose resource fails its check keeps its
    place at the head of the line and gets the new resource made in the room the
    destroyed one leaves."""
    pool = await opened(
        flavour, things, check=flavour.hook(things.check), check_after=0.0, max_size=1
    )
    async with flavour.acquire(pool) as first:
        pass
    first.healthy = False
    async with within(), flavour.acquire(pool) as second:
        assert second is not first
        assert first.destroyed == 1
    stats = pool.stats()
    assert (stats.size, stats.created, stats.check_failures, stats.waiting) == (1, 2, 1, 0)


async def test_a_caller_with_timeout_zero_still_gets_an_idle_resource_checked(
    flavour: Flavour, things: Things
) -> None:
    """timeout=0 means "do not wait in line", not "no check": an idle resource due its
    check is checked (within the check's own time) and handed out, so that callers with
    timeout=0 (or a pool whose acquire_timeout is 0) keep being served once its
    resources have sat idle."""
    pool = await opened(
        flavour, things, check=flavour.hook(things.check), check_after=0.0, min_size=1
    )
    resource = await flavour.get(pool, timeout=0)  # made by open(), idle since
    assert resource.checks == 1
    await flavour.put(pool, resource)
    stats = pool.stats()
    assert (stats.timeouts, stats.check_failures) == (0, 0)


async def test_no_check_starts_after_the_callers_deadline(flavour: Flavour, things: Things) -> None:
    """A caller whose first resource's check fails (or, async, is still running) when
    its deadline comes gets PoolTimeout; it does not go on to check the next idle one,
    which stays in the pool unchecked, due its check, for the next caller."""
    slow_failing: list[Thing] = []

    def check(thing: Thing) -> bool:
        thing.checks += 1
        if thing in slow_failing:
            time.sleep(0.2)  # past the caller's deadline, blocking even an event loop
            return False
        return True

    pool = await opened(flavour, things, check=flavour.hook(check), check_after=0.0)
    async with flavour.acquire(pool) as first, flavour.acquire(pool) as second:
        pass  # `second` goes back first: `first` is on top of the idle stack
    slow_failing.append(first)
    with pytest.raises(tether.PoolTimeout):
        await flavour.get(pool, timeout=0.05)
    assert (first.checks, second.checks) == (1, 0)
    stats = pool.stats()
    assert (stats.idle, stats.in_use, stats.timeouts) == (1, 0, 1)
    async with flavour.acquire(pool) as again:
        assert again is second
    assert second.checks == 1


async def test_reset_runs_on_every_return(flavour: Flavour, things: Things) -> None:
    """reset runs each time a resource comes back, by acquire() or by put()."""
    pool = await opened(flavour, things, reset=flavour.hook(things.reset))
    async with flavour.acquire(pool) as resource:
        assert resource.resets == 0
    async with flavour.acquire(pool):
        pass
    await flavour.put(pool, await flavour.get(pool))
    assert resource.resets == 3
    assert resource.destroyed == 0


async def test_a_failed_reset_destroys_the_resource(flavour: Flavour, things: Things) -> None:
    """A resource whose reset raises is destroyed, not reused."""

    def reset(thing: Thing) -> None:
        raise RuntimeError("cannot roll back")

    pool = await opened(flavour, things, reset=flavour.hook(reset))
    async with flavour.acquire(pool) as first:
        pass
    await settled(pool)
    assert first.destroyed == 1
    async with flavour.acquire(pool) as second:
        assert second is not first


async def test_is_broken_decides_whether_an_error_destroys_the_resource(
    flavour: Flavour, things: Things
) -> None:
    """An error raised inside acquire() propagates unchanged; when is_broken says it
    broke the resource, the resource is destroyed instead of reused."""
    seen: list[BaseException] = []

    def is_broken(error: BaseException) -> bool:
        seen.append(error)
        return isinstance(error, ConnectionError)

    pool = await opened(flavour, things, is_broken=flavour.hook(is_broken))
    app_error = ValueError("bad input")
    lost = ConnectionAbortedError("connection lost")
    used: list[Thing] = []

    async def fail_with(error: Exception) -> None:
        async with flavour.acquire(pool) as resource:
            used.append(resource)
            raise error

    with pytest.raises(ValueError, match="bad input") as caught:
        await fail_with(app_error)
    assert caught.value is app_error
    with pytest.raises(ConnectionAbortedError):
        await fail_with(lost)
    first, second = used
    assert second is first
    assert [app_error, lost] == seen
    await settled(pool)
    assert first.destroyed == 1
    assert pool.stats().broken == 1
    async with flavour.acquire(pool) as third:
        assert third is not first


async def test_put_broken_destroys_the_resource(flavour: Flavour, things: Things) -> None:
    """put(resource, broken=True) destroys it instead of reusing it."""
    pool = await opened(flavour, things)
    resource = await flavour.get(pool)
    await flavour.put(pool, resource, broken=True)
    stats = await settled(pool)
    assert resource.destroyed == 1
    assert (stats.size, stats.destroyed, stats.broken) == (0, 1, 1)


# ---------------------------------------------------------------------------- reporting


async def test_stats_are_a_frozen_snapshot_with_consistent_counters(
    flavour: Flavour, things: Things
) -> None:
    """stats() returns a frozen PoolStats; its counters and its wait and hold summaries
    agree with what happened."""
    pool = await opened(flavour, things, max_size=1, name="counted")
    before = pool.stats()
    log: list[Thing] = []
    async with flavour.acquire(pool):
        during = pool.stats()
        waiter = flavour.spawn(borrower(flavour, pool, log), name="waiter")
        await eventually(lambda: pool.stats().waiting == 1, "the waiter to queue")
        await asyncio.sleep(0.05)  # the waiter waits, and the holder holds, this long
    async with within():
        await waiter
    after = pool.stats()

    with pytest.raises(dataclasses.FrozenInstanceError):
        after.size = 5  # type: ignore[misc]
    assert (
        before.name,
        before.size,
        before.acquired,
        before.max_size,
        before.min_size,
    ) == ("counted", 0, 0, 1, 0)
    assert (during.size, during.in_use, during.idle, during.acquired) == (1, 1, 0, 1)
    assert (
        after.size,
        after.in_use,
        after.idle,
        after.waiting,
        after.acquired,
        after.created,
        after.destroyed,
    ) == (1, 0, 1, 0, 2, 1, 0)
    assert (
        after.timeouts,
        after.create_errors,
        after.check_failures,
        after.broken,
        after.last_create_error,
    ) == (0, 0, 0, 0, None)
    assert (after.wait.count, after.hold.count) == (2, 2)
    for summary in (after.wait, after.hold):
        assert 0.0 <= summary.p50 <= summary.p99 <= summary.max
        assert summary.mean <= summary.max
    assert after.wait.max >= 0.05
    assert after.hold.max >= 0.05


async def test_holders_say_who_holds_what_since_when_and_where(
    flavour: Flavour, things: Things
) -> None:
    """holders() lists each held resource with how long it has been held, the task or
    thread holding it, and the file:line in the caller's code that acquired it."""
    pool = await opened(flavour, things)
    holding = asyncio.Event()
    release = asyncio.Event()

    async def hold() -> Thing:
        async with flavour.using(pool.acquire()) as resource:  # site: holder
            holding.set()
            await release.wait()
            return resource

    holder = flavour.spawn(hold, name="report-writer")
    async with within():
        await holding.wait()
    [first] = pool.holders()
    await asyncio.sleep(0.02)
    [later] = pool.holders()
    release.set()
    resource = await holder

    assert resource is first.resource
    assert first.owner == "report-writer"
    assert site_of("holder") == first.site
    assert 0.0 <= first.held_for < later.held_for
    assert not first.leaked
    assert f"report-writer for {first.held_for:.3f}s, acquired at {first.site}" == str(first)
    assert pool.holders() == []


async def test_a_resource_held_past_leak_timeout_is_reported_once(
    flavour: Flavour, things: Things, caplog: pytest.LogCaptureFixture
) -> None:
    """A resource held longer than leak_timeout is reported once, as a warning on the
    ``tether.pool`` logger naming where it was acquired; holders() marks it as leaked."""
    caplog.set_level(logging.WARNING, logger="tether.pool")
    pool = await opened(flavour, things, leak_timeout=0.05, name="leaky")

    def reports() -> list[logging.LogRecord]:
        return [r for r in caplog.records if r.name == "tether.pool"]

    async with flavour.using(pool.acquire()):  # site: leak
        await eventually(reports, "the leak report")
        await asyncio.sleep(0.2)  # several more housekeeping rounds
        [holder] = pool.holders()
        assert holder.leaked
    [report] = reports()
    assert report.levelno == logging.WARNING
    message = report.getMessage()
    assert "'leaky'" in message
    assert f"acquired at {site_of('leak')}" in message


async def test_a_pool_has_a_name(flavour: Flavour, things: Things) -> None:
    """name= names the pool in its stats and repr; without it, each pool gets a
    distinct name of its own."""
    named = pool_with(flavour, things, name="orders")
    assert "orders" == named.name == named.stats().name
    assert "'orders'" in repr(named)
    first, second = pool_with(flavour, things), pool_with(flavour, things)
    assert first.name
    assert first.name != second.name


async def test_pool_timeout_says_who_holds_what(flavour: Flavour, things: Things) -> None:
    """PoolTimeout's message names the pool, gives its size, in use, idle and waiting
    counts, the holders with their age and acquisition site, and the last creation
    error; .holders and .stats carry the same facts."""
    things.failures.append(ConnectionRefusedError("refused"))
    pool = await opened(flavour, things, name="inventory", max_size=1, retry_delay=(0.01, 0.01))
    with pytest.raises(ConnectionRefusedError):
        await flavour.get(pool)
    await asyncio.sleep(0.1)  # past the retry time: the next acquire may create again
    log: list[Thing] = []
    async with flavour.using(pool.acquire()) as held:  # site: timeout holder
        queued = flavour.spawn(borrower(flavour, pool, log, timeout=None), name="queued")
        await eventually(lambda: pool.stats().waiting == 1, "a caller to queue")
        with pytest.raises(tether.PoolTimeout) as caught:
            await flavour.get(pool, timeout=0.05)
    async with within():
        await queued

    error = caught.value
    message = str(error)
    assert isinstance(error, TimeoutError)
    assert re.match(r"pool 'inventory': no resource free after \d+\.\d{3}s ", message)
    assert "size 1/1, in use 1, idle 0, waiting 1" in message
    [holder] = error.holders
    assert held is holder.resource
    assert re.search(
        rf"\n  {re.escape(holder.owner)} for \d+\.\d{{3}}s, acquired at "
        rf"{re.escape(site_of('timeout holder'))}\n",
        message,
    )
    assert message.endswith("last creation error: ConnectionRefusedError('refused')")
    assert error.stats is not None
    assert (
        error.stats.name,
        error.stats.in_use,
        error.stats.waiting,
        error.stats.timeouts,
    ) == ("inventory", 1, 1, 1)


async def test_pool_timeout_lists_the_five_longest_holders(
    flavour: Flavour, things: Things
) -> None:
    """PoolTimeout's message lists the five longest holders and counts the others."""
    pool = await opened(flavour, things, max_size=7)
    held = [await flavour.get(pool) for _ in range(7)]
    with pytest.raises(tether.PoolTimeout) as caught:
        await flavour.get(pool, timeout=0.01)
    message = str(caught.value)
    assert message.count(", acquired at ") == 5
    assert message.endswith("\n  ... and 2 more")
    assert len(caught.value.holders) == 7
    for resource in held:
        await flavour.put(pool, resource)


# ---------------------------------------------------------------------------- failures


async def test_a_failed_destruction_is_reported_and_the_resource_is_gone_anyway(
    flavour: Flavour, things: Things, caplog: pytest.LogCaptureFixture
) -> None:
    """When destroy raises, the error is logged on ``tether.pool`` and the resource
    counts as destroyed: its place is free for a new one."""
    caplog.set_level(logging.WARNING, logger="tether.pool")

    def destroy(thing: Thing) -> None:
        things.destroy(thing)
        raise OSError("already gone")

    pool = flavour.make(
        flavour.hook(things.create), destroy=flavour.hook(destroy), max_size=1, name="fragile"
    )
    await flavour.open(pool)
    first = await flavour.get(pool)
    await flavour.put(pool, first, broken=True)
    async with within(), flavour.acquire(pool) as second:
        assert second is not first
    stats = await settled(pool)
    assert (stats.size, stats.destroyed) == (1, 1)
    [report] = [r for r in caplog.records if r.name == "tether.pool"]
    assert "'fragile': destroying <Thing 1> failed: OSError('already gone')" in (
        report.getMessage()
    )


async def test_an_is_broken_that_raises_means_broken(
    flavour: Flavour, things: Things, caplog: pytest.LogCaptureFixture
) -> None:
    """When is_broken itself raises, the resource is destroyed (when in doubt, do not
    reuse it) and a warning says so; the block's own error propagates."""
    caplog.set_level(logging.WARNING, logger="tether.pool")

    def is_broken(error: BaseException) -> bool:
        raise TypeError("is_broken has a bug")

    pool = await opened(flavour, things, is_broken=flavour.hook(is_broken))
    used: list[Thing] = []

    async def fail() -> None:
        async with flavour.acquire(pool) as resource:
            used.append(resource)
            raise LookupError("application error")

    with pytest.raises(LookupError):
        await fail()
    await settled(pool)
    assert [thing.destroyed for thing in used] == [1]
    assert any("is_broken raised" in r.getMessage() for r in caplog.records)


async def test_a_creation_failure_reaches_the_caller_then_the_pool_fails_fast(
    flavour: Flavour, things: Things
) -> None:
    """The caller that needed a new resource gets the real creation error; until the
    retry time, callers that would need one get PoolUnavailable at once, caused by it."""
    refused = ConnectionRefusedError("database is down")
    things.failures.append(refused)
    pool = await opened(flavour, things, retry_delay=(30.0, 60.0))
    with pytest.raises(ConnectionRefusedError) as first:
        async with flavour.acquire(pool):
            pass
    assert first.value is refused
    async with within():
        with pytest.raises(tether.PoolUnavailable) as second:
            async with flavour.acquire(pool):
                pass
    assert second.value.__cause__ is refused
    assert "database is down" in str(second.value)
    assert (pool.stats().create_errors, pool.stats().created) == (1, 0)


async def test_background_retries_recover_when_creation_works_again(
    flavour: Flavour, things: Things
) -> None:
    """After creation failures the pool retries in the background, waiting longer after
    each failure (capped exponential backoff, with jitter that at most halves a delay),
    and gets back to min_size by itself once creation works again."""
    things.failures.extend(ConnectionRefusedError(f"attempt {n}") for n in range(3))
    attempts: list[float] = []

    def create() -> Thing:
        attempts.append(time.monotonic())
        return things.create()

    pool = flavour.make(flavour.hook(create), min_size=1, retry_delay=(0.02, 0.2))
    await flavour.open(pool, wait=False)
    await eventually(lambda: pool.stats().idle == 1, "the pool to recover")
    gaps = [later - earlier for earlier, later in itertools.pairwise(attempts)]
    assert len(gaps) == 3
    least = [0.01, 0.02, 0.04]  # first delay 0.02, doubling; jitter at most halves it
    assert all(gap >= low for gap, low in zip(gaps, least, strict=True)), gaps
    stats = pool.stats()
    assert (stats.create_errors, stats.created) == (3, 1)
    assert stats.last_create_error == "ConnectionRefusedError('attempt 2')"
    async with flavour.acquire(pool) as resource:
        assert things.made == [resource]


async def test_open_raises_when_min_size_cannot_be_created(
    flavour: Flavour, things: Things
) -> None:
    """open() raises the creation error when it cannot make min_size resources, and
    leaves the pool closed with nothing left over."""
    refused = ConnectionRefusedError("database is down")
    things.failures.append(refused)
    pool = pool_with(flavour, things, min_size=2)
    with pytest.raises(ConnectionRefusedError) as caught:
        await flavour.open(pool)
    assert caught.value is refused
    assert pool.closed
    await settled(pool)
    things.assert_all_destroyed_once()


# ---------------------------------------------------------------------------- closing


async def test_returning_to_a_closed_pool_is_fine(flavour: Flavour, things: Things) -> None:
    """Resources held when the pool closes can still be returned (with acquire()'s block
    or put()); they are destroyed then."""
    pool = await opened(flavour, things)
    async with flavour.acquire(pool) as held:
        by_hand = await flavour.get(pool)
        await flavour.close(pool)
        assert pool.closed
        assert (held.destroyed, by_hand.destroyed) == (0, 0)
    await flavour.put(pool, by_hand)
    await settled(pool)
    assert pool.stats().size == 0
    things.assert_all_destroyed_once()


async def test_close_with_a_timeout_waits_for_held_resources(
    flavour: Flavour, things: Things
) -> None:
    """close(timeout) waits until held resources come back, then destroys them."""
    pool = await opened(flavour, things)
    holding = asyncio.Event()
    release = asyncio.Event()

    async def hold() -> None:
        async with flavour.acquire(pool):
            holding.set()
            await release.wait()

    holder = flavour.spawn(hold, name="holder")
    await holding.wait()
    closer = flavour.spawn(lambda: flavour.close(pool, timeout=60.0), name="closer")
    await eventually(lambda: pool.closed, "the close to start")
    assert not closer.done()
    release.set()
    async with within():
        await closer
        await holder
    assert pool.stats().size == 0
    things.assert_all_destroyed_once()


async def test_close_with_a_timeout_destroys_held_resources_at_the_timeout(
    flavour: Flavour, things: Things
) -> None:
    """When close(timeout) runs out of patience it destroys what is still held; the late
    return of those resources is accepted silently, and does not reset them."""
    pool = await opened(flavour, things, reset=flavour.hook(things.reset))
    async with flavour.acquire(pool) as held:
        by_hand = await flavour.get(pool)
        async with within():
            await flavour.close(pool, timeout=0.05)
        assert (held.destroyed, by_hand.destroyed) == (1, 1)
        assert pool.stats().size == 0
        await flavour.put(pool, by_hand)
    things.assert_all_destroyed_once()
    assert (held.resets, by_hand.resets) == (0, 0)


async def test_a_caller_whose_resource_is_still_being_made_at_close_gets_pool_closed(
    flavour: Flavour, things: Things
) -> None:
    """A caller waiting for its new resource when the pool closes gets PoolClosed; a
    resource that comes into being after the close is destroyed."""
    gate = Gate()
    pool = flavour.make(flavour.hook(things.create, gate), destroy=flavour.hook(things.destroy))
    await flavour.open(pool)
    log: list[Thing] = []
    caller = flavour.spawn(borrower(flavour, pool, log), name="caller")
    await gate.reached()
    await flavour.close(pool)
    gate.open()
    async with within():
        with pytest.raises(tether.PoolClosed):
            await caller
    await settled(pool)
    assert log == []
    assert pool.stats().size == 0
    things.assert_all_destroyed_once()


async def test_a_late_return_during_the_destruction_is_accepted_silently(
    flavour: Flavour, things: Things
) -> None:
    """A resource returned while close(timeout) is still destroying it is accepted
    silently too, and destroyed only once."""
    gate = Gate()
    pool = flavour.make(flavour.hook(things.create), destroy=flavour.hook(things.destroy, gate))
    await flavour.open(pool)
    by_hand = await flavour.get(pool)
    closer = flavour.spawn(lambda: flavour.close(pool, timeout=0.0), name="closer")
    await gate.reached()
    await flavour.put(pool, by_hand)
    gate.open()
    async with within():
        await closer
    things.assert_all_destroyed_once()


async def test_a_closed_pool_refuses_with_pool_closed(flavour: Flavour, things: Things) -> None:
    """A pool hands nothing out before open() or after close(), and opens only once."""
    pool = pool_with(flavour, things)
    with pytest.raises(tether.PoolClosed, match="not open"):
        async with flavour.acquire(pool):
            pass
    await flavour.open(pool)
    await flavour.close(pool)
    with pytest.raises(tether.PoolClosed, match="closed"):
        async with flavour.acquire(pool):
            pass
    with pytest.raises(tether.PoolClosed, match="closed"):
        await flavour.get(pool)
    with pytest.raises(tether.PoolClosed):
        await flavour.open(pool)
    await flavour.close(pool)  # closing again is harmless
    assert things.made == []


async def test_close_fails_the_callers_waiting_in_line(flavour: Flavour, things: Things) -> None:
    """Callers waiting for a resource when the pool closes get PoolClosed."""
    pool = await opened(flavour, things, max_size=1)
    log: list[Thing] = []
    async with flavour.acquire(pool):
        waiter = flavour.spawn(borrower(flavour, pool, log), name="waiter")
        await eventually(lambda: pool.stats().waiting == 1, "the waiter to queue")
        await flavour.close(pool)
        async with within():
            with pytest.raises(tether.PoolClosed):
                await waiter
    assert log == []


async def test_an_unclosed_pool_warns(flavour: Flavour, things: Things) -> None:
    """An open pool that is dropped without being closed emits a ResourceWarning saying
    where it was created."""
    pools = [flavour.pool_type(flavour.hook(things.create))]  # not kept by the fixture
    await flavour.open(pools[0])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ResourceWarning)
        pools.clear()
        # A housekeeper in the middle of a round holds the pool until the round ends,
        # and the warning comes from its thread then.
        await eventually(
            lambda: any("never closed" in str(w.message) for w in caught),
            "the pool's ResourceWarning",
        )
    assert all(w.category is ResourceWarning for w in caught)


# ---------------------------------------------------------------------------- resize


async def test_growing_max_size_serves_waiters_at_once(flavour: Flavour, things: Things) -> None:
    """resize(max_size=...) upwards lets a waiting caller create a resource right away."""
    pool = await opened(flavour, things, max_size=1)
    log: list[Thing] = []
    async with flavour.acquire(pool) as held:
        waiter = flavour.spawn(borrower(flavour, pool, log), name="waiter")
        await eventually(lambda: pool.stats().waiting == 1, "the waiter to queue")
        await flavour.run(lambda: pool.resize(max_size=2))
        async with within():
            assert held is not await waiter
    assert 2 == pool.stats().max_size == len(things.made)


async def test_shrinking_max_size_retires_resources_down_to_it(
    flavour: Flavour, things: Things
) -> None:
    """resize(max_size=...) downwards destroys idle resources now and held ones when they
    come back, until the pool fits."""
    pool = await opened(flavour, things, max_size=3)
    idle, *held = [await flavour.get(pool) for _ in range(3)]
    await flavour.put(pool, idle)
    await flavour.run(lambda: pool.resize(max_size=1))
    await settled(pool)
    assert (idle.destroyed, pool.stats().size) == (1, 2)
    for resource in held:
        await flavour.put(pool, resource)
        await settled(pool)
    stats = pool.stats()
    assert (stats.size, stats.idle, stats.max_size) == (1, 1, 1)
    assert [thing.destroyed for thing in things.made] == [1, 1, 0]


async def test_a_pool_can_be_resized_before_it_opens(flavour: Flavour, things: Things) -> None:
    """resize() before open() sets the sizes open() works with."""
    pool = pool_with(flavour, things)
    await flavour.run(lambda: pool.resize(min_size=2, max_size=2))
    await flavour.open(pool)
    stats = pool.stats()
    assert (stats.idle, stats.min_size, stats.max_size) == (2, 2, 2)


async def test_raising_min_size_fills_the_pool_in_the_background(
    flavour: Flavour, things: Things
) -> None:
    """resize(min_size=...) upwards creates the missing resources in the background."""
    pool = await opened(flavour, things, max_size=4)
    await flavour.run(lambda: pool.resize(min_size=3))
    await eventually(lambda: pool.stats().idle == 3, "the pool to fill")
    assert 3 == pool.stats().min_size == len(things.made)


# ---------------------------------------------------------------------------- bad input


BAD_OPTIONS = [
    ({"max_size": 0}, ValueError, "max_size"),
    ({"min_size": 3, "max_size": 2}, ValueError, "min_size"),
    ({"min_size": -1}, ValueError, "min_size"),
    ({"max_size": 2.5}, TypeError, "max_size"),
    ({"min_size": "1"}, TypeError, "min_size"),
    ({"acquire_timeout": -1}, ValueError, "acquire_timeout"),
    ({"acquire_timeout": float("nan")}, ValueError, "acquire_timeout"),
    ({"acquire_timeout": "30"}, TypeError, "acquire_timeout"),
    ({"max_lifetime": -1.0}, ValueError, "max_lifetime"),
    ({"max_lifetime": 0}, ValueError, "max_lifetime"),
    ({"max_idle": -0.5}, ValueError, "max_idle"),
    ({"max_uses": 0}, ValueError, "max_uses"),
    ({"check_after": -1}, ValueError, "check_after"),
    ({"leak_timeout": -2}, ValueError, "leak_timeout"),
    ({"retry_delay": (0.0, 1.0)}, ValueError, "retry_delay"),
    ({"name": 42}, TypeError, "name"),
    ({"destroy": "close"}, TypeError, "destroy"),
    ({"check": 1}, TypeError, "check"),
    ({"reset": object()}, TypeError, "reset"),
    ({"is_broken": True}, TypeError, "is_broken"),
]


@pytest.mark.parametrize(
    ("options", "error", "parameter"),
    BAD_OPTIONS,
    ids=[",".join(f"{k}={v!r}" for k, v in options.items()) for options, _, _ in BAD_OPTIONS],
)
async def test_bad_options_are_refused_naming_the_parameter(
    flavour: Flavour,
    things: Things,
    options: dict[str, Any],
    error: type[Exception],
    parameter: str,
) -> None:
    """A bad option raises TypeError or ValueError when the pool is made, naming it."""
    with pytest.raises(error, match=parameter):
        flavour.make(things.create, **options)


@pytest.mark.parametrize("create", [None, "connect", 42])
async def test_create_must_be_callable(flavour: Flavour, create: object) -> None:
    """A pool needs a callable create."""
    with pytest.raises(TypeError, match="create"):
        flavour.make(create)  # type: ignore[arg-type]


async def test_bad_timeouts_in_calls_are_refused(flavour: Flavour, things: Things) -> None:
    """A negative timeout passed to acquire(), get() or close() raises ValueError naming
    it (even when an idle resource could be handed out at once), and changes nothing."""
    pool = await opened(flavour, things, min_size=1)
    before = pool.stats()
    with pytest.raises(ValueError, match="timeout"):
        async with flavour.acquire(pool, timeout=-1):
            pass
    with pytest.raises(ValueError, match="timeout"):
        await flavour.get(pool, timeout=-0.5)
    with pytest.raises(ValueError, match="timeout"):
        await flavour.close(pool, timeout=-1)
    assert not pool.closed
    assert before == pool.stats()


async def test_bad_resize_bounds_are_refused(flavour: Flavour, things: Things) -> None:
    """resize() checks its bounds like the constructor and changes nothing when they are
    bad."""
    pool = await opened(flavour, things, min_size=1, max_size=3)
    with pytest.raises(ValueError, match="max_size"):
        await flavour.run(lambda: pool.resize(max_size=0))
    with pytest.raises(ValueError, match="min_size"):
        await flavour.run(lambda: pool.resize(min_size=4))
    assert (pool.stats().min_size, pool.stats().max_size) == (1, 3)


async def test_put_of_a_foreign_or_returned_resource_is_refused(
    flavour: Flavour, things: Things
) -> None:
    """put() of a resource this pool did not hand out, or one already given back, raises
    ValueError and changes nothing: not the pool, not the resource."""
    pool = await opened(flavour, things, reset=flavour.hook(things.reset))
    resource = await flavour.get(pool)
    await flavour.put(pool, resource)
    other_pool = await opened(flavour, Things())
    foreign = await flavour.get(other_pool)
    before = pool.stats()
    with pytest.raises(ValueError, match="not held from pool"):
        await flavour.put(pool, resource)
    with pytest.raises(ValueError, match="not held from pool"):
        await flavour.put(pool, Thing(99))
    with pytest.raises(ValueError, match="not held from pool"):
        await flavour.put(pool, foreign)
    assert before == pool.stats()
    assert resource.resets == 1
    assert foreign.resets == 0
    await flavour.put(other_pool, foreign)


async def test_a_stale_return_never_touches_a_resource_someone_else_holds(
    flavour: Flavour, things: Things
) -> None:
    """When acquire()'s block ends after its resource was already put() back and handed
    to someone else, the return is refused with ValueError, and the other holder's
    resource is neither reset nor taken away."""
    pool = await opened(flavour, things, max_size=1, reset=flavour.hook(things.reset))
    handed_on: list[Thing] = []

    async def return_early_and_hand_on() -> None:
        async with flavour.acquire(pool) as resource:
            await flavour.put(pool, resource)
            handed_on.append(await flavour.get(pool))

    with pytest.raises(ValueError, match="not held from pool"):
        await return_early_and_hand_on()
    [other] = handed_on
    assert other.resets == 1
    assert pool.stats().in_use == 1
    await flavour.put(pool, other)
    assert other.resets == 2


# ---------------------------------------------------------------------------- fork


def borrow_alone(pool: Any) -> int:
    """Borrow a resource where no event loop runs (a forked child); return its number."""
    if isinstance(pool, tether.Pool):
        with pool.acquire() as resource:
            return int(resource.number)

    async def borrow() -> int:
        async with pool.acquire() as resource:
            return int(resource.number)

    return asyncio.run(borrow())


async def test_a_forked_child_never_reuses_the_parents_resources(
    flavour: Flavour, things: Things
) -> None:
    """After os.fork(), a pool in the child creates resources of its own instead of
    handing out those it inherited from the parent (which still owns them)."""
    pool = await opened(flavour, things, min_size=2)
    parents = {thing.number for thing in things.made}
    report = in_forked_child(lambda: str(borrow_alone(pool)).encode())
    assert report.isdigit(), report
    assert int(report) not in parents
    async with flavour.acquire(pool) as resource:
        assert resource.number in parents


# ---------------------------------------------------------------------------- asyncio only


@pytest.mark.parametrize("idle", [0, 1], ids=["nothing idle", "one idle"])
@pytest.mark.parametrize("call", ["acquire", "get", "put"])
async def test_an_async_pool_used_from_another_event_loop_says_so(call: str, idle: int) -> None:
    """An AsyncPool belongs to the event loop it was opened on; using it from another
    loop raises a RuntimeError saying so, whether or not a resource is idle."""
    async with tether.AsyncPool(Things().create, min_size=idle) as pool:
        borrowed = await pool.get()
        if idle:
            await pool.put(await pool.get())  # so that one is idle beside the borrowed one

        async def elsewhere() -> None:
            if call == "acquire":
                async with pool.acquire():
                    pass
            elif call == "get":
                await pool.get()
            else:
                await pool.put(borrowed)

        with pytest.raises(RuntimeError, match="event loop"):
            await asyncio.to_thread(asyncio.run, elsewhere())
        assert (pool.stats().in_use, pool.stats().idle) == (1, idle)
        await pool.put(borrowed)


async def test_close_from_another_event_loop_is_refused_and_changes_nothing() -> None:
    """close() from another event loop than the pool's raises a RuntimeError saying so,
    before it changes anything: the pool stays open and keeps its resources, and closing
    it from its own loop afterwards destroys them all."""
    things = Things()
    pool = tether.AsyncPool(things.create, destroy=things.destroy, min_size=2)
    async with pool:
        with pytest.raises(RuntimeError, match="event loop"):
            await asyncio.to_thread(asyncio.run, pool.close())
        assert not pool.closed
        assert (pool.stats().idle, things.destroyed) == (2, [])
        async with pool.acquire():
            pass
    assert pool.stats().size == 0
    things.assert_all_destroyed_once()


async def test_taking_an_idle_resource_does_not_yield_to_the_event_loop() -> None:
    """The fast path (an idle resource that needs no check) never suspends the caller."""
    things = Things()
    async with tether.AsyncPool(things.create) as pool:
        async with pool.acquire():
            pass
        ran: list[str] = []
        asyncio.get_running_loop().call_soon(ran.append, "other work")
        async with pool.acquire():
            pass
        resource = await pool.get()
        await pool.put(resource)
        assert ran == []


async def test_an_acquire_that_times_out_while_its_resource_is_made_leaves_it_to_the_pool() -> None:
    """On AsyncPool, acquire_timeout also bounds the wait for a resource being created
    for the caller; the resource, once made, goes to the pool (a Pool's thread cannot be
    interrupted inside create, so it waits for it)."""
    things = Things()
    gate = Gate()

    async def create() -> Thing:
        await gate.pass_async()
        return things.create()

    async with tether.AsyncPool(create, acquire_timeout=0.05) as pool:
        with pytest.raises(tether.PoolTimeout) as caught:
            await pool.get()
        assert "longest holders" not in str(caught.value)
        gate.open()
        await eventually(lambda: pool.stats().idle == 1, "the resource to reach the pool")
        assert pool.stats().timeouts == 1
        async with pool.acquire() as thing:
            assert things.made == [thing]


async def test_get_records_the_callers_line() -> None:
    """get() on an AsyncPool records the file:line of the awaiting caller."""
    async with tether.AsyncPool(Things().create) as pool:
        resource = await pool.get()  # site: async get
        [holder] = pool.holders()
        await pool.put(resource)
    assert site_of("async get") == holder.site


@pytest.mark.parametrize("kind", ["sync", "async"])
async def test_an_async_pool_awaits_async_callables_and_calls_sync_ones(kind: str) -> None:
    """AsyncPool takes create, destroy, check, reset and is_broken as plain functions or
    as async ones, and uses each the right way."""
    things = Things()
    calls: list[str] = []

    def recorded(name: str, result: Any = None) -> Any:
        def plain(*args: Any) -> Any:
            calls.append(name)
            return result(*args) if callable(result) else result

        async def coroutine(*args: Any) -> Any:
            await asyncio.sleep(0)
            return plain(*args)

        return plain if kind == "sync" else coroutine

    pool = tether.AsyncPool(
        recorded("create", things.create),
        destroy=recorded("destroy", things.destroy),
        check=recorded("check", result=True),
        reset=recorded("reset"),
        is_broken=recorded("is_broken", result=True),
        check_after=0.0,
    )
    async with pool:
        async with pool.acquire():
            pass
        with pytest.raises(OSError, match="lost"):
            async with pool.acquire():
                raise OSError("lost")
        await settled(pool)
    assert calls == ["create", "reset", "check", "is_broken", "destroy"]
