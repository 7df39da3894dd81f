"""Back up this host's PostgreSQL cluster: physical backups with pgBackRest (which also archives
the WAL and expires old backups by itself), logical dumps kept locally and in S3, their
verification and retention, and restore drills.

    pginfra-backup full [--repo N]          pgbackrest --type=full backup into each repository,
                                            then verify it
    pginfra-backup diff [--repo N]          --type=diff (pgBackRest makes the first one of a
                                            repository a full one); the verify job checks it
    pginfra-backup verify [--repo N] [--s3] pgbackrest check and verify (parsed), the dumps
    pginfra-backup dump [--database DB]     pg_dump -Fc of each database + the globals, to S3
    pginfra-backup drill [--database DB]    restore the newest dumps, compare row counts
    pginfra-backup retention [--dry-run]    pgbackrest expire; old dumps; the old layout
    pginfra-backup list [--json]            pgBackRest's backups and the dumps

The configuration is /etc/pginfra/backup.json (--config PATH before the subcommand); its
"pgbackrest" section names pgBackRest's configuration file, the stanza, the repositories this
host backs up into (repo 1 local in wal_archive_dir, repo 2 in S3), whether to back up from a
standby, and repo 1's full-backup count. Every pgbackrest call runs as postgres with
--config=<file> --config-include-path=<its directory>/conf.d --stanza=<stanza>.

full and diff back up each repository in turn (a failed one does not stop the next), with
--backup-standby when configured: when no standby answers (pgBackRest's exit code 56) a
warning is logged and the backup is taken from the primary. After a full backup each
repository is verified (pgBackRest 2.45 verifies a whole repository, so a differential is
left to the daily verify job).
verify runs `pgbackrest check` (archiving into every repository works) and `pgbackrest
verify` for each repository; verify exits 0 whatever it finds, so its text is parsed: any
status other than ok, a backup not valid, any missing, checksum invalid, size invalid or other
file fails, naming the backup. Both write the result to state_dir/pgbackrest-verify.json
(read by pginfra-health). verify also checks the newest dump of each database (and, with --s3,
its published copy).

Dumps live under backup_dir/dumps/<db>/<label>.dump with <label>.json (sizes, SHA-256,
verified, row counts), dumps/_globals/<label>.sql (roles, no passwords), and in S3 under
{s3.prefix}/{host}/{system_identifier}/dumps/: each file goes to a temporary key, is checked
and copied to its key, then the manifest is put (that is what "published" means). A dump
that verify finds broken is marked bad and counts for nothing from then on. A dump run also
publishes the verified dumps an earlier run could not.

retention runs `pgbackrest expire` (not on a standby), keeps keep_local_dumps verified dumps
of each database and, in S3, removes dumps older than s3.keep_days (never the newest). It also
removes what the pre-pgBackRest layout left: base backups in backup_dir/base/ and loose WAL
files in wal_archive_dir (never pgBackRest's archive/ and backup/), but only once repo 1 holds
pgbackrest.retention_full full backups that the last verify found valid; then, in S3, the old
base/ and wal/ objects older than s3.keep_days.

Each job takes the lock state_dir/locks/<job>.lock (full and diff share backup.lock; held:
exit 75), logs JSON lines to stdout and log_dir/<job>.log and, on success, writes
state_dir/last-success/<job>.json (full and diff: each repository's backup label, size and
stop time). On a standby full, diff, dump and drill log "standby: skipped" and exit 0.

Exit codes: 0 success; 1 a stage failed (the rest was finished where safe); 2 bad usage or
configuration; 75 another run of the same job holds its lock (skipped, not a failure).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
from datetime import timedelta
from pathlib import Path

from pginfra_host import backup_config, catalog, dumps, pg, pgbr, runner, s3store, util
from pginfra_host.backup_config import Config
from pginfra_host.runner import JobLog

PROGRAM = "pginfra-backup"


def chosen_repos(cfg: Config, repo: int | None) -> list[int]:
    if repo is None:
        return list(cfg.pgbackrest.repos)
    if repo not in cfg.pgbackrest.repos:
        raise runner.ConfigError(f"--repo {repo}: not one of pgbackrest.repos "
                              f"{cfg.pgbackrest.repos}")
    return [repo]


# ---------------------------------------------------------------------------------------------
# full, diff

def backup_repo(cfg: Config, log: JobLog, repo: int, kind: str) -> bool:
    """One pgbackrest backup into ``repo``, from a standby when configured (from the primary
    when none answers). False: it failed (logged)."""
    standby = cfg.pgbackrest.backup_standby
    try:
        with log.stage("backup", detail=f"repo{repo} {kind}") as info:
            proc = pgbr.pgbackrest(cfg, f"--type={kind}",
                                  *(["--backup-standby"] if standby else []), "backup",
                                  repo=repo)
            if standby and proc.returncode == pgbr.PGBR_NO_STANDBY:
                log.emit("backup-standby", "warning",
                         detail=f"repo{repo}: {util.tail(proc.stderr, 2)}: no standby answers; "
                         "taking the backup from the primary")
                proc = pgbr.pgbackrest(cfg, f"--type={kind}", "backup", repo=repo)
            if proc.returncode != 0:
                raise pgbr.pgbackrest_failed(proc, "backup")
            if proc.stderr.strip():  # warnings, e.g. a diff made a full
                info.detail += f": {util.tail(proc.stderr, 3)}"
    except runner.Failed:
        return False
    return True


def repository_elsewhere(cfg: Config, log: JobLog, stage: str) -> bool:
    """With postgres_ha, pgBackRest's own jobs (backups, expiry, check, verify) run on the
    repository host whatever its server's role now: pgBackRest finds the primary among
    pg1..pgN. True (logged as skipped) on any other member."""
    if cfg.ha and not cfg.repository_host:
        log.emit(stage, "skipped", detail="the repository host runs pgBackRest's jobs; with "
                 "postgres_ha it backs up whichever member leads")
        return True
    return False


def role_skip(cfg: Config, log: JobLog) -> bool:
    """Whether a pgBackRest backup sits this run out here (logged; the job exits 0): without
    HA on a standby, with HA anywhere but the repository host."""
    if cfg.ha:
        return repository_elsewhere(cfg, log, "repository")
    with pg.connect(cfg) as conn:
        return pg.standby_skip(conn, log)


def job_backup(cfg: Config, args, log: JobLog):
    repos = chosen_repos(cfg, args.repo)
    if role_skip(cfg, log):
        return {"skipped": "standby" if not cfg.ha else "not the repository host"}
    results, done = {}, {}
    for repo in repos:
        if not backup_repo(cfg, log, repo, args.command):
            continue
        if args.command == "full":  # verify reads the whole repository (2.45 has no --set):
            # weekly with each full; the differentials are checked by the daily verify job
            results[repo] = pgbr.verify_repo(cfg, log, repo)
        with contextlib.suppress(runner.Failed), \
                log.stage("pgbackrest-info", detail=f"repo{repo}") as info:
            newest = pgbr.repo_backups(pgbr.pgbackrest_info(cfg, repo), repo)[-1]
            done[str(repo)] = pgbr.backup_summary(newest)
            info.detail = (f"repo{repo}: {newest['type']} backup {newest['label']}, "
                           f"{util.human(newest['info']['repository']['delta'])} stored")
    if results:
        pgbr.record_verify(cfg, results)
    return {"repos": done}


# ---------------------------------------------------------------------------------------------
# dump

def run_pg_dump(cfg: Config, db: str, target: Path) -> dict:
    """pg_dump -Fc of ``db`` in an exported snapshot, and, in that same snapshot, the exact
    row count of every table: what the drill compares a restore against."""
    with pg.connect(cfg, db) as conn:
        conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
        snapshot = conn.execute("SELECT pg_export_snapshot()").fetchone()[0]
        with tempfile.TemporaryFile(mode="w+") as err:
            proc = subprocess.Popen(
                [cfg.bin("pg_dump"), "-Fc", "--no-password", f"--snapshot={snapshot}",
                 "-f", str(target), "-d", pg.conninfo(cfg, db)],
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err,
                env={**os.environ, "LC_ALL": "C"})
            try:
                counts = pg.row_counts(conn)
            except BaseException:
                proc.kill()
                proc.wait()
                raise
            rc = proc.wait()
            err.seek(0)
            errors = err.read()
        conn.execute("COMMIT")
    if rc != 0:
        raise runner.Failed(f"pg_dump of {db} exited with {rc}: {util.tail(errors)}")
    return counts


def dump_one(cfg: Config, log: JobLog, db: str, label: str, common: dict) -> dict:
    kind = "globals" if db == dumps.GLOBALS else "dump"
    ext = "sql" if kind == "globals" else "dump"
    directory = util.ensure_dir(Path(cfg.backup_dir) / "dumps" / db)
    partial, final = directory / f"{label}.{ext}.partial", directory / f"{label}.{ext}"
    manifest = {**common, "label": label, "kind": kind, "database": db,
                "start_time": util.iso(util.utcnow()), "end_time": None, "files": {},
                "verified": False, "error": None}
    try:
        if kind == "dump":
            with log.stage("pg_dump", detail=db) as info:
                manifest["row_counts"] = run_pg_dump(cfg, db, partial)
                info.bytes = partial.stat().st_size
        else:
            with log.stage("pg_dumpall", detail="--globals-only --no-role-passwords") as info:
                proc = util.run([cfg.bin("pg_dumpall"), "--globals-only", "--no-role-passwords",
                                "--no-password", "-h", cfg.socket_dir, "-p", str(cfg.port),
                                "-f", str(partial)])
                if proc.returncode != 0:
                    raise runner.Failed(f"pg_dumpall exited with {proc.returncode}: "
                                     f"{util.tail(proc.stderr)}")
                info.bytes = partial.stat().st_size
        manifest["end_time"] = util.iso(util.utcnow())
        with log.stage("verify", detail=f"{db}/{final.name}") as info:
            problem = (dumps.verify_dump_file(partial, cfg) if kind == "dump"
                       else dumps.verify_globals_file(partial))
            if problem:
                raise runner.Failed(problem)
            digest, size = util.sha256_file(partial)
            info.bytes = size
        manifest["files"] = {final.name: {"size": size, "sha256": digest}}
        manifest["verified"] = True
        partial.rename(final)
    except runner.Failed as exc:
        manifest["error"] = str(exc)
    util.write_json(directory / f"{label}.json", manifest)
    return manifest


def job_dump(cfg: Config, args, log: JobLog):
    with pg.connect(cfg) as conn:
        if pg.standby_skip(conn, log):
            return {"skipped": "standby"}
        sysid = pg.sql_system_identifier(conn)
        version = conn.info.server_version
    databases = args.database or cfg.databases
    if not args.no_globals:
        databases = [*databases, dumps.GLOBALS]
    dumps_dir = util.ensure_dir(Path(cfg.backup_dir) / "dumps")
    label = dumps.fresh_label(lambda label: any(
        (dumps_dir / db / f"{label}.json").exists() for db in databases))
    common = {"host": cfg.host, "system_identifier": sysid, "server_version": version}
    done = [m for m in (dump_one(cfg, log, db, label, common) for db in databases)
            if m["verified"]]
    published = []
    if cfg.s3 is not None and not args.no_upload:
        # this run's dumps, and the verified ones an earlier run could not publish
        store = s3store.S3Store(cfg.s3, cfg.host, sysid, log)
        for entry in dumps.local_entries(cfg):
            if not dumps.usable(entry) or (entry["published"] and not entry["published_bad"]) \
                    or str(entry["manifest"].get("system_identifier")) != sysid:
                continue
            name = f"{entry['database']}/{entry['label']}"
            try:
                catalog.publish_entry(cfg, store, log, entry)
                published.append(name)
            except runner.Failed:
                log.emit("dump", "failed", detail=f"{name} is verified and kept locally but "
                         "not published; the next dump run retries")
    return {"label": label, "databases": [m["database"] for m in done],
            "published": published}


# ---------------------------------------------------------------------------------------------
# retention

def expire_dumps_local(cfg: Config, log: JobLog, dry_run: bool) -> int:
    groups: dict[str | None, list[dict]] = {}
    for entry in dumps.local_entries(cfg):
        groups.setdefault(entry["database"], []).append(entry)
    deleted = 0
    for db, group in sorted(groups.items()):
        items = [dumps.Item(e["label"], dumps.usable(e), e) for e in group]
        for item in dumps.select_local_retention(items, cfg.keep_local_dumps)[1]:
            entry = item.ref
            with log.stage("expire-local", detail=f"{entry['kind']} {db} {entry['label']} "
                           f"({entry['state']})") as info:
                if not dry_run:
                    dumps.remove_paths(entry["paths"])
                info.bytes, info.status = entry["size"], "dry-run" if dry_run else "ok"
                deleted += 1
    return deleted


def expire_dumps_s3(cfg: Config, store: s3store.S3Store, log: JobLog, dry_run: bool) -> int:
    now = util.utcnow()
    groups: dict[str | None, list[dict]] = {}
    with log.stage("s3-list") as info:
        for entry in store.entries():
            groups.setdefault(entry["database"], []).append(entry)
        info.detail = f"s3://{store.bucket}/{store.root}dumps/"
    manifests, files = [], []
    for group in groups.values():
        items = [dumps.Item(e["label"], dumps.usable(e), e) for e in group]
        for item in dumps.select_s3_expiry(items, cfg.s3.keep_days, now):
            manifests += [k for k in item.ref["keys"] if k == item.ref["manifest_key"]]
            files += [k for k in item.ref["keys"] if k != item.ref["manifest_key"]]
    deleted = 0
    with log.stage("expire-s3", detail=f"older than {cfg.s3.keep_days} days") as info:
        if not dry_run:
            # Manifests first: a dump stops being published before its files go.
            deleted = store.delete_keys(manifests) + store.delete_keys(files)
        info.detail = (f"{len(manifests)} published dump(s) and {len(files)} object(s) older "
                       f"than {cfg.s3.keep_days} days with a newer published one")
        info.status = "dry-run" if dry_run else "ok"
    with log.stage("sweep-tmp") as info:
        older = now - timedelta(hours=24)
        prefix = store.key("tmp") + "/"
        stale = [o["Key"] for o in store.list(prefix) if o["LastModified"] < older]
        aborted = 0
        if not dry_run:
            deleted += store.delete_keys(stale)
            aborted = store.abort_multipart(prefix, older_than=older)
        info.detail = (f"{len(stale)} temporary object(s) and {aborted} multipart upload(s) "
                       "older than 24 h removed")
    return deleted


def legacy_cleanup(cfg: Config, log: JobLog, store: s3store.S3Store | None,
                   dry_run: bool) -> dict:
    """The pre-pgBackRest layout: base backups in backup_dir/base/, loose WAL in
    wal_archive_dir (and ship-wal's records), base/ and wal/ objects in S3 older than
    keep_days. Removed only once repo 1 holds retention_full full backups that the last
    verify found valid."""
    base_dir, wal_dir = Path(cfg.backup_dir) / "base", Path(cfg.wal_archive_dir)
    with log.stage("legacy", detail="the pre-pgBackRest layout") as info:
        bases = sorted(base_dir.iterdir()) if base_dir.is_dir() else []
        wal = [wal_dir / n for n in pgbr.legacy_wal_names(
            os.listdir(wal_dir) if wal_dir.is_dir() else []) if (wal_dir / n).is_file()]
        old_keys = []
        if store is not None:
            cutoff = util.utcnow() - timedelta(days=cfg.s3.keep_days)
            old_keys = [o["Key"] for part in ("base", "wal")
                        for o in store.list(store.key(part) + "/")
                        if o["LastModified"] < cutoff]
        if not (bases or wal or old_keys):
            info.detail = "nothing of it is left"
            return {}
        what = (f"{len(bases)} base backup(s) in {base_dir}"
                + (f" ({', '.join(p.name for p in bases)})" if bases else "")
                + f", {len(wal)} WAL file(s) in {wal_dir}"
                + (f" ({wal[0].name} .. {wal[-1].name})" if wal else "")
                + (f", {len(old_keys)} S3 object(s) under base/ and wal/ older than "
                   f"{cfg.s3.keep_days} days" if store is not None else ""))
        need = cfg.pgbackrest.retention_full
        clean = pgbr.clean_fulls(pgbr.pgbackrest_info(cfg, 1), 1,
                                util.read_json(Path(cfg.state_dir) / pgbr.VERIFY_STATE))
        if len(clean) < need:
            info.status = "waiting"
            info.detail = (f"kept: {what}; until repo1 holds {need} full backup(s) that the "
                           f"last verify found valid (now {len(clean)})")
            return {}
        info.bytes = sum(dumps.tree_size(p) for p in [*bases, *wal])
        if not dry_run:
            dumps.remove_paths([*bases, *wal, Path(cfg.state_dir) / "wal-shipped"])
            if store is not None:
                store.delete_keys(old_keys)
        info.status = "dry-run" if dry_run else "ok"
        info.detail = (("would remove " if dry_run else "removed ") + what
                       + f"; repo1 holds {len(clean)} valid full backup(s): "
                       + ", ".join(clean))
    return {"legacy_removed": len(bases) + len(wal) + len(old_keys)}


def job_retention(cfg: Config, args, log: JobLog):
    with pg.connect(cfg) as conn:
        standby = conn.execute("SELECT pg_is_in_recovery()").fetchone()[0]
        sysid = pg.sql_system_identifier(conn)
    if cfg.ha:
        repository_elsewhere(cfg, log, "pgbackrest-expire")
    elif standby:
        log.emit("pgbackrest-expire", "skipped", detail="this server is a standby: the "
                 "primary expires the repositories")
    if (cfg.repository_host if cfg.ha else not standby):
        with contextlib.suppress(runner.Failed), log.stage("pgbackrest-expire") as info:
            proc = pgbr.pgbackrest(cfg, *(["--dry-run"] if args.dry_run else []), "expire")
            if proc.returncode != 0:
                raise pgbr.pgbackrest_failed(proc, "expire")
            info.detail = util.tail(proc.stderr, 4) or "every repository, by its retention"
            info.status = "dry-run" if args.dry_run else "ok"
    summary = {"local_deleted": expire_dumps_local(cfg, log, args.dry_run)}
    store = None
    if cfg.s3 is not None:
        with contextlib.suppress(runner.Failed):
            store = s3store.open_store(cfg, log, explicit=sysid)
            summary["s3_deleted"] = expire_dumps_s3(cfg, store, log, args.dry_run)
    with contextlib.suppress(runner.Failed):
        summary.update(legacy_cleanup(cfg, log, store, args.dry_run))
    return summary


# ---------------------------------------------------------------------------------------------
# drill

def drop_database(conn, name: str) -> None:
    from psycopg import sql

    conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
        sql.Identifier(name)))


def drill_one(cfg: Config, log: JobLog, conn, db: str, entry: dict) -> None:
    from psycopg import sql

    scratch = f"pginfra_drill_{db}"
    if len(scratch.encode()) > 63:
        raise runner.Failed(f"{scratch}: longer than 63 bytes")
    dump = Path(entry["location"])
    try:
        with log.stage("drill-restore", detail=f"{db}/{dump.name} into {scratch}") as info:
            drop_database(conn, scratch)
            conn.execute(sql.SQL("CREATE DATABASE {} TEMPLATE template0").format(
                sql.Identifier(scratch)))
            proc = util.run([cfg.bin("pg_restore"), "--no-owner", "--no-privileges",
                            "--no-password", "-d", pg.conninfo(cfg, scratch), str(dump)])
            if proc.returncode != 0:
                raise runner.Failed(f"pg_restore exited with {proc.returncode}: "
                                 f"{util.tail(proc.stderr)}")
            info.bytes = entry["size"]
        with log.stage("drill-compare", detail=db) as info:
            with pg.connect(cfg, scratch) as restored_conn:
                restored = pg.row_counts(restored_conn)
            expected = entry["manifest"].get("row_counts")
            against = "the source as dumped (same snapshot)"
            if expected is None:
                with pg.connect(cfg, db) as source:
                    expected = pg.row_counts(source)
                against = "the live source (the dump recorded no counts)"
            differences = dumps.compare_counts(expected, restored)
            if differences:
                raise runner.Failed(f"{len(differences)} table(s) differ from {against}: "
                                 + "; ".join(differences[:20]))
            info.detail = (f"{db}: {len(restored)} table(s), "
                           f"{sum(restored.values())} row(s) match {against}")
    finally:
        with log.stage("drill-drop", detail=scratch):
            drop_database(conn, scratch)


def job_drill(cfg: Config, args, log: JobLog):
    databases = args.database or cfg.databases
    with pg.connect(cfg) as conn:
        if pg.standby_skip(conn, log):
            return {"skipped": "standby"}
        newest: dict[str, dict] = {}
        for entry in dumps.local_entries(cfg):
            if entry["kind"] == "dump" and dumps.usable(entry):
                newest[entry["database"]] = entry  # oldest first: the last one wins
        done = []
        for db in databases:
            if db not in newest:
                log.emit("drill", "failed", detail=f"{db}: no verified local dump to drill")
                continue
            try:
                drill_one(cfg, log, conn, db, newest[db])
                done.append(f"{db}/{newest[db]['label']}")
            except runner.Failed:
                continue
    return {"drilled": done}


# ---------------------------------------------------------------------------------------------
# verify

def job_verify(cfg: Config, args, log: JobLog):
    repos = chosen_repos(cfg, args.repo)
    if args.s3 and cfg.s3 is None:
        raise runner.ConfigError("--s3: the configuration has no s3 section")
    check_problem = None
    try:
        with pg.connect(cfg) as conn:
            standby = conn.execute("SELECT pg_is_in_recovery()").fetchone()[0]
    except runner.Failed:
        standby = False  # check then says what is wrong
    if cfg.ha:
        repository_elsewhere(cfg, log, "pgbackrest-check")
    elif standby:
        log.emit("pgbackrest-check", "skipped", detail="this server is a standby: the "
                 "primary's check proves archiving")
    if (cfg.repository_host if cfg.ha else not standby):
        with contextlib.suppress(runner.Failed), log.stage("pgbackrest-check") as info:
            proc = pgbr.pgbackrest(cfg, "check")
            if proc.returncode != 0:
                check_problem = str(pgbr.pgbackrest_failed(proc, "check"))
                raise runner.Failed(check_problem)
            info.detail = "WAL reaches every repository"
    results = {}
    for repo in repos if (cfg.repository_host or not cfg.ha) else []:
        result = pgbr.verify_repo(cfg, log, repo)
        if check_problem:
            result = {**result, "ok": False, "problems": [check_problem, *result["problems"]]}
        results[repo] = result
    if results:
        pgbr.record_verify(cfg, results)
    verified = verify_dumps(cfg, log, dumps.local_entries(cfg), None)
    if args.s3:
        try:
            with log.stage("s3-list") as info:
                store = s3store.open_store(cfg, log)
                entries = store.entries()
                info.detail = f"s3://{store.bucket}/{store.root}dumps/"
        except runner.Failed:
            pass
        else:
            verified += verify_dumps(cfg, log, entries, store)
    return {"repos": {str(r): v["ok"] for r, v in results.items()}, "dumps": verified}


def verify_dumps(cfg: Config, log: JobLog, entries: list[dict],
                 store: s3store.S3Store | None) -> list[str]:
    """The newest good dump of each database (and of the globals), local or (``store``) its
    published copy: checked, and marked bad when broken."""
    newest: dict[str, dict] = {}
    for entry in sorted((e for e in entries if dumps.usable(e)), key=lambda e: e["label"]):
        newest[entry["database"]] = entry
    if not newest:
        log.emit("verify", "skipped", detail="no " + ("published" if store else "verified local")
                 + " dump to verify")
    done = []
    for entry in newest.values():
        try:
            problems = (verify_s3_entry(cfg, store, log, entry) if store is not None
                        else check_copy(cfg, log, Path(entry["location"]).parent, entry))
        except runner.Failed:
            continue  # not checked: nothing is known about the dump, nothing is marked
        if not problems:
            done.append(f"{entry['where']}:{entry['database']}/{entry['label']}")
            continue
        with contextlib.suppress(runner.Failed), \
                log.stage("mark-bad", detail=describe(entry)) as info:
            where = catalog.mark_bad(cfg, entry, "; ".join(problems), store)
            info.detail = (f"{describe(entry)} ({entry['where']}) is bad, recorded in {where}: "
                           f"no longer restored, drilled or kept as a good one: "
                           f"{'; '.join(problems)}")
    return done


def check_entry(cfg: Config, directory: Path, entry: dict) -> list[str]:
    files = entry["manifest"].get("files") or {}
    problems = util.check_files(directory, files)
    if problems:
        return problems
    name = next(iter(files))
    problem = (dumps.verify_dump_file(directory / name, cfg) if entry["kind"] == "dump"
               else dumps.verify_globals_file(directory / name))
    return [problem] if problem else []


def describe(entry: dict) -> str:
    return (f"{entry['kind']} {entry['database'] + ' ' if entry['database'] else ''}"
            f"{entry['label']}")


def check_copy(cfg: Config, log: JobLog, directory: Path, entry: dict) -> list[str]:
    """The verify stage for the copy in ``directory``: what is wrong with it (nothing: it is
    good). An error that stops the check itself (unreadable, a timeout) raises a logged Failed:
    it says nothing about the backup."""
    what = describe(entry)
    problems: list[str] = []
    try:
        with log.stage("verify", detail=what) as info:
            problems = check_entry(cfg, directory, entry)
            if problems:
                raise runner.Failed("; ".join(problems))
            info.detail = f"{what}: every file matches its manifest"
            info.bytes = entry["size"]
    except runner.Failed:
        if not problems:
            raise
    return problems


def verify_s3_entry(cfg: Config, store: s3store.S3Store, log: JobLog,
                    entry: dict) -> list[str]:
    """Download the published copy and check it (``check_copy``). A file missing from S3 is a
    problem of the copy; a download that fails otherwise (S3 unreachable) raises."""
    work = Path(tempfile.mkdtemp(prefix=".verify-", dir=util.ensure_dir(cfg.backup_dir)))
    try:
        for name, meta in sorted((entry["manifest"].get("files") or {}).items()):
            key = store.key("dumps", entry["database"], name)
            with log.stage("download", detail=key) as info:
                try:
                    store.download(key, work / name, meta["size"])
                except Exception as exc:
                    if not s3store.is_not_found(exc):
                        raise
                    (work / name).unlink(missing_ok=True)
                    info.status, info.detail = "missing", f"{key}: not in S3"
                else:
                    info.bytes = (work / name).stat().st_size
        return check_copy(cfg, log, work, entry)
    finally:
        shutil.rmtree(work, ignore_errors=True)


# ---------------------------------------------------------------------------------------------

JOBS = {"full": job_backup, "diff": job_backup, "dump": job_dump, "retention": job_retention,
        "drill": job_drill, "verify": job_verify, "list": catalog.job_list}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pginfra-backup", formatter_class=argparse.RawDescriptionHelpFormatter,
        description=__doc__)
    parser.add_argument("--config", default=backup_config.DEFAULT_CONFIG,
                        help=f"the JSON configuration (default {backup_config.DEFAULT_CONFIG})")
    sub = parser.add_subparsers(dest="command", required=True, metavar="SUBCOMMAND")

    for kind in ("full", "diff"):
        p = sub.add_parser(kind, help=f"pgbackrest --type={kind} backup into each repository",
                           description=f"Take a {kind} backup with pgBackRest into each "
                           "repository of pgbackrest.repos (--backup-standby when configured; "
                           "from the primary when no standby answers), verify the repository "
                           "and record each backup's label, size and stop time. Does nothing "
                           "on a standby.", epilog=runner.EXIT_CODES_HELP)
        p.add_argument("--repo", type=int, metavar="N", help="only this repository")

    p = sub.add_parser("verify", help="pgbackrest check and verify, and the newest dumps",
                       description="Run pgbackrest check (WAL reaches every repository; not on "
                       "a standby) and pgbackrest verify for each repository, whose text is "
                       "parsed (it exits 0 whatever it finds); record the result in "
                       "state_dir/pgbackrest-verify.json. Check the newest verified dump of "
                       "each database against its manifest with a full pg_restore read (with "
                       "--s3 also the published copy); a broken dump is marked bad.",
                       epilog=runner.EXIT_CODES_HELP)
    p.add_argument("--repo", type=int, metavar="N", help="only this repository")
    p.add_argument("--s3", action="store_true", help="also the dumps' copies in S3")

    p = sub.add_parser("dump", help="pg_dump -Fc of each database and the globals, verified",
                       description="Dump each configured database (pg_dump -Fc, with the exact "
                       "row count of every table taken in the same snapshot) and the globals "
                       "(pg_dumpall --globals-only --no-role-passwords); check each with a full "
                       "pg_restore read; publish them to S3, with the verified dumps an "
                       "earlier run could not publish.", epilog=runner.EXIT_CODES_HELP)
    p.add_argument("--database", action="append", metavar="DB",
                   help="dump only this database (repeatable; default: 'databases' of the "
                   "configuration)")
    p.add_argument("--no-globals", action="store_true", help="skip the roles and tablespaces")
    p.add_argument("--no-upload", action="store_true", help="keep them local even with s3 set")

    p = sub.add_parser("retention", help="pgbackrest expire, old dumps, the old layout",
                       description="Run pgbackrest expire (every repository; not on a "
                       "standby). Keep the newest keep_local_dumps verified dumps of each "
                       "database (one marked bad never counts; failed or partial ones older "
                       "than the newest verified go); in S3 delete dumps older than "
                       "s3.keep_days when a newer published one exists, and stale temporary "
                       "keys. Remove the pre-pgBackRest layout (backup_dir/base/, loose WAL in "
                       "wal_archive_dir, S3 base/ and wal/ older than s3.keep_days) once repo 1 "
                       "holds pgbackrest.retention_full full backups the last verify found "
                       "valid.", epilog=runner.EXIT_CODES_HELP)
    p.add_argument("--dry-run", action="store_true", help="log what would go, delete nothing")

    p = sub.add_parser("drill", help="restore the newest dumps into scratch databases, compare",
                       description="Restore the newest verified dump of each database into "
                       "pginfra_drill_<db> (pg_restore --no-owner --no-privileges), compare "
                       "the exact row count of every table with the source's as dumped, and "
                       "drop the scratch database, also on failure. Any difference fails.",
                       epilog=runner.EXIT_CODES_HELP)
    p.add_argument("--database", action="append", metavar="DB",
                   help="drill only this database (repeatable)")

    p = sub.add_parser("list", help="pgBackRest's backups and the dumps",
                       description="List pgBackRest's backups in each repository (label, type, "
                       "start and stop, size) and the dumps here and in S3 with their state "
                       "(verified, bad, failed, partial; published, bad, unpublished).",
                       epilog=runner.EXIT_CODES_HELP)
    p.add_argument("--json", action="store_true", help="one JSON document")
    p.add_argument("--local", action="store_true", help="do not look for dumps in S3")
    return parser


def main(argv: list[str] | None = None) -> int:
    os.umask(0o077)  # dumps, logs and state are the postgres user's alone
    args = build_parser().parse_args(argv)
    return runner.run_job(PROGRAM, args.command, args.config, JOBS[args.command], args,
                          load=backup_config.load_config,
                       stream=sys.stderr if args.command == "list" else "stdout",
                       argv=argv, lock_name="backup" if args.command in ("full", "diff")
                       else None)


if __name__ == "__main__":
    sys.exit(main())
