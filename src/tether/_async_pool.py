"""``AsyncPool``: the asyncio shell around the pool core.

The shell runs on one event loop and needs no lock: it calls the core, then carries out
what the core decided: it resolves the futures of the waiters the core woke, creates
resources in tasks of their own (so that a caller who gives up never abandons a half-made
resource), and destroys retired ones shielded from cancellation.

The fast path (an idle resource that needs no check) touches no future, creates no task
and never yields to the event loop.
"""

from __future__ import annotations

import asyncio
import inspect
import sys
import threading
import time
import weakref
from collections.abc import Awaitable, Callable
from types import CodeType, TracebackType
from typing import Final, Generic, TypeVar, cast, final

from ._aio import run_shielded
from ._pool_base import DEFAULT, PoolShell, logger
from ._pool_core import CLOSED, CREATE, OPEN, Slot, Waiter, _Create, timeout_or_none
from ._sites import user_code

__all__ = ["AsyncPool"]

R = TypeVar("R")

_monotonic: Final = time.monotonic
# One C-level dict lookup instead of asyncio.current_task()'s Python wrapper: the fast
# path records which task holds each resource.
_current_tasks: Final[dict[asyncio.AbstractEventLoop | None, object] | None] = getattr(
    asyncio.tasks, "_current_tasks", None
)
_getframe: Final = sys._getframe
_thread_ident: Final = threading.get_ident


def _current_task_of(loop: asyncio.AbstractEventLoop | None) -> object:
    return asyncio.current_task()


_task_of: Final[Callable[[asyncio.AbstractEventLoop | None], object]] = (
    _current_task_of if _current_tasks is None else _current_tasks.get
)


class _TimedOut(Exception):
    """Internal: set on a waiter's future when its deadline passes."""


def _on_deadline(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_exception(_TimedOut())


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
        self._is_broken = is_broken
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread = 0
        """The thread the loop runs in: with a task of the loop running, it tells the
        fast path (cheaply) that the caller is on the pool's loop."""
        self._tasks: set[asyncio.Task[object]] = set()
        self._creations: set[asyncio.Task[object]] = set()
        self._housekeeper: asyncio.Task[None] | None = None
        self._poke: asyncio.Event | None = None
        self._drained: asyncio.Event | None = None

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
        errors = [c.exception() for c in creations if not c.cancelled() and c.exception()]
        if errors:
            await self.close()
            raise errors[0]  # type: ignore[misc]

    def _serve_on(self, loop: asyncio.AbstractEventLoop) -> None:
        """Bind the pool to ``loop`` and start its housekeeper there."""
        self._loop = loop
        self._loop_thread = _thread_ident()
        self._poke = asyncio.Event()
        self._drained = asyncio.Event()
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
        # The caller's code object and instruction offset are enough to find the line
        # later, when somebody asks; reading the line number now would cost more than the
        # rest of the fast path.
        if timeout is not DEFAULT:
            self._resolve_timeout(timeout)  # refuse bad input here, even on the fast path
        frame = _getframe(1)
        return _Acquire(self, timeout, frame.f_code, frame.f_lasti)

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
        owner = _task_of(self._loop)
        if owner is not None and _thread_ident() == self._loop_thread:
            slot = self._core.take(_monotonic())
        else:
            slot = None
        if slot is None:
            slot = await self._acquire(timeout, code, offset)
        else:
            slot.owner = owner
            slot.site_code = code
            slot.site_offset = offset
        return slot.resource

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
            if self.closed:
                return
            raise ValueError(f"{resource!r} is not held from pool {self.name!r}")
        self._bound_loop()
        await self._give_back(slot, slot.lease, None, broken=broken)

    async def _acquire(
        self, timeout: float | None, site_code: CodeType | None, site_offset: int
    ) -> Slot[R]:
        """The slow path: check, create, or wait in line."""
        loop = self._bound_loop()
        now = _monotonic()
        wait_for = self._resolve_timeout(timeout)
        deadline = float("inf") if wait_for is None else now + wait_for
        core = self._core
        waiter: Waiter[R] = Waiter(None, asyncio.current_task(), site_code, site_offset, now)
        grant = core.acquire(now, waiter)
        self._flush()
        while True:
            if grant is None:
                grant = await self._wait(loop, waiter, deadline, creating=False)
            if isinstance(grant, Slot):
                if self._check is not None and core.needs_check(grant, _monotonic()):
                    if await self._passes_check(grant, deadline):
                        core.check_passed(grant, _monotonic())
                        return grant
                    grant = core.check_failed(grant, waiter, _monotonic())
                    self._flush()
                    continue
                return grant
            if grant is CREATE:
                self._start_creation(waiter)
                grant = await self._wait(loop, waiter, deadline, creating=True)
                if isinstance(grant, Slot):
                    return grant
            assert isinstance(grant, BaseException)
            raise grant

    async def _wait(
        self,
        loop: asyncio.AbstractEventLoop,
        waiter: Waiter[R],
        deadline: float,
        *,
        creating: bool,
    ) -> Slot[R] | _Create | BaseException | None:
        """Wait until the core (or a creation) grants ``waiter`` something, or give up."""
        if waiter.grant is not None and not creating:
            return waiter.grant
        future: asyncio.Future[None] = loop.create_future()
        waiter.handle = future
        timer = None
        if deadline != float("inf"):
            timer = loop.call_later(max(0.0, deadline - _monotonic()), _on_deadline, future)
        try:
            await future
        except _TimedOut:
            now = _monotonic()
            if creating:
                self._core.abandon_creation(waiter, timed_out=True)
            else:
                self._core.cancel_wait(waiter, now, timed_out=True)
            self._flush()
            raise self._core.timeout_error(now - waiter.since, now) from None
        except BaseException:
            if creating:
                self._core.abandon_creation(waiter, timed_out=False)
            else:
                self._core.cancel_wait(waiter, _monotonic(), timed_out=False)
            self._flush()
            raise
        finally:
            if timer is not None:
                timer.cancel()
        return waiter.grant

    async def _passes_check(self, slot: Slot[R], deadline: float) -> bool:
        check = self._check
        assert check is not None
        try:
            async with asyncio.timeout_at(_loop_deadline(deadline)):
                verdict = check(slot.resource)
                if inspect.isawaitable(verdict):
                    verdict = await verdict
        except Exception:  # noqa: BLE001 - a check that raises is a failed check
            return False
        except BaseException:
            # Cancelled mid-check: the resource's state is unknown, so it is destroyed.
            self._core.drop(slot)
            self._flush()
            raise
        return verdict is not False

    # ------------------------------------------------------------------ release

    async def _give_back(
        self, slot: Slot[R], lease: int, error: BaseException | None, *, broken: bool = False
    ) -> None:
        """Reset and return a resource; ``error`` is what the holder's block raised."""
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
                self._core.release(slot, lease, _monotonic(), broken=True)
                self._flush()
                raise
        reset = self._reset
        if reset is not None and not broken:
            try:
                pending = reset(slot.resource)
                if pending is not None and inspect.isawaitable(pending):
                    if error is None:
                        await pending
                    else:
                        # The block failed or was cancelled: the reset must not be.
                        await run_shielded(_awaited(pending))
            except asyncio.CancelledError:
                self._core.release(slot, lease, _monotonic(), broken=True)
                self._flush()
                raise
            except Exception:  # noqa: BLE001 - a failed reset means a broken resource
                broken = True
        self._core.release(slot, lease, _monotonic(), broken=broken)
        self._flush()

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
        """Carry out the core's decisions: wake waiters, destroy retired resources."""
        core = self._core
        if core.woken:
            woken, core.woken = core.woken, []
            for waiter in woken:
                future = cast("asyncio.Future[None] | None", waiter.handle)
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
            core.creation_abandoned(waiter)
        elif (error := task.exception()) is not None:
            core.create_failed(error, _monotonic(), waiter)
            self._poke_housekeeper()
        else:
            core.created(task.result(), _monotonic(), waiter)  # type: ignore[arg-type]
        self._flush()

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


@final
class _Acquire(Generic[R]):
    """``async with pool.acquire() as resource``: the context manager behind it."""

    __slots__ = ("_lease", "_pool", "_site_code", "_site_offset", "_slot", "_timeout")

    def __init__(
        self,
        pool: AsyncPool[R],
        timeout: float | None,
        site_code: CodeType | None,
        site_offset: int,
    ) -> None:
        self._pool = pool
        self._timeout = timeout
        self._site_code = site_code
        self._site_offset = site_offset

    async def __aenter__(self) -> R:
        pool = self._pool
        owner = _task_of(pool._loop)
        # Only a task of the pool's own loop, in the loop's thread, may take the fast
        # path; anywhere else the slow path says what is wrong.
        if owner is not None and _thread_ident() == pool._loop_thread:
            slot = pool._core.take(_monotonic())
        else:
            slot = None
        if slot is None:
            slot = await pool._acquire(self._timeout, self._site_code, self._site_offset)
        else:
            slot.owner = owner
            slot.site_code = self._site_code
            slot.site_offset = self._site_offset
        self._slot = slot
        self._lease = slot.lease
        return slot.resource

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        pool = self._pool
        if exc is None and pool._reset is None:
            core = pool._core
            core.give_back(self._slot, self._lease, _monotonic())
            if core.woken or core.doomed:
                pool._flush()
            return
        await pool._give_back(self._slot, self._lease, exc)
