"""The ``tether`` command (also ``python -m tether``).

``tether demo`` runs a guided tour on an embedded SQLite database; ``tether bench`` runs
the benchmarks of a source checkout (the "Benchmarks" section of the README), and
``tether bench NAME -- OPTIONS`` gives that benchmark its own options;
``tether --version`` and ``tether --help`` do what they say.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from ._demo import DatabaseUnusable, run_demo
from ._version import __version__

DESCRIPTION = (
    "tether makes resource lifetimes deterministic: every connection, file and stream "
    "is released exactly once, and what is not is reported."
)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``tether`` command."""
    parser = argparse.ArgumentParser(prog="tether", description=DESCRIPTION)
    parser.add_argument("--version", action="version", version=f"tether {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    demo = commands.add_parser(
        "demo",
        help="a guided tour on an embedded SQLite database",
        description="A guided tour of tether on a SQLite database in a temporary directory.",
    )
    demo.add_argument(
        "--dsn",
        metavar="URL",
        help="run the pool step on this PostgreSQL database instead (needs tether[postgres])",
    )
    bench = commands.add_parser(
        "bench",
        help="run the benchmarks of a source checkout",
        usage="tether bench [-h] [--list] [NAME ...] [-- OPTION ...]",
        description=(
            "Run tether's benchmarks (benchmarks/bench_*.py in a source checkout), each "
            "measuring tether side by side with its baseline in one run. Options after "
            "`--` go to the one benchmark named, e.g. "
            "`tether bench postgres -- --repeats 9 --dsn URL`."
        ),
    )
    bench.add_argument(
        "names", nargs="*", metavar="NAME", help="which ones, e.g. pool stream (default: all)"
    )
    bench.add_argument("--list", action="store_true", help="list them and exit")
    return parser


BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"
"""Where the benchmarks live in a source checkout (they are not installed)."""


def run_bench(
    names: Sequence[str],
    *,
    list_only: bool,
    options: Sequence[str] = (),
    directory: Path = BENCHMARKS,
) -> int:
    """Run the benchmarks called ``names`` (all when empty), one after the other.

    Args:
        names: which benchmarks (``pool`` for ``bench_pool.py``); none: all of them.
        list_only: only list them.
        options: command-line options for the benchmark; each script has its own, so
            they need exactly one name.
        directory: where the ``bench_*.py`` scripts are.

    Returns:
        0 when every one ran, 1 when one failed, 2 when there is nothing to run or the
        request makes no sense.
    """
    scripts = sorted(directory.glob("bench_*.py")) if directory.is_dir() else []
    if not scripts:
        print(
            "tether bench: no benchmarks here. They ship with tether's source repository: "
            "run `tether bench` from a checkout installed with `pip install -e .`.",
            file=sys.stderr,
        )
        return 2
    available = {script.stem.removeprefix("bench_"): script for script in scripts}
    if list_only:
        for name, script in available.items():
            print(f"{name:10} {script}")
        return 0
    unknown = [name for name in names if name not in available]
    if unknown:
        print(
            f"tether bench: no benchmark called {', '.join(unknown)}; "
            f"there are: {', '.join(available)}",
            file=sys.stderr,
        )
        return 2
    if options and len(names) != 1:
        print(
            f"tether bench: options after -- ({' '.join(options)}) are for one benchmark; "
            "name it, e.g. `tether bench postgres -- --repeats 9`",
            file=sys.stderr,
        )
        return 2
    failed = []
    for name in names or list(available):
        print(f"== {name} ==", flush=True)
        command = [sys.executable, str(available[name]), *options]
        result = subprocess.run(command, check=False)  # noqa: S603
        if result.returncode:
            failed.append(name)
    if failed:
        print(f"tether bench: failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``tether`` command with ``argv`` (default: ``sys.argv[1:]``).

    A reader of the output that goes away early (``tether demo | head -1``) ends the
    command quietly with status 1, as the Python documentation recommends for a broken
    pipe, rather than with a traceback.

    Returns:
        The exit status: 0 for success, 2 for a bad argument (``--dsn`` naming a database
        that cannot be used included, reported in one ``tether: error:`` line), 1 for
        anything else that failed.
    """
    try:
        try:
            return _run(argv)
        finally:
            # Flush now, so that a broken pipe shows up here rather than when Python
            # flushes stdout at exit and reports it as an ignored exception.
            sys.stdout.flush()
    except BrokenPipeError:
        _discard_stdout()
        return 1


def _run(argv: Sequence[str] | None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    options: list[str] = []
    if "bench" in argv and "--" in argv[argv.index("bench") :]:
        # What follows `--` is the benchmark's own options, not the command's.
        split = argv.index("--", argv.index("bench"))
        argv, options = argv[:split], argv[split + 1 :]
    args = build_parser().parse_args(argv)
    if args.command == "demo":
        try:
            return run_demo(sys.stdout, args.dsn)
        except DatabaseUnusable as error:
            # The URL is a bad argument: one line and status 2, as argparse reports those.
            print(f"tether: error: {error}", file=sys.stderr)
            return 2
    if args.command == "bench":
        return run_bench(args.names, list_only=args.list, options=options)
    raise AssertionError(f"unhandled command {args.command!r}")  # pragma: no cover


def _discard_stdout() -> None:
    """Point stdout at the null device once its reader has gone away.

    The output still buffered cannot be delivered, and Python flushes stdout at exit:
    that flush must not fail again.
    """
    try:
        fd = sys.stdout.fileno()
    except (AttributeError, OSError, ValueError):
        return  # not a real file (replaced by a test, say): nothing to redirect
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, fd)
    finally:
        os.close(devnull)
