"""How much ``tether.accumulate`` costs per chunk, next to a bare loop over the same source.

One run measures, side by side and interleaved, 1,000,000 eight-character ``str`` chunks:

* sync: ``for c in gen: pass`` against ``for c in accumulate(gen): pass`` then ``.content``;
* async: ``async for c in agen: pass`` against the same with ``accumulate``.

Each figure is the median of several repeats; the claims are the ratios
(sync at most 3.0x, async at most 2.5x). ``--check`` exits non-zero when a ratio is over budget.

    python benchmarks/bench_stream.py [--chunks N] [--repeats R] [--check]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import statistics
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator

import tether

CHUNK = "abcdefgh"
SYNC_BUDGET = 3.0
ASYNC_BUDGET = 2.5


def chunks(count: int) -> Iterator[str]:
    for _ in range(count):
        yield CHUNK


async def achunks(count: int) -> AsyncIterator[str]:
    for _ in range(count):
        yield CHUNK


def sync_raw(count: int) -> float:
    source = chunks(count)
    started = time.perf_counter()
    for _chunk in source:
        pass
    return time.perf_counter() - started


def sync_accumulate(count: int) -> float:
    source = chunks(count)
    started = time.perf_counter()
    stream = tether.accumulate(source)
    for _chunk in stream:
        pass
    content = stream.content
    elapsed = time.perf_counter() - started
    assert len(content) == count * len(CHUNK)
    return elapsed


async def async_raw(count: int) -> float:
    source = achunks(count)
    started = time.perf_counter()
    async for _chunk in source:
        pass
    return time.perf_counter() - started


async def async_accumulate(count: int) -> float:
    source = achunks(count)
    started = time.perf_counter()
    stream = tether.accumulate(source)
    async for _chunk in stream:
        pass
    content = stream.content
    elapsed = time.perf_counter() - started
    assert len(content) == count * len(CHUNK)
    return elapsed


def measure(run: Callable[[], float]) -> float:
    gc.collect()
    return run()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--chunks", type=int, default=1_000_000)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--check", action="store_true", help="fail when over budget")
    args = parser.parse_args(argv)
    count: int = args.chunks

    times: dict[str, list[float]] = {name: [] for name in ("sync", "sync+", "async", "async+")}
    for _ in range(args.repeats):
        # Interleaved, so that a noisy neighbour hits both sides alike.
        times["sync"].append(measure(lambda: sync_raw(count)))
        times["sync+"].append(measure(lambda: sync_accumulate(count)))
        times["async"].append(measure(lambda: asyncio.run(async_raw(count))))
        times["async+"].append(measure(lambda: asyncio.run(async_accumulate(count))))
    median = {name: statistics.median(values) for name, values in times.items()}
    sync_ratio = median["sync+"] / median["sync"]
    async_ratio = median["async+"] / median["async"]

    print(f"{count:,} chunks of {len(CHUNK)} characters, median of {args.repeats} runs")
    print(f"  sync   bare for        {median['sync'] * 1e3:8.1f} ms")
    print(
        f"  sync   accumulate      {median['sync+'] * 1e3:8.1f} ms   "
        f"{sync_ratio:.2f}x  (budget {SYNC_BUDGET}x)"
    )
    print(f"  async  bare async for  {median['async'] * 1e3:8.1f} ms")
    print(
        f"  async  accumulate      {median['async+'] * 1e3:8.1f} ms   "
        f"{async_ratio:.2f}x  (budget {ASYNC_BUDGET}x)"
    )
    over = sync_ratio > SYNC_BUDGET or async_ratio > ASYNC_BUDGET
    if args.check and over:
        print("over budget", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
