"""Replication benchmark: what a cluster costs against one server, in one process.

    .venv/bin/python bench/replication.py [--scale N] [--seconds S] [--short]

On a lab of its own (pgq1 on its own; pgq2, the primary of pgq3 and pgq4):
  1. deploys: pgq1 alone, cold then no-op (the baseline), then the 3-host cluster, cold then
     no-op, all three hosts in one run: ratios 3 hosts / 1 host;
  2. a standby of a primary holding about ``--scale`` x 15 MB (pgbench's tables; the default
     70 is about 1 GB): a plain ``pg_basebackup`` of the primary from pgq3 over the same TLS
     connection a standby uses (the baseline), against the deploy that makes pgq4 a standby
     again after its cluster was dropped (the copy plus the run around it);
  3. replay lag on both standbys while pgbench writes to the primary for ``--seconds``:
     p50, p99 and max in bytes and seconds, sampled every 0.2 s on the primary; and pgbench's
     tps with asynchronous standbys (the baseline) against one synchronous standby.
Figures go to bench/results/replication.json (replication.short.json with --short). Nothing
here is asserted: it is a measurement, not a test.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import subprocess
import sys
import time

from common import BIN, ROOT, bench_lab, host_sql, parse_args, write_results

ROLES = ["postgres", "app", "pgbouncer_admin", "pgbouncer_auth", "replicator"]
CLUSTER = "pgq2,pgq3,pgq4"


def deploy(env: dict, hosts: str, *args: str) -> tuple[float, dict]:
    """The runbook on ``hosts``: (seconds, pyinfra's totals)."""
    started = time.monotonic()
    proc = subprocess.run(
        [str(BIN / "pyinfra"), "-y", "--json", "inventories/rehearsal.py",
         "deploys/postgres.py", *args], cwd=ROOT, capture_output=True, text=True,
        env={**env, "PGINFRA_REHEARSAL_HOSTS": hosts,
             "PGINFRA_REHEARSAL_PRIMARY": hosts.split(",")[0]})
    seconds = time.monotonic() - started
    if proc.returncode:
        raise SystemExit(f"the deploy to {hosts} failed:\n{proc.stderr[-4000:]}")
    return seconds, json.loads(proc.stdout)["results"]["totals"]


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(p / 100 * (len(ordered) - 1))))]


def pgbench(lab, seconds: int) -> float:
    out = lab.ssh("pgq2", ["runuser", "-u", "postgres", "--", "pgbench", "-n", "-c", "4",
                           "-j", "2", "-T", str(seconds), "app"], timeout=seconds + 120).stdout
    return float(re.search(r"tps = ([0-9.]+) \(without initial connection time\)",
                           out).group(1))


def lag_under_load(lab, seconds: int) -> tuple[dict, float]:
    """pgbench on the primary for ``seconds`` while the primary samples its standbys' lag."""
    query = ("SELECT application_name, pg_wal_lsn_diff(pg_current_wal_lsn(), replay_lsn), "
             "coalesce(extract(epoch FROM replay_lag), 0) FROM pg_stat_replication")
    sampler = (f"end=$(( $(date +%s) + {seconds} )); while [ $(date +%s) -lt $end ]; do "
               f"runuser -u postgres -- psql -XAtq -F ' ' -c {shlex.quote(query)}; "
               "sleep 0.2; done")
    proc = subprocess.Popen(["ssh", "-F", str(lab.ssh_config), "pgq2", "--", "sh", "-c",
                             shlex.quote(sampler)], stdout=subprocess.PIPE, text=True)
    tps = pgbench(lab, seconds)
    out, _ = proc.communicate(timeout=120)
    samples: dict[str, dict[str, list[float]]] = {}
    for line in out.splitlines():
        name, lag_bytes, lag_seconds = line.split()
        one = samples.setdefault(name, {"bytes": [], "seconds": []})
        one["bytes"].append(float(lag_bytes))
        one["seconds"].append(float(lag_seconds))
    figures = {}
    for name, one in sorted(samples.items()):
        figures[name] = {"samples": len(one["bytes"])}
        for unit, values in one.items():
            for label, p in (("p50", 50), ("p99", 99), ("max", 100)):
                figures[name][f"{label}_{unit}"] = round(percentile(values, p), 4)
    return figures, tps


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--scale", type=int, default=70, help="pgbench scale (70: ~1 GB)")
    parser.add_argument("--seconds", type=int, default=60, help="pgbench seconds under lag")
    args = parse_args(parser, short={"scale": 2, "seconds": 5})

    figures: dict = {"scale": args.scale, "seconds": args.seconds}
    with bench_lab("pginfra-brepl", "pgq", ROLES, hosts=4) as (lab, env, _):
        # 1. one host, then three at once
        figures["cold_1_host_s"], first = deploy(env, "pgq1")
        figures["noop_1_host_s"], noop1 = deploy(env, "pgq1")
        figures["cold_3_hosts_s"], _ = deploy(env, CLUSTER)
        figures["noop_3_hosts_s"], noop3 = deploy(env, CLUSTER)
        figures["noop_changed_ops"] = noop1["success"] + noop3["success"]
        figures["cold_1_host_changed_ops"] = first["success"]
        figures["ratio_cold_3_to_1"] = figures["cold_3_hosts_s"] / figures["cold_1_host_s"]
        figures["ratio_noop_3_to_1"] = figures["noop_3_hosts_s"] / figures["noop_1_host_s"]

        # 2. a standby of a primary with data: plain pg_basebackup, then pginfra's
        lab.ssh("pgq2", ["runuser", "-u", "postgres", "--", "pgbench", "-q", "-i", "-s",
                         str(args.scale), "app"], timeout=3600)
        host_sql(lab, "pgq2", "CHECKPOINT")
        figures["primary_size_mb"] = round(int(host_sql(
            lab, "pgq2", "SELECT sum(pg_database_size(oid)) FROM pg_database")) / 2**20, 1)
        conf = lab.ssh("pgq3", ["cat", "/etc/postgresql/15/main/conf.d/"
                                "postgresql-production.conf"]).stdout
        conninfo = re.search(r"^primary_conninfo = '(.*)'$", conf, re.M).group(1)
        copy = "/var/lib/postgresql/bench-copy"
        started = time.monotonic()
        lab.ssh("pgq3", ["rm", "-rf", copy, "&&", "runuser", "-u", "postgres", "--",
                         "pg_basebackup", "-d", shlex.quote(conninfo), "-D", copy, "-X",
                         "stream", "-c", "fast", "-w"], timeout=3600)
        figures["plain_pg_basebackup_s"] = time.monotonic() - started
        lab.ssh("pgq3", ["rm", "-rf", copy])
        lab.ssh("pgq4", ["pg_dropcluster", "--stop", "15", "main"])
        figures["deploy_rebuilding_standby_s"], rebuilt = deploy(env, CLUSTER)
        figures["rebuild_changed_ops"] = rebuilt["success"]
        figures["ratio_standby_deploy_to_pg_basebackup"] = (
            figures["deploy_rebuilding_standby_s"] / figures["plain_pg_basebackup_s"])
        figures["standby_deploy_over_noop_s"] = (
            figures["deploy_rebuilding_standby_s"] - figures["noop_3_hosts_s"])

        # 3. lag while pgbench writes; tps asynchronous, then with a synchronous standby
        figures["lag_async"], figures["tps_async"] = lag_under_load(lab, args.seconds)
        deploy(env, CLUSTER, "--data",
               "postgres_synchronous_standbys=ANY 1 (pgq3, pgq4)")
        figures["lag_sync_any_1"], figures["tps_sync_any_1"] = lag_under_load(lab, args.seconds)
        figures["ratio_tps_sync_to_async"] = figures["tps_sync_any_1"] / figures["tps_async"]

    write_results("replication", {k: round(v, 3) if isinstance(v, float) else v
                                  for k, v in figures.items()}, args.short)
    return 0


if __name__ == "__main__":
    os.chdir(ROOT)
    sys.exit(main())
