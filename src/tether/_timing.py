"""``timed``: how long a block or a call took, logged with its outcome.

One handle, :class:`Timer`, serves as a context manager (``with timed("load") as t:``) and
as a decorator (``@timed("load")``), for sync and async functions and generators alike.
The clock is read twice per run (start and end) plus whenever ``elapsed`` is asked for
during the run; nothing is formatted unless the record will actually be logged.
"""

from __future__ import annotations

import functools
import inspect
import logging
import math
from collections.abc import AsyncGenerator, Callable, Coroutine, Generator
from time import perf_counter
from types import TracebackType
from typing import Any, Final, ParamSpec, Self, TypeVar, cast, final

from ._logs import AnyLogger, LogTarget

__all__ = ["Timer", "timed"]

P = ParamSpec("P")
R = TypeVar("R")

DEFAULT_LOGGER: Final = "tether.timing"


def timed(
    name: str,
    *,
    logger: AnyLogger | None = None,
    level: int = logging.INFO,
    threshold: float | None = None,
) -> Timer:
    """Time a block, or each call of a function, and log how long it took.

    As a context manager the handle's ``elapsed`` is the running time inside the block
    and the final time after it::

        with tether.timed("load users") as timer:
            rows = load()
        print(timer.elapsed, timer.ok)

    As a decorator (``@tether.timed("load users")``, on a sync or ``async def`` function)
    every call is timed and logged on its own. On a generator function (``def`` or
    ``async def`` with ``yield``) each run is the whole iteration, from the first value
    asked for until the generator is exhausted, raises or is closed, the consumer's time
    between values included; a generator closed before its end (a ``break`` out of the
    loop) counts as a success, one never iterated is not logged.

    Each run logs its name, duration in seconds and whether it succeeded. A stdlib logger
    gets a message such as ``load users: ok in 12.3 ms`` (the facts are also in the
    record's ``extra``: ``timer``, ``elapsed``, ``ok`` and ``error``); a structlog logger
    gets the event ``"timed"`` with the fields ``timer``, ``elapsed``, ``ok`` and, after a
    failure, ``error`` (the exception's type name). Exceptions propagate unchanged.

    Args:
        name: what is being timed, for the log.
        logger: a ``logging.Logger``/``LoggerAdapter`` or a structlog logger; default the
            stdlib logger ``tether.timing``.
        level: the ``logging`` level to log at.
        threshold: seconds; when given, only runs that took at least this long are logged.

    Returns:
        The :class:`Timer` handle.

    Raises:
        TypeError: ``name`` is not a str, ``level`` not an int, ``threshold`` not a number,
            or ``logger`` not a logger.
        ValueError: ``threshold`` is negative or NaN.
    """
    return Timer(name, logger=logger, level=level, threshold=threshold)


@final
class Timer:
    """The handle of :func:`timed`: a context manager and a decorator that time and log.

    A timer is entered by one ``with`` block at a time; using it as a decorator creates a
    fresh timer for every call, so decorated functions may run concurrently.
    """

    __slots__ = ("_elapsed", "_level", "_name", "_ok", "_started", "_target", "_threshold")

    def __init__(
        self,
        name: str,
        *,
        logger: AnyLogger | None = None,
        level: int = logging.INFO,
        threshold: float | None = None,
    ) -> None:
        if not isinstance(name, str):
            raise TypeError(f"timed() argument 'name' must be a str, not {type(name).__name__}")
        if isinstance(level, bool) or not isinstance(level, int):
            raise TypeError(
                f"timed() argument 'level' must be a logging level (int), "
                f"not {type(level).__name__}"
            )
        if threshold is not None:
            if isinstance(threshold, bool) or not isinstance(threshold, int | float):
                raise TypeError(
                    "timed() argument 'threshold' must be a number of seconds or None, "
                    f"not {type(threshold).__name__}"
                )
            if math.isnan(threshold) or threshold < 0:
                raise ValueError(
                    f"timed() argument 'threshold' must be >= 0 seconds, not {threshold!r}"
                )
        self._name = name
        self._level = level
        self._threshold = threshold
        self._target = LogTarget(logger, default=DEFAULT_LOGGER, owner="timed")
        self._started: float | None = None
        self._elapsed = 0.0
        self._ok: bool | None = None

    @property
    def name(self) -> str:
        """What is being timed."""
        return self._name

    @property
    def elapsed(self) -> float:
        """Seconds: the running time inside the block, the final time after it, 0 before."""
        started = self._started
        if started is not None:
            return perf_counter() - started
        return self._elapsed

    @property
    def ok(self) -> bool | None:
        """Whether the last run finished without an exception (``None`` until one has)."""
        return self._ok

    def __enter__(self) -> Self:
        if self._started is not None:
            raise RuntimeError(f"timer {self._name!r} is already running")
        self._ok = None
        self._started = perf_counter()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        ended = perf_counter()
        started = self._started
        assert started is not None  # __enter__ ran
        self._started = None
        self._elapsed = elapsed = ended - started
        self._ok = exc is None
        threshold = self._threshold
        if threshold is not None and elapsed < threshold:
            return
        if self._target.enabled_for(self._level):
            self._log(elapsed, exc)

    def _log(self, elapsed: float, exc: BaseException | None) -> None:
        if exc is None:
            error = None
            text = f"{self._name}: ok in {format_seconds(elapsed)}"
        else:
            error = type(exc).__qualname__
            text = f"{self._name}: failed ({error}) after {format_seconds(elapsed)}"
        fields = {"timer": self._name, "elapsed": elapsed, "ok": exc is None, "error": error}
        if error is None:
            del fields["error"]
        self._target.emit(self._level, "timed", fields, text)

    def _fresh(self) -> Timer:
        """A timer with the same settings, for one call of a decorated function."""
        timer = Timer.__new__(Timer)
        timer._name = self._name
        timer._level = self._level
        timer._threshold = self._threshold
        timer._target = self._target
        timer._started = None
        timer._elapsed = 0.0
        timer._ok = None
        return timer

    def __call__(self, fn: Callable[P, R]) -> Callable[P, R]:
        """Decorate ``fn`` so that each of its calls is timed and logged on its own.

        Args:
            fn: a function or an ``async def`` function (its calls are timed until the
                coroutine finishes, not just until it is created), or a generator
                function, sync or async (timed from the first value asked for until the
                iteration ends; ``send``/``asend``, ``throw``/``athrow`` and
                ``close``/``aclose`` reach the generator as they would undecorated).

        Returns:
            The wrapper, with ``fn``'s name and docstring.
        """
        if not callable(fn):
            raise TypeError(f"a timer decorates a callable, not {type(fn).__name__}")
        if inspect.isgeneratorfunction(fn):
            return cast(Callable[P, R], self._decorate_generator(fn))
        if inspect.isasyncgenfunction(fn):
            return cast(Callable[P, R], self._decorate_async_generator(fn))
        if inspect.iscoroutinefunction(fn):
            coroutine_function = cast(Callable[P, Coroutine[Any, Any, object]], fn)

            @functools.wraps(fn)
            async def timed_coroutine(*args: P.args, **kwargs: P.kwargs) -> object:
                with self._fresh():
                    return await coroutine_function(*args, **kwargs)

            return cast(Callable[P, R], timed_coroutine)

        @functools.wraps(fn)
        def timed_call(*args: P.args, **kwargs: P.kwargs) -> R:
            with self._fresh():
                return fn(*args, **kwargs)

        return timed_call

    def _decorate_generator(
        self, fn: Callable[P, Generator[Any, Any, Any]]
    ) -> Callable[P, Generator[Any, Any, Any]]:
        @functools.wraps(fn)
        def timed_generator(*args: P.args, **kwargs: P.kwargs) -> Generator[Any, Any, Any]:
            # The body runs at the first next(): the clock starts there, not at the call.
            with self._fresh():
                try:
                    # yield from: send(), throw() and close() reach fn's generator as is.
                    return (yield from fn(*args, **kwargs))
                except GeneratorExit:
                    # Closed by its consumer before the end (the `break` of a for loop):
                    # fn's generator is closed already, and stopping early is no failure.
                    return None

        return timed_generator

    def _decorate_async_generator(
        self, fn: Callable[P, AsyncGenerator[Any, Any]]
    ) -> Callable[P, AsyncGenerator[Any, Any]]:
        @functools.wraps(fn)
        async def timed_async_generator(
            *args: P.args, **kwargs: P.kwargs
        ) -> AsyncGenerator[Any, Any]:
            # Async generators have no `yield from`: this is its expansion (PEP 380), with
            # asend() for send(), athrow() for throw() and aclose() for close().
            with self._fresh():
                inner = fn(*args, **kwargs)
                try:
                    value = await inner.__anext__()
                    while True:
                        try:
                            sent = yield value
                        except GeneratorExit:
                            await inner.aclose()
                            return  # closed early by its consumer: no failure, as above
                        except BaseException as error:  # noqa: BLE001 - thrown into inner
                            value = await inner.athrow(error)
                        else:
                            value = await inner.asend(sent)
                except StopAsyncIteration:
                    return

        return timed_async_generator

    def __repr__(self) -> str:
        state = "running" if self._started is not None else f"ok={self._ok}"
        return f"<Timer {self._name!r} {state}, elapsed {format_seconds(self.elapsed)}>"


def format_seconds(seconds: float) -> str:
    """Format a duration for people: ``850 µs``, ``12.3 ms``, ``1.23 s``, ``95.0 s``."""
    if seconds < 1e-3:
        return f"{seconds * 1e6:.0f} µs"
    if seconds < 1:
        return f"{seconds * 1e3:.1f} ms"
    if seconds < 10:
        return f"{seconds:.2f} s"
    return f"{seconds:.1f} s"
