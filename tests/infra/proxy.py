"""A loopback TCP proxy that breaks the network on command.

Fault tests put a ``TcpProxy`` between a client and a real server and then make the
network misbehave at a chosen moment:

- ``cut()``: every live connection is reset (``SO_LINGER 0``, so both peers see a TCP RST
  rather than a clean close) and new connections are refused;
- ``refuse()``: new connections are refused, established ones keep working;
- ``blackhole()``: nothing is forwarded any more, in either direction, and new connections
  are accepted but never answered — a hung network rather than a dead one;
- ``restore()``: back to plain forwarding (connections held by ``blackhole()`` resume).

"Refused" means accepted and reset at once, so a client fails immediately instead of
waiting for a timeout, as it would against a crashed server.

Theory of operation: one thread runs a ``selectors`` loop over the listening socket, every
proxied socket and a wake-up socket pair. Only that thread touches the proxied sockets;
the public methods queue a command, wake the loop and wait until it has been carried out,
so when ``cut()`` returns every connection is already reset. Each direction of a
connection holds at most one chunk in flight: the proxy stops reading from a peer while
the other peer has not taken the previous chunk, so backpressure passes through.
"""

from __future__ import annotations

import collections
import contextlib
import enum
import selectors
import socket
import struct
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from types import TracebackType
from typing import Final, Self, final

_CHUNK: Final = 65536
_COMMAND_TIMEOUT: Final = 30.0  # a guard: the loop answers in microseconds when healthy
_RESET_LINGER: Final = struct.pack("ii", 1, 0)  # l_onoff=1, l_linger=0: close sends RST


class ProxyMode(enum.Enum):
    """What the proxy does with traffic."""

    FORWARD = "forward"
    REFUSE = "refuse"
    BLACKHOLE = "blackhole"


class _State(enum.Enum):
    UNSTARTED = "unstarted"
    RUNNING = "running"
    STOPPED = "stopped"


@dataclass(eq=False)
class _Link:
    """One proxied connection: the accepted client socket and its upstream socket."""

    client: socket.socket
    # None while the connection is held by blackhole() before reaching upstream.
    upstream: socket.socket | None
    to_upstream: bytearray = field(default_factory=bytearray)
    to_client: bytearray = field(default_factory=bytearray)
    client_eof: bool = False  # the client will send nothing more
    upstream_eof: bool = False
    upstream_shut: bool = False  # we have passed the client's EOF on upstream
    client_shut: bool = False
    closed: bool = False


@dataclass(eq=False)
class _Command:
    action: Callable[[], None]
    done: threading.Event = field(default_factory=threading.Event)
    error: BaseException | None = None


def _reset(sock: socket.socket) -> None:
    """Close ``sock`` so that the peer gets a TCP RST, not a FIN."""
    with contextlib.suppress(OSError):  # already broken: closing it is all there is to do
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _RESET_LINGER)
    sock.close()


@final
class TcpProxy:
    """A threaded TCP proxy on ``127.0.0.1:<free port>`` in front of one target.

    Args:
        target_host: Host the proxy forwards to.
        target_port: Port the proxy forwards to.
        connect_timeout: Seconds allowed for each connection to the target.

    The proxy is a context manager: entering starts it, leaving stops it. ``stop()``
    closes every socket and joins the thread; nothing outlives it.
    """

    def __init__(self, target_host: str, target_port: int, *, connect_timeout: float = 5.0) -> None:
        if not isinstance(target_port, int) or not 0 < target_port < 65536:
            raise ValueError(f"target_port must be a TCP port number, got {target_port!r}")
        if connect_timeout <= 0:
            raise ValueError(f"connect_timeout must be positive, got {connect_timeout!r}")
        self.target_host: Final = target_host
        self.target_port: Final = target_port
        self._connect_timeout = connect_timeout
        self._state = _State.UNSTARTED
        self._mode = ProxyMode.FORWARD
        self._port: int | None = None
        self._lock = threading.Lock()  # guards the command queue and the counters
        self._commands: collections.deque[_Command] = collections.deque()
        self._connections_total = 0
        self._refused_total = 0
        self._live = 0
        self._links: set[_Link] = set()
        self._listener: socket.socket | None = None
        self._wake_reader: socket.socket | None = None
        self._wake_writer: socket.socket | None = None
        self._selector: selectors.BaseSelector | None = None
        self._thread: threading.Thread | None = None
        self._failure: BaseException | None = None
        self._stopping = False

    # -- lifecycle -------------------------------------------------------------------

    def start(self) -> Self:
        """Bind a free loopback port and start forwarding.

        Returns:
            The proxy itself, so that ``proxy = TcpProxy(...).start()`` reads well.

        Raises:
            RuntimeError: The proxy was already started.
        """
        if self._state is not _State.UNSTARTED:
            raise RuntimeError(f"the proxy is {self._state.value}; a proxy starts once")
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            listener.bind(("127.0.0.1", 0))
            listener.listen(128)
            listener.settimeout(0.0)  # non-blocking, like every socket here
            wake_reader, wake_writer = socket.socketpair()
        except BaseException:
            listener.close()
            raise
        wake_reader.settimeout(0.0)
        wake_writer.settimeout(0.0)
        selector = selectors.DefaultSelector()
        selector.register(listener, selectors.EVENT_READ, None)
        selector.register(wake_reader, selectors.EVENT_READ, None)
        self._listener, self._wake_reader, self._wake_writer = listener, wake_reader, wake_writer
        self._selector = selector
        self._port = listener.getsockname()[1]
        self._thread = threading.Thread(
            target=self._run, name=f"TcpProxy:{self._port}->{self.target_port}", daemon=True
        )
        self._state = _State.RUNNING
        self._thread.start()
        return self

    def stop(self) -> None:
        """Reset every connection, close every socket and join the proxy's thread.

        Calling it again, or on a proxy that never started, does nothing.

        Raises:
            RuntimeError: The proxy's loop had failed; its error is the ``__cause__``.
        """
        if self._state is _State.UNSTARTED:
            self._state = _State.STOPPED
            return
        if self._state is _State.STOPPED:
            return
        self._state = _State.STOPPED
        assert self._thread is not None
        with self._lock:
            self._stopping = True
        self._wake()
        self._thread.join(_COMMAND_TIMEOUT)
        if self._thread.is_alive():  # pragma: no cover - only if the loop hangs
            raise RuntimeError(f"{self!r}: the proxy thread did not stop")
        if self._wake_writer is not None:
            self._wake_writer.close()
        if self._failure is not None:
            raise RuntimeError(f"{self!r}: the proxy loop failed") from self._failure

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        port = self._port if self._port is not None else "?"
        return (
            f"<TcpProxy 127.0.0.1:{port} -> {self.target_host}:{self.target_port}"
            f" {self._state.value} {self._mode.value}>"
        )

    # -- faults ----------------------------------------------------------------------

    def cut(self) -> None:
        """Reset every live connection (both peers see an RST) and refuse new ones.

        When this returns, every connection is already closed.
        """
        self._command(self._do_cut)

    def refuse(self) -> None:
        """Refuse new connections; established connections keep forwarding."""
        self._command(lambda: self._set_mode(ProxyMode.REFUSE))

    def blackhole(self) -> None:
        """Stop forwarding anything, in either direction, as a hung network would.

        New connections are accepted and then left unanswered. Established connections
        stop moving bytes; they are not closed.
        """
        self._command(lambda: self._set_mode(ProxyMode.BLACKHOLE))

    def restore(self) -> None:
        """Forward normally again; connections stalled by ``blackhole()`` carry on."""
        self._command(lambda: self._set_mode(ProxyMode.FORWARD))

    # -- observation -----------------------------------------------------------------

    @property
    def host(self) -> str:
        """The address the proxy listens on: always ``127.0.0.1``."""
        return "127.0.0.1"

    @property
    def port(self) -> int:
        """The port the proxy listens on (known once started)."""
        if self._port is None:
            raise RuntimeError("the proxy has no port until start()")
        return self._port

    @property
    def mode(self) -> ProxyMode:
        """The current fault mode."""
        return self._mode

    @property
    def connections_total(self) -> int:
        """Connections accepted for forwarding since start (refused ones not counted)."""
        with self._lock:
            return self._connections_total

    @property
    def refused_total(self) -> int:
        """Connections refused (accepted, then reset at once) since start."""
        with self._lock:
            return self._refused_total

    @property
    def live_connections(self) -> int:
        """Connections currently open through the proxy."""
        with self._lock:
            return self._live

    # -- commands (any thread) -------------------------------------------------------

    def _command(self, action: Callable[[], None]) -> None:
        if self._state is not _State.RUNNING:
            raise RuntimeError(f"{self!r} is not running")
        assert self._thread is not None
        if not self._thread.is_alive():
            raise RuntimeError(f"{self!r}: the proxy loop failed") from self._failure
        command = _Command(action)
        with self._lock:
            self._commands.append(command)
        self._wake()
        if not command.done.wait(_COMMAND_TIMEOUT):  # pragma: no cover - loop hung
            raise RuntimeError(f"{self!r}: the proxy loop did not answer")
        if command.error is not None:
            raise RuntimeError(f"{self!r}: the proxy loop failed") from command.error

    def _wake(self) -> None:
        assert self._wake_writer is not None
        # Full: a wake-up is pending already. Broken: the loop has died, and the caller
        # reports why.
        with contextlib.suppress(OSError):
            self._wake_writer.send(b"\0")

    # -- the loop (proxy thread only) ------------------------------------------------

    def _run(self) -> None:
        assert self._selector is not None
        try:
            while True:
                for key, events in self._selector.select():
                    if key.fileobj is self._listener:
                        self._accept_all()
                    elif key.fileobj is self._wake_reader:
                        self._drain_wake()
                    else:
                        link, from_client = key.data
                        self._on_ready(link, from_client, events)
                with self._lock:
                    commands = list(self._commands)
                    self._commands.clear()
                    stopping = self._stopping
                for command in commands:
                    try:
                        command.action()
                    except BaseException as exc:  # reported to the caller, which raises
                        command.error = exc
                    finally:
                        command.done.set()
                if stopping:
                    return
        except BaseException as exc:
            self._failure = exc
        finally:
            self._shutdown()

    def _shutdown(self) -> None:
        for link in list(self._links):
            self._abort(link)
        assert self._selector is not None
        self._selector.close()
        for sock in (self._listener, self._wake_reader):
            if sock is not None:
                sock.close()
        with self._lock:
            # A command that raced with stop() must not wait for its guard to expire.
            for command in self._commands:
                command.error = RuntimeError("the proxy stopped")
                command.done.set()
            self._commands.clear()

    def _drain_wake(self) -> None:
        assert self._wake_reader is not None
        try:
            while self._wake_reader.recv(4096):
                pass
        except BlockingIOError:
            pass

    def _accept_all(self) -> None:
        assert self._listener is not None
        while True:
            try:
                client, _ = self._listener.accept()
            except BlockingIOError:
                return
            except ConnectionAbortedError:
                continue  # the client gave up before we got to it
            if self._mode is ProxyMode.REFUSE:
                # Counted first: the client sees the reset at once and may read the count.
                with self._lock:
                    self._refused_total += 1
                _reset(client)
                continue
            client.settimeout(0.0)
            client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            link = _Link(client=client, upstream=None)
            self._links.add(link)
            with self._lock:
                self._connections_total += 1
                self._live = len(self._links)
            if self._mode is ProxyMode.FORWARD:
                self._connect_upstream(link)
            else:
                self._refresh(link)

    def _connect_upstream(self, link: _Link) -> None:
        # A blocking connect from the loop is fine: the target is on loopback, where a
        # connect completes or is refused at once (the timeout is only a guard).
        try:
            upstream = socket.create_connection(
                (self.target_host, self.target_port), timeout=self._connect_timeout
            )
        except OSError:
            # The target is down: the client sees what a dead server would give it.
            self._abort(link)
            return
        upstream.settimeout(0.0)
        upstream.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        link.upstream = upstream
        self._refresh(link)

    def _on_ready(self, link: _Link, from_client: bool, events: int) -> None:
        if events & selectors.EVENT_WRITE and not link.closed:
            self._flush(link, toward_client=from_client)
        if events & selectors.EVENT_READ and not link.closed:
            self._pump(link, from_client=from_client)
        if not link.closed:
            self._refresh(link)

    def _pump(self, link: _Link, *, from_client: bool) -> None:
        """Read one chunk from one peer and pass it on to the other."""
        assert link.upstream is not None
        source, sink = (link.client, link.upstream) if from_client else (link.upstream, link.client)
        pending = link.to_upstream if from_client else link.to_client
        try:
            data = source.recv(_CHUNK)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._abort(link)  # a reset on one side is passed on as a reset
            return
        if not data:
            if from_client:
                link.client_eof = True
            else:
                link.upstream_eof = True
            self._pass_eof(link)
            return
        try:
            sent = sink.send(data)
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError:
            self._abort(link)
            return
        pending += data[sent:]

    def _flush(self, link: _Link, *, toward_client: bool) -> None:
        """Send what one peer has not taken yet."""
        assert link.upstream is not None
        sink = link.client if toward_client else link.upstream
        pending = link.to_client if toward_client else link.to_upstream
        if not pending:
            return
        try:
            sent = sink.send(pending)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._abort(link)
            return
        del pending[:sent]
        self._pass_eof(link)

    def _pass_eof(self, link: _Link) -> None:
        """Half-close a peer once the other one has finished and everything is delivered."""
        assert link.upstream is not None
        try:
            if link.client_eof and not link.to_upstream and not link.upstream_shut:
                link.upstream_shut = True
                link.upstream.shutdown(socket.SHUT_WR)
            if link.upstream_eof and not link.to_client and not link.client_shut:
                link.client_shut = True
                link.client.shutdown(socket.SHUT_WR)
        except OSError:
            self._abort(link)
            return
        if link.upstream_shut and link.client_shut:
            self._close(link, reset=False)

    def _refresh(self, link: _Link) -> None:
        """Register each socket of ``link`` for exactly the events it is waiting on."""
        forwarding = self._mode is not ProxyMode.BLACKHOLE and link.upstream is not None
        client_events = upstream_events = 0
        if forwarding:
            if not link.client_eof and not link.to_upstream:
                client_events |= selectors.EVENT_READ
            if link.to_client:
                client_events |= selectors.EVENT_WRITE
            if not link.upstream_eof and not link.to_client:
                upstream_events |= selectors.EVENT_READ
            if link.to_upstream:
                upstream_events |= selectors.EVENT_WRITE
        self._register(link.client, client_events, (link, True))
        if link.upstream is not None:
            self._register(link.upstream, upstream_events, (link, False))

    def _register(self, sock: socket.socket, events: int, data: tuple[_Link, bool]) -> None:
        assert self._selector is not None
        try:
            key = self._selector.get_key(sock)
        except KeyError:
            if events:
                self._selector.register(sock, events, data)
            return
        if not events:
            self._selector.unregister(sock)
        elif key.events != events:
            self._selector.modify(sock, events, data)

    def _abort(self, link: _Link) -> None:
        self._close(link, reset=True)

    def _close(self, link: _Link, *, reset: bool) -> None:
        if link.closed:
            return
        link.closed = True
        assert self._selector is not None
        for sock in (link.client, link.upstream):
            if sock is None:
                continue
            with contextlib.suppress(KeyError):  # not registered while it had nothing to do
                self._selector.unregister(sock)
            if reset:
                _reset(sock)
            else:
                sock.close()
        self._links.discard(link)
        with self._lock:
            self._live = len(self._links)

    def _do_cut(self) -> None:
        self._mode = ProxyMode.REFUSE
        for link in list(self._links):
            self._abort(link)

    def _set_mode(self, mode: ProxyMode) -> None:
        self._mode = mode
        for link in list(self._links):
            if mode is ProxyMode.FORWARD and link.upstream is None:
                self._connect_upstream(link)
            else:
                self._refresh(link)
