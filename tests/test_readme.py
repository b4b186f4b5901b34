"""The README's Python examples are valid, and run as written when they need no server.

Each runnable example runs in a fresh interpreter, in a directory of its own (several
write files next to themselves), and must exit cleanly; where its comments say what it
prints, that is checked too.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

README = Path(__file__).resolve().parent.parent / "README.md"

# Examples that talk to a database at an address of their own, or need FastAPI (which
# tether does not depend on): compiled, not run.
NOT_RUN = ("db.internal", "from fastapi import")

# What examples print, as their comments say, keyed by a line of the example.
PRINTS = {
    'with tether.Scope(name="job") as scope:': "cleaned up\n",
    'with tether.sqlite.pool("shop.db", max_size=4) as pool:': "2\n",
    "print(repr(ignored.suppressed))": "FileNotFoundError(2, 'No such file or directory')\n",
}


def _examples() -> list[tuple[int, str]]:
    """Every ```python block of the README, with the line it starts on."""
    text = README.read_text(encoding="utf-8")
    return [
        (text.count("\n", 0, match.start()) + 2, match.group(1))
        for match in re.finditer(r"^```python\n(.*?)^```", text, re.S | re.M)
    ]


EXAMPLES = _examples()
RUNNABLE = [(line, code) for line, code in EXAMPLES if not any(m in code for m in NOT_RUN)]


def test_the_readme_has_examples_and_only_the_known_ones_are_not_run() -> None:
    assert len(EXAMPLES) >= 10
    assert len(EXAMPLES) - len(RUNNABLE) == len(NOT_RUN)
    for marker in PRINTS:
        assert sum(marker in code for _, code in RUNNABLE) == 1, marker


@pytest.mark.parametrize(("line", "code"), EXAMPLES, ids=[f"line {n}" for n, _ in EXAMPLES])
def test_example_is_valid_python(line: int, code: str) -> None:
    compile(code, f"README.md, line {line}", "exec")


@pytest.mark.parametrize(("line", "code"), RUNNABLE, ids=[f"line {n}" for n, _ in RUNNABLE])
def test_example_runs_as_written(line: int, code: str, tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, f"README.md, line {line}:\n{result.stderr}"
    for marker, printed in PRINTS.items():
        if marker in code:
            assert result.stdout == printed
