"""The ``tether`` command."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from ._version import __version__


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``tether`` command with ``argv`` (default: ``sys.argv[1:]``)."""
    parser = argparse.ArgumentParser(prog="tether", description=__doc__)
    parser.add_argument("--version", action="version", version=f"tether {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("demo", help="a guided tour on an embedded SQLite database")
    parser.parse_args(argv)
    print("tether demo: under construction")
    return 0
