"""The demo's pool step: worker threads, transactions and stats, on SQLite or PostgreSQL."""

from __future__ import annotations

import re

import psycopg
import pytest

from tether._cli import main

POOL_STEP = [
    "5. A connection pool shared by worker threads, with transactions",
    "each sells 25 items, one transaction per sale",
    "200 transactions: 165 committed, 35 rolled back",
    "tea: 1000 in stock, 160 sold, 840 left (adds up)",
    "cake: 5 in stock, 5 sold, 0 left (adds up)",
    "0 in use now",
    "0 timeouts",
    "the pool closed with the step's scope",
    "Done: every resource opened above was released exactly once.",
]


def missing_in_order(output: str, expected: list[str]) -> list[str]:
    """The expected fragments that are missing from ``output`` or out of order."""
    missing, position = [], 0
    for fragment in expected:
        found = output.find(fragment, position)
        if found < 0:
            missing.append(fragment)
        else:
            position = found + len(fragment)
    return missing


def test_pool_step_on_sqlite(capsys: pytest.CaptureFixture[str]) -> None:
    """Eight threads on a pool of three SQLite connections: every committed sale is
    counted, every failed one rolled back, and the pool's stats are shown."""
    assert main(["demo"]) == 0
    out = capsys.readouterr().out
    assert missing_in_order(out, POOL_STEP) == []
    assert "share a pool of 3 connections to SQLite (shop.db, WAL mode)" in out
    made = re.search(r"pool stats: (\d+) connections made for (\d+) acquisitions", out)
    assert made is not None
    assert 1 <= int(made.group(1)) <= 3
    assert int(made.group(2)) == 202  # 200 sales, the setup and the final count


def test_pool_step_on_postgres(postgres_dsn: str, capsys: pytest.CaptureFixture[str]) -> None:
    """``tether demo --dsn URL`` runs the pool step on PostgreSQL and drops its tables."""
    assert main(["demo", "--dsn", postgres_dsn]) == 0
    out = capsys.readouterr().out
    assert "the pool step runs on PostgreSQL" in out
    assert missing_in_order(out, POOL_STEP) == []
    assert "share a pool of 3 connections to PostgreSQL" in out
    with psycopg.connect(postgres_dsn) as conn:
        rows = conn.execute(
            "SELECT count(*) FROM pg_tables WHERE tablename LIKE 'tether_demo_%'"
        ).fetchone()
    assert rows == (0,)


def test_help_describes_the_dsn_option(capsys: pytest.CaptureFixture[str]) -> None:
    """``tether demo --help`` documents ``--dsn``."""
    with pytest.raises(SystemExit) as caught:
        main(["demo", "--help"])
    assert caught.value.code == 0
    assert re.search(r"--dsn URL\s+run the pool step on this PostgreSQL", capsys.readouterr().out)
