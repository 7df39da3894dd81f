"""Backups that restore, on the lab's host, with S3 served by a moto server on the lab network:
base backups and dumps verified and published, WAL shipped, PITR from local files and from S3
alone, and the failure cases (a truncated upload, S3 unreachable, overlapping runs, a failed
newest backup)."""

from __future__ import annotations

import json
import subprocess
import time

import pytest
from conftest import GATEWAY, control_env, deploy_ok, run_pyinfra, sql

from pginfra.s3_local import client as s3_client
from pginfra.s3_local import local_s3

BACKUP = "/usr/local/lib/pginfra/pginfra-backup"
RESTORE = "/usr/local/lib/pginfra/pginfra-restore"
CONFIG = "/etc/pginfra/backup.json"
STATE = "/var/lib/pginfra/backup"
BACKUP_DIR = "/var/backups/postgresql/pginfra"
ARCHIVE = "/var/lib/postgresql/wal-archive"
BUCKET = "pginfra-e2e"
KEYS = {"PGINFRA_PASSWORD_S3_ACCESS_KEY_ID": "e2e-access-key",
        "PGINFRA_PASSWORD_S3_SECRET_ACCESS_KEY": "e2e-secret-key-not-in-any-log"}


@pytest.fixture(scope="module")
def s3(lab, first_deploy):
    """A moto S3 server the host reaches on the lab network, and the host deployed to use it."""
    with local_s3(GATEWAY, buckets=[BUCKET]) as endpoint:
        data = ["--data", f"backup_s3_bucket={BUCKET}",
                "--data", f"backup_s3_endpoint_url={endpoint}"]
        deploy_ok(lab, *data, env=control_env(lab, **KEYS))
        yield {"client": s3_client(endpoint), "endpoint": endpoint, "data": data}
        deploy_ok(lab)  # back to the rehearsal's own data: local backups only


def run(lab, *command, user="postgres", check=False, timeout=600):
    prefix = ["runuser", "-u", user, "--"] if user != "root" else []
    return lab.ssh("pgt1", ["cd", "/tmp", "&&", *prefix, *command], check=check,
                   timeout=timeout)


def ok(lab, *command, **kwargs):
    result = run(lab, *command, **kwargs)
    assert result.returncode == 0, f"{command}: {result.stdout[-3000:]}{result.stderr[-3000:]}"
    return result


def keys(client, prefix=""):
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix)
    return [o["Key"] for page in pages for o in page.get("Contents", [])]


def test_backup_files_on_the_host(lab, s3):
    stat = lab.ssh("pgt1", ["stat", "-c", "'%n %U %G %a'", CONFIG, "/etc/pginfra/s3-credentials",
                            "/etc/cron.d/pginfra", BACKUP_DIR, STATE]).stdout.split("\n")
    assert f"{CONFIG} root postgres 640" in stat
    assert "/etc/pginfra/s3-credentials postgres postgres 600" in stat
    assert "/etc/cron.d/pginfra root root 644" in stat
    assert f"{BACKUP_DIR} postgres postgres 700" in stat
    config = json.loads(lab.ssh("pgt1", ["cat", CONFIG]).stdout)
    assert config["s3"]["bucket"] == BUCKET and config["databases"] == ["app", "community"]
    cron = lab.ssh("pgt1", ["cat", "/etc/cron.d/pginfra"]).stdout
    jobs = [line for line in cron.splitlines()
            if line and line[0] in "0123456789*@" and "/pginfra-backup " in line]
    assert {j.split(" postgres ")[1].split()[1] for j in jobs} == {
        "base", "dump", "ship-wal", "retention", "drill"}
    assert all(" postgres " in j for j in jobs)
    assert "secret" not in cron.lower() and KEYS["PGINFRA_PASSWORD_S3_SECRET_ACCESS_KEY"] \
        not in lab.ssh("pgt1", ["cat", CONFIG]).stdout
    assert lab.ssh("pgt1", ["logrotate", "-d", "/etc/logrotate.d/pginfra"],
                   check=False).returncode == 0
    for program in (BACKUP, RESTORE):
        assert "exit" in ok(lab, program, "--help").stdout.lower()


def test_base_backup_and_dumps_are_verified_and_published(lab, s3):
    ok(lab, BACKUP, "base", timeout=900)
    ok(lab, BACKUP, "dump", timeout=900)
    listing = json.loads(ok(lab, BACKUP, "list", "--json").stdout)
    assert listing, "backups are listed"
    names = keys(s3["client"])
    assert any("/base/" in k and k.endswith("pginfra.json") for k in names)
    assert any("/dumps/app/" in k and k.endswith(".dump") for k in names)
    assert not [k for k in names if "/tmp/" in k], "no temporary key is left behind"
    sysid = sql(lab, "SELECT system_identifier FROM pg_control_system()")
    assert all(k.startswith(f"pginfra/pgt1/{sysid}/") for k in names)
    assert json.loads(lab.ssh("pgt1", ["cat", f"{STATE}/last-success/base.json"]).stdout)
    # the credentials stay in their file: not in the logs
    logs = lab.ssh("pgt1", ["sh", "-c", "'cat /var/log/pginfra/*.log'"]).stdout
    assert KEYS["PGINFRA_PASSWORD_S3_SECRET_ACCESS_KEY"] not in logs


def target_between(lab, before: str, after: str) -> str:
    """Run ``before`` in app, note the server's time, run ``after``; then close the WAL segment
    and ship it. Returns the noted time: the recovery target."""
    sql(lab, before, "app")
    time.sleep(1.5)
    target = sql(lab, "SELECT now()")
    time.sleep(1.5)
    sql(lab, after, "app")
    sql(lab, "SELECT pg_switch_wal()")
    ok(lab, BACKUP, "ship-wal")
    return target


def test_point_in_time_recovery_from_local_files(lab, s3):
    sql(lab, "DROP TABLE IF EXISTS pitr_probe; CREATE TABLE pitr_probe (batch int, n int)", "app")
    sql(lab, "INSERT INTO pitr_probe SELECT 1, g FROM generate_series(1, 100) g", "app")
    ok(lab, BACKUP, "base", timeout=900)
    timeline = int(sql(lab, "SELECT timeline_id FROM pg_control_checkpoint()"))
    target = target_between(
        lab, "INSERT INTO pitr_probe SELECT 2, g FROM generate_series(1, 100) g",
        "INSERT INTO pitr_probe SELECT 3, g FROM generate_series(1, 100) g")
    report = json.loads(ok(lab, RESTORE, "pitr", "--target-time", repr(target), user="root",
                           timeout=900).stdout.strip().splitlines()[-1])
    assert sql(lab, "SELECT batch, count(*) FROM pitr_probe GROUP BY 1 ORDER BY 1", "app") \
        == "1|100\n2|100"
    assert sql(lab, "SELECT pg_is_in_recovery()") == "f"
    sql(lab, "INSERT INTO pitr_probe VALUES (4, 1)", "app")  # accepts writes
    assert int(sql(lab, "SELECT timeline_id FROM pg_control_checkpoint()")) > timeline
    assert report["timeline"] > timeline
    assert lab.ssh("pgt1", ["test", "-d", report["old_data_directory"]],
                   check=False).returncode == 0, "the old data directory is kept"
    # the recovery settings are gone again and the configuration has no errors
    assert sql(lab, "SELECT string_agg(sourcefile || ':' || sourceline || ' ' || name || ' ' "
               "|| error, '; ') FROM pg_file_settings WHERE error IS NOT NULL") == ""
    assert lab.ssh("pgt1", ["test", "-e", "/var/lib/postgresql/15/main/recovery.signal"],
                   check=False).returncode != 0


def test_restore_from_s3_alone(lab, s3):
    sql(lab, "DROP TABLE IF EXISTS s3_probe; CREATE TABLE s3_probe (n int)", "app")
    ok(lab, BACKUP, "base", timeout=900)
    target = target_between(lab, "INSERT INTO s3_probe SELECT generate_series(1, 50)",
                            "INSERT INTO s3_probe SELECT generate_series(51, 100)")
    # lose everything local: base backups, dumps and the WAL archive
    lab.ssh("pgt1", ["sh", "-c", f"'rm -rf {BACKUP_DIR}/* {ARCHIVE}/*'"])
    ok(lab, RESTORE, "pitr", "--from-s3", "--target-time", repr(target), user="root",
       timeout=900)
    assert sql(lab, "SELECT count(*), max(n) FROM s3_probe", "app") == "50|50"
    ok(lab, BACKUP, "base", timeout=900)  # a new base backup for the timeline we are on


def test_a_dump_truncated_after_upload_fails_verification(lab, s3):
    ok(lab, BACKUP, "dump", timeout=900)
    client = s3["client"]
    dump = sorted(k for k in keys(client) if "/dumps/app/" in k and k.endswith(".dump"))[-1]
    body = client.get_object(Bucket=BUCKET, Key=dump)["Body"].read()
    head = client.head_object(Bucket=BUCKET, Key=dump)
    client.put_object(Bucket=BUCKET, Key=dump, Body=body[: len(body) // 2],
                      Metadata=head["Metadata"])
    result = run(lab, BACKUP, "verify", "--s3")
    assert result.returncode != 0
    assert dump.rsplit("/", 1)[1] in result.stdout + result.stderr


def test_s3_unreachable_fails_keeps_the_local_copy_and_last_success(lab, s3):
    config = json.loads(lab.ssh("pgt1", ["cat", CONFIG]).stdout)
    config["s3"]["endpoint_url"] = f"http://{GATEWAY}:9"  # nothing listens there
    lab.ssh("pgt1", ["sh", "-c", "'cat > /tmp/unreachable.json && chown postgres "
                     "/tmp/unreachable.json'"], input=json.dumps(config))
    before = lab.ssh("pgt1", ["cat", f"{STATE}/last-success/dump.json"]).stdout
    dumps_before = set(lab.ssh("pgt1", ["sh", "-c", f"'ls {BACKUP_DIR}/dumps/app'"]).stdout.split())
    result = run(lab, BACKUP, "--config", "/tmp/unreachable.json", "dump", timeout=900)
    assert result.returncode not in (0, 75)
    after = set(lab.ssh("pgt1", ["sh", "-c", f"'ls {BACKUP_DIR}/dumps/app'"]).stdout.split())
    assert after - dumps_before, "the new local dump is kept"
    assert lab.ssh("pgt1", ["cat", f"{STATE}/last-success/dump.json"]).stdout == before


def test_an_overlapping_run_exits_with_the_lock_code(lab, s3):
    holder = subprocess.Popen(
        ["ssh", "-F", str(lab.ssh_config), "pgt1", "--", "runuser", "-u", "postgres", "--",
         "flock", f"{STATE}/locks/retention.lock", "sleep", "8"])
    try:
        time.sleep(2)
        assert run(lab, BACKUP, "retention").returncode == 75
    finally:
        holder.wait(timeout=30)


def retention_keeping_one(lab) -> list[str]:
    """Run retention with keep_local_base 1; the base backups left."""
    config = json.loads(lab.ssh("pgt1", ["cat", CONFIG]).stdout)
    config["keep_local_base"] = 1
    lab.ssh("pgt1", ["sh", "-c", "'cat > /tmp/keep-one.json && chown postgres "
                     "/tmp/keep-one.json'"], input=json.dumps(config))
    ok(lab, BACKUP, "--config", "/tmp/keep-one.json", "retention")
    return lab.ssh("pgt1", ["ls", f"{BACKUP_DIR}/base"]).stdout.split()


def test_retention_keeps_the_last_good_backup_when_the_newest_failed(lab, s3):
    ok(lab, BACKUP, "base", timeout=900)
    good = sorted(lab.ssh("pgt1", ["ls", f"{BACKUP_DIR}/base"]).stdout.split())[-1]
    # a newer base backup that failed verification, as a failed run leaves it
    failed = "29991231T235959Z"
    manifest = json.dumps({"label": failed, "kind": "base", "verified": False,
                           "error": "pg_basebackup: simulated failure"})
    lab.ssh("pgt1", ["sh", "-c", f"'mkdir -p {BACKUP_DIR}/base/{failed} && cat > "
                     f"{BACKUP_DIR}/base/{failed}/pginfra.json && chown -R postgres "
                     f"{BACKUP_DIR}/base/{failed}'"], input=manifest)
    kept = retention_keeping_one(lab)
    assert good in kept, "the newest verified backup survives a newer failed one"
    assert [k for k in kept if k not in (good, failed)] == [], "older ones expired"
    lab.ssh("pgt1", ["rm", "-rf", f"{BACKUP_DIR}/base/{failed}"])



def test_a_base_backup_that_fails_verify_is_bad_everywhere(lab, s3):
    """On the host: bytes of the newest base backup flipped on disk; verify fails and marks it
    bad; list says so; the health check's backup_base moves to the older good one; retention
    with one to keep keeps the good one; pitr's choice skips it."""
    ok(lab, BACKUP, "base", timeout=900)
    ok(lab, BACKUP, "base", timeout=900)
    labels = sorted(lab.ssh("pgt1", ["ls", f"{BACKUP_DIR}/base"]).stdout.split())
    older, newest = labels[-2], labels[-1]
    tarball = f"{BACKUP_DIR}/base/{newest}/base.tar.gz"
    lab.ssh("pgt1", ["printf", "'corrupt'", "|", "dd", f"of={tarball}", "bs=1", "seek=4096",
                     "conv=notrunc", "status=none"])
    result = run(lab, BACKUP, "verify")
    assert result.returncode == 1, result.stdout + result.stderr
    listing = {e["label"]: e for e in json.loads(ok(lab, BACKUP, "list", "--json",
                                                    "--local").stdout)["backups"]
               if e["kind"] == "base" and e["where"] == "local"}
    assert listing[newest]["state"] == "bad", listing[newest]
    record = json.loads(lab.ssh("pgt1", ["cat", f"{STATE}/last-success/base.json"]).stdout)
    assert record["label"] == older
    now = sql(lab, "SELECT now()")
    dry = ok(lab, RESTORE, "pitr", "--dry-run", "--target-time", repr(now), user="root").stdout
    assert older in dry and newest not in dry
    kept = retention_keeping_one(lab)
    assert older in kept, "the good one is kept in place of the bad newer one"
    lab.ssh("pgt1", ["rm", "-rf", f"{BACKUP_DIR}/base/{newest}"])
    ok(lab, BACKUP, "base", timeout=900)  # a good newest one again, for the tests after


def test_stale_archive_temp_files_are_swept_on_the_host(lab, s3):
    archive = "/var/lib/postgresql/wal-archive"
    stale, fresh = f"{archive}/archtemp.000000010000000000000099.123.1", \
        f"{archive}/archtemp.000000010000000000000098.124.2"
    lab.ssh("pgt1", ["runuser", "-u", "postgres", "--", "sh", "-c", repr(
        f"echo x > {stale} && touch -d '2 hours ago' {stale} && echo x > {fresh}")])
    ok(lab, BACKUP, "retention")
    assert lab.ssh("pgt1", ["test", "-e", stale], check=False).returncode != 0
    assert lab.ssh("pgt1", ["test", "-e", fresh], check=False).returncode == 0
    lab.ssh("pgt1", ["rm", "-f", fresh])


def test_an_unreachable_endpoint_stops_the_deploy_before_anything(lab, s3):
    result = run_pyinfra(lab, "--data", f"backup_s3_bucket={BUCKET}", "--data",
                         f"backup_s3_endpoint_url=http://{GATEWAY}:9",
                         env=control_env(lab, **KEYS))
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert f"pgt1: backup_s3_endpoint_url http://{GATEWAY}:9 cannot be reached" in output
    assert "nothing was changed" in output and "Starting operation" not in output
    assert KEYS["PGINFRA_PASSWORD_S3_SECRET_ACCESS_KEY"] not in output
