"""atomic_write across processes: ``kill -9`` at random moments, and racing creators."""

from __future__ import annotations

import contextlib
import os
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

KILLS = 120
CONTENT_SIZE = 2 * 1024 * 1024  # big enough that most kills land in the middle of a write
RACERS = 8

# Runs in a subprocess and forks one writer child per "fork <fsync>" line on stdin. Each
# child rewrites the target with the two contents, alternately, until it is killed. The
# parent answers "wait <pid>" with the child's wait status, so that the test inspects the
# directory only once the child is dead.
WRITER_FACTORY = """
import os, sys
from tether import atomic_write

target, first_path, second_path = sys.argv[1:4]
with open(first_path, "rb") as f:
    first = f.read()
with open(second_path, "rb") as f:
    second = f.read()
for command in sys.stdin:
    word, _, argument = command.partition(" ")
    if word == "fork":
        ready_read, ready_write = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.close(ready_read)
            os.write(ready_write, b"!")
            os.close(ready_write)
            contents = (second, first)
            fsync = argument.strip() == "1"
            written = 0
            while True:
                with atomic_write(target, "wb", fsync=fsync) as f:
                    f.write(contents[written % 2])
                written += 1
        os.close(ready_write)
        os.read(ready_read, 1)
        os.close(ready_read)
        print(pid, flush=True)
    elif word == "wait":
        _, status = os.waitpid(int(argument), 0)
        print(status, flush=True)
"""


@pytest.mark.slow
def test_kill_9_at_random_moments_never_leaves_a_partial_target(tmp_path: Path) -> None:
    """However often the writer is killed, the target is exactly one of the two versions.

    A child process rewrites a 2 MiB file in a loop, alternating two known contents; it is
    killed with SIGKILL after a random delay, over and over. After every kill the target
    holds one of the two contents exactly, and anything else in the directory is one of
    atomic_write's recognisable temporary files (what a crash leaves behind).
    """
    first = (b"1" * 1023 + b"\n") * (CONTENT_SIZE // 1024)
    second = (b"2" * 1023 + b"\n") * (CONTENT_SIZE // 1024)
    names = {first: "first", second: "second"}
    (tmp_path / "first").write_bytes(first)
    (tmp_path / "second").write_bytes(second)
    directory = tmp_path / "data"
    directory.mkdir()
    target = directory / "target.bin"
    target.write_bytes(first)
    temp_name = re.compile(r"\.target\.bin\.tether-[0-9a-f]{8}\.tmp")

    rng = random.Random()
    seen: list[str] = []
    strays: list[str] = []
    statuses: list[int] = []
    with subprocess.Popen(
        [sys.executable, "-c", WRITER_FACTORY, target, tmp_path / "first", tmp_path / "second"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    ) as factory:
        assert factory.stdin is not None
        assert factory.stdout is not None
        for kill in range(KILLS):
            factory.stdin.write(f"fork {kill % 2}\n")
            factory.stdin.flush()
            pid = int(factory.stdout.readline())
            # Random moments: from right after the start to several writes later.
            time.sleep(rng.uniform(0, 0.03))
            os.kill(pid, signal.SIGKILL)
            factory.stdin.write(f"wait {pid}\n")
            factory.stdin.flush()
            statuses.append(int(factory.stdout.readline()))
            seen.append(names.get(target.read_bytes(), "neither"))
            leftovers = [name for name in os.listdir(directory) if name != "target.bin"]
            strays += leftovers
            for name in leftovers:
                os.unlink(directory / name)
        factory.stdin.close()
        assert factory.wait(timeout=30) == 0

    expected_signals = [signal.SIGKILL] * KILLS
    assert expected_signals == [os.WTERMSIG(status) for status in statuses]
    assert "neither" not in seen
    assert [name for name in strays if not temp_name.fullmatch(name)] == []
    # The kills really did land both in the middle of writes and between them.
    assert strays, "no kill landed while a temporary file existed"
    assert set(seen) == {"first", "second"}, "the writer never completed a write"


# Runs in each of the racing subprocesses: enter atomic_write(overwrite=False) while the
# name is still free, report it, then wait for the go that all of them get together.
RACER = """
import sys
from tether import atomic_write

target, me = sys.argv[1:3]
try:
    with atomic_write(target, overwrite=False) as f:
        f.write(me)
        print("entered", flush=True)
        sys.stdin.readline()
except FileExistsError:
    print("lost", flush=True)
else:
    print("won", flush=True)
"""


def test_racing_creators_with_overwrite_false_have_exactly_one_winner(tmp_path: Path) -> None:
    """Eight processes create the same new file at once: one wins, seven get FileExistsError.

    All eight are inside their ``atomic_write`` block (the name was free when they entered)
    before any of them may finish, so they all reach the commit together. The target holds
    the winner's content and no temporary file is left.
    """
    target = tmp_path / "claimed.txt"
    with contextlib.ExitStack() as stack:
        racers = [
            stack.enter_context(
                subprocess.Popen(
                    [sys.executable, "-c", RACER, target, f"racer {number}"],
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                    text=True,
                )
            )
            for number in range(RACERS)
        ]
        pipes = [(racer.stdin, racer.stdout) for racer in racers]
        entered = [stdout.readline().strip() for _, stdout in pipes if stdout]
        assert entered == ["entered"] * RACERS
        for stdin, _ in pipes:  # the barrier opens for everyone at once
            assert stdin is not None
            stdin.write("go\n")
            stdin.close()
        outcomes = [stdout.read().strip() for _, stdout in pipes if stdout]
        return_codes = [racer.wait(timeout=60) for racer in racers]
    assert return_codes == [0] * RACERS
    assert sorted(outcomes) == ["lost"] * (RACERS - 1) + ["won"]
    assert target.read_text() == f"racer {outcomes.index('won')}"
    assert os.listdir(tmp_path) == ["claimed.txt"]
