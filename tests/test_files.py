"""atomic_write: the target is either untouched or fully replaced, and nothing is left over."""

from __future__ import annotations

import errno
import os
import re
import stat
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

import tether._files
from tether import atomic_write

NAME_MAX = 255


def temp_name_pattern(name: str) -> re.Pattern[str]:
    """The name of a temporary file that atomic_write creates next to ``name``."""
    return re.compile(rf"\.{re.escape(name)}\.tether-[0-9a-f]{{8}}\.tmp")


def listing(directory: Path) -> list[str]:
    return sorted(os.listdir(directory))


def mode_bits(path: Path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


@contextmanager
def umask(value: int) -> Iterator[None]:
    previous = os.umask(value)
    try:
        yield
    finally:
        os.umask(previous)


# -- writing ---------------------------------------------------------------------------


def test_text_write_creates_the_file_and_leaves_nothing_else(tmp_path: Path) -> None:
    """A new file gets what the block wrote; the directory holds only that file."""
    target = tmp_path / "report.txt"
    with atomic_write(target) as f:
        f.write("hello\n")
    assert target.read_text() == "hello\n"
    assert listing(tmp_path) == ["report.txt"]


def test_existing_file_is_replaced_completely(tmp_path: Path) -> None:
    """A longer old file is replaced, not overwritten in place: no tail of it remains."""
    target = tmp_path / "report.txt"
    target.write_text("old content that is longer than the new one\n")
    with atomic_write(str(target)) as f:
        f.write("new\n")
    assert target.read_text() == "new\n"
    assert listing(tmp_path) == ["report.txt"]


def test_binary_mode_writes_bytes(tmp_path: Path) -> None:
    """``"wb"`` hands out a binary file; the bytes arrive unchanged."""
    target = tmp_path / "blob.bin"
    payload = bytes(range(256)) * 4
    with atomic_write(target, "wb") as f:
        f.write(payload)
    assert target.read_bytes() == payload


def test_plus_mode_reads_back_what_was_written(tmp_path: Path) -> None:
    """``"w+"`` / ``"wb+"`` allow reading the temporary file before it is committed."""
    target = tmp_path / "t.txt"
    with atomic_write(target, "w+") as f:
        f.write("first line\n")
        f.seek(0)
        read_back = f.read()
    assert read_back == "first line\n"
    with atomic_write(target, "wb+") as fb:
        fb.write(b"bytes")
        fb.seek(0)
        assert fb.read() == b"bytes"
    assert target.read_bytes() == b"bytes"


@pytest.mark.parametrize("encoding", ["utf-8", "utf-16", "latin-1", "cp1252"])
def test_encoding_is_applied(tmp_path: Path, encoding: str) -> None:
    """Text is encoded with the given encoding, as ``open()`` would."""
    target = tmp_path / "t.txt"
    text = "caf\u00e9 \u00e0 la cr\u00e8me\n"
    with atomic_write(target, encoding=encoding) as f:
        f.write(text)
    assert target.read_bytes() == text.encode(encoding)


def test_default_encoding_is_the_one_open_uses(tmp_path: Path) -> None:
    """Without ``encoding`` the file is encoded exactly like ``open(path, "w")`` would."""
    target, reference = tmp_path / "t.txt", tmp_path / "reference.txt"
    with atomic_write(target) as f:
        f.write("plain ascii\n")
    with open(reference, "w") as plain:  # the default is what is compared
        plain.write("plain ascii\n")
    assert reference.read_bytes() == target.read_bytes()


@pytest.mark.parametrize(
    ("newline", "expected"),
    [
        (None, os.linesep.encode().join([b"a", b"b", b""])),
        ("", b"a\nb\n"),
        ("\n", b"a\nb\n"),
        ("\r\n", b"a\r\nb\r\n"),
        ("\r", b"a\rb\r"),
    ],
)
def test_newline_translation_is_that_of_open(
    tmp_path: Path, newline: str | None, expected: bytes
) -> None:
    """``newline`` translates ``"\\n"`` on write exactly as ``open()`` documents."""
    target = tmp_path / "t.txt"
    with atomic_write(target, newline=newline, encoding="ascii") as f:
        f.write("a\nb\n")
    assert target.read_bytes() == expected


def test_default_encoding_warning_points_at_the_caller(tmp_path: Path) -> None:
    """Under ``-X warn_default_encoding`` the EncodingWarning names the caller's line."""
    code = (
        "import sys, warnings\n"
        "from tether import atomic_write, atomic_write_async\n"
        "with warnings.catch_warnings(record=True) as caught:\n"
        "    warnings.simplefilter('always')\n"
        "    atomic_write(sys.argv[1])\n"
        "    atomic_write_async(sys.argv[1])\n"
        "    atomic_write(sys.argv[1], 'wb')\n"
        "print([(w.category.__name__, w.filename, w.lineno) for w in caught])\n"
    )
    result = subprocess.run(
        [sys.executable, "-X", "warn_default_encoding", "-c", code, str(tmp_path / "t")],
        capture_output=True,
        text=True,
        check=True,
    )
    expected = [("EncodingWarning", "<string>", 5), ("EncodingWarning", "<string>", 6)]
    assert str(expected) == result.stdout.strip()


def test_path_is_fixed_when_the_block_is_entered(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A relative path means the same file even if the block changes directory."""
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(tmp_path)
    with atomic_write("t.txt") as f:
        os.chdir(elsewhere)
        f.write("content")
    assert (tmp_path / "t.txt").read_text() == "content"
    assert listing(elsewhere) == []


def test_the_file_is_closed_after_the_block(tmp_path: Path) -> None:
    """The file object handed out is closed once the block has ended."""
    with atomic_write(tmp_path / "t.txt") as f:
        f.write("x")
    assert f.closed


def test_closing_the_file_inside_the_block_still_commits(tmp_path: Path) -> None:
    """Closing the file early only flushes it: the content is still committed and synced."""
    target = tmp_path / "t.txt"
    with atomic_write(target) as f:
        f.write("written before close")
        f.close()
    assert target.read_text() == "written before close"
    assert listing(tmp_path) == ["t.txt"]


def test_writing_after_closing_inside_the_block_fails_and_keeps_the_target(
    tmp_path: Path,
) -> None:
    """A write after an early close raises, and then nothing is committed."""
    target = tmp_path / "t.txt"
    target.write_text("old")

    def close_then_write() -> None:
        with atomic_write(target) as f:
            f.close()
            f.write("too late")

    with pytest.raises(ValueError, match="closed file"):
        close_then_write()
    assert target.read_text() == "old"
    assert listing(tmp_path) == ["t.txt"]


def test_a_writer_is_single_use(tmp_path: Path) -> None:
    """Entering the same atomic_write() object twice is a clear error."""
    writer = atomic_write(tmp_path / "t.txt")
    with writer as f:
        f.write("once")
    with pytest.raises(RuntimeError, match="already entered"), writer:
        pass  # pragma: no cover - never reached
    assert (tmp_path / "t.txt").read_text() == "once"


def test_exit_without_enter_is_an_error(tmp_path: Path) -> None:
    """Calling ``__exit__`` on a writer that was never entered says so."""
    writer = atomic_write(tmp_path / "t.txt")
    with pytest.raises(RuntimeError, match="not entered"):
        writer.__exit__(None, None, None)
    assert listing(tmp_path) == []


def test_repr_names_the_path_and_the_state(tmp_path: Path) -> None:
    """The writer's repr says which file it writes and how far it got."""
    writer = atomic_write(tmp_path / "t.txt")
    assert repr(writer) == f"<atomic_write {str(tmp_path / 't.txt')!r} unused>"


def test_dropped_unfinished_write_warns_and_removes_its_temp(tmp_path: Path) -> None:
    """A writer entered and then dropped warns where it was made and cleans up."""
    target = tmp_path / "t.txt"
    target.write_text("old")
    writer = atomic_write(target)
    line = sys._getframe().f_lineno - 1
    f = writer.__enter__()
    f.write("never committed")
    dropped = [writer]
    del writer
    with pytest.warns(ResourceWarning, match=rf"test_files\.py:{line} was entered but never"):
        dropped.clear()
    assert f.closed
    assert target.read_text() == "old"
    assert listing(tmp_path) == ["t.txt"]


# -- errors in the block ---------------------------------------------------------------


@pytest.mark.parametrize("error", [ValueError("boom"), KeyboardInterrupt(), SystemExit(3)])
def test_an_error_in_the_block_leaves_the_target_untouched(
    tmp_path: Path, error: BaseException
) -> None:
    """Any exception, KeyboardInterrupt included, discards the new content entirely."""
    target = tmp_path / "t.txt"
    target.write_text("old")

    def write_then_fail() -> None:
        with atomic_write(target) as f:
            f.write("half of the new content")
            raise error

    with pytest.raises(type(error)) as raised:
        write_then_fail()
    assert raised.value is error
    assert target.read_text() == "old"
    assert listing(tmp_path) == ["t.txt"]


def test_an_error_in_the_block_creates_no_new_file(tmp_path: Path) -> None:
    """When the target did not exist, an error leaves the directory empty."""

    def write_then_fail() -> None:
        with atomic_write(tmp_path / "t.txt", "wb") as f:
            f.write(b"x" * 100_000)
            raise ValueError("boom")

    with pytest.raises(ValueError, match="boom"):
        write_then_fail()
    assert listing(tmp_path) == []


def test_writing_the_wrong_type_leaves_the_target_untouched(tmp_path: Path) -> None:
    """Writing text into a binary writer raises TypeError and commits nothing."""
    target = tmp_path / "t.bin"
    target.write_bytes(b"old")
    with pytest.raises(TypeError), atomic_write(target, "wb") as f:
        f.write("text")  # type: ignore[arg-type]
    assert target.read_bytes() == b"old"
    assert listing(tmp_path) == ["t.bin"]


def test_a_failed_removal_is_noted_on_the_body_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """If the temporary file cannot be removed, the body's error says so in a note."""
    target = tmp_path / "t.txt"

    def refuse(path: str) -> None:
        raise PermissionError(errno.EACCES, "refused", path)

    def write_then_fail() -> None:
        with atomic_write(target) as f:
            f.write("x")
            monkeypatch.setattr(os, "unlink", refuse)
            raise ValueError("boom")

    with pytest.raises(ValueError, match="boom") as raised:
        write_then_fail()
    monkeypatch.undo()
    assert "could not remove its temporary file" in "".join(raised.value.__notes__)
    (leftover,) = listing(tmp_path)
    assert temp_name_pattern("t.txt").fullmatch(leftover)


def test_a_temp_removed_by_someone_else_is_no_extra_error(tmp_path: Path) -> None:
    """If a clean-up job deleted the temporary file meanwhile, only the body's error shows."""
    target = tmp_path / "t.txt"

    def write_then_fail() -> None:
        with atomic_write(target) as f:
            f.write("x")
            for name in os.listdir(tmp_path):
                os.unlink(tmp_path / name)
            raise ValueError("boom")

    with pytest.raises(ValueError, match="boom") as raised:
        write_then_fail()
    assert getattr(raised.value, "__notes__", []) == []
    assert listing(tmp_path) == []


# -- failures while committing ---------------------------------------------------------


def test_a_failed_fsync_does_not_replace_the_target(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An fsync error means the data may not be on disk: the old file stays, temp goes."""
    target = tmp_path / "t.txt"
    target.write_text("old")

    def failing_fsync(fd: int) -> None:
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(os, "fsync", failing_fsync)
    with pytest.raises(OSError, match="Input/output error"), atomic_write(target) as f:
        f.write("new")
    assert target.read_text() == "old"
    assert listing(tmp_path) == ["t.txt"]


def test_a_failed_rename_removes_the_temp(tmp_path: Path) -> None:
    """If the target became a directory meanwhile, the rename fails and nothing is left."""
    target = tmp_path / "t.txt"

    def write_while_target_becomes_a_directory() -> None:
        with atomic_write(target) as f:
            f.write("new")
            target.mkdir()

    with pytest.raises(IsADirectoryError):
        write_while_target_becomes_a_directory()
    assert listing(tmp_path) == ["t.txt"]
    assert target.is_dir()


def test_a_failed_commit_and_removal_are_both_reported(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """When the commit fails and so does the clean-up, the commit error carries a note."""
    target = tmp_path / "t.txt"

    def failing_fsync(fd: int) -> None:
        raise OSError(errno.EIO, "Input/output error")

    def refuse(path: str) -> None:
        raise PermissionError(errno.EACCES, "refused", path)

    monkeypatch.setattr(os, "fsync", failing_fsync)
    monkeypatch.setattr(os, "unlink", refuse)
    with pytest.raises(OSError, match="Input/output error") as raised, atomic_write(target) as f:
        f.write("new")
    monkeypatch.undo()
    assert "could not remove its temporary file" in "".join(raised.value.__notes__)


@pytest.mark.parametrize(("fsync", "expected_syncs"), [(True, 2), (False, 0)])
def test_fsync_syncs_the_file_and_the_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, *, fsync: bool, expected_syncs: int
) -> None:
    """``fsync=True`` syncs the file before the rename and the directory after it."""
    target = tmp_path / "t.txt"
    synced: list[str] = []
    real_fsync = os.fsync

    def recording_fsync(fd: int) -> None:
        kind = "directory" if stat.S_ISDIR(os.fstat(fd).st_mode) else "file"
        on_disk = target.read_text() if target.exists() else None
        synced.append(f"{kind}, target={on_disk}")
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", recording_fsync)
    with atomic_write(target, fsync=fsync) as f:
        f.write("new")
    expected = ["file, target=None", "directory, target=new"][:expected_syncs]
    assert expected == synced
    assert target.read_text() == "new"


# -- bad input -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "mode", ["r", "rb", "r+", "rt", "", "U", "ww", "wx", "wbt", "w+b+", "wr", "bb", "wq"]
)
def test_a_mode_that_does_not_write_is_a_value_error(tmp_path: Path, mode: str) -> None:
    """Anything but a write mode is refused at the call, naming the mode."""
    with pytest.raises(ValueError, match=re.escape(repr(mode))):
        atomic_write(tmp_path / "t.txt", mode)
    assert listing(tmp_path) == []


@pytest.mark.parametrize("mode", ["a", "ab", "a+", "at"])
def test_append_modes_explain_why_they_cannot_be_atomic(tmp_path: Path, mode: str) -> None:
    """Appending is refused with the reason and the alternative."""
    with pytest.raises(ValueError, match="appending cannot be atomic"):
        atomic_write(tmp_path / "t.txt", mode)


@pytest.mark.parametrize(
    ("mode", "binary"),
    [("w", False), ("wt", False), ("tw", False), ("w+", False), ("wb", True), ("bw", True)],
)
def test_every_spelling_of_a_write_mode_is_accepted(
    tmp_path: Path, mode: str, *, binary: bool
) -> None:
    """The letters of a write mode may come in any order, as with ``open()``."""
    target = tmp_path / "t"
    with atomic_write(target, mode) as f:
        f.write(b"data" if binary else "data")  # type: ignore[arg-type]
    assert target.read_bytes() == b"data"


def test_a_mode_that_is_not_a_string_is_a_type_error(tmp_path: Path) -> None:
    """``mode`` must be a str."""
    with pytest.raises(TypeError, match="mode must be a str"):
        atomic_write(tmp_path / "t.txt", 1)  # type: ignore[call-overload]


@pytest.mark.parametrize("path", [b"/tmp/t.txt", 3, None])
def test_a_path_that_is_not_a_str_path_is_a_type_error(path: object) -> None:
    """``path`` must be a str or an ``os.PathLike`` of str."""
    with pytest.raises(TypeError, match="path must be a str"):
        atomic_write(path)  # type: ignore[call-overload]


def test_an_empty_path_is_file_not_found() -> None:
    """An empty path names no file, as with ``open("")``."""
    with pytest.raises(FileNotFoundError):
        atomic_write("")


def test_text_options_with_a_binary_mode_are_value_errors(tmp_path: Path) -> None:
    """``encoding`` and ``newline`` make no sense for bytes and are refused by name."""
    with pytest.raises(ValueError, match="encoding is for text modes only"):
        atomic_write(tmp_path / "t", "wb", encoding="utf-8")  # type: ignore[call-overload]
    with pytest.raises(ValueError, match="newline is for text modes only"):
        atomic_write(tmp_path / "t", "wb", newline="")  # type: ignore[call-overload]


def test_a_bad_newline_is_a_value_error(tmp_path: Path) -> None:
    """Only the newline values ``open()`` accepts are accepted."""
    with pytest.raises(ValueError, match="newline must be"):
        atomic_write(tmp_path / "t", newline="\n\n")


def test_an_unknown_encoding_fails_at_the_call(tmp_path: Path) -> None:
    """An unknown encoding raises LookupError before any file is created."""
    with pytest.raises(LookupError):
        atomic_write(tmp_path / "t", encoding="no-such-codec")
    assert listing(tmp_path) == []


def test_a_missing_directory_is_file_not_found_and_creates_nothing(tmp_path: Path) -> None:
    """The error names the path asked for, and nothing appears anywhere."""
    target = tmp_path / "missing" / "t.txt"
    with pytest.raises(FileNotFoundError) as raised, atomic_write(target):
        pass  # pragma: no cover - never reached
    assert str(target) == raised.value.filename
    assert listing(tmp_path) == []


def test_a_file_as_directory_is_not_a_directory_error(tmp_path: Path) -> None:
    """A path through a regular file fails as it would with ``open()``."""
    (tmp_path / "file").write_text("x")
    with pytest.raises(NotADirectoryError), atomic_write(tmp_path / "file" / "t.txt"):
        pass  # pragma: no cover - never reached
    assert listing(tmp_path) == ["file"]


def test_a_directory_is_refused(tmp_path: Path) -> None:
    """A path naming a directory (or ending in a separator) is an IsADirectoryError."""
    (tmp_path / "sub").mkdir()
    with pytest.raises(IsADirectoryError), atomic_write(tmp_path / "sub"):
        pass  # pragma: no cover - never reached
    with pytest.raises(IsADirectoryError), atomic_write(f"{tmp_path / 'new'}/"):
        pass  # pragma: no cover - never reached
    assert listing(tmp_path) == ["sub"]
    assert listing(tmp_path / "sub") == []


def test_a_special_file_is_refused(tmp_path: Path) -> None:
    """A named pipe (or a device) is not replaced by a regular file."""
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    with pytest.raises(OSError, match=r"regular files only.*named pipe"), atomic_write(fifo):
        pass  # pragma: no cover - never reached
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)
    assert listing(tmp_path) == ["pipe"]


def test_the_special_file_kinds_are_named() -> None:
    """The refusal says what kind of file was found."""
    assert tether._files._file_kind(stat.S_IFCHR) == "character device"
    assert tether._files._file_kind(stat.S_IFBLK) == "block device"
    assert tether._files._file_kind(stat.S_IFSOCK) == "socket"
    assert tether._files._file_kind(0) == "special file"


def test_a_read_only_directory_is_a_permission_error_with_nothing_left(tmp_path: Path) -> None:
    """Without write access to the directory nothing can be created, not even the temp.

    Root ignores directory permissions, so as root the write runs in a subprocess that
    has dropped to the ``nobody`` user (uid 65534) first.
    """
    with tempfile.TemporaryDirectory() as world_traversable:
        base = tmp_path
        if os.geteuid() == 0:
            # tmp_path lies below a 0o700 directory of root's that nobody cannot reach.
            base = Path(world_traversable)
            base.chmod(0o755)
        read_only = base / "read-only"
        read_only.mkdir()
        existing = read_only / "existing.txt"
        existing.write_text("old")
        existing.chmod(0o666)  # the file itself is writable; only the directory is not
        read_only.chmod(0o555)
        try:
            outcomes = [
                _write_without_privileges(read_only / name) for name in ("new.txt", "existing.txt")
            ]
            assert [
                ("PermissionError", str(read_only / "new.txt")),
                ("PermissionError", str(read_only / "existing.txt")),
            ] == outcomes
            assert listing(read_only) == ["existing.txt"]
            assert existing.read_text() == "old"
        finally:
            read_only.chmod(0o755)


def test_a_drop_box_directory_that_cannot_be_read_is_written_into(tmp_path: Path) -> None:
    """A directory the writer may write and search but not read (a drop box) cannot be
    opened to fsync it; the write succeeds all the same, as ``open(path, "w")`` would.

    As root, which may read any directory, the write runs as ``nobody`` (see
    :func:`_write_without_privileges`).
    """
    with tempfile.TemporaryDirectory() as world_traversable:
        base = tmp_path
        if os.geteuid() == 0:
            base = Path(world_traversable)  # see the read-only directory test
            base.chmod(0o755)
        drop_box = base / "drop-box"
        drop_box.mkdir()
        drop_box.chmod(0o333)  # write and search, for everyone including its owner; no read
        try:
            assert _write_without_privileges(drop_box / "report.txt") == ("written", "")
        finally:
            drop_box.chmod(0o755)
        assert listing(drop_box) == ["report.txt"]
        assert (drop_box / "report.txt").read_text() == "new"


DROP_PRIVILEGES_AND_WRITE = """
import os, sys
from tether import atomic_write
os.setgroups([])
os.setgid(65534)
os.setuid(65534)
try:
    with atomic_write(sys.argv[1]) as f:
        f.write("new")
except OSError as exc:
    print(type(exc).__name__, exc.filename)
else:
    print("written")
"""


def _write_without_privileges(target: Path) -> tuple[str, str]:
    if os.geteuid() != 0:
        try:
            with atomic_write(target) as f:
                f.write("new")
        except OSError as exc:
            return type(exc).__name__, exc.filename
        return ("written", "")
    result = subprocess.run(
        [sys.executable, "-c", DROP_PRIVILEGES_AND_WRITE, str(target)],
        capture_output=True,
        text=True,
        check=True,
    )
    kind, _, filename = result.stdout.strip().partition(" ")
    return kind, filename


def test_permission_error_says_the_directory_must_be_writable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The PermissionError explains that the directory, not the file, needs write access."""

    def refuse(path: str, flags: int, mode: int = 0o777) -> int:
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), path)

    monkeypatch.setattr(os, "open", refuse)
    with pytest.raises(PermissionError) as raised, atomic_write(tmp_path / "t.txt"):
        pass  # pragma: no cover - never reached
    monkeypatch.undo()
    assert f"temporary file in {str(tmp_path)!r}" in "".join(raised.value.__notes__)


# -- overwrite=False -------------------------------------------------------------------


@pytest.mark.parametrize(("mode", "overwrite"), [("w", False), ("x", True), ("xb", True)])
def test_no_overwrite_refuses_an_existing_file_at_once(
    tmp_path: Path, mode: str, *, overwrite: bool
) -> None:
    """``overwrite=False`` (or an ``"x"`` mode) raises on entry and touches nothing."""
    target = tmp_path / "t.txt"
    target.write_text("old")
    with pytest.raises(FileExistsError) as raised, atomic_write(target, mode, overwrite=overwrite):
        pass  # pragma: no cover - never reached
    assert str(target) == raised.value.filename
    assert target.read_text() == "old"
    assert listing(tmp_path) == ["t.txt"]


def test_no_overwrite_creates_a_new_file(tmp_path: Path) -> None:
    """A free name is taken, with the content written."""
    target = tmp_path / "t.txt"
    with atomic_write(target, overwrite=False) as f:
        f.write("mine")
    assert target.read_text() == "mine"
    assert listing(tmp_path) == ["t.txt"]


def test_no_overwrite_loses_to_a_file_created_during_the_block(tmp_path: Path) -> None:
    """If someone else creates the name meanwhile, theirs stays and ours is discarded."""
    target = tmp_path / "t.txt"

    def write_while_someone_else_creates_it() -> None:
        with atomic_write(target, "x") as f:
            f.write("ours")
            target.write_text("theirs")

    with pytest.raises(FileExistsError):
        write_while_someone_else_creates_it()
    assert target.read_text() == "theirs"
    assert listing(tmp_path) == ["t.txt"]


def test_no_overwrite_refuses_a_dangling_symlink(tmp_path: Path) -> None:
    """A symlink is an existing name, even when it points nowhere; it stays as it is."""
    link = tmp_path / "link"
    link.symlink_to("nowhere")
    with pytest.raises(FileExistsError), atomic_write(link, overwrite=False):
        pass  # pragma: no cover - never reached
    assert os.readlink(link) == "nowhere"
    assert listing(tmp_path) == ["link"]


def test_no_overwrite_without_hard_links_explains_itself(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On a file system without hard links the error says what ``overwrite=False`` needs."""

    def no_links(source: str, destination: str) -> None:
        raise PermissionError(errno.EPERM, "Operation not permitted", source)

    monkeypatch.setattr(os, "link", no_links)
    with pytest.raises(PermissionError) as raised, atomic_write(tmp_path / "t", "x") as f:
        f.write("x")
    monkeypatch.undo()
    assert "needs a file system with hard links" in "".join(raised.value.__notes__)
    assert listing(tmp_path) == []


def test_no_overwrite_that_cannot_remove_its_temporary_name_still_succeeds(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """With ``overwrite=False`` the file gets its name by a hard link, then the temporary
    name is removed. If that removal fails the write has still happened (readers see the
    new file): it is not reported as failed, and the stray temporary name is logged."""
    real_unlink = os.unlink

    def failing_unlink(path: str, *args: object, **kwargs: object) -> None:
        if ".tether-" in os.fspath(path):
            raise OSError(errno.EIO, "Input/output error", path)
        real_unlink(path, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(os, "unlink", failing_unlink)
    with caplog.at_level("WARNING", logger="tether.files"):
        with atomic_write(tmp_path / "t", overwrite=False) as f:
            f.write("new")
    monkeypatch.undo()
    assert (tmp_path / "t").read_text() == "new"
    assert "could not be removed" in caplog.text
    assert len(listing(tmp_path)) == 2  # the file, and its second (temporary) name


# -- permissions -----------------------------------------------------------------------


@pytest.mark.parametrize("bits", [0o600, 0o640, 0o644, 0o755, 0o444, 0o2750, 0o4755])
def test_an_existing_file_keeps_its_permission_bits(tmp_path: Path, bits: int) -> None:
    """The replacement has the permission bits of the file it replaces."""
    target = tmp_path / "t"
    target.write_text("old")
    target.chmod(bits)
    with atomic_write(target) as f:
        f.write("new")
    assert oct(bits) == oct(mode_bits(target))
    assert target.read_text() == "new"


@pytest.mark.parametrize("mask", [0o022, 0o077, 0o002, 0o027, 0o000])
def test_a_new_file_gets_the_same_bits_as_with_open(tmp_path: Path, mask: int) -> None:
    """A new file gets ``0o666 & ~umask``, whatever the umask is."""
    with umask(mask):
        with atomic_write(tmp_path / "new") as f:
            f.write("x")
        with open(tmp_path / "reference", "w", encoding="utf-8") as plain:
            plain.write("x")
    assert oct(0o666 & ~mask) == oct(mode_bits(tmp_path / "new"))
    assert mode_bits(tmp_path / "reference") == mode_bits(tmp_path / "new")


def test_the_temp_is_private_while_replacing_an_existing_file(tmp_path: Path) -> None:
    """Until the commit, only the owner can read what is being written."""
    target = tmp_path / "t"
    target.write_text("old")
    target.chmod(0o644)
    with atomic_write(target) as f:
        (temp,) = (name for name in listing(tmp_path) if name != "t")
        bits_while_writing = mode_bits(tmp_path / temp)
        f.write("secret until committed")
    assert oct(0o600) == oct(bits_while_writing)
    assert oct(0o644) == oct(mode_bits(target))


@pytest.mark.skipif(os.geteuid() != 0, reason="only root can give a file to another user")
def test_an_existing_file_keeps_its_owner_and_group(tmp_path: Path) -> None:
    """Run by root, the replacement of another user's file still belongs to that user."""
    target = tmp_path / "t"
    target.write_text("old")
    os.chown(target, 65534, 65534)
    target.chmod(0o4750)  # chown clears set-user-ID: it must be set again after it
    with atomic_write(target) as f:
        f.write("new")
    info = os.stat(target)
    expected = (65534, 65534, 0o4750)
    assert expected == (info.st_uid, info.st_gid, stat.S_IMODE(info.st_mode))


@pytest.mark.skipif(os.geteuid() != 0, reason="only root can give a file to another group")
def test_without_the_right_to_keep_the_owner_the_group_is_still_kept(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A writer who may not give the file away still keeps its group (a shared directory).

    Root plays an unprivileged member of the file's group: its fchown refuses to change
    the owner, as the kernel does for everyone but root.
    """
    target = tmp_path / "t"
    target.write_text("old")
    os.chown(target, -1, 65534)
    calls: list[tuple[int, int]] = []
    real_fchown = os.fchown

    def fchown_without_privileges(fd: int, uid: int, gid: int) -> None:
        calls.append((uid, gid))
        if uid != -1:
            raise PermissionError(errno.EPERM, "Operation not permitted")
        real_fchown(fd, uid, gid)

    monkeypatch.setattr(os, "fchown", fchown_without_privileges)
    with atomic_write(target) as f:
        f.write("new")
    assert calls == [(os.geteuid(), 65534), (-1, 65534)]
    assert os.stat(target).st_gid == 65534
    assert target.read_text() == "new"


# -- symlinks --------------------------------------------------------------------------


def test_a_symlink_is_kept_and_its_target_replaced(tmp_path: Path) -> None:
    """Writing through a symlink replaces the file it points to, as editors do."""
    real_dir, link_dir = tmp_path / "real", tmp_path / "links"
    real_dir.mkdir()
    link_dir.mkdir()
    real = real_dir / "config.txt"
    real.write_text("old")
    real.chmod(0o640)
    link = link_dir / "config.txt"
    link.symlink_to(os.path.relpath(real, link_dir))
    with atomic_write(link) as f:
        temps_while_writing = (listing(real_dir), listing(link_dir))
        f.write("new")
    assert link.is_symlink()
    assert os.readlink(link) == os.path.join("..", "real", "config.txt")
    assert real.read_text() == "new"
    assert oct(0o640) == oct(mode_bits(real))
    assert listing(real_dir) == ["config.txt"]
    assert listing(link_dir) == ["config.txt"]
    # The temporary file lives next to the real file, on its file system.
    (in_real_dir, in_link_dir) = temps_while_writing
    assert in_link_dir == ["config.txt"]
    assert len(in_real_dir) == 2
    assert temp_name_pattern("config.txt").fullmatch(in_real_dir[0])


def test_a_chain_of_symlinks_is_followed_to_the_end(tmp_path: Path) -> None:
    """Every link in a chain stays; only the final file is replaced."""
    real = tmp_path / "real"
    real.write_text("old")
    (tmp_path / "middle").symlink_to("real")
    (tmp_path / "first").symlink_to("middle")
    with atomic_write(tmp_path / "first") as f:
        f.write("new")
    assert real.read_text() == "new"
    assert (os.readlink(tmp_path / "first"), os.readlink(tmp_path / "middle")) == (
        "middle",
        "real",
    )


def test_a_dangling_symlink_gets_its_target_created(tmp_path: Path) -> None:
    """A link to a missing file is kept, and the file it names is created."""
    link = tmp_path / "link"
    link.symlink_to("created-through-link")
    with atomic_write(link) as f:
        f.write("new")
    assert link.is_symlink()
    assert (tmp_path / "created-through-link").read_text() == "new"
    assert listing(tmp_path) == ["created-through-link", "link"]


def test_a_symlinked_directory_is_written_through(tmp_path: Path) -> None:
    """A symlink in the directory part of the path is followed like any other."""
    (tmp_path / "real").mkdir()
    (tmp_path / "alias").symlink_to("real")
    with atomic_write(tmp_path / "alias" / "t.txt") as f:
        f.write("x")
    assert (tmp_path / "real" / "t.txt").read_text() == "x"
    assert listing(tmp_path / "real") == ["t.txt"]


def test_a_symlink_loop_is_an_error(tmp_path: Path) -> None:
    """A link that leads back to itself cannot be written through, and nothing changes."""
    (tmp_path / "a").symlink_to("b")
    (tmp_path / "b").symlink_to("a")
    with pytest.raises(OSError, match="symbolic links") as raised, atomic_write(tmp_path / "a"):
        pass  # pragma: no cover - never reached
    assert raised.value.errno == errno.ELOOP
    assert listing(tmp_path) == ["a", "b"]


# -- the temporary file ----------------------------------------------------------------


def test_the_temp_has_a_recognisable_unique_name_next_to_the_target(tmp_path: Path) -> None:
    """``.<name>.tether-<8 hex digits>.tmp``: easy to spot after a crash, never reused."""
    names = []
    for _ in range(3):
        with atomic_write(tmp_path / "data.json") as f:
            (temp,) = (name for name in listing(tmp_path) if name != "data.json")
            names.append(temp)
            f.write("{}")
    assert all(temp_name_pattern("data.json").fullmatch(name) for name in names)
    assert len(set(names)) == 3


def test_the_file_object_is_named_after_the_temp(tmp_path: Path) -> None:
    """``f.name`` is the temporary file, so a tool can check the content before the commit."""
    target = tmp_path / "config.ini"
    with atomic_write(target) as f:
        f.write("[section]\n")
        f.flush()
        checked_by_a_tool = Path(f.name).read_text()
        temp = Path(f.name)
    assert checked_by_a_tool == "[section]\n"
    assert temp.parent == tmp_path
    assert temp_name_pattern("config.ini").fullmatch(temp.name)
    assert (f.mode, target.read_text()) == ("w", "[section]\n")


@pytest.mark.parametrize("name", ["n" * NAME_MAX, "\u00e9" * (NAME_MAX // 2)])
def test_a_name_of_the_maximum_length_still_gets_a_temp(tmp_path: Path, name: str) -> None:
    """The temporary name is shortened to fit in one path component."""
    target = tmp_path / name
    with atomic_write(target) as f:
        (temp,) = (entry for entry in listing(tmp_path) if entry != name)
        f.write("x")
    assert target.read_text() == "x"
    assert len(os.fsencode(temp)) <= NAME_MAX
    assert temp.startswith("." + name[:100])
    assert temp.endswith(".tmp")


def test_a_taken_temp_name_is_skipped_and_left_alone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """If the random name already exists (say, from a crash), another one is drawn."""
    stray = tmp_path / ".t.tether-00000000.tmp"
    stray.write_text("left by a crash")
    draws = iter(["00000000", "11111111"])
    monkeypatch.setattr(tether._files, "_random_hex", lambda: next(draws))
    with atomic_write(tmp_path / "t") as f:
        f.write("new")
    assert stray.read_text() == "left by a crash"
    assert listing(tmp_path) == [".t.tether-00000000.tmp", "t"]


def test_running_out_of_temp_names_is_file_exists(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """When every drawn name is taken the writer gives up with FileExistsError."""
    (tmp_path / ".t.tether-00000000.tmp").write_text("taken")
    monkeypatch.setattr(tether._files, "_random_hex", lambda: "00000000")
    with (
        pytest.raises(FileExistsError, match="no free temporary file name"),
        atomic_write(tmp_path / "t"),
    ):
        pass  # pragma: no cover - never reached
    assert listing(tmp_path) == [".t.tether-00000000.tmp"]


def test_readers_only_ever_see_complete_versions(tmp_path: Path) -> None:
    """While several threads keep replacing a file, a reader sees only whole versions."""
    target = tmp_path / "t"
    versions = [bytes([65 + n]) * 200_000 for n in range(4)]
    target.write_bytes(versions[0])
    stop = threading.Event()
    seen: set[int] = set()
    torn: list[int] = []

    def read_until_stopped() -> None:
        while not stop.is_set():
            content = target.read_bytes()
            if content in versions:
                seen.add(versions.index(content))
            else:
                torn.append(len(content))

    def write(version: bytes) -> Callable[[], None]:
        def run() -> None:
            for _ in range(25):
                with atomic_write(target, "wb", fsync=False) as f:
                    f.write(version)

        return run

    reader = threading.Thread(target=read_until_stopped)
    writers = [threading.Thread(target=write(version)) for version in versions]
    reader.start()
    for thread in writers:
        thread.start()
    for thread in writers:
        thread.join()
    stop.set()
    reader.join()
    assert torn == []
    assert target.read_bytes() in versions
    assert listing(tmp_path) == ["t"]
    assert seen  # the reader did read while the writers ran
