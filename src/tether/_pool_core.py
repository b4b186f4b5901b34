"""The pool's brain: every decision a pool makes, with no locks, no awaits and no clock.

Theory of operation
===================

A pool is a bookkeeping problem wrapped in I/O. This module is the bookkeeping; the
shells (:class:`tether.Pool` on threads, :class:`tether.AsyncPool` on an event loop) are the
I/O. The shells hold a lock or run on one event loop, call a :class:`PoolCore` method with
the current time, and carry out what it decided: signal the waiters it woke, create or
destroy the resources it named. They decide nothing themselves. Because the core never
blocks, never reads a clock and never calls user code, it can be driven step by step by a
property-based test with a fake clock.

Slots and leases
----------------
Every resource lives in a :class:`Slot` from creation to destruction: ``LIVE`` (idle or
held), then ``DOOMED`` (picked for destruction; it still counts towards the pool's size
until the shell reports it destroyed, so the number of real resources never exceeds
``max_size``), then ``GONE``. Each hand-out and the end of each lease increment the slot's
``lease``, so a live slot is held exactly while its lease is odd, and the number of
hand-outs is counted by the leases themselves (the fast path counts nothing). A return
names the lease it ends, so a stale return (a second ``put()``, or a context manager
exiting after a manual ``put()``) is recognised and refused instead of ending someone
else's lease.

Size accounting::

    size = idle + held + creating + doomed  <=  max_size        (always)

Waiting
-------
Callers that find nothing idle and no room to create are queued in arrival order. A waiter
is woken with a *grant*: a slot (handed over directly by a release, no round trip through
the idle stack), a permit to create a resource itself (room appeared), or an error (the
pool closed, or it is failing to create resources). Nothing idle ever sits beside a live
waiter, so the fast path (take the most recently used idle slot) never barges ahead of
anyone.

Deadlines are the core's too: each waiter carries one, and :meth:`PoolCore.expire` times
out those past it (the shell arms one timer for the earliest). Waiters usually arrive in
deadline order (one ``acquire_timeout`` for all), so the queue itself is the deadline
order and costs nothing; the few that arrive out of order also go into a heap.

Short ways
----------
Most acquires find an idle resource and most returns put one back, so the core decides
those two cases ahead of time and publishes the answer as data: the slot on top of
:attr:`PoolCore.idle` may be handed out while ``now < slot.fresh_until``, and a healthy
return may go straight back onto the idle stack while :attr:`PoolCore.steady` holds, its
lease is current and ``now < slot.fast_until``. In a busy pool the same holds for the two
steps of every hand-off: a caller joins the line behind those already waiting, and a
healthy return with a current lease before ``fast_until`` goes straight to the longest
waiter while the pool is smooth (open, within ``max_size``, no ``max_uses`` to count).
:meth:`PoolCore.take`, :meth:`PoolCore.acquire` and :meth:`PoolCore.give_back` carry out
those answers and stay the reference. The async shell, whose whole fast path costs about
as much as five Python calls, writes these four short ways out in its context manager
instead of calling them: the same conditions, the same steps, nothing decided anew (tests
drive a pool and a bare core side by side, idle and busy, and compare every field).
Everything else goes through the methods.

Failing and recovering
----------------------
When a creation fails, the pool enters the *failing* state with the error and a retry
time (capped exponential backoff with jitter). Until then, callers that would need a new
resource fail fast with :class:`~tether.PoolUnavailable` (its ``__cause__`` is the real
error) instead of each waiting out ``acquire_timeout``. The first acquire after the retry
time tries a creation itself (one at a time), and the shells' background work retries on
the same schedule while ``min_size`` is not met. Any failure also marks an *outage*:
resources that were around before it are suspect and must pass ``check`` before being
handed out again (a pool without ``check`` cannot tell, and leaves them be).
"""

from __future__ import annotations

import dataclasses
import heapq
import math
from collections import deque
from collections.abc import Callable
from enum import Enum, IntEnum
from types import CodeType
from typing import Final, Generic, TypeVar, final

from ._exceptions import PoolClosed, PoolTimeout, PoolUnavailable
from ._pool_types import DurationSummary, Holder, PoolStats
from ._sites import code_site

__all__ = [
    "CREATE",
    "TIMED_OUT",
    "PoolConfig",
    "PoolCore",
    "PoolState",
    "Slot",
    "SlotState",
    "Waiter",
]

R = TypeVar("R")

INF: Final = math.inf
WINDOW: Final = 2048
"""How many recent waits and holds the percentiles in :class:`PoolStats` are taken from."""
_NOT_SUMMARISED: Final = DurationSummary(count=0, mean=0.0, p50=0.0, p99=0.0, max=0.0)
"""Stands in for the durations of a :class:`PoolStats` until they are summarised."""
HOLDERS_SHOWN: Final = 5
"""How many holders a :class:`PoolTimeout` message lists."""


class SlotState(IntEnum):
    """Whether a slot's resource exists. A live slot is held while its lease is odd."""

    LIVE = 0
    DOOMED = 1
    GONE = 2


class PoolState(Enum):
    """A pool's lifecycle: UNOPENED → OPEN → CLOSING → CLOSED."""

    UNOPENED = "unopened"
    OPEN = "open"
    CLOSING = "closing"
    CLOSED = "closed"


# Module-level aliases: reading an Enum member through its class costs as much as a
# whole fast-path hand-out.
LIVE: Final = SlotState.LIVE
DOOMED: Final = SlotState.DOOMED
GONE: Final = SlotState.GONE
UNOPENED: Final = PoolState.UNOPENED
OPEN: Final = PoolState.OPEN
CLOSING: Final = PoolState.CLOSING
CLOSED: Final = PoolState.CLOSED


class _Create:
    """A grant that permits its holder to create a resource (room has been reserved)."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "CREATE"


CREATE: Final = _Create()


@final
class _TimedOut(BaseException):
    """The grant of a waiter whose deadline passed, from ``expire(describe=False)``: the
    waiter builds its :class:`~tether.PoolTimeout` itself, outside the shell's lock. Never
    raised."""

    def __repr__(self) -> str:
        return "TIMED_OUT"


TIMED_OUT: Final = _TimedOut()


@final
class Slot(Generic[R]):
    """One resource and everything the pool knows about it."""

    __slots__ = (
        "acquired_at",
        "created_at",
        "expires_at",
        "fast_until",
        "fresh_until",
        "handle",
        "idle_since",
        "leak_lease",
        "lease",
        "must_check",
        "owner",
        "reclaimed",
        "resource",
        "site_code",
        "site_offset",
        "state",
        "trusted_since",
        "uses_left",
    )

    def __init__(self, resource: R, now: float, expires_at: float, uses_left: float) -> None:
        self.resource = resource
        self.state = LIVE
        self.lease = 0
        """Odd while held: each hand-out adds one, and so does the end of each lease."""
        self.created_at = now
        self.expires_at = expires_at
        self.uses_left = uses_left
        self.idle_since = now
        self.acquired_at = now
        self.fresh_until = expires_at
        """Until when the fast path may hand it out: before a check is due or it expires."""
        self.fast_until = expires_at
        """Until when a return may take the short way back (``-inf`` while suspect)."""
        self.trusted_since = now
        """Created, or last passed a check: an outage after this makes it suspect."""
        self.must_check = False
        """Handed out on the slow path, to be checked before use (see :meth:`needs_check`)."""
        self.owner: object = None
        self.site_code: CodeType | None = None
        self.site_offset = 0
        self.leak_lease = -1
        """The lease under which it was reported as leaked (each lease is reported once)."""
        self.reclaimed = False
        """Destroyed by a close that timed out while still held: its holder's eventual
        return is accepted silently, once."""
        self.handle: object = None
        """The shell's own (the core never reads it): the async shell keeps here an
        awaitable that is already done, with the resource as its result."""

    @property
    def held(self) -> bool:
        """Whether the resource is handed out right now."""
        return self.state is LIVE and self.lease & 1 == 1

    def __repr__(self) -> str:
        status = "held" if self.held else self.state.name.lower() if self.state else "idle"
        return f"<Slot {status} lease={self.lease} {self.resource!r}>"


class Waiter(Generic[R]):
    """A caller asking for a resource, with the shell's means of waking it in ``handle``.

    ``since`` is when the caller started asking (its wait is measured from there);
    ``deadline`` is when the core gives up on it with a :class:`~tether.PoolTimeout`
    (``inf``: never; a shell that times waiters out by itself leaves it at ``inf``).
    A shell may subclass it to save an allocation, as long as it sets every field
    before handing it to the core.
    """

    __slots__ = (
        "cancelled",
        "deadline",
        "grant",
        "handle",
        "owner",
        "since",
        "site_code",
        "site_offset",
    )

    grant: Slot[R] | _Create | BaseException | None

    def __init__(
        self,
        handle: object,
        owner: object,
        site_code: CodeType | None,
        site_offset: int,
        since: float,
        *,
        deadline: float = INF,
    ) -> None:
        self.handle = handle
        self.owner = owner
        self.site_code = site_code
        self.site_offset = site_offset
        self.since = since
        self.deadline = deadline
        self.grant = None
        self.cancelled = False


@final
class PoolConfig:
    """Validated pool options (see :class:`tether.AsyncPool` for their meaning)."""

    __slots__ = (
        "check_after",
        "has_check",
        "leak_timeout",
        "max_idle",
        "max_lifetime",
        "max_size",
        "max_uses",
        "min_size",
        "name",
        "retry_delay",
    )

    def __init__(
        self,
        *,
        name: str,
        min_size: int,
        max_size: int,
        max_lifetime: float | None,
        max_idle: float | None,
        max_uses: int | None,
        check_after: float,
        leak_timeout: float | None,
        has_check: bool,
        retry_delay: tuple[float, float],
    ) -> None:
        if not isinstance(name, str):
            raise TypeError(f"name must be a str, not {type(name).__name__}")
        check_size(min_size, max_size)
        self.name = name
        self.min_size = min_size
        self.max_size = max_size
        self.max_lifetime = _positive_or_none("max_lifetime", max_lifetime)
        self.max_idle = _positive_or_none("max_idle", max_idle)
        if max_uses is not None and (not _is_int(max_uses) or max_uses < 1):
            raise ValueError(f"max_uses must be a positive int or None, got {max_uses!r}")
        self.max_uses = max_uses
        self.check_after = non_negative("check_after", check_after)
        self.leak_timeout = _positive_or_none("leak_timeout", leak_timeout)
        self.has_check = has_check
        if not (
            isinstance(retry_delay, tuple)
            and len(retry_delay) == 2
            and 0 < non_negative("retry_delay", retry_delay[0]) <= retry_delay[1] < INF
        ):
            raise ValueError(
                f"retry_delay must be (first, cap) with 0 < first <= cap, got {retry_delay!r}"
            )
        self.retry_delay = retry_delay


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def check_size(min_size: int, max_size: int) -> None:
    if not _is_int(max_size):
        raise TypeError(f"max_size must be an int, not {type(max_size).__name__}")
    if not _is_int(min_size):
        raise TypeError(f"min_size must be an int, not {type(min_size).__name__}")
    if max_size < 1:
        raise ValueError(f"max_size must be at least 1, got {max_size}")
    if min_size < 0:
        raise ValueError(f"min_size must not be negative, got {min_size}")
    if min_size > max_size:
        raise ValueError(f"min_size ({min_size}) must not exceed max_size ({max_size})")


def non_negative(parameter: str, value: float) -> float:
    """Return ``value`` as a float, or raise naming ``parameter`` if it is not a number >= 0."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{parameter} must be a number of seconds, not {type(value).__name__}")
    if not value >= 0:  # also rejects NaN
        raise ValueError(f"{parameter} must not be negative, got {value!r}")
    return float(value)


def timeout_or_none(parameter: str, value: float | None) -> float | None:
    """Validate an optional timeout: ``None`` (no limit) or a number >= 0."""
    return None if value is None else non_negative(parameter, value)


def _positive_or_none(parameter: str, value: float | None) -> float | None:
    if value is None:
        return None
    if non_negative(parameter, value) == 0:
        raise ValueError(f"{parameter} must be positive or None, got {value!r}")
    return float(value)


def owner_name(owner: object) -> str:
    """The human name of a task or thread."""
    get_name = getattr(owner, "get_name", None)
    if get_name is not None:
        return str(get_name())
    name = getattr(owner, "name", None)
    return str(name) if name is not None else repr(owner)


def _in_line(waiter: Waiter[R]) -> bool:
    """Whether ``waiter`` still waits: neither given up nor granted anything."""
    return not waiter.cancelled and waiter.grant is None


@final
class PoolCore(Generic[R]):
    """Pure pool bookkeeping; see the module docstring for the theory of operation.

    Every method takes ``now`` (seconds on a monotonic clock) where time matters. Methods
    that wake waiters append them to :attr:`woken`; methods that retire resources append
    their slots to :attr:`doomed`. The shell drains both after each call: it signals each
    woken waiter and destroys each doomed resource, then reports back with
    :meth:`destroyed`.
    """

    def __init__(self, config: PoolConfig, *, jitter: Callable[[], float]) -> None:
        self.config = config
        self._jitter = jitter
        self.state = UNOPENED
        self._smooth = False
        """Open, not above ``max_size`` and no ``max_uses``: a healthy return may go
        straight to the longest waiter."""
        self.steady = False
        """Smooth, and nobody waiting: a healthy return may go straight back onto the
        idle stack (see "Short ways")."""
        self.woken: list[Waiter[R]] = []
        self.doomed: list[Slot[R]] = []
        self.idle: deque[Slot[R]] = deque()
        """The idle stack, most recently returned on the right. Shells look at it to see
        whether :meth:`take` can succeed; the async shell also carries out the short ways
        on it (see "Short ways"), so it is always this one deque, changed in place."""
        self._slots: dict[int, Slot[R]] = {}
        """Every live or doomed slot, by ``id()`` of its resource."""
        self._waiters: deque[Waiter[R]] = deque()
        self._waiting = 0
        # Waiters' deadlines. Those that arrive in deadline order (the usual case: one
        # acquire_timeout for all) need no bookkeeping: the queue itself is in that
        # order, so its head is both the next to be served and the next to expire. The
        # others (a shorter timeout than someone ahead in line) also go into a heap.
        self._last_deadline = -INF
        self._early: list[tuple[float, int, Waiter[R]]] = []
        self._early_ids: set[int] = set()
        self._creating = 0
        self._doomed_count = 0
        self._has_check = config.has_check
        self.check_after = config.check_after if config.has_check else INF
        """Idle seconds after which a resource must be checked (``inf``: never)."""
        # failing and recovering
        self.last_error: BaseException | None = None
        self._failing = False
        self._failures = 0
        self._retry_at = -INF
        self._probing = False
        self._outage_at = -INF
        # counters; hand-outs are counted by the slots' leases, so the fast path counts
        # nothing: acquired = hand-outs of gone slots + of live ones - those taken back.
        self._gone_handouts = 0
        self._inherited: dict[int, Slot[R]] = {}
        """Ids of the resources held across a fork, in the child: each may still be
        given back there with ``put()``, once, and is then let alone."""
        self._unhanded = 0
        self.created_count = 0
        self.destroyed_count = 0
        self.timeouts = 0
        self.create_errors = 0
        self.check_failures = 0
        self.broken = 0
        # Fast-path hand-outs waited 0s and are not recorded; the slow path's waits are.
        self._waits: deque[float] = deque(maxlen=WINDOW)
        self._slow = 0
        """Hand-outs on the slow path (those whose wait is recorded)."""
        self.holds: deque[float] = deque(maxlen=WINDOW)
        """The most recent hold durations (every return appends one)."""

    # ------------------------------------------------------------------ counts

    @property
    def size(self) -> int:
        """Resources in existence: idle + held + being created + being destroyed."""
        return len(self._slots) + self._creating

    @property
    def idle_count(self) -> int:
        """Resources ready to hand out."""
        return len(self.idle)

    @property
    def held_count(self) -> int:
        """Resources handed out."""
        return len(self._slots) - len(self.idle) - self._doomed_count

    @property
    def waiting_count(self) -> int:
        """Callers queued for a resource."""
        return self._waiting

    @property
    def acquired(self) -> int:
        """Hand-outs so far (not counting those taken back unused)."""
        live = sum((slot.lease + 1) >> 1 for slot in self._slots.values())
        return self._gone_handouts + live - self._unhanded

    def slots(self) -> list[Slot[R]]:
        """Every live or doomed slot."""
        return list(self._slots.values())

    def slot_of(self, resource: object) -> Slot[R] | None:
        """The slot of a resource this pool created and has not finished destroying."""
        slot = self._slots.get(id(resource))
        return slot if slot is not None and slot.resource is resource else None

    def inherited(self, resource: object) -> bool:
        """Whether ``resource`` was held across a fork and is given back in the child now
        (true once: its return is accepted, and changes nothing)."""
        slot = self._inherited.get(id(resource))
        if slot is None or slot.resource is not resource:
            return False
        del self._inherited[id(resource)]
        return True

    # ------------------------------------------------------------------ lifecycle

    def open(self) -> None:
        """Start serving. Call :meth:`refill` afterwards to create ``min_size`` resources."""
        if self.state is not UNOPENED:
            raise PoolClosed(f"pool {self.config.name!r} is {self.state.value}; it opens once")
        self.state = OPEN
        self._restabilize()

    def close(self) -> None:
        """Stop serving: fail waiters, retire idle resources; held ones retire on return."""
        if self.state is CLOSING or self.state is CLOSED:
            return
        self.state = CLOSING if self.state is OPEN else CLOSED
        self.steady = self._smooth = False
        while (waiter := self._next_waiter()) is not None:
            self._wake(waiter, self._closed_error())
        self._early.clear()
        self._early_ids.clear()
        while self.idle:
            self._doom(self.idle.pop())
        self._maybe_closed()

    def reclaim_held(self) -> list[Slot[R]]:
        """After a close timed out: doom every resource still held, returning their slots.

        Their holders may still return them later; that is accepted silently, once.
        """
        reclaimed = [slot for slot in self._slots.values() if slot.held]
        for slot in reclaimed:
            slot.lease += 1
            slot.reclaimed = True
            self._doom(slot)
        return reclaimed

    def _maybe_closed(self) -> None:
        if self.state is CLOSING and self.size == 0:
            self.state = CLOSED

    def _closed_error(self) -> PoolClosed:
        if self.state is UNOPENED:
            return PoolClosed(
                f"pool {self.config.name!r} is not open yet: use `async with pool:` / "
                "`with pool:`, or call open() first"
            )
        return PoolClosed(f"pool {self.config.name!r} is closed")

    def forget_all(self) -> None:
        """After ``fork()``, in the child: drop every resource without destroying it.

        The parent process owns those resources (a socket shared with the parent must not
        be closed or reused by the child). The child starts over with an empty pool.
        """
        self._gone_handouts += sum((slot.lease + 1) >> 1 for slot in self._slots.values())
        for slot in self._slots.values():
            # One held across the fork may still be given back in the child: accepted
            # silently, once, and never reused (as after a close that timed out).
            if slot.held:
                slot.lease += 1
                slot.reclaimed = True
                self._inherited[id(slot.resource)] = slot
            slot.fast_until = slot.fresh_until = -INF
            slot.state = GONE
        self.idle.clear()
        self._slots.clear()
        self._waiters.clear()
        self._early.clear()
        self._early_ids.clear()
        self.woken.clear()
        self.doomed.clear()
        self._waiting = self._creating = self._doomed_count = 0
        self._probing = False
        self._maybe_closed()
        self._restabilize()

    def _restabilize(self) -> None:
        """Recompute whether returns may take a short way (to the idle stack, or to the
        longest waiter)."""
        self._smooth = (
            self.state is OPEN
            and self.size <= self.config.max_size
            and self.config.max_uses is None  # uses are counted on the long way only
        )
        self.steady = self._smooth and not self._waiting
        if not self._waiting:
            self._last_deadline = -INF

    # ------------------------------------------------------------------ acquire

    def take(self, now: float) -> Slot[R] | None:
        """The fast path: hand out the most recently returned idle resource, if it needs
        neither a check nor retiring. Otherwise ``None``: go through :meth:`acquire`.

        Never barges: nothing is idle while anyone waits.
        """
        idle = self.idle
        try:
            slot = idle[-1]
        except IndexError:  # nothing idle (shells look at `idle` first, so rarely here)
            return None
        if now < slot.fresh_until:
            # Off the top of the idle stack (the async shell writes these steps out).
            idle.pop()
            slot.lease += 1
            slot.acquired_at = now
            return slot
        return None

    def acquire(self, now: float, waiter: Waiter[R]) -> Slot[R] | _Create | BaseException | None:
        """The slow path: decide what ``waiter`` gets now.

        Returns:
            a :class:`Slot` handed out (if :meth:`needs_check` says so, the shell checks it
            and reports with :meth:`check_passed` / :meth:`check_failed`); :data:`CREATE`,
            a permit to create a resource (report with :meth:`created` or
            :meth:`create_failed`); an exception to raise (closed, or failing fast); or
            ``None``: ``waiter`` is queued, and will be woken with one of the above.
        """
        if self.state is not OPEN:
            return self._closed_error()
        if self._waiting or (not self.idle and self.size >= self.config.max_size):
            self._waiters.append(waiter)
            self._waiting += 1
            self.steady = False
            deadline = waiter.deadline
            if deadline < self._last_deadline:
                self._out_of_order(waiter)
            else:
                self._last_deadline = deadline
            return None
        return self._serve(waiter, now)

    def _out_of_order(self, waiter: Waiter[R]) -> None:
        """Track a waiter whose place in line says nothing about its deadline.

        One without a deadline too: back at the head of the line, it must not hide the
        deadlines of those behind it from :meth:`expire`.
        """
        heapq.heappush(self._early, (waiter.deadline, id(waiter), waiter))
        self._early_ids.add(id(waiter))
        self._tidy()  # those served since are left behind in the heap

    def _tidy(self) -> None:
        """Drop the waiters that left the line (cancelled, timed out or served) from the
        line and the early heap, once they outnumber the live ones: they are removed
        lazily, and callers that keep giving up must not pile up."""
        live = self._waiting
        if len(self._waiters) > 2 * live + 16:
            self._waiters = deque(w for w in self._waiters if _in_line(w))
        if len(self._early) > 2 * live + 16:
            self._early = [entry for entry in self._early if _in_line(entry[2])]
            heapq.heapify(self._early)
            self._early_ids = {key for _, key, _ in self._early}

    def _serve(self, waiter: Waiter[R], now: float) -> Slot[R] | _Create | BaseException | None:
        """Serve ``waiter`` ahead of the queue: an idle slot, else room, else the head of
        the queue."""
        idle = self.idle
        while idle:
            slot = idle.pop()
            if now >= slot.expires_at:
                self._doom(slot)
                continue
            if self._has_check and (
                now - slot.idle_since >= self.check_after or slot.trusted_since < self._outage_at
            ):
                slot.must_check = True
            self._hand_out(slot, now, waiter)
            return slot
        if self.size >= self.config.max_size:
            # Back at the head of the line, out of deadline order.
            self._waiters.appendleft(waiter)
            self._waiting += 1
            self.steady = False
            self._out_of_order(waiter)
            return None
        grant = self._room(now)
        waiter.grant = grant
        return grant

    def _room(self, now: float) -> _Create | BaseException:
        """There is room for one more resource: permit a creation, or fail fast."""
        if self._failing:
            if self._probing or now < self._retry_at:
                return self._unavailable()
            self._probing = True  # this creation is the one probe until it reports back
        self._creating += 1
        return CREATE

    def _unavailable(self) -> PoolUnavailable:
        failures = self._failures
        error = PoolUnavailable(
            f"pool {self.config.name!r} cannot create resources right now "
            f"({failures} failed attempt{'s' if failures != 1 else ''} in a row; "
            f"last error: {self.last_error!r})"
        )
        error.__cause__ = self.last_error
        return error

    def needs_check(self, slot: Slot[R], now: float) -> bool:
        """Whether a slot handed out on the slow path must pass ``check`` first: it sat
        idle for ``check_after`` seconds or more, or it was around when something broke.

        A resource that never sat idle (just made, or handed straight from one caller to
        the next) is not checked unless it is suspect.
        """
        return slot.must_check

    @staticmethod
    def check_deadline(waiter: Waiter[R]) -> float:
        """When the check of the slot granted to ``waiter`` must be over: its deadline, or
        none (``inf``) for a caller with ``timeout=0``, who does not wait in line but
        still has an idle resource checked, within the check's own time."""
        deadline = waiter.deadline
        return deadline if deadline > waiter.since else INF

    def out_of_time_to_check(self, waiter: Waiter[R], now: float) -> bool:
        """Whether no check of the slot granted to ``waiter`` may start now: its deadline
        has passed (a check failed at it). If so the slot goes back unchecked, still due
        its check, and ``waiter`` is timed out: the shell raises its PoolTimeout."""
        if now < self.check_deadline(waiter):
            return False
        self.cancel_wait(waiter, now, timed_out=True)
        return True

    def check_passed(self, slot: Slot[R], now: float) -> None:
        """A handed-out slot passed its check."""
        slot.trusted_since = now
        slot.fast_until = slot.expires_at
        slot.must_check = False

    def check_failed(
        self, slot: Slot[R], waiter: Waiter[R], now: float
    ) -> Slot[R] | _Create | BaseException | None:
        """A handed-out slot failed its check: retire it and serve ``waiter`` again.

        The caller keeps its place: it is served ahead of the queue (another idle slot),
        or waits at the head of the queue for the room the retired one leaves.
        """
        self.check_failures += 1
        self._take_back(slot)
        waiter.grant = None  # the retired slot; a stale grant would be mistaken for a new one
        if self.state is not OPEN:
            return self._closed_error()
        return self._serve(waiter, now)

    def drop(self, slot: Slot[R], *, timed_out: bool = False) -> None:
        """A slot was handed out, but its caller vanished before using it (cancelled, or
        its deadline passed, during the check) and its state is unknown: retire it,
        uncounted (``timed_out`` counts the caller's timeout)."""
        if timed_out:
            self.timeouts += 1
        if slot.held:  # else a close(timeout=...) took it back meanwhile, to destroy
            self._take_back(slot)

    def _take_back(self, slot: Slot[R]) -> None:
        slot.lease += 1
        slot.owner = None
        self._unhanded += 1
        self._slow -= 1
        self._doom(slot)

    def _next_waiter(self) -> Waiter[R] | None:
        """Pop the longest-waiting live waiter, if any."""
        waiters = self._waiters
        while waiters:
            waiter = waiters.popleft()
            if not waiter.cancelled and waiter.grant is None:
                self._waiting -= 1
                if not self._waiting:
                    self._restabilize()
                return waiter
        return None

    def expire(self, now: float, *, describe: bool = True) -> float:
        """Time out every waiter whose deadline has passed; return the next deadline.

        Each one is woken with a :class:`~tether.PoolTimeout` as its grant, or with
        :data:`TIMED_OUT` if not ``describe`` (for a shell whose waiters describe the pool
        in their error themselves, after letting go of its lock).
        """
        upcoming = INF
        early_ids = self._early_ids
        timed_out: dict[int, Waiter[R]] = {}
        for waiter in self._waiters:  # in line, so in deadline order but for the early
            if waiter.grant is None and not waiter.cancelled and id(waiter) not in early_ids:
                if waiter.deadline > now:
                    upcoming = waiter.deadline
                    break
                timed_out[id(waiter)] = waiter
        early = self._early
        while early:
            deadline, key, waiter = early[0]
            if waiter.grant is None and not waiter.cancelled and key not in timed_out:
                if deadline > now:
                    upcoming = min(upcoming, deadline)
                    break
                timed_out[key] = waiter
            heapq.heappop(early)
            early_ids.discard(key)
        if timed_out:
            self._waiting -= len(timed_out)
            if not self._waiting:
                self._restabilize()
            self.timeouts += len(timed_out)
            if not describe:
                for waiter in timed_out.values():
                    self._wake(waiter, TIMED_OUT)
            else:
                # Who holds what and the statistics are read once for everyone timed out
                # in this round, not once per waiter (hundreds may go together).
                make_error = self.timeout_error_reading(now)
                for waiter in timed_out.values():
                    self._wake(waiter, make_error(now - waiter.since))
            self._tidy()
        return upcoming

    def _hand_out(self, slot: Slot[R], now: float, waiter: Waiter[R]) -> None:
        slot.lease += 1
        slot.acquired_at = now
        slot.owner = waiter.owner
        slot.site_code = waiter.site_code
        slot.site_offset = waiter.site_offset
        waiter.grant = slot
        self._slow += 1
        self._waits.append(now - waiter.since)

    def _wake(self, waiter: Waiter[R], grant: _Create | BaseException) -> None:
        """Deliver ``grant`` to a waiter popped from the queue, and tell the shell."""
        waiter.grant = grant
        self.woken.append(waiter)

    def cancel_wait(self, waiter: Waiter[R], now: float, *, timed_out: bool) -> None:
        """``waiter`` gave up (cancelled or timed out) before using what it was granted.

        A slot it was granted goes to the next waiter or the idle stack; a creation permit
        it had not started to use passes to the next waiter or lapses. (A caller that had
        started creating calls :meth:`abandon_creation` instead.)
        """
        if waiter.cancelled:
            return
        waiter.cancelled = True
        grant = waiter.grant
        if timed_out:
            self.timeouts += 1
        if grant is None:
            self._waiting -= 1
            if not self._waiting:
                self._restabilize()
            self._tidy()
        elif isinstance(grant, Slot):
            self._unhanded += 1
            self._slow -= 1
            self.release(grant, grant.lease, now, counted=False)
        elif grant is CREATE:
            self._creating -= 1
            self._probing = False
            self._offer_room(now)
            self._maybe_closed()

    def abandon_creation(self, waiter: Waiter[R], now: float, *, timed_out: bool) -> Slot[R] | None:
        """The caller of a creation it started gave up; the resource, when it comes, goes
        to the next waiter or the idle stack.

        If it came already (made and handed to the caller, who gave up before it could
        run): a caller whose deadline passed meanwhile gets it after all, returned here;
        a cancelled caller's goes on now, as with :meth:`cancel_wait`.
        """
        if isinstance(waiter.grant, Slot):
            if timed_out:
                return waiter.grant
            self.cancel_wait(waiter, now, timed_out=False)
            return None
        if not waiter.cancelled:
            waiter.cancelled = True
            if timed_out:
                self.timeouts += 1
        return None

    # ------------------------------------------------------------------ create

    def created(self, resource: R, now: float, waiter: Waiter[R] | None) -> Slot[R]:
        """A creation succeeded. The slot goes to ``waiter`` (the caller that created it)
        if it is still there, else to the next waiter or the idle stack.
        """
        self._creating -= 1
        self.created_count += 1
        self._failing = False
        self._failures = 0
        self._probing = False
        lifetime = self.config.max_lifetime
        expires_at = INF if lifetime is None else now + lifetime * (1.0 - 0.1 * self._jitter())
        max_uses = self.config.max_uses
        slot = Slot(resource, now, expires_at, INF if max_uses is None else max_uses)
        self._slots[id(resource)] = slot
        if waiter is not None and not waiter.cancelled and self.state is OPEN:
            self._hand_out(slot, now, waiter)
            self.woken.append(waiter)
        else:
            self._settle(slot, now)
        if self._waiting:
            self._offer_room(now)  # waiters queued while the pool was failing
        return slot

    def create_failed(self, error: BaseException, now: float, waiter: Waiter[R] | None) -> None:
        """A creation failed: enter the failing state and schedule the next attempt.

        ``waiter``, the caller that needed the resource (if it is still there), is woken
        with the real error, which gets a note naming the pool.
        """
        error.add_note(f"(while pool {self.config.name!r} was creating a resource)")
        if waiter is not None and not waiter.cancelled:
            self._wake(waiter, error)
        self._creating -= 1
        self.create_errors += 1
        self.last_error = error
        self._failures += 1
        self._failing = True
        self._probing = False
        first, cap = self.config.retry_delay
        delay = min(cap, first * 2.0 ** min(self._failures - 1, 60))
        self._retry_at = now + delay * (0.5 + 0.5 * self._jitter())
        self._mark_outage(now)
        # The room this creation had reserved is free again: offer it (the head waiter
        # fails fast, since the pool is now failing).
        self._offer_room(now)
        self._maybe_closed()

    def creation_abandoned(self, waiter: Waiter[R] | None) -> None:
        """A creation was cancelled before it finished (the pool is closing); nothing was
        made. Its caller, if still there, gets :class:`~tether.PoolClosed`."""
        self._creating -= 1
        self._probing = False
        if waiter is not None and not waiter.cancelled:
            self._wake(waiter, self._closed_error())
        self._maybe_closed()

    def refill(self, now: float) -> int:
        """How many background creations to start now (to reach ``min_size``).

        Each one is reserved; report it with :meth:`created` (``waiter=None``) or
        :meth:`create_failed`.
        """
        if self.state is not OPEN:
            return 0
        missing = self.config.min_size - self.size
        if missing <= 0:
            return 0
        if self._failing:
            if self._probing or now < self._retry_at:
                return 0
            self._probing = True
            missing = 1
        self._creating += missing
        return missing

    # ------------------------------------------------------------------ return

    def give_back(self, slot: Slot[R], lease: int, now: float) -> Waiter[R] | bool | None:
        """:meth:`release` of a healthy resource, with short ways for the common cases:
        back onto the idle stack, or straight to the longest waiter.

        Returns:
            ``None`` when there is nothing more to do; the waiter the resource was handed
            to on the short way, for the shell to wake (it is not added to :attr:`woken`);
            or ``True`` when :attr:`woken` or :attr:`doomed` need carrying out.
        """
        if slot.lease != lease or now >= slot.fast_until:
            return self._release_and_tell(slot, lease, now)
        if not self.steady:
            if self._waiting and self._smooth:
                # Straight to the longest waiter. This is what _next_waiter() and
                # _hand_out() do, written out: it is the hot path of a contended pool.
                waiters = self._waiters
                waiter = waiters.popleft()
                while waiter.cancelled or waiter.grant is not None:
                    waiter = waiters.popleft()  # a live one exists: _waiting > 0
                self._waiting -= 1
                if not self._waiting:
                    self._restabilize()
                self.holds.append(now - slot.acquired_at)
                slot.lease = lease + 2  # the end of one lease, the start of the next
                slot.idle_since = slot.acquired_at = now
                slot.owner = waiter.owner
                slot.site_code = waiter.site_code
                slot.site_offset = waiter.site_offset
                waiter.grant = slot
                self._slow += 1
                self._waits.append(now - waiter.since)
                return waiter
            return self._release_and_tell(slot, lease, now)
        # Back on top of the idle stack (the async shell writes these steps out).
        slot.lease = lease + 1
        self.holds.append(now - slot.acquired_at)
        slot.idle_since = now
        due = now + self.check_after
        slot.fresh_until = due if due < slot.expires_at else slot.expires_at
        self.idle.append(slot)
        return None

    def _release_and_tell(self, slot: Slot[R], lease: int, now: float) -> bool | None:
        self.release(slot, lease, now)
        return True if self.woken or self.doomed else None

    def release(
        self,
        slot: Slot[R],
        lease: int,
        now: float,
        *,
        broken: bool = False,
        counted: bool = True,
    ) -> None:
        """Take back the resource of ``slot`` from the holder of ``lease``.

        Args:
            slot: the slot handed out.
            lease: the lease being ended (``slot.lease`` when it was handed out).
            now: the current time.
            broken: destroy the resource instead of reusing it.
            counted: record the hold in the statistics (``False`` for internal returns).

        Raises:
            ValueError: the slot is not held under that lease (a second return, or a
                resource this pool did not hand out), unless the pool was closed and
                already reclaimed it.
        """
        if slot.lease != lease or lease & 1 == 0 or slot.state is not LIVE:
            if slot.reclaimed and slot.lease == lease + 1:
                slot.reclaimed = False  # a second return of the same lease is an error
                self._inherited.pop(id(slot.resource), None)
                return
            raise ValueError(
                f"{slot.resource!r} is not held from pool {self.config.name!r} "
                "(returned twice, or it was never acquired from this pool)"
            )
        slot.lease = lease + 1
        slot.owner = None
        if counted:
            slot.uses_left -= 1
            self.holds.append(now - slot.acquired_at)
            if broken:
                self.broken += 1
        if broken:
            self._mark_outage(now)
            self._doom(slot)
        else:
            self._settle(slot, now, used=counted)

    def _settle(self, slot: Slot[R], now: float, *, used: bool = True) -> None:
        """Place a returned (or newly made, unclaimed) resource: retire it if it is spent,
        else hand it to the next waiter, else put it on the idle stack.

        A resource handed out but given back unused (its caller gave up first) has been
        idle all along: it stays due its check when it was.
        """
        expires_at = slot.expires_at
        if (
            slot.uses_left <= 0
            or now >= expires_at
            or self.state is not OPEN
            or len(self._slots) + self._creating > self.config.max_size
        ):
            self._doom(slot)
            return
        if used:
            slot.idle_since = now
        if self._has_check and slot.trusted_since < self._outage_at:
            # It was around when something broke: it must pass a check before reuse.
            slot.fresh_until = slot.fast_until = -INF
            slot.must_check = True
        else:
            due = slot.idle_since + self.check_after
            slot.fresh_until = due if due < expires_at else expires_at
            slot.fast_until = expires_at
            slot.must_check = not used and self._has_check and now >= due
        waiter = self._next_waiter()
        if waiter is not None:
            self._hand_out(slot, now, waiter)
            self.woken.append(waiter)
        else:
            self.idle.append(slot)

    def _offer_room(self, now: float) -> None:
        """Room may have appeared: give waiters permits while there is room, or, when the
        pool cannot create resources right now, their failure.

        A failure takes no room, so while the pool is failing every waiter that room
        could serve fails fast (not only the head of the queue: the others would
        otherwise wait for an event that may not come before their timeout). And when
        the pool recovers, waiters queued meanwhile get a permit each, up to
        ``max_size``, rather than sharing the one resource that ended the outage.
        """
        while self.state is OPEN and self.size < self.config.max_size:
            waiter = self._next_waiter()
            if waiter is None:
                return
            self._wake(waiter, self._room(now))

    def _mark_outage(self, now: float) -> None:
        """Something broke: resources around before now must pass ``check`` before reuse.

        Without a ``check`` there is no way to tell, and they are left alone.
        """
        self._outage_at = now
        if self._has_check:
            for slot in self._slots.values():
                slot.fast_until = -INF
                if slot.state is LIVE and not slot.held:
                    slot.fresh_until = -INF

    # ------------------------------------------------------------------ destroy

    def _doom(self, slot: Slot[R]) -> None:
        slot.state = DOOMED
        self._doomed_count += 1
        self.doomed.append(slot)

    def destroyed(self, slot: Slot[R], now: float) -> None:
        """The shell finished destroying a doomed slot's resource (successfully or not)."""
        if slot.state is not DOOMED:
            return
        slot.state = GONE
        self._doomed_count -= 1
        self.destroyed_count += 1
        self._gone_handouts += (slot.lease + 1) >> 1
        if self._slots.get(id(slot.resource)) is slot:
            del self._slots[id(slot.resource)]
        self._restabilize()
        self._offer_room(now)
        self._maybe_closed()

    # ------------------------------------------------------------------ housekeeping

    def resize(self, min_size: int | None, max_size: int | None, now: float) -> None:
        """Change the size bounds; extra idle resources retire now, held ones on return."""
        new_min = self.config.min_size if min_size is None else min_size
        new_max = self.config.max_size if max_size is None else max_size
        check_size(new_min, new_max)
        self.config.min_size = new_min
        self.config.max_size = new_max
        while self.size > new_max and self.idle:
            self._doom(self.idle.popleft())
        self._restabilize()
        while self._waiting and self.state is OPEN and self.size < new_max:
            woken = len(self.woken)
            self._offer_room(now)
            if len(self.woken) == woken:
                break

    def maintain(self, now: float) -> tuple[list[Slot[R]], float]:
        """Periodic work: retire idle resources that expired or idled too long.

        Returns:
            the held slots newly past ``leak_timeout`` (report each once), and the time of
            the next thing that will need doing (``inf`` if nothing is scheduled).
        """
        config = self.config
        next_due = INF
        max_idle = config.max_idle
        if self.idle:
            surplus = self.size - self._doomed_count - config.min_size
            kept: list[Slot[R]] = []
            # Oldest idle first (left): those are the ones max_idle retires first.
            for slot in self.idle:
                idle_until = INF if max_idle is None else slot.idle_since + max_idle
                if now >= slot.expires_at or (surplus > 0 and now >= idle_until):
                    self._doom(slot)
                    surplus -= 1
                    continue
                kept.append(slot)
                next_due = min(next_due, slot.expires_at)
                if surplus > 0:
                    # One that min_size keeps has no idle deadline: a past one would
                    # have the housekeeper spin.
                    next_due = min(next_due, idle_until)
            # In place: shells hold on to the idle stack (see "Short ways").
            self.idle.clear()
            self.idle.extend(kept)
        leaked: list[Slot[R]] = []
        leak_timeout = config.leak_timeout
        if leak_timeout is not None:
            for slot in self._slots.values():
                if slot.held and slot.leak_lease != slot.lease:
                    due = slot.acquired_at + leak_timeout
                    if now >= due:
                        slot.leak_lease = slot.lease
                        leaked.append(slot)
                    else:
                        next_due = min(next_due, due)
        if self._failing and (self.size < config.min_size or self._waiting):
            if now < self._retry_at:
                next_due = min(next_due, self._retry_at)
            elif self._waiting:
                # Waiters queued while the pool was failing: one may now probe.
                self._offer_room(now)
            # Past the retry time, a refill probes now if it may; if it may not (another
            # probe is out, or there is no room), that probe's report or the room freed
            # calls the housekeeper again: a time already past would have it spin.
        return leaked, next_due

    # ------------------------------------------------------------------ reporting

    def holders(self, now: float) -> list[Holder[R]]:
        """Who holds what, longest-held first."""
        return self.holders_reading(now)()

    def holders_reading(self, now: float) -> Callable[[], list[Holder[R]]]:
        """:meth:`holders` in two steps, like :meth:`stats_reading`: who holds what is
        read now, and the returned function describes them (finding each line number,
        naming each owner) when called, after the shell lets go of its lock."""
        leak_timeout = self.config.leak_timeout
        held = [
            (slot.resource, slot.acquired_at, slot.site_code, slot.site_offset, slot.owner)
            for slot in self._slots.values()
            if slot.held
        ]

        def describe() -> list[Holder[R]]:
            held.sort(key=lambda entry: entry[1])
            return [
                Holder(
                    resource=resource,
                    held_for=now - acquired_at,
                    site=str(code_site(site_code, site_offset)),
                    owner=owner_name(owner),
                    leaked=leak_timeout is not None and now - acquired_at >= leak_timeout,
                )
                for resource, acquired_at, site_code, site_offset, owner in held
            ]

        return describe

    def stats(self) -> PoolStats:
        """A frozen snapshot of the pool's state and counters."""
        return self.stats_reading()()

    def stats_reading(self) -> Callable[[], PoolStats]:
        """:meth:`stats` in two steps: the counters and a copy of the recent durations are
        read now, and the returned function summarises them (sorting the durations, the
        costly part) when called. A shell reads under its lock and summarises after
        letting go of it, so that callers of ``stats()`` do not hold up the pool."""
        config = self.config
        acquired = self.acquired
        held = self.held_count
        zeros = acquired - self._slow
        waits, holds = list(self._waits), list(self.holds)
        counted = PoolStats(
            name=config.name,
            size=self.size,
            idle=len(self.idle),
            in_use=held,
            waiting=self._waiting,
            min_size=config.min_size,
            max_size=config.max_size,
            acquired=acquired,
            created=self.created_count,
            destroyed=self.destroyed_count,
            timeouts=self.timeouts,
            create_errors=self.create_errors,
            check_failures=self.check_failures,
            broken=self.broken,
            wait=_NOT_SUMMARISED,
            hold=_NOT_SUMMARISED,
            last_create_error=None if self.last_error is None else repr(self.last_error),
        )

        def summarise() -> PoolStats:
            return dataclasses.replace(
                counted,
                wait=DurationSummary.of(waits, count=acquired, zeros=zeros),
                hold=DurationSummary.of(holds, count=acquired - held),
            )

        return summarise

    def timeout_error(self, waited: float, now: float) -> PoolTimeout:
        """The :class:`~tether.PoolTimeout` for a caller that waited ``waited`` seconds."""
        return self.timeout_error_reading(now)(waited)

    def timeout_error_reading(self, now: float) -> Callable[[float], PoolTimeout]:
        """:meth:`timeout_error` in two steps, like :meth:`stats_reading`: the pool is read
        now; the returned function, given how long a caller waited, builds its error (and
        can be called for several callers timed out together)."""
        config = self.config
        state = (
            f"size {self.size}/{config.max_size}, in use {self.held_count}, "
            f"idle {len(self.idle)}, waiting {self._waiting}, creating {self._creating}"
        )
        describe_holders = self.holders_reading(now)
        summarise_stats = self.stats_reading()
        last_error = self.last_error
        described: tuple[list[Holder[R]], str] | None = None
        summary: PoolStats | None = None

        def shared_summary() -> PoolStats:
            nonlocal summary
            if summary is None:
                summary = summarise_stats()
            return summary

        def build(waited: float) -> PoolTimeout:
            nonlocal described
            if described is None:  # once, however many callers timed out together
                holders = describe_holders()
                lines = [""]  # after the first line
                if holders:
                    lines.append("longest holders:")
                    lines.extend(f"  {h}" for h in holders[:HOLDERS_SHOWN])
                    if len(holders) > HOLDERS_SHOWN:
                        lines.append(f"  ... and {len(holders) - HOLDERS_SHOWN} more")
                if last_error is not None:
                    lines.append(f"last creation error: {last_error!r}")
                described = (holders, "\n".join(lines))
            holders, rest = described
            error = PoolTimeout(
                f"pool {config.name!r}: no resource free after {waited:.3f}s ({state}){rest}"
            )
            error.holders = list(holders)
            error.stats = shared_summary  # summarised if and when somebody reads it
            return error

        return build
