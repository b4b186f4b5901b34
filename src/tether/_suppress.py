"""``suppress``: ``contextlib.suppress`` that remembers and logs what it swallowed.

An exception that is silently dropped is a bug report nobody will read. ``suppress`` keeps
the dropped exception on its handle (``.suppressed``) and logs it with its traceback, and
it never suppresses an exception that was not named.
"""

from __future__ import annotations

import logging
from types import TracebackType
from typing import Final, Self, final

from ._logs import AnyLogger, LogTarget
from ._scope import _error_text

__all__ = ["Suppressor", "suppress"]

DEFAULT_LOGGER: Final = "tether.suppress"


def suppress(
    *exc_types: type[BaseException], logger: AnyLogger | None = None, level: int = logging.WARNING
) -> Suppressor:
    """Suppress the named exceptions in a ``with`` block, remembering and logging them.

    Like :func:`contextlib.suppress`: an exception that is an instance of one of
    ``exc_types`` (subclasses included) ends the block and is swallowed; any other
    propagates untouched. An ``ExceptionGroup`` is handled the way ``contextlib.suppress``
    does it since Python 3.12, on every Python version: if all of its members match, the
    whole group is suppressed; if some do, those are suppressed and a group of the rest is
    raised; if none do, the group propagates as it is.

    The swallowed exception (for a partly matching group, the group of the matching
    members) is kept as ``.suppressed`` and logged at ``level`` with its traceback: through
    a stdlib logger as ``suppressed ValueError: message`` with ``exc_info``, or through a
    structlog logger as the event ``"suppressed"`` with the fields ``error`` (its type
    name) and ``exc_info``.
    The default level is WARNING because an error was swallowed: someone may want to know.

    Args:
        *exc_types: the exception classes to suppress; at least one.
        logger: a ``logging.Logger``/``LoggerAdapter`` or a structlog logger; default the
            stdlib logger ``tether.suppress``.
        level: the ``logging`` level of the record.

    Returns:
        The :class:`Suppressor` handle.

    Raises:
        TypeError: no exception type was given (suppressing nothing is surely a mistake),
            one of ``exc_types`` is not an exception class, or ``logger``/``level`` is not
            a logger/level.
    """
    return Suppressor(*exc_types, logger=logger, level=level)


@final
class Suppressor:
    """The handle of :func:`suppress`: a reusable context manager.

    ``suppressed`` is reset to ``None`` each time the handle is entered.
    """

    __slots__ = ("_exc_types", "_level", "_target", "suppressed")

    suppressed: BaseException | None
    """The exception suppressed by the last ``with`` block, or ``None`` if there was none.
    For a partly matching exception group, the group of the members that matched."""

    def __init__(
        self,
        *exc_types: type[BaseException],
        logger: AnyLogger | None = None,
        level: int = logging.WARNING,
    ) -> None:
        if not exc_types:
            raise TypeError("suppress() needs at least one exception type to suppress")
        for exc_type in exc_types:
            if not (isinstance(exc_type, type) and issubclass(exc_type, BaseException)):
                raise TypeError(f"suppress() arguments must be exception classes, not {exc_type!r}")
        if isinstance(level, bool) or not isinstance(level, int):
            raise TypeError(
                f"suppress() argument 'level' must be a logging level (int), "
                f"not {type(level).__name__}"
            )
        self._exc_types = exc_types
        self._level = level
        self._target = LogTarget(logger, default=DEFAULT_LOGGER, owner="suppress")
        self.suppressed = None

    @property
    def exc_types(self) -> tuple[type[BaseException], ...]:
        """The exception classes this handle suppresses."""
        return self._exc_types

    def __enter__(self) -> Self:
        self.suppressed = None
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool:
        if exc is None:
            return False
        if isinstance(exc, self._exc_types):
            self._swallow(exc)
            return True
        if isinstance(exc, BaseExceptionGroup):
            matched, rest = exc.split(self._exc_types)
            if matched is None:
                return False
            if rest is None:
                # Keep the group itself rather than split's copy of it.
                self._swallow(exc)
                return True
            self._swallow(matched)
            raise rest
        return False

    def _swallow(self, exc: BaseException) -> None:
        self.suppressed = exc
        if self._target.enabled_for(self._level):
            error = type(exc).__qualname__
            self._target.emit(
                self._level,
                "suppressed",
                {"error": error},
                f"suppressed {_error_text(exc)}",  # safe from a broken __str__
                exc_info=exc,
            )

    def __repr__(self) -> str:
        names = ", ".join(t.__qualname__ for t in self._exc_types)
        return f"<Suppressor ({names}) suppressed={self.suppressed!r}>"
