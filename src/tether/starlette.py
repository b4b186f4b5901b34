"""Starlette and FastAPI: a streaming response that always closes its source.

Starlette's own ``StreamingResponse`` stops iterating its body when the client goes away,
but leaves closing the body iterator to the garbage collector, and does not notice a
disconnect at all while the body has not produced its first chunk. Whatever the body holds
— a pooled database connection, an upstream HTTP request — stays out until then.

:class:`StreamingResponse` here accumulates its source with :func:`tether.accumulate` and,
in the request task and before the ASGI call returns, closes it on every path: the body
ran out, the client disconnected (before or after the first chunk), the source raised, or
the request was cancelled. A disconnect is reported as ``StreamOutcome.CLOSED``.

Needs the ``starlette`` extra: ``pip install 'tether[starlette]'``.
"""

from __future__ import annotations

import threading
from collections.abc import AsyncIterable, AsyncIterator, Iterable, Mapping
from typing import TYPE_CHECKING, Final, Generic, TypeVar, cast, final

try:
    import anyio
    import anyio.to_thread
    from starlette.background import BackgroundTask
    from starlette.requests import ClientDisconnect
    from starlette.responses import StreamingResponse as _StarletteStreamingResponse
except ImportError as exc:  # pragma: no cover - exercised without the extra installed
    raise ImportError("tether.starlette needs Starlette: pip install 'tether[starlette]'") from exc

from ._stream import AsyncStream, Callbacks, Stream, StreamOutcome, Timing, accumulate

if TYPE_CHECKING:
    from starlette.types import Message, Receive, Scope, Send

__all__ = ["StreamingResponse"]

ChunkT = TypeVar("ChunkT", str, bytes)

_DISCONNECTS: Final = frozenset({"http.disconnect", "websocket.disconnect"})
_EXHAUSTED: Final = object()


async def _iterate_in_thread(source: Iterable[ChunkT]) -> AsyncIterator[ChunkT]:
    """Read a blocking source in worker threads; close it in one, once, whatever happens.

    An anyio cancellation waits for a read in progress, but a plain asyncio one
    (idle_timeout's ``asyncio.timeout``) abandons it, its thread still inside ``next()``.
    Closing the source then would fail (a generator refuses with "generator already
    executing") and waiting for that read would defeat the timeout, since a source that
    timed out is one that may never answer. So the close is left to the reading thread:
    it closes the source as soon as its ``next()`` returns.
    """
    iterator = iter(source)
    guard = threading.Lock()
    reading = close_pending = closed = False

    def close_once() -> None:
        nonlocal closed
        with guard:
            if closed:
                return
            closed = True
        for target in (iterator,) if iterator is source else (iterator, source):
            close = getattr(target, "close", None)
            if close is not None:
                close()

    def read() -> object:
        nonlocal reading
        with guard:
            reading = True
        try:
            return next(iterator, _EXHAUSTED)
        finally:
            with guard:
                reading = False
                abandoned = close_pending
            if abandoned:
                close_once()  # the stream ended while this read ran: nobody else will

    def close_all() -> None:
        nonlocal close_pending
        with guard:
            if reading:
                close_pending = True
                return
        close_once()

    try:
        while True:
            chunk = await anyio.to_thread.run_sync(read)
            if chunk is _EXHAUSTED:
                return
            yield cast("ChunkT", chunk)
    finally:
        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(close_all)


@final
class StreamingResponse(_StarletteStreamingResponse, Generic[ChunkT]):
    """A Starlette response that streams ``source``, accumulates it, and always closes it.

    ::

        @app.get("/rows")
        async def rows() -> StreamingResponse[str]:
            return StreamingResponse(export_rows(), media_type="text/csv",
                                     on_complete=lambda snapshot: log(snapshot.metrics))

    The source is closed in the request task before the ASGI call returns: when it runs
    out (``COMPLETED``), when the client disconnects — also before the first chunk —
    (``CLOSED``), when it raises (``ERROR``, and the exception propagates to the server
    as with Starlette's own response), or when the request is cancelled (``CANCELLED``).
    (One exception: a blocking source still inside its ``next()`` when ``idle_timeout``
    expires is closed by its worker thread as soon as that read returns, since it may
    never; the response ends at the timeout.)
    ``on_complete`` runs exactly once, before the call returns; an exception in it (or
    in closing a source that ran out) is logged through the ``tether.stream`` logger, not
    raised: the response is still finished and its ``background`` task run.

    Attributes:
        stream: the :class:`~tether.AsyncStream` being served; after the response,
            its ``content``, ``metrics`` and ``outcome`` say what was sent.
    """

    stream: AsyncStream[ChunkT, ChunkT]

    def __init__(
        self,
        source: AsyncIterable[ChunkT] | Iterable[ChunkT] | AsyncStream[ChunkT, ChunkT],
        status_code: int = 200,
        headers: Mapping[str, str] | None = None,
        media_type: str | None = None,
        background: BackgroundTask | None = None,
        *,
        on_complete: Callbacks[ChunkT, ChunkT] = None,
        idle_timeout: float | None = None,
        timing: Timing = "basic",
    ) -> None:
        """Prepare the response; nothing is read from ``source`` until it is sent.

        Args:
            source: an async iterable of ``str`` or ``bytes`` chunks (``str`` is encoded
                with the response's charset), a sync iterable (read in worker threads, and
                closed in one), or an :class:`~tether.AsyncStream` from
                :func:`~tether.accumulate` made with the options you want.
            status_code: the HTTP status.
            headers: extra response headers.
            media_type: the ``Content-Type`` (``text/*`` gets the charset appended).
            background: a task Starlette runs after the response.
            on_complete: passed to :func:`~tether.accumulate`.
            idle_timeout: passed to :func:`~tether.accumulate`.
            timing: passed to :func:`~tether.accumulate`.

        Raises:
            TypeError: ``source`` is not iterable, is a sync :class:`~tether.Stream`, or is
                an :class:`~tether.AsyncStream` given together with stream options.
        """
        if isinstance(source, AsyncStream):
            if on_complete is not None or idle_timeout is not None or timing != "basic":
                raise TypeError(
                    "source is already an AsyncStream: give on_complete, idle_timeout and "
                    "timing to accumulate() instead"
                )
            stream = source
        elif isinstance(source, Stream):
            raise TypeError(
                "a sync tether Stream cannot be served; pass its source, which is then "
                "read in worker threads"
            )
        elif isinstance(source, AsyncIterable):
            stream = accumulate(
                source, on_complete=on_complete, idle_timeout=idle_timeout, timing=timing
            )
        elif isinstance(source, Iterable):
            stream = accumulate(
                _iterate_in_thread(source),
                on_complete=on_complete,
                idle_timeout=idle_timeout,
                timing=timing,
            )
        else:
            raise TypeError(
                f"StreamingResponse needs an iterable or an async iterable source, "
                f"got {type(source).__name__}"
            )
        self.stream = stream
        self.body_iterator = stream
        self.status_code = status_code
        self.media_type = self.media_type if media_type is None else media_type
        self.background = background
        self.init_headers(headers)
        self._disconnected = False

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Send the response; return only once the source is closed."""
        if scope["type"] == "websocket":
            send = self._wrap_websocket_denial_send(send)
        stream = self.stream
        failure: Exception | None = None
        try:
            async with anyio.create_task_group() as group:
                group.start_soon(self._watch_for_disconnect, receive, group.cancel_scope)
                try:
                    await self._send_body(send)
                except Exception as exc:  # noqa: BLE001 - re-raised below, outside the group
                    failure = exc
                group.cancel_scope.cancel()
        except BaseException as exc:
            # The request itself was cancelled (server shutdown, an outer timeout).
            await stream.__aexit__(type(exc), exc, exc.__traceback__)
            raise
        if failure is None:
            # Finished already unless the client left; callback errors were logged.
            await stream._close(StreamOutcome.CLOSED)
        elif stream.error is not failure and isinstance(failure, OSError):
            # ASGI 2.4 servers report a gone client by failing send().
            await stream._close(StreamOutcome.CLOSED)
            raise ClientDisconnect from failure
        else:
            await stream.__aexit__(type(failure), failure, failure.__traceback__)
            raise failure
        if self.background is not None:
            await self.background()

    async def _send_body(self, send: Send) -> None:
        await send(
            {"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers}
        )
        try:
            async for chunk in self.stream:
                body = chunk.encode(self.charset) if isinstance(chunk, str) else chunk
                await send({"type": "http.response.body", "body": body, "more_body": True})
        except Exception:
            if self.stream.outcome is not StreamOutcome.COMPLETED:
                raise
            # The source ran out, so the error is finishing the stream's: an on_complete
            # callback, or closing the source. tether logged it; the body is whole, so the
            # response is finished as usual rather than cut off.
        if not self._disconnected:
            await send({"type": "http.response.body", "body": b"", "more_body": False})

    async def _watch_for_disconnect(
        self, receive: Receive, cancel_scope: anyio.CancelScope
    ) -> None:
        message: Message = await receive()
        while message["type"] not in _DISCONNECTS:
            message = await receive()
        self._disconnected = True
        # The body is cancelled wherever it waits, in the request task: a pending read
        # cancels the source there (and anyio's shields, such as a worker thread's read in
        # progress, are respected); between two reads the source is closed after the group.
        self.stream._cancellation_means_closed()
        cancel_scope.cancel()
