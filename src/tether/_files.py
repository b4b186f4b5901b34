"""Crash-safe replacement of a file: :func:`atomic_write` and :func:`atomic_write_async`.

Theory of operation. A write goes through three steps:

1. **Open.** The target is looked up once: a symlink is resolved to the file it points to
   (so the link survives and its target gets the new content, as editors do), and an
   existing target's ``stat`` is kept for its permission bits and owner. A temporary file
   named ``.<name>.tether-<8 hex digits>.tmp`` is created next to the target with
   ``O_CREAT | O_EXCL`` (unique, never a file someone else made), so that the final rename
   stays inside one file system. The user writes to it through an ordinary file object.
2. **Commit** (the block ended without an exception). The file object is closed (which
   flushes it), the kept owner and permission bits are set on the temporary file, the file
   is fsynced, and then it takes the target's name in one step: ``os.replace``, or, with
   ``overwrite=False``, a hard link that fails when the name exists (so exactly one of
   several racing writers wins), followed by removing the temporary name. Finally the
   directory is fsynced so the new name itself is durable (unless the process may not
   open it, as in a write-only drop box: there only the file is).
3. **Discard** (the block raised anything, ``KeyboardInterrupt`` and cancellation
   included, or a commit step failed before the rename). The temporary file is closed and
   removed; the target was never touched.

Only the rename changes what readers of the target see, and a rename is atomic, so the
target is always either the old file or the complete new one, also when the process is
killed at any instant. What a crash can leave behind is a temporary file with the
recognisable name above.

Permission bits of a new file come from the kernel: the temporary file is created with
mode ``0o666`` and the kernel applies the umask (and a default ACL, where one is set),
exactly as for ``open(path, "w")``. tether never reads or changes the process umask,
which is global state that cannot be read without a race (``os.umask`` sets it).
"""

from __future__ import annotations

import asyncio
import codecs
import contextlib
import enum
import errno
import functools
import io
import logging
import os
import secrets
import stat
import sys
import warnings
import weakref
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager, AbstractContextManager
from types import TracebackType
from typing import (
    IO,
    BinaryIO,
    Final,
    Literal,
    TextIO,
    TypeAlias,
    TypeVar,
    final,
    overload,
)

from ._aio import (
    current_async_library,
    redeliver_cancellation,
    run_shielded,
    run_shielded_outcome,
)
from ._sites import Site, user_site

_logger: Final = logging.getLogger("tether.files")

__all__ = ["atomic_write", "atomic_write_async"]

StrPath: TypeAlias = "str | os.PathLike[str]"
"""A file system path: a ``str`` or an object with ``__fspath__`` returning one."""

TextMode: TypeAlias = Literal[
    "w", "wt", "tw", "w+", "+w", "wt+", "w+t", "x", "xt", "tx", "x+", "+x", "xt+", "x+t"
]
"""The text modes spelled the common ways; any order of the same letters works too."""

BinaryMode: TypeAlias = Literal["wb", "bw", "wb+", "w+b", "xb", "bx", "xb+", "x+b"]
"""The binary modes spelled the common ways; any order of the same letters works too."""

T = TypeVar("T")

TEMP_INFIX: Final = ".tether-"
TEMP_SUFFIX: Final = ".tmp"
_RANDOM_BYTES: Final = 4  # 8 hex digits: 4 billion names per target
_NAME_MAX: Final = 255  # bytes in one path component on every common POSIX file system
_TEMP_OVERHEAD: Final = len(".") + len(TEMP_INFIX) + 2 * _RANDOM_BYTES + len(TEMP_SUFFIX)
_MAX_ATTEMPTS: Final = 100
_NEWLINES: Final = frozenset({None, "", "\n", "\r", "\r\n"})
_NEW_FILE_MODE: Final = 0o666  # the kernel applies the umask to it, as for open()
_PRIVATE_MODE: Final = 0o600  # until commit, while the target's own bits are set later


def _parse_mode(mode: object) -> tuple[str, bool, bool]:
    """Check ``mode`` and return ``(mode for open(), binary, exclusive)``."""
    if not isinstance(mode, str):
        raise TypeError(f"atomic_write() mode must be a str such as 'w', not {type(mode).__name__}")
    letters = set(mode)
    if (
        len(letters) == len(mode)
        and letters <= {"w", "x", "b", "t", "+"}
        and len(letters & {"w", "x"}) == 1
        and not {"b", "t"} <= letters
    ):
        binary = "b" in letters
        return ("wb" if binary else "w") + ("+" if "+" in letters else ""), binary, "x" in letters
    if "a" in letters:
        raise ValueError(
            f"atomic_write() mode {mode!r}: appending cannot be atomic without copying the "
            "whole file; read the old content and write the complete new content with 'w'"
        )
    raise ValueError(
        f"atomic_write() mode {mode!r} does not write a new file; use 'w', 'wb', 'x' or 'xb' "
        "(optionally with '+')"
    )


def _check_path(path: object) -> str:
    try:
        checked = os.fspath(path)  # type: ignore[call-overload]
    except TypeError:
        checked = None
    if not isinstance(checked, str):
        raise TypeError(
            f"atomic_write() path must be a str or an os.PathLike returning str, "
            f"not {type(path).__name__}"
        )
    if not checked:
        raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), checked)
    return checked


def _text_encoding(binary: bool, mode: str, encoding: str | None, newline: str | None) -> str:
    """Check the text options and return the encoding to open with (``""`` for binary)."""
    if binary:
        if encoding is not None:
            raise ValueError(f"atomic_write() encoding is for text modes only, not {mode!r}")
        if newline is not None:
            raise ValueError(f"atomic_write() newline is for text modes only, not {mode!r}")
        return ""
    if newline not in _NEWLINES:
        raise ValueError(
            f"atomic_write() newline must be None, '', '\\n', '\\r' or '\\r\\n', not {newline!r}"
        )
    # Like open(): None means the locale's encoding, and under -X warn_default_encoding
    # the EncodingWarning points at the call of atomic_write() (4 frames up from here).
    chosen = io.text_encoding(encoding, 4)
    if chosen != "locale":
        codecs.lookup(chosen)  # an unknown encoding fails now, before any file exists
    return chosen


class _State(enum.Enum):
    UNUSED = "unused"
    OPEN = "open"
    DONE = "done"


@final
class _AtomicWrite:
    """One atomic write: opened by ``__enter__``, committed or discarded by ``__exit__``.

    The file object handed to the user is opened with ``closefd=False`` on a descriptor
    this object owns, so closing it inside the block only flushes it: the descriptor stays
    open for the permission change and the fsync at commit.
    """

    __slots__ = (
        "__weakref__",
        "_binary",
        "_directory",
        "_encoding",
        "_exclusive",
        "_existing",
        "_fd",
        "_file",
        "_finalizer",
        "_fsync",
        "_newline",
        "_open_mode",
        "_path",
        "_site",
        "_state",
        "_target",
        "_temp",
    )

    def __init__(
        self,
        path: str,
        open_mode: str,
        *,
        binary: bool,
        exclusive: bool,
        encoding: str,
        newline: str | None,
        fsync: bool,
    ) -> None:
        self._path = path
        self._open_mode = open_mode
        self._binary = binary
        self._exclusive = exclusive
        self._encoding = encoding
        self._newline = newline
        self._fsync = fsync
        self._site: Site = user_site()
        self._state = _State.UNUSED
        self._target = ""
        self._directory = ""
        self._existing: os.stat_result | None = None
        self._temp: str | None = None
        self._fd = -1
        self._file: IO[str] | IO[bytes] | None = None
        self._finalizer: weakref.finalize[..., _AtomicWrite] | None = None

    def __repr__(self) -> str:
        return f"<atomic_write {self._path!r} {self._state.value}>"

    # -- open --------------------------------------------------------------------------

    def __enter__(self) -> TextIO | BinaryIO:
        if self._state is not _State.UNUSED:
            raise RuntimeError(
                f"atomic_write({self._path!r}) was already entered; each write needs its own "
                "atomic_write() call"
            )
        self._state = _State.OPEN
        try:
            self._find_target()
            self._fd, self._temp = self._create_temp()
            file = _file_object(
                self._fd, self._temp, self._open_mode, self._encoding, self._newline
            )
        except BaseException:
            self._state = _State.DONE
            self._discard()
            raise
        self._file = file
        # Someone who enters without ever exiting (a dropped object) must not leave the
        # temporary file or the descriptor behind; the finalizer holds no reference to self.
        self._finalizer = weakref.finalize(
            self, _abandon, file, self._fd, self._temp, self._path, self._site
        )
        return file  # type: ignore[return-value]

    def _find_target(self) -> None:
        path = self._path
        if path.endswith(os.sep) or (os.altsep is not None and path.endswith(os.altsep)):
            raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), path)
        # Absolute from here on, so that a chdir() inside the block changes nothing.
        absolute = path if os.path.isabs(path) else os.path.join(os.getcwd(), path)
        try:
            found: os.stat_result | None = os.lstat(absolute)
        except FileNotFoundError:
            found = None
        if self._exclusive:
            if found is not None:
                raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), path)
        elif found is not None and stat.S_ISLNK(found.st_mode):
            # Replace what the link points to, and keep the link (as editors do).
            absolute = os.path.realpath(absolute)
            try:
                found = os.stat(absolute)
            except FileNotFoundError:
                found = None  # a dangling link: create the file it points to
        if found is not None and not self._exclusive:
            if stat.S_ISDIR(found.st_mode):
                raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), path)
            if not stat.S_ISREG(found.st_mode):
                raise OSError(
                    errno.EINVAL,
                    "atomic_write() replaces regular files only, and this is a "
                    + _file_kind(found.st_mode),
                    path,
                )
            self._existing = found
        self._target = absolute
        self._directory = os.path.dirname(absolute)

    def _create_temp(self) -> tuple[int, str]:
        stem = _temp_stem(os.path.basename(self._target))
        mode = _NEW_FILE_MODE if self._existing is None else _PRIVATE_MODE
        flags = os.O_RDWR | os.O_CREAT | os.O_EXCL
        for _ in range(_MAX_ATTEMPTS):
            temp = os.path.join(self._directory, f".{stem}{TEMP_INFIX}{_random_hex()}{TEMP_SUFFIX}")
            try:
                return os.open(temp, flags, mode), temp
            except FileExistsError:
                continue  # a name taken by another writer (or a crash's leftover)
            except OSError as exc:
                # Say it as open(path) would: the user asked about path, not our temp name.
                error = OSError(exc.errno, exc.strerror, self._path)
                if isinstance(error, PermissionError):
                    error.add_note(
                        f"atomic_write() creates its temporary file in {self._directory!r}, "
                        "so that directory must be writable"
                    )
                raise error from None
        raise FileExistsError(
            errno.EEXIST,
            f"no free temporary file name after {_MAX_ATTEMPTS} attempts",
            self._path,
        )

    # -- commit or discard -------------------------------------------------------------

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if self._state is not _State.OPEN:
            raise RuntimeError(f"atomic_write({self._path!r}) was not entered")
        self._state = _State.DONE
        assert self._finalizer is not None  # set by every successful __enter__
        self._finalizer.detach()
        if exc is None:
            self._commit()
            return
        problem = self._discard()
        if problem is not None:
            exc.add_note(
                f"atomic_write({self._path!r}) could not remove its temporary file: {problem!r}"
            )

    def _commit(self) -> None:
        try:
            file = self._file
            assert file is not None
            if not file.closed:  # the user may have closed it already: that flushed it
                file.close()
            if self._existing is not None:
                _keep_owner_and_mode(self._fd, self._existing)
            if self._fsync:
                _flush_to_disk(self._fd)
            fd, self._fd = self._fd, -1
            os.close(fd)
            self._publish()
        except BaseException as error:
            problem = self._discard()
            if problem is not None:
                error.add_note(f"atomic_write() could not remove its temporary file: {problem!r}")
            raise
        if self._fsync:
            # The new name is in place; make it survive a power cut too. Should this fail,
            # readers already see the new content, but its durability is unknown: say so.
            _fsync_directory(self._directory)

    def _publish(self) -> None:
        temp = self._temp
        assert temp is not None
        if not self._exclusive:
            os.replace(temp, self._target)
            self._temp = None
            return
        try:
            # link() fails if the name exists, whoever created it: one racer wins.
            os.link(temp, self._target)
        except FileExistsError:
            raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), self._path) from None
        except OSError as exc:
            exc.add_note("atomic_write(overwrite=False) needs a file system with hard links")
            raise
        self._temp = None  # the file has its name: the write is done, whatever follows
        try:
            os.unlink(temp)
        except OSError as exc:
            # Failing the write now would be false: readers see the new file. Only its
            # second, temporary name is left behind, which is worth a warning.
            _logger.warning(
                "atomic_write(): %s was written, but its temporary name %s could not be "
                "removed: %s",
                self._path,
                temp,
                exc,
            )

    def _discard(self) -> OSError | None:
        """Close and remove everything still open; return why the temp could not go."""
        file, self._file = self._file, None
        if file is not None:
            # Flushing content that is being thrown away may fail; that is irrelevant.
            with contextlib.suppress(OSError, ValueError):
                file.close()
        fd, self._fd = self._fd, -1
        if fd >= 0:
            with contextlib.suppress(OSError):  # nothing written through it matters now
                os.close(fd)
        temp, self._temp = self._temp, None
        if temp is None:
            return None
        try:
            os.unlink(temp)
        except FileNotFoundError:
            return None
        except OSError as exc:
            return exc
        return None


def _file_object(
    fd: int, name: str, open_mode: str, encoding: str, newline: str | None
) -> IO[str] | IO[bytes]:
    """What ``open(name, open_mode)`` would return, on ``fd``, never closing ``fd``.

    Closing it flushes it and leaves ``fd`` open for the commit. Its ``name`` is the
    temporary file's path, so a tool can check the new content before the block ends.
    """
    readable = "+" in open_mode
    raw = io.FileIO(fd, "r+" if readable else "w", closefd=False)
    raw.name = name
    buffered = io.BufferedRandom(raw) if readable else io.BufferedWriter(raw)
    if "b" in open_mode:
        return buffered
    text = io.TextIOWrapper(buffered, encoding=encoding, newline=newline)
    text.mode = open_mode  # type: ignore[misc]  # as open() sets it
    return text


def _abandon(file: IO[str] | IO[bytes], fd: int, temp: str, path: str, site: Site) -> None:
    """Clean up after an atomic write that was entered and then dropped unfinished."""
    with contextlib.suppress(OSError, ValueError):  # its content is being thrown away
        file.close()
    with contextlib.suppress(OSError):
        os.close(fd)
    # Nothing more can be done from a finalizer if this fails; the name says what it is.
    with contextlib.suppress(OSError):
        os.unlink(temp)
    warnings.warn(
        f"atomic_write({path!r}) created at {site} was entered but never finished; its "
        "temporary file was removed and the target left untouched",
        ResourceWarning,
        stacklevel=2,
    )


def _keep_owner_and_mode(fd: int, existing: os.stat_result) -> None:
    current = os.fstat(fd)
    if (current.st_uid, current.st_gid) != (existing.st_uid, existing.st_gid):
        try:
            os.fchown(fd, existing.st_uid, existing.st_gid)  # root may
        except PermissionError:
            # Anyone may keep the group if they belong to it, which is what matters in a
            # shared directory; the owner becomes the writer, as with sed -i.
            with contextlib.suppress(PermissionError):
                os.fchown(fd, -1, existing.st_gid)
    # After fchown, which clears set-user-ID and set-group-ID bits.
    os.fchmod(fd, stat.S_IMODE(existing.st_mode))


if sys.platform == "darwin":  # pragma: no cover - exercised on macOS only
    import fcntl

    def _flush_to_disk(fd: int) -> None:
        # On macOS fsync() stops at the drive's volatile cache; F_FULLFSYNC goes through.
        try:
            fcntl.fcntl(fd, fcntl.F_FULLFSYNC)
        except OSError:
            os.fsync(fd)  # a file system without F_FULLFSYNC (e.g. a network share)

else:

    def _flush_to_disk(fd: int) -> None:
        os.fsync(fd)


def _fsync_directory(directory: str) -> None:
    """Make the directory's entries durable, when the writer may open the directory.

    A directory one may write and search but not read (mode ``0o733``: a drop box, a spool
    directory) cannot be opened, so cannot be synced; the write itself succeeded and the
    file is on disk, so this is no reason to report the write as failed. Only the new
    name may not survive a power cut there, as with ``open(path, "w")``.
    """
    try:
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    except PermissionError:  # EACCES or EPERM
        return
    try:
        _flush_to_disk(fd)
    finally:
        os.close(fd)


def _random_hex() -> str:
    return secrets.token_hex(_RANDOM_BYTES)


def _temp_stem(name: str) -> str:
    """The target's name, shortened so the temporary name fits in one path component."""
    limit = _NAME_MAX - _TEMP_OVERHEAD
    stem = name[:limit]
    while len(os.fsencode(stem)) > limit:
        stem = stem[:-1]
    return stem


def _file_kind(mode: int) -> str:
    kinds = (
        (stat.S_ISFIFO, "named pipe"),
        (stat.S_ISCHR, "character device"),
        (stat.S_ISBLK, "block device"),
        (stat.S_ISSOCK, "socket"),
    )
    return next((kind for test, kind in kinds if test(mode)), "special file")


def _writer(
    path: object,
    mode: object,
    *,
    encoding: str | None,
    newline: str | None,
    fsync: bool,
    overwrite: bool,
) -> _AtomicWrite:
    checked_path = _check_path(path)
    open_mode, binary, exclusive = _parse_mode(mode)
    return _AtomicWrite(
        checked_path,
        open_mode,
        binary=binary,
        exclusive=exclusive or not overwrite,
        encoding=_text_encoding(binary, str(mode), encoding, newline),
        newline=newline,
        fsync=bool(fsync),
    )


@overload
def atomic_write(
    path: StrPath,
    mode: TextMode = "w",
    *,
    encoding: str | None = None,
    newline: str | None = None,
    fsync: bool = True,
    overwrite: bool = True,
) -> AbstractContextManager[TextIO, None]: ...
@overload
def atomic_write(
    path: StrPath,
    mode: BinaryMode,
    *,
    encoding: None = None,
    newline: None = None,
    fsync: bool = True,
    overwrite: bool = True,
) -> AbstractContextManager[BinaryIO, None]: ...
@overload
def atomic_write(
    path: StrPath,
    mode: str,
    *,
    encoding: str | None = None,
    newline: str | None = None,
    fsync: bool = True,
    overwrite: bool = True,
) -> AbstractContextManager[TextIO | BinaryIO, None]: ...
def atomic_write(
    path: StrPath,
    mode: str = "w",
    *,
    encoding: str | None = None,
    newline: str | None = None,
    fsync: bool = True,
    overwrite: bool = True,
) -> AbstractContextManager[TextIO | BinaryIO, None]:
    """Replace the file at ``path`` with what the block writes, all at once or not at all.

    ::

        with tether.atomic_write("report.json") as f:
            json.dump(report, f)

    Readers of ``path`` see either the old file or the complete new one, never a mix,
    also when the process is killed at any instant; with ``fsync=True`` also after a power
    cut. If the block raises anything (``KeyboardInterrupt`` included), the temporary file
    is removed and ``path`` is left untouched.

    If ``path`` is a symlink, the file it points to is replaced and the link is kept (as
    editors do); a dangling link gets its target created. An existing file's permission
    bits are kept, and its owner and group as far as the process may set them; a new file
    gets ``0o666`` minus the umask, as with ``open()``. Closing the file object inside the
    block is allowed and changes nothing.

    Args:
        path: the file to create or replace.
        mode: ``"w"`` (text) or ``"wb"`` (binary), optionally with ``"+"`` to read back
            what was written; ``"x"`` / ``"xb"`` mean ``overwrite=False``.
        encoding: the text encoding, as for ``open()`` (``None``: the locale's).
        newline: newline translation, as for ``open()``.
        fsync: flush the file and its directory to disk, so the result survives a power
            cut. ``False`` keeps the atomicity against crashes of the process only. A
            directory the process may write but not read (mode ``0o733``) cannot be
            flushed: there only the file is, and the write succeeds all the same.
        overwrite: ``False`` refuses to replace an existing ``path`` (or a symlink, even
            a dangling one): only one of several writers racing for a new name wins.

    Returns:
        A context manager whose ``with`` block gets the temporary file's file object.

    Raises:
        TypeError: ``path`` or ``mode`` has the wrong type.
        ValueError: ``mode`` does not write (``"r"``, ``"a"``, ...), or ``encoding`` /
            ``newline`` is given for a binary mode or ``newline`` is not a valid one.
        LookupError: ``encoding`` is unknown.
        FileNotFoundError: the directory does not exist (on entering the block).
        PermissionError: the directory is not writable (on entering the block).
        FileExistsError: ``overwrite=False`` and ``path`` exists (on entering the block,
            or at the end of it when another writer created ``path`` meanwhile).
        IsADirectoryError: ``path`` is a directory.
        OSError: ``path`` is not a regular file (a device, a pipe), or the disk failed.
    """
    return _writer(path, mode, encoding=encoding, newline=newline, fsync=fsync, overwrite=overwrite)


@final
class _AsyncAtomicWrite:
    """:class:`_AtomicWrite` with its blocking steps run in a worker thread."""

    __slots__ = ("_writer",)

    def __init__(self, writer: _AtomicWrite) -> None:
        self._writer = writer

    def __repr__(self) -> str:
        return repr(self._writer).replace("atomic_write", "atomic_write_async", 1)

    async def __aenter__(self) -> TextIO | BinaryIO:
        outcome = await run_shielded_outcome(_in_thread(self._writer.__enter__))
        if outcome.cancelled:
            # A plain asyncio cancellation arrived while the temporary file was being
            # created: remove it again, then deliver the cancellation.
            if outcome.error is None:
                cancelled = asyncio.CancelledError()
                await run_shielded(_in_thread(functools.partial(self._exit, cancelled)))
            raise asyncio.CancelledError from outcome.error
        if outcome.error is not None:
            raise outcome.error
        return outcome.value  # type: ignore[return-value]

    def _exit(self, error: BaseException) -> None:
        self._writer.__exit__(type(error), error, None)

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        # Once started, the commit (or the removal) runs to its end even if this task is
        # cancelled meanwhile; the cancellation is delivered afterwards. An error of the
        # block's own still wins (the cancellation then follows at the next await).
        outcome = await run_shielded_outcome(
            _in_thread(functools.partial(self._writer.__exit__, exc_type, exc, traceback))
        )
        error = outcome.error
        if outcome.cancelled:
            if exc is None or isinstance(exc, asyncio.CancelledError):
                raise asyncio.CancelledError from error
            redeliver_cancellation(exc)
        if error is not None:
            raise error


async def _in_thread(function: Callable[[], T]) -> T:
    if current_async_library() == "trio":
        trio = sys.modules["trio"]
        result: T = await trio.to_thread.run_sync(function)
        return result
    return await asyncio.to_thread(function)


@overload
def atomic_write_async(
    path: StrPath,
    mode: TextMode = "w",
    *,
    encoding: str | None = None,
    newline: str | None = None,
    fsync: bool = True,
    overwrite: bool = True,
) -> AbstractAsyncContextManager[TextIO, None]: ...
@overload
def atomic_write_async(
    path: StrPath,
    mode: BinaryMode,
    *,
    encoding: None = None,
    newline: None = None,
    fsync: bool = True,
    overwrite: bool = True,
) -> AbstractAsyncContextManager[BinaryIO, None]: ...
@overload
def atomic_write_async(
    path: StrPath,
    mode: str,
    *,
    encoding: str | None = None,
    newline: str | None = None,
    fsync: bool = True,
    overwrite: bool = True,
) -> AbstractAsyncContextManager[TextIO | BinaryIO, None]: ...
def atomic_write_async(
    path: StrPath,
    mode: str = "w",
    *,
    encoding: str | None = None,
    newline: str | None = None,
    fsync: bool = True,
    overwrite: bool = True,
) -> AbstractAsyncContextManager[TextIO | BinaryIO, None]:
    """:func:`atomic_write` for async code: the slow steps run in a worker thread.

    ::

        async with tether.atomic_write_async("report.json") as f:
            f.write(json.dumps(report))

    Creating the temporary file, the fsyncs, the rename and the clean-up run in a worker
    thread (asyncio's default executor, or trio's thread pool), so the event loop keeps
    serving other tasks while the disk works. The ``write()`` calls inside the block are
    plain buffered writes into the operating system's cache and stay on the event loop.

    Once the block has ended, the commit (or the clean-up after an error) always runs to
    its end, also when the task is cancelled meanwhile; the cancellation is delivered
    afterwards. Works on asyncio (plain tasks and anyio cancel scopes) and on trio.

    Args:
        path: the file to create or replace.
        mode: as for :func:`atomic_write`.
        encoding: as for :func:`atomic_write`.
        newline: as for :func:`atomic_write`.
        fsync: as for :func:`atomic_write`.
        overwrite: as for :func:`atomic_write`.

    Returns:
        An async context manager whose block gets the temporary file's file object.

    Raises:
        TypeError: as for :func:`atomic_write`.
        ValueError: as for :func:`atomic_write`.
        LookupError: as for :func:`atomic_write`.
        OSError: as for :func:`atomic_write` (``FileNotFoundError``, ``PermissionError``,
            ``FileExistsError``, ``IsADirectoryError``, ...).
    """
    return _AsyncAtomicWrite(
        _writer(path, mode, encoding=encoding, newline=newline, fsync=fsync, overwrite=overwrite)
    )
