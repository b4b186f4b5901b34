"""Scope against contextlib.ExitStack: entering and leaving trivial context managers.

Both run side by side in one process, interleaved repeat by repeat, so that the machine's
noise hits them alike. Each measurement creates the stack, enters ``n`` trivial context
managers into it and leaves it; the figure is the median over the repeats of the time per
measurement. The claim checked: ``Scope`` costs at most 1.5 times what ``ExitStack`` costs,
for 1, 10 and 100 context managers.

Run: ``python benchmarks/bench_scope.py [--repeats N]``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from contextlib import ExitStack
from types import TracebackType
from typing import Self

from tether import Scope

TARGET_RATIO = 1.5
SIZES = (1, 10, 100)


class Trivial:
    """The cheapest possible context manager, so that the stacks' own cost shows."""

    __slots__ = ()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        return None


def run_exit_stack(managers: list[Trivial]) -> None:
    with ExitStack() as stack:
        for cm in managers:
            stack.enter_context(cm)


def run_scope(managers: list[Trivial]) -> None:
    with Scope() as scope:
        for cm in managers:
            scope.enter(cm)


def time_per_call(
    fn: Callable[[list[Trivial]], None], managers: list[Trivial], loops: int
) -> float:
    """Nanoseconds per call of ``fn(managers)``, averaged over ``loops`` calls."""
    start = time.perf_counter_ns()
    for _ in range(loops):
        fn(managers)
    return (time.perf_counter_ns() - start) / loops


def measure(size: int, repeats: int) -> tuple[float, float]:
    """Median nanoseconds per run for ExitStack and Scope with ``size`` managers."""
    managers = [Trivial() for _ in range(size)]
    loops = max(20, 20_000 // size)
    exit_stack: list[float] = []
    scope: list[float] = []
    time_per_call(run_exit_stack, managers, loops)  # warm up
    time_per_call(run_scope, managers, loops)
    for _ in range(repeats):
        exit_stack.append(time_per_call(run_exit_stack, managers, loops))
        scope.append(time_per_call(run_scope, managers, loops))
    return statistics.median(exit_stack), statistics.median(scope)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=15, help="measurements per size")
    args = parser.parse_args(argv)
    print(f"Python {sys.version.split()[0]}, median of {args.repeats} repeats")
    print(f"{'managers':>8}  {'ExitStack':>12}  {'Scope':>12}  {'ratio':>6}  target")
    worst = 0.0
    for size in SIZES:
        exit_stack, scope = measure(size, args.repeats)
        ratio = scope / exit_stack
        worst = max(worst, ratio)
        verdict = "ok" if ratio <= TARGET_RATIO else "MISSED"
        print(
            f"{size:>8}  {exit_stack / 1000:>9.2f} us  {scope / 1000:>9.2f} us  "
            f"{ratio:>6.2f}  <= {TARGET_RATIO} {verdict}"
        )
    print(f"worst ratio Scope / ExitStack: {worst:.2f}")
    return 0 if worst <= TARGET_RATIO else 1


if __name__ == "__main__":
    raise SystemExit(main())
