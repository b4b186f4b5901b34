"""tether.starlette.StreamingResponse: a real uvicorn server on 127.0.0.1, real httpx clients.

Each test registers a :class:`Scenario` — the source an endpoint serves and a record of
what happened to it on the server — then talks to the server over TCP. The server runs in
a thread of its own, so the scenario records with thread-safe events, and the tests wait
for them with generous guard timeouts (failure guards, not timing assertions).
"""

from __future__ import annotations

import asyncio
import logging
import socket
import subprocess
import sys
import threading
import uuid
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from contextlib import aclosing
from typing import Any

import anyio
import httpx
import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.background import BackgroundTask
from starlette.requests import ClientDisconnect, Request
from starlette.routing import Route
from starlette.types import Message, Receive, Scope, Send

import tether
from tether import StreamOutcome
from tether.starlette import StreamingResponse

GUARD = 10.0  # seconds; only reached when something is broken


class Boom(Exception):
    """The source's own error."""


class Scenario:
    """One endpoint's source, and what happened to it on the server."""

    def __init__(self, make_source: Callable[[Scenario], object], **options: Any) -> None:
        self.name = uuid.uuid4().hex
        self.make_source = make_source
        self.options = options
        self.started = threading.Event()
        self.closed = threading.Event()
        self.completed = threading.Event()
        self.returned = threading.Event()
        self.disconnected = threading.Event()
        self.release = threading.Event()
        self.finally_count = 0
        self.request_task: object = None
        self.finally_task: object = None
        self.snapshots: list[tether.StreamSnapshot[str, str]] = []
        self.finished_before_return: bool | None = None

    def on_complete(self, snapshot: tether.StreamSnapshot[str, str]) -> None:
        self.snapshots.append(snapshot)
        self.completed.set()

    def asgi_call_returned(self) -> None:
        self.finished_before_return = self.closed.is_set() and self.completed.is_set()
        self.returned.set()

    @property
    def outcomes(self) -> list[StreamOutcome]:
        return [snapshot.outcome for snapshot in self.snapshots]

    async def rows(
        self, chunks: Sequence[str], *, then: str | BaseException = "end"
    ) -> AsyncIterator[str]:
        """Yield ``chunks``; then end, ``"hang"`` forever, or raise ``then``."""
        self.request_task = asyncio.current_task()
        self.started.set()
        try:
            for chunk in chunks:
                yield chunk
            if isinstance(then, BaseException):
                raise then
            if then == "hang":
                await asyncio.sleep(3600)
        finally:
            self.finally_count += 1
            self.finally_task = asyncio.current_task()
            self.closed.set()

    def sync_rows(self, chunks: Sequence[str], *, hold: bool = False) -> Iterator[str]:
        """Yield ``chunks`` from a worker thread; with ``hold``, block until released."""
        self.started.set()
        try:
            yield from chunks
            if hold:
                self.release.wait(GUARD)
                yield "released\n"
        finally:
            self.finally_count += 1
            self.closed.set()


SCENARIOS: dict[str, Scenario] = {}


async def endpoint(request: Request) -> StreamingResponse[str]:
    scenario = SCENARIOS[request.path_params["name"]]
    source: Any = scenario.make_source(scenario)
    return StreamingResponse(
        source, media_type="text/plain", on_complete=scenario.on_complete, **scenario.options
    )


starlette_app = Starlette(routes=[Route("/stream/{name}", endpoint)])


async def app(scope: Scope, receive: Receive, send: Send) -> None:
    """The Starlette app, noting when the server reports a disconnect and when each ASGI
    call returns."""
    scenario = SCENARIOS[scope["path"].rsplit("/", 1)[1]]

    async def noting_receive() -> Message:
        message = await receive()
        if message["type"] == "http.disconnect":
            scenario.disconnected.set()
        return message

    try:
        await starlette_app(scope, noting_receive, send)
    finally:
        scenario.asgi_call_returned()


class _Server(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, ready: threading.Event) -> None:
        super().__init__(config)
        self.ready = ready

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets=sockets)
        self.ready.set()


@pytest.fixture(scope="module")
def base_url() -> Iterator[str]:
    """A uvicorn server on a free loopback port, serving ``app`` from its own thread."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    ready = threading.Event()
    config = uvicorn.Config(app, lifespan="off", log_config=None, access_log=False)
    server = _Server(config, ready)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        assert ready.wait(GUARD), "uvicorn did not start"
        yield f"http://127.0.0.1:{port}/stream/"
    finally:
        server.should_exit = True
        thread.join(GUARD)
        sock.close()


def register(scenario: Scenario) -> Scenario:
    SCENARIOS[scenario.name] = scenario
    return scenario


async def happened(event: threading.Event) -> bool:
    """Wait for a server-side event, at most GUARD seconds."""
    return await anyio.to_thread.run_sync(event.wait, GUARD)


async def read_one_chunk_and_leave(url: str) -> bytes:
    """Read the first body chunk, then drop the connection (a client disconnect)."""
    async with httpx.AsyncClient() as client, client.stream("GET", url) as response:
        async with aclosing(response.aiter_raw()) as body:
            async for chunk in body:
                return chunk
    raise AssertionError("the body ended before its first chunk")


# -- a real server, real clients ----------------------------------------------------------


async def test_client_reads_everything(base_url: str) -> None:
    """(a) A client that reads the whole body: COMPLETED, content is what was sent."""
    scenario = register(Scenario(lambda s: s.rows(["alpha\n", "beta\n", "gamma\n"])))
    async with httpx.AsyncClient() as client:
        response = await client.get(base_url + scenario.name)
    assert (response.status_code, response.text) == (200, "alpha\nbeta\ngamma\n")
    assert response.headers["content-type"] == "text/plain; charset=utf-8"
    assert await happened(scenario.returned)
    assert (scenario.outcomes, scenario.finally_count) == ([StreamOutcome.COMPLETED], 1)
    assert scenario.snapshots[0].content == response.text
    assert scenario.finished_before_return is True


async def test_disconnect_mid_stream_closes_the_source_in_the_request_task(base_url: str) -> None:
    """(b) The client leaves after the first chunk while the source waits for its next one:
    the source is closed promptly, in the request task, before the ASGI call returns, and
    the stream reports CLOSED."""
    scenario = register(Scenario(lambda s: s.rows(["first\n"], then="hang")))
    assert await read_one_chunk_and_leave(base_url + scenario.name) == b"first\n"
    assert await happened(scenario.closed)
    assert await happened(scenario.returned)
    assert (scenario.outcomes, scenario.finally_count) == ([StreamOutcome.CLOSED], 1)
    assert scenario.finally_task is scenario.request_task
    assert scenario.snapshots[0].content == "first\n"
    assert scenario.finished_before_return is True


async def test_disconnect_before_the_first_chunk_still_closes(base_url: str) -> None:
    """(c) The client leaves before the source produced anything: closed all the same."""
    scenario = register(Scenario(lambda s: s.rows([], then="hang")))
    async with httpx.AsyncClient() as client, client.stream("GET", base_url + scenario.name) as r:
        assert r.status_code == 200
        assert await happened(scenario.started)
    assert await happened(scenario.closed)
    assert await happened(scenario.returned)
    assert (scenario.outcomes, scenario.finally_count) == ([StreamOutcome.CLOSED], 1)
    assert scenario.finally_task is scenario.request_task
    assert scenario.snapshots[0].metrics.chunk_count == 0
    assert scenario.finished_before_return is True


async def test_source_error_is_error_and_cuts_the_response(base_url: str) -> None:
    """(d) The source raises: ERROR with its exception, the client sees a cut-off body."""
    error = Boom("upstream broke")
    scenario = register(Scenario(lambda s: s.rows(["partial\n"], then=error)))
    async with httpx.AsyncClient() as client:
        with pytest.raises(httpx.RemoteProtocolError):
            await client.get(base_url + scenario.name)
    assert await happened(scenario.returned)
    assert (scenario.outcomes, scenario.finally_count) == ([StreamOutcome.ERROR], 1)
    assert scenario.snapshots[0].error is error
    assert scenario.finished_before_return is True


async def test_idle_source_times_out(base_url: str) -> None:
    """A source that goes quiet for longer than idle_timeout: TIMED_OUT, response cut."""
    scenario = register(Scenario(lambda s: s.rows(["only\n"], then="hang"), idle_timeout=0.2))
    async with httpx.AsyncClient() as client:
        with pytest.raises(httpx.RemoteProtocolError):
            await client.get(base_url + scenario.name)
    assert await happened(scenario.returned)
    assert (scenario.outcomes, scenario.finally_count) == ([StreamOutcome.TIMED_OUT], 1)


async def test_sync_source_is_read_in_threads(base_url: str) -> None:
    """A blocking source is read in worker threads and closed when done."""
    scenario = register(Scenario(lambda s: s.sync_rows(["one\n", "two\n"])))
    async with httpx.AsyncClient() as client:
        response = await client.get(base_url + scenario.name)
    assert response.text == "one\ntwo\n"
    assert await happened(scenario.returned)
    assert (scenario.outcomes, scenario.finally_count) == ([StreamOutcome.COMPLETED], 1)


async def test_sync_source_disconnect_closes_after_the_blocked_read(base_url: str) -> None:
    """A client leaving while a blocking read is in progress: the read cannot be
    interrupted, but as soon as it returns the source is closed, CLOSED, before return."""
    scenario = register(Scenario(lambda s: s.sync_rows(["one\n"], hold=True)))
    assert await read_one_chunk_and_leave(base_url + scenario.name) == b"one\n"
    assert await happened(scenario.disconnected)
    scenario.release.set()
    assert await happened(scenario.closed)
    assert await happened(scenario.returned)
    assert (scenario.outcomes, scenario.finally_count) == ([StreamOutcome.CLOSED], 1)
    assert scenario.finished_before_return is True


async def test_httpx_response_as_a_source(base_url: str) -> None:
    """An httpx streaming response is accumulated as bytes and closed at the end."""
    scenario = register(Scenario(lambda s: s.rows(["x" * 10, "y" * 10])))
    async with httpx.AsyncClient() as client:
        response = await client.send(
            client.build_request("GET", base_url + scenario.name), stream=True
        )
        async with tether.accumulate(response) as stream:
            async for _chunk in stream:
                pass
    assert (stream.content, stream.outcome) == (b"x" * 10 + b"y" * 10, StreamOutcome.COMPLETED)
    assert response.is_closed
    assert stream.metrics.byte_count == 20


async def test_httpx_response_left_early_disconnects_upstream(base_url: str) -> None:
    """Leaving an accumulated httpx response early closes it; the server sees the
    disconnect and closes its own source."""
    scenario = register(Scenario(lambda s: s.rows(["first\n"], then="hang")))
    async with httpx.AsyncClient() as client:
        response = await client.send(
            client.build_request("GET", base_url + scenario.name), stream=True
        )
        async with tether.accumulate(response) as stream:
            async for _chunk in stream:
                break
        assert (response.is_closed, stream.outcome) == (True, StreamOutcome.CLOSED)
    assert await happened(scenario.closed)
    assert await happened(scenario.returned)
    assert scenario.outcomes == [StreamOutcome.CLOSED]


# -- the ASGI interface directly: paths a server cannot be made to take on demand ----------


class FakeClient:
    """The ASGI side of a client: a disconnect on demand, sends recorded (or failing)."""

    def __init__(self, *, block_body: bool = False, fail_body: bool = False) -> None:
        self.disconnect = asyncio.Event()
        self.body_sent = asyncio.Event()
        self.block_body = block_body
        self.fail_body = fail_body
        self.messages: list[Message] = []

    async def receive(self) -> Message:
        await self.disconnect.wait()
        return {"type": "http.disconnect"}

    async def send(self, message: Message) -> None:
        self.messages.append(message)
        if message["type"] == "http.response.body":
            self.body_sent.set()
            if self.fail_body:
                raise OSError("connection reset by peer")
            if self.block_body:
                await asyncio.sleep(3600)


HTTP_SCOPE: Scope = {"type": "http", "method": "GET", "path": "/", "headers": []}


async def test_disconnect_while_sending_closes_in_the_request_task() -> None:
    """A disconnect while the response waits in send() (not reading): the request task
    closes the source itself, reports CLOSED, and then returns."""
    scenario = Scenario(lambda s: s.rows(["a", "b"]))
    client = FakeClient(block_body=True)
    response = StreamingResponse(scenario.rows(["a", "b"]), on_complete=scenario.on_complete)
    call = asyncio.create_task(response(HTTP_SCOPE, client.receive, client.send))
    await client.body_sent.wait()
    client.disconnect.set()
    await call
    assert (scenario.outcomes, scenario.finally_count) == ([StreamOutcome.CLOSED], 1)
    assert scenario.finally_task is call
    assert response.stream.content == "a"


async def test_send_failing_is_a_client_disconnect() -> None:
    """An ASGI 2.4 server failing send() for a gone client: CLOSED, ClientDisconnect."""
    scenario = Scenario(lambda s: s.rows([]))
    client = FakeClient(fail_body=True)
    response = StreamingResponse(scenario.rows(["a", "b"]), on_complete=scenario.on_complete)
    with pytest.raises(ClientDisconnect):
        await response(HTTP_SCOPE, client.receive, client.send)
    assert (scenario.outcomes, scenario.finally_count) == ([StreamOutcome.CLOSED], 1)


async def test_source_oserror_is_not_a_disconnect() -> None:
    """An OSError from the source itself is the source's error, not a disconnect."""
    scenario = Scenario(lambda s: s.rows([]))
    error = OSError("upstream reset")
    response = StreamingResponse(scenario.rows(["a"], then=error), on_complete=scenario.on_complete)
    client = FakeClient()
    with pytest.raises(OSError, match="upstream reset") as caught:
        await response(HTTP_SCOPE, client.receive, client.send)
    assert caught.value is error
    assert scenario.outcomes == [StreamOutcome.ERROR]


async def test_cancelled_request_is_cancelled() -> None:
    """The request task cancelled (a server shutting down): CANCELLED, source closed."""
    scenario = Scenario(lambda s: s.rows([]))
    response = StreamingResponse(
        scenario.rows(["a"], then="hang"), on_complete=scenario.on_complete
    )
    client = FakeClient()
    call = asyncio.create_task(response(HTTP_SCOPE, client.receive, client.send))
    await client.body_sent.wait()
    call.cancel()
    with pytest.raises(asyncio.CancelledError):
        await call
    assert (scenario.outcomes, scenario.finally_count) == ([StreamOutcome.CANCELLED], 1)


async def test_background_task_runs_after_the_body() -> None:
    """A background task runs after the response, once the source is closed."""
    scenario = Scenario(lambda s: s.rows([]))
    ran: list[bool] = []
    response = StreamingResponse(
        scenario.rows([b"a"]),  # type: ignore[list-item]
        on_complete=scenario.on_complete,
        background=BackgroundTask(lambda: ran.append(scenario.closed.is_set())),
    )
    client = FakeClient()
    await response(HTTP_SCOPE, client.receive, client.send)
    assert (ran, scenario.outcomes) == ([True], [StreamOutcome.COMPLETED])
    assert [m.get("body") for m in client.messages[1:]] == [b"a", b""]


async def test_an_accumulated_stream_can_be_served() -> None:
    """An AsyncStream made by accumulate() is served as it is."""
    done: list[StreamOutcome] = []
    stream = tether.accumulate(
        Scenario(lambda s: None).rows(["a"]), on_complete=lambda s: done.append(s.outcome)
    )
    client = FakeClient()
    response = StreamingResponse(stream)
    await response(HTTP_SCOPE, client.receive, client.send)
    assert (response.stream is stream, done) == (True, [StreamOutcome.COMPLETED])


async def test_bad_sources_are_rejected() -> None:
    """Non-iterables, sync tether Streams and options beside an AsyncStream are refused."""
    with pytest.raises(TypeError, match="got int"):
        StreamingResponse(42)  # type: ignore[call-overload]
    sync_stream = tether.accumulate(["a"])
    with pytest.raises(TypeError, match="sync tether Stream"):
        StreamingResponse(sync_stream)  # type: ignore[arg-type]
    sync_stream.close()
    async_stream = tether.accumulate(Scenario(lambda s: None).rows(["a"]))
    with pytest.raises(TypeError, match="give on_complete"):
        StreamingResponse(async_stream, idle_timeout=1.0)
    await async_stream.aclose()


def test_missing_starlette_names_the_extra() -> None:
    """Without Starlette installed, importing tether.starlette says which extra to install."""
    code = (
        "import sys\n"
        "sys.modules['starlette'] = None\n"
        "try:\n"
        "    import tether.starlette\n"
        "except ImportError as error:\n"
        "    print(error)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert "pip install 'tether[starlette]'" in result.stdout


@pytest.mark.parametrize("error", [ValueError("metrics backend down"), OSError("disk full")])
async def test_on_complete_error_is_logged_and_the_response_still_finishes(
    error: Exception, caplog: pytest.LogCaptureFixture
) -> None:
    """An on_complete callback failing on a stream that ran out: the error is logged, not
    raised (an OSError is no client disconnect either), the body is ended and the
    background task runs."""
    scenario = Scenario(lambda s: s.rows([]))
    ran: list[bool] = []

    def failing(snapshot: tether.StreamSnapshot[str, str]) -> None:
        raise error

    response = StreamingResponse(
        scenario.rows(["a"]),
        on_complete=[scenario.on_complete, failing],
        background=BackgroundTask(lambda: ran.append(True)),
    )
    client = FakeClient()
    with caplog.at_level(logging.ERROR, "tether.stream"):
        await response(HTTP_SCOPE, client.receive, client.send)
    assert (ran, scenario.outcomes) == ([True], [StreamOutcome.COMPLETED])
    assert [(m.get("body"), m.get("more_body")) for m in client.messages[1:]] == [
        (b"a", True),
        (b"", False),
    ]
    assert [record.exc_info[1] for record in caplog.records if record.exc_info] == [error]


async def test_sync_source_idle_timeout_ends_the_response_and_closes_the_source_later() -> None:
    """A blocking read still running in its worker thread when idle_timeout expires: the
    response ends at once (TIMED_OUT), without waiting for a source that may never answer;
    the source is closed once that read returns, by its thread (not while it runs, which a
    generator refuses with "generator already executing")."""
    blocked, release = threading.Event(), threading.Event()
    closed: list[int] = []
    closed_event = threading.Event()

    def rows() -> Iterator[str]:
        try:
            yield "a"
            blocked.set()
            release.wait(GUARD)
            yield "b"
        finally:
            closed.append(1)
            closed_event.set()

    snapshots: list[tether.StreamSnapshot[str, str]] = []
    response = StreamingResponse(rows(), idle_timeout=0.05, on_complete=snapshots.append)
    client = FakeClient()
    call = asyncio.create_task(response(HTTP_SCOPE, client.receive, client.send))
    assert await happened(blocked)
    with pytest.raises(tether.StreamIdleTimeout):
        await asyncio.wait_for(call, GUARD)  # while the read is still blocked
    assert [s.outcome for s in snapshots] == [StreamOutcome.TIMED_OUT]
    assert closed == []
    release.set()
    assert await happened(closed_event)
    assert closed == [1]
