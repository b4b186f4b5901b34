"""``Pool``: the threading shell around the pool core.

Every call into the core happens under one lock; everything that may block (creating,
checking, resetting and destroying resources, and waiting) happens outside it. A waiting
thread sleeps on a lock of its own, which the thread that wakes it releases, so a
hand-off wakes exactly the thread it is meant for.

A waiting thread sleeps without a timeout: the core keeps its deadline, and one
background thread per pool (the timekeeper, started by the first wait that has a
deadline) wakes the waiters whose deadline passes, and each builds its PoolTimeout itself.
A timed sleep makes the kernel arm and cancel a timer for every wait, which cost a busy
pool of database connections about 5 % of its queries per second on a virtual machine
(``benchmarks/bench_postgres.py``, see DEVELOPERS.md); with one timer for the whole
line, nothing is paid per wait.
"""

from __future__ import annotations

import sys
import threading
import time
import weakref
from collections.abc import Callable
from types import CodeType, TracebackType
from typing import Final, TypeVar, cast, final

from ._pool_base import DEFAULT, PoolShell, logger
from ._pool_core import (
    CLOSED,
    CREATE,
    OPEN,
    TIMED_OUT,
    Slot,
    Waiter,
    _Create,
    timeout_or_none,
)
from ._pool_types import Holder, PoolStats
from ._sites import user_code

__all__ = ["Pool"]

R = TypeVar("R")

_monotonic: Final = time.monotonic
_getframe: Final = sys._getframe
_current_thread: Final = threading.current_thread
_new: Final = object.__new__
_INF: Final = float("inf")
_IDLE_ROUND: Final = 1.0
"""The shortest sleep, in seconds, of a timekeeper with nobody to time out."""


@final
class Pool(PoolShell[R]):
    """A fair, thread-safe pool of resources: the threaded twin of :class:`AsyncPool`.

    Same options and behaviour as :class:`~tether.AsyncPool`, with plain callables:
    ``create``, ``destroy``, ``check`` and ``reset`` run in the calling thread, outside the
    pool's lock. ``acquire_timeout`` bounds the wait for a resource; it cannot interrupt a
    ``create`` in progress, so give ``create`` its own timeout (the database adapters
    do). Besides its housekeeping thread, a pool runs a timekeeper thread once a caller
    has waited with a deadline: waiting threads sleep without a timeout of their own, and
    it wakes each one whose deadline passes.

    Args:
        create: makes a resource.
        destroy: disposes of a resource. Errors are logged, not raised.
        check: raises, or returns ``False``, if a resource is unusable. Runs on borrow,
            only for resources idle longer than ``check_after`` seconds.
        reset: runs on every return; if it fails, the resource is destroyed.
        is_broken: given an exception raised inside ``acquire()``, says whether the
            resource must be destroyed instead of reused.
        min_size: resources kept ready (created on open, refilled in the background).
        max_size: the most resources in existence at once.
        acquire_timeout: seconds ``acquire()`` waits; ``None`` waits forever.
        max_lifetime: seconds after which a resource is retired (up to 10 % jitter).
        max_idle: seconds after which an idle resource above ``min_size`` is destroyed.
        max_uses: hand-outs after which a resource is retired.
        check_after: seconds of idleness after which ``check`` runs on borrow.
        leak_timeout: a resource held longer than this is reported once.
        name: the pool's name in messages and statistics.
        retry_delay: ``(first, cap)`` seconds of backoff between failed creations.

    Raises:
        TypeError: a callable argument is not callable, or a size is not an int.
        ValueError: an option is out of range; the message names it.
    """

    def __init__(
        self,
        create: Callable[[], R],
        *,
        destroy: Callable[[R], object] | None = None,
        check: Callable[[R], object] | None = None,
        reset: Callable[[R], object] | None = None,
        is_broken: Callable[[BaseException], bool] | None = None,
        min_size: int = 0,
        max_size: int = 10,
        acquire_timeout: float | None = 30.0,
        max_lifetime: float | None = None,
        max_idle: float | None = None,
        max_uses: int | None = None,
        check_after: float = 1.0,
        leak_timeout: float | None = None,
        name: str | None = None,
        retry_delay: tuple[float, float] = (0.1, 5.0),
    ) -> None:
        super().__init__(
            create,
            destroy=destroy,
            check=check,
            reset=reset,
            is_broken=is_broken,
            min_size=min_size,
            max_size=max_size,
            acquire_timeout=acquire_timeout,
            max_lifetime=max_lifetime,
            max_idle=max_idle,
            max_uses=max_uses,
            check_after=check_after,
            leak_timeout=leak_timeout,
            name=name,
            retry_delay=retry_delay,
        )
        self._create = create
        self._destroy = destroy
        self._check = check
        self._reset = reset
        self._is_broken = is_broken
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        """Notified when resources come back to a closing pool, or the housekeeper is
        needed sooner than it planned."""
        self._pokes = 0
        """How many times the housekeeper was asked for an early round; it compares this
        under the lock before sleeping, so that no request made while it works is lost."""
        self._housekeeper: threading.Thread | None = None
        self._timer_changed = threading.Condition(self._lock)
        """Notified when a waiter's deadline comes before the timekeeper's next round, or
        the pool closes."""
        self._timer_at = _INF
        """When the timekeeper looks at the deadlines next (under the lock): a waiter whose
        deadline is later needs nothing from it now."""
        self._timekeeper: threading.Thread | None = None
        self._on_closed: list[Callable[[], object]] = []
        """Called (in order, once) when :meth:`close` has closed the pool: for the
        adapters that own something besides the resources (SQLite's ``:memory:``
        database)."""

    # ------------------------------------------------------------------ lifecycle

    def open(self, *, wait: bool = True) -> None:
        """Start serving, and create ``min_size`` resources.

        Args:
            wait: create the first ``min_size`` resources before returning. If one of
                them fails, the pool is closed and the error raised. With ``wait=False``
                they are created in the background (failures are retried).

        Raises:
            PoolClosed: the pool was already opened or closed.
        """
        with self._lock:
            self._core.open()
            count = 0 if not wait else self._core.refill(_monotonic())
        for index in range(count):
            try:
                resource = self._create()
            except BaseException as error:
                with self._lock:
                    self._core.create_failed(error, _monotonic(), None)
                    for _ in range(count - index - 1):
                        self._core.creation_abandoned(None)
                self._flush()
                self.close()
                raise
            with self._lock:
                self._core.created(resource, _monotonic(), None)
            self._flush()
        with self._lock:
            self._start_housekeeper()

    def close(self, timeout: float | None = None) -> None:
        """Close the pool.

        New acquires and current waiters get :class:`~tether.PoolClosed`; idle resources
        are destroyed now; held ones are destroyed when returned (returning to a closed
        pool is not an error).

        Args:
            timeout: wait up to this many seconds for held resources to be returned, then
                destroy them anyway. ``None`` does not wait for them.

        Raises:
            ValueError: ``timeout`` is negative.
        """
        timeout = timeout_or_none("timeout", timeout)
        core = self._core
        with self._lock:
            if core.state is CLOSED:
                return
            core.close()
            self._notify()
            self._timer_changed.notify()
        self._flush()
        housekeeper, self._housekeeper = self._housekeeper, None
        timekeeper, self._timekeeper = self._timekeeper, None
        for helper in (housekeeper, timekeeper):
            if helper is not None and helper is not threading.current_thread():
                helper.join()
        if timeout is not None:
            deadline = _monotonic() + timeout
            with self._lock:
                while core.held_count and (left := deadline - _monotonic()) > 0:
                    self._changed.wait(left)
                if core.held_count:
                    core.reclaim_held()
            self._flush()
        if core.held_count:
            self._report_held_at_close()
        on_closed, self._on_closed = self._on_closed, []
        for hook in on_closed:
            hook()

    def __enter__(self) -> Pool[R]:
        self.open()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # ------------------------------------------------------------------ reporting

    def stats(self) -> PoolStats:
        """A frozen snapshot of the pool's state and counters."""
        with self._lock:  # taken while other threads change the resources it counts
            summarise = self._core.stats_reading()
        return summarise()  # sorting the recent durations holds up nobody

    def holders(self) -> list[Holder[R]]:
        """Who holds the pool's resources right now, longest-held first.

        Each :class:`~tether.Holder` gives the resource, how long it has been held, where it
        was acquired (``file:line`` in your code) and by which thread.
        """
        with self._lock:
            describe = self._core.holders_reading(_monotonic())
        return describe()  # finding line numbers and names holds up nobody

    # ------------------------------------------------------------------ acquire

    def acquire(self, *, timeout: float | None = DEFAULT) -> _Acquire[R]:
        """Borrow a resource for the duration of a ``with`` block.

        ``with pool.acquire() as resource: ...`` returns the resource at the end of the
        block, whatever happens in it; an exception for which ``is_broken`` is true
        destroys it.

        Args:
            timeout: seconds to wait for a resource; defaults to the pool's
                ``acquire_timeout``; ``None`` waits forever.

        Raises:
            PoolTimeout: nothing became free in time.
            PoolClosed: the pool is closed or not open.
            PoolUnavailable: the pool is failing to create resources right now.
            ValueError: ``timeout`` is negative.
        """
        if timeout is not DEFAULT:
            self._resolve_timeout(timeout)  # refuse bad input here, even on the fast path
        frame = _getframe(1)
        # _Acquire(self, timeout, code, offset) without its __init__: a Python __init__
        # is a good part of an uncontended cycle.
        acquire: _Acquire[R] = _new(_Acquire)
        acquire._pool = self
        acquire._timeout = timeout
        acquire.site_code = frame.f_code
        acquire.site_offset = frame.f_lasti
        return acquire

    def get(self, *, timeout: float | None = DEFAULT) -> R:
        """Borrow a resource; give it back with :meth:`put`. Prefer :meth:`acquire`.

        Raises:
            PoolTimeout: nothing became free in time.
            PoolClosed: the pool is closed or not open.
            PoolUnavailable: the pool is failing to create resources right now.
            ValueError: ``timeout`` is negative.
        """
        if timeout is not DEFAULT:
            self._resolve_timeout(timeout)
        code, offset = user_code(1)
        return _Acquire(self, timeout, code, offset).__enter__()

    def put(self, resource: R, *, broken: bool = False) -> None:
        """Give back a resource borrowed with :meth:`get`.

        Args:
            resource: the resource.
            broken: destroy it instead of reusing it.

        Raises:
            ValueError: the resource is not held from this pool (or was already returned);
                nothing in the pool changes.
        """
        with self._lock:
            slot = self._core.slot_of(resource)
            if slot is not None and not slot.held:
                slot = None  # given back already: refused before reset can touch it
        if slot is None:
            if self.closed:
                return
            with self._lock:
                inherited = self._core.inherited(resource)
            if inherited:
                return  # held across a fork: the parent's, let alone
            raise ValueError(f"{resource!r} is not held from pool {self.name!r}")
        self._give_back(slot, slot.lease, None, broken=broken)

    def _acquire_rest(
        self, waiter: _Acquire[R], grant: Slot[R] | _Create | BaseException | None
    ) -> Slot[R]:
        """The rest of the slow path: wait in line, check what was granted, or create."""
        core = self._core
        while True:
            if grant is None:
                grant = self._wait(waiter)
            if isinstance(grant, Slot):
                # The slot is ours now: what the core decided about it can be read
                # without the lock.
                if not grant.must_check:
                    return grant
                with self._lock:
                    out_of_time = core.out_of_time_to_check(waiter, _monotonic())
                if out_of_time:
                    self._flush()
                    raise self._timeout_error(waiter)
                passed = self._passes_check(grant)
                with self._lock:
                    if not grant.held:
                        # A close(timeout=...) took it back during the check, to destroy.
                        raise core._closed_error()
                    if passed:
                        core.check_passed(grant, _monotonic())
                        return grant
                    grant = core.check_failed(grant, waiter, _monotonic())
                    if grant is None:
                        waiter.handle = _sleeper()
                        if waiter.deadline < self._timer_at:
                            self._call_timekeeper(waiter)
                self._flush()
                continue
            if grant is CREATE:
                return self._create_for(waiter)
            if grant is TIMED_OUT:  # the timekeeper's doing
                raise self._timeout_error(waiter)
            assert isinstance(grant, BaseException)
            raise grant

    def _wait(self, waiter: _Acquire[R]) -> Slot[R] | _Create | BaseException | None:
        """Sleep until the core grants ``waiter`` something: a resource, room to create
        one, or (through the timekeeper) its PoolTimeout."""
        sleeper: threading.Lock = waiter.handle  # type: ignore[assignment]
        try:
            sleeper.acquire()
        except BaseException:  # KeyboardInterrupt while waiting: give up the place
            with self._lock:
                self._core.cancel_wait(waiter, _monotonic(), timed_out=False)
            self._flush()
            raise
        # Whoever woke us set the grant first, under the lock.
        return waiter.grant

    def _timeout_error(self, waiter: Waiter[R]) -> BaseException:
        """The PoolTimeout of ``waiter``, whose deadline passed: the pool is read under the
        lock, and described after letting go of it (so that an overloaded pool's timeouts
        hold up nobody)."""
        with self._lock:
            now = _monotonic()
            make_error = self._core.timeout_error_reading(now)
        return make_error(now - waiter.since)

    def _call_timekeeper(self, waiter: Waiter[R]) -> None:
        """Under the lock: ``waiter`` has joined the line with a deadline before the
        timekeeper's next round. The first time (in this process), start the timekeeper;
        if that fails, ``waiter`` leaves the line and the error is raised."""
        self._timer_at = waiter.deadline
        if self._timekeeper is not None:
            self._timer_changed.notify()
            return
        timekeeper = threading.Thread(
            target=_keep_time,
            args=(weakref.ref(self),),
            name=f"tether pool {self.name!r} timekeeper",
            daemon=True,
        )
        try:
            timekeeper.start()  # it waits for the lock this thread holds
        except BaseException:
            self._timer_at = _INF
            self._core.cancel_wait(waiter, _monotonic(), timed_out=False)
            raise
        self._timekeeper = timekeeper

    def _create_for(self, waiter: Waiter[R]) -> Slot[R]:
        """Create a resource under a permit, for ``waiter`` (the calling thread)."""
        try:
            resource = self._create()
        except Exception as error:
            with self._lock:
                self._core.create_failed(error, _monotonic(), None)
            self._flush()
            self._poke_housekeeper()
            raise
        except BaseException:
            # Interrupted (KeyboardInterrupt): not a failure to create, and no reason to
            # back off; the permit passes to the next caller.
            with self._lock:
                self._core.cancel_wait(waiter, _monotonic(), timed_out=False)
            self._flush()
            raise
        with self._lock:
            # The creating thread is awake: nothing must release its sleeper again (it may
            # already have been released, if the permit came just as the wait timed out).
            waiter.handle = None
            slot = self._core.created(resource, _monotonic(), waiter)
            if self._housekeeper is None and self._core.state is OPEN:
                self._start_housekeeper()  # the first use in a forked child
            elif self._core.size < self._core.config.min_size:
                self._notify()  # the pool may just have come back: refill it now
        self._flush()
        if waiter.grant is slot:
            return slot
        raise self._core._closed_error()  # closed while creating: the resource is retired

    def _passes_check(self, slot: Slot[R]) -> bool:
        check = self._check
        assert check is not None
        try:
            verdict = check(slot.resource)
        except Exception:  # noqa: BLE001 - a check that raises is a failed check
            return False
        except BaseException:
            with self._lock:
                self._core.drop(slot)
            self._flush()
            raise
        return verdict is not False

    # ------------------------------------------------------------------ return

    def _give_back(
        self, slot: Slot[R], lease: int, error: BaseException | None, *, broken: bool = False
    ) -> None:
        """Reset and return a resource; ``error`` is what the holder's block raised."""
        if slot.lease != lease:
            # Given back already (or reclaimed by a close that timed out), and perhaps
            # handed to someone else since: not this caller's to reset. The core refuses
            # the return, or accepts a reclaimed one silently.
            with self._lock:
                self._core.release(slot, lease, _monotonic())
            return
        try:
            if error is not None and not broken and self._is_broken is not None:
                broken = self._judge(error)
            reset = self._reset
            if reset is not None and not broken:
                try:
                    reset(slot.resource)
                except Exception:  # noqa: BLE001 - a failed reset means a broken resource
                    broken = True
        except BaseException:  # interrupted judging or resetting: its state is unknown
            self._drop(slot, lease)
            raise
        if broken:
            self._drop(slot, lease)
            return
        with self._lock:
            handed_to = self._core.give_back(slot, lease, _monotonic())
        self._carry_out(handed_to)

    def _drop(self, slot: Slot[R], lease: int) -> None:
        """Return a resource as broken: it is destroyed, and its room freed."""
        with self._lock:
            self._core.release(slot, lease, _monotonic(), broken=True)
        self._flush()

    def _carry_out(self, handed_to: Waiter[R] | bool | None) -> None:
        """Finish a :meth:`PoolCore.give_back`: wake the waiter it handed to, or flush."""
        if handed_to is True:
            self._flush()
        elif handed_to is not None:
            handed_to.handle.release()  # type: ignore[union-attr]

    def _judge(self, error: BaseException) -> bool:
        is_broken = self._is_broken
        assert is_broken is not None
        try:
            return bool(is_broken(error))
        except Exception:  # noqa: BLE001 - when in doubt, do not reuse the resource
            logger.warning("pool %r: is_broken raised; destroying the resource", self.name)
            return True

    # ------------------------------------------------------------------ carrying out

    def _flush(self) -> None:
        """Carry out the core's decisions (outside the lock): wake, destroy, refill."""
        core = self._core
        with self._lock:
            if not core.woken and not core.doomed:
                return
            woken, core.woken = core.woken, []
            doomed, core.doomed = core.doomed, []
        _wake(woken)
        for index, slot in enumerate(doomed):
            try:
                self._destroy_now(slot)
            except BaseException:  # interrupted: the rest are left for the next flush
                with self._lock:
                    core.doomed.extend(doomed[index + 1 :])
                raise

    def _destroy_now(self, slot: Slot[R]) -> None:
        destroy = self._destroy
        try:
            if destroy is not None:
                try:
                    destroy(slot.resource)
                except Exception as error:  # noqa: BLE001 - reported; the slot is gone anyway
                    self._report_destroy_error(slot.resource, error)
        finally:
            # Even if destroy was interrupted: its room must not stay taken for good.
            with self._lock:
                self._core.destroyed(slot, _monotonic())
                self._notify()  # a closing pool may be done; an open one may need a refill
        self._flush()

    def _refill(self) -> bool:
        """Create what ``min_size`` asks for, in the calling (housekeeping) thread.

        Returns:
            whether to go round again at once: a creation failed (its retry must be
            scheduled), or one succeeded as the failing pool's probe and the rest are
            still to be made.
        """
        failed = False
        with self._lock:
            count = self._core.refill(_monotonic())
        for _ in range(count):
            try:
                resource = self._create()
            except BaseException as error:  # noqa: BLE001 - recorded; retried after backoff
                # Even SystemExit: this is the housekeeper's thread, which must live on.
                failed = True
                with self._lock:
                    self._core.create_failed(error, _monotonic(), None)
            else:
                with self._lock:
                    self._core.created(resource, _monotonic(), None)
            self._flush()
        return failed or (count > 0 and self._core.size < self._core.config.min_size)

    def _start_housekeeper(self) -> None:
        """Under the lock: start the housekeeper, unless it runs already (a caller in a
        forked child may have started it while ``open()`` was still making resources)."""
        if self._housekeeper is not None:
            return
        self._housekeeper = threading.Thread(
            target=_housekeep,
            args=(weakref.ref(self),),
            name=f"tether pool {self.name!r}",
            daemon=True,
        )
        self._housekeeper.start()

    def _poke_housekeeper(self) -> None:
        with self._lock:
            self._notify()

    def _notify(self) -> None:
        """Under the lock: wake the housekeeper, and whoever waits in close(timeout)."""
        self._pokes += 1
        self._changed.notify_all()

    def _forget_shell_state(self) -> None:
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._housekeeper = None
        self._timer_changed = threading.Condition(self._lock)
        self._timer_at = _INF
        self._timekeeper = None
        # Threads do not survive a fork: the child's first creation starts a housekeeper
        # of its own (not the fork itself: a child about to exec, say from subprocess's
        # preexec_fn, must not start refilling the pool).

    def resize(self, *, min_size: int | None = None, max_size: int | None = None) -> None:
        """Change ``min_size`` and/or ``max_size`` while the pool runs.

        Shrinking destroys idle resources above the new ``max_size`` now and held ones as
        they are returned; growing lets waiters create resources at once and refills to
        the new ``min_size`` in the background.

        Raises:
            ValueError: the new bounds are invalid (same rules as the constructor).
        """
        with self._lock:
            self._core.resize(min_size, max_size, _monotonic())
            self._notify()
        self._flush()


def _wake(woken: list[Waiter[R]]) -> None:
    """Release the sleepers of the waiters the core woke (a creating caller has none)."""
    for waiter in woken:
        sleeper = cast("threading.Lock | None", waiter.handle)
        if sleeper is not None:
            sleeper.release()


def _sleeper() -> threading.Lock:
    """A lock that is already held: a waiting thread blocks on it until woken."""
    lock = threading.Lock()
    lock.acquire()
    return lock


def _housekeep(pool_ref: weakref.ref[Pool[R]]) -> None:
    """Background upkeep: refills, retirements, leak reports. Holds the pool weakly, so
    that an abandoned pool can still be collected (and warn that it was never closed)."""
    while True:
        pool = pool_ref()
        if pool is None:
            return
        with pool._lock:
            if pool._core.state is not OPEN:
                return
            pokes = pool._pokes
            now = _monotonic()
            leaked, next_due = pool._core.maintain(now)
        pool._report_leaks(leaked, now)
        pool._flush()
        if pool._refill():
            continue  # the next round schedules the retry, or makes the rest
        delay = min(next_due - _monotonic(), pool._tick, 60.0)
        changed = pool._changed
        with changed:
            if pool._pokes != pokes:
                continue  # asked for another round meanwhile (a close, a destruction...)
            del pool  # sleep without keeping the pool alive
            changed.wait(max(delay, 0.001))


def _keep_time(pool_ref: weakref.ref[Pool[R]]) -> None:
    """Background: wake the waiters whose deadline has passed, with their PoolTimeout,
    then sleep until the next deadline (or until a waiter with an earlier one arrives).
    Holds the pool weakly, as the housekeeper does. Started by the first wait with a
    deadline, so that a pool that is never short of resources runs no such thread."""
    while True:
        pool = pool_ref()
        if pool is None:
            return
        changed = pool._timer_changed
        with changed:  # the pool's lock
            core = pool._core
            if core.state is not OPEN:
                return  # closing woke every waiter already
            now = _monotonic()
            upcoming = core.expire(now, describe=False)  # each waiter describes its own
            if upcoming == _INF:
                # Nobody waits with a deadline. Look again after one acquire_timeout:
                # whoever starts waiting meanwhile with that timeout needs no earlier
                # round, and so need not call for one. A second at least: with a
                # shorter acquire_timeout (0 included) an idle pool would keep its
                # timekeeper busy, and early waiters call for their round anyway.
                upcoming = now + max(pool._wait_span, _IDLE_ROUND)
            pool._timer_at = upcoming
            woken, core.woken = core.woken, []
            del pool, core  # sleep without keeping the pool alive
            _wake(woken)
            del woken  # each waiter in it refers to the pool
            # At most a minute at a time, so that an abandoned pool's timekeeper ends.
            changed.wait(min(upcoming - now, 60.0))


@final
class _Acquire(Waiter[R]):
    """``with pool.acquire() as resource``: the context manager behind it.

    It is also the waiter the core queues when nothing is free (its waiter fields are
    only filled in then), which saves an allocation on the slow path.
    """

    __slots__ = ("_lease", "_pool", "_slot", "_timeout")

    def __init__(
        self,
        pool: Pool[R],
        timeout: float | None,
        site_code: CodeType | None,
        site_offset: int,
    ) -> None:
        self._pool = pool
        self._timeout = timeout
        self.site_code = site_code
        self.site_offset = site_offset

    def __enter__(self) -> R:
        pool = self._pool
        core = pool._core
        with pool._lock:
            now = _monotonic()
            if core.idle:
                taken = core.take(now)
                if taken is not None:
                    taken.owner = _current_thread()
                    taken.site_code = self.site_code
                    taken.site_offset = self.site_offset
                    self._slot = taken
                    self._lease = taken.lease
                    return taken.resource
            # The slow path. The core keeps the deadline; the timekeeper enforces it.
            timeout = self._timeout
            self.since = now
            self.deadline = now + (pool._wait_span if timeout is DEFAULT else pool._span(timeout))
            self.owner = _current_thread()
            self.handle = None
            self.grant = None
            self.cancelled = False
            grant = core.acquire(now, self)
            if grant is None:
                if self.deadline <= now:  # timeout=0: not a wait at all
                    core.cancel_wait(self, now, timed_out=True)
                    grant = TIMED_OUT
                else:
                    self.handle = _sleeper()
                    if self.deadline < pool._timer_at:
                        pool._call_timekeeper(self)
            busy = core.woken or core.doomed
        if busy:
            pool._flush()
        slot = pool._acquire_rest(self, grant)
        self._slot = slot
        self._lease = slot.lease
        return slot.resource

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        pool = self._pool
        if exc is None and pool._reset is None:
            core = pool._core
            with pool._lock:
                handed_to = core.give_back(self._slot, self._lease, _monotonic())
            if handed_to is not None:
                pool._carry_out(handed_to)
            return
        pool._give_back(self._slot, self._lease, exc)
