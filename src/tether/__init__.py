"""tether: deterministic resource lifetimes for Python.

Every connection, file handle, stream and checkout is released exactly once, on every
path (success, exception, cancellation, client disconnect), and when something is not,
tether says what leaked, where it was acquired and who holds it.

Databases have modules of their own: ``tether.db`` (transactions) and ``tether.sqlite``
(SQLite pools) need nothing beyond the standard library. Integrations need their extras:
``tether.postgres`` (``tether[postgres]`` / ``tether[asyncpg]``), ``tether.starlette``
(``tether[starlette]``). Importing ``tether`` itself never imports an optional dependency.
"""

from ._async_pool import AsyncPool as AsyncPool
from ._exceptions import CleanupError as CleanupError
from ._exceptions import PoolClosed as PoolClosed
from ._exceptions import PoolError as PoolError
from ._exceptions import PoolTimeout as PoolTimeout
from ._exceptions import PoolUnavailable as PoolUnavailable
from ._exceptions import StreamIdleTimeout as StreamIdleTimeout
from ._exceptions import TetherError as TetherError
from ._exceptions import TransactionAborted as TransactionAborted
from ._files import atomic_write as atomic_write
from ._files import atomic_write_async as atomic_write_async
from ._pool import Pool as Pool
from ._pool_types import DurationSummary as DurationSummary
from ._pool_types import Holder as Holder
from ._pool_types import PoolStats as PoolStats
from ._scope import AsyncScope as AsyncScope
from ._scope import Scope as Scope
from ._scope import cleanup_errors as cleanup_errors
from ._stream import AsyncStream as AsyncStream
from ._stream import Stream as Stream
from ._stream import StreamMetrics as StreamMetrics
from ._stream import StreamOutcome as StreamOutcome
from ._stream import StreamSnapshot as StreamSnapshot
from ._stream import accumulate as accumulate
from ._suppress import Suppressor as Suppressor
from ._suppress import suppress as suppress
from ._timing import Timer as Timer
from ._timing import timed as timed
from ._version import __version__ as __version__

__all__ = [
    "AsyncPool",
    "AsyncScope",
    "AsyncStream",
    "CleanupError",
    "DurationSummary",
    "Holder",
    "Pool",
    "PoolClosed",
    "PoolError",
    "PoolStats",
    "PoolTimeout",
    "PoolUnavailable",
    "Scope",
    "Stream",
    "StreamIdleTimeout",
    "StreamMetrics",
    "StreamOutcome",
    "StreamSnapshot",
    "Suppressor",
    "TetherError",
    "Timer",
    "TransactionAborted",
    "__version__",
    "accumulate",
    "atomic_write",
    "atomic_write_async",
    "cleanup_errors",
    "suppress",
    "timed",
]
