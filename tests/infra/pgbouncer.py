"""PgBouncer in transaction-pooling mode, in front of a PostgreSQL server, for tests.

Transaction pooling is where drivers get into trouble: a client keeps its connection to
PgBouncer, but each transaction may run on a different server connection, so session
state (``SET``, server-side prepared statements, advisory locks) does not follow the
client. tether's ``pgbouncer=True`` option exists for this mode, and tests check it here.

PgBouncer runs as our child process, in the foreground, from a configuration written into
a temporary directory; it listens on ``127.0.0.1`` on a free port, authenticates nobody
(``auth_type = trust``: the user only has to be listed) and makes the connecting user an
admin, so the console database ``pgbouncer`` answers ``SHOW POOLS`` and friends.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import weakref
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Final, Literal, Self, final

from .processes import (
    ToolMissing,
    free_port,
    make_server_dir,
    port_accepts,
    read_log,
    remove_tree,
    server_user,
    spawn,
    stop_process,
    tail,
    wait_until,
)

PoolMode = Literal["session", "transaction", "statement"]

BINARY_VARIABLE: Final = "TETHER_TEST_PGBOUNCER"
ADMIN_DATABASE: Final = "pgbouncer"
_START_TIMEOUT: Final = 30.0
_STOP_TIMEOUT: Final = 30.0
_PORT_ATTEMPTS: Final = 5
_DEFAULT_SETTINGS: Final[Mapping[str, str]] = {
    "max_client_conn": "200",
    # PgBouncer waits this long after a failed server login before trying again (15 s by
    # default); tests that restart the server want it back at once.
    "server_login_retry": "1",
    # A client queued while the server is down waits this long before it is told (120 s by
    # default): fault tests want the failure promptly.
    "query_wait_timeout": "5",
    "ignore_startup_parameters": "extra_float_digits",
}


def find_pgbouncer() -> Path:
    """Locate the ``pgbouncer`` program.

    In order: ``TETHER_TEST_PGBOUNCER``, ``PATH``, ``/usr/sbin`` and ``/usr/bin`` (Debian
    installs it in ``/usr/sbin``, which is not on every user's ``PATH``).

    Raises:
        ToolMissing: It is not installed.
    """
    override = os.environ.get(BINARY_VARIABLE)
    if override:
        if not os.access(override, os.X_OK):
            raise ToolMissing(f"{BINARY_VARIABLE}={override} is not an executable")
        return Path(override)
    found = shutil.which("pgbouncer") or shutil.which(
        "pgbouncer", path=os.pathsep.join(("/usr/sbin", "/usr/bin", "/usr/local/bin"))
    )
    if found is None:
        raise ToolMissing("pgbouncer is not installed: apt-get install pgbouncer")
    return Path(found)


@dataclass(eq=False)
class _Resources:
    """What a ``PgBouncer`` must release, held apart from it for ``weakref.finalize``."""

    root: Path
    process: subprocess.Popen[bytes] | None = None


def _release(resources: _Resources) -> None:
    process = resources.process
    if process is not None:
        resources.process = None
        stop_process(process, signal.SIGTERM, _STOP_TIMEOUT)
    remove_tree(resources.root)


@final
class PgBouncer:
    """A PgBouncer of our own on ``127.0.0.1:<free port>``, pooling for one server.

    Args:
        server_host: Host of the PostgreSQL server behind it.
        server_port: Port of that server.
        pool_mode: ``"transaction"`` (the point of this class), ``"session"`` or
            ``"statement"``.
        pool_size: Server connections per database and user (``default_pool_size``).
        users: Users allowed to connect (each is also an admin of the console).
        settings: Extra ``[pgbouncer]`` settings (``name -> value``).
        binary: The ``pgbouncer`` program; found with ``find_pgbouncer()`` when omitted.

    Every database name is passed through to the server (``* = host=... port=...``).
    A context manager: entering starts it, leaving stops it and removes its directory.
    """

    def __init__(
        self,
        server_host: str,
        server_port: int,
        *,
        pool_mode: PoolMode = "transaction",
        pool_size: int = 10,
        users: Sequence[str] = ("postgres",),
        settings: Mapping[str, str] | None = None,
        binary: Path | None = None,
    ) -> None:
        if pool_mode not in ("session", "transaction", "statement"):
            raise ValueError(
                f"pool_mode must be 'session', 'transaction' or 'statement', got {pool_mode!r}"
            )
        if pool_size < 1:
            raise ValueError(f"pool_size must be at least 1, got {pool_size!r}")
        if not users:
            raise ValueError("users must name at least one user")
        self.binary: Final = binary if binary is not None else find_pgbouncer()
        self.server_host: Final = server_host
        self.server_port: Final = server_port
        self.pool_mode: Final = pool_mode
        self.pool_size: Final = pool_size
        self.users: Final = tuple(users)
        self._settings = dict(settings or {})
        self.user: Final = server_user()
        self.root: Final = make_server_dir("tether-pgbouncer-", self.user)
        self._resources = _Resources(self.root)
        self._finalizer = weakref.finalize(self, _release, self._resources)
        self._port = free_port()

    # -- where it is -----------------------------------------------------------------

    @property
    def host(self) -> str:
        """The address PgBouncer listens on: always ``127.0.0.1``."""
        return "127.0.0.1"

    @property
    def port(self) -> int:
        """PgBouncer's TCP port (the same across restarts)."""
        return self._port

    @property
    def config_path(self) -> Path:
        """The configuration file PgBouncer was started with."""
        return self.root / "pgbouncer.ini"

    @property
    def log_path(self) -> Path:
        """PgBouncer's log (its standard output and error)."""
        return self.root / "pgbouncer.log"

    def dsn(self, dbname: str = "postgres", user: str | None = None) -> str:
        """A libpq URL for ``dbname`` through PgBouncer.

        Args:
            dbname: The database on the server behind it.
            user: Who connects (the first of ``users`` by default).

        Returns:
            ``postgresql://<user>@127.0.0.1:<port>/<dbname>``.
        """
        return f"postgresql://{user or self.users[0]}@{self.host}:{self._port}/{dbname}"

    def admin_dsn(self) -> str:
        """A libpq URL for PgBouncer's own console (``SHOW POOLS``, ``SHOW CONFIG``, ...).

        The console speaks only the simple query protocol and has no transactions:
        connect with ``autocommit=True``.
        """
        return self.dsn(ADMIN_DATABASE)

    @property
    def pid(self) -> int | None:
        """PgBouncer's process ID while it runs, else ``None``."""
        process = self._resources.process
        if process is None or process.poll() is not None:
            return None
        return process.pid

    @property
    def running(self) -> bool:
        """Whether PgBouncer is alive."""
        return self.pid is not None

    def log_text(self) -> str:
        """Everything PgBouncer has logged so far."""
        return read_log(self.log_path)

    # -- lifecycle -------------------------------------------------------------------

    def start(self) -> Self:
        """Write the configuration, start PgBouncer and wait until it accepts connections.

        It does not connect to the server until a client needs it, so it may start before
        the server does.

        Returns:
            PgBouncer itself.

        Raises:
            RuntimeError: It is running already, or did not come up (the message holds the
                end of its log).
        """
        if not self._finalizer.alive:
            raise RuntimeError(f"{self!r} was cleaned up")
        if self.running:
            raise RuntimeError(f"{self!r} is running already")
        for attempt in range(_PORT_ATTEMPTS):
            self._write_config()
            process = spawn(
                [self.binary, self.config_path], user=self.user, cwd=self.root, log=self.log_path
            )
            self._resources.process = process
            if self._wait_ready(process):
                return self
            self._resources.process = None
            stop_process(process, signal.SIGTERM, _STOP_TIMEOUT)
            if "Address already in use" in self.log_text() and attempt + 1 < _PORT_ATTEMPTS:
                self._port = free_port()  # someone took the port: take another one
                continue
            break
        raise RuntimeError(f"{self!r} did not start; its log ends with:\n{tail(self.log_path)}")

    def stop(self) -> None:
        """Shut PgBouncer down at once (``SHUTDOWN``), closing every client connection.

        Raises:
            RuntimeError: It was not running, or ignored SIGTERM (it is then SIGKILLed).
        """
        process = self._resources.process
        if process is None or process.poll() is not None:
            raise RuntimeError(f"{self!r} is not running")
        self._resources.process = None
        if not stop_process(process, signal.SIGTERM, _STOP_TIMEOUT):
            raise RuntimeError(f"{self!r} ignored SIGTERM and was killed")

    def cleanup(self) -> None:
        """Stop PgBouncer if it runs and remove its directory."""
        self._finalizer()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.cleanup()

    def __repr__(self) -> str:
        state = f"pid {self.pid}" if self.running else "stopped"
        return (
            f"<PgBouncer 127.0.0.1:{self._port} -> {self.server_host}:{self.server_port}"
            f" {self.pool_mode} {state}>"
        )

    # -- internals -------------------------------------------------------------------

    def _write_config(self) -> None:
        settings = {
            **_DEFAULT_SETTINGS,
            **self._settings,
            "listen_addr": self.host,
            "listen_port": str(self._port),
            "unix_socket_dir": "",  # TCP only: nothing outside our directory
            "auth_type": "trust",
            "auth_file": str(self.root / "userlist.txt"),
            "admin_users": ",".join(self.users),
            "stats_users": ",".join(self.users),
            "pool_mode": self.pool_mode,
            "default_pool_size": str(self.pool_size),
        }
        lines = [
            "[databases]",
            f"* = host={self.server_host} port={self.server_port}",
            "",
            "[pgbouncer]",
            *(f"{name} = {value}" for name, value in settings.items()),
        ]
        self.config_path.write_text("\n".join(lines) + "\n", encoding="utf-8")
        # With trust authentication the password is never checked, but the user must
        # be listed.
        userlist = "".join(f'"{user}" ""\n' for user in self.users)
        (self.root / "userlist.txt").write_text(userlist, encoding="utf-8")

    def _wait_ready(self, process: subprocess.Popen[bytes]) -> bool:
        ready = wait_until(
            lambda: process.poll() is not None or port_accepts(self._port), _START_TIMEOUT
        )
        return ready and process.poll() is None
