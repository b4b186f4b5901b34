"""The generic pool options the database adapters pass through to :class:`tether.Pool`.

``tether.sqlite.pool(path, **pool_options)`` and ``tether.postgres.pool(dsn, **opts)``
accept every option of the generic pools except the callables, which the adapter
supplies itself. :class:`PoolOptions` types those keyword arguments; :func:`pool_options`
checks them at the call, so that a misspelt option or a callable the adapter owns is
refused with a message naming it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final, TypedDict

__all__ = ["PoolOptions", "pool_options"]


class PoolOptions(TypedDict, total=False):
    """Options of :class:`tether.Pool` / :class:`tether.AsyncPool` an adapter passes on."""

    min_size: int
    max_size: int
    acquire_timeout: float | None
    max_lifetime: float | None
    max_idle: float | None
    max_uses: int | None
    check_after: float
    leak_timeout: float | None
    name: str | None
    retry_delay: tuple[float, float]


_ALLOWED: Final = frozenset(PoolOptions.__annotations__)
_OWNED: Final = frozenset({"create", "destroy", "check", "reset", "is_broken"})


def pool_options(adapter: str, options: Mapping[str, object]) -> None:
    """Refuse options the generic pools do not have, and the callables ``adapter`` owns.

    Raises:
        TypeError: an option is unknown, or is one the adapter sets itself.
    """
    for option in options:
        if option in _OWNED:
            raise TypeError(
                f"{adapter}() sets {option!r} itself; build a tether.Pool / tether.AsyncPool "
                "directly to supply your own"
            )
        if option not in _ALLOWED:
            raise TypeError(f"{adapter}() got an unexpected keyword argument {option!r}")
