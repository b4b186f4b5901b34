"""Process and port helpers shared by the private servers in this package.

Database servers refuse to run as root, and CI runs as root: every server process is
started as an unprivileged user (``postgres``) when the tests run as root, and everything
it writes lives in a temporary directory that user owns.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final, final

SERVER_USER_NAME: Final = "postgres"
_SHARED_POSTGRES_PORT: Final = 5432  # the shared server: a private one never takes it
_MEMORY_FS: Final = "/dev/shm"
_MEMORY_FS_MIN_FREE: Final = 1 << 30


class ToolMissing(Exception):
    """A program the fault tests need is not available; the message says how to get it."""


@final
@dataclass(frozen=True, slots=True)
class ServerUser:
    """The unprivileged account servers run as when the tests run as root."""

    name: str
    uid: int
    gid: int


def server_user() -> ServerUser | None:
    """Who servers must run as: ``None`` for "as ourselves", else the ``postgres`` account.

    Raises:
        ToolMissing: We are root and there is no ``postgres`` account to drop to.
    """
    if os.geteuid() != 0:
        return None
    try:
        entry = pwd.getpwnam(SERVER_USER_NAME)
    except KeyError:
        raise ToolMissing(
            f"running as root, and PostgreSQL/PgBouncer refuse to: they need a "
            f"{SERVER_USER_NAME!r} account to run as (apt-get install postgresql creates it)"
        ) from None
    return ServerUser(entry.pw_name, entry.pw_uid, entry.pw_gid)


def make_server_dir(prefix: str, user: ServerUser | None) -> Path:
    """Create a private temporary directory owned by ``user`` (mode 0700).

    It is made in memory (``/dev/shm``) when that has room, where copying a data directory
    is an order of magnitude faster than on disk, else in the system temporary directory.
    Both can be traversed by every account, unlike pytest's ``tmp_path`` under root.
    """
    path = Path(tempfile.mkdtemp(prefix=prefix, dir=_scratch_root()))
    if user is not None:
        os.chown(path, user.uid, user.gid)
    return path


def _scratch_root() -> str | None:
    try:
        memory = os.statvfs(_MEMORY_FS)
    except OSError:
        return None  # no /dev/shm here: the system temporary directory it is
    roomy = memory.f_bavail * memory.f_frsize >= _MEMORY_FS_MIN_FREE
    return _MEMORY_FS if roomy and os.access(_MEMORY_FS, os.W_OK | os.X_OK) else None


def chown_tree(root: Path, user: ServerUser | None) -> None:
    """Give ``root`` and everything below it to ``user`` (nothing to do when not root)."""
    if user is None:
        return
    os.chown(root, user.uid, user.gid, follow_symlinks=False)
    for directory, subdirectories, files in os.walk(root):
        for name in (*subdirectories, *files):
            os.chown(Path(directory, name), user.uid, user.gid, follow_symlinks=False)


def remove_tree(path: Path) -> None:
    """Remove a server directory, tolerating that it is already gone."""
    shutil.rmtree(path, ignore_errors=True)


def spawn(
    args: Sequence[str | os.PathLike[str]],
    *,
    user: ServerUser | None,
    cwd: Path,
    log: Path,
) -> subprocess.Popen[bytes]:
    """Start a server process as ``user``, its output appended to ``log``.

    The process is our own child (no daemonising), so we can signal it, wait for it and
    reap it; an orphan would otherwise linger as a zombie where PID 1 does not reap.
    """
    with log.open("ab") as output:
        return subprocess.Popen(
            args,
            stdin=subprocess.DEVNULL,
            stdout=output,
            stderr=subprocess.STDOUT,
            cwd=cwd,
            user=None if user is None else user.uid,
            group=None if user is None else user.gid,
            extra_groups=None if user is None else [],
        )


def run_as(
    args: Sequence[str | os.PathLike[str]],
    *,
    user: ServerUser | None,
    cwd: Path,
    timeout: float,
) -> subprocess.CompletedProcess[str]:
    """Run a command to completion as ``user``, capturing its output.

    Raises:
        RuntimeError: The command failed; the message holds its output.
    """
    completed = subprocess.run(
        args,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=timeout,
        check=False,
        user=None if user is None else user.uid,
        group=None if user is None else user.gid,
        extra_groups=None if user is None else [],
    )
    if completed.returncode != 0:
        command = " ".join(str(arg) for arg in args)
        raise RuntimeError(
            f"{command} exited with {completed.returncode}:\n{completed.stdout}{completed.stderr}"
        )
    return completed


def stop_process(process: subprocess.Popen[bytes], sig: int, timeout: float) -> bool:
    """Send ``sig`` and reap the process; SIGKILL it if it outlives ``timeout``.

    Returns:
        Whether the process exited on its own within ``timeout``.
    """
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError):  # it exited since: wait() reaps it
            process.send_signal(sig)
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
        return False
    return True


def process_running(pid: int) -> bool:
    """Whether ``pid`` is a live process (a zombie awaiting its reaper does not count)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        return False
    except OSError:  # pragma: no cover - no /proc: fall back to a signal probe
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        return True
    # The state letter follows the command name, which is in parentheses and may hold any
    # character, including spaces and parentheses: split after the last ')'.
    state = stat.rpartition(")")[2].split()[0]
    return state not in ("Z", "X")


def children_of(pid: int) -> list[int]:
    """Process IDs whose parent is ``pid`` (read from ``/proc``)."""
    children = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text(encoding="utf-8", errors="replace")
        except OSError:
            continue  # exited while we looked
        fields = stat.rpartition(")")[2].split()
        if int(fields[1]) == pid:
            children.append(int(entry.name))
    return children


def kill_and_wait(pids: Sequence[int], timeout: float) -> None:
    """Wait for ``pids`` to exit by themselves; SIGKILL whatever outlives ``timeout``."""
    if wait_until(lambda: not any(process_running(pid) for pid in pids), timeout):
        return
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    wait_until(lambda: not any(process_running(pid) for pid in pids), timeout)


def wait_until(condition: Callable[[], bool], timeout: float, interval: float = 0.02) -> bool:
    """Poll ``condition`` until it holds or ``timeout`` passes; return whether it held."""
    deadline = time.monotonic() + timeout
    while True:
        if condition():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)


def free_port() -> int:
    """A loopback TCP port that was free a moment ago, never the shared server's 5432.

    Another process may take it before the caller binds it; servers started on it retry
    with a fresh port when their bind fails.
    """
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            probe.bind(("127.0.0.1", 0))
            port: int = probe.getsockname()[1]
        if port != _SHARED_POSTGRES_PORT:
            return port


def port_accepts(port: int) -> bool:
    """Whether something accepts TCP connections on ``127.0.0.1:port``."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1.0):
            return True
    except OSError:
        return False


def tail(path: Path, lines: int = 30) -> str:
    """The last ``lines`` lines of a log file, for error messages."""
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        return "(no log)"
    return "\n".join(text.splitlines()[-lines:])


def read_log(path: Path) -> str:
    """A whole log file (empty when it does not exist yet)."""
    try:
        return path.read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        return ""
