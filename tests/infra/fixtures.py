"""pytest fixtures for fault tests: a TCP proxy, a private PostgreSQL, PgBouncer.

Registered from ``tests/conftest.py``. A missing program skips the test and says what to
install, or fails it under ``TETHER_REQUIRE_SERVICES=1`` (``service_unavailable``).

- ``tcp_proxy``: a factory, ``tcp_proxy(host, port) -> TcpProxy`` (started; stopped after
  the test).
- ``private_postgres``: a ``PrivatePostgres`` of the test's own, started; stop, kill and
  restart it freely. Each test gets a fresh one (a copy of a session-wide ``initdb``).
- ``pgbouncer``: a ``PgBouncer`` in transaction mode in front of that same
  ``private_postgres``; ``pgbouncer_dsn`` is its URL for database ``postgres``.
- ``proxied_dsn(dsn, proxy)``: the same DSN, pointed at the proxy.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from conftest import service_unavailable

from .pgbouncer import PgBouncer, find_pgbouncer
from .pgserver import PostgresBinaries, PostgresTemplate, PrivatePostgres
from .processes import ToolMissing, server_user
from .proxy import TcpProxy

ProxyFactory = Callable[[str, int], TcpProxy]


def proxied_dsn(dsn: str, proxy: TcpProxy) -> str:
    """``dsn`` with its host and port replaced by ``proxy``'s (other parameters kept)."""
    from psycopg.conninfo import make_conninfo

    return make_conninfo(dsn, host=proxy.host, port=str(proxy.port))


@pytest.fixture
def tcp_proxy() -> Iterator[ProxyFactory]:
    """Make started ``TcpProxy`` objects; every one is stopped after the test."""
    proxies: list[TcpProxy] = []

    def make(target_host: str, target_port: int) -> TcpProxy:
        proxy = TcpProxy(target_host, target_port).start()
        proxies.append(proxy)
        return proxy

    yield make
    failures: list[BaseException] = []
    for proxy in proxies:
        try:
            proxy.stop()
        except RuntimeError as exc:  # the loop failed: report it, after stopping the rest
            failures.append(exc)
    if failures:
        raise failures[0]


@pytest.fixture(scope="session")
def postgres_binaries() -> PostgresBinaries:
    """The PostgreSQL server programs, and an account to run them as."""
    try:
        server_user()
        return PostgresBinaries.find()
    except ToolMissing as exc:
        service_unavailable(str(exc))
        raise  # pragma: no cover - service_unavailable always raises


@pytest.fixture(scope="session")
def postgres_template(postgres_binaries: PostgresBinaries) -> Iterator[PostgresTemplate]:
    """One ``initdb`` for the whole session; every private server starts from a copy."""
    with PostgresTemplate(postgres_binaries) as template:
        yield template


@pytest.fixture
def private_postgres(postgres_template: PostgresTemplate) -> Iterator[PrivatePostgres]:
    """A started PostgreSQL server of the test's own (never the shared one on 5432)."""
    with PrivatePostgres(template=postgres_template) as server:
        yield server


@pytest.fixture(scope="session")
def pgbouncer_binary() -> Path:
    """The ``pgbouncer`` program."""
    try:
        server_user()
        return find_pgbouncer()
    except ToolMissing as exc:
        service_unavailable(str(exc))
        raise  # pragma: no cover - service_unavailable always raises


@pytest.fixture
def pgbouncer(pgbouncer_binary: Path, private_postgres: PrivatePostgres) -> Iterator[PgBouncer]:
    """PgBouncer in transaction-pooling mode in front of the test's ``private_postgres``."""
    server = private_postgres
    with PgBouncer(server.host, server.port, binary=pgbouncer_binary) as bouncer:
        yield bouncer


@pytest.fixture
def pgbouncer_dsn(pgbouncer: PgBouncer) -> str:
    """A URL for database ``postgres`` through the test's ``pgbouncer``."""
    return pgbouncer.dsn("postgres")
