"""``Context``: what one run's checks share. The configuration and its thresholds, the
connection to the postgres database (made once, by the first check that needs it), whether
the server is in recovery, and the run's deadline. Every check is a function
``check_<name>(ctx: Context) -> dict`` in its area's module (see checks.py).
"""

from __future__ import annotations

import contextlib

from pginfra_host.health import db
from pginfra_host.health.config import HealthConfig
from pginfra_host.health.db import connect, describe, query_one
from pginfra_host.health.result import UNKNOWN, result


class Context:
    """One run's shared state. ``conn`` is the connection to the postgres database, or None
    with ``down`` saying why PostgreSQL did not answer."""

    def __init__(self, cfg: HealthConfig, deadline: float | None = None):
        self.cfg, self.th = cfg, cfg.thresholds
        self.deadline = deadline  # time.monotonic() when run_timeout ends the run
        self.conn = None
        self.connected = False
        self.down: str | None = None
        self.server: dict = {}
        self.in_recovery: bool | None = None
        self.others: list = []  # connections to other databases, closed at the end

    def connect_main(self) -> None:
        self.connected = True
        if db.psycopg is None:
            self.down = "psycopg is not installed (apt-get install python3-psycopg)"
            return
        try:
            conn = connect(self.cfg)
        except Exception as exc:
            self.down = (f"cannot connect on port {self.cfg.port} in {self.cfg.socket_dir}: "
                         f"{describe(exc, self.cfg)}")
            return
        try:
            query_one(conn, "SELECT 1 AS answer")
            self.server = query_one(conn, """
                SELECT current_setting('server_version') AS version,
                       pg_catalog.pg_is_in_recovery() AS in_recovery,
                       extract(epoch FROM now() - pg_catalog.pg_postmaster_start_time())::float8
                           AS uptime_seconds,
                       pg_catalog.pg_postmaster_start_time() AS started""")
        except Exception as exc:
            with contextlib.suppress(Exception):
                conn.close()
            self.down = f"SELECT 1 failed: {describe(exc, self.cfg)}"
            return
        self.conn, self.in_recovery = conn, self.server["in_recovery"]

    def close(self) -> None:
        for conn in [self.conn, *self.others]:
            if conn is not None:
                with contextlib.suppress(Exception):
                    conn.close()

    def not_answering(self, name: str) -> dict:
        return result(name, UNKNOWN, f"PostgreSQL did not answer: {self.down}")
