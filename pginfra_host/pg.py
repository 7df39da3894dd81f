"""PostgreSQL from the host programs: psycopg connections over the Unix socket, ``Psql`` (root's
way in, as the postgres OS user), and small queries more than one program asks.
"""

from __future__ import annotations

import os
import re

from pginfra_host import layout
from pginfra_host.runner import Failed, JobLog
from pginfra_host.util import OS_USER, run, tail


def connect(cfg, dbname: str = "postgres", app: str = "pginfra-backup"):
    try:
        import psycopg
    except ImportError:
        raise Failed("psycopg is not installed (apt-get install python3-psycopg)") from None

    try:
        return psycopg.connect(host=cfg.socket_dir, port=cfg.port, dbname=dbname,
                               autocommit=True, application_name=app, connect_timeout=10)
    except psycopg.Error as exc:
        raise Failed(f"cannot connect to database {dbname} on port {cfg.port} "
                     f"({cfg.socket_dir}): {str(exc).strip()}") from None


def conninfo(cfg, dbname: str) -> str:
    from psycopg.conninfo import make_conninfo

    return make_conninfo(host=cfg.socket_dir, port=str(cfg.port), dbname=dbname)


def standby_skip(conn, log: JobLog) -> bool:
    """True (logged as "standby: skipped") when the server is a standby."""
    if conn.execute("SELECT pg_is_in_recovery()").fetchone()[0]:
        log.emit("standby", "skipped", detail="this server is a standby (pg_is_in_recovery()): "
                 "nothing to do here; the primary (with postgres_ha the current leader) runs "
                 "this job")
        return True
    return False


def sql_system_identifier(conn) -> str:
    return str(conn.execute("SELECT system_identifier FROM pg_control_system()").fetchone()[0])


def controldata_system_identifier(cfg) -> str | None:
    try:
        proc = run([cfg.bin("pg_controldata"), "-D", cfg.data_directory], timeout=30)
    except OSError:
        return None
    found = re.search(r"Database system identifier:\s+(\d+)", proc.stdout)
    return found.group(1) if proc.returncode == 0 and found else None


COUNT_TABLES = """
SELECT format('%I.%I', n.nspname, c.relname)
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind = 'r'
  AND n.nspname NOT IN ('pg_catalog', 'information_schema')
  AND n.nspname !~ '^pg_(toast|temp_)'
  AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.classid = 'pg_class'::regclass
                  AND d.objid = c.oid AND d.deptype = 'e')
ORDER BY 1
"""


def row_counts(conn) -> dict[str, int]:
    """Exact count(*) of every user table (not extension members), by qualified name."""
    tables = [r[0] for r in conn.execute(COUNT_TABLES).fetchall()]
    return {t: conn.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in tables}


class Psql:
    """SQL through psql as the postgres OS user: root's way in (pg_hba lets only the postgres
    OS user in as postgres, by peer)."""

    def __init__(self, cfg):
        self.cfg = cfg

    def __call__(self, sql: str, dbname: str = "postgres", timeout: float = 120) -> str:
        cmd = [layout.pg_bin(self.cfg.version, "psql"), "-XAtq", "-v", "ON_ERROR_STOP=1", "-h",
               self.cfg.socket_dir, "-p", str(self.cfg.port), "-d", dbname, "-c", sql]
        if os.geteuid() == 0:
            cmd = ["runuser", "-u", OS_USER, "--", *cmd]
        proc = run(cmd, timeout=timeout, cwd="/")
        if proc.returncode != 0:
            raise Failed(f"psql: {sql}: {tail(proc.stderr, 3)}")
        return proc.stdout.strip()

