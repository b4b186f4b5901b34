"""The service fixture layer works: one real round trip to each server."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest


def test_postgres_round_trip(postgres_dsn: str) -> None:
    """A value written to PostgreSQL in one connection is read back in another."""
    import psycopg

    table = f"tether_probe_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(postgres_dsn, autocommit=True) as conn:
        conn.execute(f"CREATE TABLE {table} (v text)")
        try:
            conn.execute(f"INSERT INTO {table} VALUES (%s)", ("hello",))
            with psycopg.connect(postgres_dsn) as other:
                row = other.execute(f"SELECT v FROM {table}").fetchone()
        finally:
            conn.execute(f"DROP TABLE {table}")
    assert row == ("hello",)


def test_redis_round_trip(redis_url: str) -> None:
    """A key set in Redis is read back, then deleted."""
    import redis

    key = f"tether:probe:{uuid.uuid4().hex}"
    client = redis.Redis.from_url(redis_url)
    try:
        client.set(key, b"hello", ex=60)
        assert client.get(key) == b"hello"
    finally:
        client.delete(key)
        client.close()


def test_missing_service_fails_when_required(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Under TETHER_REQUIRE_SERVICES=1 an unreachable server fails the test, not skips it."""
    pytester.makeconftest((Path(__file__).parent / "conftest.py").read_text(encoding="utf-8"))
    pytester.makepyfile("def test_needs_pg(postgres_dsn):\n    pass\n")
    monkeypatch.setenv("TETHER_TEST_POSTGRES_DSN", "postgresql://postgres@127.0.0.1:1/test")

    monkeypatch.setenv("TETHER_REQUIRE_SERVICES", "1")
    required = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-p", "no:cov")
    required.assert_outcomes(errors=1)
    required.stdout.fnmatch_lines(["*PostgreSQL is not reachable*TETHER_REQUIRE_SERVICES=1*"])

    monkeypatch.setenv("TETHER_REQUIRE_SERVICES", "0")
    optional = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-p", "no:cov", "-rs")
    optional.assert_outcomes(skipped=1)
    optional.stdout.fnmatch_lines(["*PostgreSQL is not reachable*"])
