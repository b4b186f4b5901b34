"""The ``tether`` command (also ``python -m tether``).

``tether demo`` runs a guided tour on an embedded SQLite database; ``tether --version``
and ``tether --help`` do what they say.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from ._demo import run_demo
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
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``tether`` command with ``argv`` (default: ``sys.argv[1:]``).

    Returns:
        The exit status.
    """
    args = build_parser().parse_args(argv)
    if args.command == "demo":
        return run_demo(sys.stdout, args.dsn)
    raise AssertionError(f"unhandled command {args.command!r}")  # pragma: no cover
