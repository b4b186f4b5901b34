"""What the two pool shells share: options, reporting, fork safety, diagnostics.

:class:`PoolShell` holds a :class:`~tether._pool_core.PoolCore` and everything about a pool
that involves neither locking nor awaiting: validating the options, naming the pool,
statistics and holders, leak reports, and forgetting inherited resources after ``fork()``.
:class:`tether.Pool` and :class:`tether.AsyncPool` add the I/O.
"""

from __future__ import annotations

import itertools
import logging
import math
import os
import random
import time
import warnings
import weakref
from typing import Final, Generic, TypeVar

from ._pool_core import CLOSED, CLOSING, OPEN, PoolConfig, PoolCore, Slot, non_negative, owner_name
from ._pool_types import Holder, PoolStats
from ._sites import code_site, user_site

__all__ = ["DEFAULT", "PoolShell", "logger"]

R = TypeVar("R")

logger: Final = logging.getLogger("tether.pool")
"""Where pools report leaks, failed destructions and closes that left resources held."""

DEFAULT: Final = float("nan")
"""Marks "use the pool's ``acquire_timeout``" in per-call ``timeout`` arguments."""

_numbers = itertools.count(1)
_live_pools: weakref.WeakSet[PoolShell[object]] = weakref.WeakSet()


def _forget_inherited_resources() -> None:
    """In a child process after ``fork()``: no pool may reuse its parent's resources."""
    for pool in list(_live_pools):
        pool._after_fork()


if hasattr(os, "register_at_fork"):  # pragma: no branch - POSIX
    os.register_at_fork(after_in_child=_forget_inherited_resources)


class PoolShell(Generic[R]):
    """The parts of a pool shell that neither lock nor await."""

    _core: PoolCore[R]

    def __init__(
        self,
        create: object,
        *,
        destroy: object,
        check: object,
        reset: object,
        is_broken: object,
        min_size: int,
        max_size: int,
        acquire_timeout: float | None,
        max_lifetime: float | None,
        max_idle: float | None,
        max_uses: int | None,
        check_after: float,
        leak_timeout: float | None,
        name: str | None,
        retry_delay: tuple[float, float],
    ) -> None:
        for parameter, value in (
            ("create", create),
            ("destroy", destroy),
            ("check", check),
            ("reset", reset),
            ("is_broken", is_broken),
        ):
            if value is not None and not callable(value):
                raise TypeError(f"{parameter} must be callable, got {value!r}")
        if create is None:
            raise TypeError("create must be callable, got None")
        if name is None:
            label = getattr(create, "__qualname__", None) or type(create).__name__
            name = f"{label}#{next(_numbers)}"
        config = PoolConfig(
            name=name,
            min_size=min_size,
            max_size=max_size,
            max_lifetime=max_lifetime,
            max_idle=max_idle,
            max_uses=max_uses,
            check_after=check_after,
            leak_timeout=leak_timeout,
            has_check=check is not None,
            retry_delay=retry_delay,
        )
        self._acquire_timeout = (
            None if acquire_timeout is None else non_negative("acquire_timeout", acquire_timeout)
        )
        self._wait_span = math.inf if self._acquire_timeout is None else self._acquire_timeout
        """``acquire_timeout`` as a span to add to the time (``inf``: no deadline)."""
        self._core = PoolCore(config, jitter=random.random)
        periods = [
            p for p in (config.leak_timeout, config.max_idle, config.max_lifetime) if p is not None
        ]
        self._tick = min(periods) / 2 if periods else float("inf")
        """The longest the housekeeper sleeps: deadlines of resources acquired or returned
        after it fell asleep are at least this far away."""
        self._pid = os.getpid()
        _live_pools.add(self)  # type: ignore[arg-type]
        self._created_at = user_site(2)

    def __del__(self) -> None:
        core = getattr(self, "_core", None)
        if core is not None and core.state is OPEN:
            warnings.warn(
                f"pool {self.name!r} created at {self._created_at} was never closed",
                ResourceWarning,
                source=self,
                stacklevel=2,
            )
            self._abandoned()

    def _abandoned(self) -> None:
        """The pool is being collected while open: stop what would outlive it."""

    # ------------------------------------------------------------------ reporting

    @property
    def name(self) -> str:
        """The pool's name, used in every message about it."""
        return self._core.config.name

    @property
    def closed(self) -> bool:
        """Whether the pool has been closed (it hands nothing out any more)."""
        return self._core.state in (CLOSING, CLOSED)

    def stats(self) -> PoolStats:
        """A frozen snapshot of the pool's state and counters."""
        return self._core.stats()

    def holders(self) -> list[Holder[R]]:
        """Who holds the pool's resources right now, longest-held first.

        Each :class:`~tether.Holder` gives the resource, how long it has been held, where it
        was acquired (``file:line`` in your code) and by which task or thread.
        """
        return self._core.holders(time.monotonic())

    def __repr__(self) -> str:
        core = self._core
        return (
            f"<{type(self).__name__} {self.name!r} {core.state.value} size={core.size}/"
            f"{core.config.max_size} in_use={core.held_count} idle={core.idle_count} "
            f"waiting={core.waiting_count}>"
        )

    def _report_leaks(self, leaked: list[Slot[R]], now: float) -> None:
        timeout = self._core.config.leak_timeout
        for slot in leaked:
            logger.warning(
                "pool %r: %r held for %.1fs (leak_timeout %.1fs) by %s, acquired at %s",
                self.name,
                slot.resource,
                now - slot.acquired_at,
                timeout,
                owner_name(slot.owner),
                code_site(slot.site_code, slot.site_offset),
            )

    def _report_destroy_error(self, resource: object, error: BaseException) -> None:
        logger.warning(
            "pool %r: destroying %r failed: %r", self.name, resource, error, exc_info=error
        )

    def _report_held_at_close(self) -> None:
        holders = self.holders()
        if holders:
            logger.warning(
                "pool %r closed while %d resource(s) were still held; each is destroyed "
                "when returned:\n%s",
                self.name,
                len(holders),
                "\n".join(f"  {h}" for h in holders),
            )

    def _span(self, timeout: float | None) -> float:
        """A per-call ``timeout`` as a span to add to the time (``inf``: no deadline)."""
        resolved = self._resolve_timeout(timeout)
        return math.inf if resolved is None else resolved

    def _resolve_timeout(self, timeout: float | None) -> float | None:
        if timeout is None:
            return None
        if math.isnan(timeout):  # DEFAULT: the pool's own
            return self._acquire_timeout
        return non_negative("timeout", timeout)

    def _after_fork(self) -> None:
        if os.getpid() != self._pid:
            self._pid = os.getpid()
            self._core.forget_all()
            self._forget_shell_state()

    def _forget_shell_state(self) -> None:
        """Shell-specific state to drop in a forked child (locks, tasks)."""
