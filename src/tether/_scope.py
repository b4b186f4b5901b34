"""Scopes: run every cleanup, last in first out, and never lose or mask an error.

A :class:`Scope` is what :class:`contextlib.ExitStack` is, with three differences:

* **The body's error wins.** When the body raised and a cleanup raised too, the body's
  exception propagates unchanged (same object, same type) and carries the cleanup errors
  (:func:`cleanup_errors`, plus a note per failure in its traceback). ``ExitStack`` lets the
  last cleanup error replace it.
* **Several failed cleanups after a successful body** raise one
  :class:`~tether.CleanupError` holding all of them, in the order they ran, instead of a
  chain of ``__context__`` links.
* **Async cleanups survive cancellation** (:class:`AsyncScope`): each one runs shielded
  through :func:`tether._aio.run_shielded_outcome`, optionally bounded by
  ``cleanup_timeout``, and the cancellation is delivered once every cleanup has run (at
  the next await after the body's error, when that propagates instead).

The error rule, for the exception a ``with`` block (or ``close()``) ends with:

=====================  =========================  ===============================================
body                   cleanups                   what propagates
=====================  =========================  ===============================================
raised ``E``           all succeeded              ``E``
raised ``E``           ``C1 .. Cn`` failed        ``E``, with ``cleanup_errors(E) == (C1, .., Cn)``
succeeded              ``C`` failed               ``C``
succeeded              ``C1 .. Cn`` failed        ``CleanupError([C1, .., Cn])``
=====================  =========================  ===============================================

``E`` may be any ``BaseException``: ``KeyboardInterrupt``, ``SystemExit`` and cancellation
follow the same rule. Every cleanup runs whatever the others raise, ``KeyboardInterrupt``
included.

What an ``__exit__`` is shown, precisely: the body's exception while it has not been
suppressed; otherwise the most recent cleanup error that has not been suppressed;
otherwise nothing. An ``__exit__`` that returns a true value suppresses exactly the
exception it was shown. With at most one failure at a time this is what nested ``with``
statements do; the one difference is that the body's exception stays in view after an
inner cleanup failed, because it is the one that will propagate.

Implementation notes: the hot path (entering and leaving context managers that succeed)
allocates one tuple per entry and nothing per exit; the bookkeeping of failures lives in
:class:`_Unwind`, created only once something has failed or the body raised. The creation
site is captured once per scope, for diagnostics.
"""

from __future__ import annotations

import inspect
import math
import sys
import warnings
from collections.abc import Awaitable, Callable, Coroutine
from contextlib import AbstractAsyncContextManager, AbstractContextManager
from types import TracebackType
from typing import Any, Final, Self, TypeVar, final

from ._exceptions import CleanupError
from ._sites import Site, user_site

__all__ = ["AsyncScope", "Scope", "cleanup_errors"]

T = TypeVar("T")
F = TypeVar("F", bound=Callable[..., object])

# Where cleanup_errors() finds the errors attached to an exception. Every BaseException
# has a __dict__, so this works for any exception class, slotted subclasses included.
_CLEANUP_ERRORS_ATTR: Final = "__tether_cleanup_errors__"

# Kinds of registered cleanup. An entry is the tuple (kind, function, argument, name):
#   _EXIT:  function is type(cm).__exit__,  argument is cm
#   _CALL:  function is the callback,        argument is (args, kwargs), or None for none
#   _AEXIT: function is type(cm).__aexit__, argument is cm
#   _ACALL: function is the async callback,  argument as for _CALL
_EXIT: Final = 0
_CALL: Final = 1
_AEXIT: Final = 2
_ACALL: Final = 3

_Entry = tuple[int, Callable[..., Any], Any, "str | None"]

# Lifecycle: a scope accepts registrations until it starts closing.
_NEW: Final = 0  # created, not entered with `with`
_ENTERED: Final = 1  # inside its `with` block
_CLOSING: Final = 2  # running its cleanups
_CLOSED: Final = 3  # every cleanup has run
_STATE_WORDS: Final = ("open", "open", "closing", "closed")


def cleanup_errors(exc: BaseException) -> tuple[BaseException, ...]:
    """Return the cleanup errors a scope attached to ``exc``, in the order they happened.

    When a scope's body raised ``exc`` and some of its cleanups failed as well, ``exc``
    propagates and the cleanup errors are attached to it. If ``exc`` passed through
    several scopes, the errors of the inner scopes come first.

    Args:
        exc: an exception, typically one caught from a ``with Scope()`` block.

    Returns:
        The attached cleanup errors, or ``()`` when there are none.

    Raises:
        TypeError: ``exc`` is not an exception.
    """
    if not isinstance(exc, BaseException):
        raise TypeError(
            f"cleanup_errors() argument 'exc' must be an exception, not {type(exc).__name__}"
        )
    errors: tuple[BaseException, ...] = getattr(exc, _CLEANUP_ERRORS_ATTR, ())
    return errors


def _attach(exc: BaseException, failures: list[tuple[str, BaseException]], scope: str) -> None:
    """Attach cleanup failures to the exception that propagates instead of them."""
    for label, error in failures:
        exc.add_note(f"cleanup {label} of {scope} also failed: {_error_text(error)}")
    previous = getattr(exc, _CLEANUP_ERRORS_ATTR, ())
    setattr(exc, _CLEANUP_ERRORS_ATTR, previous + tuple(error for _, error in failures))


def _error_text(error: BaseException) -> str:
    """``Type: message`` for a note, even when the exception's ``__str__`` is broken.

    A cleanup error whose ``str()`` raises must not replace the error it is attached to;
    it is shown as the traceback module shows it.
    """
    try:
        message = str(error)
    except Exception:  # noqa: BLE001 - any bug in a user's __str__
        message = "<exception str() failed>"
    return f"{type(error).__qualname__}: {message}"


def _describe(kind: int, function: Callable[..., Any], argument: object, name: str | None) -> str:
    """Name a cleanup for an error message (only ever called once something failed).

    It never raises: it runs in the middle of the unwinding, where an error of its own
    would skip the remaining cleanups. Attribute lookups run user code (a proxy's
    ``__getattr__``); when one fails, the cleanup is named after its type.
    """
    if name is not None:
        return repr(name)
    if kind in (_EXIT, _AEXIT):
        method = "__exit__" if kind == _EXIT else "__aexit__"
        # contextlib's generator-based managers are better named after their function.
        try:
            generator_name = getattr(getattr(argument, "gen", None), "__qualname__", None)
            if isinstance(generator_name, str):
                return f"{generator_name}() ({method})"
        except Exception:  # noqa: BLE001, S110 - a name is not worth the unwinding
            pass
        return f"{type(argument).__qualname__}.{method}"
    try:
        qualname = getattr(function, "__qualname__", None)
        return qualname if isinstance(qualname, str) else repr(function)
    except Exception:  # noqa: BLE001 - as above
        return type(function).__qualname__


def _exit_arguments(
    exc: BaseException | None,
) -> tuple[type[BaseException] | None, BaseException | None, TracebackType | None]:
    if exc is None:
        return None, None, None
    return type(exc), exc, exc.__traceback__


def _check_name(name: object) -> None:
    if name is not None and not isinstance(name, str):
        raise TypeError(f"'name' must be a str or None, not {type(name).__name__}")


def _pack(args: tuple[object, ...], kwargs: dict[str, object]) -> object:
    return (args, kwargs) if args or kwargs else None


@final
class _Unwind:
    """The state of a scope's unwinding once the body raised or a cleanup failed.

    ``shown`` is what the next ``__exit__`` sees (see the module docstring for the rule).
    """

    __slots__ = ("body_error", "failures", "shown")

    def __init__(self, body_error: BaseException | None) -> None:
        self.body_error = body_error
        self.failures: list[tuple[str, BaseException]] = []
        self.shown = body_error

    def _update_shown(self) -> None:
        if self.body_error is not None:
            self.shown = self.body_error
        elif self.failures:
            self.shown = self.failures[-1][1]
        else:
            self.shown = None

    def returned(self, result: object) -> None:
        """An ``__exit__`` returned ``result``: a true value suppresses what it was shown."""
        shown = self.shown
        if shown is None or not result:
            return
        if shown is self.body_error:
            self.body_error = None
        else:
            self.failures = [f for f in self.failures if f[1] is not shown]
        self._update_shown()

    def failed(self, label: str, error: BaseException) -> None:
        """A cleanup raised ``error``."""
        if error is self.shown:
            # An __exit__ re-raised what it was shown: it did not suppress it, and nothing
            # new went wrong.
            return
        self.failures.append((label, error))
        self._update_shown()

    def run_sync(
        self, kind: int, function: Callable[..., Any], argument: Any, name: str | None
    ) -> None:
        """Run one synchronous cleanup and record how it went."""
        try:
            if kind == _EXIT:
                result = function(argument, *_exit_arguments(self.shown))
            elif argument is None:
                result = function()
            else:
                result = function(*argument[0], **argument[1])
        except BaseException as error:  # noqa: BLE001 - every cleanup runs; reported below
            self.failed(_describe(kind, function, argument, name), error)
        else:
            if kind == _EXIT:
                self.returned(result)
            elif result is not None and inspect.iscoroutine(result):
                self.unawaited(result, _describe(kind, function, argument, name))

    def unawaited(self, coroutine: Coroutine[Any, Any, Any], cleanup: str) -> None:
        """``scope.callback(lambda: conn.aclose())``: the cleanup never ran. Say so rather
        than drop it (closing the coroutine spares a "never awaited" warning)."""
        coroutine.close()
        self.failed(
            cleanup,
            TypeError(
                "the callback returned a coroutine, which a sync callback cannot await: "
                "register it with AsyncScope.callback_async"
            ),
        )

    def finish(self, scope: str) -> bool:
        """Apply the error rule once every cleanup has run.

        Returns:
            Whether the body's exception was suppressed (what ``__exit__`` returns).

        Raises:
            BaseException: the one cleanup error, or a CleanupError for several, when the
                body succeeded (or its exception was suppressed).
        """
        failures = self.failures
        if self.body_error is not None:
            if failures:
                _attach(self.body_error, failures, scope)
            return False
        if not failures:
            return True
        if len(failures) == 1:
            raise failures[0][1]
        raise CleanupError(
            f"{len(failures)} cleanups of {scope} failed", [error for _, error in failures]
        )


class _ScopeBase:
    """What both scopes share: registration of sync cleanups, lifecycle, diagnostics."""

    __slots__ = ("_name", "_site", "_stack", "_state")

    _name: str | None
    _site: Site
    _stack: list[_Entry]
    _state: int

    def __init__(self, name: str | None = None) -> None:
        # _stack first: __del__ reads it even when the checks below raise.
        self._stack = []
        self._state = _NEW
        if name is not None:
            _check_name(name)
        self._name = name
        self._site = user_site()

    @property
    def name(self) -> str | None:
        """The name given at creation, used in error messages (``None`` if none was)."""
        return self._name

    @property
    def closed(self) -> bool:
        """Whether the scope has started or finished running its cleanups."""
        return self._state >= _CLOSING

    def _label(self) -> str:
        if self._name is not None:
            return f"scope {self._name!r}"
        return f"the scope created at {self._site}"

    def _refuse(self) -> RuntimeError:
        return RuntimeError(
            f"{self._label()} is {_STATE_WORDS[self._state]}: it accepts no new cleanups"
        )

    def _refuse_enter(self) -> RuntimeError:
        if self._state == _ENTERED:
            return RuntimeError(f"{self._label()} is already entered; a scope is entered once")
        state = _STATE_WORDS[self._state]
        return RuntimeError(f"{self._label()} is {state}; it cannot be reused")

    def enter(self, cm: AbstractContextManager[T], /, *, name: str | None = None) -> T:
        """Enter a context manager now and register its exit as a cleanup.

        Args:
            cm: the context manager; its ``__enter__`` runs now, its ``__exit__`` when the
                scope closes.
            name: a name for it in error messages (default: its type's name).

        Returns:
            What ``cm.__enter__()`` returned.

        Raises:
            TypeError: ``cm`` is not a context manager (an async one needs
                ``AsyncScope.enter_async``), or ``name`` is not a str.
            RuntimeError: the scope is closing or closed.
        """
        if self._state >= _CLOSING:
            raise self._refuse()
        if name is not None:
            _check_name(name)
        cls = type(cm)
        try:
            enter = cls.__enter__
            exit_ = cls.__exit__
        except AttributeError:
            raise self._not_a_context_manager(cm) from None
        value = enter(cm)
        self._stack.append((_EXIT, exit_, cm, name))
        return value

    def _not_a_context_manager(self, cm: object) -> TypeError:
        if hasattr(type(cm), "__aexit__"):
            return TypeError(
                f"enter() argument 'cm' is an async context manager ({type(cm).__qualname__}): "
                "use 'await scope.enter_async(cm)' on a tether.AsyncScope"
            )
        return TypeError(
            f"enter() argument 'cm' must be a context manager, not {type(cm).__qualname__}"
        )

    def callback(self, fn: F, /, *args: object, name: str | None = None, **kwargs: object) -> F:
        """Register ``fn(*args, **kwargs)`` to run when the scope closes.

        ``name`` is keyword-only and belongs to the scope: it names the cleanup in error
        messages and is never passed to ``fn``. To pass ``fn`` a keyword argument that is
        itself called ``name``, bind it first: ``scope.callback(functools.partial(fn,
        name=...))``.

        Args:
            fn: what to call; a plain (not async) callable.
            *args: positional arguments for ``fn``.
            name: a name for the cleanup in error messages (default: ``fn``'s name).
            **kwargs: keyword arguments for ``fn``.

        Returns:
            ``fn`` itself, so that ``callback`` also works as a decorator.

        Raises:
            TypeError: ``fn`` is not callable, or is an ``async def`` function (use
                ``AsyncScope.callback_async``).
            RuntimeError: the scope is closing or closed.
        """
        if self._state >= _CLOSING:
            raise self._refuse()
        if not callable(fn):
            raise TypeError(f"callback() argument 'fn' must be callable, not {type(fn).__name__}")
        if inspect.iscoroutinefunction(fn):
            raise TypeError(
                "callback() argument 'fn' is an async function: "
                "use scope.callback_async(fn, ...) on a tether.AsyncScope"
            )
        if name is not None:
            _check_name(name)
        self._stack.append((_CALL, fn, _pack(args, kwargs), name))
        return fn

    def __del__(self) -> None:
        # Reads only the scope itself: no reference to anything outside it is kept alive,
        # so this adds no cycle and runs as soon as the last reference goes.
        if self._stack and self._state < _CLOSING:
            count = len(self._stack)
            warnings.warn(
                f"{self._label()} was never closed: {count} "
                f"cleanup{'s' if count != 1 else ''} did not run "
                f"(created at {self._site})",
                ResourceWarning,
                source=self,
                stacklevel=2,
            )

    def __repr__(self) -> str:
        return (
            f"<{type(self).__name__} {self._name!r} {_STATE_WORDS[self._state]}, "
            f"{len(self._stack)} pending, created at {self._site}>"
        )


@final
class Scope(_ScopeBase):
    """A stack of cleanups run last in first out when the scope closes, whatever fails.

    Use it as ``with Scope(name="job") as scope:``, or create it, register cleanups and
    call :meth:`close`. See the module docstring of ``tether._scope`` (or the README) for
    the error rule and for exactly which exception each ``__exit__`` is shown.

    Lifecycle: a scope accepts registrations until it starts closing; then registering
    raises ``RuntimeError``. It can be entered with ``with`` at most once, and never after
    it closed (``RuntimeError``). Closing an already closed scope, or leaving a ``with``
    block after ``close()``, does nothing. A scope belongs to one thread.

    A scope garbage-collected with cleanups that never ran emits a ``ResourceWarning``
    naming where it was created.

    Args:
        name: a name for the scope in error messages; by default it is named after the
            ``file:line`` where it was created.
    """

    __slots__ = ()

    def __enter__(self) -> Self:
        if self._state != _NEW:
            raise self._refuse_enter()
        self._state = _ENTERED
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool:
        if self._state >= _CLOSING:
            return False
        return self._unwind(exc)

    def close(self) -> None:
        """Run the cleanups now, last in first out.

        Raises:
            BaseException: what a successful ``with`` block would raise: the one cleanup
                error, or a ``CleanupError`` holding several.
        """
        if self._state < _CLOSING:
            self._unwind(None)

    def _unwind(self, body_error: BaseException | None) -> bool:
        self._state = _CLOSING
        stack = self._stack
        try:
            if body_error is None:
                # Fast path: nothing is pending, so an __exit__'s return value means
                # nothing; leave it as soon as a cleanup fails.
                while stack:
                    kind, function, argument, name = stack.pop()
                    try:
                        if kind == _EXIT:
                            function(argument, None, None, None)
                            continue
                        if argument is None:
                            result = function()
                        else:
                            result = function(*argument[0], **argument[1])
                    except BaseException as error:  # noqa: BLE001 - reported by finish()
                        unwind = _Unwind(None)
                        unwind.failed(_describe(kind, function, argument, name), error)
                        break
                    if result is not None and inspect.iscoroutine(result):
                        unwind = _Unwind(None)
                        unwind.unawaited(result, _describe(kind, function, argument, name))
                        break
                else:
                    return False
            else:
                unwind = _Unwind(body_error)
            while stack:
                unwind.run_sync(*stack.pop())
        finally:
            self._state = _CLOSED
        return unwind.finish(self._label())


@final
class AsyncScope(_ScopeBase):
    """The async twin of :class:`Scope`: also takes async context managers and callbacks.

    Sync cleanups (``enter``, ``callback``) run inline. Async ones (``enter_async``,
    ``callback_async``) each run to completion even if the task is cancelled meanwhile
    (by ``task.cancel()``, ``asyncio.timeout``, an anyio cancel scope or trio's), and the
    cancellation is delivered once every cleanup has run:

    * if the body raised (a cancellation included), that exception propagates as in the
      error rule, even when a cancellation arrived during the cleanups: the real error is
      never masked. The cancellation is not lost for that: code that catches the error
      is cancelled at its next await (an anyio or trio cancel scope stays cancelled; a
      plain asyncio cancellation is delivered again, so an expired ``asyncio.timeout``
      still raises its ``TimeoutError``).
    * if the body succeeded and the task was cancelled during the cleanups, the task ends
      cancelled, and that cancellation carries the cleanup errors, if any, as the body's
      exception would.

    The lifecycle and the error rule are those of :class:`Scope`; ``aclose()`` stands for
    ``close()``. Sync cleanups are not bounded by ``cleanup_timeout``: they cannot be
    interrupted.

    Args:
        name: a name for the scope in error messages; by default it is named after the
            ``file:line`` where it was created.
        cleanup_timeout: seconds each async cleanup may take; one that overruns is
            cancelled, abandoned and reported as a ``TimeoutError`` cleanup error.
            ``None`` (the default) waits as long as it takes.

    Raises:
        ValueError: ``cleanup_timeout`` is negative or NaN.
        TypeError: ``cleanup_timeout`` is not a number, or ``name`` is not a str.
    """

    __slots__ = ("_cleanup_timeout",)

    def __init__(self, name: str | None = None, *, cleanup_timeout: float | None = None) -> None:
        super().__init__(name)
        if cleanup_timeout is not None:
            if isinstance(cleanup_timeout, bool) or not isinstance(cleanup_timeout, int | float):
                raise TypeError(
                    "'cleanup_timeout' must be a number of seconds or None, "
                    f"not {type(cleanup_timeout).__name__}"
                )
            if math.isnan(cleanup_timeout) or cleanup_timeout < 0:
                raise ValueError(
                    f"'cleanup_timeout' must be >= 0 seconds or None, not {cleanup_timeout!r}"
                )
        self._cleanup_timeout = cleanup_timeout

    @property
    def cleanup_timeout(self) -> float | None:
        """Seconds each async cleanup may take (``None``: no bound)."""
        return self._cleanup_timeout

    async def __aenter__(self) -> Self:
        if self._state != _NEW:
            raise self._refuse_enter()
        self._state = _ENTERED
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool:
        if self._state >= _CLOSING:
            return False
        return await self._aunwind(exc)

    async def aclose(self) -> None:
        """Run the cleanups now, last in first out, async ones shielded.

        Raises:
            BaseException: what a successful ``async with`` block would raise: the one
                cleanup error, or a ``CleanupError`` holding several; a cancellation that
                arrived meanwhile, carrying the cleanup errors.
        """
        if self._state < _CLOSING:
            await self._aunwind(None)

    async def enter_async(
        self, cm: AbstractAsyncContextManager[T], /, *, name: str | None = None
    ) -> T:
        """Enter an async context manager now and register its exit as a cleanup.

        Args:
            cm: the async context manager; ``__aenter__`` is awaited now, ``__aexit__``
                when the scope closes (shielded from cancellation, bounded by
                ``cleanup_timeout``).
            name: a name for it in error messages (default: its type's name).

        Returns:
            What ``await cm.__aenter__()`` returned.

        Raises:
            TypeError: ``cm`` is not an async context manager (a plain one goes to
                :meth:`enter`), or ``name`` is not a str.
            RuntimeError: the scope is closing or closed.
        """
        if self._state >= _CLOSING:
            raise self._refuse()
        if name is not None:
            _check_name(name)
        cls = type(cm)
        try:
            aenter = cls.__aenter__
            aexit = cls.__aexit__
        except AttributeError:
            if hasattr(cls, "__exit__"):
                raise TypeError(
                    "enter_async() argument 'cm' is a plain context manager "
                    f"({cls.__qualname__}): use scope.enter(cm)"
                ) from None
            raise TypeError(
                "enter_async() argument 'cm' must be an async context manager, "
                f"not {cls.__qualname__}"
            ) from None
        value: T = await aenter(cm)
        if self._state >= _CLOSING:
            # Closed by another task while __aenter__ ran: nothing will exit cm later.
            await aexit(cm, None, None, None)
            raise self._refuse()
        self._stack.append((_AEXIT, aexit, cm, name))
        return value

    def callback_async(
        self,
        fn: Callable[..., Awaitable[object]],
        /,
        *args: object,
        name: str | None = None,
        **kwargs: object,
    ) -> None:
        """Register ``await fn(*args, **kwargs)`` to run when the scope closes.

        It runs shielded from cancellation and bounded by ``cleanup_timeout``. As for
        :meth:`callback`, ``name`` is the cleanup's own name and is never passed to ``fn``.

        Args:
            fn: an async function (or any callable returning an awaitable).
            *args: positional arguments for ``fn``.
            name: a name for the cleanup in error messages (default: ``fn``'s name).
            **kwargs: keyword arguments for ``fn``.

        Raises:
            TypeError: ``fn`` is not callable.
            RuntimeError: the scope is closing or closed.
        """
        if self._state >= _CLOSING:
            raise self._refuse()
        if not callable(fn):
            raise TypeError(
                f"callback_async() argument 'fn' must be callable, not {type(fn).__name__}"
            )
        if name is not None:
            _check_name(name)
        self._stack.append((_ACALL, fn, _pack(args, kwargs), name))

    async def _aunwind(self, body_error: BaseException | None) -> bool:
        from ._aio import (  # noqa: PLC0415 - keeps asyncio out of `import tether`
            redeliver_cancellation,
            run_shielded_outcome,
        )

        self._state = _CLOSING
        stack = self._stack
        unwind = _Unwind(body_error)
        ran_shielded = False
        cancelled = False
        try:
            while stack:
                kind, function, argument, name = stack.pop()
                if kind < _AEXIT:  # a sync cleanup
                    unwind.run_sync(kind, function, argument, name)
                    continue
                ran_shielded = True
                try:
                    coro = _start(kind, function, argument, unwind.shown)
                except BaseException as error:  # noqa: BLE001 - reported by finish()
                    unwind.failed(_describe(kind, function, argument, name), error)
                    continue
                outcome = await run_shielded_outcome(coro, timeout=self._cleanup_timeout)
                cancelled = cancelled or outcome.cancelled
                if outcome.error is not None:
                    unwind.failed(_describe(kind, function, argument, name), outcome.error)
                elif kind == _AEXIT:
                    unwind.returned(outcome.value)
        finally:
            self._state = _CLOSED
        if unwind.body_error is None:
            cancellation: BaseException | None = None
            if cancelled:
                # run_shielded absorbed a plain asyncio cancellation; the task owes it.
                cancellation = _asyncio_cancelled_error()
            elif ran_shielded:
                # A cancel scope (anyio, trio) that expired during a shielded cleanup
                # delivers its cancellation at the next checkpoint: make that here.
                try:
                    await _checkpoint_if_cancelled()
                except BaseException as error:  # noqa: BLE001 - raised below
                    cancellation = error
            if cancellation is not None:
                if unwind.failures:
                    _attach(cancellation, unwind.failures, self._label())
                raise cancellation
        elif cancelled:
            # The body's error wins over a plain asyncio cancellation that run_shielded
            # absorbed, but the task still owes it: it lands at the task's next await.
            # (A cancel scope delivers its own again there by itself.)
            redeliver_cancellation(unwind.body_error)
        return unwind.finish(self._label())


def _start(
    kind: int, function: Callable[..., Any], argument: Any, shown: BaseException | None
) -> Coroutine[Any, Any, object]:
    """Call an async cleanup and return the coroutine to run shielded."""
    if kind == _AEXIT:
        awaitable = function(argument, *_exit_arguments(shown))
    elif argument is None:
        awaitable = function()
    else:
        awaitable = function(*argument[0], **argument[1])
    if inspect.iscoroutine(awaitable):
        return awaitable
    if inspect.isawaitable(awaitable):
        return _await(awaitable)
    raise TypeError(
        f"async cleanup {_describe(kind, function, argument, None)} returned "
        f"{type(awaitable).__name__}, not an awaitable"
    )


async def _await(awaitable: Awaitable[T]) -> T:
    return await awaitable


def _asyncio_cancelled_error() -> BaseException:
    import asyncio  # noqa: PLC0415 - already loaded: only an asyncio task gets here

    return asyncio.CancelledError()


async def _checkpoint_if_cancelled() -> None:
    """Let an expired cancel scope deliver its cancellation now (no-op on plain asyncio)."""
    from ._aio import current_async_library  # noqa: PLC0415 - see _aunwind

    if current_async_library() == "trio":
        await sys.modules["trio"].lowlevel.checkpoint_if_cancelled()
        return
    anyio = sys.modules.get("anyio")
    if anyio is not None:
        # Only anyio cancel scopes need this on asyncio; without anyio loaded none exists.
        await anyio.lowlevel.checkpoint_if_cancelled()
