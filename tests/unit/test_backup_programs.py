"""files/pginfra-backup and files/pginfra-restore for real: a local S3 endpoint (moto_server on
127.0.0.1) and throwaway PostgreSQL 15 clusters (initdb as postgres into a temporary directory,
archiving with basic_archive). The programs run as postgres through runuser, as from cron;
``pitr`` runs as root, with pg_ctl as its stop and start commands.

The programs run from throwaway_pg's world-readable copy of files/ with Debian's
/usr/bin/python3 and its modules, as on a host (PGINFRA_TEST_PYTHON overrides the interpreter).
"""

import contextlib
import fcntl
import hashlib
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path

import boto3
import botocore.exceptions
import pytest
from botocore.config import Config as BotoConfig
from throwaway_pg import (
    ENV,
    FILES,
    HOST_PYTHON,
    Cluster,
    drop_cluster,
    free_port,
    needs_postgres,
    postgres_missing,
)
from throwaway_pg import new_cluster as _new_cluster

from pginfra.programs import host_program
from pginfra.s3_local import MOTO, local_s3

_spec = importlib.util.spec_from_file_location("pginfra_backup_lib",
                                               FILES / "pginfra_backup_lib.py")
lib = importlib.util.module_from_spec(_spec)
sys.modules.setdefault("pginfra_backup_lib", lib)
_spec.loader.exec_module(lib)


# ---------------------------------------------------------------------------------------------
# usage

@pytest.mark.parametrize("program, subcommands", [
    ("pginfra-backup", ["base", "dump", "upload", "ship-wal", "retention", "drill", "verify",
                        "list"]),
    ("pginfra-restore", ["list", "dump", "pitr", "fetch-wal"])])
def test_help_explains_the_options_and_exit_codes(program, subcommands):
    for words in ([], *([sub] for sub in subcommands)):
        proc = subprocess.run([HOST_PYTHON, str(FILES / program), *words, "--help"],
                              capture_output=True, text=True, env=ENV)
        assert proc.returncode == 0, proc.stderr
        assert "Exit codes: 0" in proc.stdout and "75 another run" in proc.stdout
    proc = subprocess.run([HOST_PYTHON, str(FILES / program), "nonsense"], capture_output=True,
                          text=True, env=ENV)
    assert proc.returncode == 2
    proc = subprocess.run([HOST_PYTHON, str(FILES / program), "--config", "/nonexistent.json",
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
            "keep_days": 30, "credentials_file": credentials_file}


def store_for(endpoint, bucket, sysid="7000000000000000001", client=None, chunk=None):
    settings = lib.validate_config({**_base_raw(), "s3": s3_settings(endpoint, bucket)}).s3
    log = lib.JobLog("test", None, stream=None)
    return lib.S3Store(settings, "pg1", sysid, log, client=client or s3_client(endpoint),
                       chunk_override=chunk)


def _base_raw() -> dict:
    return {"host": "pg1", "version": 15, "cluster": "main", "port": 5432,
            "data_directory": "/nonexistent", "stop_command": ["true"],
            "start_command": ["true"], "wal_archive_dir": "/nonexistent",
            "backup_dir": "/nonexistent", "state_dir": "/nonexistent",
            "log_dir": "/nonexistent", "databases": [], "keep_local_base": 1,
            "keep_local_dumps": 1, "s3": None}


def keys(client, bucket, prefix=""):
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
    return sorted(o["Key"] for page in pages for o in page.get("Contents", []))


def uploads(client, bucket):
    return client.list_multipart_uploads(Bucket=bucket).get("Uploads", [])


# ---------------------------------------------------------------------------------------------
# S3 transfers in-process: multipart, temporary keys, aborts, head checks, batched deletes

def test_multipart_upload_via_a_temporary_key_then_publish(tmp_path, s3_endpoint, bucket):
    data = os.urandom(12 * lib.MiB + 123)
    path = tmp_path / "base.tar.gz"
    path.write_bytes(data)
    digest = hashlib.sha256(data).hexdigest()
    store = store_for(s3_endpoint, bucket, chunk=1)  # the test hook: 5 MiB parts
    log = lib.JobLog("test", None, stream=None)
    meta = {"size": len(data), "sha256": digest}
    lib.publish(store, log, [(path, store.key("base", "L", "base.tar.gz"), meta)],
                store.key("base", "L", "pginfra.json"), {"verified": True,
                                                         "files": {"base.tar.gz": meta}})
    client = store.client
    assert keys(client, bucket) == [store.key("base", "L", "base.tar.gz"),
                                    store.key("base", "L", "pginfra.json")]  # no tmp/ left
    head = client.head_object(Bucket=bucket, Key=store.key("base", "L", "base.tar.gz"))
    assert head["Metadata"]["sha256"] == digest and head["ContentLength"] == len(data)
    assert head["ETag"].endswith('-3"')  # three 5 MiB parts: a multipart upload and copy
    assert head["ServerSideEncryption"] == "AES256"
    assert uploads(client, bucket) == []
    assert store.get_json(store.key("base", "L", "pginfra.json"))["verified"] is True


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
    path.write_bytes(os.urandom(16 * lib.MiB))
    digest, size = lib.sha256_file(path)
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
    key = store.key("wal", "000000010000000000000001")
    store.client.put_object(Bucket=bucket, Key=key, Body=b"abc",
                            Metadata={"sha256": hashlib.sha256(b"abd").hexdigest()})
    with pytest.raises(lib.Failed, match=f"{key}: 3 bytes with sha256"):
        store.check_object(key, 3, hashlib.sha256(b"abc").hexdigest())
    with pytest.raises(lib.Failed, match="not there after the upload"):
        store.check_object(key + "x", 3, "0")
    store.check_object(key, 3, hashlib.sha256(b"abd").hexdigest())


def test_deletes_go_in_batches_of_at_most_1000(s3_endpoint, bucket):
    store = store_for(s3_endpoint, bucket)
    names = [store.key("wal", f"{n:024X}") for n in range(2100)]
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
# A throwaway cluster

class BackupCluster(Cluster):
    """The throwaway cluster with backup configurations of its own."""

    def config(self, name: str, s3: dict | None = None, **overrides) -> Path:
        """A configuration with its own backup, state and log directories."""
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
               "databases": ["app", "community"], "keep_local_base": 2,
               "keep_local_dumps": 7, "s3": s3}
        raw.update(overrides)
        path = work / "backup.json"
        path.write_text(json.dumps(raw, indent=1))
        return path



def new_cluster() -> BackupCluster:
    return _new_cluster(BackupCluster, prefix="pginfra-backup-test-")


@pytest.fixture(scope="module")
def pg():
    reason = postgres_missing()
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
    cluster.stop()
    shutil.rmtree(cluster.root, ignore_errors=True)


@pytest.fixture(scope="module")
def credentials(pg):
    path = pg.root / "s3-credentials"
    path.write_text("[default]\naws_access_key_id = testing\naws_secret_access_key = testing\n")
    os.chown(path, pg.uid, pg.gid)
    path.chmod(0o600)
    return str(path)


def run(program: str, config: Path, *args, root: bool = False, timeout: float = 180):
    cmd = [HOST_PYTHON, str(FILES / program), "--config", str(config), *map(str, args)]
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


# ---------------------------------------------------------------------------------------------
# base, dump, verify, list, ship-wal, fetch-wal

@needs_postgres
def test_base_backup_is_verified_uploaded_and_published(pg, s3_endpoint, bucket, credentials):
    config = pg.config("base", s3_settings(s3_endpoint, bucket, credentials))
    proc = run("pginfra-backup", config, "base")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    label = json.loads(state(config, "last-success", "base.json").read_text())["label"]
    manifest = json.loads(backups(config, "base", label, "pginfra.json").read_text())
    assert manifest["verified"] is True and manifest["error"] is None
    assert manifest["timeline"] == 1 and lib.WAL_SEGMENT_RE.match(manifest["start_wal_segment"])
    assert set(manifest["files"]) == {"base.tar.gz", "pg_wal.tar.gz", "backup_manifest"}
    assert manifest["published"]["url"].startswith(f"s3://{bucket}/pginfra/pg1/")
    sysid = pg.sql("SELECT system_identifier FROM pg_control_system()")
    assert manifest["system_identifier"] == sysid
    client = s3_client(s3_endpoint)
    root = f"pginfra/pg1/{sysid}/"
    assert keys(client, bucket) == [f"{root}base/{label}/{n}" for n in (
        "backup_manifest", "base.tar.gz", "pg_wal.tar.gz", "pginfra.json")]  # no tmp/
    for name, meta in manifest["files"].items():
        head = client.head_object(Bucket=bucket, Key=f"{root}base/{label}/{name}")
        assert head["Metadata"]["sha256"] == meta["sha256"]
        assert head["ContentLength"] == meta["size"]
    published = json.loads(client.get_object(
        Bucket=bucket, Key=f"{root}base/{label}/pginfra.json")["Body"].read())
    assert published["verified"] is True and published["files"] == manifest["files"]
    assert uploads(client, bucket) == []

    proc = run("pginfra-backup", config, "verify", "--s3", label)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert any(line["stage"] == "verify" and "every file matches" in line["detail"]
               for line in proc.lines)
    listing = run("pginfra-backup", config, "list", "--json")
    assert listing.returncode == 0, listing.stderr
    found = {(b["where"], b["kind"], b["label"]): b
             for b in json.loads(listing.stdout)["backups"]}
    assert found[("local", "base", label)]["state"] == "verified"
    assert found[("local", "base", label)]["published"] is True
    assert found[("s3", "base", label)]["state"] == "published"


@needs_postgres
def test_ship_wal_then_fetch_wal_from_s3(pg, s3_endpoint, bucket, credentials):
    pg.switch_wal()
    config = pg.config("ship", s3_settings(s3_endpoint, bucket, credentials))
    (pg.archive / "archtemp.000000010000000000000099.1.2").write_bytes(b"half-written")
    proc = run("pginfra-backup", config, "ship-wal")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (pg.archive / "archtemp.000000010000000000000099.1.2").unlink()
    shipped = sorted(p.name for p in state(config, "wal-shipped").iterdir())
    archived = sorted(n for n in os.listdir(pg.archive) if lib.is_wal_name(n))
    assert shipped and set(shipped) <= set(archived)
    assert [line["detail"] for line in proc.lines if line["stage"] == "ship"] == shipped
    client = s3_client(s3_endpoint)
    sysid = pg.sql("SELECT system_identifier FROM pg_control_system()")
    segment = next(n for n in shipped if lib.WAL_SEGMENT_RE.match(n))
    head = client.head_object(Bucket=bucket, Key=f"pginfra/pg1/{sysid}/wal/{segment}")
    assert head["Metadata"]["sha256"] == lib.sha256_file(pg.archive / segment)[0]
    again = run("pginfra-backup", config, "ship-wal")
    assert again.returncode == 0 and "nothing new" in again.stdout

    # fetch-wal, as the server calls it: not in this (empty) archive directory, so from S3
    empty = pg.root / "ship" / "empty-archive"
    empty.mkdir()
    shutil.chown(empty, pg.uid, pg.gid)
    fetch = pg.config("fetch", s3_settings(s3_endpoint, bucket, credentials),
                      wal_archive_dir=str(empty))
    dest = pg.root / "fetch" / "RECOVERYXLOG"
    proc = run("pginfra-restore", fetch, "fetch-wal", segment, dest)
    assert proc.returncode == 0, proc.stderr
    assert dest.read_bytes() == (pg.archive / segment).read_bytes()
    # tampered in S3: refused; absent everywhere: exit 1 quietly
    client.put_object(Bucket=bucket, Key=f"pginfra/pg1/{sysid}/wal/{segment}", Body=b"x",
                      Metadata={"sha256": head["Metadata"]["sha256"]})
    proc = run("pginfra-restore", fetch, "fetch-wal", segment, dest.with_name("X"))
    assert proc.returncode == 1 and "not handing it to the server" in proc.stderr
    assert not dest.with_name("X").exists()
    proc = run("pginfra-restore", fetch, "fetch-wal", "00000009.history", dest.with_name("H"))
    assert proc.returncode == 1 and proc.stdout == "" and proc.stderr == ""


@needs_postgres
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
    proc = run("pginfra-backup", config, "verify", "--s3", "--kind", "dump")
    assert proc.returncode == 0, proc.stdout + proc.stderr

    # Truncate the published app dump (its metadata and manifest still claim the original).
    key = f"{root}app/{label}.dump"
    obj = client.get_object(Bucket=bucket, Key=key)
    body = obj["Body"].read()
    client.put_object(Bucket=bucket, Key=key, Body=body[: len(body) // 2],
                      Metadata=obj["Metadata"])
    proc = run("pginfra-backup", config, "verify", "--s3", label)
    assert proc.returncode == 1
    bad = failed(proc)
    assert bad[0]["stage"] == "verify" and f"{label}.dump: size {len(body) // 2}" \
        in bad[0]["detail"]
    assert sum(line["stage"] == "verify" and line["status"] == "ok" for line in proc.lines) == 2


@needs_postgres
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
    assert run("pginfra-backup", config, "verify").returncode == 0  # the local copies
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
    proc = run("pginfra-backup", config, "verify", "--kind", "dump")
    assert proc.returncode == 1 and f"{dump.name}: size" in failed(proc)[0]["detail"]
    refused = run("pginfra-restore", config, "dump", "--database", "app_copy2", "--source",
                  "app")
    assert refused.returncode == 1 and f"{dump.name}: size" in failed(refused)[0]["detail"]
    assert pg.sql("SELECT count(*) FROM pg_database WHERE datname = 'app_copy2'") == "0"


# ---------------------------------------------------------------------------------------------
# failures, locks, retention

@needs_postgres
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
    dumps = [b for b in json.loads(listing.stdout)["backups"] if b["database"] == "app"]
    assert len(dumps) == 2
    assert all(b["state"] == "verified" and not b["published"] for b in dumps)
    assert all(Path(b["location"]).is_file() for b in dumps)

    # S3 is back: `upload` publishes what is verified and not published yet
    back = json.loads(config.read_text())
    back["s3"] = s3_settings(s3_endpoint, bucket, credentials)
    config.write_text(json.dumps(back))
    proc = run("pginfra-backup", config, "upload")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert sum(line["stage"] == "publish" for line in proc.lines) == 2
    listing = json.loads(run("pginfra-backup", config, "list", "--json").stdout)["backups"]
    assert sorted((b["where"], b["state"], b["published"]) for b in listing) == [
        ("local", "verified", True), ("local", "verified", True),
        ("s3", "published", True), ("s3", "published", True)]


@needs_postgres
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


def _label_after(label: str, seconds: int) -> str:
    return lib.new_label(lib.label_time(label) + timedelta(seconds=seconds))


@needs_postgres
def test_retention_keeps_the_previous_good_backup_when_the_newest_failed(
        pg, s3_endpoint, bucket, credentials):
    work = pg.root / "retention-archive"
    settings = {**s3_settings(s3_endpoint, bucket, credentials)}
    config = pg.config("retention", settings, keep_local_base=1, wal_archive_dir=str(work))
    for args in (["--no-upload"], []):  # the older one stays local only
        proc = run("pginfra-backup", config, "base", *args)
        assert proc.returncode == 0, proc.stdout + proc.stderr
    pg.switch_wal()
    shutil.copytree(pg.archive, work)  # a copy of its own, for deleting
    subprocess.run(["chown", "-R", "postgres:", str(work)], check=True)
    first, second = sorted(p.name for p in backups(config, "base").iterdir())
    # the newest run failed; an older run (before the first: labels are seconds apart) left a
    # partial directory
    failed_label, partial_label = _label_after(second, 5), _label_after(first, -1)
    (backups(config, "base", failed_label)).mkdir()
    (backups(config, "base", failed_label, "pginfra.json")).write_text(json.dumps(
        {"label": failed_label, "kind": "base", "verified": False, "error": "test"}))
    (backups(config, "base", f"{partial_label}.partial")).mkdir()
    subprocess.run(["chown", "-R", "postgres:", str(backups(config))], check=True)

    second_start = json.loads(backups(config, "base", second, "pginfra.json").read_text())[
        "start_wal_segment"]
    older = sorted(n for n in os.listdir(work) if lib.wal_position(n)
                   and lib.wal_position(n) < second_start[8:24])
    assert older
    proc = run("pginfra-backup", config, "retention", "--local")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert sorted(p.name for p in backups(config, "base").iterdir()) == [second, failed_label]
    # nothing shipped yet: the old WAL stays
    assert all((work / n).exists() for n in older)
    assert f"{len(older)} not shipped to S3 yet, kept" in str(proc.lines)

    # Shipped, it goes. In S3: an expired published backup and a stale multipart upload.
    assert run("pginfra-backup", config, "ship-wal").returncode == 0
    client = s3_client(s3_endpoint)
    sysid = pg.sql("SELECT system_identifier FROM pg_control_system()")
    root = f"pginfra/pg1/{sysid}/"
    old = "20200101T000000Z"
    client.put_object(Bucket=bucket, Key=f"{root}base/{old}/base.tar.gz", Body=b"old")
    client.put_object(Bucket=bucket, Key=f"{root}base/{old}/pginfra.json", Body=json.dumps(
        {"label": old, "kind": "base", "verified": True, "end_time": "2020-01-01T00:10:00Z",
         "start_wal_segment": "000000010000000000000001", "files": {}}).encode())
    client.create_multipart_upload(Bucket=bucket, Key=f"{root}tmp/leftover")
    proc = run("pginfra-backup", config, "retention", "--stale-tmp-hours", "0")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert not any((work / n).exists() for n in older)
    assert (work / second_start).exists()
    assert not any(state(config, "wal-shipped", n).exists() for n in older)  # stale markers
    remaining = keys(client, bucket)
    assert not any(k.startswith(f"{root}base/{old}/") for k in remaining)
    assert f"{root}base/{second}/pginfra.json" in remaining  # the newest published stays
    wal = [k.rsplit("/", 1)[1] for k in remaining if k.startswith(f"{root}wal/")]
    assert second_start in wal  # S3 keeps WAL back to its oldest base backup's start
    assert all(lib.wal_position(n) is None or lib.wal_position(n) >= second_start[8:24]
               for n in wal)
    assert uploads(client, bucket) == []
    assert "1 multipart upload(s)" in str(proc.lines)


@needs_postgres
def test_retention_removes_only_stale_basic_archive_temporary_files(pg):
    """archtemp.* files a failed basic_archive attempt left behind go once an hour old; a
    fresh one (an attempt in progress), the segments and any other name stay."""
    pg.switch_wal()
    work = pg.root / "archtemp-archive"
    work.mkdir()
    segment = max(n for n in os.listdir(pg.archive) if lib.WAL_SEGMENT_RE.match(n))
    shutil.copy(pg.archive / segment, work / segment)
    stale = work / f"archtemp.{segment}.4242.1700000000000"
    fresh = work / f"archtemp.{segment}.4243.{int(time.time() * 1000)}"
    other = work / "archtemp-notes.txt"  # not basic_archive's pattern
    stale.write_bytes(b"half a segment")
    fresh.write_bytes(b"being written")
    other.write_text("notes")
    two_hours_ago = time.time() - 2 * 3600
    for path in (stale, other, work / segment):
        os.utime(path, (two_hours_ago, two_hours_ago))
    subprocess.run(["chown", "-R", "postgres:", str(work)], check=True)
    config = pg.config("archtemp", None, wal_archive_dir=str(work))

    proc = run("pginfra-backup", config, "retention", "--local", "--dry-run")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    sweep = next(line for line in proc.lines if line["stage"] == "sweep-archtemp")
    assert sweep["status"] == "dry-run" and stale.name in sweep["detail"]
    assert stale.exists()

    proc = run("pginfra-backup", config, "retention", "--local")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert sorted(os.listdir(work)) == sorted([segment, fresh.name, other.name])
    sweep = next(line for line in proc.lines if line["stage"] == "sweep-archtemp")
    assert sweep["status"] == "ok" and sweep["bytes"] == len(b"half a segment")
    assert f"1 basic_archive temporary file(s) older than 60 min removed: {stale.name}" \
        in sweep["detail"]
    assert fresh.name not in sweep["detail"]


@needs_postgres
def test_a_standby_does_nothing(pg):
    standby = pg.standby()
    try:
        config = pg.config("standby", None, port=standby.port, socket_dir=str(standby.root),
                           data_directory=str(standby.data))
        for job in ("base", "dump", "retention", "drill"):
            proc = run("pginfra-backup", config, job)
            assert proc.returncode == 0, proc.stdout + proc.stderr
            assert "standby" in proc.lines[0]["detail"]
        assert not backups(config).exists()
    finally:
        drop_cluster(standby)


# ---------------------------------------------------------------------------------------------
# a base backup that fails verify is bad everywhere

health = host_program("pginfra-health")


def backup_base_check(config: Path) -> dict:
    """pginfra-health's backup_base check (as postgres, as from cron) on what this backup
    configuration's jobs recorded."""
    backup = json.loads(config.read_text())
    work = Path(backup["state_dir"]).parent
    raw = {"host": "pg1", "version": 15, "cluster": "main", "port": backup["port"],
           "socket_dir": backup["socket_dir"], "data_directory": backup["data_directory"],
           "wal_archive_dir": backup["wal_archive_dir"], "state_dir": str(work / "health"),
           "query_timeout": 5, "run_timeout": 30, "pgbouncer": None,
           "backup": {"state_dir": backup["state_dir"]}, "textfile": None,
           "thresholds": {name: list(default)
                          for name, (default, _low, _high) in health.THRESHOLDS.items()}}
    path = work / "health.json"
    path.write_text(json.dumps(raw))
    proc = subprocess.run(["runuser", "-u", "postgres", "--", HOST_PYTHON,
                           str(FILES / "pginfra-health"), "--config", str(path), "--json",
                           "--check", "backup_base"], capture_output=True, text=True, env=ENV,
                          cwd="/", timeout=60)
    report = json.loads(proc.stdout.splitlines()[-1])
    return next(c for c in report["checks"] if c["check"] == "backup_base")


def flip_bytes(data: bytes) -> bytes:
    """The same size, 64 bytes in the middle inverted: what a bad disk or a bad copy does."""
    out = bytearray(data)
    for i in range(len(out) // 2, min(len(out) // 2 + 64, len(out))):
        out[i] ^= 0xFF
    return bytes(out)


def listed(config: Path, *args) -> dict:
    proc = run("pginfra-backup", config, "list", "--json", *args)
    assert proc.returncode == 0, proc.stderr
    return {(b["where"], b["kind"], b["label"]): b for b in json.loads(proc.stdout)["backups"]}


@needs_postgres
def test_a_local_base_backup_that_fails_verify_is_bad_everywhere(pg):
    work = pg.root / "bad-base-archive"
    config = pg.config("bad-base", None, keep_local_base=1, wal_archive_dir=str(work))
    labels = []
    for _ in range(2):
        proc = run("pginfra-backup", config, "base")
        assert proc.returncode == 0, proc.stdout + proc.stderr
        labels.append(json.loads(state(config, "last-success", "base.json").read_text())[
            "label"])
    good, newest = labels
    pg.switch_wal()
    shutil.copytree(pg.archive, work)  # a copy of its own, for retention to delete from
    subprocess.run(["chown", "-R", "postgres:", str(work)], check=True)
    good_manifest = json.loads(backups(config, "base", good, "pginfra.json").read_text())
    good_start = good_manifest["start_wal_segment"]
    needed = [n for n in os.listdir(work) if lib.WAL_SEGMENT_RE.match(n)
              and lib.wal_position(n) >= good_start[8:24]]
    assert good_start in needed
    assert backup_base_check(config)["data"]["label"] == newest

    tar = backups(config, "base", newest, "base.tar.gz")
    tar.write_bytes(flip_bytes(tar.read_bytes()))
    proc = run("pginfra-backup", config, "verify", "--kind", "base")
    assert proc.returncode == 1
    assert failed(proc)[0]["stage"] == "verify"
    assert "base.tar.gz: sha256" in failed(proc)[0]["detail"]
    mark = next(line for line in proc.lines if line["stage"] == "mark-bad")
    assert newest in mark["detail"] and "base.tar.gz: sha256" in mark["detail"]
    manifest = json.loads(backups(config, "base", newest, "pginfra.json").read_text())
    assert manifest["bad"]["reason"].startswith("base.tar.gz: sha256")
    assert manifest["bad"]["where"] == "local" and lib.parse_time(manifest["bad"]["time"])

    # the health check's record now names the newest good one, with its age
    record = json.loads(state(config, "last-success", "base.json").read_text())
    assert record["label"] == good and record["time"] == good_manifest["end_time"]
    check = backup_base_check(config)
    assert check["status"] == "ok" and check["data"]["label"] == good
    assert check["data"]["time"] == good_manifest["end_time"]

    found = listed(config, "--local")
    assert found[("local", "base", newest)]["state"] == "bad"
    assert found[("local", "base", newest)]["error"].startswith("base.tar.gz: sha256")
    assert found[("local", "base", good)]["state"] == "verified"
    text = run("pginfra-backup", config, "list", "--local").stdout
    row = next(line for line in text.splitlines() if newest in line)
    assert "bad since" in row and "base.tar.gz: sha256" in row and "verified" not in row

    # verify's "newest" is now the good one, which passes; pitr picks it, and not the bad one
    proc = run("pginfra-backup", config, "verify", "--kind", "base")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert any(line["stage"] == "verify" and good in line["detail"] for line in proc.lines)
    target = pg.sql("SELECT now()")
    proc = run("pginfra-restore", config, "pitr", "--target-time", target, "--dry-run",
               root=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    choose = next(line for line in proc.lines if line["stage"] == "choose")
    assert choose["detail"].startswith(f"base backup {good} (local)")
    proc = run("pginfra-restore", config, "pitr", "--target-time", target, "--dry-run",
               "--backup", newest, root=True)
    assert proc.returncode == 1 and "it is marked bad" in failed(proc)[0]["detail"]

    # retention (keep 1): the good one is the one kept, with the WAL it needs; the bad one
    # does not count (it stays, like a failed one, until a newer good one exists)
    proc = run("pginfra-backup", config, "retention", "--local")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert sorted(p.name for p in backups(config, "base").iterdir()) == [good, newest]
    assert all((work / n).exists() for n in needed)
    proc = run("pginfra-backup", config, "base")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    third = json.loads(state(config, "last-success", "base.json").read_text())["label"]
    proc = run("pginfra-backup", config, "retention", "--local")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert [p.name for p in backups(config, "base").iterdir()] == [third]


@needs_postgres
def test_a_published_copy_that_fails_verify_s3_is_bad_there(pg, s3_endpoint, bucket,
                                                            credentials):
    work = pg.root / "bad-s3-archive"
    work.mkdir()
    shutil.chown(work, pg.uid, pg.gid)
    config = pg.config("bad-s3", s3_settings(s3_endpoint, bucket, credentials),
                       wal_archive_dir=str(work))
    proc = run("pginfra-backup", config, "base")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    label = json.loads(state(config, "last-success", "base.json").read_text())["label"]
    client = s3_client(s3_endpoint)
    sysid = pg.sql("SELECT system_identifier FROM pg_control_system()")
    root = f"pginfra/pg1/{sysid}/"
    old = "20200101T000000Z"  # an old good published one, long past keep_days
    client.put_object(Bucket=bucket, Key=f"{root}base/{old}/pginfra.json", Body=json.dumps(
        {"label": old, "kind": "base", "verified": True, "end_time": "2020-01-01T00:10:00Z",
         "start_wal_segment": "000000010000000000000001", "files": {}}).encode())

    key = f"{root}base/{label}/base.tar.gz"  # other bytes, the same size and metadata
    obj = client.get_object(Bucket=bucket, Key=key)
    client.put_object(Bucket=bucket, Key=key, Body=flip_bytes(obj["Body"].read()),
                      Metadata=obj["Metadata"])
    proc = run("pginfra-backup", config, "verify", "--s3", "--kind", "base")
    assert proc.returncode == 1
    assert failed(proc)[0]["stage"] == "verify"
    assert "base.tar.gz: sha256" in failed(proc)[0]["detail"]
    published = json.loads(client.get_object(
        Bucket=bucket, Key=f"{root}base/{label}/pginfra.json")["Body"].read())
    assert published["bad"]["where"] == "s3"
    assert published["bad"]["reason"].startswith("base.tar.gz: sha256")
    local = json.loads(backups(config, "base", label, "pginfra.json").read_text())
    assert "bad" not in local and local["published"]["bad"] == published["bad"]

    found = listed(config)
    assert found[("s3", "base", label)]["state"] == "bad"
    assert found[("s3", "base", label)]["error"].startswith("base.tar.gz: sha256")
    assert found[("s3", "base", old)]["state"] == "published"
    assert found[("local", "base", label)]["state"] == "verified"  # the local copy is fine
    assert found[("local", "base", label)]["published_bad"]["reason"] == \
        published["bad"]["reason"]
    text = run("pginfra-backup", config, "list").stdout
    assert "published copy bad" in next(line for line in text.splitlines()
                                        if label in line and line.startswith("local"))

    # the record named it and no other local base backup is good: gone, and critical
    assert not state(config, "last-success", "base.json").exists()
    check = backup_base_check(config)
    assert check["status"] == "critical" and "no verified base backup" in check["detail"]

    target = pg.sql("SELECT now()")
    proc = run("pginfra-restore", config, "pitr", "--target-time", target, "--from-s3",
               "--dry-run", root=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    choose = next(line for line in proc.lines if line["stage"] == "choose")
    assert choose["detail"].startswith(f"base backup {old} (s3)")

    # retention: the bad copy is not "a newer published one", so the old good one stays
    proc = run("pginfra-backup", config, "retention")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    remaining = keys(client, bucket, root)
    assert f"{root}base/{old}/pginfra.json" in remaining
    assert f"{root}base/{label}/pginfra.json" in remaining

    # upload publishes the good local copy again; then it verifies
    proc = run("pginfra-backup", config, "upload")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    proc = run("pginfra-backup", config, "verify", "--s3", label)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert listed(config)[("s3", "base", label)]["state"] == "published"
    assert listed(config)[("local", "base", label)]["published_bad"] is None


# ---------------------------------------------------------------------------------------------
# point-in-time recovery

@needs_postgres
def test_pitr_from_a_published_base_backup(s3_endpoint, bucket):
    cluster = new_cluster()
    try:
        creds = cluster.root / "s3-credentials"
        creds.write_text("[default]\naws_access_key_id = t\naws_secret_access_key = t\n")
        config = cluster.config("pitr", s3_settings(s3_endpoint, bucket, str(creds)))
        cluster.sql("CREATE TABLE marks (m text, at timestamptz DEFAULT clock_timestamp())")
        cluster.sql("INSERT INTO marks VALUES ('before the backup')")
        proc = run("pginfra-backup", config, "base")
        assert proc.returncode == 0, proc.stdout + proc.stderr
        cluster.sql("INSERT INTO marks VALUES ('before the target')")
        time.sleep(0.3)
        target = cluster.sql("SELECT now()")
        time.sleep(0.3)
        cluster.sql("INSERT INTO marks VALUES ('after the target')")
        cluster.switch_wal()
        proc = run("pginfra-restore", config, "pitr", "--target-time", target, "--from-s3",
                   root=True)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        report = json.loads(proc.stdout.splitlines()[-1])  # the last line: the report
        assert proc.lines[-2]["stage"] == "report" and proc.lines[-2]["detail"] == report
        assert report["timeline"] == 2 and report["base_backup_from"] == "s3"
        assert report["old_data_directory"] == f"{cluster.data}.pre-pitr-{report['base_backup']}"
        assert Path(report["old_data_directory"], "PG_VERSION").exists()
        assert cluster.sql("SELECT string_agg(m, ',' ORDER BY at) FROM marks") == \
            "before the backup,before the target"
        assert cluster.sql("SELECT pg_is_in_recovery()") == "f"
        assert cluster.sql("SELECT timeline_id FROM pg_control_checkpoint()") == "2"
        assert cluster.sql("SELECT count(*) FROM pg_file_settings WHERE name IN "
                           "('restore_command', 'recovery_target_time', "
                           "'recovery_target_action')") == "0"
        assert not (cluster.data / "recovery.signal").exists()
        assert "recovery_target" not in (cluster.data / "postgresql.auto.conf").read_text()
        assert (cluster.data.stat().st_mode & 0o777) == 0o700
        assert cluster.data.stat().st_uid == cluster.uid
        assert state(config, "last-success", "pitr.json").exists()
        assert state(config, "locks").stat().st_uid == cluster.uid  # root made it for postgres
    finally:
        cluster.stop()
        shutil.rmtree(cluster.root, ignore_errors=True)
