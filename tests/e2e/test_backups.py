"""Backups that restore, on the lab's host, with pgBackRest: repository 1 local (in the WAL
archive directory), repository 2 on S3 served by moto behind TLS from the lab's CA on the lab
network. Full and differential backups verified, point-in-time recovery to exact rows from
either repository (S3 alone included), a corrupted file caught by verify, S3 killed for two
minutes under pgbench writes without losing a segment, overlapping runs, and no secret on the
host's logs, process list, cron or configuration."""

from __future__ import annotations

import json
import subprocess
import time

import pytest
from conftest import CA_DIR, GATEWAY, control_env, deploy_ok, run_pyinfra, sql, wait_for

from pginfra_lab.s3_local import client as s3_client
from pginfra_lab.s3_local import local_s3

BACKUP = "/usr/local/lib/pginfra/pginfra-backup"
RESTORE = "/usr/local/lib/pginfra/pginfra-restore"
HEALTH = "/usr/local/lib/pginfra/pginfra-health"
CONFIG = "/etc/pginfra/backup.json"
STATE = "/var/lib/pginfra/backup"
ARCHIVE = "/var/lib/postgresql/wal-archive"
BUCKET = "pginfra-e2e"
KEYS = {"PGINFRA_PASSWORD_S3_ACCESS_KEY_ID": "e2e-access-key",
        "PGINFRA_PASSWORD_S3_SECRET_ACCESS_KEY": "e2e-secret-key-not-in-any-log"}


@pytest.fixture(scope="module")
def s3(lab, first_deploy):
    """A moto S3 endpoint over TLS (the lab's CA) the host reaches on the lab network, and the
    host deployed to use it as pgBackRest's second repository."""
    with local_s3(GATEWAY, buckets=[BUCKET], ca_dir=CA_DIR) as endpoint:
        data = ["--data", f"backup_s3_bucket={BUCKET}",
                "--data", f"backup_s3_endpoint_url={endpoint}",
                "--data", f"backup_s3_ca_file={endpoint.ca}"]
        deployed = deploy_ok(lab, *data, env=control_env(lab, **KEYS))
        yield {"client": s3_client(endpoint), "endpoint": endpoint, "data": data,
               "deploy": deployed}
        deploy_ok(lab)  # back to the rehearsal's own data: the local repository only


def run(lab, *command, user="postgres", check=False, timeout=900):
    prefix = ["runuser", "-u", user, "--"] if user != "root" else []
    return lab.ssh("pgt1", ["cd", "/tmp", "&&", *prefix, *command], check=check,
                   timeout=timeout)


def ok(lab, *command, **kwargs):
    result = run(lab, *command, **kwargs)
    assert result.returncode == 0, f"{command}: {result.stdout[-3000:]}{result.stderr[-3000:]}"
    return result


def info(lab) -> dict:
    """pgbackrest info of stanza main, as JSON."""
    return json.loads(ok(lab, "pgbackrest", "--stanza=main", "--output=json", "info").stdout)[0]


def backups(lab, repo: int) -> list[dict]:
    return [b for b in info(lab)["backup"] if b["database"]["repo-key"] == repo]


def archive_max(lab, repo: int) -> str:
    return max(a["max"] for a in info(lab)["archive"] if a["database"]["repo-key"] == repo)


def keys(client, prefix=""):
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix)
    return [o["Key"] for page in pages for o in page.get("Contents", [])]


def health(lab, *checks) -> tuple[int, dict]:
    """pginfra-health --json of ``checks``: (exit code, {check: result})."""
    args = [a for c in checks for a in ("--check", c)]
    result = run(lab, HEALTH, "--json", *args, user="root", timeout=120)
    assert result.stdout.strip(), result.stderr
    report = json.loads(result.stdout.strip().splitlines()[-1])
    return result.returncode, {c["check"]: c for c in report["checks"]}


def test_the_deploy_created_both_repositories_and_took_a_verified_first_backup(lab, s3):
    assert "Backup repository (pgBackRest) | Create the pgBackRest stanza in repository 2" \
        in s3["deploy"].changed
    assert "Backups | First pgBackRest full backup, verified: point-in-time recovery works " \
        "from now" in s3["deploy"].changed
    state = info(lab)
    assert state["status"]["code"] == 0, state["status"]
    assert {r["key"]: r["status"]["code"] for r in state["repo"]} == {1: 0, 2: 0}
    assert state["cipher"] == "aes-256-cbc"
    assert backups(lab, 1) and backups(lab, 2), "a full backup in each repository"
    names = keys(s3["client"], "pginfra/pgt1/")
    assert any(k.endswith("backup.info") for k in names)
    assert any("/archive/main/15-1/" in k for k in names), "WAL reaches S3 as it is archived"
    # encrypted on the client side: what S3 holds is not readable without the passphrase
    head = s3["client"].get_object(Bucket=BUCKET, Key="pginfra/pgt1/backup/main/backup.info")
    assert head["Body"].read(8) == b"Salted__"
    assert lab.ssh("pgt1", ["head", "-c", "8", f"{ARCHIVE}/backup/main/backup.info"]
                   ).stdout == "Salted__"
    assert deploy_ok(lab, *s3["data"], env=control_env(lab, **KEYS)).changed == [], \
        "a second run changes nothing"


def test_configuration_files_modes_and_jobs(lab, s3):
    stat = lab.ssh("pgt1", ["stat", "-c", "'%n %U %G %a'", "/etc/pgbackrest/pgbackrest.conf",
                            "/etc/pgbackrest/conf.d/main.conf",
                            "/etc/pgbackrest/conf.d/main-secrets.conf", CONFIG, ARCHIVE,
                            "/etc/cron.d/pginfra"]).stdout.splitlines()
    assert "/etc/pgbackrest/pgbackrest.conf root postgres 640" in stat
    assert "/etc/pgbackrest/conf.d/main.conf root postgres 640" in stat
    assert "/etc/pgbackrest/conf.d/main-secrets.conf postgres postgres 600" in stat
    assert f"{ARCHIVE} postgres postgres 700" in stat
    assert sql(lab, "SHOW archive_command") == "pgbackrest --stanza=main archive-push %p"
    assert sql(lab, "SHOW archive_library") == ""
    cron = lab.ssh("pgt1", ["cat", "/etc/cron.d/pginfra"]).stdout
    jobs = [line for line in cron.splitlines()
            if line and line[0] in "0123456789*@" and "/pginfra-backup " in line]
    assert {j.split(" postgres ")[1].split()[1] for j in jobs} == {
        "full", "diff", "verify", "dump", "retention", "drill"}
    pkg = lab.ssh("pgt1", ["dpkg-query", "-W", "-f", "'${Version}'", "pgbackrest"]).stdout
    assert pkg == "2.45-1"
    for program in (BACKUP, RESTORE):
        assert "exit" in ok(lab, program, "--help").stdout.lower()


def target_between(lab, before: str, after: str) -> tuple[str, str]:
    """Run ``before`` in app, note the server's time, run ``after``; then close the WAL segment
    so it is archived. Returns the noted time (the recovery target) and that segment."""
    sql(lab, before, "app")
    time.sleep(1.5)
    target = sql(lab, "SELECT now()")
    time.sleep(1.5)
    sql(lab, after, "app")
    return target, sql(lab, "SELECT pg_walfile_name(pg_switch_wal())")


def test_full_and_differential_backups_reach_both_repositories_verified(lab, s3):
    before = {repo: {b["label"] for b in backups(lab, repo)} for repo in (1, 2)}
    ok(lab, BACKUP, "full")
    ok(lab, BACKUP, "diff")
    for repo in (1, 2):  # (a full may expire the oldest: backup_retention_full)
        mine = backups(lab, repo)
        assert [b["type"] for b in mine if b["label"] not in before[repo]] == ["full", "diff"]
        assert not any(b["error"] for b in mine)
    record = json.loads(lab.ssh("pgt1", ["cat", f"{STATE}/last-success/diff.json"]).stdout)
    assert set(record["repos"]) == {"1", "2"}
    verified = ok(lab, BACKUP, "verify", "--s3")
    assert "status: error" not in verified.stdout
    state = json.loads(lab.ssh("pgt1", ["cat", f"{STATE}/pgbackrest-verify.json"]).stdout)
    assert all(r["ok"] for r in state["repos"].values()), state
    code, checks = health(lab, "backup_base", "archiver")
    assert checks["backup_base"]["status"] == "ok", checks
    assert checks["archiver"]["status"] == "ok", checks


@pytest.mark.parametrize("repo", [1, 2])
def test_point_in_time_recovery_to_exact_rows(lab, s3, repo):
    table = f"pitr_probe_{repo}"
    sql(lab, f"DROP TABLE IF EXISTS {table}; CREATE TABLE {table} (batch int, n int)", "app")
    sql(lab, f"INSERT INTO {table} SELECT 1, g FROM generate_series(1, 100) g", "app")
    ok(lab, BACKUP, "diff", "--repo", str(repo))
    timeline = int(sql(lab, "SELECT timeline_id FROM pg_control_checkpoint()"))
    target, segment = target_between(
        lab, f"INSERT INTO {table} SELECT 2, g FROM generate_series(1, 100) g",
        f"INSERT INTO {table} SELECT 3, g FROM generate_series(1, 100) g")
    wait_for(lambda: archive_max(lab, repo) >= segment, "the segment archived", timeout=120)
    report = json.loads(ok(lab, RESTORE, "pitr", "--repo", str(repo), "--target-time",
                           repr(target), user="root").stdout.strip().splitlines()[-1])
    assert sql(lab, f"SELECT batch, count(*) FROM {table} GROUP BY 1 ORDER BY 1", "app") \
        == "1|100\n2|100"
    assert sql(lab, "SELECT pg_is_in_recovery()") == "f"
    sql(lab, f"INSERT INTO {table} VALUES (4, 1)", "app")  # accepts writes
    assert report["timeline"] > timeline
    assert int(sql(lab, "SELECT timeline_id FROM pg_control_checkpoint()")) == \
        report["timeline"]
    # no recovery setting left behind, and the configuration has no errors
    assert sql(lab, "SELECT string_agg(sourcefile || ':' || sourceline || ' ' || name || ' ' "
               "|| error, '; ') FROM pg_file_settings WHERE error IS NOT NULL") == ""
    assert sql(lab, "SELECT count(*) FROM pg_file_settings WHERE sourcefile LIKE "
               "'%postgresql.auto.conf' AND name LIKE 'recovery_target%' AND applied") == "0"
    assert lab.ssh("pgt1", ["test", "-e", "/var/lib/postgresql/15/main/recovery.signal"],
                   check=False).returncode != 0
    ok(lab, "pgbackrest", "--stanza=main", "check")  # the new timeline archives everywhere


def test_restore_from_s3_alone(lab, s3):
    """The local repository is lost (WAL and backups): the S3 one restores, and the next deploy
    makes the local one again and backs up into it."""
    sql(lab, "DROP TABLE IF EXISTS s3_probe; CREATE TABLE s3_probe (n int)", "app")
    ok(lab, BACKUP, "diff", "--repo", "2")
    target, segment = target_between(
        lab, "INSERT INTO s3_probe SELECT generate_series(1, 50)",
        "INSERT INTO s3_probe SELECT generate_series(51, 100)")
    wait_for(lambda: archive_max(lab, 2) >= segment, "the segment in S3", timeout=120)
    lab.ssh("pgt1", ["sh", "-c", f"'rm -rf {ARCHIVE}/archive {ARCHIVE}/backup'"])
    ok(lab, RESTORE, "pitr", "--from-s3", "--target-time", repr(target), user="root")
    assert sql(lab, "SELECT count(*), max(n) FROM s3_probe", "app") == "50|50"
    again = deploy_ok(lab, *s3["data"], env=control_env(lab, **KEYS))
    assert "Backup repository (pgBackRest) | Create the pgBackRest stanza in repository 1" \
        in again.changed
    assert backups(lab, 1), "the next deploy took a full backup into the new local repository"


def test_a_corrupted_backup_file_is_caught_by_verify(lab, s3):
    ok(lab, BACKUP, "full", "--repo", "1")
    label = backups(lab, 1)[-1]["label"]
    victim = lab.ssh("pgt1", ["sh", "-c", repr(
        f"find {ARCHIVE}/backup/main/{label}/pg_data/base -type f -size +8k | sort | head -1")]
    ).stdout.strip()
    assert victim, "a data file in the backup"
    lab.ssh("pgt1", ["printf", "'corrupt'", "|", "dd", f"of={victim}", "bs=1", "seek=4096",
                     "conv=notrunc", "status=none"])
    try:
        result = run(lab, BACKUP, "verify", "--repo", "1")
        assert result.returncode == 1, result.stdout + result.stderr
        assert label in result.stdout + result.stderr
        code, checks = health(lab, "backup_base")
        assert checks["backup_base"]["status"] == "critical", checks
        assert label in checks["backup_base"]["detail"]
    finally:
        ok(lab, "pgbackrest", "--stanza=main", "--repo=1", f"--set={label}", "expire")
    ok(lab, BACKUP, "verify", "--repo", "1")
    assert health(lab, "backup_base")[1]["backup_base"]["status"] == "ok"


def test_s3_down_for_two_minutes_under_writes_loses_nothing(lab, s3):
    """The S3 endpoint is killed while pgbench writes: archiving to S3 fails and queues, the
    server keeps running and committing, the health check warns; when S3 is back every segment
    reaches it and verify is clean."""
    ok(lab, "pgbench", "-i", "-q", "-s", "2", "app")
    endpoint = s3["endpoint"]
    endpoint.stop()
    try:
        writes = ok(lab, "pgbench", "-n", "-T", "120", "-c", "2", "app", timeout=400)
        assert " failed: 0" in writes.stdout or "failed transactions: 0" in writes.stdout \
            or "number of failed" not in writes.stdout, writes.stdout
        last = sql(lab, "SELECT pg_walfile_name(pg_switch_wal())")
        assert sql(lab, "SELECT pg_is_in_recovery()") == "f"
        code, checks = health(lab, "archiver")
        assert code != 0 and checks["archiver"]["status"] in ("warning", "critical"), checks
        assert int(sql(lab, "SELECT failed_count FROM pg_stat_archiver")) > 0
    finally:
        endpoint.start()
    wait_for(lambda: archive_max(lab, 2) >= last, "every segment in S3", timeout=300)
    assert archive_max(lab, 1) >= last
    ok(lab, "pgbackrest", "--stanza=main", "check")
    verified = run(lab, BACKUP, "verify", "--s3")
    assert verified.returncode == 0, verified.stdout + verified.stderr
    wait_for(lambda: health(lab, "archiver")[1]["archiver"]["status"] == "ok",
             "the archiver check ok again", timeout=120)


def test_an_overlapping_run_exits_with_the_lock_code(lab, s3):
    holder = subprocess.Popen(
        ["ssh", "-F", str(lab.ssh_config), "pgt1", "--", "runuser", "-u", "postgres", "--",
         "flock", f"{STATE}/locks/retention.lock", "sleep", "8"])
    try:
        time.sleep(2)
        assert run(lab, BACKUP, "retention").returncode == 75
    finally:
        holder.wait(timeout=30)


def test_no_secret_on_the_host_outside_its_file(lab, s3, secret):
    """The passphrase and the S3 secret are in main-secrets.conf only: not in the process list
    while a backup runs, the logs, the cron file, the configuration or the server's settings."""
    values = [secret("backup_cipher_pass"), KEYS["PGINFRA_PASSWORD_S3_SECRET_ACCESS_KEY"]]
    backup = subprocess.Popen(
        ["ssh", "-F", str(lab.ssh_config), "pgt1", "--", "cd", "/tmp", "&&", "runuser", "-u",
         "postgres", "--", BACKUP, "full", "--repo", "2"], stdout=subprocess.DEVNULL)
    seen = ""
    try:
        for _ in range(10):
            seen += lab.ssh("pgt1", ["ps", "-eo", "args", "ww"]).stdout
            time.sleep(0.3)
    finally:
        assert backup.wait(timeout=600) == 0
    assert "pgbackrest" in seen, "the process list was read while pgBackRest ran"
    text = seen + lab.ssh("pgt1", ["sh", "-c", repr(
        "cat /var/log/pgbackrest/*.log /var/log/pginfra/*.log /etc/cron.d/pginfra "
        "/etc/pgbackrest/pgbackrest.conf /etc/pgbackrest/conf.d/main.conf "
        f"{CONFIG} /var/log/postgresql/*.log 2>/dev/null; "
        "runuser -u postgres -- psql -XAtc 'SELECT name, setting FROM pg_settings'")]).stdout
    for value in values:
        assert value not in text
    stored = lab.ssh("pgt1", ["cat", "/etc/pgbackrest/conf.d/main-secrets.conf"]).stdout
    assert all(value in stored for value in values)  # where they are, and only there


def test_an_unreachable_endpoint_stops_the_deploy_before_anything(lab, s3):
    result = run_pyinfra(lab, "--data", f"backup_s3_bucket={BUCKET}", "--data",
                         f"backup_s3_endpoint_url=https://{GATEWAY}:9",
                         env=control_env(lab, **KEYS))
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert f"pgt1: backup_s3_endpoint_url https://{GATEWAY}:9 cannot be reached" in output
    assert "nothing was changed" in output and "Starting operation" not in output
    assert KEYS["PGINFRA_PASSWORD_S3_SECRET_ACCESS_KEY"] not in output


def test_an_endpoint_whose_certificate_does_not_verify_stops_the_deploy(lab, s3):
    result = run_pyinfra(lab, "--data", f"backup_s3_bucket={BUCKET}", "--data",
                         f"backup_s3_endpoint_url={s3['endpoint']}",
                         env=control_env(lab, **KEYS))
    output = result.stdout + result.stderr
    assert result.returncode != 0 and "does not verify" in output and "backup_s3_ca_file" in output
    assert "Starting operation" not in output
