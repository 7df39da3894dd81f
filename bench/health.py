"""Health check and maintenance benchmark: what running pginfra-health and pginfra-maintenance
costs a busy server, and how the health check's run time grows with the number of databases.

    .venv/bin/python bench/health.py [--scale 50] [--clients 8] [--seconds 30] [--databases 40]
                                     [--bloat-rows 2000000] [--short]

On a rehearsal host of its own (pgm1), deployed with the real runbook:
  1. pgbench -i --scale fills database bench (50 make about 750 MB);
  2. baseline: pgbench (TPC-B-like, --clients clients) for --seconds, alone: TPS;
  3. the same pgbench while pginfra-health --json runs back to back on the host the whole time
     (the worst case: cron runs it every 5 minutes): TPS, as a ratio of the baseline, and the
     health check's run times (median, slowest);
  4. a table with a bloated index (--bloat-rows rows, 80 % deleted, vacuumed): the same pgbench
     while pginfra-maintenance reindex rebuilds it CONCURRENTLY: TPS as a ratio of the
     baseline, the reindex's seconds and the index size before and after;
  5. capacity: the health check's median run time with the deploy's databases, then with
     --databases more (every connectable database is checked for invalid indexes): the ratio.
Figures go to stdout and bench/results/health.json. Nothing is asserted.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import threading
import time

from common import bench_lab, deploy, host_sql, parse_args, write_results

from pginfra_lab.rehearsal import Lab

NODE = "pgm1"
HEALTH = "/usr/local/lib/pginfra/pginfra-health"
MAINTENANCE = "/usr/local/lib/pginfra/pginfra-maintenance"


def sql(lab: Lab, query: str, db: str = "postgres") -> str:
    return host_sql(lab, NODE, query, db, timeout=3600)


def pgbench(lab: Lab, clients: int, seconds: int) -> float:
    out = lab.ssh(NODE, ["cd", "/tmp", "&&", "runuser", "-u", "postgres", "--", "pgbench", "-n",
                         "-c", str(clients), "-j", "2", "-T", str(seconds), "bench"],
                  timeout=seconds + 600).stdout
    return float(re.search(r"tps = ([0-9.]+) \(without initial connection time\)", out).group(1))


def health_loop(lab: Lab, seconds: int) -> list[float]:
    """pginfra-health --json back to back for ``seconds``, as postgres (as cron runs it), in one
    shell on the host (no SSH set-up per run in the figures): each run's duration_seconds."""
    out = lab.ssh(NODE, ["cd", "/tmp", "&&", "timeout", str(seconds), "runuser", "-u",
                         "postgres", "--", "sh", "-c",
                         repr(f"while :; do {HEALTH} --json; done")], check=False,
                  timeout=seconds + 300).stdout
    return [json.loads(line)["duration_seconds"] for line in out.splitlines()
            if line.startswith("{") and line.endswith("}")]


def with_load(lab: Lab, clients: int, seconds: int, work) -> tuple[float, object]:
    """TPS of pgbench while ``work()`` runs (started a second after pgbench)."""
    result: dict = {}
    bench = threading.Thread(target=lambda: result.update(tps=pgbench(lab, clients, seconds)))
    bench.start()
    time.sleep(1)
    out = work()
    bench.join()
    return result["tps"], out


def median_health_seconds(lab: Lab, runs: int = 5) -> float:
    times = []
    for _ in range(runs):
        out = lab.ssh(NODE, [HEALTH, "--json"], check=False, timeout=300).stdout
        times.append(json.loads(out.strip().splitlines()[-1])["duration_seconds"])
    return statistics.median(times)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--scale", type=int, default=50)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--seconds", type=int, default=30)
    parser.add_argument("--databases", type=int, default=40)
    parser.add_argument("--bloat-rows", type=int, default=2_000_000)
    args = parse_args(parser, short={"scale": 1, "clients": 2, "seconds": 5, "databases": 2,
                                     "bloat_rows": 50_000})

    figures: dict = {"scale": args.scale, "clients": args.clients, "seconds": args.seconds}
    with bench_lab("pginfra-bm", "pgm", ["postgres", "pgbouncer_admin"]) as (
            lab, env, _):
        data = {"postgres_roles": [{"name": "bench_owner"}],
                "postgres_databases": [{"name": "bench", "owner": "bench_owner"}],
                "postgres_sql_bundles": {"*": ["baseline"]},
                "pginfra_example_community": False,
                # the bloated index must qualify, however small --bloat-rows makes it
                "maintenance_reindex_min_bloat_mb": 0}
        deploy(env, data)
        lab.ssh(NODE, ["cd", "/tmp", "&&", "runuser", "-u", "postgres", "--", "pgbench", "-i",
                       "-q", "-s", str(args.scale), "bench"], timeout=7200)
        figures["database_bytes"] = int(sql(lab, "SELECT pg_database_size('bench')"))
        sql(lab, "CHECKPOINT")
        pgbench(lab, args.clients, min(10, args.seconds))  # warm the cache

        baseline = pgbench(lab, args.clients, args.seconds)
        figures["baseline_tps"] = round(baseline, 1)

        tps, times = with_load(lab, args.clients, args.seconds,
                               lambda: health_loop(lab, args.seconds - 2))
        figures["health_back_to_back"] = {
            "tps": round(tps, 1), "tps_ratio_to_baseline": round(tps / baseline, 3),
            "seconds_per_run_with_process_start": round((args.seconds - 2) / len(times), 3),
            "runs": len(times), "median_seconds": round(statistics.median(times), 3),
            "slowest_seconds": round(max(times), 3)}

        sql(lab, "CREATE TABLE bloated (id bigint, pad text) WITH (autovacuum_enabled = false);"
                 "INSERT INTO bloated SELECT g, md5(g::text) FROM "
                 f"generate_series(1, {args.bloat_rows}) g;"
                 "CREATE INDEX bloated_id ON bloated (id);"
                 "DELETE FROM bloated WHERE id % 5 <> 0;", "bench")
        sql(lab, "VACUUM ANALYZE bloated", "bench")
        before = int(sql(lab, "SELECT pg_relation_size('bloated_id')", "bench"))

        def reindex():
            started = time.monotonic()
            out = lab.ssh(NODE, [MAINTENANCE, "reindex"], check=False, timeout=3600)
            return time.monotonic() - started, out

        tps, (seconds, out) = with_load(lab, args.clients, args.seconds, reindex)
        after = int(sql(lab, "SELECT pg_relation_size('bloated_id')", "bench"))
        figures["reindex_concurrently_under_load"] = {
            "tps": round(tps, 1), "tps_ratio_to_baseline": round(tps / baseline, 3),
            "seconds": round(seconds, 1), "exit_code": out.returncode,
            "index_bytes_before": before, "index_bytes_after": after,
            "size_ratio_after_to_before": round(after / before, 3)}

        few = median_health_seconds(lab)
        databases = int(sql(lab, "SELECT count(*) FROM pg_database WHERE datallowconn"))
        for i in range(args.databases):
            sql(lab, f"CREATE DATABASE bench_extra_{i}")
        many = median_health_seconds(lab)
        figures["health_capacity"] = {
            "databases_before": databases, "median_seconds_before": round(few, 3),
            "databases_after": databases + args.databases,
            "median_seconds_after": round(many, 3),
            "seconds_ratio_after_to_before": round(many / few, 2)}
    write_results("health", figures, args.short)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
