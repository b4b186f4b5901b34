"""Where tether's helpers log: the standard ``logging`` module or a structlog logger.

Helpers such as :func:`tether.timed` and :func:`tether.suppress` accept either kind of
logger and tell them apart by duck typing, so that structlog is never imported: a
``logging.Logger`` or ``logging.LoggerAdapter`` gets a formatted message (with the same
facts in ``extra``), anything else with ``bind`` and ``log`` methods is treated as a
structlog bound logger and gets an event name with the facts as keyword fields.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Protocol, TypeAlias, final

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
            self._stdlib.log(level, "%s", text, exc_info=exc_info, extra=dict(fields))
        elif exc_info is None:
            assert self._structured is not None
            self._structured.log(level, event, **fields)
        else:
            assert self._structured is not None
            self._structured.log(level, event, exc_info=exc_info, **fields)
