"""The fault-test infrastructure does what fault tests rely on, against real servers.

A proxy that cuts, refuses and stalls connections; a private PostgreSQL that stops, crashes
and comes back with its data, never on the shared port; PgBouncer really pooling per
transaction; and nothing left behind afterwards.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import socketserver
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Generic, TypeVar

import psycopg
import pytest

from infra.fixtures import ProxyFactory, proxied_dsn
from infra.pgbouncer import PgBouncer
from infra.pgserver import PostgresBinaries, PrivatePostgres
from infra.processes import process_running, wait_until
from infra.proxy import ProxyMode, TcpProxy

T = TypeVar("T")

GUARD = 15.0  # seconds: only ever a failure guard, never a measurement


class Background(Generic[T]):
    """Run ``work`` in a thread; keep its result or its exception."""

    def __init__(self, work: Callable[[], T]) -> None:
        self.result: T | None = None
        self.error: BaseException | None = None
        self.done = threading.Event()
        self._work = work
        self._thread = threading.Thread(target=self._run, name="test-background")
        self._thread.start()

    def _run(self) -> None:
        try:
            self.result = self._work()
        except BaseException as exc:
            self.error = exc
        finally:
            self.done.set()

    def join(self) -> None:
        self._thread.join(GUARD)
        assert not self._thread.is_alive(), "background work outlived its guard"


class _Echo(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        try:
            while data := self.request.recv(65536):
                self.request.sendall(data)
        except ConnectionResetError:
            pass  # the proxy reset us: that is what several tests do on purpose


def _exchange(port: int, data: bytes) -> bytes:
    """Connect to ``port``, send ``data`` and return the first bytes that come back."""
    with socket.create_connection(("127.0.0.1", port), timeout=GUARD) as sock:
        sock.sendall(data)
        return sock.recv(65536)


@pytest.fixture
def echo_port() -> Iterator[int]:
    """A threaded TCP echo server on loopback; it echoes until the client half-closes."""
    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), _Echo)
    thread = threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.05}, name="echo-server"
    )
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()
        thread.join(GUARD)


def _open_fds() -> set[str]:
    return set(os.listdir("/proc/self/fd"))


def _connect(dsn: str, **options: object) -> psycopg.Connection[tuple[object, ...]]:
    return psycopg.connect(dsn, autocommit=True, connect_timeout=10, **options)  # type: ignore[arg-type]


# -- the proxy, byte level -------------------------------------------------------------


def test_proxy_relays_a_large_stream_both_ways_and_counts_it(
    tcp_proxy: ProxyFactory, echo_port: int
) -> None:
    """Four MiB sent through the proxy come back intact, end of stream included."""
    proxy = tcp_proxy("127.0.0.1", echo_port)
    payload = os.urandom(4 * 1024 * 1024)
    with socket.create_connection((proxy.host, proxy.port), timeout=GUARD) as client:
        assert wait_until(lambda: proxy.live_connections == 1, GUARD)

        def send_all() -> None:
            client.sendall(payload)
            client.shutdown(socket.SHUT_WR)

        sender = Background(send_all)
        received = bytearray()
        while chunk := client.recv(65536):
            received += chunk
        sender.join()
        assert sender.error is None
    assert payload == bytes(received)
    assert proxy.connections_total == 1
    assert wait_until(lambda: proxy.live_connections == 0, GUARD)


def test_proxy_stop_leaves_no_thread_and_no_socket(echo_port: int) -> None:
    """stop() resets live connections, joins the thread and closes every descriptor."""
    fds_before = _open_fds()
    threads_before = set(threading.enumerate())
    with TcpProxy("127.0.0.1", echo_port) as proxy:
        client = socket.create_connection((proxy.host, proxy.port), timeout=GUARD)
        client.sendall(b"ping")
        assert client.recv(4) == b"ping"
        assert proxy.live_connections == 1
    with client, pytest.raises(ConnectionResetError):
        client.recv(4)  # stop() reset what was still open
    assert [thread.name for thread in threading.enumerate() if "TcpProxy" in thread.name] == []
    # The echo server's handler for that connection exits once it sees the reset.
    assert wait_until(lambda: set(threading.enumerate()) <= threads_before, GUARD)
    assert set() == _open_fds() - fds_before


def test_proxy_refuse_resets_new_connections_and_keeps_old_ones(
    tcp_proxy: ProxyFactory, echo_port: int
) -> None:
    """refuse(): established connections still relay; a new one is reset at once."""
    proxy = tcp_proxy("127.0.0.1", echo_port)
    with socket.create_connection((proxy.host, proxy.port), timeout=GUARD) as old:
        proxy.refuse()
        assert proxy.mode == ProxyMode.REFUSE
        with pytest.raises(ConnectionResetError):
            _exchange(proxy.port, b"refused")
        old.sendall(b"still here")
        assert old.recv(64) == b"still here"
        assert (proxy.connections_total, proxy.refused_total) == (1, 1)
        proxy.restore()
        assert _exchange(proxy.port, b"back") == b"back"


def test_proxy_rejects_misuse() -> None:
    """Bad arguments and out-of-order calls raise at once, saying what is wrong."""
    with pytest.raises(ValueError, match="target_port"):
        TcpProxy("127.0.0.1", 0)
    with pytest.raises(ValueError, match="connect_timeout"):
        TcpProxy("127.0.0.1", 5432, connect_timeout=0)
    proxy = TcpProxy("127.0.0.1", 9)
    with pytest.raises(RuntimeError, match="no port until start"):
        _ = proxy.port
    with pytest.raises(RuntimeError, match="not running"):
        proxy.cut()
    with proxy:
        with pytest.raises(RuntimeError, match="starts once"):
            proxy.start()
    proxy.stop()  # a second stop does nothing
    with pytest.raises(RuntimeError, match="not running"):
        proxy.restore()


# -- the proxy in front of PostgreSQL --------------------------------------------------


def test_cut_breaks_idle_connections_and_refuses_new_ones_until_restore(
    tcp_proxy: ProxyFactory, private_postgres: PrivatePostgres
) -> None:
    """After cut() an idle connection's next query fails and connecting fails fast."""
    proxy = tcp_proxy(private_postgres.host, private_postgres.port)
    dsn = proxied_dsn(private_postgres.dsn(), proxy)
    with _connect(dsn) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)
        proxy.cut()
        assert proxy.live_connections == 0
        with pytest.raises(psycopg.OperationalError):
            conn.execute("SELECT 1")
    with pytest.raises(psycopg.OperationalError) as refused:
        _connect(dsn)
    assert "timeout" not in str(refused.value)  # refused outright, not left to time out
    assert proxy.refused_total >= 1
    proxy.restore()
    with _connect(dsn) as conn:
        assert conn.execute("SELECT 2").fetchone() == (2,)


def test_cut_fails_a_query_in_flight(
    tcp_proxy: ProxyFactory, private_postgres: PrivatePostgres
) -> None:
    """A connection waiting for a long query fails as soon as the proxy cuts it."""
    proxy = tcp_proxy(private_postgres.host, private_postgres.port)
    with (
        _connect(proxied_dsn(private_postgres.dsn(), proxy)) as victim,
        _connect(private_postgres.dsn()) as observer,
    ):
        backend = victim.info.backend_pid
        sleeper = Background(lambda: victim.execute("SELECT pg_sleep(60)").fetchone())

        def sleeping() -> bool:
            row = observer.execute(
                "SELECT state FROM pg_stat_activity WHERE pid = %s", (backend,)
            ).fetchone()
            return row == ("active",)

        assert wait_until(sleeping, GUARD)
        proxy.cut()
        sleeper.join()  # far sooner than the 60 s the query asked for
        assert isinstance(sleeper.error, psycopg.OperationalError)


def test_blackhole_stalls_new_connections(
    tcp_proxy: ProxyFactory, private_postgres: PrivatePostgres
) -> None:
    """Under blackhole() a connection is accepted but never answered: it times out."""
    proxy = tcp_proxy(private_postgres.host, private_postgres.port)
    dsn = proxied_dsn(private_postgres.dsn(), proxy)
    proxy.blackhole()
    with pytest.raises(psycopg.OperationalError, match="timeout"):
        psycopg.connect(dsn, connect_timeout=2, sslmode="disable")
    assert (proxy.connections_total, proxy.refused_total) == (1, 0)
    proxy.restore()
    with _connect(dsn) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)


def test_blackhole_stalls_an_established_connection_until_restore(
    tcp_proxy: ProxyFactory, private_postgres: PrivatePostgres
) -> None:
    """A query sent into a blackhole gets no answer; after restore() it completes."""
    proxy = tcp_proxy(private_postgres.host, private_postgres.port)
    with _connect(proxied_dsn(private_postgres.dsn(), proxy)) as conn:
        proxy.blackhole()
        query = Background(lambda: conn.execute("SELECT 42").fetchone())
        assert not query.done.wait(0.5)  # stalled, neither answered nor failed
        proxy.restore()
        query.join()
        assert (query.error, query.result) == (None, (42,))


# -- the private PostgreSQL -------------------------------------------------------------


def test_private_postgres_runs_on_its_own_port_and_directory(
    private_postgres: PrivatePostgres,
) -> None:
    """The private server answers on its own loopback port, never 5432, from its own files."""
    server = private_postgres
    with _connect(server.dsn()) as conn:
        settings = conn.execute(
            "SELECT current_setting('port'), current_setting('listen_addresses'),"
            " current_setting('data_directory'), current_setting('fsync')"
        ).fetchone()
    assert server.port != 5432
    assert (str(server.port), "127.0.0.1", str(server.data_dir), "off") == settings
    assert (server.socket_dir / f".s.PGSQL.{server.port}").is_socket()


def test_stop_then_start_keeps_the_data(private_postgres: PrivatePostgres) -> None:
    """While stopped the server refuses connections; after start() the table is still there."""
    server = private_postgres
    with _connect(server.dsn()) as conn:
        conn.execute("CREATE TABLE kept (v text)")
        conn.execute("INSERT INTO kept VALUES ('before the stop')")
    pid = server.pid
    server.stop()
    assert not server.running
    assert pid is not None
    assert not process_running(pid)
    with pytest.raises(psycopg.OperationalError):
        _connect(server.dsn())
    server.start()
    with _connect(server.dsn()) as conn:
        assert conn.execute("SELECT v FROM kept").fetchall() == [("before the stop",)]


def test_kill_then_start_recovers_committed_data(private_postgres: PrivatePostgres) -> None:
    """After SIGKILL the server runs crash recovery and keeps every committed row."""
    server = private_postgres
    with _connect(server.dsn()) as conn:
        conn.execute("CREATE TABLE survivors (v int)")
        conn.execute("INSERT INTO survivors SELECT generate_series(1, 100)")
        pid = server.pid
        server.kill()
        with pytest.raises(psycopg.OperationalError):
            conn.execute("SELECT 1")
    assert pid is not None
    assert not process_running(pid)
    server.start()
    with _connect(server.dsn()) as conn:
        assert conn.execute("SELECT count(*) FROM survivors").fetchone() == (100,)
    assert "not properly shut down" in server.log_text()  # it was a crash, not a stop


def test_restart_under_load_comes_back(private_postgres: PrivatePostgres) -> None:
    """A client connecting in a loop through a restart gets answers again once it is over."""
    server = private_postgres
    first_success = threading.Event()
    restarted = threading.Event()
    failures: list[Exception] = []

    def hammer() -> bool:
        # Bounded: it stops at the first success after the restart, or at the guard.
        return wait_until(lambda: query_once() and restarted.is_set(), GUARD, interval=0.01)

    def query_once() -> bool:
        try:
            with _connect(server.dsn()) as conn:
                conn.execute("SELECT 1")
        except psycopg.OperationalError as exc:
            failures.append(exc)
            return False
        first_success.set()
        return True

    worker = Background(hammer)
    assert first_success.wait(GUARD)
    old_pid = server.pid
    server.restart()
    restarted.set()
    worker.join()
    assert (worker.error, worker.result) == (None, True)
    assert server.pid not in (None, old_pid)


def test_stop_rejects_an_unknown_mode(private_postgres: PrivatePostgres) -> None:
    """stop() with a mode pg_ctl does not know raises ValueError and leaves the server up."""
    with pytest.raises(ValueError, match="mode"):
        private_postgres.stop("sudden")  # type: ignore[arg-type]
    assert private_postgres.running
    private_postgres.stop("immediate")
    with pytest.raises(RuntimeError, match="not running"):
        private_postgres.stop()


def test_private_postgres_leaves_the_shared_server_alone(
    postgres_dsn: str, private_postgres: PrivatePostgres
) -> None:
    """Killing and restarting the private server does not restart the one on 5432."""
    with _connect(postgres_dsn) as shared:
        query = "SELECT pg_postmaster_start_time(), current_setting('port')"
        before = shared.execute(query).fetchone()
    private_postgres.kill()
    private_postgres.start()
    private_postgres.restart("immediate")
    with _connect(postgres_dsn) as shared:
        after = shared.execute(query).fetchone()
    assert before == after
    assert before is not None
    assert before[1] == "5432"


def test_server_without_template_cleans_up_everything(
    postgres_binaries: PostgresBinaries,
) -> None:
    """A server that ran its own initdb removes its files and processes when it is done."""
    with PrivatePostgres() as server:
        pid = server.pid
        with _connect(server.dsn()) as conn:
            assert conn.execute("SELECT 1").fetchone() == (1,)
    assert pid is not None
    assert (
        process_running(pid),
        server.root.exists(),
        server.template.root.exists(),
    ) == (False, False, False)


# -- PgBouncer --------------------------------------------------------------------------


def test_query_through_pgbouncer(pgbouncer_dsn: str, pgbouncer: PgBouncer) -> None:
    """A query through PgBouncer reaches the server; the console lists the pool."""
    with _connect(pgbouncer_dsn, prepare_threshold=None) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)
    with _connect(pgbouncer.admin_dsn()) as admin:
        cursor = admin.execute("SHOW POOLS")
        assert cursor.description is not None
        columns = [column.name for column in cursor.description]
        pools = [dict(zip(columns, row, strict=True)) for row in cursor.fetchall()]
    assert {("postgres", "postgres", "transaction")} == {
        (pool["database"], pool["user"], pool["pool_mode"])
        for pool in pools
        if pool["database"] != "pgbouncer"
    }


def test_pgbouncer_pools_per_transaction(
    pgbouncer_binary: Path, private_postgres: PrivatePostgres
) -> None:
    """Two clients share one server connection: a session SET of one shows in the other."""
    server = private_postgres
    with PgBouncer(server.host, server.port, pool_size=1, binary=pgbouncer_binary) as bouncer:
        with _connect(bouncer.admin_dsn()) as admin:
            config = {row[0]: row[1] for row in admin.execute("SHOW CONFIG").fetchall()}
        options = {"prepare_threshold": None}
        with _connect(bouncer.dsn(), **options) as one, _connect(bouncer.dsn(), **options) as two:
            one.execute("SET statement_timeout = '4321ms'")
            seen_by_two = two.execute("SHOW statement_timeout").fetchone()
            backends = {
                one.execute("SELECT pg_backend_pid()").fetchone(),
                two.execute("SELECT pg_backend_pid()").fetchone(),
            }
    assert (config["pool_mode"], config["default_pool_size"]) == ("transaction", "1")
    assert seen_by_two == ("4321ms",)  # in session mode two could not even have run
    assert len(backends) == 1


def test_pgbouncer_reconnects_once_the_server_is_back(
    pgbouncer_dsn: str, private_postgres: PrivatePostgres
) -> None:
    """After the server behind it restarts, PgBouncer serves queries on new connections."""

    def backend() -> object:
        with _connect(pgbouncer_dsn, prepare_threshold=None) as conn:
            row = conn.execute("SELECT pg_backend_pid()").fetchone()
        assert row is not None
        return row[0]

    before = backend()
    private_postgres.restart()
    after: list[object] = []

    def answered() -> bool:
        try:
            after.append(backend())
        except psycopg.OperationalError:
            return False  # PgBouncer may report the dead server connection once
        return True

    assert wait_until(answered, GUARD, interval=0.1)
    assert before != after[-1]


def test_pgbouncer_rejects_bad_arguments(pgbouncer_binary: Path) -> None:
    """Bad options raise ValueError naming the option, before anything is started."""
    with pytest.raises(ValueError, match="pool_mode"):
        PgBouncer("127.0.0.1", 1, pool_mode="sometimes", binary=pgbouncer_binary)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="pool_size"):
        PgBouncer("127.0.0.1", 1, pool_size=0, binary=pgbouncer_binary)


# -- fixtures: cleanup and missing tools ------------------------------------------------

_INNER_TEST = """
import json, threading
from pathlib import Path

import psycopg
from infra.processes import children_of

def test_uses_everything(tcp_proxy, private_postgres, pgbouncer):
    proxy = tcp_proxy(pgbouncer.host, pgbouncer.port)
    dsn = f"postgresql://postgres@{proxy.host}:{proxy.port}/postgres"
    with psycopg.connect(dsn, autocommit=True, prepare_threshold=None) as conn:
        conn.execute("SELECT 1")
    # PgBouncer keeps its server connection: a backend is alive when the fixtures end.
    Path("seen.json").write_text(json.dumps({
        "processes": [private_postgres.pid, pgbouncer.pid, *children_of(private_postgres.pid)],
        "dirs": [str(private_postgres.root), str(pgbouncer.root)],
        "template": str(private_postgres.template.root),
        "proxy_threads": [t.name for t in threading.enumerate() if "TcpProxy" in t.name],
    }))
"""


def _sandbox(pytester: pytest.Pytester) -> None:
    here = Path(__file__).parent
    pytester.makeconftest((here / "conftest.py").read_text(encoding="utf-8"))
    shutil.copytree(
        here / "infra", pytester.path / "infra", ignore=shutil.ignore_patterns("__pycache__")
    )


@pytest.mark.slow
def test_fixtures_leave_no_process_or_directory_behind(
    pytester: pytest.Pytester, postgres_binaries: PostgresBinaries, pgbouncer_binary: Path
) -> None:
    """Once a test using every fixture is over, its servers are gone, pids and files alike."""
    _sandbox(pytester)
    pytester.makepyfile(_INNER_TEST)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-p", "no:cov", "-W", "error")
    result.assert_outcomes(passed=1)
    seen = json.loads((pytester.path / "seen.json").read_text(encoding="utf-8"))
    assert len(seen["proxy_threads"]) == 1
    assert len(seen["processes"]) > 3  # postmaster, PgBouncer, and the server's children
    assert [pid for pid in seen["processes"] if process_running(pid)] == []
    assert [path for path in [*seen["dirs"], seen["template"]] if Path(path).exists()] == []


@pytest.mark.slow
def test_missing_tools_skip_or_fail_when_services_are_required(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without initdb or pgbouncer the tests skip, saying why; under CI they fail instead."""
    _sandbox(pytester)
    pytester.makepyfile(
        "def test_pg(private_postgres):\n    pass\n\n"
        "def test_bouncer(pgbouncer_binary):\n    pass\n"
    )
    monkeypatch.setenv("TETHER_TEST_PG_BINDIR", str(pytester.path / "nowhere"))
    monkeypatch.setenv("TETHER_TEST_PGBOUNCER", str(pytester.path / "nowhere" / "pgbouncer"))

    monkeypatch.setenv("TETHER_REQUIRE_SERVICES", "1")
    required = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-p", "no:cov")
    required.assert_outcomes(errors=2)
    required.stdout.fnmatch_lines(
        ["*holds no initdb and postgres*TETHER_REQUIRE_SERVICES=1*", "*is not an executable*"]
    )

    monkeypatch.setenv("TETHER_REQUIRE_SERVICES", "0")
    optional = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-p", "no:cov", "-rs")
    optional.assert_outcomes(skipped=2)
