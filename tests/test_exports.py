"""tether's public face: every public name exported once, and no optional imports."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import tether

OPTIONAL_DEPENDENCIES = (
    "psycopg",
    "psycopg_pool",
    "asyncpg",
    "redis",
    "starlette",
    "anyio",
    "trio",
    "rich",
    "structlog",
    "httpx",
    "uvicorn",
    "sniffio",
    "opentelemetry",
    "prometheus_client",
)

INIT = Path(tether.__file__)


def test_all_names_are_unique_and_importable() -> None:
    """``tether.__all__`` lists each name once, and each one is an attribute of tether."""
    assert len(tether.__all__) == len(set(tether.__all__))
    missing = [name for name in tether.__all__ if not hasattr(tether, name)]
    assert missing == []


def test_all_is_sorted() -> None:
    """``__all__`` is kept sorted, so that a repeat or a gap is easy to see."""
    assert sorted(tether.__all__) == tether.__all__


def test_every_reexport_is_in_all_and_every_public_attribute_is_exported() -> None:
    """Each ``from ._x import Name as Name`` is in ``__all__``, and vice versa."""
    tree = ast.parse(INIT.read_text(encoding="utf-8"))
    reexported = [
        alias.asname
        for node in tree.body
        if isinstance(node, ast.ImportFrom)
        for alias in node.names
        if alias.asname
    ]
    assert sorted(reexported) == sorted(tether.__all__)
    public = {
        name
        for name in vars(tether)
        if not name.startswith("_") and not isinstance(getattr(tether, name), type(ast))
    }
    assert public <= set(tether.__all__)


def test_public_objects_say_they_come_from_tether() -> None:
    """Every exported class and function has a docstring."""
    undocumented = [
        name
        for name in tether.__all__
        if callable(getattr(tether, name)) and not (getattr(tether, name).__doc__ or "").strip()
    ]
    assert undocumented == []


def test_import_tether_imports_no_optional_dependency() -> None:
    """A fresh interpreter that imports tether has loaded none of the optional extras."""
    code = (
        "import json, sys\n"
        "import tether\n"
        f"names = {OPTIONAL_DEPENDENCIES!r}\n"
        "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in names)))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert json.loads(result.stdout) == []
