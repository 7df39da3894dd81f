"""The checks of the server itself: postgres (it answers; version, role, uptime; it listens
on every address of listen_addresses), pending_restart (parameters waiting for a restart,
configuration lines in error) and invalid_indexes (INVALID indexes in every database).
"""

from __future__ import annotations

from pginfra_host import util
from pginfra_host.health.context import Context
from pginfra_host.health.db import connect, describe, query, query_one, settings
from pginfra_host.health.listeners import listening_sockets, missing_listeners
from pginfra_host.health.result import (
    CRITICAL,
    OK,
    UNKNOWN,
    WARNING,
    more,
    result,
    rounded,
    seconds_text,
    worst,
)


def check_postgres(ctx: Context) -> dict:
    """The server answers (Context's SELECT 1): version, role, uptime. Critical when it
    does not, or when it does not listen on an address of its listen_addresses."""
    if ctx.conn is None:
        return result("postgres", CRITICAL, f"PostgreSQL did not answer: {ctx.down}",
                      data={"port": ctx.cfg.port, "socket_dir": ctx.cfg.socket_dir})
    s = ctx.server
    role = "standby (in recovery)" if s["in_recovery"] else "primary"
    data = {"version": s["version"], "in_recovery": s["in_recovery"],
            "uptime_seconds": rounded(s["uptime_seconds"]), "started": util.iso(s["started"])}
    addresses = settings(ctx.conn, "listen_addresses")["listen_addresses"].split(",")
    missing = missing_listeners(addresses, ctx.cfg.port, listening_sockets())
    if missing:
        return result("postgres", CRITICAL,
                      f"PostgreSQL does not listen on {', '.join(missing)} of its "
                      "listen_addresses (the address was missing when it started?): "
                      "clients there are refused until it restarts",
                      data={**data, "not_listening": missing})
    return result("postgres", OK,
                  f"PostgreSQL {s['version']}, {role}, up {seconds_text(s['uptime_seconds'])}",
                  data=data)


def check_pending_restart(ctx: Context) -> dict:
    """Parameters changed but waiting for a restart, and configuration file lines in
    error (pg_file_settings, pg_hba_file_rules): warning."""
    if ctx.conn is None:
        return ctx.not_answering("pending_restart")
    pending = [r["name"] for r in query(ctx.conn, """
        SELECT name FROM pg_catalog.pg_settings WHERE pending_restart ORDER BY name""")]
    file_errors = [f"{r['sourcefile']}:{r['sourceline']}: {r['name']}: {r['error']}"
                   for r in query(ctx.conn, """
        SELECT sourcefile, sourceline, name, error FROM pg_catalog.pg_file_settings
        WHERE error IS NOT NULL ORDER BY sourcefile, sourceline""")
                   if not (r["name"] in pending
                           and r["error"] == "setting could not be applied")]
    hba_errors = [f"pg_hba.conf line {r['line_number']}: {r['error']}"
                  for r in query(ctx.conn, """
        SELECT line_number, error FROM pg_catalog.pg_hba_file_rules
        WHERE error IS NOT NULL ORDER BY line_number""")]
    parts = []
    if pending:
        parts.append(f"{len(pending)} parameter(s) changed, waiting for a restart: "
                     + ", ".join(pending))
    errors = file_errors + hba_errors
    if errors:
        parts.append(f"{len(errors)} configuration line(s) in error: {more(errors)}")
    data = {"pending_restart": pending, "file_errors": file_errors,
            "hba_errors": hba_errors}
    if not parts:
        return result("pending_restart", OK, "no parameter waits for a restart; the "
                      "configuration files have no errors", 0, None, None, data)
    return result("pending_restart", WARNING, "; ".join(parts), len(pending) + len(errors),
                  None, None, data)


INVALID_INDEXES = """
    SELECT n.nspname, c.relname AS index_name, t.relname AS table_name
    FROM pg_catalog.pg_index AS i
    JOIN pg_catalog.pg_class AS c ON c.oid = i.indexrelid
    JOIN pg_catalog.pg_namespace AS n ON n.oid = c.relnamespace
    JOIN pg_catalog.pg_class AS t ON t.oid = i.indrelid
    WHERE NOT i.indisvalid
      AND NOT EXISTS (
          SELECT 1 FROM pg_catalog.pg_stat_progress_create_index AS p
          WHERE p.datid = (SELECT oid FROM pg_catalog.pg_database
                           WHERE datname = pg_catalog.current_database())
            AND p.relid = i.indrelid)
    ORDER BY 1, 2"""


def check_invalid_indexes(ctx: Context) -> dict:
    """INVALID indexes (not being built right now) in every database that allows
    connections: warning, naming db.schema.index; a database not reached: unknown."""
    if ctx.conn is None:
        return ctx.not_answering("invalid_indexes")
    databases = [r["datname"] for r in query(ctx.conn, """
        SELECT datname FROM pg_catalog.pg_database
        WHERE datallowconn AND datname <> 'template0' ORDER BY datname""")]
    here = query_one(ctx.conn, "SELECT pg_catalog.current_database() AS db")["db"]
    invalid, unreachable = [], {}
    for db in databases:
        try:
            if db == here:
                rows = query(ctx.conn, INVALID_INDEXES)
            else:
                conn = connect(ctx.cfg, db)
                ctx.others.append(conn)
                try:
                    rows = query(conn, INVALID_INDEXES)
                finally:
                    ctx.others.remove(conn)
                    conn.close()
        except Exception as exc:
            unreachable[db] = describe(exc, ctx.cfg)
            continue
        invalid += [{"database": db, "schema": r["nspname"], "index": r["index_name"],
                     "table": r["table_name"]} for r in rows]
    names = [f"{i['database']}.{i['schema']}.{i['index']}" for i in invalid]
    parts, statuses = [], []
    if invalid:
        statuses.append(WARNING)
        parts.append(f"{len(invalid)} invalid index(es): {more(names)} (drop and rebuild "
                     "them: DROP INDEX CONCURRENTLY, CREATE INDEX CONCURRENTLY)")
    if unreachable:
        statuses.append(UNKNOWN)
        parts.append("not checked: " + "; ".join(f"database {db}: {why}"
                                                  for db, why in unreachable.items()))
    checked = len(databases) - len(unreachable)
    detail = "; ".join(parts) or f"no invalid index in {checked} database(s)"
    return result("invalid_indexes", worst(statuses), detail, len(invalid), None, None,
                  {"databases_checked": checked, "invalid": invalid,
                   "unreachable": unreachable})
