"""atomic_write_async: the same guarantees, with the disk work off the event loop."""

from __future__ import annotations

import asyncio
import os
import threading
from pathlib import Path

import anyio
import pytest

import tether._files
from tether import atomic_write_async

both_backends = pytest.mark.parametrize("anyio_backend", ["asyncio", "trio"])


def listing(directory: Path) -> list[str]:
    return sorted(os.listdir(directory))


@both_backends
async def test_writes_and_replaces(tmp_path: Path) -> None:
    """The block's content replaces the target, in text and in binary mode."""
    target = tmp_path / "t.txt"
    target.write_text("old")
    async with atomic_write_async(target) as f:
        f.write("new text")
    assert target.read_text() == "new text"
    async with atomic_write_async(target, "wb") as fb:
        fb.write(b"new bytes")
    assert target.read_bytes() == b"new bytes"
    assert listing(tmp_path) == ["t.txt"]


@both_backends
async def test_an_error_in_the_block_leaves_the_target_untouched(tmp_path: Path) -> None:
    """An exception discards the new content and removes the temporary file."""
    target = tmp_path / "t.txt"
    target.write_text("old")

    async def write_then_fail() -> None:
        async with atomic_write_async(target) as f:
            f.write("half")
            raise ValueError("boom")

    with pytest.raises(ValueError, match="boom"):
        await write_then_fail()
    assert target.read_text() == "old"
    assert listing(tmp_path) == ["t.txt"]


@both_backends
async def test_cancellation_in_the_block_leaves_the_target_untouched(tmp_path: Path) -> None:
    """A cancel scope that fires inside the block discards the write."""
    target = tmp_path / "t.txt"
    target.write_text("old")
    with anyio.CancelScope() as scope:
        async with atomic_write_async(target) as f:
            f.write("half")
            scope.cancel()
            await anyio.sleep(1)
    assert scope.cancelled_caught
    assert target.read_text() == "old"
    assert listing(tmp_path) == ["t.txt"]


async def test_task_cancel_in_the_block_leaves_the_target_untouched(tmp_path: Path) -> None:
    """A plain asyncio ``task.cancel()`` inside the block discards the write."""
    target = tmp_path / "t.txt"
    target.write_text("old")
    inside = asyncio.Event()

    async def write_forever() -> None:
        async with atomic_write_async(target) as f:
            f.write("half")
            inside.set()
            await asyncio.sleep(60)

    task = asyncio.create_task(write_forever())
    await inside.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert target.read_text() == "old"
    assert listing(tmp_path) == ["t.txt"]


@both_backends
async def test_errors_on_entry_are_raised_as_they_are(tmp_path: Path) -> None:
    """A missing directory or an existing name fails on entry, as with atomic_write."""
    (tmp_path / "taken").write_text("x")
    with pytest.raises(FileNotFoundError):
        async with atomic_write_async(tmp_path / "missing" / "t.txt"):
            pass  # pragma: no cover - never reached
    with pytest.raises(FileExistsError):
        async with atomic_write_async(tmp_path / "taken", "x"):
            pass  # pragma: no cover - never reached
    assert listing(tmp_path) == ["taken"]


def test_bad_arguments_fail_at_the_call(tmp_path: Path) -> None:
    """The same argument checks as atomic_write, before anything is awaited."""
    with pytest.raises(ValueError, match="'r'"):
        atomic_write_async(tmp_path / "t", "r")  # type: ignore[call-overload]
    with pytest.raises(TypeError, match="path"):
        atomic_write_async(b"t")  # type: ignore[call-overload]


def test_repr_says_it_is_the_async_flavour(tmp_path: Path) -> None:
    """The repr names the async function and the path."""
    writer = atomic_write_async(tmp_path / "t")
    assert repr(writer) == f"<atomic_write_async {str(tmp_path / 't')!r} unused>"


@both_backends
async def test_the_disk_work_runs_off_the_event_loop_thread(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Creating, fsyncing and renaming all happen in a worker thread."""
    loop_thread = threading.get_ident()
    threads: dict[str, int] = {}
    real_open, real_fsync, real_replace = os.open, os.fsync, os.replace

    def recording_open(path: str, flags: int, mode: int = 0o777) -> int:
        threads.setdefault("create", threading.get_ident())
        return real_open(path, flags, mode)

    def recording_fsync(fd: int) -> None:
        threads.setdefault("fsync", threading.get_ident())
        real_fsync(fd)

    def recording_replace(source: str, destination: str) -> None:
        threads["replace"] = threading.get_ident()
        real_replace(source, destination)

    monkeypatch.setattr(os, "open", recording_open)
    monkeypatch.setattr(os, "fsync", recording_fsync)
    monkeypatch.setattr(os, "replace", recording_replace)
    async with atomic_write_async(tmp_path / "t.txt") as f:
        f.write("x")
    monkeypatch.undo()
    assert sorted(threads) == ["create", "fsync", "replace"]
    assert loop_thread not in threads.values()
    assert (tmp_path / "t.txt").read_text() == "x"


class SlowFsync:
    """An fsync that blocks until released, to cancel a task in the middle of a commit."""

    def __init__(self) -> None:
        self.entered = threading.Event()
        self.release = threading.Event()
        self._real = os.fsync

    def __call__(self, fd: int) -> None:
        self.entered.set()
        self.release.wait(30)
        self._real(fd)


async def test_task_cancel_during_the_commit_finishes_it_then_cancels(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Once the block is done the commit completes; the cancellation comes afterwards."""
    target = tmp_path / "t.txt"
    target.write_text("old")
    slow = SlowFsync()
    monkeypatch.setattr(os, "fsync", slow)
    after_block: list[str] = []

    async def write() -> None:
        async with atomic_write_async(target) as f:
            f.write("new")
        after_block.append("reached")  # pragma: no cover - the cancellation comes first

    task = asyncio.create_task(write())
    assert await asyncio.to_thread(slow.entered.wait, 30)
    task.cancel()
    await asyncio.sleep(0.01)  # the cancellation reaches the task while fsync is blocked
    slow.release.set()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert target.read_text() == "new"
    assert listing(tmp_path) == ["t.txt"]
    assert after_block == []


async def test_a_cancellation_while_discarding_leaves_the_blocks_error_first(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The block raised (rejecting the write) and the task is cancelled while the
    temporary file is removed: the removal finishes, the block's error propagates (it is
    not replaced by the cancellation), and the cancellation follows at the next await."""
    entered, release = threading.Event(), threading.Event()
    real_unlink = os.unlink

    def slow_unlink(path: str, *args: object, **kwargs: object) -> None:
        entered.set()
        release.wait(30)
        real_unlink(path, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(os, "unlink", slow_unlink)
    seen: list[str] = []

    async def write() -> None:
        try:
            async with atomic_write_async(tmp_path / "t.txt") as f:
                f.write("rejected")
                raise ValueError("validation failed")
        except ValueError:
            seen.append("ValueError")
        await asyncio.sleep(0)  # the cancellation arrives here
        seen.append("ran on")  # pragma: no cover - it must not

    task = asyncio.create_task(write())
    assert await asyncio.to_thread(entered.wait, 30)
    task.cancel()
    await asyncio.sleep(0.01)  # the cancellation reaches the task while unlink is blocked
    release.set()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert seen == ["ValueError"]
    assert listing(tmp_path) == []


@both_backends
async def test_cancel_scope_during_the_commit_finishes_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A cancel scope that fires during the commit cannot leave it half done."""
    target = tmp_path / "t.txt"
    target.write_text("old")
    slow = SlowFsync()
    monkeypatch.setattr(os, "fsync", slow)

    async def write() -> None:
        async with atomic_write_async(target) as f:
            f.write("new")
        await anyio.sleep(60)  # pragma: no cover - the cancellation ends it

    async with anyio.create_task_group() as group:
        group.start_soon(write)
        assert await anyio.to_thread.run_sync(slow.entered.wait, 30)
        group.cancel_scope.cancel()  # while fsync is blocked: during the commit
        slow.release.set()
    assert target.read_text() == "new"
    assert listing(tmp_path) == ["t.txt"]


async def test_task_cancel_while_entering_removes_the_temp(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Cancelled while the temporary file is being created: it is removed again."""
    target = tmp_path / "t.txt"
    target.write_text("old")
    drawing = threading.Event()
    release = threading.Event()
    real_random_hex = tether._files._random_hex

    def slow_random_hex() -> str:
        drawing.set()
        release.wait(30)
        return real_random_hex()

    monkeypatch.setattr(tether._files, "_random_hex", slow_random_hex)
    entered: list[str] = []

    async def write() -> None:
        async with atomic_write_async(target) as f:  # pragma: no cover - cancelled on entry
            entered.append("entered")
            f.write("new")

    task = asyncio.create_task(write())
    assert await asyncio.to_thread(drawing.wait, 30)
    task.cancel()
    await asyncio.sleep(0.01)
    release.set()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert entered == []
    assert target.read_text() == "old"
    assert listing(tmp_path) == ["t.txt"]


async def test_task_cancel_while_entering_fails_keeps_both(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Cancelled while an entry fails: the cancellation wins and carries the error."""
    drawing = threading.Event()
    release = threading.Event()

    def slow_random_hex() -> str:
        drawing.set()
        release.wait(30)
        return "00000000"

    monkeypatch.setattr(tether._files, "_random_hex", slow_random_hex)

    async def write() -> None:
        async with atomic_write_async(tmp_path / "missing" / "t.txt"):
            pass  # pragma: no cover - never reached

    task = asyncio.create_task(write())
    assert await asyncio.to_thread(drawing.wait, 30)
    task.cancel()
    await asyncio.sleep(0.01)
    release.set()
    with pytest.raises(asyncio.CancelledError) as raised:
        await task
    assert isinstance(raised.value.__cause__, FileNotFoundError)
    assert listing(tmp_path) == []
