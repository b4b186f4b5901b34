"""tether's pools against the simplest pools that could work, side by side in one run.

The floors are written here, as small as a pool can be while still being correct for the
measured use:

* asyncio: a deque of idle items, a deque of waiter futures, and a class-based
  ``async with`` (no timeouts, no statistics, no diagnostics);
* threads: a ``Lock`` + ``Condition`` + deque.

The resource is a bare ``object()``, so only pool overhead is measured. tether and its
floor run in pairs, one right after the other and each first in every other pair, so that
the machine's noise hits both alike; each figure is a median over the pairs, and each
ratio the median of the per-pair ratios (with their range). Claims checked:

* ``async with pool.acquire()`` uncontended: at most 2x the asyncio floor;
* ``with pool.acquire()`` (threads) uncontended: at most 2x the threading floor;
* contended, 200 tasks on a pool of 10, each acquire -> ``await asyncio.sleep(0)`` ->
  release: throughput at least 0.8x the floor's, and p99 acquire wait at most 2x p50
  (waiters are served fairly).

Run: ``python benchmarks/bench_pool.py [--repeats N] [--check]``.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import threading
import time
from collections import deque
from collections.abc import Awaitable, Callable
from types import TracebackType
from typing import Generic, TypeVar

import tether

T = TypeVar("T")

UNCONTENDED_TARGET = 2.0
CONTENDED_TARGET = 0.8
FAIRNESS_TARGET = 2.0
WARM_UP_ROUNDS = 5
"""Waits of each task's first rounds are not counted: they are the queue filling up (the
first task waits for nobody, the 200th for 19 rounds of the others), not fairness."""


class FloorAsyncPool(Generic[T]):
    """The least an asyncio pool can do: idle deque, FIFO waiter futures."""

    def __init__(self, items: list[T]) -> None:
        self.idle: deque[T] = deque(items)
        self.waiters: deque[asyncio.Future[T]] = deque()

    def acquire(self) -> _FloorAcquire[T]:
        return _FloorAcquire(self)

    def release(self, item: T) -> None:
        while self.waiters:
            waiter = self.waiters.popleft()
            if not waiter.done():
                waiter.set_result(item)
                return
        self.idle.append(item)


class _FloorAcquire(Generic[T]):
    __slots__ = ("item", "pool")

    def __init__(self, pool: FloorAsyncPool[T]) -> None:
        self.pool = pool

    async def __aenter__(self) -> T:
        pool = self.pool
        if pool.idle and not pool.waiters:
            self.item = pool.idle.pop()
        else:
            waiter: asyncio.Future[T] = asyncio.get_running_loop().create_future()
            pool.waiters.append(waiter)
            self.item = await waiter
        return self.item

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.pool.release(self.item)


class FloorThreadPool(Generic[T]):
    """The least a thread-safe pool can do: Lock + Condition + deque."""

    def __init__(self, items: list[T]) -> None:
        self.idle: deque[T] = deque(items)
        self.lock = threading.Lock()
        self.available = threading.Condition(self.lock)

    def acquire(self) -> _FloorThreadAcquire[T]:
        return _FloorThreadAcquire(self)


class _FloorThreadAcquire(Generic[T]):
    __slots__ = ("item", "pool")

    def __init__(self, pool: FloorThreadPool[T]) -> None:
        self.pool = pool

    def __enter__(self) -> T:
        pool = self.pool
        with pool.lock:
            while not pool.idle:
                pool.available.wait()
            self.item = pool.idle.pop()
        return self.item

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        pool = self.pool
        with pool.lock:
            pool.idle.append(self.item)
            pool.available.notify()


# ---------------------------------------------------------------------- uncontended


async def _async_cycles(pool: FloorAsyncPool[object] | tether.AsyncPool[object], n: int) -> float:
    start = time.perf_counter()
    for _ in range(n):
        async with pool.acquire():
            pass
    return (time.perf_counter() - start) / n


def _thread_cycles(pool: FloorThreadPool[object] | tether.Pool[object], n: int) -> float:
    start = time.perf_counter()
    for _ in range(n):
        with pool.acquire():
            pass
    return (time.perf_counter() - start) / n


class Pairs:
    """Figures of the floor and of tether, measured in pairs: each repeat runs both, one
    right after the other, the floor first in even repeats and tether first in odd ones,
    so that neither always runs on a machine warmed (or disturbed) by the other."""

    def __init__(self) -> None:
        self.floor: list[float] = []
        self.tether: list[float] = []

    def add(self, floor: float, ours: float) -> None:
        self.floor.append(floor)
        self.tether.append(ours)

    def measure(self, repeat: int, floor: Callable[[], float], ours: Callable[[], float]) -> None:
        """Run one pair: the floor first in even repeats, tether first in odd ones."""
        if repeat % 2:
            ours_figure = ours()
            self.add(floor(), ours_figure)
        else:
            floor_figure = floor()
            self.add(floor_figure, ours())

    async def measure_async(
        self,
        repeat: int,
        floor: Callable[[], Awaitable[float]],
        ours: Callable[[], Awaitable[float]],
    ) -> None:
        """:meth:`measure`, for figures that are awaited."""
        if repeat % 2:
            ours_figure = await ours()
            self.add(await floor(), ours_figure)
        else:
            floor_figure = await floor()
            self.add(floor_figure, await ours())

    def medians(self) -> tuple[float, float]:
        return statistics.median(self.floor), statistics.median(self.tether)

    def ratio(self) -> tuple[float, float, float]:
        """tether's figure over the floor's, repeat by repeat (drift between repeats cancels
        out): the median, lowest and highest."""
        ratios = [ours / floor for floor, ours in zip(self.floor, self.tether, strict=True)]
        return statistics.median(ratios), min(ratios), max(ratios)


async def uncontended_async(repeats: int, cycles: int) -> Pairs:
    """Seconds per cycle, floor and tether."""
    floor = FloorAsyncPool([object()])
    pairs = Pairs()
    async with tether.AsyncPool(object, min_size=1, max_size=1) as pool:
        await _async_cycles(floor, cycles)
        await _async_cycles(pool, cycles)
        for repeat in range(repeats):
            await pairs.measure_async(
                repeat, lambda: _async_cycles(floor, cycles), lambda: _async_cycles(pool, cycles)
            )
    return pairs


def uncontended_threads(repeats: int, cycles: int) -> Pairs:
    """Seconds per cycle, floor and tether."""
    floor = FloorThreadPool([object()])
    pairs = Pairs()
    with tether.Pool(object, min_size=1, max_size=1) as pool:
        _thread_cycles(floor, cycles)
        _thread_cycles(pool, cycles)
        for repeat in range(repeats):
            pairs.measure(
                repeat, lambda: _thread_cycles(floor, cycles), lambda: _thread_cycles(pool, cycles)
            )
    return pairs


# ---------------------------------------------------------------------- contended


async def _contended(
    acquire: Callable[[], object], tasks: int, rounds: int, waits: list[float] | None
) -> float:
    """Run ``tasks`` tasks, each ``rounds`` x (acquire -> sleep(0) -> release); ops/s."""

    async def worker() -> None:
        for round_number in range(rounds):
            if waits is None:
                async with acquire():  # type: ignore[attr-defined]
                    await asyncio.sleep(0)
            else:
                asked = time.perf_counter()
                async with acquire():  # type: ignore[attr-defined]
                    if round_number >= WARM_UP_ROUNDS:
                        waits.append(time.perf_counter() - asked)
                    await asyncio.sleep(0)

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(tasks)))
    return tasks * rounds / (time.perf_counter() - start)


def _p50_p99(waits: list[float]) -> tuple[float, float]:
    waits.sort()
    return waits[len(waits) // 2], waits[int(len(waits) * 0.99)]


async def contended(
    repeats: int, tasks: int, size: int, rounds: int
) -> tuple[Pairs, tuple[float, float], tuple[float, float]]:
    """Floor and tether ops/s, then their (p50, p99) acquire waits."""
    floor = FloorAsyncPool([object() for _ in range(size)])
    pairs = Pairs()
    async with tether.AsyncPool(object, min_size=size, max_size=size) as pool:
        for repeat in range(repeats):
            await pairs.measure_async(
                repeat,
                lambda: _contended(floor.acquire, tasks, rounds, None),
                lambda: _contended(pool.acquire, tasks, rounds, None),
            )
        floor_waits: list[float] = []
        await _contended(floor.acquire, tasks, rounds, floor_waits)
        waits: list[float] = []
        await _contended(pool.acquire, tasks, rounds, waits)
    return pairs, _p50_p99(floor_waits), _p50_p99(waits)


# ---------------------------------------------------------------------- report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--cycles", type=int, default=50_000)
    parser.add_argument("--check", action="store_true", help="exit 1 if a claim fails")
    args = parser.parse_args(argv)

    results: list[tuple[str, str, str, str, bool]] = []

    def run(coro: Awaitable[T]) -> T:
        return asyncio.run(coro)  # type: ignore[arg-type]

    for name, pairs in (
        (
            "async with pool.acquire(), uncontended",
            run(uncontended_async(args.repeats, args.cycles)),
        ),
        (
            "with pool.acquire() (threads), uncontended",
            uncontended_threads(args.repeats, args.cycles),
        ),
    ):
        floor, ours = pairs.medians()
        ratio, low, high = pairs.ratio()
        results.append(
            (
                name,
                f"{floor * 1e6:.3f} us",
                f"{ours * 1e6:.3f} us",
                f"{ratio:.2f}x ({low:.2f}-{high:.2f}) (<= {UNCONTENDED_TARGET}x)",
                ratio <= UNCONTENDED_TARGET,
            )
        )
    pairs, (floor_p50, floor_p99), (p50, p99) = run(
        contended(args.repeats, tasks=200, size=10, rounds=100)
    )
    floor_rate, our_rate = pairs.medians()
    ratio, low, high = pairs.ratio()
    results.append(
        (
            "200 tasks on 10, acquire -> sleep(0) -> release",
            f"{floor_rate:,.0f} ops/s",
            f"{our_rate:,.0f} ops/s",
            f"{ratio:.2f}x ({low:.2f}-{high:.2f}) (>= {CONTENDED_TARGET}x)",
            ratio >= CONTENDED_TARGET,
        )
    )
    fairness = p99 / p50
    results.append(
        (
            "  acquire wait p50 / p99 (fairness)",
            f"{floor_p50 * 1e3:.2f} / {floor_p99 * 1e3:.2f} ms",
            f"{p50 * 1e3:.2f} / {p99 * 1e3:.2f} ms",
            f"p99/p50 {fairness:.2f} (<= {FAIRNESS_TARGET})",
            fairness <= FAIRNESS_TARGET,
        )
    )

    print(f"{'benchmark':<50} {'floor':>14} {'tether':>20}  ratio")
    for name, floor_text, our_text, ratio_text, ok in results:
        mark = "" if ok else "  <-- over budget"
        print(f"{name:<50} {floor_text:>14} {our_text:>20}  {ratio_text}{mark}")
    failed = [name for name, *_, ok in results if not ok]
    return 1 if args.check and failed else 0


if __name__ == "__main__":
    sys.exit(main())
