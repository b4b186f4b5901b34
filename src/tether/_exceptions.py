"""Every error tether raises, and whose fault each one is.

The tree::

    Exception
     └── TetherError                       anything tether raises on its own account
          ├── CleanupError                 several cleanups failed after a successful body
          │                                (also an ExceptionGroup; a BaseExceptionGroup
          │                                only when a cleanup raised a BaseException)
          ├── PoolError                    a pool refused or could not serve a request
          │    ├── PoolTimeout             it was busy: nothing free within acquire_timeout
          │    │                           (also a TimeoutError)
          │    ├── PoolUnavailable         the outside world: it cannot create resources
          │    │                           right now (``__cause__`` is the real error)
          │    └── PoolClosed              your code closed it (or never opened it)
          ├── TransactionAborted           the database rolled a transaction back instead
          │                                of committing it (a statement in it had failed)
          └── StreamIdleTimeout            the source sent nothing within idle_timeout
                                           (also a TimeoutError)

Errors caused by the outside world (a database that refuses connections, a resource whose
``check`` fails) are raised as themselves, unchanged; where tether wraps one, ``__cause__``
carries it. Bad arguments raise the builtin ``TypeError`` / ``ValueError`` at the call,
naming the argument.

Where a builtin fits, tether's errors derive from it as well, so existing ``except
TimeoutError:`` clauses keep working.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Self, TypeVar, overload

from ._pool_types import PoolStats

if TYPE_CHECKING:
    from ._pool_types import Holder

__all__ = [
    "CleanupError",
    "PoolClosed",
    "PoolError",
    "PoolTimeout",
    "PoolUnavailable",
    "StreamIdleTimeout",
    "TetherError",
    "TransactionAborted",
]

_BaseExceptionT_co = TypeVar("_BaseExceptionT_co", bound=BaseException, covariant=True)
_BaseExceptionT = TypeVar("_BaseExceptionT", bound=BaseException)
_ExceptionT = TypeVar("_ExceptionT", bound=Exception)


class TetherError(Exception):
    """Root of every error tether raises on its own account."""


class CleanupError(BaseExceptionGroup[_BaseExceptionT_co]):
    """Several cleanups of a scope failed after its body had succeeded.

    Holds every cleanup error in the order the cleanups ran. When all of them are
    ``Exception`` instances the group is also an ``ExceptionGroup`` and a
    ``TetherError``, so ``except Exception`` and ``except TetherError`` catch it; when one
    of them is a ``BaseException`` such as ``KeyboardInterrupt`` it is a
    ``BaseExceptionGroup`` only, exactly like the builtin groups.
    """

    def __new__(cls, message: str, exceptions: Sequence[_BaseExceptionT_co]) -> Self:
        flavour: type[Any] = cls
        if cls is CleanupError and all(isinstance(e, Exception) for e in exceptions):
            flavour = _CleanupExceptionGroup
        group: Self = super().__new__(flavour, message, exceptions)
        return group

    @overload
    def derive(self, excs: Sequence[_ExceptionT], /) -> ExceptionGroup[_ExceptionT]: ...
    @overload
    def derive(self, excs: Sequence[_BaseExceptionT], /) -> BaseExceptionGroup[_BaseExceptionT]: ...
    def derive(self, excs: Sequence[Any], /) -> Any:
        """Build a group of the same kind with other members (used by ``split``)."""
        return CleanupError(self.message, excs)


class _CleanupExceptionGroup(CleanupError[Exception], ExceptionGroup[Exception], TetherError):
    """The ``ExceptionGroup`` flavour of :class:`CleanupError` (all members are Exceptions)."""


class PoolError(TetherError):
    """A pool refused or could not serve a request."""


class PoolTimeout(PoolError, TimeoutError):
    """No resource became free within ``acquire_timeout``.

    The message names the pool, gives its size, in-use, idle and waiting counts, the
    longest current holders with their age and acquisition site, and the last creation
    error if there was one. The same facts are available as attributes.

    Attributes:
        holders: who held the pool's resources when the wait gave up, longest first.
        stats: the pool's statistics at that moment (summarised when first read: in an
            overloaded pool most timeouts are never inspected, and summarising sorts up
            to 4,096 recent durations).
    """

    holders: Sequence[Holder[object]] = ()
    _stats: PoolStats | None = None
    _summarise: Callable[[], PoolStats] | None = None

    @property
    def stats(self) -> PoolStats | None:
        if self._stats is None and self._summarise is not None:
            self._stats, self._summarise = self._summarise(), None
        return self._stats

    @stats.setter
    def stats(self, stats: PoolStats | Callable[[], PoolStats] | None) -> None:
        """The statistics, or a function that summarises them when first read."""
        if stats is None or isinstance(stats, PoolStats):
            self._stats, self._summarise = stats, None
        else:
            self._stats, self._summarise = None, stats


class PoolUnavailable(PoolError):
    """The pool cannot create resources right now: its last attempts failed.

    Raised at once (instead of waiting out ``acquire_timeout``) to callers that need a new
    resource while the pool is backing off after creation failures. ``__cause__`` is the
    last real error (a refused connection, say). The pool keeps retrying in the background
    and serves again as soon as a creation succeeds.
    """


class PoolClosed(PoolError):
    """The pool is closed (or was never opened), so it hands nothing out."""


class TransactionAborted(TetherError):
    """A transaction could not commit: the database had already aborted it.

    On PostgreSQL a statement that fails inside a transaction aborts the whole
    transaction; if the code in a :func:`tether.db.transaction` block caught that error
    and finished normally, the commit can only roll back. This error says so, instead of
    letting the block look committed.
    """


class StreamIdleTimeout(TetherError, TimeoutError):
    """A stream's source produced no chunk within ``idle_timeout`` seconds."""
