"""Backup benchmark: base backup + verify + upload throughput against a plain pg_basebackup, and
the time of a point-in-time recovery, on a database of at least 2 GB.

    .venv/bin/python bench/backup.py [--scale 140] [--short]

On a rehearsal host of its own (pgk1), deployed with the real runbook and S3
served by a moto server on the lab network:
  1. pgbench -i --scale (140 make about 2.1 GB) fills a database;
  2. the baseline: a plain `pg_basebackup -Ft -z -X stream` to local disk, timed;
  3. `pginfra-backup base`: the same pg_basebackup, then the check of every file against the
     manifest, gzip and WAL checks, the upload to S3 and its publication, timed;
     throughput = cluster size / seconds for both, and their ratio;
  4. rows are written, a target time noted, more rows written, WAL shipped, and
     `pginfra-restore pitr` recovers to the target: from local files, then from S3 alone.
Figures go to stdout and bench/results/backup.json. Nothing is asserted.
"""

from __future__ import annotations

import argparse
import json
import time

from common import bench_lab, deploy, gateway, host_sql, parse_args, write_results

from pginfra.rehearsal import Lab
from pginfra.s3_local import local_s3

NODE = "pgk1"
BUCKET = "pginfra-bench"
BACKUP = "/usr/local/lib/pginfra/pginfra-backup"
RESTORE = "/usr/local/lib/pginfra/pginfra-restore"


def sql(lab: Lab, query: str, db: str = "postgres") -> str:
    return host_sql(lab, NODE, query, db, timeout=3600)


def timed(lab: Lab, *command: str) -> tuple[float, str]:
    started = time.monotonic()
    out = lab.ssh(NODE, ["cd", "/tmp", "&&", *command], timeout=7200).stdout
    return time.monotonic() - started, out


def pitr(lab: Lab, *flags: str) -> dict:
    sql(lab, "CREATE TABLE IF NOT EXISTS pitr_probe (batch int, n int)", "bench")
    sql(lab, "INSERT INTO pitr_probe SELECT 1, generate_series(1, 1000)", "bench")
    time.sleep(1.5)
    target = sql(lab, "SELECT now()")
    time.sleep(1.5)
    sql(lab, "INSERT INTO pitr_probe SELECT 2, generate_series(1, 1000)", "bench")
    sql(lab, "SELECT pg_switch_wal()")
    lab.ssh(NODE, ["runuser", "-u", "postgres", "--", BACKUP, "ship-wal"], timeout=3600)
    if "--from-s3" in flags:  # lose every local copy first
        lab.ssh(NODE, ["sh", "-c", "'rm -rf /var/backups/postgresql/pginfra/base/* "
                       "/var/lib/postgresql/wal-archive/*'"])
    seconds, out = timed(lab, RESTORE, "pitr", "--target-time", repr(target), *flags)
    report = json.loads(out.strip().splitlines()[-1])
    batches = sql(lab, "SELECT string_agg(DISTINCT batch::text, ',') FROM pitr_probe", "bench")
    sql(lab, "DROP TABLE pitr_probe", "bench")
    return {"seconds": round(seconds, 1), "steps": report["seconds"],
            "timeline": report["timeline"], "rows_as_of_target_only": batches == "1"}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--scale", type=int, default=140)
    args = parse_args(parser, short={"scale": 2})

    figures: dict = {"scale": args.scale}
    lab_options = ("pginfra-bk", "pgk",
                   ["postgres", "pgbouncer_admin", "s3_access_key_id", "s3_secret_access_key"])
    with (bench_lab(*lab_options) as (lab, env, _),
          local_s3(gateway(lab), buckets=[BUCKET]) as endpoint):
        data = {"postgres_roles": [{"name": "bench_owner"}],
                "postgres_databases": [{"name": "bench", "owner": "bench_owner"}],
                "postgres_sql_bundles": {"*": []},
                "pginfra_example_community": False,
                "backup_s3_bucket": BUCKET, "backup_s3_endpoint_url": endpoint}
        deploy(env, data)
        started = time.monotonic()
        lab.ssh(NODE, ["cd", "/tmp", "&&", "runuser", "-u", "postgres", "--", "pgbench",
                       "-i", "-q", "-s", str(args.scale), "bench"], timeout=7200)
        figures["load_seconds"] = round(time.monotonic() - started, 1)
        size = int(sql(lab, "SELECT sum(pg_database_size(oid)) FROM pg_database"))
        figures["cluster_bytes"] = size
        sql(lab, "CHECKPOINT")

        lab.ssh(NODE, ["rm", "-rf", "/var/tmp/plain", "&&", "install", "-d", "-o",
                       "postgres", "/var/tmp/plain"])
        plain, _ = timed(lab, "runuser", "-u", "postgres", "--", "pg_basebackup", "-D",
                         "/var/tmp/plain/b", "-Ft", "-z", "-X", "stream",
                         "--checkpoint=fast")
        plain_bytes = int(lab.ssh(NODE, ["du", "-sb", "/var/tmp/plain/b"]).stdout.split()[0])
        lab.ssh(NODE, ["rm", "-rf", "/var/tmp/plain"])
        ours, _ = timed(lab, "runuser", "-u", "postgres", "--", BACKUP, "base")
        mb = size / 2**20
        figures["baseline_plain_pg_basebackup"] = {
            "seconds": round(plain, 1), "mb_per_s": round(mb / plain, 1),
            "compressed_bytes": plain_bytes}
        figures["pginfra_backup_base"] = {
            "seconds": round(ours, 1), "mb_per_s": round(mb / ours, 1),
            "what": "pg_basebackup + manifest/gzip/WAL checks + upload + publish"}
        figures["throughput_ratio_pginfra_to_plain"] = round(plain / ours, 3)
        figures["pitr_from_local"] = pitr(lab)
        lab.ssh(NODE, ["runuser", "-u", "postgres", "--", BACKUP, "base"], timeout=7200)
        figures["pitr_from_s3_alone"] = pitr(lab, "--from-s3")
    write_results("backup", figures, args.short)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
