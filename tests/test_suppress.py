"""suppress: contextlib.suppress that keeps and logs what it swallowed, and nothing else."""

from __future__ import annotations

import logging
import sys
from collections.abc import MutableMapping
from typing import Any

import pytest
import structlog
from structlog.testing import capture_logs

from tether import Suppressor, suppress


@pytest.fixture
def records(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    """Captures records logged through ``tether.suppress`` at DEBUG and above."""
    caplog.set_level(logging.DEBUG, logger="tether.suppress")
    return caplog


def test_suppresses_a_named_exception_and_keeps_it() -> None:
    """The named exception ends the block quietly and is kept as ``.suppressed``."""
    error = KeyError("missing")
    reached: list[str] = []
    with suppress(KeyError) as handle:
        raise error
    reached.append("after")
    assert handle.suppressed is error
    assert reached == ["after"]


def test_suppresses_subclasses_of_a_named_type() -> None:
    """``suppress(OSError)`` swallows ``FileNotFoundError`` too."""
    with suppress(OSError) as handle:
        raise FileNotFoundError("no such file")
    assert isinstance(handle.suppressed, FileNotFoundError)


def test_any_of_several_named_types_is_suppressed() -> None:
    """With several types, an instance of any one of them is suppressed."""
    with suppress(KeyError, ValueError) as handle:
        raise ValueError("bad")
    assert type(handle.suppressed) is ValueError
    assert handle.exc_types == (KeyError, ValueError)


def test_suppressed_is_none_when_nothing_was_raised(records: pytest.LogCaptureFixture) -> None:
    """A block that raises nothing leaves ``.suppressed`` at None and logs nothing."""
    with suppress(KeyError) as handle:
        pass
    assert handle.suppressed is None
    assert records.records == []


def test_an_exception_that_was_not_named_passes_through_unchanged(
    records: pytest.LogCaptureFixture,
) -> None:
    """Never suppress what was not named: it propagates as itself, and nothing is logged."""
    error = ValueError("not named")
    handle = suppress(KeyError)

    def body() -> None:
        with handle:
            raise error

    with pytest.raises(ValueError, match="not named") as caught:
        body()
    assert caught.value is error
    assert handle.suppressed is None
    assert records.records == []


def test_base_exceptions_are_suppressed_only_when_named() -> None:
    """KeyboardInterrupt passes ``suppress(Exception)``, and is swallowed when named."""

    def body() -> None:
        with suppress(Exception):
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        body()
    with suppress(KeyboardInterrupt) as handle:
        raise KeyboardInterrupt
    assert isinstance(handle.suppressed, KeyboardInterrupt)


def test_the_handle_is_reusable_and_resets_what_it_suppressed() -> None:
    """Entering again forgets the previous block's exception."""
    handle = suppress(KeyError)
    with handle:
        raise KeyError("first")
    with handle:
        pass
    assert handle.suppressed is None


# --- logging -------------------------------------------------------------------------------


def test_logs_the_suppressed_exception_with_its_traceback(
    records: pytest.LogCaptureFixture,
) -> None:
    """The swallowed exception is logged at WARNING on ``tether.suppress``, with exc_info."""
    error = FileNotFoundError("cache.db")
    with suppress(OSError):
        raise error
    assert [(r.name, r.levelno, r.getMessage()) for r in records.records] == [
        ("tether.suppress", logging.WARNING, "suppressed FileNotFoundError: cache.db")
    ]
    exc_info = records.records[0].exc_info
    assert exc_info is not None
    assert exc_info[1] is error
    assert exc_info[2] is error.__traceback__


def test_logs_to_the_given_logger_and_level(caplog: pytest.LogCaptureFixture) -> None:
    """``logger`` and ``level`` choose where and how loud the record is."""
    caplog.set_level(logging.DEBUG, logger="app")
    with suppress(KeyError, logger=logging.getLogger("app"), level=logging.DEBUG):
        raise KeyError("k")
    assert [(r.name, r.levelname) for r in caplog.records] == [("app", "DEBUG")]


class PrefixingAdapter(logging.LoggerAdapter[logging.Logger]):
    """An adapter with behaviour of its own: it prefixes each message with the request."""

    def process(self, msg: object, kwargs: MutableMapping[str, Any]) -> tuple[object, Any]:
        msg, kwargs = super().process(msg, kwargs)
        return f"[{kwargs['extra']['request']}] {msg}", kwargs


def test_logger_adapters_keep_their_behaviour_and_the_record_its_facts(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Through (nested) ``LoggerAdapter``s the record carries the ``error`` field beside
    each adapter's own ``extra``, each adapter's ``process`` shapes the message, and the
    record points at the user's ``with`` block."""
    caplog.set_level(logging.INFO, logger="adapted")
    inner = PrefixingAdapter(logging.getLogger("adapted"), {"request": "r1"})
    outer = logging.LoggerAdapter(inner, {"user": "ada"})
    line = sys._getframe().f_lineno + 1
    with suppress(KeyError, logger=outer):
        raise KeyError("k")
    record = caplog.records[0]
    assert {key: record.__dict__.get(key) for key in ("error", "request", "user")} == {
        "error": "KeyError",
        "request": "r1",
        "user": "ada",
    }
    assert record.getMessage() == "[r1] suppressed KeyError: 'k'"
    assert (record.filename, record.lineno) == ("test_suppress.py", line)


def test_logs_structured_fields_through_structlog() -> None:
    """A structlog logger gets the event ``suppressed`` with the type and the exception."""
    error = KeyError("k")
    with capture_logs() as events, suppress(KeyError, logger=structlog.get_logger()):
        raise error
    assert events == [
        {"event": "suppressed", "error": "KeyError", "exc_info": error, "log_level": "warning"}
    ]


# --- exception groups -------------------------------------------------------------------------


def test_group_whose_members_all_match_is_suppressed() -> None:
    """An ExceptionGroup made only of named exceptions is suppressed whole."""
    group = ExceptionGroup("all", [KeyError("a"), FileNotFoundError("b")])
    with suppress(KeyError, OSError) as handle:
        raise group
    assert handle.suppressed is group


def test_group_with_some_matching_members_raises_the_rest() -> None:
    """Matching members are suppressed (and kept); a group of the others propagates."""
    kept, other = KeyError("a"), ValueError("b")
    handle = suppress(KeyError)

    def body() -> None:
        with handle:
            raise ExceptionGroup("mixed", [kept, other])

    with pytest.raises(ExceptionGroup) as caught:
        body()
    assert caught.value.exceptions == (other,)
    assert caught.value.message == "mixed"
    assert isinstance(handle.suppressed, ExceptionGroup)
    assert handle.suppressed.exceptions == (kept,)


def test_group_with_no_matching_member_propagates_as_itself(
    records: pytest.LogCaptureFixture,
) -> None:
    """A group none of whose members were named passes through unchanged."""
    group = ExceptionGroup("none", [ValueError("a")])
    handle = suppress(KeyError)

    def body() -> None:
        with handle:
            raise group

    with pytest.raises(ExceptionGroup) as caught:
        body()
    assert caught.value is group
    assert (handle.suppressed, records.records) == (None, [])


def test_nested_groups_are_matched_member_by_member() -> None:
    """Members of nested groups are matched too, as ``ExceptionGroup.split`` does."""
    group = ExceptionGroup("outer", [KeyError("a"), ExceptionGroup("inner", [KeyError("b")])])
    with suppress(LookupError) as handle:
        raise group
    assert handle.suppressed is group


# --- bad input ----------------------------------------------------------------------------------


def test_suppressing_nothing_is_a_type_error() -> None:
    """``suppress()`` with no types is surely a mistake: TypeError."""
    with pytest.raises(TypeError, match="at least one exception type"):
        suppress()


@pytest.mark.parametrize("bad", [ValueError("instance"), (KeyError, ValueError), "KeyError", int])
def test_a_non_exception_type_is_a_type_error_naming_it(bad: object) -> None:
    """Anything but an exception class is rejected, and the message shows what it was."""
    with pytest.raises(TypeError, match="must be exception classes, not") as caught:
        suppress(bad)  # type: ignore[arg-type]
    assert repr(bad) in str(caught.value)


def test_bad_logger_or_level_is_a_type_error() -> None:
    """A logger or level of the wrong kind fails at the call."""
    with pytest.raises(TypeError, match="'logger'"):
        suppress(KeyError, logger=object())  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="'level'"):
        suppress(KeyError, level=None)  # type: ignore[arg-type]


def test_repr() -> None:
    """The repr shows what is suppressed and what was."""
    handle = suppress(KeyError, OSError)
    assert isinstance(handle, Suppressor)
    assert repr(handle) == "<Suppressor (KeyError, OSError) suppressed=None>"


def test_quiet_below_the_logger_level_but_still_kept(caplog: pytest.LogCaptureFixture) -> None:
    """A record the logger would drop is not built, and the exception is still kept."""
    caplog.set_level(logging.INFO, logger="tether.suppress")
    with suppress(KeyError, level=logging.DEBUG) as handle:
        raise KeyError("quiet")
    assert (caplog.records, type(handle.suppressed)) == ([], KeyError)


def test_an_exception_whose_str_fails_is_still_suppressed_and_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Logging what was suppressed must not raise from the exception's own broken
    ``__str__``: the error stays suppressed, and the message says its str() failed."""

    class Unprintable(Exception):
        def __str__(self) -> str:
            raise AttributeError("status")

    with caplog.at_level(logging.WARNING), suppress(Unprintable) as suppressor:
        raise Unprintable
    assert isinstance(suppressor.suppressed, Unprintable)
    assert "Unprintable: <exception str() failed>" in caplog.text
