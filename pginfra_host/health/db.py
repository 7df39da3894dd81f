"""The checks' way into PostgreSQL: ``connect`` (Unix socket, peer authentication, autocommit,
read only, application_name pginfra-health, connect_timeout, statement_timeout and
lock_timeout from query_timeout), small query helpers, and ``describe``: an exception as a
check's "unknown" detail (the timeouts said as such).
"""

from __future__ import annotations

from pginfra_host.health.config import HealthConfig
from pginfra_host.health.result import num, one_line

try:
    import psycopg
    from psycopg import errors as pg_errors
    from psycopg.rows import dict_row
except ImportError:  # the postgres check reports it
    psycopg = pg_errors = dict_row = None

APPLICATION_NAME = "pginfra-health"


def describe(exc: BaseException, cfg: HealthConfig) -> str:
    """An exception as a check's unknown detail."""
    qt = num(cfg.query_timeout)
    if psycopg is not None and isinstance(exc, psycopg.Error):
        # The timeouts also cut the start of a session short (a FATAL at connection time).
        text = str(exc)
        if isinstance(exc, pg_errors.LockNotAvailable) or "due to lock timeout" in text:
            return f"query timed out after {qt} s (lock_timeout: waiting for a lock)"
        if "due to statement timeout" in text:
            return f"query timed out after {qt} s (statement_timeout)"
        timeout_class = getattr(pg_errors, "ConnectionTimeout", None)
        if timeout_class is not None and isinstance(exc, timeout_class):
            return f"connection timed out after {cfg.connect_timeout} s"
    return f"{type(exc).__name__}: {one_line(exc)}"


def connect(cfg: HealthConfig, dbname: str = "postgres"):
    ms = max(1, int(cfg.query_timeout * 1000))
    return psycopg.connect(host=cfg.socket_dir, port=cfg.port, dbname=dbname, autocommit=True,
                           connect_timeout=cfg.connect_timeout,
                           application_name=APPLICATION_NAME, row_factory=dict_row,
                           options=f"-c statement_timeout={ms} -c lock_timeout={ms} "
                                   "-c default_transaction_read_only=on")


def query(conn, sql: str, params=None) -> list[dict]:
    return conn.execute(sql, params).fetchall()


def query_one(conn, sql: str, params=None) -> dict:
    return conn.execute(sql, params).fetchone()


def settings(conn, *names: str) -> dict:
    """{name: setting} of these server parameters (pg_settings' text)."""
    rows = query(conn, "SELECT name, setting FROM pg_catalog.pg_settings WHERE name = ANY(%s)",
                 (list(names),))
    return {r["name"]: r["setting"] for r in rows}
