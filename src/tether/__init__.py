"""tether: deterministic resource lifetimes for Python.

Every connection, file handle, stream and checkout is released exactly once, on every
path (success, exception, cancellation, client disconnect), and when something is not,
tether says what leaked, where it was acquired and who holds it.

Integrations live in their own modules and need their extras: ``tether.postgres``
(``tether[postgres]`` / ``tether[asyncpg]``), ``tether.starlette`` (``tether[starlette]``).
Importing ``tether`` itself never imports an optional dependency.
"""

from ._exceptions import CleanupError as CleanupError
from ._exceptions import PoolClosed as PoolClosed
from ._exceptions import PoolError as PoolError
from ._exceptions import PoolTimeout as PoolTimeout
from ._exceptions import StreamIdleTimeout as StreamIdleTimeout
from ._exceptions import TetherError as TetherError
from ._stream import AsyncStream as AsyncStream
from ._stream import Stream as Stream
from ._stream import StreamMetrics as StreamMetrics
from ._stream import StreamOutcome as StreamOutcome
from ._stream import StreamSnapshot as StreamSnapshot
from ._stream import accumulate as accumulate
from ._version import __version__ as __version__

__all__ = [
    "AsyncStream",
    "CleanupError",
    "PoolClosed",
    "PoolError",
    "PoolTimeout",
    "Stream",
    "StreamIdleTimeout",
    "StreamMetrics",
    "StreamOutcome",
    "StreamSnapshot",
    "TetherError",
    "__version__",
    "accumulate",
]
