"""PgBouncer benchmark: connection capacity and throughput, direct against through the pooler.

    .venv/bin/python bench/pgbouncer.py [--clients 1000] [--seconds 15] [--short]

On a rehearsal host of its own (pgc1), deployed with the real runbook:
  1. opens --clients concurrent TLS client connections through PgBouncer from this machine,
     each running queries, and reports how many PostgreSQL server connections served them;
  2. runs pgbench on the host with a new connection per transaction (-C), directly (the
     baseline) and through PgBouncer, for the same duration, and reports both TPS and the ratio;
  3. does the same over persistent connections.
Figures go to stdout and bench/results/pgbouncer.json. Nothing is asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import resource
import sys
import time
from pathlib import Path

import psycopg
from common import address, bench_lab, deploy, parse_args, write_results

from pginfra_lab.rehearsal import Lab

ROLES = [{"name": "app_owner"}, {"name": "app", "login": True, "member_of": ["app_owner"]},
         {"name": "bench", "login": True}]
DATABASES = [{"name": "app", "owner": "app_owner", "connect": ["app"]},
             {"name": "bench", "owner": "bench"}]


def deploy_pools(env: dict, clients: int) -> None:
    deploy(env, {"postgres_roles": ROLES, "postgres_databases": DATABASES,
                 "postgres_sql_bundles": {"*": ["baseline"]},
                 "pginfra_example_community": False,
                 "pgbouncer_max_client_conn": clients + 100})


async def hold_clients(host: str, n: int, password: str, ca: Path,
                       admin_password: str) -> dict:
    """n clients connect through PgBouncer, all stay connected and keep querying; report the
    server connections PgBouncer used at the peak."""
    ready = asyncio.Event()
    connected = 0
    failures: list[str] = []

    async def client() -> None:
        nonlocal connected
        try:
            conn = await psycopg.AsyncConnection.connect(
                host=host, port=6432, dbname="app", user="app", password=password,
                sslmode="verify-full", sslrootcert=str(ca), autocommit=True, connect_timeout=60)
        except psycopg.Error as exc:
            failures.append(str(exc).splitlines()[0])
            return
        connected += 1
        async with conn:
            await conn.execute("SELECT 1")
            await ready.wait()
            for _ in range(3):
                await conn.execute("SELECT pg_sleep(0.01)")

    started = time.monotonic()
    tasks = [asyncio.create_task(client()) for _ in range(n)]
    while connected + len(failures) < n and time.monotonic() - started < 120:
        await asyncio.sleep(0.2)
    connect_seconds = time.monotonic() - started
    peak = 0
    async with await psycopg.AsyncConnection.connect(
            host=host, port=6432, dbname="pgbouncer", user="pgbouncer_admin",
            password=admin_password, sslmode="verify-full", sslrootcert=str(ca),
            autocommit=True, prepare_threshold=None) as admin:
        ready.set()
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            cur = await admin.execute("SHOW POOLS")
            cols = [d.name for d in cur.description]
            for row in await cur.fetchall():
                pool = dict(zip(cols, row, strict=True))
                if pool["database"] == "app":
                    used = sum(int(pool[k]) for k in ("sv_active", "sv_idle", "sv_used",
                                                      "sv_tested", "sv_login"))
                    peak = max(peak, used)
            await asyncio.sleep(0.1)
    await asyncio.gather(*tasks)
    return {"clients_requested": n, "clients_connected": connected,
            "client_failures": len(failures), "connect_all_s": round(connect_seconds, 2),
            "server_connections_peak": peak,
            "first_failure": failures[0] if failures else None}


def pgbench(lab: Lab, port: int, seconds: int, new_connection: bool) -> float:
    args = ["pgbench", "-h", "/var/run/postgresql", "-p", str(port), "-U", "bench", "-n", "-S",
            "-c", "16", "-j", "2", "-T", str(seconds)]
    if new_connection:
        args.append("-C")
    out = lab.ssh("pgc1", ["env", "PGPASSFILE=/root/.pgpass-bench", *args, "bench"],
                  timeout=seconds + 120).stdout
    match = re.search(r"tps = ([\d.]+) \(without initial connection time\)", out) or \
        re.search(r"tps = ([\d.]+)", out)
    return float(match.group(1))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clients", type=int, default=1000)
    parser.add_argument("--seconds", type=int, default=15)
    parser.add_argument("--scale", type=int, default=10, help="pgbench's scale")
    args = parse_args(parser, short={"clients": 50, "seconds": 2, "scale": 1})
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, args.clients + 1024)), hard))

    figures: dict = {}
    with bench_lab("pginfra-bb", "pgc",
                   ["postgres", "app", "bench", "pgbouncer_admin"]) as (lab, env, tmp):
        from pginfra.secrets import password_for

        deploy_pools(env, args.clients)
        passfile = "\n".join(f"*:{port}:bench:bench:{password_for('bench')}"
                             for port in (5432, 6432))
        lab.ssh("pgc1", ["sh", "-c", "'umask 077; cat > /root/.pgpass-bench'"],
                input=passfile + "\n")
        lab.ssh("pgc1", ["env", "PGPASSFILE=/root/.pgpass-bench", "pgbench", "-i", "-q",
                         "-s", str(args.scale), "-h", "/var/run/postgresql", "-U", "bench",
                         "bench"],
                timeout=600)

        figures["capacity"] = asyncio.run(hold_clients(
            address(lab, "pgc1"), args.clients, password_for("app"), tmp / "control/ca/ca.crt",
            password_for("pgbouncer_admin")))
        for label, new_conn in (("new_connection_per_transaction", True),
                                ("persistent_connections", False)):
            direct = pgbench(lab, 5432, args.seconds, new_conn)  # the baseline
            pooled = pgbench(lab, 6432, args.seconds, new_conn)
            figures[label] = {"direct_tps": direct, "pgbouncer_tps": pooled,
                              "ratio_pgbouncer_to_direct": round(pooled / direct, 3)}
    write_results("pgbouncer", figures, args.short)
    return 0


if __name__ == "__main__":
    sys.exit(main())
