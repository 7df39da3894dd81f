"""files/pginfra-backup and files/pginfra-restore for real: throwaway PostgreSQL 15 clusters
archived by a real pgBackRest (throwaway_pg.PgBackRestCluster: a stanza of its own in a
temporary configuration, repo1 encrypted in the cluster's directory) and a local S3 endpoint
(moto_server on 127.0.0.1) for the dumps. The programs run as postgres through runuser, as
from cron; ``pitr`` and ``standby`` run as root, with pg_ctl as the stop and start commands.

The programs run from throwaway_pg's world-readable copy of files/ with Debian's
/usr/bin/python3 and its modules, as on a host (PGINFRA_TEST_PYTHON overrides the interpreter).
"""

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import boto3
import botocore.exceptions
import pytest
from botocore.config import Config as BotoConfig
from throwaway_pg import (
    BIN,
    ENV,
    HOST_PYTHON,
    PgBackRestCluster,
    drop_cluster,
    free_port,
    needs_pgbackrest,
    pgbackrest_missing,
)
from throwaway_pg import new_cluster as _new_cluster

from pginfra_host import backup_config, pgbr, runner, s3store, util
from pginfra_lab.s3_local import MOTO, local_s3
from pginfra_lab.s3_local import client as s3_local_client

# ---------------------------------------------------------------------------------------------
# usage

@pytest.mark.parametrize("program, subcommands", [
    ("pginfra-backup", ["full", "diff", "verify", "dump", "retention", "drill", "list"]),
    ("pginfra-restore", ["list", "dump", "pitr", "standby"])])
def test_help_explains_the_options_and_exit_codes(program, subcommands):
    for words in ([], *([sub] for sub in subcommands)):
        proc = subprocess.run([HOST_PYTHON, str(BIN / program), *words, "--help"],
                              capture_output=True, text=True, env=ENV)
        assert proc.returncode == 0, proc.stderr
        assert "Exit codes: 0" in proc.stdout and "75 another run" in proc.stdout
    for gone in {"pginfra-backup": ("base", "upload", "ship-wal"),
                 "pginfra-restore": ("fetch-wal",)}[program]:
        proc = subprocess.run([HOST_PYTHON, str(BIN / program), gone], capture_output=True,
                              text=True, env=ENV)
        assert proc.returncode == 2 and "invalid choice" in proc.stderr
    proc = subprocess.run([HOST_PYTHON, str(BIN / program), "--config", "/nonexistent.json",
                           "list"], capture_output=True, text=True, env=ENV)
    assert proc.returncode == 2 and "/nonexistent.json: no such file" in proc.stderr


# ---------------------------------------------------------------------------------------------
# S3 (moto_server)

@pytest.fixture(scope="module")
def s3_endpoint():
    if not MOTO.exists():
        pytest.skip(f"{MOTO} is absent: install moto[server]")
    with local_s3() as url:
        yield url


def s3_client(endpoint: str, **config):
    return boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                        aws_access_key_id="testing", aws_secret_access_key="testing",
                        config=BotoConfig(s3={"addressing_style": "path"}, **config))


@pytest.fixture
def bucket(s3_endpoint, request):
    name = "t-" + hashlib.sha1(request.node.name.encode()).hexdigest()[:16]
    s3_client(s3_endpoint).create_bucket(Bucket=name)
    return name


def s3_settings(endpoint: str, bucket: str, credentials_file: str = "") -> dict:
    return {"bucket": bucket, "prefix": "pginfra", "region": "us-east-1",
            "endpoint_url": endpoint, "sse": "AES256", "kms_key_id": "",
            "storage_class": "STANDARD", "request_checksum_calculation": "when_required",
            "keep_days": 30, "credentials_file": credentials_file, "ca_file": ""}


def store_for(endpoint, bucket, sysid="7000000000000000001", client=None, chunk=None):
    raw = {**_base_raw(), "s3": s3_settings(endpoint, bucket)}
    settings = backup_config.validate_config(raw).s3
    log = runner.JobLog("test", None, stream=None)
    return s3store.S3Store(settings, "pg1", sysid, log, client=client or s3_client(endpoint),
                       chunk_override=chunk)


def _base_raw() -> dict:
    return {"host": "pg1", "version": 15, "cluster": "main", "port": 5432,
            "data_directory": "/nonexistent", "stop_command": ["true"],
            "start_command": ["true"], "wal_archive_dir": "/nonexistent",
            "backup_dir": "/nonexistent", "state_dir": "/nonexistent",
            "log_dir": "/nonexistent", "databases": [], "keep_local_dumps": 1,
            "pgbackrest": {"stanza": "main", "config": "/nonexistent/pgbackrest.conf",
                           "repos": [1], "backup_standby": False, "retention_full": 1},
            "s3": None}


def keys(client, bucket, prefix=""):
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
    return sorted(o["Key"] for page in pages for o in page.get("Contents", []))


def uploads(client, bucket):
    return client.list_multipart_uploads(Bucket=bucket).get("Uploads", [])


# ---------------------------------------------------------------------------------------------
# S3 transfers in-process: multipart, temporary keys, aborts, head checks, batched deletes

def test_multipart_upload_via_a_temporary_key_then_publish(tmp_path, s3_endpoint, bucket):
    data = os.urandom(12 * util.MiB + 123)
    path = tmp_path / "L.dump"
    path.write_bytes(data)
    digest = hashlib.sha256(data).hexdigest()
    store = store_for(s3_endpoint, bucket, chunk=1)  # the test hook: 5 MiB parts
    log = runner.JobLog("test", None, stream=None)
    meta = {"size": len(data), "sha256": digest}
    s3store.publish(store, log, [(path, store.key("dumps", "app", "L.dump"), meta)],
                store.key("dumps", "app", "L.json"), {"verified": True,
                                                      "files": {"L.dump": meta}})
    client = store.client
    assert keys(client, bucket) == [store.key("dumps", "app", "L.dump"),
                                    store.key("dumps", "app", "L.json")]  # no tmp/ left
    head = client.head_object(Bucket=bucket, Key=store.key("dumps", "app", "L.dump"))
    assert head["Metadata"]["sha256"] == digest and head["ContentLength"] == len(data)
    assert head["ETag"].endswith('-3"')  # three 5 MiB parts: a multipart upload and copy
    assert head["ServerSideEncryption"] == "AES256"
    assert uploads(client, bucket) == []
    assert store.get_json(store.key("dumps", "app", "L.json"))["verified"] is True


def _failing_client(endpoint, fail_part=2, fail_first_abort=False):
    """A client whose UploadPart calls fail from the ``fail_part``-th on, as if the endpoint
    went away mid-way; optionally the first AbortMultipartUpload (s3transfer's) fails too."""
    client = s3_client(endpoint, retries={"total_max_attempts": 1})  # no retries
    seen = {"parts": 0, "aborts": 0}

    def before_send(request, **kwargs):
        if "uploadId=" in request.url and "partNumber=" in request.url:
            seen["parts"] += 1
            if seen["parts"] >= fail_part:
                raise botocore.exceptions.EndpointConnectionError(endpoint_url=endpoint)
        elif request.method == "DELETE" and "uploadId=" in request.url:
            seen["aborts"] += 1
            if fail_first_abort and seen["aborts"] == 1:
                raise botocore.exceptions.EndpointConnectionError(endpoint_url=endpoint)

    client.meta.events.register("before-send.s3", before_send)
    return client, seen


@pytest.mark.parametrize("abort_fails", [False, True], ids=["s3transfer-aborts",
                                                            "leftover-aborted-by-us"])
def test_a_failed_multipart_upload_is_aborted(tmp_path, s3_endpoint, bucket, abort_fails):
    path = tmp_path / "big.dump"
    path.write_bytes(os.urandom(16 * util.MiB))
    digest, size = util.sha256_file(path)
    client, seen = _failing_client(s3_endpoint, fail_first_abort=abort_fails)
    store = store_for(s3_endpoint, bucket, client=client, chunk=1)
    records = []
    store.log.emit = lambda stage, status, *a, **kw: records.append((stage, status, kw))
    with pytest.raises(Exception, match="Could not connect"):
        store.put_via_temporary(path, store.key("dumps", "app", "L.dump"), digest, size)
    plain = s3_client(s3_endpoint)
    assert seen["parts"] >= 2
    assert uploads(plain, bucket) == []          # nothing left to bill for
    assert keys(plain, bucket) == []             # neither the temporary nor the final key
    assert records[-1][:2] == ("cleanup", "ok")
    if abort_fails:
        assert seen["aborts"] == 2               # s3transfer's failed, ours worked
        assert "1 multipart upload(s) aborted" in records[-1][2]["detail"]


def test_head_object_verification_names_the_key(tmp_path, s3_endpoint, bucket):
    store = store_for(s3_endpoint, bucket)
    key = store.key("dumps", "app", "20261101T000000Z.dump")
    store.client.put_object(Bucket=bucket, Key=key, Body=b"abc",
                            Metadata={"sha256": hashlib.sha256(b"abd").hexdigest()})
    with pytest.raises(runner.Failed, match=f"{key}: 3 bytes with sha256"):
        store.check_object(key, 3, hashlib.sha256(b"abc").hexdigest())
    with pytest.raises(runner.Failed, match="not there after the upload"):
        store.check_object(key + "x", 3, "0")
    store.check_object(key, 3, hashlib.sha256(b"abd").hexdigest())


def test_deletes_go_in_batches_of_at_most_1000(s3_endpoint, bucket):
    store = store_for(s3_endpoint, bucket)
    names = [store.key("dumps", "app", f"{n:08d}.dump") for n in range(2100)]
    real = names[::300]  # S3 deletes absent keys without complaint: a few real ones suffice
    for key in real:
        store.client.put_object(Bucket=bucket, Key=key, Body=b"w")
    sizes = []
    store.client.meta.events.register(
        "before-parameter-build.s3.DeleteObjects",
        lambda params, **kw: sizes.append(len(params["Delete"]["Objects"])))
    assert store.delete_keys(names) == 2100
    assert sizes == [1000, 1000, 100]
    assert keys(store.client, bucket) == []


# ---------------------------------------------------------------------------------------------
# Throwaway clusters archived by pgBackRest

class BackupCluster(PgBackRestCluster):
    """The throwaway cluster with backup configurations of its own."""

    def config(self, name: str, s3: dict | None = None, pgbackrest: dict | None = None,
               **overrides) -> Path:
        """A configuration with its own backup, state and log directories, pointing at this
        cluster's pgBackRest configuration and stanza."""
        work = self.root / name
        work.mkdir()
        shutil.chown(work, self.uid, self.gid)
        raw = {"host": "pg1", "version": 15, "cluster": "main", "port": self.port,
               "socket_dir": str(self.root), "data_directory": str(self.data),
               "stop_command": [*self.pg_ctl, "-m", "fast", "-w", "stop"],
               "start_command": [*self.pg_ctl, "-l", str(self.pg_log), "-w", "-t", "120",
                                 "start"],
               "wal_archive_dir": str(self.archive), "backup_dir": str(work / "backups"),
               "state_dir": str(work / "state"), "log_dir": str(work / "log"),
               "databases": ["app", "community"], "keep_local_dumps": 7,
               "pgbackrest": {"stanza": self.STANZA, "config": str(self.pgbr_config),
                              "repos": [1], "backup_standby": False, "retention_full": 2,
                              **(pgbackrest or {})},
               "s3": s3}
        raw.update(overrides)
        path = work / "backup.json"
        path.write_text(json.dumps(raw, indent=1))
        return path


def new_cluster() -> BackupCluster:
    return _new_cluster(BackupCluster, prefix="pginfra-backup-test-")


@pytest.fixture(scope="module")
def pg():
    reason = pgbackrest_missing()
    if reason:
        pytest.skip(reason)
    cluster = new_cluster()
    cluster.sql("CREATE DATABASE app")
    cluster.sql("CREATE DATABASE community")
    cluster.sql("CREATE TABLE items (id int PRIMARY KEY, v text); "
                "INSERT INTO items SELECT g, md5(g::text) FROM generate_series(1, 1000) g; "
                "CREATE SCHEMA s; CREATE TABLE s.\"Odd Name\" (x int); "
                "INSERT INTO s.\"Odd Name\" VALUES (1), (2)", "app")
    cluster.sql("CREATE TABLE posts (id int); INSERT INTO posts SELECT generate_series(1, 50)",
                "community")
    yield cluster
    drop_cluster(cluster)


@pytest.fixture
def cluster():
    """A cluster of the test's own (for what changes or breaks its repository)."""
    reason = pgbackrest_missing()
    if reason:
        pytest.skip(reason)
    made = new_cluster()
    yield made
    drop_cluster(made)


@pytest.fixture(scope="module")
def credentials(pg):
    path = pg.root / "s3-credentials"
    path.write_text("[default]\naws_access_key_id = testing\naws_secret_access_key = testing\n")
    os.chown(path, pg.uid, pg.gid)
    path.chmod(0o600)
    return str(path)


def run(program: str, config: Path, *args, root: bool = False, timeout: float = 180):
    cmd = [HOST_PYTHON, str(BIN / program), "--config", str(config), *map(str, args)]
    if not root:
        cmd = ["runuser", "-u", "postgres", "--", *cmd]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=ENV, timeout=timeout,
                          cwd="/")
    proc.lines = []
    for line in proc.stdout.splitlines():
        with contextlib.suppress(ValueError):
            record = json.loads(line)
            if isinstance(record, dict) and "stage" in record:
                proc.lines.append(record)
    return proc


def failed(proc) -> list[dict]:
    return [line for line in proc.lines if line["status"] == "failed"]


def state(config: Path, *parts) -> Path:
    return Path(json.loads(config.read_text())["state_dir"]).joinpath(*parts)


def backups(config: Path, *parts) -> Path:
    return Path(json.loads(config.read_text())["backup_dir"]).joinpath(*parts)


def last_success(config: Path, job: str) -> dict:
    return json.loads(state(config, "last-success", f"{job}.json").read_text())


def verify_record(config: Path) -> dict:
    return json.loads(state(config, "pgbackrest-verify.json").read_text())


def stage(proc, name: str) -> list[dict]:
    return [line for line in proc.lines if line["stage"] == name]


# ---------------------------------------------------------------------------------------------
# full, diff, verify, list

@needs_pgbackrest
def test_full_then_diff_each_verified_with_the_standby_fallback(pg):
    config = pg.config("full", pgbackrest={"backup_standby": True})
    proc = run("pginfra-backup", config, "full")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    warning, = stage(proc, "backup-standby")  # no standby answers: from the primary
    assert warning["status"] == "warning"
    assert "unable to find standby cluster" in warning["detail"]
    full = last_success(config, "full")["repos"]["1"]
    assert full["type"] == "full" and full["label"].endswith("F") and full["size"] > 0
    assert full["repo_size"] > 0 and util.parse_time(full["stop"]) <= util.utcnow()
    record = verify_record(config)
    assert record["repos"]["1"]["ok"] is True and full["label"] in record["repos"]["1"]["valid"]
    assert oct(state(config, "pgbackrest-verify.json").stat().st_mode & 0o777) == "0o600"

    pg.sql("CREATE TABLE grow AS SELECT generate_series(1, 20000) AS g")
    proc = run("pginfra-backup", config, "diff")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    diff = last_success(config, "diff")["repos"]["1"]
    assert diff["type"] == "diff" and diff["label"].startswith(full["label"] + "_")
    assert diff["label"].endswith("D")

    proc = run("pginfra-backup", config, "verify")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert stage(proc, "pgbackrest-check")[0]["status"] == "ok"
    checked, = stage(proc, "pgbackrest-verify")
    assert checked["status"] == "ok" and checked["detail"].startswith("repo1: ")
    assert {full["label"], diff["label"]} <= set(verify_record(config)["repos"]["1"]["valid"])
    assert last_success(config, "verify")["repos"] == {"1": True}

    listing = json.loads(run("pginfra-backup", config, "list", "--json").stdout)
    mine = {b["label"]: b for b in listing["pgbackrest"]}
    assert mine[full["label"]]["type"] == "full" and mine[diff["label"]]["type"] == "diff"
    assert mine[diff["label"]]["repo"] == 1 and listing["errors"] == {}
    text = run("pginfra-backup", config, "list").stdout
    assert any(line.startswith("repo1") and diff["label"] in line for line in text.splitlines())


@needs_pgbackrest
def test_a_corrupt_backup_file_fails_verify_naming_the_backup(cluster):
    # one repository failing does not stop the next; a diff without a full is made a full
    two = cluster.config("two-repos", pgbackrest={"repos": [2, 1]})
    proc = run("pginfra-backup", two, "diff")
    assert proc.returncode == 1
    repo2, repo1 = stage(proc, "backup")
    assert repo2["status"] == "failed" and "key '2' is not valid" in repo2["detail"]
    assert repo1["status"] == "ok" and "changed to full" in repo1["detail"]
    assert not state(two, "last-success", "diff.json").exists()
    assert run("pginfra-backup", two, "full", "--repo", "3").returncode == 2

    config = cluster.config("corrupt")
    assert run("pginfra-backup", config, "verify").returncode == 0
    success = state(config, "last-success", "verify.json").read_text()
    label = json.loads(cluster.pgbackrest("--output=json", "info").stdout)[0]["backup"][0][
        "label"]
    files = sorted((cluster.archive / "backup" / cluster.STANZA / label / "pg_data" / "base")
                   .rglob("*"), key=lambda p: p.stat().st_size)
    victim = files[-1]
    data = bytearray(victim.read_bytes())
    for i in range(len(data) // 2, len(data) // 2 + 16):
        data[i] ^= 0xFF
    victim.write_bytes(bytes(data))
    proc = run("pginfra-backup", config, "verify")
    assert proc.returncode == 1  # pgbackrest verify itself said 0
    bad = failed(proc)[0]
    assert bad["stage"] == "pgbackrest-verify" and bad["detail"].startswith("repo1: ")
    assert f"backup {label}: status invalid" in bad["detail"]
    assert f"backup {label}: checksum invalid: 1" in bad["detail"] \
        or f"backup {label}: other: 1" in bad["detail"]
    record = verify_record(config)["repos"]["1"]
    assert record["ok"] is False and any(label in p for p in record["problems"])
    assert label not in record["valid"]
    assert state(config, "last-success", "verify.json").read_text() == success  # unchanged


# ---------------------------------------------------------------------------------------------
# point-in-time recovery, standbys

@needs_pgbackrest
def test_pitr_dry_run_chooses_the_newest_backup_before_the_target(pg):
    config = pg.config("dry-run")
    assert run("pginfra-backup", config, "full").returncode == 0
    full = last_success(config, "full")["repos"]["1"]
    time.sleep(1.1)  # pgBackRest compares whole seconds
    target = pg.sql("SELECT now()")
    time.sleep(1.1)
    assert run("pginfra-backup", config, "diff").returncode == 0
    diff = last_success(config, "diff")["repos"]["1"]

    def plan(when, *args):
        proc = run("pginfra-restore", config, "pitr", "--target-time", when, "--dry-run",
                   *args, root=True)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        return json.loads(next(line for line in proc.stdout.splitlines() if '"dry_run"' in line))

    chosen = plan(target)
    assert chosen["backup"]["label"] == full["label"] and chosen["repo"] == 1
    assert chosen["command"].endswith(f"--repo=1 --delta --type=time '--target={target}' "
                                      "--target-action=promote restore")
    assert f"--config={pg.pgbr_config}" in chosen["command"]
    time.sleep(1.1)
    assert plan(pg.sql("SELECT now()"), "--repo", "1")["backup"]["label"] == diff["label"]
    assert (pg.data / "postmaster.pid").exists()  # nothing was stopped
    oldest = json.loads(pg.pgbackrest("--output=json", "info").stdout)[0]["backup"][0]
    proc = run("pginfra-restore", config, "pitr", "--target-time", "2001-01-01 00:00:00+00",
               "--dry-run", root=True)
    assert proc.returncode == 2
    assert "before the oldest backup's stop time " + util.iso(
        pgbr.epoch_time(oldest["timestamp"]["stop"])) in proc.stderr
    proc = run("pginfra-restore", config, "pitr", "--target-time", target, "--from-s3",
               "--dry-run", root=True)
    assert proc.returncode == 2 and "no s3 section" in proc.stderr
    proc = run("pginfra-restore", config, "pitr", "--target-time", "2026-01-01 00:00",
               "--dry-run", root=True)
    assert proc.returncode == 2 and "numeric UTC offset" in proc.stderr


@needs_pgbackrest
def test_pitr_restores_to_the_target_and_resets_the_recovery_settings(cluster):
    config = cluster.config("pitr")
    cluster.sql("CREATE TABLE marks (m text, at timestamptz DEFAULT clock_timestamp())")
    cluster.sql("INSERT INTO marks VALUES ('before the backup')")
    assert run("pginfra-backup", config, "full").returncode == 0
    label = last_success(config, "full")["repos"]["1"]["label"]
    cluster.sql("INSERT INTO marks VALUES ('before the target')")
    time.sleep(1.1)  # pgBackRest compares whole seconds: the target is after the stop's
    target = cluster.sql("SELECT now()")
    time.sleep(0.3)
    cluster.sql("INSERT INTO marks VALUES ('after the target')")
    cluster.switch_wal()
    proc = run("pginfra-restore", config, "pitr", "--target-time", target, root=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    report = json.loads(proc.stdout.splitlines()[-1])  # the last line: the report
    assert report["timeline"] == 2 and report["repo"] == 1 and report["backup"] == label
    assert report["target_time"] == target
    assert cluster.sql("SELECT string_agg(m, ',' ORDER BY at) FROM marks") == \
        "before the backup,before the target"
    assert cluster.sql("SELECT pg_is_in_recovery()") == "f"
    assert cluster.sql("SELECT count(*) FROM pg_file_settings WHERE name IN "
                       "('restore_command', 'recovery_target_time', "
                       "'recovery_target_action')") == "0"
    auto = (cluster.data / "postgresql.auto.conf").read_text()
    assert "recovery_target" not in auto and "restore_command" not in auto
    assert not (cluster.data / "recovery.signal").exists()
    assert cluster.sql("SELECT count(*) FROM pg_settings WHERE pending_restart") == "0"
    assert last_success(config, "pitr")["timeline"] == 2
    # the promoted cluster archives its new timeline, and backs up again
    assert run("pginfra-backup", config, "diff").returncode == 0


@needs_pgbackrest
def test_a_standby_skips_refuses_pitr_and_is_rebuilt_from_the_repository(cluster):
    primary = cluster.config("primary")
    assert run("pginfra-backup", primary, "full").returncode == 0
    standby = cluster.standby()
    try:
        own = dict(port=standby.port, socket_dir=str(standby.root),
                   data_directory=str(standby.data),
                   stop_command=[*standby.pg_ctl, "-m", "fast", "-w", "stop"],
                   start_command=[*standby.pg_ctl, "-l", str(standby.pg_log), "-o",
                                  standby.start_options, "-w", "-t", "120", "start"],
                   pgbackrest={"config": str(standby.pgbr_config)})
        config = cluster.config("standby", **own)
        for job in ("full", "diff", "dump", "drill"):
            proc = run("pginfra-backup", config, job)
            assert proc.returncode == 0, proc.stdout + proc.stderr
            assert (proc.lines[0]["stage"], proc.lines[0]["status"]) == ("standby", "skipped")
        # postgres_ha: a member that is not the repository host leaves pgBackRest's jobs to
        # it, and the leader's jobs to the leader
        member = cluster.config("member", **own, ha=True, repository_host=False)
        for job, skipped in (("full", "repository"), ("diff", "repository"),
                             ("dump", "standby"), ("drill", "standby")):
            proc = run("pginfra-backup", member, job)
            assert proc.returncode == 0, proc.stdout + proc.stderr
            assert (proc.lines[0]["stage"], proc.lines[0]["status"]) == (skipped, "skipped")
        proc = run("pginfra-backup", member, "retention")
        assert proc.returncode == 0 and stage(proc, "pgbackrest-expire")[0]["status"] == \
            "skipped", proc.stdout + proc.stderr
        assert not backups(config).exists()
        proc = run("pginfra-backup", config, "retention")
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert stage(proc, "pgbackrest-expire")[0]["status"] == "skipped"
        proc = run("pginfra-backup", config, "verify")  # the repository, without check
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert stage(proc, "pgbackrest-check")[0]["status"] == "skipped"

        target = cluster.sql("SELECT now()")
        proc = run("pginfra-restore", config, "pitr", "--target-time", target, root=True)
        assert proc.returncode == 2 and "this server is a standby" in proc.stderr
        proc = run("pginfra-restore", primary, "standby", root=True)
        assert proc.returncode == 2 and "this server is a primary" in proc.stderr
        assert cluster.sql("SELECT pg_is_in_recovery()") == "f"

        proc = run("pginfra-restore", config, "standby", root=True)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        report = json.loads(proc.stdout.splitlines()[-1])
        assert report["repo"] == 1 and report["replay_lsn"].count("/") == 1
        assert report["backup"] == last_success(primary, "full")["repos"]["1"]["label"]
        assert standby.sql("SELECT pg_is_in_recovery()") == "t"
        cluster.sql("CREATE TABLE after_rebuild AS SELECT 1 AS one")
        cluster.switch_wal()
        deadline = time.monotonic() + 60
        while standby.sql("SELECT to_regclass('after_rebuild') IS NOT NULL") != "t":
            assert time.monotonic() < deadline, "the rebuilt standby does not replay"
            time.sleep(0.5)

        # stopped without standby.signal: it may be a primary, refused
        standby.stop()
        (standby.data / "standby.signal").rename(standby.root / "standby.signal")
        proc = run("pginfra-restore", config, "standby", root=True)
        assert proc.returncode == 2 and "standby.signal is absent" in proc.stderr
    finally:
        drop_cluster(standby)


# ---------------------------------------------------------------------------------------------
# retention: pgbackrest expire, dumps, the pre-pgBackRest layout

@needs_pgbackrest
def test_retention_removes_the_old_layout_only_after_enough_verified_fulls(cluster):
    config = cluster.config("retention", databases=["postgres"], keep_local_dumps=1)
    old_bases = [backups(config, "base", "20260101T000000Z"),
                 backups(config, "base", "20260102T000000Z.partial")]
    for path in old_bases:
        path.mkdir(parents=True)
        (path / "base.tar.gz").write_bytes(b"old" * 1000)
    loose = ["000000010000000000000001", "00000002.history",
             "000000010000000000000001.00000028.backup", "000000010000000000000002.partial",
             "archtemp.000000010000000000000003.4242.1700000000000"]
    for name in loose:
        (cluster.archive / name).write_bytes(b"w" * 100)
    (cluster.archive / "notes.txt").write_text("not WAL")
    state(config, "wal-shipped").mkdir(parents=True)
    state(config, "wal-shipped", loose[0]).write_text("{}")
    for path in (backups(config), cluster.archive, state(config)):
        subprocess.run(["chown", "-R", "postgres:postgres", str(path)], check=True)

    def retention(*args):
        proc = run("pginfra-backup", config, "retention", *args)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert stage(proc, "pgbackrest-expire")[0]["status"] in ("ok", "dry-run")
        return stage(proc, "legacy")[0]

    def still_there():
        return all(p.exists() for p in old_bases) and all(
            (cluster.archive / n).exists() for n in loose)

    legacy = retention()
    assert legacy["status"] == "waiting" and "(now 0)" in legacy["detail"]
    assert "2 base backup(s)" in legacy["detail"] and "5 WAL file(s)" in legacy["detail"]
    assert still_there()
    assert run("pginfra-backup", config, "full").returncode == 0
    legacy = retention()
    assert legacy["status"] == "waiting" and "(now 1)" in legacy["detail"]
    assert still_there()
    for _ in range(2):
        assert run("pginfra-backup", config, "dump", "--no-globals").returncode == 0
    assert run("pginfra-backup", config, "full").returncode == 0
    legacy = retention("--dry-run")
    assert legacy["status"] == "dry-run" and still_there()
    assert len(list(backups(config, "dumps", "postgres").glob("*.dump"))) == 2

    proc = run("pginfra-backup", config, "retention")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    legacy, = stage(proc, "legacy")
    assert legacy["status"] == "ok" and legacy["detail"].startswith("removed 2 base backup(s)")
    assert "20260101T000000Z" in legacy["detail"] and "repo1 holds 2 valid" in legacy["detail"]
    assert not any(backups(config, "base").iterdir())
    assert sorted(os.listdir(cluster.archive)) == ["archive", "backup", "notes.txt"]
    assert not state(config, "wal-shipped").exists()
    assert len(list(backups(config, "dumps", "postgres").glob("*.dump"))) == 1
    assert stage(proc, "expire-local")[0]["status"] == "ok"
    assert retention()["detail"] == "nothing of it is left"


# ---------------------------------------------------------------------------------------------
# configuration and locks

@needs_pgbackrest
def test_a_bad_configuration_key_exits_2_naming_it(pg):
    for name, change, message in (
            ("old-key", lambda raw: raw.update(keep_local_base=2),
             "unknown key(s) 'keep_local_base'"),
            ("no-repos", lambda raw: raw["pgbackrest"].pop("repos"),
             "key 'pgbackrest.repos' is missing")):
        config = pg.config(name)
        raw = json.loads(config.read_text())
        change(raw)
        config.write_text(json.dumps(raw))
        for program, job in (("pginfra-backup", "full"), ("pginfra-restore", "list")):
            proc = run(program, config, job)
            assert proc.returncode == 2 and message in proc.stderr, proc.stderr
            assert not state(config).exists()


@needs_pgbackrest
def test_full_and_diff_share_a_lock(pg):
    config = pg.config("backup-lock")
    lock = state(config, "locks", "backup.lock")
    lock.parent.mkdir(parents=True)
    lock.touch()
    subprocess.run(["chown", "-R", "postgres:postgres", str(state(config))], check=True)
    with open(lock, "r+") as held:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        for job in ("full", "diff"):
            proc = run("pginfra-backup", config, job)
            assert proc.returncode == 75
            assert (proc.lines[0]["stage"], proc.lines[0]["status"]) == ("lock", "skipped")
    assert not state(config, "last-success").exists()


# ---------------------------------------------------------------------------------------------
# dumps, drills, their S3 copies

@needs_pgbackrest
def test_dump_verified_uploaded_and_a_truncated_copy_fails_verify(pg, s3_endpoint, bucket,
                                                                   credentials):
    config = pg.config("dump", s3_settings(s3_endpoint, bucket, credentials))
    proc = run("pginfra-backup", config, "dump")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    label = json.loads(state(config, "last-success", "dump.json").read_text())["label"]
    app = json.loads(backups(config, "dumps", "app", f"{label}.json").read_text())
    assert app["verified"] is True and app["kind"] == "dump"
    assert app["row_counts"] == {"public.items": 1000, 's."Odd Name"': 2}
    for db, ext in (("app", "dump"), ("community", "dump"), ("_globals", "sql")):
        assert backups(config, "dumps", db, f"{label}.{ext}").is_file()
    client = s3_client(s3_endpoint)
    sysid = pg.sql("SELECT system_identifier FROM pg_control_system()")
    root = f"pginfra/pg1/{sysid}/dumps/"
    assert keys(client, bucket) == sorted(
        f"{root}{db}/{label}.{ext}" for db, e in (("app", "dump"), ("community", "dump"),
                                                  ("_globals", "sql")) for ext in (e, "json"))
    proc = run("pginfra-backup", config, "verify", "--s3")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert sum(line["stage"] == "verify" and line["status"] == "ok" for line in proc.lines) == 6

    # Truncate the published app dump (its metadata and manifest still claim the original).
    key = f"{root}app/{label}.dump"
    obj = client.get_object(Bucket=bucket, Key=key)
    body = obj["Body"].read()
    client.put_object(Bucket=bucket, Key=key, Body=body[: len(body) // 2],
                      Metadata=obj["Metadata"])
    proc = run("pginfra-backup", config, "verify", "--s3")
    assert proc.returncode == 1
    bad = failed(proc)
    assert bad[0]["stage"] == "verify" and f"{label}.dump: size {len(body) // 2}" \
        in bad[0]["detail"]
    assert sum(line["stage"] == "verify" and line["status"] == "ok" for line in proc.lines) == 5
    mark, = stage(proc, "mark-bad")
    assert f"dump app {label} (s3) is bad" in mark["detail"]
    found = {(d["where"], d["database"]): d for d in json.loads(
        run("pginfra-backup", config, "list", "--json").stdout)["dumps"]}
    assert found[("s3", "app")]["state"] == "bad"
    assert found[("local", "app")]["state"] == "verified"  # the local copy is fine
    assert found[("local", "app")]["published_bad"]["reason"].startswith(f"{label}.dump: size")

    # the next dump run publishes the good local copy again; then it verifies
    time.sleep(1)  # a new label
    proc = run("pginfra-backup", config, "dump", "--database", "community", "--no-globals")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"app/{label}" in last_success(config, "dump")["published"]
    assert run("pginfra-backup", config, "verify", "--s3").returncode == 0


@needs_pgbackrest
def test_drill_and_restore_of_a_dump(pg):
    config = pg.config("drill", None)
    assert run("pginfra-backup", config, "dump", "--database", "app").returncode == 0
    proc = run("pginfra-backup", config, "drill", "--database", "app")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert any("2 table(s), 1002 row(s) match the source as dumped" in str(line["detail"])
               for line in proc.lines)
    assert pg.sql("SELECT count(*) FROM pg_database WHERE datname LIKE 'pginfra_drill%'") == "0"
    # a dump that differs from what it recorded fails the drill, and the scratch db still goes
    manifest_path = next(backups(config, "dumps", "app").glob("*.json"))
    manifest = json.loads(manifest_path.read_text())
    manifest["row_counts"]["public.items"] = 999
    manifest_path.write_text(json.dumps(manifest))
    proc = run("pginfra-backup", config, "drill", "--database", "app")
    assert proc.returncode == 1
    assert "public.items: 1000 rows restored, 999 expected" in failed(proc)[0]["detail"]
    assert pg.sql("SELECT count(*) FROM pg_database WHERE datname LIKE 'pginfra_drill%'") == "0"

    proc = run("pginfra-restore", config, "dump", "--database", "app_copy", "--source", "app")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert pg.sql("SELECT count(*) FROM items", "app_copy") == "1000"
    assert run("pginfra-backup", config, "verify").returncode == 0  # pgBackRest, the dumps
    refused = run("pginfra-restore", config, "dump", "--database", "app_copy", "--source",
                  "app")
    assert refused.returncode == 1 and "pass --replace" in failed(refused)[0]["detail"]
    pg.sql("DELETE FROM items WHERE id > 10", "app_copy")
    proc = run("pginfra-restore", config, "dump", "--database", "app_copy", "--source", "app",
               "--replace")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert pg.sql("SELECT count(*) FROM items", "app_copy") == "1000"

    dump = next(backups(config, "dumps", "app").glob("*.dump"))
    dump.write_bytes(dump.read_bytes()[:-100])
    proc = run("pginfra-backup", config, "verify")
    assert proc.returncode == 1 and f"{dump.name}: size" in failed(proc)[0]["detail"]
    refused = run("pginfra-restore", config, "dump", "--database", "app_copy2", "--source",
                  "app")
    assert refused.returncode == 1 and f"{dump.name}: size" in failed(refused)[0]["detail"]
    assert pg.sql("SELECT count(*) FROM pg_database WHERE datname = 'app_copy2'") == "0"


@needs_pgbackrest
def test_s3_unreachable_fails_keeps_the_local_copy_and_last_success(pg, credentials,
                                                                    s3_endpoint, bucket):
    nowhere = s3_settings(f"http://127.0.0.1:{free_port()}", "nowhere", credentials)
    config = pg.config("unreachable", nowhere)
    assert run("pginfra-backup", config, "dump", "--database", "app", "--no-globals",
               "--no-upload").returncode == 0
    success = state(config, "last-success", "dump.json").read_text()
    time.sleep(1)  # a new label
    proc = run("pginfra-backup", config, "dump", "--database", "app", "--no-globals")
    assert proc.returncode == 1
    upload = next(line for line in failed(proc) if line["stage"] == "upload")
    assert "Could not connect to the endpoint URL" in upload["detail"]
    assert state(config, "last-success", "dump.json").read_text() == success
    listing = run("pginfra-backup", config, "list", "--json", "--local")
    dumps = [b for b in json.loads(listing.stdout)["dumps"] if b["database"] == "app"]
    assert len(dumps) == 2
    assert all(b["state"] == "verified" and not b["published"] for b in dumps)
    assert all(Path(b["location"]).is_file() for b in dumps)

    # S3 is back: the next dump run publishes its dump and the two earlier ones
    back = json.loads(config.read_text())
    back["s3"] = s3_settings(s3_endpoint, bucket, credentials)
    config.write_text(json.dumps(back))
    time.sleep(1)
    proc = run("pginfra-backup", config, "dump", "--database", "app", "--no-globals")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert sum(line["stage"] == "publish" for line in proc.lines) == 3
    listing = json.loads(run("pginfra-backup", config, "list", "--json").stdout)["dumps"]
    assert sorted((b["where"], b["state"], b["published"]) for b in listing) == [
        ("local", "verified", True)] * 3 + [("s3", "published", True)] * 3


@pytest.fixture(scope="module")
def s3_tls_endpoint(tmp_path_factory):
    """moto behind TLS with a certificate from a CA of its own."""
    if not MOTO.exists():
        pytest.skip(f"{MOTO} is absent: install moto[server]")
    with local_s3(ca_dir=tmp_path_factory.mktemp("ca")) as url:
        yield url


@needs_pgbackrest
def test_dumps_go_to_an_https_endpoint_signed_by_the_configured_ca(pg, s3_tls_endpoint,
                                                                    credentials):
    ca = pg.root / "s3-ca.crt"
    shutil.copy(s3_tls_endpoint.ca, ca)
    ca.chmod(0o644)
    s3_local_client(s3_tls_endpoint).create_bucket(Bucket="tls")
    settings = s3_settings(str(s3_tls_endpoint), "tls", credentials)
    config = pg.config("tls-system-cas", settings)  # ca_file "": the system's CAs
    proc = run("pginfra-backup", config, "dump", "--database", "community", "--no-globals")
    assert proc.returncode == 1
    assert "certificate verify failed" in failed(proc)[0]["detail"].lower()
    config = pg.config("tls", {**settings, "ca_file": str(ca)})
    proc = run("pginfra-backup", config, "dump", "--database", "community", "--no-globals")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert stage(proc, "publish")[0]["status"] == "ok"
    assert len(keys(s3_local_client(s3_tls_endpoint), "tls")) == 2  # the dump, its manifest


@needs_pgbackrest
def test_a_second_run_while_the_lock_is_held_exits_75(pg):
    config = pg.config("locked", None)
    locks = state(config, "locks")
    locks.mkdir(parents=True)
    lock = locks / "dump.lock"
    lock.touch()
    for path in (locks.parent, locks, lock):
        os.chown(path, pg.uid, pg.gid)
    with open(lock, "r+") as held:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        proc = run("pginfra-backup", config, "dump")
    assert proc.returncode == 75
    assert proc.lines[0]["stage"] == "lock" and proc.lines[0]["status"] == "skipped"
    assert not backups(config, "dumps").exists()
    assert not state(config, "last-success", "dump.json").exists()
