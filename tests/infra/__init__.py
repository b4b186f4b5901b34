"""Fault-injection infrastructure for tether's tests: real servers that can be broken on cue.

- ``proxy.TcpProxy``: a loopback TCP proxy that can cut, refuse or stall connections.
- ``pgserver.PrivatePostgres``: a throwaway PostgreSQL server that may be stopped, killed and
  restarted, on its own port, never the shared server.
- ``pgbouncer.PgBouncer``: PgBouncer in transaction-pooling mode in front of a server.
- ``fixtures``: the pytest fixtures built on them (registered from ``tests/conftest.py``).
"""
