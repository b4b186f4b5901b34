"""The ``tether`` command: --version, --help, and the demo (in process and as a program)."""

from __future__ import annotations

import logging
import os
import re
import runpy
import subprocess
import sys
from pathlib import Path

import pytest

from tether import __version__
from tether._cli import BENCHMARKS, main, run_bench
from tether._demo import STEPS, Step, Tour

KEY_LINES = [
    "tether demo: deterministic cleanup, shown on a real SQLite database",
    "1. A scope closes everything, last in first out",
    "ran the callback registered last: 'goodbye'",
    "closed orders.csv (its data is now on disk)",
    "closed the connection",
    "the error that came out is the body's own: IntegrityError: UNIQUE constraint failed",
    "the cleanup's failure is attached to it, not lost: ConnectionError",
    "cleanup 'upload audit log' of scope 'import' also failed",
    "rolled back: still 3 orders, no order 4.",
    "log: insert 2,000 orders: ok in",
    "log: top customers: ok in",
    "under its 1 s threshold, so it was not logged",
    "log: suppressed FileNotFoundError",
    "the source was closed (rows) and the outcome is completed",
    "wrote totals.csv in one piece from the accumulated content",
    "a second write failed: [Errno 28] No space left on device (simulated)",
    "totals.csv still holds the first report: yes; temporary files left behind: 0",
    "the consumer found what it wanted after 3 rows and stopped",
    "the source closed",
    "on_complete saw closed after 3",
    "The demo's own scope removed the temporary directory: yes.",
]


def lines_in_order(output: str, expected: list[str]) -> list[str]:
    """The expected fragments that are missing from ``output`` or out of order."""
    missing = []
    position = 0
    for fragment in expected:
        found = output.find(fragment, position)
        if found < 0:
            missing.append(fragment)
        else:
            position = found + len(fragment)
    return missing


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    """``tether --version`` prints the version and exits 0."""
    with pytest.raises(SystemExit) as caught:
        main(["--version"])
    assert caught.value.code == 0
    assert capsys.readouterr().out == f"tether {__version__}\n"


def test_python_dash_m_tether_runs_the_command(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """``python -m tether`` is the same command, with its exit status."""
    monkeypatch.setattr(sys, "argv", ["tether", "--version"])
    with pytest.raises(SystemExit) as caught:
        runpy.run_module("tether", run_name="__main__")
    assert caught.value.code == 0
    assert capsys.readouterr().out == f"tether {__version__}\n"


def test_help_lists_the_demo(capsys: pytest.CaptureFixture[str]) -> None:
    """``tether --help`` describes the command and lists ``demo``; exit status 0."""
    with pytest.raises(SystemExit) as caught:
        main(["--help"])
    assert caught.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: tether")
    assert re.search(r"demo\s+a guided tour on an embedded SQLite database", out)


def test_a_command_is_required(capsys: pytest.CaptureFixture[str]) -> None:
    """Without a command, usage goes to stderr and the exit status is 2."""
    with pytest.raises(SystemExit) as caught:
        main([])
    assert caught.value.code == 2
    assert "required: COMMAND" in capsys.readouterr().err


def test_demo_in_process_tells_the_story_and_cleans_up(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The demo prints each step's key lines in order, exits 0, and leaves nothing behind."""
    assert main(["demo"]) == 0
    out = capsys.readouterr().out
    assert lines_in_order(out, KEY_LINES) == []
    workdir = re.search(r"working in a temporary directory: (.+)", out)
    assert workdir is not None
    assert not Path(workdir.group(1)).exists()
    logger = logging.getLogger("tether.demo")
    assert (logger.handlers, logger.propagate, logger.level) == ([], True, logging.NOTSET)


def test_demo_steps_are_a_list_new_capabilities_extend(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A step appended to ``STEPS`` is numbered and run with the shared tour."""
    seen: list[Path] = []

    def extra(tour: Tour) -> None:
        seen.append(tour.database)
        tour.say("the extra step ran")

    monkeypatch.setattr("tether._demo.STEPS", [*STEPS, Step("An extra step", extra)])
    assert main(["demo"]) == 0
    out = capsys.readouterr().out
    assert f"{len(STEPS) + 1}. An extra step\n   the extra step ran\n" in out
    assert [path.name for path in seen] == ["shop.db"]


def test_demo_as_a_program_with_warnings_as_errors() -> None:
    """``python -m tether demo`` succeeds with warnings as errors and prints the tour."""
    result = subprocess.run(
        [sys.executable, "-W", "error", "-X", "dev", "-m", "tether", "demo"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert (result.returncode, result.stderr) == (0, "")
    assert lines_in_order(result.stdout, KEY_LINES) == []


@pytest.mark.parametrize("dsn", ["not a dsn", "postgresql://nobody@127.0.0.1:1/nothing"])
def test_demo_with_an_unusable_dsn_is_a_one_line_error(
    dsn: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """A malformed or unreachable ``--dsn`` is a bad argument: before the tour starts, one
    ``tether: error:`` line saying why, and status 2, as argparse reports bad arguments."""
    assert main(["demo", "--dsn", dsn]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith("tether: error: cannot use the database given with --dsn: ")
    assert len(captured.err.splitlines()) == 1


@pytest.mark.parametrize("buffered", [True, False], ids=["buffered", "unbuffered"])
def test_demo_into_a_pipe_whose_reader_is_gone_ends_quietly(buffered: bool) -> None:
    """``tether demo | head -1``: once the reader has gone, the command ends with status 1
    and nothing on stderr, as the Python documentation advises for a broken pipe. With
    buffered output the first failing write is a log record's, which logging would
    otherwise report and carry on from."""
    environment = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}
    if not buffered:
        environment["PYTHONUNBUFFERED"] = "1"
    read_end, write_end = os.pipe()
    os.close(read_end)  # every write fails with EPIPE, whenever it happens
    try:
        result = subprocess.run(
            [sys.executable, "-W", "error", "-m", "tether", "demo"],
            stdout=write_end,
            stderr=subprocess.PIPE,
            env=environment,
            text=True,
            timeout=60,
            check=False,
        )
    finally:
        os.close(write_end)
    assert (result.returncode, result.stderr) == (1, "")


def test_bench_lists_the_benchmarks_of_the_checkout(capsys: pytest.CaptureFixture[str]) -> None:
    """``tether bench --list`` names every benchmarks/bench_*.py of the source checkout."""
    assert main(["bench", "--list"]) == 0
    names = [line.split()[0] for line in capsys.readouterr().out.splitlines()]
    assert names == sorted(p.stem.removeprefix("bench_") for p in BENCHMARKS.glob("bench_*.py"))
    assert "pool" in names


def test_bench_runs_the_chosen_ones_and_reports_failures(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    """Each chosen benchmark runs in its own interpreter; a failing one makes the status 1."""
    (tmp_path / "bench_fine.py").write_text("print('fine ran')\n", encoding="utf-8")
    (tmp_path / "bench_broken.py").write_text("raise SystemExit(3)\n", encoding="utf-8")
    assert run_bench(["fine"], list_only=False, directory=tmp_path) == 0
    assert "fine ran" in capfd.readouterr().out
    assert run_bench([], list_only=False, directory=tmp_path) == 1
    assert "failed: broken" in capfd.readouterr().err


def test_bench_gives_the_options_after_dashes_to_the_benchmark(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """``tether bench NAME -- OPTIONS`` runs that benchmark with its own options; options
    with several (or no) names are refused, since each benchmark has its own."""
    (tmp_path / "bench_echo.py").write_text(
        "import sys\nprint('got', sys.argv[1:])\n", encoding="utf-8"
    )
    (tmp_path / "bench_other.py").write_text("print('other ran')\n", encoding="utf-8")
    runs: list[list[str]] = []
    real_run = subprocess.run

    def recording_run(command: list[str], **kwargs: object) -> object:
        runs.append(command[2:])
        return real_run(command, **kwargs)  # type: ignore[call-overload]

    monkeypatch.setattr("tether._cli.subprocess.run", recording_run)
    assert run_bench(["echo"], list_only=False, options=["--repeats", "9"], directory=tmp_path) == 0
    assert runs == [["--repeats", "9"]]

    for names in (["echo", "other"], []):
        assert run_bench(names, list_only=False, options=["--quick"], directory=tmp_path) == 2
    assert "are for one benchmark; name it" in capsys.readouterr().err
    assert len(runs) == 1  # nothing ran


def test_bench_command_line_splits_at_the_dashes(monkeypatch: pytest.MonkeyPatch) -> None:
    """On the command line, what follows ``--`` is the benchmark's, not tether's."""
    calls: list[tuple[list[str], list[str]]] = []

    def fake_run_bench(names: list[str], *, list_only: bool, options: list[str]) -> int:
        calls.append((list(names), list(options)))
        return 0

    monkeypatch.setattr("tether._cli.run_bench", fake_run_bench)
    assert main(["bench", "postgres", "--", "--repeats", "9", "--dsn", "postgresql://x/y"]) == 0
    assert main(["bench", "pool"]) == 0
    assert calls == [
        (["postgres"], ["--repeats", "9", "--dsn", "postgresql://x/y"]),
        (["pool"], []),
    ]


def test_bench_says_what_is_wrong(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """An unknown name, or an install without the benchmarks, is a clear error (status 2)."""
    assert main(["bench", "nope"]) == 2
    assert "no benchmark called nope; there are: " in capsys.readouterr().err
    assert run_bench([], list_only=False, directory=tmp_path / "missing") == 2
    assert "ship with tether's source repository" in capsys.readouterr().err
