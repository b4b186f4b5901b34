"""The package's foundations: call-site capture, the error tree, the command's entry points."""

from __future__ import annotations

import os
import runpy
import sys
from pathlib import Path

import pytest

import tether
from tether import CleanupError, TetherError
from tether._cli import main
from tether._sites import UNKNOWN_SITE, Site, user_site

TETHER_DIR = Path(tether.__file__).parent


def _inside_tether(source: str) -> dict[str, object]:
    """Run ``source`` as if it were a module of tether (its frames carry tether's path)."""
    namespace: dict[str, object] = {"user_site": user_site}
    exec(compile(source, str(TETHER_DIR / "_wrapper_for_tests.py"), "exec"), namespace)  # noqa: S102
    return namespace


def test_user_site_names_the_callers_line() -> None:
    """A function calling ``user_site()`` learns the file and line it was called from."""

    def acquire() -> Site:
        return user_site()

    expected_line = sys._getframe().f_lineno + 1
    site = acquire()
    assert Site(__file__, expected_line) == site


def test_user_site_skips_frames_inside_tether() -> None:
    """Frames in tether's own files are skipped, so the site is always in user code."""
    wrapper = _inside_tether("def wrapper():\n    return user_site(0)\n")["wrapper"]
    expected_line = sys._getframe().f_lineno + 1
    site = wrapper()  # type: ignore[operator]
    assert Site(__file__, expected_line) == site


def test_user_site_beyond_the_stack_is_unknown() -> None:
    """Asking for more frames than the stack holds gives the unknown site, not an error."""
    assert user_site(depth=100_000) == UNKNOWN_SITE
    assert str(UNKNOWN_SITE) == "<unknown>:0"


def test_site_is_shown_relative_to_the_working_directory_when_below_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``str(site)`` is ``path:line``, relative to the working directory when it can be."""
    monkeypatch.chdir(tmp_path)
    inside = Site(str(tmp_path / "app" / "jobs.py"), 12)
    outside = Site(os.path.join(os.sep, "elsewhere", "jobs.py"), 7)
    assert (os.path.join("app", "jobs.py") + ":12", outside.filename + ":7") == (
        str(inside),
        str(outside),
    )


def test_cleanup_error_of_exceptions_is_an_exception_group_and_a_tether_error() -> None:
    """With only ``Exception`` members the group is caught by ``except TetherError``."""
    group = CleanupError("scope 'job': 2 cleanups failed", [ValueError("a"), KeyError("b")])
    assert (
        isinstance(group, ExceptionGroup),
        isinstance(group, TetherError),
        isinstance(group, CleanupError),
    ) == (True, True, True)
    matched, rest = group.split(ValueError)  # split keeps the group's own kind
    assert matched is not None
    assert rest is not None
    assert (
        [type(matched), type(rest)],
        [str(error) for error in matched.exceptions],
        matched.message,
    ) == ([type(group), type(group)], ["a"], "scope 'job': 2 cleanups failed")


def test_cleanup_error_holding_a_base_exception_is_only_a_base_exception_group() -> None:
    """A ``KeyboardInterrupt`` member keeps the group out of ``except Exception``."""
    group = CleanupError("scope 'job'", [ValueError("a"), KeyboardInterrupt()])
    assert (
        isinstance(group, BaseExceptionGroup),
        isinstance(group, Exception),
    ) == (True, False)


def test_version_option(capsys: pytest.CaptureFixture[str]) -> None:
    """``tether --version`` prints the version and exits successfully."""
    with pytest.raises(SystemExit) as exited:
        main(["--version"])
    assert (0, f"tether {tether.__version__}") == (
        exited.value.code,
        capsys.readouterr().out.strip(),
    )


def test_python_dash_m_runs_the_command(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """``python -m tether`` is the ``tether`` command; a missing command is a usage error."""
    monkeypatch.setattr(sys, "argv", ["tether"])
    with pytest.raises(SystemExit) as exited:
        runpy.run_module("tether", run_name="__main__")
    assert exited.value.code == 2
    assert "usage: tether" in capsys.readouterr().err
