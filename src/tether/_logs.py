"""Where tether's helpers log: the standard ``logging`` module or a structlog logger.

Helpers such as :func:`tether.timed` and :func:`tether.suppress` accept either kind of
logger and tell them apart by duck typing, so that structlog is never imported: a
``logging.Logger`` or ``logging.LoggerAdapter`` gets a formatted message, with the same
facts in ``extra`` (beside an adapter's own ``extra``) and, as the record's file and line,
the user's code that left the ``with`` block or called the function; anything else with
``bind`` and ``log`` methods is treated as a structlog bound logger and gets an event name
with the facts as keyword fields.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Mapping, MutableMapping
from typing import Any, Protocol, TypeAlias, final

from ._sites import outside_tether

__all__ = ["AnyLogger", "LogTarget", "StructuredLogger"]


class StructuredLogger(Protocol):
    """What tether needs of a structlog-style logger: ``bind`` and keyword event data."""

    def bind(self, **new_values: object) -> object:
        """Return a logger with ``new_values`` added to every event."""
        ...

    def log(self, level: int, event: str, /, **fields: object) -> object:
        """Log ``event`` at ``level`` with ``fields`` as structured data."""
        ...


AnyLogger: TypeAlias = "logging.Logger | logging.LoggerAdapter[logging.Logger] | StructuredLogger"


@final
class LogTarget:
    """A logger resolved once, when the helper that logs through it is created."""

    __slots__ = ("_stdlib", "_structured")

    _stdlib: logging.Logger | logging.LoggerAdapter[logging.Logger] | None
    _structured: StructuredLogger | None

    def __init__(self, logger: AnyLogger | None, *, default: str, owner: str) -> None:
        if logger is None:
            logger = logging.getLogger(default)
        if isinstance(logger, logging.Logger | logging.LoggerAdapter):
            self._stdlib, self._structured = logger, None
        elif callable(getattr(logger, "bind", None)) and callable(getattr(logger, "log", None)):
            self._stdlib, self._structured = None, logger
        else:
            raise TypeError(
                f"{owner}() argument 'logger' must be a logging.Logger, a logging.LoggerAdapter "
                f"or a structlog logger, not {type(logger).__name__}"
            )

    def enabled_for(self, level: int) -> bool:
        """Whether a record at ``level`` would be handled.

        Always true for structlog, which filters by level itself.
        """
        return self._stdlib is None or self._stdlib.isEnabledFor(level)

    def emit(
        self,
        level: int,
        event: str,
        fields: Mapping[str, object],
        text: str,
        *,
        exc_info: BaseException | None = None,
    ) -> None:
        """Log one event.

        Args:
            level: a ``logging`` level number.
            event: the structlog event name.
            fields: the facts: structlog keyword fields, and stdlib ``extra``.
            text: the formatted message for stdlib logging.
            exc_info: an exception whose traceback goes with the record.
        """
        if self._stdlib is not None:
            _log_stdlib(self._stdlib, level, text, fields, exc_info)
        elif exc_info is None:
            assert self._structured is not None
            self._structured.log(level, event, **fields)
        else:
            assert self._structured is not None
            self._structured.log(level, event, exc_info=exc_info, **fields)


def _log_stdlib(
    logger: logging.Logger | logging.LoggerAdapter[logging.Logger],
    level: int,
    text: str,
    fields: Mapping[str, object],
    exc_info: BaseException | None,
) -> None:
    """Log ``text`` with ``fields`` in the record, at the first frame outside tether.

    A ``LoggerAdapter``'s ``process()`` adds its context, but (before Python 3.13, and
    after it unless ``merge_extra=True``) replaces the ``extra`` it is given with its own,
    which would drop tether's fields, and an outer adapter's ``extra`` when adapters are
    nested. So each adapter's ``process()`` is called here, outermost first, and what it
    returns is merged with what was passed to it, which wins on a clash (as the call's
    ``extra`` does with ``merge_extra``): tether's fields, then the outer adapters'. The
    record is then logged on the logger beneath.
    """
    message = "%s"
    extra: dict[str, object] = dict(fields)
    keywords: MutableMapping[str, Any] = {
        "exc_info": exc_info,
        "extra": extra,
        "stacklevel": _stacklevel(),
    }
    while isinstance(logger, logging.LoggerAdapter):
        message, keywords = logger.process(message, keywords)
        extra = {**(keywords.get("extra") or {}), **extra}
        keywords["extra"] = extra
        logger = logger.logger
    logger.log(level, message, text, **keywords)


def _stacklevel() -> int:
    """The ``stacklevel`` that points a record at the user's code rather than tether's.

    ``logging`` skips its own frames and counts the rest: level 1 is
    :func:`_log_stdlib`, and each tether frame above it (``LogTarget.emit``, the
    ``__exit__`` of ``timed`` or ``suppress``, a decorator's wrapper) adds one.
    """
    _, skipped = outside_tether(sys._getframe(1))  # from _log_stdlib's frame
    return 1 + skipped
