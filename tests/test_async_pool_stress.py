"""An asyncio pool under a storm: two hundred tasks, cancellations at random moments.

The asyncio counterpart of the thread stress test in ``test_pool_threads``: callers
acquire, hold, return, break and time out at random while creations, checks and resets
(all async, all taking a while) sometimes fail, and a third of the rounds are cancelled
at a random moment — while waiting in line, while their resource is being made or
checked, while holding it, or while it is being reset. Whatever happens, the pool never
has more than ``max_size`` resources, never hands one resource to two callers, never
destroys one that is held, its counters add up, and closing it destroys every resource
exactly once.
"""

from __future__ import annotations

import asyncio
import random
from collections import Counter
from dataclasses import dataclass, field

import tether

TASKS = 200
ROUNDS = 25
MAX_SIZE = 6


@dataclass
class StormThing:
    number: int
    holder: object = None
    destroyed: int = 0


@dataclass
class Storm:
    """Resources whose creation, check and reset sometimes fail, counting everything."""

    chance: random.Random
    counts: Counter[str] = field(default_factory=Counter)
    errors: list[str] = field(default_factory=list)
    made: list[StormThing] = field(default_factory=list)
    alive: int = 0
    flaky: bool = False

    async def create(self) -> StormThing:
        self.alive += 1
        if self.alive > MAX_SIZE:
            self.errors.append(f"{self.alive} resources alive at once")
        try:
            await asyncio.sleep(self.chance.random() * 0.002)
            if self.flaky and self.chance.random() < 0.03:
                raise ConnectionRefusedError("refused")
        except BaseException:
            self.alive -= 1
            raise
        thing = StormThing(len(self.made) + 1)
        self.made.append(thing)
        return thing

    async def destroy(self, thing: StormThing) -> None:
        await asyncio.sleep(0)
        thing.destroyed += 1
        self.alive -= 1
        if thing.holder is not None:
            self.errors.append(f"{thing} destroyed while held")

    async def check(self, thing: StormThing) -> bool:
        await asyncio.sleep(self.chance.random() * 0.001)
        return self.chance.random() > 0.05

    def reset(self, thing: StormThing) -> object:
        roll = self.chance.random()
        if roll < 0.03:
            raise RuntimeError("cannot roll back")
        if roll < 0.3:
            return asyncio.sleep(self.chance.random() * 0.001)  # work to await
        return None


async def one_round(pool: tether.AsyncPool[StormThing], storm: Storm, me: object) -> None:
    chance = storm.chance
    timeout = chance.choice([None, 0.0, 0.005, 0.05, 1.0])
    try:
        async with pool.acquire(timeout=timeout) as thing:
            if thing.holder is not None:
                storm.errors.append(f"{thing} handed to {me} while {thing.holder} held it")
            thing.holder = me
            storm.counts["acquired"] += 1
            try:
                await asyncio.sleep(chance.random() * 0.002)  # the work
                if chance.random() < 0.05:
                    raise ConnectionAbortedError("lost")
            finally:
                thing.holder = None
    except ConnectionAbortedError:
        storm.counts["broken"] += 1
    except tether.PoolTimeout:
        storm.counts["timed out"] += 1
    except (tether.PoolUnavailable, ConnectionRefusedError):
        storm.counts["unavailable"] += 1


async def worker(pool: tether.AsyncPool[StormThing], storm: Storm, number: int) -> None:
    loop = asyncio.get_running_loop()
    for _ in range(ROUNDS):
        task = asyncio.create_task(one_round(pool, storm, f"worker {number}"))
        if storm.chance.random() < 0.33:
            loop.call_later(storm.chance.random() * 0.004, task.cancel)
        try:
            await task
        except asyncio.CancelledError:
            storm.counts["cancelled"] += 1
        except BaseException as error:
            storm.errors.append(repr(error))


async def test_two_hundred_tasks_cancelled_at_random_never_break_the_invariants() -> None:
    """200 tasks on a pool of 6, a third of their rounds cancelled at random moments, with
    failing creations, checks and resets: the invariants hold throughout, and after close
    every resource was destroyed exactly once."""
    storm = Storm(random.Random(20261205))
    pool = tether.AsyncPool(
        storm.create,
        destroy=storm.destroy,
        check=storm.check,
        reset=storm.reset,
        is_broken=lambda error: isinstance(error, ConnectionAbortedError),
        min_size=2,
        max_size=MAX_SIZE,
        max_uses=20,
        check_after=0.002,
        acquire_timeout=5.0,
        retry_delay=(0.001, 0.01),
        name="storm",
    )
    async with pool:
        storm.flaky = True

        async def watch() -> None:
            while True:
                stats = pool.stats()
                if stats.size > MAX_SIZE or stats.in_use > stats.size:
                    storm.errors.append(f"size {stats.size}, in use {stats.in_use}")
                await asyncio.sleep(0.001)

        watcher = asyncio.create_task(watch())
        await asyncio.gather(*(worker(pool, storm, n) for n in range(TASKS)))
        watcher.cancel()
        storm.flaky = False
        running = pool.stats()
    final = pool.stats()

    assert storm.errors == []
    counts = storm.counts
    # The storm did what it is for (about a quarter of the 5,000 rounds each).
    assert counts["cancelled"] > 500, counts
    assert counts["acquired"] > 500, counts
    assert counts["timed out"] > 200, counts
    assert running.in_use == running.waiting == 0
    assert running.acquired == counts["acquired"]
    # A caller timed out by the pool can be cancelled before it sees its PoolTimeout.
    assert counts["timed out"] <= running.timeouts <= counts["timed out"] + counts["cancelled"]
    assert running.broken >= counts["broken"]  # and the failed resets
    assert final.size == 0
    assert final.created == final.destroyed == len(storm.made)
    assert [t for t in storm.made if t.destroyed != 1] == []
    assert storm.alive == 0
