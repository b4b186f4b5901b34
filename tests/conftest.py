"""Shared fixtures: real services on loopback, and how a missing one is handled.

Tests that need PostgreSQL or Redis take the ``postgres_dsn`` / ``redis_url`` fixtures.
On a developer's machine without the server they skip, saying why. With
``TETHER_REQUIRE_SERVICES=1`` (set by ``.ci/run``) a missing server or driver is a
failure instead: CI must never go green by skipping them.

Override the addresses with ``TETHER_TEST_POSTGRES_DSN`` and ``TETHER_TEST_REDIS_URL``.
"""

from __future__ import annotations

import inspect
import os
import socket
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

pytest_plugins = ["pytester"]

REQUIRE_SERVICES = os.environ.get("TETHER_REQUIRE_SERVICES", "") not in ("", "0")

POSTGRES_DSNS = (
    "postgresql://postgres@127.0.0.1:5432/test",
    "postgresql://root@127.0.0.1:5432/test",
    "postgresql://postgres@127.0.0.1:5432/postgres",
)
REDIS_URL = "redis://127.0.0.1:6379/0"


@pytest.hookimpl(tryfirst=True)
def pytest_pycollect_makeitem(collector: pytest.Collector, name: str, obj: object) -> None:
    """Run every ``async def`` test through anyio's pytest plugin (asyncio by default).

    A test that should also run on trio asks for it with
    ``@pytest.mark.parametrize("anyio_backend", ["asyncio", "trio"])``.
    """
    if collector.funcnamefilter(name) and inspect.iscoroutinefunction(obj):  # type: ignore[attr-defined]
        pytest.mark.anyio(obj)


@pytest.fixture
def anyio_backend() -> str:
    """Async tests run on asyncio unless they parametrize this fixture."""
    return "asyncio"


def service_unavailable(reason: str) -> None:
    """Skip the test, or fail it when services are required."""
    if REQUIRE_SERVICES:
        pytest.fail(f"{reason} (TETHER_REQUIRE_SERVICES=1, so this is a failure)", pytrace=False)
    pytest.skip(reason)


def _port_open(url: str, default_port: int) -> bool:
    parts = urlsplit(url)
    try:
        with socket.create_connection(
            (parts.hostname or "127.0.0.1", parts.port or default_port), timeout=2.0
        ):
            return True
    except OSError:
        return False


@pytest.fixture(scope="session")
def postgres_dsn() -> str:
    """A DSN for the shared PostgreSQL server (a role that can connect, database ``test``)."""
    try:
        import psycopg
    except ImportError:
        service_unavailable("psycopg is not installed: pip install -e '.[dev]'")
    override = os.environ.get("TETHER_TEST_POSTGRES_DSN")
    candidates = (override,) if override else POSTGRES_DSNS
    if not _port_open(candidates[0], 5432):
        service_unavailable(f"PostgreSQL is not reachable at {candidates[0]}")
    errors = []
    for dsn in candidates:
        try:
            with psycopg.connect(dsn, connect_timeout=5) as conn:
                conn.execute("SELECT 1")
        except psycopg.Error as exc:
            errors.append(f"{dsn}: {exc}".strip())
            continue
        return dsn
    service_unavailable("PostgreSQL refused every candidate DSN: " + "; ".join(errors))
    raise AssertionError("unreachable")  # pragma: no cover


@pytest.fixture(scope="session")
def redis_url() -> str:
    """A URL for the shared Redis server."""
    try:
        import redis
    except ImportError:
        service_unavailable("redis is not installed: pip install -e '.[dev]'")
    url = os.environ.get("TETHER_TEST_REDIS_URL", REDIS_URL)
    if not _port_open(url, 6379):
        service_unavailable(f"Redis is not reachable at {url}")
    try:
        client = redis.Redis.from_url(url, socket_timeout=5)
        client.ping()
        client.close()
    except redis.RedisError as exc:
        service_unavailable(f"Redis at {url} did not answer PING: {exc}")
    return url


@pytest.fixture(params=["threads", "asyncio", "asyncio-sync"])
async def flavour(request: pytest.FixtureRequest, anyio_backend: str) -> AsyncIterator[Any]:
    """Each pool shell in turn behind one async API (see ``pool_flavours``): ``Pool`` on
    threads, ``AsyncPool`` with async callables, ``AsyncPool`` with plain ones."""
    from pool_flavours import FLAVOURS

    chosen = FLAVOURS[request.param]()
    try:
        yield chosen
    finally:
        await chosen.aclose()


@pytest.fixture
def things() -> Any:
    """A fresh pool resource factory (``pool_flavours.Things``)."""
    from pool_flavours import Things

    return Things()


# -- Fault-test infrastructure (tests/infra) ----------------------------------------------
# A TCP proxy that cuts connections, a private PostgreSQL to stop and kill, and PgBouncer:
# the fixtures ``tcp_proxy``, ``private_postgres``, ``pgbouncer`` and ``pgbouncer_dsn`` live
# in tests/infra/fixtures.py. The check keeps this file usable on its own: some tests copy
# it, without the package, into a pytester sandbox.
if (Path(__file__).parent / "infra" / "fixtures.py").is_file():
    pytest_plugins.append("infra.fixtures")
