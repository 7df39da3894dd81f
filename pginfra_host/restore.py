"""Restore from pginfra's backups: a database from a verified dump, the whole cluster to a point
in time from pgBackRest, or this host rebuilt as a standby from pgBackRest.

    pginfra-restore list [--json]
    pginfra-restore dump --database NAME [--from LABEL|latest] [--s3] [--replace]
    pginfra-restore pitr --target-time "2026-11-23 16:30:00+00" [--repo N | --from-s3]
                         [--dry-run]
    pginfra-restore standby [--repo N]

``dump`` restores into a scratch database first and only then replaces NAME (with
--replace; without it an existing NAME is refused). It runs as postgres.

``pitr`` runs as root and refuses on a standby. It picks, from `pgbackrest info`, the newest
backup of the repository (default 1; --from-s3: 2) that stopped before the target (a target
before the oldest backup is refused), runs stop_command, `pgbackrest --repo=N --delta
--type=time --target=T --target-action=promote restore` (as postgres), start_command, and
waits for the promotion. Then it resets restore_command, recovery_target_time and
recovery_target_action (ALTER SYSTEM RESET, reload), which pgBackRest left in
postgresql.auto.conf, restarts the server (the targets change only at a restart), and prints
its report as the last line of stdout, one JSON object:
timeline (the new one), repo, backup, target_time, seconds. --dry-run prints the backup and the
command as JSON and changes nothing.

``standby`` runs as root and rebuilds this host as a standby from the repository: only when
the server is a standby, or is stopped with a standby.signal (never a primary). It stops the
server, runs `pgbackrest --repo=N --delta --type=standby restore`, starts it, waits until it
replays, and prints one JSON object with the replay LSN. primary_conninfo and
primary_slot_name come from the server's own configuration.

Exit codes: 0 success; 1 a stage failed; 2 bad usage or configuration (a refusal included);
75 another run of the same job holds its lock (skipped, not a failure).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

from pginfra_host import backup_config, catalog, dumps, pg, pgbr, runner, s3store, util
from pginfra_host.backup_config import Config
from pginfra_host.runner import JobLog

PROGRAM = "pginfra-restore"
RECOVERY_KEYS = ("restore_command", "recovery_target_time", "recovery_target_action")


# ---------------------------------------------------------------------------------------------
# dump

def find_dump(cfg: Config, log: JobLog, args, source: str):
    label = None if args.from_label in (None, "latest") else args.from_label
    store = None
    if args.s3:
        store = s3store.open_store(cfg, log, explicit=args.system_identifier)
        entries = store.entries()
    else:
        entries = dumps.local_entries(cfg)
    entries = [e for e in entries if e["kind"] == "dump" and e["database"] == source
               and (label is None or e["label"] == label)]
    good = [e for e in entries if dumps.usable(e)]
    if not good:
        where = "published in S3" if args.s3 else "verified locally"
        bad = [e for e in entries if e["state"] == "bad"]
        raise runner.Failed(f"no dump of {source} {where}" + (f" labelled {label}" if label else "")
                         + (f"; {len(bad)} marked bad, e.g. {bad[-1]['label']}: "
                            f"{bad[-1]['error']}" if bad else ""))
    return max(good, key=lambda e: e["label"]), store


def job_dump(cfg: Config, args, log: JobLog):
    from psycopg import sql

    name, source = args.database, args.source or args.database
    scratch = f"pginfra_restore_{name}"
    if len(scratch.encode()) > 63:
        raise runner.ConfigError(f"database name {name!r} is too long (the scratch database "
                              f"{scratch} must fit in 63 bytes)")
    entry, store = find_dump(cfg, log, args, source)
    (file_name, meta), = entry["manifest"]["files"].items()
    work = None
    try:
        if store is not None:
            work = Path(tempfile.mkdtemp(prefix=".restore-", dir=util.ensure_dir(cfg.backup_dir)))
            path = work / file_name
            with log.stage("download", detail=store.key("dumps", source, file_name)) as info:
                store.download(store.key("dumps", source, file_name), path, meta["size"])
                info.bytes = meta["size"]
        else:
            path = Path(entry["location"])
        with log.stage("check", detail=str(path)) as info:
            problems = util.check_files(path.parent, {file_name: meta})
            if problems:
                raise runner.Failed("; ".join(problems))
            info.bytes = meta["size"]
        with pg.connect(cfg, app="pginfra-restore") as conn:
            row = conn.execute("SELECT pg_get_userbyid(datdba) FROM pg_database "
                               "WHERE datname = %s", (name,)).fetchone()
            if row and not args.replace:
                raise runner.Failed(f"database {name} exists: pass --replace to replace it (it is "
                                 f"dropped only once the restore into {scratch} succeeded)")
            with log.stage("pg_restore", detail=f"{source}/{file_name} into {scratch}") as info:
                conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
                    sql.Identifier(scratch)))
                conn.execute(sql.SQL("CREATE DATABASE {} TEMPLATE template0").format(
                    sql.Identifier(scratch)))
                cmd = [cfg.bin("pg_restore"), "--no-password", "-d",
                       pg.conninfo(cfg, scratch), str(path)]
                if args.no_owner:
                    cmd[1:1] = ["--no-owner", "--no-privileges"]
                proc = util.run(cmd)
                if proc.returncode != 0:
                    conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
                        sql.Identifier(scratch)))
                    raise runner.Failed(f"pg_restore exited with {proc.returncode} (scratch "
                                     f"database dropped; {name} untouched): "
                                     f"{util.tail(proc.stderr)}")
                info.bytes = meta["size"]
            with log.stage("swap", detail=f"{scratch} -> {name}"):
                if row:
                    conn.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(
                        sql.Identifier(name)))
                conn.execute(sql.SQL("ALTER DATABASE {} RENAME TO {}").format(
                    sql.Identifier(scratch), sql.Identifier(name)))
                if row:
                    conn.execute(sql.SQL("ALTER DATABASE {} OWNER TO {}").format(
                        sql.Identifier(name), sql.Identifier(row[0])))
    finally:
        if work is not None:
            shutil.rmtree(work, ignore_errors=True)
    return {"database": name, "source": source, "label": entry["label"],
            "from": "s3" if store is not None else "local", "replaced": bool(row)}


# ---------------------------------------------------------------------------------------------
# pitr, standby

def parse_target(text: str) -> datetime:
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        raise runner.ConfigError(f"--target-time {text!r}: not a time like "
                              "'2026-11-23 16:30:00+00'") from None
    if moment.tzinfo is None:
        raise runner.ConfigError(f"--target-time {text!r}: give a numeric UTC offset "
                              "(e.g. +00), PostgreSQL would otherwise read it in its timezone")
    return moment


def need_root(what: str) -> None:
    if os.geteuid() != 0:
        raise runner.ConfigError(f"{what} must run as root: it stops and starts the server")


def run_command(argv: list[str], what: str, timeout: float) -> None:
    # Output to a file, not a pipe: a server started by the command may keep a pipe open.
    with tempfile.TemporaryFile(mode="w+") as out:
        try:
            proc = subprocess.run(argv, stdout=out, stderr=subprocess.STDOUT, text=True,
                                  timeout=timeout, stdin=subprocess.DEVNULL)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise runner.Failed(f"{what} {argv}: {exc}") from None
        out.seek(0)
        output = out.read()
    if proc.returncode != 0:
        raise runner.Failed(f"{what} {argv} exited with {proc.returncode}: {util.tail(output)}")


def stop_server(cfg: Config, log: JobLog, timeout: float = 120) -> None:
    data_dir = Path(cfg.data_directory)
    with log.stage("stop", detail=" ".join(cfg.stop_command)):
        run_command(cfg.stop_command, "stop_command", 600)
        deadline = time.monotonic() + timeout
        while (data_dir / "postmaster.pid").exists():
            if time.monotonic() > deadline:
                raise runner.Failed(f"{data_dir}/postmaster.pid still there {timeout:.0f}s after "
                                 "stop_command: the server is still running")
            time.sleep(0.5)


def start_and_wait(cfg: Config, log: JobLog, psql: pg.Psql, query: str, what: str,
                   timeout: float) -> None:
    """start_command, then until ``query`` answers t (or the server stops: recovery failed)."""
    data_dir = Path(cfg.data_directory)
    with log.stage("start", detail=" ".join(cfg.start_command)) as info:
        run_command(cfg.start_command, "start_command", timeout)
        deadline, last = time.monotonic() + timeout, ""
        while time.monotonic() < deadline:
            try:
                if psql(query, timeout=30) == "t":
                    info.detail = f"{' '.join(cfg.start_command)}: {what}"
                    return
                last = f"not {what} yet"
            except (runner.Failed, subprocess.TimeoutExpired) as exc:
                last = str(exc)
                if not (data_dir / "postmaster.pid").exists():
                    raise runner.Failed("the server is not running any more (recovery failed?): "
                                     f"see its log; last answer: {last}") from None
            time.sleep(1)
        raise runner.Failed(f"not {what} after {timeout:.0f}s ({last}); the server is left "
                         "running")


def in_recovery(cfg: Config, psql: pg.Psql) -> bool | None:
    """None: the server is not running."""
    if not (Path(cfg.data_directory) / "postmaster.pid").exists():
        return None
    return psql("SELECT pg_is_in_recovery()", timeout=30) == "t"


def job_pitr(cfg: Config, args, log: JobLog):
    target = parse_target(args.target_time)
    if target > util.utcnow():
        raise runner.ConfigError(f"--target-time {util.iso(target)} is in the future; recovery "
                              "would end before reaching it")
    if args.from_s3 and cfg.s3 is None:
        raise runner.ConfigError("--from-s3: the configuration has no s3 section (repo 2)")
    repo = 2 if args.from_s3 else args.repo or 1
    if not args.dry_run:
        need_root("pitr")
    psql = pg.Psql(cfg)
    if in_recovery(cfg, psql) or (Path(cfg.data_directory) / "standby.signal").exists():
        raise runner.ConfigError("refusing: this server is a standby; run pitr on the primary "
                              "and rebuild the standbys afterwards (pginfra-restore standby)")
    with log.stage("pgbackrest-info", detail=f"repo{repo}"):
        backups = pgbr.repo_backups(pgbr.pgbackrest_info(cfg, repo), repo)
    backup = pgbr.choose_backup(backups, target)
    restore = ["--delta", "--type=time", f"--target={args.target_time}",
               "--target-action=promote", "restore"]
    plan = {"repo": repo, "backup": pgbr.backup_summary(backup), "target_time": args.target_time,
            "command": shlex.join(pgbr.pgbackrest_command(cfg, *restore, repo=repo))}
    log.emit("choose", "ok", detail=f"repo{repo}: backup {backup['label']}, stopped "
             f"{plan['backup']['stop']}, for {args.target_time}")
    if args.dry_run:
        print(json.dumps({"dry_run": True, **plan}), flush=True)
        return None
    started = time.monotonic()
    stop_server(cfg, log)
    with log.stage("restore", detail=plan["command"]):
        proc = pgbr.pgbackrest(cfg, *restore, repo=repo)
        if proc.returncode != 0:
            raise pgbr.pgbackrest_failed(proc, "restore")
    start_and_wait(cfg, log, psql, "SELECT NOT pg_is_in_recovery()", "promoted", args.timeout)
    with log.stage("finish") as info:
        for key in RECOVERY_KEYS:
            psql(f"ALTER SYSTEM RESET {key}")
        psql("SELECT pg_reload_conf()")
        timeline = int(psql("SELECT substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8)"), 16)
        info.detail = f"timeline {timeline}; {', '.join(RECOVERY_KEYS)} reset"
    # recovery_target_* change only at a restart: until one, the server keeps the old target
    # and reports it as a pending restart (which the health check would flag).
    stop_server(cfg, log)
    start_and_wait(cfg, log, psql, "SELECT NOT pg_is_in_recovery()", "running", args.timeout)
    return {"timeline": timeline, "repo": repo, "backup": backup["label"],
            "backup_stop": plan["backup"]["stop"], "target_time": args.target_time,
            "data_directory": cfg.data_directory,
            "seconds": round(time.monotonic() - started, 3)}


def job_standby(cfg: Config, args, log: JobLog):
    need_root("standby")
    repo = args.repo or 1
    psql = pg.Psql(cfg)
    signal = Path(cfg.data_directory) / "standby.signal"
    running = in_recovery(cfg, psql)
    if running is False:
        raise runner.ConfigError("refusing: this server is a primary (not in recovery); only a "
                              "standby is rebuilt")
    if running is None and not signal.exists():
        raise runner.ConfigError(f"refusing: the server is stopped and {signal} is absent, so it "
                              "may be a primary; only a standby is rebuilt")
    with log.stage("info", detail=f"repo{repo}") as info:
        backup = pgbr.repo_backups(pgbr.pgbackrest_info(cfg, repo), repo)[-1]["label"]
        info.detail = f"repo{repo}: newest backup {backup}"
    started = time.monotonic()
    if running:
        stop_server(cfg, log)
    restore = ["--delta", "--type=standby", "restore"]
    with log.stage("restore", detail=shlex.join(pgbr.pgbackrest_command(cfg, *restore,
                                                                        repo=repo))):
        proc = pgbr.pgbackrest(cfg, *restore, repo=repo)
        if proc.returncode != 0:
            raise pgbr.pgbackrest_failed(proc, "restore")
    start_and_wait(cfg, log, psql, "SELECT pg_is_in_recovery() AND "
                   "pg_last_wal_replay_lsn() IS NOT NULL", "replaying", args.timeout)
    return {"replay_lsn": psql("SELECT pg_last_wal_replay_lsn()"), "repo": repo,
            "backup": backup, "data_directory": cfg.data_directory,
            "seconds": round(time.monotonic() - started, 3)}


# ---------------------------------------------------------------------------------------------

JOBS = {"list": (catalog.job_list, "list"), "dump": (job_dump, "restore-dump"),
        "pitr": (job_pitr, "pitr"), "standby": (job_standby, "restore-standby")}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pginfra-restore", formatter_class=argparse.RawDescriptionHelpFormatter,
        description=__doc__)
    parser.add_argument("--config", default=backup_config.DEFAULT_CONFIG,
                        help=f"the JSON configuration (default {backup_config.DEFAULT_CONFIG})")
    sub = parser.add_subparsers(dest="command", required=True, metavar="SUBCOMMAND")

    p = sub.add_parser("list", help="pgBackRest's backups and the dumps (as pginfra-backup)",
                       epilog=runner.EXIT_CODES_HELP)
    p.add_argument("--json", action="store_true", help="one JSON document")
    p.add_argument("--local", action="store_true", help="do not look for dumps in S3")

    p = sub.add_parser("dump", help="restore a database from a verified dump (as postgres)",
                       description="Restore the newest (or the named) verified dump into "
                       "database NAME: into a scratch database pginfra_restore_NAME first; "
                       "then NAME is created from it, or, with --replace, replaced (dropped WITH "
                       "(FORCE), its sessions ended, and the scratch database renamed, owner "
                       "kept). Database-level settings "
                       "and grants of a replaced database are not carried over.",
                       epilog=runner.EXIT_CODES_HELP)
    p.add_argument("--database", required=True, metavar="NAME", help="the database to create")
    p.add_argument("--source", metavar="DB",
                   help="restore the dumps of this database (default: NAME)")
    p.add_argument("--from", dest="from_label", metavar="LABEL|latest", default="latest",
                   help="which dump (default: latest verified)")
    p.add_argument("--s3", action="store_true",
                   help="take the published copy from S3 (downloaded, SHA-256 checked)")
    p.add_argument("--replace", action="store_true", help="replace NAME if it exists")
    p.add_argument("--no-owner", action="store_true",
                   help="pg_restore --no-owner --no-privileges (roles missing here)")
    p.add_argument("--system-identifier", metavar="ID",
                   help="with --s3: which cluster's dumps (default: this one's)")

    p = sub.add_parser("pitr", help="point-in-time recovery of the cluster (as root)",
                       description="Stop the server, restore it with pgBackRest (--delta, "
                       "--type=time) from the newest backup that stopped before the target, "
                       "recover to the target time, promote, reset the recovery settings, "
                       "restart, and report the new timeline as JSON. Refused on a standby.",
                       epilog=runner.EXIT_CODES_HELP)
    p.add_argument("--target-time", required=True, metavar="TIME",
                   help="with a numeric UTC offset, e.g. '2026-11-23 16:30:00+00'")
    where = p.add_mutually_exclusive_group()
    where.add_argument("--repo", type=int, metavar="N", help="the repository (default 1)")
    where.add_argument("--from-s3", action="store_true", help="repository 2, in S3")
    p.add_argument("--timeout", type=float, default=3600, metavar="SECONDS",
                   help="wait this long for start_command and the promotion (default 3600)")
    p.add_argument("--dry-run", action="store_true",
                   help="print the backup and the command as JSON, change nothing")

    p = sub.add_parser("standby", help="rebuild this host as a standby (as root)",
                       description="Only on a standby, or a stopped server with standby.signal: "
                       "stop it, restore it with pgBackRest (--delta, --type=standby), start "
                       "it and wait until it replays; print the replay LSN as JSON.",
                       epilog=runner.EXIT_CODES_HELP)
    p.add_argument("--repo", type=int, metavar="N", help="the repository (default 1)")
    p.add_argument("--timeout", type=float, default=3600, metavar="SECONDS",
                   help="wait this long for start_command and replay (default 3600)")
    return parser


def main(argv: list[str] | None = None) -> int:
    os.umask(0o077)  # logs and state are the postgres user's alone
    args = build_parser().parse_args(argv)
    body, job = JOBS[args.command]
    cluster = args.command in ("pitr", "standby")
    return runner.run_job(PROGRAM, job, args.config, body, args,
                          load=backup_config.load_config,
                       stream=sys.stderr if args.command == "list" else "stdout",
                       as_root=cluster, argv=argv, print_result=cluster,
                       lock_name="restore-cluster" if cluster else None)


if __name__ == "__main__":
    sys.exit(main())
