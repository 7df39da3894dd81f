"""The pgbouncer check: SHOW POOLS on PgBouncer's console (psql --csv over the Unix socket, as
user pgbouncer), its listeners, and the longest client wait against pgbouncer_wait_seconds.
"""

from __future__ import annotations

import csv
import io
import math
import os
import subprocess

from pginfra_host.health.context import Context
from pginfra_host.health.db import APPLICATION_NAME
from pginfra_host.health.listeners import listening_sockets, missing_listeners
from pginfra_host.health.result import CRITICAL, OK, grade, one_line, result, rounded, seconds_text

POOLS_NEEDED = ("database", "user", "cl_waiting", "maxwait")


def parse_show_pools(text: str) -> list[dict]:
    """SHOW POOLS as ``psql --csv`` prints it: one dict per pool with the client counts and
    ``maxwait_seconds`` (maxwait + maxwait_us / 1e6). ValueError when it is not that."""
    reader = csv.DictReader(io.StringIO(text))
    header = reader.fieldnames or []
    missing = [c for c in POOLS_NEEDED if c not in header]
    if missing:
        raise ValueError(f"SHOW POOLS output lacks the column(s) {', '.join(missing)} "
                         f"(header: {','.join(header) or 'none'})")
    pools = []
    for row in reader:
        def count(column: str, row=row) -> int:
            value = row.get(column)
            return int(value) if value not in (None, "") else 0
        pools.append({
            "database": row["database"], "user": row["user"],
            "cl_active": count("cl_active"), "cl_waiting": count("cl_waiting"),
            "sv_active": count("sv_active"), "sv_idle": count("sv_idle"),
            "sv_used": count("sv_used"),
            "maxwait_seconds": count("maxwait") + count("maxwait_us") / 1e6,
            "pool_mode": row.get("pool_mode") or None,
        })
    return pools


def summarize_pools(pools: list[dict]) -> dict:
    """The longest wait and the waiting clients over all pools."""
    longest = max(pools, key=lambda p: p["maxwait_seconds"], default=None)
    return {"pools": len(pools), "waiting": sum(p["cl_waiting"] for p in pools),
            "maxwait_seconds": longest["maxwait_seconds"] if longest else 0.0,
            "longest_pool": f"{longest['database']}/{longest['user']}" if longest else None}


def check_pgbouncer(ctx: Context) -> dict:
    """PgBouncer answers SHOW POOLS and listens on its addresses (critical otherwise);
    the value: the longest client wait in seconds (pgbouncer_wait_seconds)."""
    cfg, pair = ctx.cfg, ctx.th["pgbouncer_wait_seconds"]
    port = cfg.pgbouncer_port
    where = f"port {port} (socket {cfg.socket_dir}/.s.PGSQL.{port})"
    cmd = [cfg.bin("psql"), "-X", "-w", "--csv", "-h", cfg.socket_dir, "-p", str(port),
           "-U", "pgbouncer", "-d", "pgbouncer", "-c", "SHOW POOLS"]
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LC_ALL": "C",
           "PGCONNECT_TIMEOUT": str(cfg.connect_timeout), "PGAPPNAME": APPLICATION_NAME}
    limit = cfg.connect_timeout + math.ceil(cfg.query_timeout)
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd="/",
                              stdin=subprocess.DEVNULL, timeout=limit)
    except subprocess.TimeoutExpired:
        return result("pgbouncer", CRITICAL,
                      f"PgBouncer did not answer on {where} within {limit} s", pair=pair)
    if proc.returncode != 0:
        reason = one_line(proc.stderr) or f"psql exited with {proc.returncode}"
        return result("pgbouncer", CRITICAL, f"PgBouncer did not answer on {where}: "
                      f"{reason}", pair=pair, data={"port": port})
    missing = missing_listeners(cfg.pgbouncer_listen, port, listening_sockets())
    if missing:
        return result("pgbouncer", CRITICAL,
                      f"PgBouncer does not listen on {', '.join(missing)} (the address was "
                      "missing when it started?): clients there are refused until it "
                      "restarts", pair=pair, data={"port": port, "not_listening": missing})
    pools = parse_show_pools(proc.stdout)
    summary = summarize_pools(pools)
    value = summary["maxwait_seconds"]
    status = grade(value, pair) if summary["waiting"] or value else OK
    if summary["waiting"] or value:
        detail = (f"{summary['waiting']} client(s) waiting for a server connection; the "
                  f"longest wait {seconds_text(value)} in pool {summary['longest_pool']}")
    else:
        detail = f"{len(pools)} pool(s), no client waiting"
    waiting = [{"database": p["database"], "user": p["user"], "waiting": p["cl_waiting"],
                "maxwait_seconds": rounded(p["maxwait_seconds"])} for p in pools]
    return result("pgbouncer", status, detail, value, "s", pair,
                  {"waiting": summary["waiting"], "pools": waiting})
