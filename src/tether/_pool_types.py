"""The value types a pool hands out about itself: statistics and holders.

Both are frozen snapshots taken at one instant; nothing in them changes afterwards.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Generic, TypeVar, final

__all__ = ["DurationSummary", "Holder", "PoolStats"]

R_co = TypeVar("R_co", covariant=True)


@final
@dataclass(frozen=True, slots=True)
class DurationSummary:
    """A summary of durations, in seconds.

    ``count`` covers every duration since the pool was created. ``mean``, ``p50``, ``p99``
    and ``max`` are taken from the most recent ones (a window of a few thousand), so they
    describe how the pool behaves now rather than since it started.
    """

    count: int
    mean: float
    p50: float
    p99: float
    max: float

    @classmethod
    def of(cls, window: Iterable[float], *, count: int, zeros: int = 0) -> DurationSummary:
        """Summarise ``count`` durations.

        Args:
            window: the most recent non-zero durations, a sample of all of them.
            count: how many durations there were in all.
            zeros: how many of them were zero (and not recorded in ``window``).
        """
        samples = sorted(window)
        if count <= 0 or not samples:
            return cls(count=max(count, 0), mean=0.0, p50=0.0, p99=0.0, max=0.0)
        nonzero_share = (count - zeros) / count
        return cls(
            count=count,
            mean=sum(samples) / len(samples) * nonzero_share,
            p50=_percentile(samples, zeros, count, 0.50),
            p99=_percentile(samples, zeros, count, 0.99),
            max=samples[-1],
        )


def _percentile(nonzero: list[float], zeros: int, count: int, q: float) -> float:
    """Nearest-rank percentile of ``zeros`` zeros and ``count - zeros`` non-zero values,
    of which ``nonzero`` (sorted) is a representative sample."""
    rank = max(1, math.ceil(q * count))
    if rank <= zeros:
        return 0.0
    share = (rank - zeros) / (count - zeros)
    return nonzero[max(0, math.ceil(share * len(nonzero)) - 1)]


@final
@dataclass(frozen=True, slots=True)
class Holder(Generic[R_co]):
    """Who holds a pool's resource right now.

    Attributes:
        resource: the resource itself.
        held_for: seconds since it was handed out.
        site: ``"file:line"`` of the acquiring call in the user's code.
        owner: the name of the task or thread that acquired it.
        leaked: whether it has been held longer than the pool's ``leak_timeout``.
    """

    resource: R_co
    held_for: float
    site: str
    owner: str
    leaked: bool = False

    def __str__(self) -> str:
        return f"{self.owner} for {self.held_for:.3f}s, acquired at {self.site}"


@final
@dataclass(frozen=True, slots=True)
class PoolStats:
    """A snapshot of a pool's state and counters.

    Attributes:
        name: the pool's name.
        size: resources in existence (idle + in use + being created or destroyed).
        idle: resources ready to be handed out.
        in_use: resources handed out (including those being checked or reset).
        waiting: callers queued for a resource.
        min_size: the configured minimum size.
        max_size: the configured maximum size.
        acquired: resources handed out since the pool was created.
        created: resources created.
        destroyed: resources destroyed.
        timeouts: acquires that gave up at ``acquire_timeout``.
        create_errors: failed creations.
        check_failures: resources that failed their ``check`` (and were replaced).
        broken: resources returned as broken (``put(broken=True)`` or ``is_broken``).
        wait: how long acquires waited for a resource.
        hold: how long resources were held.
        last_create_error: ``repr`` of the last creation error, if there was one.
    """

    name: str
    size: int
    idle: int
    in_use: int
    waiting: int
    min_size: int
    max_size: int
    acquired: int
    created: int
    destroyed: int
    timeouts: int
    create_errors: int
    check_failures: int
    broken: int
    wait: DurationSummary
    hold: DurationSummary
    last_create_error: str | None
