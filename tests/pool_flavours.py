"""One async face over both pool shells, so that one behaviour suite runs against each.

A test takes the ``flavour`` fixture (defined in ``conftest.py``, which picks each of
:data:`FLAVOURS` in turn) and talks to the pool only through it:

* ``flavour.make(create, **options)`` builds a :class:`tether.Pool` (``"threads"``) or a
  :class:`tether.AsyncPool` (``"asyncio"`` with async callables, ``"asyncio-sync"`` with
  plain ones);
* ``await flavour.run(lambda: pool.get())`` calls the pool the way its users do: on
  threads, in a real thread of its own (never blocking the event loop the test runs on);
  on asyncio, in the calling task, awaiting what it returns;
* ``async with flavour.using(pool.acquire()) as resource`` enters and leaves a context
  manager of either kind (also ``flavour.using(pool)`` to open and close a pool). Since
  ``acquire()`` notes its caller's line when called, the holder's site is then the
  test's own line on both shells;
* ``flavour.spawn(caller, name)`` starts a concurrent caller: an asyncio task whose pool
  calls run, for ``Pool``, in threads named ``name``;
* ``flavour.hook(fn, gate=...)`` turns a plain function into the flavour's kind of
  callable (an ``async def`` on asyncio), optionally held at a :class:`Gate` until the test
  opens it.

:class:`Things` is a resource factory that remembers what it made and what happened to
each resource, so tests can check that nothing is lost, held twice or destroyed twice.
"""

from __future__ import annotations

import asyncio
import contextvars
import inspect
import itertools
import os
import select
import signal
import threading
import time
import warnings
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from typing import Any

import pytest

import tether

GUARD = 20.0
"""Seconds after which a wait that should have ended fails the test (never reached when
things work; generous because the machines running the suite are small and busy)."""

_caller: contextvars.ContextVar[str] = contextvars.ContextVar("caller", default="test-body")


# ---------------------------------------------------------------------------- helpers


async def eventually(predicate: Callable[[], object], what: str, timeout: float = GUARD) -> None:
    """Wait until ``predicate()`` is true, polling; fail the test after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"gave up waiting for {what}")
        await asyncio.sleep(0.002)


@asynccontextmanager
async def within(seconds: float = GUARD) -> AsyncIterator[None]:
    """Fail the test (instead of hanging) if the block takes longer than ``seconds``."""
    try:
        async with asyncio.timeout(seconds):
            yield
    except TimeoutError:
        pytest.fail(f"still not done after {seconds}s")


@dataclass(eq=False)
class Thing:
    """A resource. It knows who holds it, so a double hand-out is caught in the act."""

    number: int
    holder: str | None = None
    destroyed: int = 0
    resets: int = 0
    checks: int = 0
    healthy: bool = True

    def take(self, who: str) -> None:
        """Mark the resource as held by ``who``; it must be free and alive."""
        assert self.holder is None, f"{self} handed to {who} while held by {self.holder}"
        assert not self.destroyed, f"{self} handed out after it was destroyed"
        self.holder = who

    def drop(self) -> None:
        self.holder = None

    def __repr__(self) -> str:
        return f"<Thing {self.number}>"


@dataclass
class Things:
    """Makes :class:`Thing` resources and records every call the pool makes.

    ``failures`` is a queue of exceptions: each ``create`` raises the next one, if any.
    """

    made: list[Thing] = field(default_factory=list)
    failures: list[BaseException] = field(default_factory=list)
    alive: int = 0
    most_alive: int = 0
    _numbers: Iterator[int] = field(default_factory=lambda: itertools.count(1))
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def create(self) -> Thing:
        with self._lock:
            self.alive += 1
            self.most_alive = max(self.most_alive, self.alive)
            if self.failures:
                self.alive -= 1
                raise self.failures.pop(0)
            thing = Thing(next(self._numbers))
            self.made.append(thing)
            return thing

    def destroy(self, thing: Thing) -> None:
        with self._lock:
            thing.destroyed += 1
            self.alive -= 1

    def check(self, thing: Thing) -> bool:
        thing.checks += 1
        return thing.healthy

    def reset(self, thing: Thing) -> None:
        thing.resets += 1

    @property
    def destroyed(self) -> list[Thing]:
        return [t for t in self.made if t.destroyed]

    def assert_all_destroyed_once(self) -> None:
        assert [(t, 1) for t in self.made] == [(t, t.destroyed) for t in self.made]


# ---------------------------------------------------------------------------- gates


class Gate:
    """Holds the callables that pass through it until the test opens it.

    Threads and tasks may both pass; the test opens it from the event loop's thread.
    """

    def __init__(self) -> None:
        self.arrivals = 0
        self._arriving = threading.Lock()
        self._opened = threading.Event()
        self._waiting_tasks: list[asyncio.Future[None]] = []

    def open(self) -> None:
        self._opened.set()
        for waiting in self._waiting_tasks:
            if not waiting.done():
                waiting.set_result(None)

    async def reached(self, count: int = 1) -> None:
        """Wait until ``count`` callers have arrived at the gate."""
        await eventually(lambda: self.arrivals >= count, f"{count} arrival(s) at the gate")

    def _arrive(self) -> None:
        with self._arriving:
            self.arrivals += 1

    def pass_sync(self) -> None:
        self._arrive()
        if not self._opened.wait(GUARD):
            raise AssertionError("the gate was never opened")

    async def pass_async(self) -> None:
        self._arrive()
        if self._opened.is_set():
            return
        waiting = asyncio.get_running_loop().create_future()
        self._waiting_tasks.append(waiting)
        async with asyncio.timeout(GUARD):
            await waiting


# ---------------------------------------------------------------------------- flavours


class Flavour:
    """The uniform async API over one pool shell; see the module docstring."""

    name = ""
    pool_type: type[Any] = object

    def __init__(self) -> None:
        self._pools: list[Any] = []
        self._callers: list[asyncio.Task[Any]] = []

    def make(self, create: Callable[[], Any], **options: Any) -> Any:
        """A new, unopened pool of this flavour."""
        pool = self.pool_type(create, **options)
        self._pools.append(pool)
        return pool

    def hook(self, fn: Callable[..., Any], gate: Gate | None = None) -> Callable[..., Any]:
        raise NotImplementedError

    async def run(self, call: Callable[[], Any]) -> Any:
        raise NotImplementedError

    def using(self, manager: Any) -> AbstractAsyncContextManager[Any]:
        raise NotImplementedError

    async def open(self, pool: Any, **options: Any) -> None:
        await self.run(lambda: pool.open(**options))

    async def close(self, pool: Any, timeout: float | None = None) -> None:
        await self.run(lambda: pool.close(timeout))

    def acquire(self, pool: Any, **options: Any) -> AbstractAsyncContextManager[Any]:
        return self.using(pool.acquire(**options))

    async def get(self, pool: Any, **options: Any) -> Any:
        return await self.run(lambda: pool.get(**options))

    async def put(self, pool: Any, resource: Any, **options: Any) -> None:
        await self.run(lambda: pool.put(resource, **options))

    def spawn(self, caller: Callable[[], Awaitable[Any]], name: str) -> asyncio.Task[Any]:
        """Start ``caller`` concurrently, as the caller ``name`` (task or thread name)."""

        async def as_caller() -> Any:
            _caller.set(name)
            return await caller()

        task = asyncio.get_running_loop().create_task(as_caller(), name=name)
        self._callers.append(task)
        return task

    async def aclose(self) -> None:
        """End of test: close what the test left open, and let every caller finish."""
        for pool in self._pools:
            if not pool.closed:
                await self.close(pool)
        async with within():
            for caller in self._callers:
                if not caller.done():
                    await asyncio.wait([caller])
        self._pools.clear()


class ThreadFlavour(Flavour):
    """``tether.Pool``: each pool call runs in a real thread named after its caller."""

    name = "threads"
    pool_type = tether.Pool

    def __init__(self) -> None:
        super().__init__()
        self._threads: list[threading.Thread] = []

    def hook(self, fn: Callable[..., Any], gate: Gate | None = None) -> Callable[..., Any]:
        if gate is None:
            return fn

        def gated(*args: Any) -> Any:
            gate.pass_sync()
            return fn(*args)

        return gated

    async def run(self, call: Callable[[], Any]) -> Any:
        loop = asyncio.get_running_loop()
        done: asyncio.Future[Any] = loop.create_future()

        def settle(value: Any, error: BaseException | None) -> None:
            if done.done():
                return
            if error is None:
                done.set_result(value)
            else:
                done.set_exception(error)

        calls = [call]

        def in_thread() -> None:
            work = calls.pop()
            try:
                outcome: tuple[Any, BaseException | None] = (work(), None)
            except BaseException as error:
                outcome = (None, error)
            del work  # let go of what the call refers to before the caller resumes
            loop.call_soon_threadsafe(settle, *outcome)

        thread = threading.Thread(target=in_thread, name=_caller.get(), daemon=True)
        self._threads.append(thread)
        thread.start()
        return await done

    @asynccontextmanager
    async def _using(self, manager: Any) -> AsyncIterator[Any]:
        resource = await self.run(manager.__enter__)
        try:
            yield resource
        except BaseException as error:
            details = (type(error), error, error.__traceback__)
            if not await self.run(lambda: manager.__exit__(*details)):
                raise
        else:
            await self.run(lambda: manager.__exit__(None, None, None))

    def using(self, manager: Any) -> AbstractAsyncContextManager[Any]:
        return self._using(manager)

    async def aclose(self) -> None:
        await super().aclose()
        async with within():
            await asyncio.to_thread(_join_all, self._threads)


def _join_all(threads: list[threading.Thread]) -> None:
    for thread in threads:
        thread.join(GUARD)


class AsyncioFlavour(Flavour):
    """``tether.AsyncPool`` with async callables (each one really suspends)."""

    name = "asyncio"
    pool_type = tether.AsyncPool
    async_hooks = True

    def hook(self, fn: Callable[..., Any], gate: Gate | None = None) -> Callable[..., Any]:
        if gate is None and not self.async_hooks:
            return fn

        async def hooked(*args: Any) -> Any:
            await asyncio.sleep(0)  # suspend, as real I/O would
            if gate is not None:
                await gate.pass_async()
            return fn(*args)

        return hooked

    async def run(self, call: Callable[[], Any]) -> Any:
        value = call()
        if inspect.isawaitable(value):
            value = await value
        return value

    def using(self, manager: Any) -> AbstractAsyncContextManager[Any]:
        return manager  # type: ignore[no-any-return]


class AsyncioSyncHooksFlavour(AsyncioFlavour):
    """``tether.AsyncPool`` given plain (sync) callables."""

    name = "asyncio-sync"
    async_hooks = False


FLAVOURS: dict[str, type[Flavour]] = {
    f.name: f for f in (ThreadFlavour, AsyncioFlavour, AsyncioSyncHooksFlavour)
}


def in_forked_child(work: Callable[[], bytes]) -> bytes:
    """Run ``work`` in a forked child, and return what it reports (or the repr of what it
    raised). The child leaves with ``os._exit`` without running anything else; one that
    has reported nothing after ``GUARD`` seconds is killed, and ``b"the child hung"``
    returned."""
    read_end, write_end = os.pipe()
    with warnings.catch_warnings():
        # Python 3.12+ warns about fork() in a process with threads; forking such a
        # process is exactly what is being tested.
        warnings.filterwarnings("ignore", "This process .* is multi-threaded", DeprecationWarning)
        child = os.fork()
    if child == 0:  # pragma: no cover - runs in the child, which leaves with _exit
        report = b"nothing"
        try:
            report = work()
        except BaseException as error:
            report = repr(error).encode()
        finally:
            os.write(write_end, report)
            os._exit(0)
    os.close(write_end)
    try:
        ready, _, _ = select.select([read_end], [], [], GUARD)
        return os.read(read_end, 4096) if ready else b"the child hung"
    finally:
        if not ready:
            os.kill(child, signal.SIGKILL)
        os.waitpid(child, 0)
        os.close(read_end)


@contextmanager
def ctrl_c_when(ready: Callable[[], bool], then: Callable[[], None]) -> Iterator[None]:
    """Press Ctrl-C (a real SIGINT to the main thread) as soon as ``ready()`` says so, then
    call ``then()`` to let the main thread's wait end.

    (The main thread runs the signal's handler on its way back to Python, once its wait
    has ended. The signal is sent again every 50 ms until it has, as a user would press
    Ctrl-C again; only the first one raises KeyboardInterrupt.)
    """
    assert threading.current_thread() is threading.main_thread()
    interrupted = threading.Event()

    def on_sigint(signum: int, frame: object) -> None:
        if not interrupted.is_set():
            interrupted.set()
            raise KeyboardInterrupt

    def press() -> None:
        deadline = time.monotonic() + GUARD
        while not ready() and time.monotonic() < deadline:
            time.sleep(0.001)
        main = threading.main_thread().ident or 0
        signal.pthread_kill(main, signal.SIGINT)
        then()
        while not interrupted.wait(0.05) and time.monotonic() < deadline:
            signal.pthread_kill(main, signal.SIGINT)

    previous = signal.signal(signal.SIGINT, on_sigint)
    presser = threading.Thread(target=press)
    try:
        presser.start()
        yield
    finally:
        presser.join(GUARD)
        signal.signal(signal.SIGINT, previous)
