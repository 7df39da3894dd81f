"""Backup benchmark: pgBackRest's full backup, backup + verify and restore against plain
``pg_basebackup``, same host, same data (at least 2 GB by default), as ratios.

    .venv/bin/python bench/backup.py [--scale 140] [--short]

On a rehearsal host of its own (pgk1), deployed with the real runbook, pgBackRest's repository
1 local and repository 2 in S3 (moto behind TLS on the lab's bridge):
  1. ``pgbench -i --scale`` fills a database (140: about 2.1 GB), and the WAL that made is left
     to reach both repositories before anything is timed;
  2. the baselines, timed: ``pg_basebackup -Ft -z -X stream`` (plain gzip, the floor) and
     ``pg_basebackup -Ft --compress=client-lz4 -X stream``, with their sizes; and the floor of a
     restore: untarring the gzip backup (base.tar.gz and pg_wal.tar.gz) into an empty
     directory, which is only decompression and writing files (no server stopped or started,
     no WAL replayed);
  3. pgBackRest (as postgres, the host's configuration): ``--repo=1 --type=full backup``, then
     ``--repo=1 verify``, which checks every backup in the repository and the WAL archive
     (pgBackRest 2.45 checks a backup's files as stored, against the checksum of the
     compressed, encrypted file recorded at backup time, and decompresses only the WAL);
     "backup + verify" is the sum of both, against pg_basebackup alone (PostgreSQL 15's
     pg_verifybackup cannot read a tar backup); ``pginfra-backup full --repo 1`` end to end
     (what cron runs: the backup, the parsed verify, pgbackrest info); ``--repo=2 --type=full
     backup`` into S3 as an extra figure; and ``restore`` of repository 1's newest backup into
     an empty directory (what the untar is compared with);
  4. rows are written (batch 1), a target time noted, more rows written (batch 2), the WAL
     archived (``pgbackrest check``), and ``pginfra-restore pitr --repo 1`` recovers to the
     target (stop, ``pgbackrest --delta`` restore over the data directory, start, replay,
     promote): timed, and only batch 1 must be there.
Ratios are each pgBackRest figure over its pg_basebackup baseline (seconds, bytes). Sizes:
pg_basebackup's whole output (-X stream puts the WAL of the backup in it); pgBackRest's
repository size of the backup (compressed, encrypted; its WAL is in the archive). pgbench's
rows are mostly blank padding, so every compressor does far better here than on real data.
Times are wall-clock from this machine (one SSH round trip each). Figures go to stdout and
bench/results/backup.json; nothing is asserted.
"""

from __future__ import annotations

import argparse
import json
import re
import time

from common import bench_lab, deploy, gateway, host_sql, parse_args, write_results

from pginfra_lab.rehearsal import Lab
from pginfra_lab.s3_local import local_s3

NODE = "pgk1"
BUCKET = "pginfra-bench"
BACKUP = "/usr/local/lib/pginfra/pginfra-backup"
RESTORE = "/usr/local/lib/pginfra/pginfra-restore"
SCRATCH = "/var/tmp/bench"
PGBACKREST = ["runuser", "-u", "postgres", "--", "pgbackrest", "--stanza=main"]
S3_KEYS = {"PGINFRA_PASSWORD_S3_ACCESS_KEY_ID": "bench-access-key",
           "PGINFRA_PASSWORD_S3_SECRET_ACCESS_KEY": "bench-secret-key"}


def sql(lab: Lab, query: str, db: str = "postgres") -> str:
    return host_sql(lab, NODE, query, db, timeout=3600)


def run(lab: Lab, *command: str) -> tuple[float, str]:
    """(seconds, stdout) of ``command`` on the host (in /tmp); stops the benchmark with its
    output when it fails."""
    started = time.monotonic()
    proc = lab.ssh(NODE, ["cd", "/tmp", "&&", *command], check=False, timeout=7200)
    seconds = time.monotonic() - started
    if proc.returncode:
        raise SystemExit(f"{' '.join(command)} exited with {proc.returncode}:\n"
                         f"{proc.stdout[-3000:]}{proc.stderr[-3000:]}")
    return seconds, proc.stdout


def du(lab: Lab, path: str) -> int:
    return int(lab.ssh(NODE, ["du", "-sb", path]).stdout.split()[0])


def scratch(lab: Lab, name: str) -> str:
    """An empty directory for postgres under SCRATCH (0700, as a data directory must be)."""
    path = f"{SCRATCH}/{name}"
    lab.ssh(NODE, ["rm", "-rf", path, "&&", "install", "-d", "-o", "postgres", "-g", "postgres",
                   "-m", "0700", SCRATCH, path])
    return path


def stages(out: str) -> dict:
    """Seconds of each stage in a pginfra program's JSON log lines (summed when repeated)."""
    found: dict[str, float] = {}
    for line in out.splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict) and "stage" in record and record.get("seconds") is not None:
            found[record["stage"]] = round(found.get(record["stage"], 0) + record["seconds"], 2)
    return found


def newest_backup(lab: Lab, repo: int) -> dict:
    """pgBackRest's newest backup in ``repo`` (its info entry)."""
    _, out = run(lab, *PGBACKREST, f"--repo={repo}", "--output=json", "info")
    backups = [b for b in json.loads(out)[0]["backup"] if b["database"]["repo-key"] == repo]
    return backups[-1]


def wait_archived(lab: Lab, timeout: float = 3600) -> float:
    """Until PostgreSQL has no WAL segment waiting for archiving; the seconds it took."""
    started = time.monotonic()
    while int(sql(lab, "SELECT count(*) FROM pg_ls_archive_statusdir() "
                       "WHERE name LIKE '%.ready'")):
        if time.monotonic() - started > timeout:
            raise SystemExit(f"WAL still waiting for archiving after {timeout:.0f}s")
        time.sleep(1)
    return time.monotonic() - started


def pg_basebackup(lab: Lab, name: str, *compress: str) -> tuple[dict, str]:
    path = scratch(lab, name)
    command = ["pg_basebackup", "-D", f"{path}/b", "-Ft", *compress, "-X", "stream",
               "--checkpoint=fast"]
    seconds, _ = run(lab, "runuser", "-u", "postgres", "--", *command)
    return {"seconds": round(seconds, 2), "bytes": du(lab, f"{path}/b"),
            "command": " ".join(command[:-1])}, path


def untar(lab: Lab, backup: str) -> dict:
    """The floor of a restore: the gzip backup's tarballs unpacked into an empty directory."""
    target = scratch(lab, "untar")
    seconds, _ = run(lab, "runuser", "-u", "postgres", "--", "sh", "-c", repr(
        f"tar -xzf {backup}/b/base.tar.gz -C {target} && "
        f"tar -xzf {backup}/b/pg_wal.tar.gz -C {target}/pg_wal"))
    size = du(lab, target)
    lab.ssh(NODE, ["rm", "-rf", target])
    return {"seconds": round(seconds, 2), "bytes_written": size,
            "what": "tar -xzf base.tar.gz and pg_wal.tar.gz of the gzip pg_basebackup into an "
                    "empty directory: decompression and writing only"}


def pgbackrest_backup(lab: Lab, repo: int) -> dict:
    seconds, _ = run(lab, *PGBACKREST, f"--repo={repo}", "--type=full", "backup")
    backup = newest_backup(lab, repo)
    return {"seconds": round(seconds, 2), "bytes": backup["info"]["repository"]["size"],
            "label": backup["label"], "type": backup["type"]}


def pgbackrest_verify(lab: Lab, repo: int) -> dict:
    seconds, out = run(lab, *PGBACKREST, f"--repo={repo}", "--output=text", "--verbose",
                       "verify")
    # verify exits 0 whatever it finds: its text says (docs/research/pgbackrest-2.45.md)
    return {"seconds": round(seconds, 2),
            "ok": "status: ok" in out and not re.search(r"status: (error|invalid)", out),
            "backups_verified": len(re.findall(r"backup: \S+, status: valid", out)),
            "backup_files_checked": sum(map(int, re.findall(r"total files checked: (\d+)", out))),
            "wal_files_checked": sum(map(int, re.findall(r"total WAL checked: (\d+)", out))),
            "what": "pgbackrest --repo=1 verify: every backup in the repository (each stored "
                    "file, compressed and encrypted, against the repository checksum taken at "
                    "backup time) and every archived WAL file (decrypted, decompressed, hashed)"}


def restore_empty_dir(lab: Lab) -> dict:
    """pgBackRest's restore of repository 1's newest backup into an empty directory: the
    counterpart of the untar (the running cluster is not touched)."""
    target = scratch(lab, "restore")
    seconds, _ = run(lab, *PGBACKREST, "--repo=1", f"--pg1-path={target}", "restore")
    size = du(lab, target)
    lab.ssh(NODE, ["rm", "-rf", target])
    return {"seconds": round(seconds, 2), "bytes_written": size,
            "what": "pgbackrest --repo=1 --pg1-path=<empty dir> restore: decryption, "
                    "decompression and writing only (no WAL replayed)"}


def pitr(lab: Lab) -> dict:
    sql(lab, "CREATE TABLE IF NOT EXISTS pitr_probe (batch int, n int)", "bench")
    sql(lab, "INSERT INTO pitr_probe SELECT 1, generate_series(1, 1000)", "bench")
    time.sleep(1.5)
    target = sql(lab, "SELECT to_char(now() AT TIME ZONE 'UTC', "
                      "'YYYY-MM-DD HH24:MI:SS.US') || '+00'")
    time.sleep(1.5)
    sql(lab, "INSERT INTO pitr_probe SELECT 2, generate_series(1, 1000)", "bench")
    run(lab, *PGBACKREST, "check")  # switches WAL and waits for it in every repository
    seconds, out = run(lab, RESTORE, "pitr", "--target-time", repr(target), "--repo", "1")
    report = json.loads(out.strip().splitlines()[-1])
    batches = sql(lab, "SELECT string_agg(DISTINCT batch::text, ',' ORDER BY batch::text) "
                       "FROM pitr_probe", "bench")
    sql(lab, "DROP TABLE pitr_probe", "bench")
    return {"seconds": round(seconds, 2), "stages": stages(out), "backup": report["backup"],
            "timeline": report["timeline"], "batches": batches,
            "rows_as_of_target_only": batches == "1",
            "what": "pginfra-restore pitr --repo 1: stop, pgbackrest --delta restore over the "
                    "data directory, start, WAL replay to the target, promote"}


def ratio(a: float, b: float) -> float:
    return round(a / b, 3)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--scale", type=int, default=140, help="pgbench scale (140: ~2.1 GB)")
    args = parse_args(parser, short={"scale": 2})

    figures: dict = {"scale": args.scale}
    started_all = time.monotonic()
    with bench_lab("pginfra-bk", "pgk", ["postgres", "pgbouncer_admin"]) as (lab, env, _):
        env.update(S3_KEYS)
        with local_s3(gateway(lab), buckets=[BUCKET], ca_dir=env["PGINFRA_CA_DIR"]) as endpoint:
            data = {"postgres_roles": [{"name": "bench_owner"}],
                    "postgres_databases": [{"name": "bench", "owner": "bench_owner"}],
                    "postgres_sql_bundles": {"*": []},
                    "pginfra_example_community": False,
                    "backup_s3_bucket": BUCKET, "backup_s3_endpoint_url": str(endpoint),
                    "backup_s3_ca_file": endpoint.ca}
            started = time.monotonic()
            deploy(env, data)
            figures["deploy_seconds"] = round(time.monotonic() - started, 1)
            conf = lab.ssh(NODE, ["cat", "/etc/pgbackrest/conf.d/main.conf"]).stdout
            section = conf.split("\n[main]\n", 1)[-1].split("\n[", 1)[0]  # not archive-push's
            figures["pgbackrest_options"] = dict(re.findall(
                r"^(process-max|compress-type|repo1-cipher-type|repo2-type)=(\S+)$", section,
                re.M))

            # 1. the data, and its WAL in both repositories
            started, lsn = time.monotonic(), sql(lab, "SELECT pg_current_wal_lsn()")
            run(lab, "runuser", "-u", "postgres", "--", "pgbench", "-i", "-q", "-s",
                str(args.scale), "bench")
            figures["load_seconds"] = round(time.monotonic() - started, 1)
            figures["load_wal_bytes"] = int(float(
                sql(lab, f"SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), '{lsn}')")))
            sql(lab, "CHECKPOINT")
            figures["cluster_bytes"] = int(
                sql(lab, "SELECT sum(pg_database_size(oid)) FROM pg_database"))
            figures["archive_catch_up_seconds"] = round(wait_archived(lab), 1)

            # 2. the baselines
            gzip, gzip_dir = pg_basebackup(lab, "gzip", "-z")
            untar_gzip = untar(lab, gzip_dir)
            lab.ssh(NODE, ["rm", "-rf", gzip_dir])
            lz4, lz4_dir = pg_basebackup(lab, "lz4", "--compress=client-lz4")
            lab.ssh(NODE, ["rm", "-rf", lz4_dir])
            figures["baseline"] = {"pg_basebackup_gzip": gzip, "pg_basebackup_lz4": lz4,
                                   "untar_gzip": untar_gzip}

            # 3. pgBackRest, and pginfra-backup around it
            full = pgbackrest_backup(lab, 1)
            verify = pgbackrest_verify(lab, 1)
            seconds, out = run(lab, "runuser", "-u", "postgres", "--", BACKUP, "full",
                               "--repo", "1")
            ours = newest_backup(lab, 1)
            pginfra_full = {"seconds": round(seconds, 2), "stages": stages(out),
                            "bytes": ours["info"]["repository"]["size"],
                            "label": ours["label"]}
            full_s3 = pgbackrest_backup(lab, 2)
            restored = restore_empty_dir(lab)
            figures["pgbackrest"] = {
                "full_repo1": full, "verify_repo1": verify,
                "full_plus_verify_repo1": {"seconds": round(full["seconds"]
                                                            + verify["seconds"], 2)},
                "pginfra_backup_full_repo1": pginfra_full,
                "full_repo2_s3": full_s3,
                "restore_empty_dir_repo1": restored}

            # 4. point-in-time recovery
            figures["pgbackrest"]["pitr_repo1"] = recovery = pitr(lab)
            # stopped while S3 is still there: a server stopping without it would retry
            # archiving into repository 2 and hold the lab's shutdown
            run(lab, "systemctl", "stop", "postgresql@15-main")

    # 5. ratios: pgBackRest over its baseline
    pgbr = figures["pgbackrest"]
    for name, base in (("gzip", gzip), ("lz4", lz4)):
        figures[f"ratios_to_pg_basebackup_{name}"] = {
            "full_seconds": ratio(full["seconds"], base["seconds"]),
            "full_bytes": ratio(full["bytes"], base["bytes"]),
            "full_plus_verify_seconds": ratio(pgbr["full_plus_verify_repo1"]["seconds"],
                                              base["seconds"]),
            "pginfra_backup_full_seconds": ratio(pginfra_full["seconds"], base["seconds"]),
            "full_s3_seconds": ratio(full_s3["seconds"], base["seconds"]),
            "full_s3_bytes": ratio(full_s3["bytes"], base["bytes"])}
    figures["ratios_to_untar_gzip"] = {
        "restore_empty_dir_seconds": ratio(restored["seconds"], untar_gzip["seconds"]),
        "pitr_seconds": ratio(recovery["seconds"], untar_gzip["seconds"])}
    figures["bench_seconds"] = round(time.monotonic() - started_all, 1)
    write_results("backup", figures, args.short)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
