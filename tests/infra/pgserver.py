"""A private, disposable PostgreSQL server for tests that stop, kill and restart it.

The shared server on port 5432 is never touched: each ``PrivatePostgres`` has its own
data directory in a temporary directory, listens only on ``127.0.0.1`` on a free port
(never 5432), keeps its Unix socket in that directory and trusts every local connection.
Durability against power loss is switched off (``fsync``, ``full_page_writes``) and memory
kept small, because these servers live for one test; a committed transaction still
survives a crash of the server itself.

``initdb`` is slow next to everything else, so it runs once: ``PostgresTemplate`` holds an
initialised data directory, and each server starts from a copy of it.

The postmaster is started as our own child process rather than through ``pg_ctl``, which
detaches it: we can then SIGKILL it and reap it ourselves. An orphaned postmaster killed
where PID 1 does not reap would stay a zombie, and its stale ``postmaster.pid`` would then
name a "live" process and block the next start.
"""

from __future__ import annotations

import glob
import os
import shutil
import signal
import subprocess
import weakref
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Final, Literal, Self, final

from .processes import (
    ServerUser,
    ToolMissing,
    children_of,
    chown_tree,
    free_port,
    kill_and_wait,
    make_server_dir,
    read_log,
    remove_tree,
    run_as,
    server_user,
    spawn,
    stop_process,
    tail,
    wait_until,
)

StopMode = Literal["smart", "fast", "immediate"]

SUPERUSER: Final = "postgres"
BINDIR_VARIABLE: Final = "TETHER_TEST_PG_BINDIR"
_STOP_SIGNALS: Final[Mapping[str, signal.Signals]] = {
    "smart": signal.SIGTERM,  # wait for clients to leave
    "fast": signal.SIGINT,  # roll back and disconnect clients, then shut down cleanly
    "immediate": signal.SIGQUIT,  # quit at once; the next start runs crash recovery
}
_START_TIMEOUT: Final = 60.0
_STOP_TIMEOUT: Final = 60.0
_PORT_ATTEMPTS: Final = 5
_DEFAULT_SETTINGS: Final[Mapping[str, str]] = {
    # fsync off makes commits cheap; synchronous_commit stays on, so a commit is written
    # to the kernel before it returns and survives kill(), as on a real server.
    "fsync": "off",
    "full_page_writes": "off",
    "shared_buffers": "16MB",
    "max_connections": "100",
    "autovacuum": "off",  # no background work competing with the tests for two cores
}


@final
@dataclass(frozen=True, slots=True)
class PostgresBinaries:
    """Where the PostgreSQL server programs are installed."""

    bindir: Path

    @property
    def initdb(self) -> Path:
        """The ``initdb`` program."""
        return self.bindir / "initdb"

    @property
    def postgres(self) -> Path:
        """The server program itself."""
        return self.bindir / "postgres"

    def is_complete(self) -> bool:
        """Whether both programs the tests run are present and executable."""
        return all(os.access(program, os.X_OK) for program in (self.initdb, self.postgres))

    @classmethod
    def find(cls) -> PostgresBinaries:
        """Look for the server programs.

        In order: the directory named by ``TETHER_TEST_PG_BINDIR``; ``pg_config --bindir``;
        the directory of ``initdb`` on ``PATH``; the newest ``/usr/lib/postgresql/*/bin``.

        Raises:
            ToolMissing: No directory holds both ``initdb`` and ``postgres``.
        """
        override = os.environ.get(BINDIR_VARIABLE)
        if override:
            binaries = cls(Path(override))
            if not binaries.is_complete():
                raise ToolMissing(f"{BINDIR_VARIABLE}={override} holds no initdb and postgres")
            return binaries
        for candidate in _candidate_bindirs():
            binaries = cls(candidate)
            if binaries.is_complete():
                return binaries
        raise ToolMissing(
            "PostgreSQL server programs (initdb, postgres) not found via pg_config, PATH or "
            "/usr/lib/postgresql/*/bin: apt-get install postgresql"
        )


def _candidate_bindirs() -> list[Path]:
    candidates = []
    pg_config = shutil.which("pg_config")
    if pg_config:
        try:
            completed = subprocess.run(
                [pg_config, "--bindir"], capture_output=True, text=True, timeout=30, check=True
            )
        except (OSError, subprocess.SubprocessError):
            pass  # a broken pg_config is no reason to give up on the other places
        else:
            candidates.append(Path(completed.stdout.strip()))
    initdb = shutil.which("initdb")
    if initdb:
        candidates.append(Path(initdb).resolve().parent)

    def version(bindir: str) -> tuple[int, ...]:
        name = Path(bindir).parent.name
        return tuple(int(part) for part in name.split(".") if part.isdigit())

    candidates += [
        Path(bindir)
        for bindir in sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=version, reverse=True)
    ]
    return candidates


@final
class PostgresTemplate:
    """An initialised data directory that ``PrivatePostgres`` servers start from.

    Args:
        binaries: The server programs; found with ``PostgresBinaries.find()`` when omitted.

    ``initdb`` runs in the constructor (about a second); ``cleanup()`` or leaving the
    ``with`` block removes the directory.
    """

    def __init__(self, binaries: PostgresBinaries | None = None) -> None:
        self.binaries: Final = binaries if binaries is not None else PostgresBinaries.find()
        self.user: Final = server_user()
        self.root: Final = make_server_dir("tether-pg-template-", self.user)
        self._finalizer = weakref.finalize(self, remove_tree, self.root)
        try:
            run_as(
                [
                    self.binaries.initdb,
                    "--pgdata",
                    self.data_dir,
                    "--username",
                    SUPERUSER,
                    "--auth",
                    "trust",
                    "--encoding",
                    "UTF8",
                    "--locale",
                    "C",
                    "--no-sync",
                    # 1 MiB WAL segments instead of 16: less to copy for every server.
                    "--wal-segsize",
                    "1",
                ],
                user=self.user,
                cwd=self.root,
                timeout=_START_TIMEOUT,
            )
        except BaseException:
            self.cleanup()
            raise

    @property
    def data_dir(self) -> Path:
        """The initialised data directory (copy it, never start a server in it)."""
        return self.root / "data"

    def cleanup(self) -> None:
        """Remove the template's directory."""
        self._finalizer()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.cleanup()


@dataclass(eq=False)
class _Resources:
    """What a ``PrivatePostgres`` must release, held apart from it for ``weakref.finalize``."""

    root: Path
    process: subprocess.Popen[bytes] | None = None
    orphans: list[int] = field(default_factory=list)


def _release(resources: _Resources) -> None:
    process = resources.process
    if process is not None:
        resources.process = None
        stop_process(process, signal.SIGQUIT, _STOP_TIMEOUT)
    kill_and_wait(resources.orphans, _STOP_TIMEOUT)
    remove_tree(resources.root)


@final
class PrivatePostgres:
    """A PostgreSQL server of our own, on ``127.0.0.1:<free port>``, to stop and kill at will.

    Args:
        template: The data directory to start from; ``initdb`` runs for this server alone
            when omitted (slower).
        settings: Extra server settings (``name -> value``), applied at every start.

    The server is a context manager: entering starts it, leaving stops it and removes
    everything it wrote. ``cleanup()`` does the same and may be called more than once.
    """

    def __init__(
        self,
        *,
        template: PostgresTemplate | None = None,
        settings: Mapping[str, str] | None = None,
    ) -> None:
        self._own_template = template is None
        self.template: Final = template if template is not None else PostgresTemplate()
        self.binaries: Final = self.template.binaries
        self.user: Final[ServerUser | None] = self.template.user
        self._settings = dict(settings or {})
        self.root: Final = make_server_dir("tether-pg-", self.user)
        self._resources = _Resources(self.root)
        self._finalizer = weakref.finalize(self, _release, self._resources)
        self._port = free_port()
        self._initialised = False

    # -- where it is -----------------------------------------------------------------

    @property
    def host(self) -> str:
        """The address the server listens on: always ``127.0.0.1``."""
        return "127.0.0.1"

    @property
    def port(self) -> int:
        """The server's TCP port (the same across restarts; never 5432)."""
        return self._port

    @property
    def data_dir(self) -> Path:
        """The server's data directory."""
        return self.root / "data"

    @property
    def socket_dir(self) -> Path:
        """The directory holding the server's Unix socket."""
        return self.root

    @property
    def log_path(self) -> Path:
        """The server's log file (kept across restarts)."""
        return self.root / "postgres.log"

    def dsn(self, dbname: str = "postgres") -> str:
        """A libpq URL for ``dbname`` as the superuser, over TCP.

        Args:
            dbname: The database to connect to.

        Returns:
            ``postgresql://postgres@127.0.0.1:<port>/<dbname>``.
        """
        return f"postgresql://{SUPERUSER}@{self.host}:{self._port}/{dbname}"

    @property
    def pid(self) -> int | None:
        """The postmaster's process ID while it runs, else ``None``."""
        process = self._resources.process
        if process is None or process.poll() is not None:
            return None
        return process.pid

    @property
    def running(self) -> bool:
        """Whether the postmaster is alive."""
        return self.pid is not None

    def log_text(self) -> str:
        """Everything the server has logged so far."""
        return read_log(self.log_path)

    # -- lifecycle -------------------------------------------------------------------

    def start(self) -> Self:
        """Start the server and wait until it accepts connections.

        The first start copies the template's data directory. After ``kill()`` the server
        runs crash recovery before it accepts connections.

        Returns:
            The server itself.

        Raises:
            RuntimeError: The server is running already, or did not come up (the message
                holds the end of its log).
        """
        if not self._finalizer.alive:
            raise RuntimeError(f"{self!r} was cleaned up")
        if self.running:
            raise RuntimeError(f"{self!r} is running already")
        if not self._initialised:
            shutil.copytree(self.template.data_dir, self.data_dir, symlinks=True)
            chown_tree(self.data_dir, self.user)
            self._initialised = True
        for attempt in range(_PORT_ATTEMPTS):
            process = self._spawn()
            self._resources.process = process
            if self._wait_ready(process):
                return self
            self._resources.process = None
            process.wait()
            if "could not bind" in self.log_text() and attempt + 1 < _PORT_ATTEMPTS:
                # Someone took the port since free_port() looked: take another one. The
                # port only changes before the first successful start.
                self._port = free_port()
                continue
            break
        raise RuntimeError(f"{self!r} did not start; its log ends with:\n{tail(self.log_path)}")

    def stop(self, mode: StopMode = "fast") -> None:
        """Shut the server down and wait until the postmaster has exited.

        Args:
            mode: ``"smart"`` waits for clients to disconnect, ``"fast"`` disconnects them
                and shuts down cleanly, ``"immediate"`` quits at once (the next start runs
                crash recovery), as with ``pg_ctl stop -m``.

        Raises:
            ValueError: ``mode`` is not one of the three.
            RuntimeError: The server was not running, or did not stop within a minute
                (it is then SIGKILLed).
        """
        try:
            sig = _STOP_SIGNALS[mode]
        except KeyError:
            raise ValueError(f"mode must be 'smart', 'fast' or 'immediate', got {mode!r}") from None
        process = self._running_process()
        self._resources.process = None
        if not stop_process(process, sig, _STOP_TIMEOUT):
            raise RuntimeError(f"{self!r} ignored a {mode} shutdown and was killed")

    def restart(self, mode: StopMode = "fast") -> Self:
        """``stop(mode)``, then ``start()``; the data directory and port stay the same.

        Returns:
            The server itself.
        """
        self.stop(mode)
        return self.start()

    def kill(self) -> None:
        """SIGKILL the postmaster, as a crash would, and wait for its children to exit.

        The server's children notice their parent's death and exit by themselves; until
        they all have, the old shared memory is in use and a new start would fail.

        Raises:
            RuntimeError: The server was not running.
        """
        process = self._running_process()
        # Freeze the postmaster first, so it cannot fork a child we would not see.
        os.kill(process.pid, signal.SIGSTOP)
        children = children_of(process.pid)
        self._resources.orphans = children
        self._resources.process = None
        process.kill()
        process.wait()
        kill_and_wait(children, _STOP_TIMEOUT)

    def cleanup(self) -> None:
        """Stop the server if it runs (immediately) and remove everything it wrote."""
        self._finalizer()
        if self._own_template:
            self.template.cleanup()

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
        return f"<PrivatePostgres 127.0.0.1:{self._port} {state}>"

    # -- internals -------------------------------------------------------------------

    def _running_process(self) -> subprocess.Popen[bytes]:
        process = self._resources.process
        if process is None or process.poll() is not None:
            raise RuntimeError(f"{self!r} is not running")
        return process

    def _spawn(self) -> subprocess.Popen[bytes]:
        settings = {
            **_DEFAULT_SETTINGS,
            **self._settings,
            "listen_addresses": self.host,
            "port": str(self._port),
            "unix_socket_directories": str(self.socket_dir),
        }
        args: list[str | os.PathLike[str]] = [self.binaries.postgres, "-D", self.data_dir]
        for name, value in settings.items():
            args += ["-c", f"{name}={value}"]
        return spawn(args, user=self.user, cwd=self.root, log=self.log_path)

    def _wait_ready(self, process: subprocess.Popen[bytes]) -> bool:
        """Wait until ``postmaster.pid`` says this postmaster is ready, or it exits."""
        lock_file = self.data_dir / "postmaster.pid"

        def settled() -> bool:
            if process.poll() is not None:
                return True
            try:
                lines = lock_file.read_text(encoding="utf-8").splitlines()
            except FileNotFoundError:
                return False
            # Line 1 is the postmaster's PID (a killed server leaves a stale file behind),
            # line 8 its status: "starting", then "ready" once it accepts connections.
            return len(lines) >= 8 and lines[0] == str(process.pid) and lines[7].strip() == "ready"

        if not wait_until(settled, _START_TIMEOUT):
            stop_process(process, signal.SIGQUIT, _STOP_TIMEOUT)
            return False
        return process.poll() is None
