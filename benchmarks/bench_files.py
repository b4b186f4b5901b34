"""What atomic_write costs next to a plain ``open()`` / ``write()``.

Four ways to write the same bytes over an existing file, measured side by side in one run
(rounds interleaved, so that a noisy neighbour hurts every variant alike):

* ``plain``: ``open(path, "wb").write(data)`` - fast, and torn by a crash;
* ``plain + fsync``: the same, then ``os.fsync`` - durable once done, still torn by a crash;
* ``atomic_write(fsync=False)``: never torn by a crash of the process;
* ``atomic_write()``: never torn, and durable across a power cut (file and directory
  fsynced).

For 1 KiB and 10 MiB files. Ratios are against ``plain`` (and, for the fsync rows,
against ``plain + fsync`` as well). The numbers depend on the disk and file system more
than on anything else: run it where your files live (``--dir``).

    python benchmarks/bench_files.py [--dir DIR] [--rounds N] [--json]
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from tether import atomic_write

SIZES = {"1 KiB": 1024, "10 MiB": 10 * 1024 * 1024}
MIN_ROUND_SECONDS = 0.05


def plain(path: Path, data: bytes, *, fsync: bool) -> None:
    with open(path, "wb") as f:
        f.write(data)
        if fsync:
            f.flush()
            os.fsync(f.fileno())


def atomic(path: Path, data: bytes, *, fsync: bool) -> None:
    with atomic_write(path, "wb", fsync=fsync) as f:
        f.write(data)


@dataclass(frozen=True, slots=True)
class Row:
    size: str
    fsync: bool
    plain_seconds: float
    atomic_seconds: float
    plain_no_fsync_seconds: float

    @property
    def ratio(self) -> float:
        return self.atomic_seconds / self.plain_seconds

    @property
    def ratio_to_plain_no_fsync(self) -> float:
        return self.atomic_seconds / self.plain_no_fsync_seconds


def per_call(function: Callable[[], None], calls: int) -> float:
    start = time.perf_counter()
    for _ in range(calls):
        function()
    return (time.perf_counter() - start) / calls


def calls_per_round(function: Callable[[], None]) -> int:
    """Enough calls that one round of this variant takes at least MIN_ROUND_SECONDS."""
    calls = 1
    while True:
        if per_call(function, calls) * calls >= MIN_ROUND_SECONDS or calls >= 10_000:
            return calls
        calls *= 4


def measure(directory: Path, rounds: int) -> list[Row]:
    rows = []
    for size_name, size in SIZES.items():
        data = os.urandom(size)
        plain_path, atomic_path = directory / "plain.bin", directory / "atomic.bin"
        plain_path.write_bytes(data)
        atomic_path.write_bytes(data)
        variants: dict[tuple[str, bool], Callable[[], None]] = {
            ("plain", False): functools.partial(plain, plain_path, data, fsync=False),
            ("plain", True): functools.partial(plain, plain_path, data, fsync=True),
            ("atomic", False): functools.partial(atomic, atomic_path, data, fsync=False),
            ("atomic", True): functools.partial(atomic, atomic_path, data, fsync=True),
        }
        calls = {key: calls_per_round(function) for key, function in variants.items()}
        samples: dict[tuple[str, bool], list[float]] = {key: [] for key in variants}
        for _ in range(rounds):
            for key, function in variants.items():  # interleaved: noise hits all alike
                samples[key].append(per_call(function, calls[key]))
        median = {key: statistics.median(values) for key, values in samples.items()}
        rows += [
            Row(
                size=size_name,
                fsync=fsync,
                plain_seconds=median["plain", fsync],
                atomic_seconds=median["atomic", fsync],
                plain_no_fsync_seconds=median["plain", False],
            )
            for fsync in (False, True)
        ]
    return rows


def file_system(directory: Path) -> str:
    """The type of the file system holding ``directory`` (Linux), or ``"?"``."""
    try:
        mounts = Path("/proc/mounts").read_text().splitlines()
    except OSError:
        return "?"
    resolved = str(directory.resolve())
    best, kind = "", "?"
    for line in mounts:
        fields = line.split()
        if len(fields) < 3:
            continue
        mount_point = fields[1]
        inside = resolved == mount_point or resolved.startswith(mount_point.rstrip("/") + "/")
        if inside and len(mount_point) >= len(best):
            best, kind = mount_point, fields[2]
    return kind


def human(seconds: float) -> str:
    if seconds < 1e-3:
        return f"{seconds * 1e6:.0f} µs"
    return f"{seconds * 1e3:.2f} ms"


def report(rows: list[Row], where: str) -> str:
    lines = [
        f"atomic_write vs plain write, on {where}",
        "",
        "| size | fsync | plain write | atomic_write | ratio | vs plain write without fsync |",
        "|---|---|---|---|---|---|",
    ]
    lines += [
        f"| {row.size} | {'on' if row.fsync else 'off'} | {human(row.plain_seconds)} "
        f"| {human(row.atomic_seconds)} | {row.ratio:.1f}x "
        f"| {row.ratio_to_plain_no_fsync:.1f}x |"
        for row in rows
    ]
    lines += [
        "",
        "fsync on: the plain write is followed by os.fsync() of the file; atomic_write also",
        "fsyncs the directory after the rename.",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dir", type=Path, help="where to write (default: a temporary dir)")
    parser.add_argument("--rounds", type=int, default=7, help="interleaved rounds (default 7)")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    options = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(dir=options.dir, prefix="bench-files-") as scratch:
        directory = Path(scratch)
        rows = measure(directory, options.rounds)
        where = f"{file_system(directory)} ({directory.parent})"
    if options.json:
        print(
            json.dumps(
                {
                    "benchmark": "files",
                    "where": where,
                    "rows": [
                        asdict(row)
                        | {
                            "ratio": row.ratio,
                            "ratio_to_plain_no_fsync": row.ratio_to_plain_no_fsync,
                        }
                        for row in rows
                    ],
                },
                indent=2,
            )
        )
    else:
        print(report(rows, where))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
