"""PostgreSQL connection pools that survive outages: psycopg 3 and asyncpg.

::

    pool = tether.postgres.pool(dsn, max_size=10)                     # threads, psycopg
    apool = tether.postgres.async_pool(dsn, driver="asyncpg")         # asyncio
    apool = tether.postgres.async_pool(dsn, driver="psycopg")

Each is a :class:`tether.Pool` / :class:`tether.AsyncPool` with the database parts
filled in. Needs the extra of its driver: ``pip install 'tether[postgres]'`` (psycopg) or
``pip install 'tether[asyncpg]'``; the driver is imported when a pool is made.

Connections are made in autocommit mode: a statement outside a transaction commits by
itself, and :func:`tether.db.transaction` begins, commits and rolls back explicitly.

Returning a connection costs no round trip when it is clean. Whether it needs work is
read from the driver's local state: a transaction left open (or failed) is rolled back;
a connection that is closed, or whose state is unknown (a query still running, for a
task that shielded it from the holder's cancellation, say), is destroyed: a query still
running is cancelled first. Session settings changed with ``SET`` are not reset.

Borrowing a connection costs no round trip either when it was used within the last
``check_after`` seconds (1 by default). An older one is checked first with a real round
trip, and replaced transparently if the check fails.

When the server goes away:

* A query on a lost connection fails with the driver's own error (psycopg
  ``OperationalError``, asyncpg ``ConnectionDoesNotExistError`` and the like), and the
  connection is destroyed rather than returned.
* Every connection that was around before that failure becomes suspect: it is checked
  before it is handed out again, whatever its age, and replaced if the check fails. A
  connection that went idle less than ``check_after`` seconds before the server vanished,
  and is borrowed before any failure has been seen, is the one case where a caller can
  get a dead connection: its first query fails, as above.
* A caller that needs a new connection while the server refuses them gets the real
  error (with a note naming the pool) the first time, then
  :class:`tether.PoolUnavailable` (``__cause__`` is that error) at once, instead of
  waiting out ``acquire_timeout``.
* The pool tries again with capped exponential backoff (``retry_delay``, 0.1 s doubling
  up to 5 s), for as long as it is open: in the background to keep ``min_size``
  connections, and through the first caller after each delay while callers keep asking.
  It serves again as soon as the server answers.

``connect_timeout`` bounds each attempt to connect (and, in async pools, each check and
each rollback on return). It defaults to the pool's ``acquire_timeout``, or 10 s when
that is ``None`` or infinite; it must be finite itself. psycopg counts whole seconds, 2
at least.

``pgbouncer=True`` is for PgBouncer in transaction (or statement) pooling mode, where a
server connection is shared between transactions: it turns off server-side prepared
statements (psycopg ``prepare_threshold=None``, asyncpg ``statement_cache_size=0``).
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, Final, Literal, Unpack, overload
from urllib.parse import parse_qs, unquote, urlsplit

from ._pool_core import non_negative, timeout_or_none
from ._pool_options import PoolOptions, pool_options

if TYPE_CHECKING:
    import asyncpg
    import psycopg
    from psycopg.rows import TupleRow

    from ._async_pool import AsyncPool
    from ._pool import Pool

__all__ = ["async_pool", "pool"]

Driver = Literal["asyncpg", "psycopg"]
DEFAULT_CONNECT_TIMEOUT: Final = 10.0
"""Seconds a connection attempt may take when the pool's ``acquire_timeout`` is ``None``."""


def pool(
    dsn: str,
    *,
    pgbouncer: bool = False,
    connect_timeout: float | None = None,
    configure: Callable[[psycopg.Connection[TupleRow]], object] | None = None,
    connect_args: Mapping[str, object] | None = None,
    **pool_options_: Unpack[PoolOptions],
) -> Pool[psycopg.Connection[TupleRow]]:
    """A thread-safe pool of psycopg 3 connections to ``dsn``.

    Args:
        dsn: a libpq connection string (``"postgresql://user@host:5432/db"`` or
            ``"host=... dbname=..."``).
        pgbouncer: the server is behind PgBouncer in transaction pooling mode: turn off
            server-side prepared statements.
        connect_timeout: seconds each connection attempt may take (see the module
            documentation for the default).
        configure: called with each new connection before it is used.
        connect_args: more keyword arguments for ``psycopg.Connection.connect``; they
            override tether's (``autocommit=True``, ``connect_timeout``, and
            ``prepare_threshold`` with ``pgbouncer``).
        **pool_options_: options of :class:`tether.Pool` (``max_size``,
            ``acquire_timeout``, ``check_after``, ...). The name defaults to
            ``"postgres user@host:port/dbname"``.

    Returns:
        The pool, not yet open.

    Raises:
        ImportError: psycopg is not installed (``pip install 'tether[postgres]'``).
        ValueError: ``dsn`` is malformed, or an option is out of range.
        TypeError: an argument has the wrong type, or an option is unknown.
    """
    try:
        from . import _pg_psycopg  # noqa: PLC0415 - the extra is optional
    except ImportError as exc:
        raise ImportError(
            "tether.postgres.pool() needs psycopg 3: pip install 'tether[postgres]'"
        ) from exc
    _, timeout = _prepare(
        "pool",
        _libpq_parts,
        dsn,
        pgbouncer,
        connect_timeout,
        configure,
        connect_args,
        pool_options_,
    )
    return _pg_psycopg.sync_pool(
        dsn,
        connect_timeout=timeout,
        pgbouncer=pgbouncer,
        configure=configure,
        connect_args=connect_args,
        options=pool_options_,
    )


@overload
def async_pool(
    dsn: str,
    *,
    driver: Literal["asyncpg"] = "asyncpg",
    pgbouncer: bool = False,
    connect_timeout: float | None = None,
    configure: Callable[[asyncpg.Connection], object] | None = None,
    connect_args: Mapping[str, object] | None = None,
    **pool_options_: Unpack[PoolOptions],
) -> AsyncPool[asyncpg.Connection]: ...
@overload
def async_pool(
    dsn: str,
    *,
    driver: Literal["psycopg"],
    pgbouncer: bool = False,
    connect_timeout: float | None = None,
    configure: Callable[[psycopg.AsyncConnection[TupleRow]], object] | None = None,
    connect_args: Mapping[str, object] | None = None,
    **pool_options_: Unpack[PoolOptions],
) -> AsyncPool[psycopg.AsyncConnection[TupleRow]]: ...
def async_pool(
    dsn: str,
    *,
    driver: Driver = "asyncpg",
    pgbouncer: bool = False,
    connect_timeout: float | None = None,
    configure: Callable[[Any], object] | None = None,
    connect_args: Mapping[str, object] | None = None,
    **pool_options_: Unpack[PoolOptions],
) -> AsyncPool[Any]:
    """An asyncio pool of PostgreSQL connections to ``dsn``, through asyncpg or psycopg.

    Args:
        dsn: a ``postgresql://`` URL (asyncpg takes URLs only; psycopg also takes
            ``"key=value"`` strings). With asyncpg, ``host``, ``port``, ``user`` and
            ``dbname`` query parameters count only where the URL itself leaves them out.
        driver: ``"asyncpg"`` (the default; ``tether[asyncpg]``) or ``"psycopg"``
            (``tether[postgres]``).
        pgbouncer: the server is behind PgBouncer in transaction pooling mode: turn off
            server-side prepared statements.
        connect_timeout: seconds each connection attempt, check or rollback may take
            (see the module documentation for the default).
        configure: called (and awaited, if it returns an awaitable) with each new
            connection before it is used.
        connect_args: more keyword arguments for ``asyncpg.connect`` or
            ``psycopg.AsyncConnection.connect``; they override tether's.
        **pool_options_: options of :class:`tether.AsyncPool`. The name defaults to
            ``"postgres user@host:port/dbname"``.

    Returns:
        The pool, not yet open: ``async with pool: ...``.

    Raises:
        ImportError: the driver is not installed (the message names the extra).
        ValueError: ``driver`` or ``dsn`` is not valid, or an option is out of range.
        TypeError: an argument has the wrong type, or an option is unknown.
    """
    if driver == "asyncpg":
        try:
            from . import _pg_asyncpg  # noqa: PLC0415 - the extra is optional
        except ImportError as exc:
            raise ImportError(
                "tether.postgres.async_pool(driver='asyncpg') needs asyncpg: "
                "pip install 'tether[asyncpg]'"
            ) from exc
        description, timeout = _prepare(
            "async_pool",
            _url_parts,
            dsn,
            pgbouncer,
            connect_timeout,
            configure,
            connect_args,
            pool_options_,
        )
        return _pg_asyncpg.async_pool(
            dsn,
            connect_timeout=timeout,
            pgbouncer=pgbouncer,
            configure=configure,
            connect_args=connect_args,
            description=description,
            options=pool_options_,
        )
    if driver == "psycopg":
        try:
            from . import _pg_psycopg  # noqa: PLC0415 - the extra is optional
        except ImportError as exc:
            raise ImportError(
                "tether.postgres.async_pool(driver='psycopg') needs psycopg 3: "
                "pip install 'tether[postgres]'"
            ) from exc
        _, timeout = _prepare(
            "async_pool",
            _libpq_parts,
            dsn,
            pgbouncer,
            connect_timeout,
            configure,
            connect_args,
            pool_options_,
        )
        return _pg_psycopg.async_pool(
            dsn,
            connect_timeout=timeout,
            pgbouncer=pgbouncer,
            configure=configure,
            connect_args=connect_args,
            options=pool_options_,
        )
    raise ValueError(f"driver must be 'asyncpg' or 'psycopg', got {driver!r}")


# ---------------------------------------------------------------------------- checks


def _prepare(  # noqa: PLR0917 - one internal call site per public function
    function: str,
    parse: Callable[[object, str | None], dict[str, str]],
    dsn: object,
    pgbouncer: object,
    connect_timeout: float | None,
    configure: object,
    connect_args: Mapping[str, object] | None,
    options: PoolOptions,
) -> tuple[str, float]:
    """Check what every pool function takes; name the pool after the server if unnamed.

    Returns:
        The description of the server (``"postgres user@host:port/dbname"``) and the
        bound of one connection attempt.
    """
    pool_options(f"{__name__}.{function}", options)
    description = _describe(parse(dsn, options.get("name")))
    timeout = _connect_timeout(connect_timeout, options)
    _check_common(pgbouncer, configure, connect_args)
    if options.get("name") is None:
        options["name"] = description
    return description, timeout


def _check_common(
    pgbouncer: object, configure: object, connect_args: Mapping[str, object] | None
) -> None:
    if not isinstance(pgbouncer, bool):
        raise TypeError(f"pgbouncer must be a bool, not {type(pgbouncer).__name__}")
    if configure is not None and not callable(configure):
        raise TypeError(f"configure must be callable, got {configure!r}")
    if connect_args is not None and not isinstance(connect_args, Mapping):
        raise TypeError(f"connect_args must be a mapping, not {type(connect_args).__name__}")


def _connect_timeout(connect_timeout: float | None, options: PoolOptions) -> float:
    """The bound of one connection attempt: given, else the pool's ``acquire_timeout``.

    An ``acquire_timeout`` of ``None``, 0 or infinity says nothing about how long a server
    may take to answer: the default applies. An infinite ``connect_timeout`` is refused
    rather than read as "no limit": every check and rollback on return is bounded by it,
    and a connection that never answers would then hold its room in the pool forever.
    """
    if connect_timeout is not None:
        seconds = non_negative("connect_timeout", connect_timeout)
        if seconds == 0:
            raise ValueError("connect_timeout must be positive, got 0")
        if not math.isfinite(seconds):
            raise ValueError(f"connect_timeout must be a finite number of seconds, got {seconds}")
        return seconds
    acquire_timeout = timeout_or_none("acquire_timeout", options.get("acquire_timeout", 30.0))
    if not acquire_timeout or not math.isfinite(acquire_timeout):
        return DEFAULT_CONNECT_TIMEOUT
    return acquire_timeout


def _invalid_dsn(name: str | None, problem: str) -> ValueError:
    prefix = "dsn" if name is None else f"pool {name!r}: dsn"
    return ValueError(f"{prefix} is not a valid PostgreSQL connection string: {problem}")


def _libpq_parts(dsn: object, name: str | None) -> dict[str, str]:
    """The parts of a libpq connection string, parsed as libpq will parse it."""
    if not isinstance(dsn, str):
        raise TypeError(f"dsn must be a str, not {type(dsn).__name__}")
    import psycopg  # noqa: PLC0415 - already imported by the caller's driver module
    from psycopg.conninfo import conninfo_to_dict  # noqa: PLC0415 - same

    try:
        given = conninfo_to_dict(dsn)
    except psycopg.ProgrammingError as exc:
        raise _invalid_dsn(name, str(exc).strip()) from exc
    parts = {key: str(value) for key, value in given.items() if value is not None}
    problem = _port_problem(parts)
    if problem is not None:
        raise _invalid_dsn(name, problem)
    return parts


def _port_problem(parts: Mapping[str, str]) -> str | None:
    """What libpq would refuse in the ports only when connecting (its parser lets them
    through): a port that is not a number from 1 to 65535, or a list of ports that does
    not match the list of hosts.

    The hosts are those libpq will use: the DSN's, else ``PGHOSTADDR`` / ``PGHOST`` from
    the environment (libpq fills in each key the DSN leaves out). A service file may name
    them too: then they are unknown here, and the count is left to libpq.
    """
    if "port" not in parts:
        return None
    ports = [port.strip() for port in parts["port"].split(",")]
    for port in ports:
        if not _valid_port(port):
            return _invalid_port(port)
    if len(ports) == 1 or "service" in parts or "PGSERVICE" in os.environ:
        return None
    hosts = (_libpq_setting(parts, "hostaddr") or _libpq_setting(parts, "host")).split(",")
    if len(ports) != len(hosts):
        return f"{len(ports)} ports given for {len(hosts)} hosts"
    return None


def _libpq_setting(parts: Mapping[str, str], key: str) -> str:
    """A connection setting as libpq reads it: from the DSN, else from its ``PG...``
    environment variable (an empty value in the DSN still counts as given)."""
    if key in parts:
        return parts[key]
    return os.environ.get(f"PG{key.upper()}", "")


def _valid_port(port: str) -> bool:
    """A port number from 1 to 65535, or nothing (the default port)."""
    return not port or (port.isascii() and port.isdigit() and 0 < int(port) < 65536)


def _invalid_port(port: str) -> str:
    return f"invalid port {port!r}: a number from 1 to 65535 is needed"


def _url_parts(dsn: object, name: str | None) -> dict[str, str]:
    """The parts of a ``postgresql://`` URL, checked as asyncpg will check them.

    asyncpg reads the hosts from the URL's network location (one or several:
    ``h1:5432,h2:5433``, each with its own port or none), and only when it names none from
    the ``host`` and ``port`` query parameters; likewise ``user``, and ``dbname`` (or
    ``database``) when the path gives none. It parses the query strictly: every field
    needs an ``=``. What it would refuse only when connecting (an empty host in a list, a
    port that is not a number, more ports than hosts) is refused here, so that a typo is
    a ``ValueError`` when the pool is made rather than an outage at the first acquire.
    Ports are held to 1-65535 and an IPv6 address to nothing but a port after its ``]``,
    which asyncpg does not check.
    """
    if not isinstance(dsn, str):
        raise TypeError(f"dsn must be a str, not {type(dsn).__name__}")
    try:
        url = urlsplit(dsn)
    except ValueError as exc:
        raise _invalid_dsn(name, str(exc)) from exc
    if url.scheme not in ("postgresql", "postgres"):
        raise _invalid_dsn(
            name, f"asyncpg needs a postgresql:// URL, got scheme {url.scheme or 'none'!r}"
        )
    try:
        # The last value of a repeated parameter wins, as in asyncpg.
        query = (
            {key: values[-1] for key, values in parse_qs(url.query, strict_parsing=True).items()}
            if url.query
            else {}
        )
    except ValueError as exc:
        raise _invalid_dsn(name, f"{exc} in the query string") from exc
    userinfo, at, hostlist = url.netloc.partition("@")
    if not at:
        userinfo, hostlist = "", url.netloc
    if hostlist:
        # asyncpg ignores the query's host and port then, without reading them.
        hosts, ports = _url_hosts(name, hostlist, [], percent_encoded=True)
    else:
        ports = [port.strip() for port in query["port"].split(",")] if "port" in query else []
        for port in ports:
            if not port or not _valid_port(port):
                raise _invalid_dsn(name, _invalid_port(port))
        if "host" in query:
            hosts, ports = _url_hosts(name, query["host"], ports, percent_encoded=False)
        else:
            # The hosts come from PGHOST, or are asyncpg's defaults: none of the DSN's
            # business, but a list of ports must still match PGHOST's list.
            hosts = []
            from_environment = os.environ.get("PGHOST", "").split(",")
            if "PGHOST" in os.environ and len(ports) > 1 and len(ports) != len(from_environment):
                raise _invalid_dsn(
                    name, f"{len(ports)} ports given for {len(from_environment)} hosts (PGHOST)"
                )
    path = url.path[1:] if url.path.startswith("/") else url.path
    parts = {
        "user": unquote(userinfo.partition(":")[0]) or query.get("user", ""),
        "host": ",".join(hosts),
        "port": ",".join(ports) if any(ports) else "",
        "dbname": unquote(path) if url.path else query.get("dbname", query.get("database", "")),
    }
    return {key: value for key, value in parts.items() if value}


def _url_hosts(
    name: str | None, hostlist: str, ports: list[str], *, percent_encoded: bool
) -> tuple[list[str], list[str]]:
    """The hosts of an asyncpg host list, and their ports: ``ports`` (one for all hosts,
    or one each) if given, else each host's own (empty for none)."""
    if not hostlist:
        return [], ports
    specs = hostlist.split(",")
    if len(ports) > 1 and len(ports) != len(specs):
        raise _invalid_dsn(name, f"{len(ports)} ports given for {len(specs)} hosts")
    hosts: list[str] = []
    own_ports: list[str] = []
    for spec in specs:
        if not spec:
            raise _invalid_dsn(name, f"empty host in the host list {hostlist!r}")
        if spec.startswith("/"):  # a Unix socket directory, colons and all
            host, port = spec, ""
        elif spec.startswith("["):  # [IPv6 address], then perhaps :port
            address, bracket, rest = spec[1:].partition("]")
            if not bracket or (rest and not rest.startswith(":")):
                raise _invalid_dsn(name, f"invalid IPv6 address {spec!r}")
            host, port = address, rest[1:]
        else:
            host, _, port = spec.partition(":")
        if percent_encoded:
            host, port = unquote(host), unquote(port)
        if not ports and not _valid_port(port):
            raise _invalid_dsn(name, _invalid_port(port))
        hosts.append(host)
        own_ports.append(port)
    return hosts, ports or own_ports


def _describe(parts: Mapping[str, str]) -> str:
    """``"postgres user@host:port/dbname"``, with whatever the DSN gives (never a password)."""
    where = parts.get("host", "")
    if "port" in parts:
        where += f":{parts['port']}"
    if "user" in parts:
        where = f"{parts['user']}@{where}"
    if "dbname" in parts:
        where += f"/{parts['dbname']}"
    return f"postgres {where}" if where else "postgres"
