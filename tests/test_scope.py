"""Scope: LIFO cleanup, every cleanup runs, and the error rule (no error masked or lost)."""

from __future__ import annotations

import functools
import gc
import re
from collections.abc import Callable, Coroutine, Iterator
from contextlib import AbstractContextManager, contextmanager
from types import TracebackType
from typing import Self

import pytest

from tether import CleanupError, Scope, TetherError, cleanup_errors


class Recorder(AbstractContextManager["Recorder"]):
    """A context manager that logs its entry and exit and what its ``__exit__`` was shown."""

    def __init__(
        self,
        label: str,
        log: list[str],
        *,
        raises: BaseException | None = None,
        suppress: bool = False,
    ) -> None:
        self.label = label
        self.log = log
        self.raises = raises
        self.suppress = suppress
        self.shown: BaseException | None = None
        self.exited = False

    def __enter__(self) -> Self:
        self.log.append(f"enter {self.label}")
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool:
        self.exited = True
        self.shown = exc
        assert exc_type is (None if exc is None else type(exc))
        assert tb is (None if exc is None else exc.__traceback__)
        self.log.append(f"exit {self.label}")
        if self.raises is not None:
            raise self.raises
        return self.suppress


def fail(error: BaseException) -> None:
    raise error


def raised(body: Callable[[], object]) -> BaseException:
    """Run ``body`` and return what it raised; fail the test if it raised nothing."""
    try:
        body()
    except BaseException as exc:
        return exc
    pytest.fail(f"{body.__name__} raised nothing")


# --- order and values -------------------------------------------------------------------


def test_cleanups_run_last_in_first_out() -> None:
    """Context managers and callbacks are undone in the reverse order of registration."""
    log: list[str] = []
    with Scope() as scope:
        scope.enter(Recorder("a", log))
        scope.callback(log.append, "callback b")
        scope.enter(Recorder("c", log))
        log.append("body")
    assert log == ["enter a", "enter c", "body", "exit c", "callback b", "exit a"]


def test_enter_returns_what_the_context_manager_entered_as() -> None:
    """``enter`` hands back ``__enter__``'s value, like ``with cm as value``."""

    @contextmanager
    def gives(value: int) -> Iterator[int]:
        yield value

    with Scope() as scope:
        assert scope.enter(gives(42)) == 42


def test_callback_passes_args_and_kwargs() -> None:
    """Positional and keyword arguments reach the callback unchanged."""
    calls: list[tuple[tuple[object, ...], dict[str, object]]] = []

    def record(*args: object, **kwargs: object) -> None:
        calls.append((args, kwargs))

    with Scope() as scope:
        scope.callback(record, 1, 2, key="value")
        scope.callback(record)
    assert calls == [((), {}), ((1, 2), {"key": "value"})]


def test_callback_keyword_called_name_goes_through_partial() -> None:
    """``name=`` names the cleanup; a callback's own ``name`` argument is bound with partial."""
    seen: list[str] = []

    def greet(*, name: str) -> None:
        seen.append(name)

    with Scope() as scope:
        scope.callback(functools.partial(greet, name="for the callback"), name="greeting")
    assert seen == ["for the callback"]


def test_callback_returns_the_function_so_it_works_as_a_decorator() -> None:
    """``@scope.callback`` registers the decorated function and leaves it usable."""
    log: list[str] = []
    with Scope() as scope:

        @scope.callback
        def goodbye() -> None:
            log.append("goodbye")

        assert callable(goodbye)
    assert log == ["goodbye"]


def test_scope_works_without_with_through_close() -> None:
    """A scope can be created, filled and closed by hand."""
    log: list[str] = []
    scope = Scope(name="manual")
    scope.enter(Recorder("a", log))
    states = [scope.closed]
    scope.close()
    states.append(scope.closed)
    assert states == [False, True]
    assert log == ["enter a", "exit a"]


# --- the error rule -----------------------------------------------------------------------


def test_body_error_without_cleanup_errors_propagates_unchanged() -> None:
    """Row 1: the body's exception propagates as itself, with nothing attached."""
    error = ValueError("body")
    log: list[str] = []

    def body() -> None:
        with Scope() as scope:
            scope.enter(Recorder("a", log))
            scope.callback(lambda: log.append("callback"))
            raise error

    caught = raised(body)
    assert caught is error
    assert cleanup_errors(error) == ()
    assert getattr(error, "__notes__", []) == []
    assert log == ["enter a", "callback", "exit a"]


def test_body_error_wins_and_carries_every_cleanup_error() -> None:
    """Row 2: the body's error propagates, carrying the cleanup errors in the order they ran."""
    body_error = ValueError("body")
    first = OSError("disk full")
    second = KeyError("gone")
    log: list[str] = []

    def body() -> None:
        with Scope(name="job") as scope:
            scope.callback(fail, second, name="drop table")
            scope.enter(Recorder("a", log))
            scope.enter(Recorder("b", log, raises=first), name="spool")
            raise body_error

    caught = raised(body)
    assert caught is body_error
    assert cleanup_errors(body_error) == (first, second)
    assert body_error.__notes__ == [
        "cleanup 'spool' of scope 'job' also failed: OSError: disk full",
        "cleanup 'drop table' of scope 'job' also failed: KeyError: 'gone'",
    ]
    assert log == ["enter a", "enter b", "exit b", "exit a"]


def test_one_failed_cleanup_after_a_successful_body_propagates_itself() -> None:
    """Row 3: body succeeded, one cleanup raised: that very exception propagates."""
    error = OSError("flush failed")
    log: list[str] = []

    def body() -> None:
        with Scope() as scope:
            scope.enter(Recorder("a", log))
            scope.callback(fail, error)
            scope.enter(Recorder("b", log))

    caught = raised(body)
    assert caught is error
    assert log == ["enter a", "enter b", "exit b", "exit a"]


def test_several_failed_cleanups_after_a_successful_body_raise_cleanup_error() -> None:
    """Row 4: a CleanupError holds every cleanup error in run order, and names the scope."""
    first, second, third = OSError("one"), ValueError("two"), KeyError("three")

    def body() -> None:
        with Scope(name="job") as scope:
            scope.callback(fail, third)
            scope.callback(fail, second)
            scope.callback(fail, first)

    caught = raised(body)
    assert isinstance(caught, CleanupError)
    group = caught
    assert group.exceptions == (first, second, third)
    assert group.message == "3 cleanups of scope 'job' failed"
    assert isinstance(group, ExceptionGroup)
    assert isinstance(group, TetherError)


def test_cleanup_error_with_a_base_exception_is_only_a_base_exception_group() -> None:
    """A KeyboardInterrupt among the cleanup errors keeps the group out of ``except Exception``."""
    interrupt = KeyboardInterrupt()
    other = OSError("other")

    def body() -> None:
        with Scope() as scope:
            scope.callback(fail, interrupt)
            scope.callback(fail, other)

    caught = raised(body)
    assert isinstance(caught, CleanupError)
    assert caught.exceptions == (other, interrupt)
    assert not isinstance(caught, Exception)


def test_unnamed_scope_is_named_after_where_it_was_created() -> None:
    """Without a name, messages point at the ``file:line`` that created the scope."""

    def body() -> None:
        with Scope() as scope:
            scope.callback(fail, OSError("one"))
            scope.callback(fail, OSError("two"))

    caught = raised(body)
    assert isinstance(caught, CleanupError)
    assert re.fullmatch(
        r"2 cleanups of the scope created at .*test_scope\.py:\d+ failed", caught.message
    )


def test_keyboard_interrupt_in_the_body_runs_every_cleanup_then_propagates() -> None:
    """A KeyboardInterrupt is the body's error like any other: cleanups run, it propagates."""
    interrupt = KeyboardInterrupt()
    cleanup = OSError("cleanup")
    log: list[str] = []

    def body() -> None:
        with Scope() as scope:
            scope.enter(Recorder("a", log))
            scope.callback(fail, cleanup)
            scope.enter(Recorder("b", log))
            raise interrupt

    caught = raised(body)
    assert caught is interrupt
    assert cleanup_errors(interrupt) == (cleanup,)
    assert log == ["enter a", "enter b", "exit b", "exit a"]


def test_system_exit_in_the_body_follows_the_same_rule() -> None:
    """SystemExit from the body propagates and carries the cleanup error."""
    cleanup = OSError("cleanup")

    def body() -> None:
        with Scope() as scope:
            scope.callback(fail, cleanup)
            raise SystemExit(3)

    caught = raised(body)
    assert isinstance(caught, SystemExit)
    assert caught.code == 3
    assert cleanup_errors(caught) == (cleanup,)


def test_keyboard_interrupt_in_a_cleanup_does_not_stop_the_others() -> None:
    """A cleanup raising KeyboardInterrupt is reported, and the cleanups after it still run."""
    interrupt = KeyboardInterrupt()
    log: list[str] = []

    def body() -> None:
        with Scope() as scope:
            scope.enter(Recorder("a", log))
            scope.callback(fail, interrupt)
            scope.enter(Recorder("b", log))

    caught = raised(body)
    assert caught is interrupt
    assert log == ["enter a", "enter b", "exit b", "exit a"]


def test_keyboard_interrupt_in_a_cleanup_is_attached_to_the_body_error() -> None:
    """With a body error, a cleanup's KeyboardInterrupt is attached, not lost."""
    interrupt = KeyboardInterrupt()
    log: list[str] = []

    def body() -> None:
        with Scope() as scope:
            scope.enter(Recorder("a", log))
            scope.callback(fail, interrupt)
            raise ValueError("body")

    caught = raised(body)
    assert isinstance(caught, ValueError)
    assert cleanup_errors(caught) == (interrupt,)
    assert log == ["enter a", "exit a"]


def test_nested_scopes_accumulate_cleanup_errors_inner_first() -> None:
    """An error leaving two scopes carries the inner scope's cleanup errors, then the outer's."""
    inner_error, outer_error = OSError("inner"), OSError("outer")
    body_error = ValueError("body")

    def body() -> None:
        with Scope(name="outer") as outer:
            outer.callback(fail, outer_error)
            with Scope(name="inner") as inner:
                inner.callback(fail, inner_error)
                raise body_error

    caught = raised(body)
    assert caught is body_error
    assert cleanup_errors(body_error) == (inner_error, outer_error)
    assert [note.split(" also")[0] for note in body_error.__notes__] == [
        "cleanup fail of scope 'inner'",
        "cleanup fail of scope 'outer'",
    ]


def test_nested_scope_failure_becomes_the_outer_body_error() -> None:
    """The inner scope's cleanup error is the outer scope's body error, so it wins there."""
    inner_error, outer_error = OSError("inner"), OSError("outer")

    def body() -> None:
        with Scope() as outer:
            outer.callback(fail, outer_error)
            with Scope() as inner:
                inner.callback(fail, inner_error)

    caught = raised(body)
    assert caught is inner_error
    assert cleanup_errors(inner_error) == (outer_error,)


def test_cleanup_errors_of_an_exception_without_any_is_empty() -> None:
    """``cleanup_errors`` of an ordinary exception is ``()``."""
    assert cleanup_errors(ValueError("plain")) == ()


def test_cleanup_errors_rejects_a_non_exception() -> None:
    """Passing something that is not an exception is a TypeError naming the argument."""
    with pytest.raises(TypeError, match="'exc' must be an exception"):
        cleanup_errors("not an exception")  # type: ignore[arg-type]


# --- what __exit__ is shown, and suppression ---------------------------------------------


def test_exits_are_shown_the_body_error() -> None:
    """Every ``__exit__`` sees the body's exception, even after an inner cleanup failed."""
    body_error = ValueError("body")
    log: list[str] = []
    outer = Recorder("outer", log)
    inner = Recorder("inner", log, raises=OSError("inner"))

    def body() -> None:
        with Scope() as scope:
            scope.enter(outer)
            scope.enter(inner)
            raise body_error

    assert isinstance(raised(body), ValueError)
    assert (inner.shown, outer.shown) == (body_error, body_error)


def test_after_a_successful_body_outer_exits_see_an_inner_cleanup_error() -> None:
    """Like nested ``with``: an inner cleanup's error is what the outer ``__exit__`` sees."""
    inner_error = OSError("inner")
    log: list[str] = []
    outer = Recorder("outer", log)

    def body() -> None:
        with Scope() as scope:
            scope.enter(outer)
            scope.callback(fail, inner_error)

    caught = raised(body)
    assert caught is inner_error
    assert outer.shown is inner_error


def test_an_entered_context_manager_can_suppress_the_body_error() -> None:
    """A ``__exit__`` returning True suppresses the body's error; outer exits then see none."""
    log: list[str] = []
    outer = Recorder("outer", log)
    with Scope() as scope:
        scope.enter(outer)
        scope.enter(Recorder("suppressor", log, suppress=True))
        raise ValueError("suppressed")
    assert outer.shown is None
    assert log == ["enter outer", "enter suppressor", "exit suppressor", "exit outer"]


def test_suppressed_body_error_leaves_earlier_cleanup_errors_to_propagate() -> None:
    """Suppressing the body's error does not lose a cleanup error that happened before."""
    cleanup = OSError("cleanup")
    log: list[str] = []

    def body() -> None:
        with Scope() as scope:
            scope.enter(Recorder("suppressor", log, suppress=True))
            scope.callback(fail, cleanup)
            raise ValueError("body")

    caught = raised(body)
    assert caught is cleanup


def test_an_outer_exit_can_suppress_an_inner_cleanup_error() -> None:
    """As with nested ``with``, an outer ``__exit__`` may suppress what an inner one raised."""
    log: list[str] = []
    suppressor = Recorder("suppressor", log, suppress=True)
    with Scope() as scope:
        scope.enter(suppressor)
        scope.callback(fail, OSError("handled"))
    assert str(suppressor.shown) == "handled"


def test_an_outer_exit_suppressing_one_of_two_errors_leaves_the_other() -> None:
    """Suppression removes exactly the error that was shown; the other one still propagates."""
    log: list[str] = []
    earlier = OSError("earlier")

    def body() -> None:
        with Scope() as scope:
            scope.enter(Recorder("suppressor", log, suppress=True))
            scope.callback(fail, OSError("handled"))
            scope.callback(fail, earlier)

    caught = raised(body)
    assert caught is earlier


def test_an_exit_re_raising_what_it_was_shown_is_not_a_new_failure() -> None:
    """Re-raising the exception passed in means 'not suppressed', not a second error."""
    body_error = ValueError("body")

    class Reraiser(AbstractContextManager[None]):
        def __exit__(self, *exc_info: object) -> None:
            raise body_error

    def body() -> None:
        with Scope() as scope:
            scope.enter(Reraiser())
            raise body_error

    caught = raised(body)
    assert caught is body_error
    assert cleanup_errors(body_error) == ()


def test_generator_based_context_manager_is_named_after_its_function() -> None:
    """A ``@contextmanager`` failure note names the generator function."""

    @contextmanager
    def flaky() -> Iterator[None]:
        try:
            yield
        finally:
            raise OSError("flaky exit")

    def body() -> None:
        with Scope(name="s") as scope:
            scope.enter(flaky())
            scope.enter(Recorder("r", [], raises=KeyError("r")))
            raise ValueError("body")

    caught = raised(body)
    assert isinstance(caught, ValueError)
    assert [note.split(" of ")[0] for note in caught.__notes__] == [
        "cleanup Recorder.__exit__",
        (
            "cleanup test_generator_based_context_manager_is_named_after_its_function."
            "<locals>.flaky() (__exit__)"
        ),
    ]


class Unprintable(Exception):
    """A user exception whose ``__str__`` is broken on some code paths."""

    def __str__(self) -> str:
        return f"{self.status}: {self.args[0]}"  # type: ignore[attr-defined]  # never set


def test_a_cleanup_error_whose_str_fails_does_not_mask_the_body_error() -> None:
    """The note for a cleanup error whose ``str()`` raises says so, as tracebacks do; the
    body's error still propagates, carrying it."""
    body_error = ValueError("bad row")
    cleanup_error = Unprintable("upload failed")

    def body() -> None:
        with Scope(name="import") as scope:
            scope.callback(fail, cleanup_error, name="upload")
            raise body_error

    assert raised(body) is body_error
    assert cleanup_errors(body_error) == (cleanup_error,)
    assert body_error.__notes__ == [
        "cleanup 'upload' of scope 'import' also failed: Unprintable: <exception str() failed>"
    ]


class DeadProxy:
    """A context manager delegating attribute lookups to a backend that is gone."""

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        raise OSError("flush failed")

    def __getattr__(self, name: str) -> object:
        raise ConnectionError(f"backend gone (looking up {name!r})")


def test_naming_a_failed_cleanup_never_stops_the_unwinding() -> None:
    """A context manager whose attribute lookups raise is named after its type; every
    cleanup still runs and the body's error still wins."""
    log: list[str] = []
    body_error = ValueError("body")

    def body() -> None:
        with Scope(name="job") as scope:
            scope.callback(log.append, "registered first")
            scope.enter(DeadProxy())
            raise body_error

    assert raised(body) is body_error
    assert log == ["registered first"]
    assert [type(error) for error in cleanup_errors(body_error)] == [OSError]
    assert body_error.__notes__ == [
        "cleanup DeadProxy.__exit__ of scope 'job' also failed: OSError: flush failed"
    ]


# --- lifecycle ------------------------------------------------------------------------------


def test_close_runs_cleanups_early_and_the_with_block_then_does_nothing() -> None:
    """``close()`` inside the block runs the cleanups at once; leaving the block adds nothing."""
    log: list[str] = []
    with Scope() as scope:
        scope.enter(Recorder("a", log))
        scope.close()
        log.append("after close")
    assert log == ["enter a", "exit a", "after close"]


def test_close_raises_per_the_error_rule() -> None:
    """``close()`` raises what a successful body would: one error, or a CleanupError."""
    error = OSError("one")
    scope = Scope()
    scope.callback(fail, error)
    assert raised(scope.close) is error
    scope = Scope()
    scope.callback(fail, OSError("a"))
    scope.callback(fail, OSError("b"))
    with pytest.raises(CleanupError):
        scope.close()


def test_closing_twice_is_harmless() -> None:
    """A second ``close()`` does nothing; cleanups ran exactly once."""
    log: list[str] = []
    scope = Scope()
    scope.callback(log.append, "once")
    scope.close()
    scope.close()
    assert log == ["once"]


def test_body_error_after_close_propagates_unchanged() -> None:
    """Leaving the block with an error after ``close()`` re-raises it, nothing attached."""
    error = ValueError("late")

    def body() -> None:
        with Scope() as scope:
            scope.close()
            raise error

    caught = raised(body)
    assert caught is error


def test_registration_after_close_is_rejected() -> None:
    """A closed scope refuses new cleanups with a RuntimeError naming it."""
    scope = Scope(name="done")
    scope.close()
    with pytest.raises(RuntimeError, match="scope 'done' is closed"):
        scope.callback(print)
    with pytest.raises(RuntimeError, match="scope 'done' is closed"):
        scope.enter(Recorder("late", []))


def test_registration_while_closing_is_a_cleanup_error() -> None:
    """A cleanup that registers another one while the scope closes fails with RuntimeError."""
    scope = Scope(name="busy")
    scope.callback(scope.callback, print)
    with pytest.raises(RuntimeError, match="scope 'busy' is closing"):
        scope.close()


def test_entering_twice_or_after_close_is_an_error() -> None:
    """A scope is entered with ``with`` once; re-entering or reusing it is a RuntimeError."""
    scope = Scope(name="once")
    with scope:
        with pytest.raises(RuntimeError, match="scope 'once' is already entered"), scope:
            pass  # pragma: no cover - never reached
    with pytest.raises(RuntimeError, match="scope 'once' is closed; it cannot be reused"), scope:
        pass  # pragma: no cover - never reached


def test_context_manager_not_entered_when_scope_is_closed() -> None:
    """A refused ``enter`` does not call the context manager's ``__enter__``."""
    log: list[str] = []
    scope = Scope()
    scope.close()
    with pytest.raises(RuntimeError):
        scope.enter(Recorder("late", log))
    assert log == []


def test_repr_and_name() -> None:
    """The repr shows name, state and pending count; ``name`` is read-only data."""
    scope = Scope(name="job")
    scope.callback(print)
    assert scope.name == "job"
    assert re.fullmatch(r"<Scope 'job' open, 1 pending, created at .*:\d+>", repr(scope))
    scope.callback(print)
    scope.close()
    assert "closed, 0 pending" in repr(scope)


# --- bad input ----------------------------------------------------------------------------


def test_non_callable_callback_is_a_type_error_naming_fn() -> None:
    """``callback(42)`` fails at the call, naming the argument."""
    with Scope() as scope, pytest.raises(TypeError, match="'fn' must be callable, not int"):
        scope.callback(42)  # type: ignore[type-var]


def test_async_function_as_sync_callback_is_rejected() -> None:
    """An ``async def`` cleanup on a sync callback would never be awaited: refused."""

    async def cleanup() -> None:  # pragma: no cover - never called
        pass

    with Scope() as scope, pytest.raises(TypeError, match="callback_async"):
        scope.callback(cleanup)


def test_entering_a_non_context_manager_is_a_type_error() -> None:
    """``enter`` of an object without ``__enter__``/``__exit__`` says so."""
    with Scope() as scope, pytest.raises(TypeError, match="'cm' must be a context manager"):
        scope.enter(object())  # type: ignore[arg-type]


def test_entering_an_async_context_manager_points_to_enter_async() -> None:
    """``enter`` of an async context manager on a sync scope says to use ``enter_async``."""

    class AsyncOnly:
        async def __aenter__(self) -> None:  # pragma: no cover - never called
            pass

        async def __aexit__(self, *exc_info: object) -> None:  # pragma: no cover
            pass

    with Scope() as scope, pytest.raises(TypeError, match=r"enter_async.*AsyncScope"):
        scope.enter(AsyncOnly())  # type: ignore[arg-type]


def test_name_must_be_a_string() -> None:
    """Names are strings: anything else is a TypeError at the call."""
    with pytest.raises(TypeError, match="'name' must be a str"):
        Scope(name=1)  # type: ignore[arg-type]
    with Scope() as scope:
        with pytest.raises(TypeError, match="'name' must be a str"):
            scope.enter(Recorder("a", []), name=2)  # type: ignore[arg-type]
        with pytest.raises(TypeError, match="'name' must be a str"):
            scope.callback(print, name=3)  # type: ignore[arg-type]


# --- leaks ----------------------------------------------------------------------------------


def test_unclosed_scope_warns_naming_where_it_was_created() -> None:
    """A scope dropped with cleanups that never ran emits a ResourceWarning with its site."""
    scope = Scope(name="leaky")
    scope.callback(print)
    with pytest.warns(
        ResourceWarning,
        match=r"scope 'leaky' was never closed: 1 cleanup did not run "
        r"\(created at .*test_scope\.py:\d+\)",
    ):
        del scope


def test_unclosed_scope_in_a_reference_cycle_warns_when_collected() -> None:
    """A leaked scope that only the garbage collector can free still warns when it does."""
    scope = Scope(name="cyclic")
    scope.callback(print, scope)  # the scope now refers to itself
    del scope
    with pytest.warns(ResourceWarning, match=r"scope 'cyclic' was never closed"):
        gc.collect()


def test_scope_with_nothing_pending_does_not_warn() -> None:
    """An empty scope left unclosed holds nothing, so it is dropped silently."""
    scope = Scope()
    del scope
    gc.collect()  # under -W error a warning here would fail the test


def test_a_sync_callback_that_returns_a_coroutine_is_a_cleanup_error() -> None:
    """``scope.callback(lambda: conn.aclose())`` registers a sync callback whose cleanup
    never runs: it returns a coroutine nobody awaits. That is reported as the scope's
    cleanup error (naming the fix), not dropped in silence, and the coroutine is closed."""
    closed: list[str] = []

    async def aclose() -> None:  # pragma: no cover - never awaited, only closed
        closed.append("awaited")

    def stop() -> Coroutine[None, None, None]:
        return aclose()  # a sync function handing back the coroutine, as a lambda would

    with pytest.raises(TypeError, match="callback_async"), Scope() as scope:
        scope.callback(stop)
    assert closed == []
