"""``AsyncPool``: the asyncio shell around the pool core.

The shell runs on one event loop and needs no lock: it calls the core, then carries out
what the core decided: it resolves the futures of the waiters the core woke, creates
resources in tasks of their own (so that a caller who gives up never abandons a half-made
resource), and destroys retired ones shielded from cancellation.

The fast path (an idle resource that needs no check) creates no task, no coroutine and
no future, and never yields to the event loop: ``async with`` awaits a future made once
per resource and already done, and the return awaits the pool's one done future. On that
path, and on a busy pool's (joining the line, a return handed straight to the longest
waiter), the context manager carries out the core's short ways itself (see "Short ways"
in ``_pool_core``); everything else goes through the core's methods.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import sys
import threading
import time
import weakref
from collections.abc import Awaitable, Callable
from types import CodeType, TracebackType
from typing import Final, TypeVar, cast, final

from ._aio import run_shielded
from ._pool_base import DEFAULT, PoolShell, logger
from ._pool_core import CLOSED, CREATE, OPEN, Slot, Waiter, _Create, timeout_or_none
from ._sites import user_code

__all__ = ["AsyncPool"]

R = TypeVar("R")

_monotonic: Final = time.monotonic
_get_running_loop: Final = asyncio.get_running_loop
# One C-level dict lookup instead of asyncio.current_task()'s Python wrapper: the fast
# path records which task holds each resource.
_current_tasks: Final[dict[asyncio.AbstractEventLoop | None, object] | None] = getattr(
    asyncio.tasks, "_current_tasks", None
)
_getframe: Final = sys._getframe
_new: Final = object.__new__
_thread_ident: Final = threading.get_ident


def _current_task_of(loop: asyncio.AbstractEventLoop | None) -> object:
    return asyncio.current_task()


_task_of: Final[Callable[[asyncio.AbstractEventLoop | None], object]] = (
    _current_task_of if _current_tasks is None else _current_tasks.get
)


class _CreationTimedOut(Exception):
    """Internal: a caller's deadline passed while its creation was still running."""


def _time_out_creation(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_exception(_CreationTimedOut())


@final
class AsyncPool(PoolShell[R]):
    """A fair, cancellation-safe pool of resources for asyncio.

    Args:
        create: makes a resource; sync or async.
        destroy: disposes of a resource; sync or async. Errors are logged, not raised.
        check: raises, or returns ``False``, if a resource is unusable (``None`` or true
            means fine); sync or async. Runs on borrow, only for resources idle longer
            than ``check_after`` seconds; a resource that fails is destroyed and the caller
            transparently gets another.
        reset: runs on every return (sync or async, e.g. roll back an open transaction);
            if it fails, the resource is destroyed. A sync ``reset`` may return an
            awaitable when it has work to do, so that clean resources cost no await.
        is_broken: given an exception raised inside ``acquire()``, says whether the
            resource must be destroyed instead of reused; sync or async (run shielded
            from cancellation, like ``reset`` after a failed block).
        min_size: resources kept ready (created on open, refilled in the background).
        max_size: the most resources in existence at once, counting those being created
            or destroyed.
        acquire_timeout: seconds ``acquire()`` waits before raising
            :class:`~tether.PoolTimeout`; ``None`` waits forever.
        max_lifetime: seconds after which a resource is retired (with up to 10 % jitter,
            so that resources made together do not all retire together).
        max_idle: seconds after which an idle resource above ``min_size`` is destroyed.
        max_uses: hand-outs after which a resource is retired.
        check_after: seconds of idleness after which ``check`` runs on borrow.
        leak_timeout: a resource held longer than this is reported once (a warning on the
            ``tether.pool`` logger, with its acquisition site).
        name: the pool's name in messages and statistics.
        retry_delay: ``(first, cap)`` seconds of the capped exponential backoff between
            creation attempts after a failure.

    Raises:
        TypeError: a callable argument is not callable, or a size is not an int.
        ValueError: ``max_size < 1``, ``min_size > max_size``, a negative timeout, and
            the like; the message names the parameter.
    """

    def __init__(
        self,
        create: Callable[[], R | Awaitable[R]],
        *,
        destroy: Callable[[R], object] | None = None,
        check: Callable[[R], object] | None = None,
        reset: Callable[[R], object] | None = None,
        is_broken: Callable[[BaseException], bool | Awaitable[bool]] | None = None,
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
        self._reset_after_error: Callable[[R], Awaitable[object] | object] | None = None
        """What runs instead of ``reset`` when the holder's block raised: for adapters
        that look harder then (asyncpg's, for a request that outlived the block)."""
        self._is_broken = is_broken
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread = 0
        """The thread the loop runs in: with a task of the loop running, it tells the
        fast path (cheaply) that the caller is on the pool's loop."""
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = float("inf")
        self._tasks: set[asyncio.Task[object]] = set()
        self._creations: set[asyncio.Task[object]] = set()
        self._housekeeper: asyncio.Task[None] | None = None
        self._poke: asyncio.Event | None = None
        self._drained: asyncio.Event | None = None
        # Both made on the pool's loop when it opens; neither is used before (no acquire
        # gets past _bound_loop() on a pool that never opened).
        self._new_future = cast("Callable[[], asyncio.Future[None]]", None)
        """The loop's ``create_future``, bound once: a waiter's future."""
        self._done = cast("asyncio.Future[None]", None)
        """A future that is already done (with ``None``): what a return that needs no
        waiting gives ``async with`` to await."""

    # ------------------------------------------------------------------ lifecycle

    async def open(self, *, wait: bool = True) -> None:
        """Start serving, and create ``min_size`` resources.

        Args:
            wait: wait until the first ``min_size`` resources exist. If creating one of
                them fails, the pool is closed and the error raised. With ``wait=False``
                they are created in the background (failures are retried).

        Raises:
            PoolClosed: the pool was already opened or closed.
        """
        self._core.open()
        self._serve_on(asyncio.get_running_loop())
        if not wait:
            self._refill()
            return
        creations = [self._start_creation(None) for _ in range(self._core.refill(_monotonic()))]
        if not creations:
            return
        await asyncio.wait(creations)
        # A creation cancelled from within create() was recorded as a failure: it fails
        # the open as much as any other.
        errors: list[BaseException] = []
        for creation in creations:
            if creation.cancelled():
                if self._core.state is OPEN:  # else close() cancelled it: no failure
                    errors.append(self._cancelled_within())
            elif (error := creation.exception()) is not None:
                errors.append(error)
        if errors:
            await self.close()
            raise errors[0]

    def _serve_on(self, loop: asyncio.AbstractEventLoop) -> None:
        """Bind the pool to ``loop`` and start its housekeeper there."""
        self._loop = loop
        self._loop_thread = _thread_ident()
        self._poke = asyncio.Event()
        self._drained = asyncio.Event()
        self._new_future = loop.create_future
        self._done = loop.create_future()
        self._done.set_result(None)
        self._housekeeper = loop.create_task(
            _housekeep(weakref.ref(self), self._poke), name=f"tether pool {self.name!r}"
        )

    async def close(self, timeout: float | None = None) -> None:
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
        if core.state is CLOSED:
            return
        if self._loop is not None:
            self._bound_loop()  # from another loop: refused before anything changes
        core.close()
        self._flush()
        housekeeper, self._housekeeper = self._housekeeper, None
        if housekeeper is not None:
            housekeeper.cancel()
        if timeout is not None and core.held_count:
            drained = self._drained
            assert drained is not None
            try:
                async with asyncio.timeout(timeout):
                    await drained.wait()
            except TimeoutError:
                core.reclaim_held()
                self._flush()
        if core.held_count:
            self._report_held_at_close()
        # Creations in flight are abandoned; destructions in flight finish first.
        for task in self._creations:
            task.cancel()
        while self._tasks:
            await asyncio.wait(list(self._tasks))

    async def __aenter__(self) -> AsyncPool[R]:
        await self.open()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await run_shielded(self.close())

    # ------------------------------------------------------------------ acquire

    def acquire(self, *, timeout: float | None = DEFAULT) -> _Acquire[R]:
        """Borrow a resource for the duration of an ``async with`` block.

        ``async with pool.acquire() as resource: ...`` returns the resource at the end of
        the block, whatever happens in it: an exception for which ``is_broken`` is true
        destroys it; a cancellation still returns it (``reset`` runs shielded).

        Args:
            timeout: seconds to wait for a resource; defaults to the pool's
                ``acquire_timeout``; ``None`` waits forever.

        Raises:
            PoolTimeout: nothing became free in time.
            PoolClosed: the pool is closed or not open.
            PoolUnavailable: the pool is failing to create resources right now.
            ValueError: ``timeout`` is negative.
            RuntimeError: called from another event loop than the pool's.
        """
        if timeout is not DEFAULT:
            self._resolve_timeout(timeout)  # refuse bad input here, even on the fast path
        # _Acquire(self, timeout) without its __init__: calling a Python __init__ would
        # cost an eighth of the whole fast path.
        acquire: _Acquire[R] = _new(_Acquire)
        acquire._pool = self
        acquire._timeout = timeout
        return acquire

    async def get(self, *, timeout: float | None = DEFAULT) -> R:
        """Borrow a resource; give it back with :meth:`put`. Prefer :meth:`acquire`.

        Raises:
            PoolTimeout: nothing became free in time.
            PoolClosed: the pool is closed or not open.
            PoolUnavailable: the pool is failing to create resources right now.
            ValueError: ``timeout`` is negative.
            RuntimeError: called from another event loop than the pool's.
        """
        if timeout is not DEFAULT:
            self._resolve_timeout(timeout)
        code, offset = user_code(1)
        return await _AcquireAt(self, timeout, code, offset).__aenter__()

    async def put(self, resource: R, *, broken: bool = False) -> None:
        """Give back a resource borrowed with :meth:`get`.

        Args:
            resource: the resource.
            broken: destroy it instead of reusing it.

        Raises:
            ValueError: the resource is not held from this pool (or was already returned);
                nothing in the pool changes.
            RuntimeError: called from another event loop than the pool's.
        """
        slot = self._core.slot_of(resource)
        if slot is not None and not slot.held:
            slot = None  # given back already: refused before reset can touch it
        if slot is None:
            if self.closed or self._core.inherited(resource):
                return  # (held across a fork: the parent's, let alone)
            raise ValueError(f"{resource!r} is not held from pool {self.name!r}")
        self._bound_loop()
        await self._give_back(slot, slot.lease, None, broken=broken)

    async def _acquire_rest(
        self, waiter: _Acquire[R], grant: Slot[R] | _Create | BaseException | None
    ) -> Slot[R]:
        """The rest of the slow path: check what was granted, create, or wait again."""
        core = self._core
        while True:
            if isinstance(grant, Slot):
                if self._check is None or not core.needs_check(grant, _monotonic()):
                    return grant
                now = _monotonic()
                if core.out_of_time_to_check(waiter, now):
                    self._flush()
                    raise core.timeout_error(now - waiter.since, now)
                if await self._passes_check(grant, waiter):
                    core.check_passed(grant, _monotonic())
                    return grant
                grant = core.check_failed(grant, waiter, _monotonic())
                self._flush()
                if grant is None:
                    grant = await self._wait(waiter)
            elif grant is CREATE:
                self._start_creation(waiter)
                grant = await self._wait_for_creation(waiter)
            else:
                assert isinstance(grant, BaseException)
                raise grant

    async def _wait(self, waiter: _Acquire[R]) -> Slot[R] | _Create | BaseException | None:
        """Wait in line until the core grants ``waiter`` something (or times it out)."""
        if waiter.grant is not None:
            return waiter.grant  # granted already, while the caller was still busy
        loop = self._loop
        assert loop is not None
        future: asyncio.Future[None] = loop.create_future()
        waiter.handle = future
        if waiter.deadline < self._timer_at:
            self._arm_timer(waiter.deadline)
        try:
            await future
        except BaseException:
            self._core.cancel_wait(waiter, _monotonic(), timed_out=False)
            self._flush()
            raise
        return waiter.grant

    async def _wait_for_creation(
        self, waiter: _Acquire[R]
    ) -> Slot[R] | _Create | BaseException | None:
        """Wait for the creation ``waiter`` started; giving up leaves it to the pool."""
        loop = self._loop
        assert loop is not None
        future: asyncio.Future[None] = loop.create_future()
        waiter.handle = future
        timer = None
        if waiter.deadline != float("inf"):
            delay = max(0.0, waiter.deadline - _monotonic())
            timer = loop.call_later(delay, _time_out_creation, future)
        try:
            await future
        except BaseException as error:
            now = _monotonic()
            timed_out = type(error) is _CreationTimedOut
            made = self._core.abandon_creation(waiter, now, timed_out=timed_out)
            if made is not None:
                return made
            self._flush()
            if timed_out:
                raise self._core.timeout_error(now - waiter.since, now) from None
            raise
        finally:
            if timer is not None:
                timer.cancel()
        return waiter.grant

    def _arm_timer(self, deadline: float) -> None:
        """One event-loop timer serves every waiter's deadline: the earliest one."""
        if self._timer is not None:
            self._timer.cancel()
        loop = self._loop
        assert loop is not None
        self._timer_at = deadline
        # Through a weak reference: a pending timer must not keep an abandoned pool
        # alive (and its ResourceWarning unsaid) until the deadline.
        delay = max(0.0, deadline - _monotonic())
        self._timer = loop.call_later(delay, _on_timer, weakref.ref(self))

    def _on_timer(self) -> None:
        self._timer = None
        self._timer_at = float("inf")
        upcoming = self._core.expire(_monotonic())
        self._flush()
        if upcoming != float("inf"):
            self._arm_timer(upcoming)

    def _ready(self, resource: R) -> asyncio.Future[R]:
        """A future already done with ``resource``: awaiting it gives the resource back
        at once, as often as asked."""
        loop = self._loop
        assert loop is not None
        future: asyncio.Future[R] = loop.create_future()
        future.set_result(resource)
        return future

    async def _passes_check(self, slot: Slot[R], waiter: _Acquire[R]) -> bool:
        """Run ``check`` on the slot granted to ``waiter``, within its deadline.

        Raises:
            PoolTimeout: the deadline passed during the check. The check was cut short,
                so the resource's state is unknown and it is destroyed; it did not fail
                (a healthy resource is not counted as a failed check, and the caller is
                not served another one after its deadline).
        """
        check = self._check
        assert check is not None
        try:
            deadline = _loop_deadline(self._core.check_deadline(waiter))
            async with asyncio.timeout_at(deadline) as scope:
                verdict = check(slot.resource)
                if inspect.isawaitable(verdict):
                    verdict = await verdict
        except TimeoutError:
            if not scope.expired():
                return False  # the check's own timeout: a failed check
            now = _monotonic()
            self._core.drop(slot, timed_out=True)
            self._flush()
            raise self._core.timeout_error(now - waiter.since, now) from None
        except Exception:  # noqa: BLE001 - a check that raises is a failed check
            return False
        except BaseException:
            # Cancelled mid-check: the resource's state is unknown, so it is destroyed.
            self._core.drop(slot)
            self._flush()
            raise
        return verdict is not False

    # ------------------------------------------------------------------ release

    def _drop(self, slot: Slot[R], lease: int) -> None:
        """Return a resource as broken: it is destroyed, and its room freed."""
        self._core.release(slot, lease, _monotonic(), broken=True)
        self._flush()

    async def _give_back(
        self,
        slot: Slot[R],
        lease: int,
        error: BaseException | None,
        *,
        broken: bool = False,
        pending: Awaitable[object] | None = None,
    ) -> None:
        """Reset and return a resource; ``error`` is what the holder's block raised.

        ``pending`` is what ``reset`` returned when the caller already ran it and it has
        work left to await.
        """
        if slot.lease != lease:
            # Given back already (or reclaimed by a close that timed out), and perhaps
            # handed to someone else since: not this caller's to reset. The core refuses
            # the return, or accepts a reclaimed one silently.
            self._core.release(slot, lease, _monotonic())
            return
        if error is not None and not broken and self._is_broken is not None:
            try:
                broken = await self._judge(error)
            except asyncio.CancelledError:
                # Cancelled again while an async is_broken ran: the verdict is unknown.
                self._drop(slot, lease)
                raise
        reset = self._reset
        if error is not None and self._reset_after_error is not None:
            reset = self._reset_after_error
        if reset is not None and not broken:
            try:
                if pending is None:
                    pending = reset(slot.resource)  # type: ignore[assignment]
                if pending is not None and inspect.isawaitable(pending):
                    if error is None:
                        await pending
                    else:
                        # The block failed or was cancelled: the reset must not be.
                        await run_shielded(_awaited(pending))
            except asyncio.CancelledError:
                self._drop(slot, lease)
                raise
            except Exception:  # noqa: BLE001 - a failed reset means a broken resource
                broken = True
        if broken:
            self._drop(slot, lease)
        else:
            self._carry_out(self._core.give_back(slot, lease, _monotonic()))

    def _carry_out(self, handed_to: Waiter[R] | bool | None) -> None:
        """Finish a :meth:`PoolCore.give_back`: wake the waiter it handed to, or flush."""
        if handed_to is True:
            self._flush()
        elif handed_to is not None:
            future: asyncio.Future[None] = handed_to.handle  # type: ignore[union-attr,assignment]
            if not future.done():  # else cancelled meanwhile: its task passes it on
                future.set_result(None)

    async def _judge(self, error: BaseException) -> bool:
        is_broken = self._is_broken
        assert is_broken is not None
        try:
            verdict: object = is_broken(error)
            if inspect.isawaitable(verdict):
                # The block failed or was cancelled: judging it must not be.
                verdict = await run_shielded(_awaited(verdict))
            return bool(verdict)
        except Exception:  # noqa: BLE001 - when in doubt, do not reuse the resource
            logger.warning("pool %r: is_broken raised; destroying the resource", self.name)
            return True

    # ------------------------------------------------------------------ carrying out

    def _flush(self) -> None:
        """Carry out the core's decisions: wake waiters, destroy retired resources.

        Destroying may free room that wakes another waiter, so this goes on until the core
        has nothing more to say.
        """
        core = self._core
        while core.woken or core.doomed:
            if core.woken:
                woken, core.woken = core.woken, []
                for waiter in woken:
                    # A waiter that never had to wait has no future (nor a handle at all).
                    future = getattr(waiter, "handle", None)
                    if future is not None and not future.done():
                        future.set_result(None)
            if core.doomed:
                doomed, core.doomed = core.doomed, []
                for slot in doomed:
                    self._start_destroy(slot)
                self._refill()  # back to min_size, for those already destroyed
        if core.state is not OPEN and not core.held_count and self._drained:
            self._drained.set()

    def _start_creation(self, waiter: Waiter[R] | None) -> asyncio.Task[object]:
        task = self._spawn(self._call_create())
        self._creations.add(task)
        task.add_done_callback(lambda done: self._on_created(done, waiter))
        return task

    async def _call_create(self) -> R:
        made = self._create()
        if inspect.isawaitable(made):
            return await made
        return made

    def _on_created(self, task: asyncio.Task[object], waiter: Waiter[R] | None) -> None:
        self._creations.discard(task)
        core = self._core
        if task.cancelled():
            if core.state is OPEN:
                # Not cancelled by close(): create() itself raised CancelledError (a
                # future it awaited was cancelled under it). A failed creation, like any
                # other; not a sign that the pool is closing.
                core.create_failed(self._cancelled_within(), _monotonic(), waiter)
                self._poke_housekeeper()
            else:
                core.creation_abandoned(waiter)
        elif (error := task.exception()) is not None:
            core.create_failed(error, _monotonic(), waiter)
            self._poke_housekeeper()
        else:
            core.created(task.result(), _monotonic(), waiter)  # type: ignore[arg-type]
            if core.size < core.config.min_size:
                self._poke_housekeeper()  # the pool may just have come back: refill it now
        self._flush()

    def _cancelled_within(self) -> RuntimeError:
        return RuntimeError(f"pool {self.name!r}: create() was cancelled from within")

    def _refill(self) -> None:
        for _ in range(self._core.refill(_monotonic())):
            self._start_creation(None)

    def _start_destroy(self, slot: Slot[R]) -> None:
        destroy = self._destroy
        if destroy is None:
            self._core.destroyed(slot, _monotonic())
            return
        try:
            pending = destroy(slot.resource)
        except Exception as error:  # noqa: BLE001 - reported, and the slot is gone anyway
            self._report_destroy_error(slot.resource, error)
            self._core.destroyed(slot, _monotonic())
            return
        if pending is None or not inspect.isawaitable(pending):
            self._core.destroyed(slot, _monotonic())
            return
        task = self._spawn(_awaited(pending))
        task.add_done_callback(lambda done: self._on_destroyed(done, slot))

    def _on_destroyed(self, task: asyncio.Task[object], slot: Slot[R]) -> None:
        if not task.cancelled() and (error := task.exception()) is not None:
            self._report_destroy_error(slot.resource, error)
        self._core.destroyed(slot, _monotonic())
        self._refill()
        self._flush()

    def _spawn(self, coro: Awaitable[object]) -> asyncio.Task[object]:
        loop = self._loop
        assert loop is not None
        task: asyncio.Task[object] = loop.create_task(coro)  # type: ignore[arg-type]
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def _poke_housekeeper(self) -> None:
        if self._poke is not None:
            self._poke.set()

    def _bound_loop(self) -> asyncio.AbstractEventLoop:
        loop = asyncio.get_running_loop()
        if loop is not self._loop:
            if self._loop is None:
                if self._core.state is OPEN:
                    # Inherited through fork(): the parent's loop does not run in this
                    # process, so serve on this one (with resources of this process).
                    self._serve_on(loop)
                    return loop
                raise self._core._closed_error()
            raise RuntimeError(
                f"pool {self.name!r} belongs to the event loop it was opened on and cannot "
                "be used from another one; open one pool per event loop"
            )
        return loop

    def _abandoned(self) -> None:
        # The housekeeper holds the pool weakly; left pending, it would be collected
        # with the pool and asyncio would report "Task was destroyed but it is pending".
        housekeeper, loop = self._housekeeper, self._loop
        if housekeeper is None or loop is None or housekeeper.done():
            return
        with contextlib.suppress(RuntimeError):  # its loop is closed: nothing can run it
            if _thread_ident() == self._loop_thread:
                housekeeper.cancel()
            else:
                loop.call_soon_threadsafe(housekeeper.cancel)

    def _forget_shell_state(self) -> None:
        self._tasks = set()
        self._creations = set()
        self._housekeeper = None
        self._poke = self._drained = None
        self._loop = None

    def resize(self, *, min_size: int | None = None, max_size: int | None = None) -> None:
        """Change ``min_size`` and/or ``max_size`` while the pool runs.

        Shrinking destroys idle resources above the new ``max_size`` now and held ones as
        they are returned; growing lets waiters create resources at once and refills to
        the new ``min_size`` in the background.

        Raises:
            ValueError: the new bounds are invalid (same rules as the constructor).
        """
        self._core.resize(min_size, max_size, _monotonic())
        if self._loop is not None:
            self._flush()
            self._refill()


async def _awaited(awaitable: Awaitable[object]) -> object:
    return await awaitable


def _on_timer(pool_ref: weakref.ref[AsyncPool[R]]) -> None:
    pool = pool_ref()
    if pool is not None:
        pool._on_timer()


def _loop_deadline(deadline: float) -> float | None:
    if deadline == float("inf"):
        return None
    return asyncio.get_running_loop().time() + (deadline - _monotonic())


async def _housekeep(pool_ref: weakref.ref[AsyncPool[R]], poke: asyncio.Event) -> None:
    """Background upkeep: refills, retirements, leak reports. Holds the pool weakly, so
    that an abandoned pool can still be collected (and warn that it was never closed)."""
    while True:
        pool = pool_ref()
        if pool is None or pool._core.state is not OPEN:
            return
        now = _monotonic()
        leaked, next_due = pool._core.maintain(now)
        pool._report_leaks(leaked, now)
        pool._refill()
        pool._flush()
        delay = min(next_due - now, pool._tick)
        del pool
        poke.clear()
        try:
            async with asyncio.timeout(None if delay == float("inf") else max(delay, 0.001)):
                await poke.wait()
        except TimeoutError:
            pass


class _Acquire(Waiter[R]):
    """``async with pool.acquire() as resource``: the context manager behind it.

    It is also the waiter the core queues when nothing is free (its waiter fields are
    only filled in then), which saves an allocation on the slow path.
    """

    __slots__ = ("_lease", "_pool", "_slot", "_timeout")

    def __init__(self, pool: AsyncPool[R], timeout: float | None) -> None:
        self._pool = pool
        self._timeout = timeout

    def __aenter__(self) -> Awaitable[R]:
        # A plain function, not a coroutine: on the fast path there is nothing to wait
        # for, so it returns the slot's ready future (done, with the resource as its
        # result), and `async with` gets the resource without a coroutine being made.
        pool = self._pool
        core = pool._core
        now = _monotonic()
        # Where the user's `async with` is: its code object and instruction offset are
        # enough to find the line later, when somebody asks (reading the line number now
        # would cost more than the rest of the fast path).
        frame = _getframe(1)
        # Only a task of the pool's own loop, in the loop's thread, may be served here;
        # anywhere else _bound_loop() says what is wrong.
        owner = _task_of(pool._loop)
        if owner is None or _thread_ident() != pool._loop_thread:
            pool._bound_loop()
            owner = _task_of(pool._loop)
        idle = core.idle
        if idle and now < idle[-1].fresh_until:
            # PoolCore.take(), written out (see "Short ways" in _pool_core): a call would
            # cost a fifth of this path.
            slot = idle.pop()
            self._lease = slot.lease = slot.lease + 1
            slot.acquired_at = now
            slot.owner = owner
            slot.site_code = frame.f_code
            slot.site_offset = frame.f_lasti
            self._slot = slot
            ready = slot.handle
            if ready is None:
                ready = slot.handle = pool._ready(slot.resource)
            return ready  # type: ignore[return-value]
        self.site_code = frame.f_code
        self.site_offset = frame.f_lasti
        self.owner = owner
        return self._queue(now)

    async def _queue(self, now: float) -> R:
        """The slow path. The common case (queue, then be handed a resource that needs
        no check) is written out here, without a further coroutine."""
        pool = self._pool
        core = pool._core
        timeout = self._timeout
        self.deadline = now + (pool._wait_span if timeout is DEFAULT else pool._span(timeout))
        self.since = now
        self.grant = None
        self.cancelled = False
        if core._waiting and core.state is OPEN:
            # PoolCore.acquire()'s way into the line behind those already waiting,
            # written out (see "Short ways" in _pool_core): the hot path of a busy pool.
            core._waiters.append(self)
            core._waiting += 1
            deadline = self.deadline
            if deadline < core._last_deadline:
                core._out_of_order(self)
            else:
                core._last_deadline = deadline
            grant = None
        else:
            grant = core.acquire(now, self)
        if grant is None:
            future = pool._new_future()
            self.handle = future
            if self.deadline < pool._timer_at:
                pool._arm_timer(self.deadline)
        if core.woken or core.doomed:
            # Carried out before waiting: a queued caller may be waiting for the room
            # that an expired resource the core just retired leaves (which may wake it at
            # once, hence its future first).
            pool._flush()
        if grant is None:
            try:
                await future
            except BaseException:
                core.cancel_wait(self, _monotonic(), timed_out=False)
                pool._flush()
                raise
            grant = self.grant
        if grant.__class__ is Slot and not grant.must_check:
            slot = grant  # the core decided it needs no check
        else:
            slot = await pool._acquire_rest(self, grant)
        self._slot = slot
        self._lease = slot.lease
        return slot.resource

    def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> Awaitable[None]:
        # A plain function too: a return that needs no waiting hands back the pool's
        # done future instead of making a coroutine.
        pool = self._pool
        if exc is None:
            slot = self._slot
            lease = self._lease
            reset = pool._reset
            if reset is not None and slot.lease == lease:
                # A sync reset with nothing to do (a clean database connection) returns
                # None: no await, no round trip, and the return keeps to the short way.
                try:
                    pending = reset(slot.resource)
                except Exception:  # noqa: BLE001 - a failed reset means a broken resource
                    pool._drop(slot, lease)
                    return pool._done
                except BaseException:
                    pool._drop(slot, lease)
                    raise
                if pending is not None and inspect.isawaitable(pending):
                    return pool._give_back(slot, lease, None, pending=pending)
            core = pool._core
            now = _monotonic()
            if slot.lease == lease and now < slot.fast_until:
                if core.steady:
                    # PoolCore.give_back()'s short way back to the idle stack, written
                    # out (see "Short ways").
                    slot.lease = lease + 1
                    core.holds.append(now - slot.acquired_at)
                    slot.idle_since = now
                    due = now + core.check_after
                    slot.fresh_until = due if due < slot.expires_at else slot.expires_at
                    core.idle.append(slot)
                    return pool._done
                if core._waiting and core._smooth:
                    # Its short way straight to the longest waiter, written out too: the
                    # hot path of a busy pool.
                    waiters = core._waiters
                    waiter = waiters.popleft()
                    while waiter.cancelled or waiter.grant is not None:
                        waiter = waiters.popleft()  # a live one exists: _waiting > 0
                    core._waiting -= 1
                    if not core._waiting:
                        core._restabilize()
                    core.holds.append(now - slot.acquired_at)
                    slot.lease = lease + 2  # the end of one lease, the start of the next
                    slot.idle_since = slot.acquired_at = now
                    slot.owner = waiter.owner
                    slot.site_code = waiter.site_code
                    slot.site_offset = waiter.site_offset
                    waiter.grant = slot
                    core._slow += 1
                    core._waits.append(now - waiter.since)
                    future: asyncio.Future[None] = waiter.handle  # type: ignore[assignment]
                    if not future.done():  # else cancelled: its task passes it on
                        future.set_result(None)
                    return pool._done
            # Neither short way: what PoolCore.give_back() would do here is release().
            core.release(slot, lease, now)
            if core.woken or core.doomed:
                pool._flush()
            return pool._done
        return pool._give_back(self._slot, self._lease, exc)


@final
class _AcquireAt(_Acquire[R]):
    """An acquire made by tether on the user's behalf (``get()``, a pool transaction):
    the holder's site is the user's line, given here, not tether's own."""

    __slots__ = ("_at",)

    def __init__(
        self,
        pool: AsyncPool[R],
        timeout: float | None,
        site_code: CodeType | None,
        site_offset: int,
    ) -> None:
        super().__init__(pool, timeout)
        self._at = (site_code, site_offset)

    async def __aenter__(self) -> R:
        resource = await super().__aenter__()
        slot = self._slot
        slot.site_code, slot.site_offset = self._at
        return resource
