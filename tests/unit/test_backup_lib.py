"""files/pginfra_backup_lib.py: the pure parts of backup and restore (chunk sizes, retention
and WAL choices, manifest checks, configuration validation, exit codes). The programs
themselves, against PostgreSQL and S3, are in test_backup_programs.py."""

import copy
import gzip
import hashlib
import importlib.util
import io
import json
import math
import os
import sys
import tarfile
from datetime import UTC, datetime, timedelta

import pytest

from pginfra import ROOT

_spec = importlib.util.spec_from_file_location("pginfra_backup_lib",
                                               ROOT / "files/pginfra_backup_lib.py")
lib = importlib.util.module_from_spec(_spec)
sys.modules.setdefault("pginfra_backup_lib", lib)
_spec.loader.exec_module(lib)

MiB, GiB, TiB = 1 << 20, 1 << 30, 1 << 40

EXAMPLE = {
    "host": "pg1", "version": 15, "cluster": "main", "port": 5432,
    "data_directory": "/var/lib/postgresql/15/main",
    "stop_command": ["systemctl", "stop", "postgresql@15-main"],
    "start_command": ["systemctl", "start", "postgresql@15-main"],
    "wal_archive_dir": "/var/lib/postgresql/wal-archive",
    "backup_dir": "/var/backups/postgresql/pginfra", "state_dir": "/var/lib/pginfra/backup",
    "log_dir": "/var/log/pginfra", "databases": ["app", "community"],
    "keep_local_base": 2, "keep_local_dumps": 7,
    "s3": {"bucket": "b-1", "prefix": "pginfra", "region": "eu-west-1",
           "endpoint_url": "http://10.77.1.1:5000", "sse": "AES256", "kms_key_id": "",
           "storage_class": "STANDARD", "request_checksum_calculation": "when_required",
           "keep_days": 30, "credentials_file": "/etc/pginfra/s3-credentials"},
}


# ---------------------------------------------------------------------------------------------
# chunk sizes

def parts(size, chunk):
    return math.ceil(size / chunk)


def test_chunk_fits_one_and_five_tib_in_ten_thousand_parts():
    for size in (1 * TiB, 5 * TiB):
        chunk = lib.chunk_size(size)
        assert parts(size, chunk) <= 10_000
        assert chunk % MiB == 0 and chunk <= 5 * GiB
    # a small file still gets a chunk that would carry 1 TiB (a growing or streamed object)
    small = lib.chunk_size(10 * MiB)
    assert parts(1 * TiB, small) <= 10_000
    assert small == lib.chunk_size(0) == 105 * MiB


def test_chunk_floor_is_8_mib_by_default_and_5_mib_for_the_test_hook():
    for size in (0, 1, 5 * MiB, 100 * GiB, 1 * TiB, 3 * TiB):
        assert lib.chunk_size(size) >= 8 * MiB
    assert lib.chunk_size(123, override=1) == 5 * MiB       # S3's smallest part
    assert lib.chunk_size(123, override=6 * MiB) == 6 * MiB
    assert lib.chunk_size(123, override=10 * GiB) == 5 * GiB  # S3's largest part


def test_chunk_refuses_what_s3_cannot_hold():
    with pytest.raises(lib.Failed):
        lib.chunk_size(60 * TiB)


# ---------------------------------------------------------------------------------------------
# retention

def items(spec):
    """'g1 f2 p3' -> verified (g), failed (f) and partial (p) backups with labels in order."""
    out = []
    for n, word in enumerate(spec.split()):
        label = f"2026010{n // 10}T0000{n % 10:02d}Z"
        out.append(lib.Item(label, word[0] == "g", word))
    return out


def names(selection):
    return [i.ref for i in selection]


def test_retention_keeps_the_newest_verified_and_drops_older():
    kept, deleted = lib.select_local_retention(items("g1 g2 g3 g4"), keep=2)
    assert names(kept) == ["g3", "g4"] and names(deleted) == ["g1", "g2"]


def test_retention_newest_failed_keeps_the_previous_good_one():
    kept, deleted = lib.select_local_retention(items("g1 g2 f3"), keep=1)
    assert names(kept) == ["g2", "f3"]      # f3 is newer than any verified: kept as evidence
    assert names(deleted) == ["g1"]


def test_retention_failed_and_partial_go_only_when_older_than_the_newest_verified():
    kept, deleted = lib.select_local_retention(items("g1 f2 p3 g4 p5"), keep=2)
    assert names(deleted) == ["f2", "p3"]
    assert names(kept) == ["g1", "g4", "p5"]  # p5 may be a run in progress


def test_retention_without_a_verified_backup_deletes_nothing():
    kept, deleted = lib.select_local_retention(items("f1 p2 f3"), keep=1)
    assert deleted == [] and names(kept) == ["f1", "p2", "f3"]


def test_retention_never_deletes_the_last_verified():
    for keep in (0, -3, 1):
        kept, deleted = lib.select_local_retention(items("f1 g2 f3 f4"), keep=keep)
        assert "g2" in names(kept) and names(deleted) == ["f1"]


def test_s3_expiry_needs_a_newer_published_backup_and_age():
    now = datetime(2026, 11, 23, tzinfo=UTC)
    old1, old2, recent = "20260901T000000Z", "20260915T000000Z", "20261120T000000Z"
    backups = [lib.Item(old1, True, "old1"), lib.Item(old2, False, "old2-unpublished"),
               lib.Item(recent, True, "recent")]
    assert names(lib.select_s3_expiry(backups, 30, now)) == ["old1", "old2-unpublished"]
    # the newest published is kept however old; unpublished ones newer than it stay too
    only_old = [lib.Item(old1, True, "old1"), lib.Item(old2, True, "old2"),
                lib.Item(recent, False, "recent-unpublished")]
    assert names(lib.select_s3_expiry(only_old, 30, now)) == ["old1"]
    assert lib.select_s3_expiry([lib.Item(old1, False, "x")], 30, now) == []
    assert lib.select_s3_expiry(backups, 365, now) == []


# ---------------------------------------------------------------------------------------------
# good and bad backups: one rule (is_good), the states it gives, and who follows them

REASON = "base.tar.gz: sha256 0f, the manifest says 9e"


def base_manifest(label: str, bad: bool = False, verified: bool = True, **extra) -> dict:
    out = {"label": label, "kind": "base", "verified": verified, "error": None,
           "end_time": lib.iso(lib.label_time(label) + timedelta(minutes=10)),
           "start_wal_segment": f"00000001000000000000{label[6:8]}{label[9:11]}",
           "files": {}, **extra}
    if bad:
        out["bad"] = lib.bad_mark(REASON, "local")
    return out


def entry_of(label: str, where: str = "local", **kw) -> dict:
    m = base_manifest(label, **kw)
    return lib._entry(where, "base", None, label, m, lib.backup_state(where, m))


def test_a_backup_marked_bad_is_not_good_whatever_its_verified_says():
    label = "20261101T000000Z"
    good, bad = base_manifest(label), base_manifest(label, bad=True)
    failed = base_manifest(label, verified=False, error="pg_basebackup exited with 1")
    assert lib.is_good(good) and not lib.is_good(bad) and not lib.is_good(failed)
    assert not lib.is_good({}) and not lib.is_good(None)
    assert [lib.backup_state("local", m) for m in (good, bad, failed, {})] == [
        "verified", "bad", "failed", "partial"]
    assert lib.backup_state("local", good, complete=False) == "failed"
    assert [lib.backup_state("s3", m) for m in (good, bad, {})] == [
        "published", "bad", "unpublished"]
    entry = entry_of("20261101T000000Z", bad=True)
    assert entry["state"] == "bad" and entry["error"] == REASON and not lib.usable(entry)
    assert entry["bad"]["by"] == "pginfra-backup verify" and lib.parse_time(entry["bad"]["time"])
    assert lib.usable(entry_of("20261101T000000Z")) and entry_of("20261101T000000Z")["bad"] is None
    assert lib.usable(entry_of("20261101T000000Z", where="s3"))
    assert not lib.usable(entry_of("20261101T000000Z", where="s3", bad=True))


def test_retention_never_counts_a_bad_backup_as_a_verified_one():
    """The newest is bad: the good one before it is the one kept (keep=1), an older good one
    goes, and the WAL cutoff is the kept good one's start, not the bad one's."""
    entries = [entry_of("20261101T000000Z"), entry_of("20261108T000000Z"),
               entry_of("20261115T000000Z", bad=True)]
    kept, deleted = lib.select_local_retention(
        [lib.Item(e["label"], lib.usable(e), e) for e in entries], keep=1)
    assert [i.label for i in deleted] == ["20261101T000000Z"]
    assert [i.label for i in kept if i.verified] == ["20261108T000000Z"]
    assert [i.label for i in kept if not i.verified] == ["20261115T000000Z"]  # until a newer
    assert lib.wal_cutoff(i.ref["start_wal_segment"] for i in kept if i.verified) == \
        entries[1]["start_wal_segment"]
    # in S3 too: a bad published copy is not "a newer published one"
    s3 = [entry_of("20200101T000000Z", where="s3"),
          entry_of("20261115T000000Z", where="s3", bad=True)]
    assert lib.select_s3_expiry([lib.Item(e["label"], lib.usable(e), e) for e in s3], 30,
                                datetime(2026, 11, 23, tzinfo=UTC)) == []


def test_refresh_base_record_moves_off_a_bad_backup(tmp_path):
    cfg = lib.load_config(job_config(tmp_path))
    log = lib.JobLog("verify", None, stream=None)
    old, good, newest = "20261101T000000Z", "20261108T000000Z", "20261115T000000Z"
    for label in (old, good, newest):
        (tmp_path / "b/base" / label).mkdir(parents=True)
        lib.write_json(tmp_path / "b/base" / label / "pginfra.json", base_manifest(label))
    record_path = tmp_path / "s/last-success/base.json"
    lib.refresh_base_record(cfg, log)
    assert not record_path.exists()  # no record: none is made up
    lib.write_last_success(cfg.state_dir, "base", {"label": newest, "published": False})
    before = record_path.read_text()
    lib.refresh_base_record(cfg, log)
    assert record_path.read_text() == before  # it names a good one: left alone

    entry = next(e for e in lib.local_entries(cfg) if e["label"] == newest)
    lib.mark_bad(cfg, entry, REASON)
    assert json.loads((tmp_path / "b/base" / newest / "pginfra.json").read_text())[
        "bad"]["reason"] == REASON
    lib.refresh_base_record(cfg, log)
    record = json.loads(record_path.read_text())
    assert record["label"] == good and record["job"] == "base"
    assert record["time"] == base_manifest(good)["end_time"]  # its age is the good one's
    assert record["replaces"]["label"] == newest

    # a published copy marked bad counts too (for the record); the older good one is next
    m = base_manifest(good, published={"time": "x", "url": "s3://b/k",
                                  "bad": lib.bad_mark(REASON, "s3")})
    lib.write_json(tmp_path / "b/base" / good / "pginfra.json", m)
    lib.refresh_base_record(cfg, log)
    assert json.loads(record_path.read_text())["label"] == old
    lib.mark_bad(cfg, next(e for e in lib.local_entries(cfg) if e["label"] == old), REASON)
    lib.refresh_base_record(cfg, log)
    assert not record_path.exists()  # none good: the health check says so (critical)


def test_stale_archtemp_files_are_only_basic_archive_leftovers_older_than_an_hour():
    now = 1_800_000_000.0
    old_segment = "archtemp.000000010000000000000003.4242.1700000000000"
    old_history = "archtemp.00000002.history.4242.1700000000001"
    files = [(old_segment, now - 2 * 3600), (old_history, now - 3601),
             ("archtemp.000000010000000000000004.4243.1800000000000", now - 60),
             ("archtemp.000000010000000000000005.4244.1800000000001", now + 600),
             ("000000010000000000000003", now - 7200), ("archtemp.notes", now - 7200),
             ("xarchtemp.000000010000000000000003.1.2", now - 7200)]
    assert lib.ARCHTEMP_STALE_SECONDS == 3600
    assert lib.select_stale_archtemp(files, now) == sorted([old_segment, old_history])
    assert lib.select_stale_archtemp(files, now, max_age=4000) == [old_segment]


def test_batches_hold_at_most_1000_keys():
    assert [len(b) for b in lib.batches(list(range(2500)))] == [1000, 1000, 500]
    assert list(lib.batches([])) == []


# ---------------------------------------------------------------------------------------------
# WAL

def test_wal_names():
    assert lib.is_wal_name("000000010000000000000002")
    assert lib.is_wal_name("00000002.history")
    assert lib.is_wal_name("000000010000000000000002.00000028.backup")
    for name in ("archtemp.000000010000000000000002.1234.1700000000", "x",
                 "000000010000000000000002.partial", "000000010000000000000002.tmp",
                 "00000001000000000000000g"):
        assert not lib.is_wal_name(name), name


def test_lsn_to_segment():
    assert lib.lsn_to_segment(1, "0/2000028") == "000000010000000000000002"
    assert lib.lsn_to_segment(2, "1/A0000000") == "0000000200000001000000A0"
    assert lib.lsn_to_segment(1, "0/2000028", 64 * MiB) == "000000010000000000000000"


def test_wal_cutoff_and_selection_like_pg_archivecleanup():
    cutoff = lib.wal_cutoff(["000000010000000000000009", "000000010000000000000005", None])
    assert cutoff == "000000010000000000000005"
    names = ["000000010000000000000003", "000000010000000000000004",
             "000000010000000000000004.00000028.backup", "000000010000000000000005",
             "000000010000000000000006", "00000002.history", "000000020000000000000004",
             "000000010000000000000004.partial", "archtemp.x"]
    assert lib.select_wal_to_delete(names, cutoff) == [
        "000000010000000000000003", "000000010000000000000004",
        "000000010000000000000004.00000028.backup", "000000010000000000000004.partial",
        "000000020000000000000004"]  # timeline ignored; history files always kept
    # with S3, only shipped files go (partial files are never shipped and go anyway)
    shipped = {"000000010000000000000003"}
    assert lib.select_wal_to_delete(names, cutoff, shipped) == [
        "000000010000000000000003", "000000010000000000000004.partial"]
    assert lib.select_wal_to_delete(names, None) == []
    assert lib.wal_cutoff([]) is None


# ---------------------------------------------------------------------------------------------
# manifests

def _tar_gz(members: dict[str, bytes], empty_first_member=False) -> bytes:
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), 0o600
            tar.addfile(info, io.BytesIO(data))
        for directory in ("pg_wal", "./pg_wal/archive_status"):
            if not empty_first_member:
                info = tarfile.TarInfo(directory)
                info.type, info.mode = tarfile.DIRTYPE, 0o700
                tar.addfile(info)
    data = gzip.compress(raw.getvalue())
    # pg_basebackup's pg_wal.tar.gz starts with an empty gzip member
    return gzip.compress(b"") + data if empty_first_member else data


def _manifest(files: dict[str, bytes]) -> bytes:
    lines = ['{ "PostgreSQL-Backup-Manifest-Version": 1,', '"Files": [']
    entries = [json.dumps({"Path": n, "Size": len(d), "Checksum-Algorithm": "SHA256",
                           "Checksum": hashlib.sha256(d).hexdigest()})
               for n, d in files.items()]
    lines.append(",\n".join(entries))
    lines += ["],", '"WAL-Ranges": [',
              '{ "Timeline": 1, "Start-LSN": "0/2000028", "End-LSN": "0/2000100" }', "],"]
    body = ("\n".join(lines) + "\n").encode()
    checksum = hashlib.sha256(body).hexdigest()
    return body + f'"Manifest-Checksum": "{checksum}"}}\n'.encode()


DATA = {
    "backup_label": b"START WAL LOCATION: 0/2000028 (file 000000010000000000000002)\n"
                    b"CHECKPOINT LOCATION: 0/2000060\nSTART TIMELINE: 1\n",
    "PG_VERSION": b"15\n",
    "global/pg_control": bytes(range(256)) * 32,
    "base/5/1259": b"x" * 10000,
}


@pytest.fixture
def backup(tmp_path):
    """A base backup laid out as pg_basebackup -Ft -z writes it (without real WAL)."""
    directory = tmp_path / "20261123T160000Z"
    directory.mkdir()
    (directory / "base.tar.gz").write_bytes(_tar_gz(DATA))
    (directory / "pg_wal.tar.gz").write_bytes(
        _tar_gz({"000000010000000000000002": b"\0" * 4096}, empty_first_member=True))
    (directory / "backup_manifest").write_bytes(_manifest(DATA))
    return directory


def test_a_sound_backup_verifies(backup):
    result = lib.verify_base_backup(backup)  # no bin_dir: pg_waldump not run
    assert result["errors"] == []
    assert result["start_wal_segment"] == "000000010000000000000002"
    assert result["timeline"] == 1 and result["end_lsn"] == "0/2000100"
    assert set(result["files"]) == {"base.tar.gz", "pg_wal.tar.gz", "backup_manifest"}
    assert result["files"]["base.tar.gz"]["sha256"] == hashlib.sha256(
        (backup / "base.tar.gz").read_bytes()).hexdigest()
    assert lib.check_files(backup, result["files"]) == []


def test_a_tampered_member_is_named(backup):
    tampered = dict(DATA)
    tampered["global/pg_control"] = bytes(reversed(DATA["global/pg_control"]))  # same size
    (backup / "base.tar.gz").write_bytes(_tar_gz(tampered))
    errors = lib.verify_base_backup(backup)["errors"]
    assert errors == ["base.tar.gz: global/pg_control: SHA256 mismatch with backup_manifest"]


def test_a_truncated_archive_is_named(backup):
    data = (backup / "base.tar.gz").read_bytes()
    (backup / "base.tar.gz").write_bytes(data[: len(data) // 2])
    errors = lib.verify_base_backup(backup)["errors"]
    assert any(e.startswith("base.tar.gz: corrupt or truncated") for e in errors), errors
    wal = (backup / "pg_wal.tar.gz").read_bytes()
    (backup / "pg_wal.tar.gz").write_bytes(wal[:-6])  # the CRC trailer cut off
    errors = lib.verify_base_backup(backup)["errors"]
    assert any(e.startswith("pg_wal.tar.gz: corrupt or truncated") for e in errors), errors


def test_missing_extra_and_resized_members_are_named(backup):
    changed = {k: v for k, v in DATA.items() if k != "base/5/1259"}
    changed["PG_VERSION"] = b"15\n\n"
    changed["stray"] = b"?"
    (backup / "base.tar.gz").write_bytes(_tar_gz(changed))
    errors = lib.verify_base_backup(backup)["errors"]
    assert "base.tar.gz: PG_VERSION: 4 bytes, backup_manifest says 3" in errors
    assert "base.tar.gz: stray is not in backup_manifest" in errors
    assert any("missing, e.g. base/5/1259" in e for e in errors)


def test_an_edited_backup_manifest_fails_its_own_checksum(backup):
    text = (backup / "backup_manifest").read_bytes().replace(b'"Size": 3', b'"Size": 3 ')
    (backup / "backup_manifest").write_bytes(text)
    assert ("backup_manifest: its Manifest-Checksum does not match its contents"
            in lib.verify_base_backup(backup)["errors"])


def test_check_files_names_a_tampered_or_truncated_file(tmp_path):
    (tmp_path / "a.dump").write_bytes(b"A" * 100)
    (tmp_path / "b.dump").write_bytes(b"B" * 100)
    files = lib.describe_files(tmp_path, ["a.dump", "b.dump"])
    assert lib.check_files(tmp_path, files) == []
    (tmp_path / "a.dump").write_bytes(b"A" * 50)
    (tmp_path / "b.dump").write_bytes(b"C" * 100)
    problems = lib.check_files(tmp_path, {**files, "c.dump": {"size": 1, "sha256": "0"}})
    assert problems[0].startswith("a.dump: size 50, the manifest says 100")
    assert problems[1].startswith("b.dump: sha256 ")
    assert problems[2] == "c.dump: missing"


def test_a_truncated_globals_dump_fails(tmp_path):
    path = tmp_path / "g.sql"
    path.write_text("--\n-- PostgreSQL database cluster dump\n--\nCREATE ROLE app;\n"
                    "--\n-- PostgreSQL database cluster dump complete\n--\n\n")
    assert lib.verify_globals_file(path) is None
    path.write_text("--\n-- PostgreSQL database cluster dump\n--\nCREATE ROLE app;\n")
    assert "truncated" in lib.verify_globals_file(path)


def test_compare_counts():
    assert lib.compare_counts({"public.a": 1}, {"public.a": 1}) == []
    assert lib.compare_counts({"public.a": 2, "public.b": 1}, {"public.a": 1, "public.c": 0}) \
        == ["public.a: 1 rows restored, 2 expected",
            "public.b: missing from the restore (1 rows expected)",
            "public.c: in the restore only (0 rows)"]


def test_choose_base_for_a_target_time():
    def entry(label, end, state="verified"):
        return {"kind": "base", "label": label, "end_time": end, "state": state}
    entries = [entry("20261101T000000Z", "2026-11-01T00:10:00Z"),
               entry("20261108T000000Z", "2026-11-08T00:10:00Z"),
               entry("20261109T000000Z", "2026-11-09T00:10:00Z", "failed"),
               entry("20261115T000000Z", "2026-11-15T00:10:00Z")]
    target = datetime(2026, 11, 10, tzinfo=UTC)
    assert lib.choose_base(entries, target)["label"] == "20261108T000000Z"
    assert lib.choose_base(entries, target, "20261101T000000Z")["label"] == "20261101T000000Z"
    with pytest.raises(lib.Failed, match="not before the target"):
        lib.choose_base(entries, target, "20261115T000000Z")
    with pytest.raises(lib.Failed, match="no verified base backup labelled"):
        lib.choose_base(entries, target, "20261109T000000Z")
    with pytest.raises(lib.Failed, match="no verified base backup ended before"):
        lib.choose_base(entries, datetime(2026, 11, 1, 0, 5, tzinfo=UTC))


def test_choose_base_never_picks_one_marked_bad():
    """The newest before the target is bad (local or its published copy in S3): the one
    before it is chosen, and naming the bad one is refused with its reason."""
    target = datetime(2026, 11, 20, tzinfo=UTC)
    for where in ("local", "s3"):
        entries = [entry_of("20261108T000000Z", where=where),
                   entry_of("20261115T000000Z", where=where, bad=True)]
        assert lib.choose_base(entries, target)["label"] == "20261108T000000Z"
        with pytest.raises(lib.Failed, match=f"marked bad \\({REASON}"):
            lib.choose_base(entries, target, "20261115T000000Z")
        with pytest.raises(lib.Failed, match="0 verified in all, 1 marked bad"):
            lib.choose_base(entries[1:], target)


# ---------------------------------------------------------------------------------------------
# configuration

def config_error(change) -> str:
    raw = copy.deepcopy(EXAMPLE)
    change(raw)
    with pytest.raises(lib.ConfigError) as caught:
        lib.validate_config(raw)
    return str(caught.value)


def test_the_documented_example_is_valid():
    cfg = lib.validate_config(copy.deepcopy(EXAMPLE))
    assert cfg.s3.bucket == "b-1" and cfg.port == 5432 and cfg.databases == ["app", "community"]
    assert cfg.socket_dir == "/var/run/postgresql"
    assert cfg.bin("pg_dump") == "/usr/lib/postgresql/15/bin/pg_dump"
    local = copy.deepcopy(EXAMPLE)
    local["s3"] = None
    assert lib.validate_config(local).s3 is None


def test_config_errors_name_the_key():
    assert config_error(lambda r: r.pop("port")) == "key 'port' is missing"
    assert config_error(lambda r: r.update(port="5432")).startswith(
        "key 'port': must be an integer >= 1 and <= 65535")
    assert config_error(lambda r: r.update(keep_local_base=True)).startswith(
        "key 'keep_local_base': must be an integer")
    assert config_error(lambda r: r.update(backup_dir="relative/dir")).startswith(
        "key 'backup_dir': must be an absolute path")
    assert config_error(lambda r: r.update(stop_command="systemctl stop x")).startswith(
        "key 'stop_command': must be a non-empty list")
    assert config_error(lambda r: r.update(databases=["app", "a/b"])).startswith(
        "key 'databases[1]'")
    assert config_error(lambda r: r["s3"].update(sse="aes")).startswith("key 's3.sse'")
    assert config_error(lambda r: r["s3"].pop("keep_days")) == "key 's3.keep_days' is missing"
    assert config_error(lambda r: r["s3"].update(kms_key_id="k")).startswith(
        "key 's3.kms_key_id': may only be set with s3.sse 'aws:kms'")
    assert config_error(lambda r: r["s3"].update(request_checksum_calculation="x")) \
        .startswith("key 's3.request_checksum_calculation'")
    assert config_error(lambda r: r["s3"].update(bucket="Bad_Bucket")).startswith(
        "key 's3.bucket'")
    assert config_error(lambda r: r.update(keep_local_dump=3)).startswith(
        "unknown key(s) 'keep_local_dump'")
    assert config_error(lambda r: r["s3"].update(retries=3)).startswith(
        "unknown key(s) s3.retries")


def test_load_config_messages(tmp_path):
    with pytest.raises(lib.ConfigError, match="no such file"):
        lib.load_config(str(tmp_path / "absent.json"))
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(lib.ConfigError, match="not valid JSON"):
        lib.load_config(str(bad))
    bad.write_text(json.dumps({**EXAMPLE, "port": 0}))
    with pytest.raises(lib.ConfigError, match=r"bad.json: key 'port'"):
        lib.load_config(str(bad))


# ---------------------------------------------------------------------------------------------
# jobs: locks, exit codes, last-success, log lines

def job_config(tmp_path) -> str:
    raw = copy.deepcopy(EXAMPLE)
    raw.update(backup_dir=str(tmp_path / "b"), state_dir=str(tmp_path / "s"),
               log_dir=str(tmp_path / "l"), s3=None)
    path = tmp_path / "backup.json"
    path.write_text(json.dumps(raw))
    return str(path)


def run(tmp_path, body, capsys, **kw):
    rc = lib.run_job("/x/pginfra-backup", "demo", job_config(tmp_path), body, None,
                     as_root=True, **kw)
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    return rc, lines


def test_success_writes_last_success_and_log_lines(tmp_path, capsys):
    rc, lines = run(tmp_path, lambda cfg, args, log: {"label": "L"}, capsys)
    assert rc == 0
    success = json.loads((tmp_path / "s/last-success/demo.json").read_text())
    assert success["label"] == "L" and success["job"] == "demo"
    assert lines[-1]["stage"] == "end" and lines[-1]["status"] == "ok"
    assert set(lines[-1]) == {"time", "job", "stage", "status", "seconds", "bytes", "detail"}
    assert (tmp_path / "l/demo.log").read_text().count("\n") == len(lines)
    assert oct((tmp_path / "s/locks").stat().st_mode & 0o777) == "0o700"


def test_a_failed_stage_gives_1_and_no_last_success(tmp_path, capsys):
    def body(cfg, args, log):
        with log.stage("work", detail="x"):
            raise OSError("disk full")
    rc, lines = run(tmp_path, body, capsys)
    assert rc == 1
    assert not (tmp_path / "s/last-success/demo.json").exists()
    assert lines[0]["stage"] == "work" and lines[0]["detail"] == "x: OSError: disk full"

    def logged_failure(cfg, args, log):
        log.emit("upload", "failed", detail="unreachable")
        return {"label": "L"}  # a body that carried on: the failure still counts
    rc, _ = run(tmp_path, logged_failure, capsys)
    assert rc == 1 and not (tmp_path / "s/last-success/demo.json").exists()


def test_bad_usage_gives_2_and_a_held_lock_75(tmp_path, capsys):
    def usage(cfg, args, log):
        raise lib.ConfigError("no such database")
    rc, _ = run(tmp_path, usage, capsys)
    assert rc == 2
    assert lib.run_job("/x/p", "demo", str(tmp_path / "nothing.json"), usage, None,
                       as_root=True) == 2
    fd, _path = lib.acquire_lock(str(tmp_path / "s"), "demo")
    try:
        rc, lines = run(tmp_path, lambda cfg, args, log: {}, capsys)
        assert rc == 75 and lines[0]["status"] == "skipped"
        assert "holds" in lines[0]["detail"]
    finally:
        os.close(fd)
    assert run(tmp_path, lambda cfg, args, log: {}, capsys)[0] == 0


def test_restore_command(tmp_path):
    program = tmp_path / "pginfra-restore"
    program.write_text("#!/usr/bin/python3\n")
    program.chmod(0o755)
    assert lib.restore_command(str(program), lib.DEFAULT_CONFIG) == \
        f"{program} fetch-wal %f %p"
    assert lib.restore_command(str(program), "/etc/x y.json") == \
        f"{program} --config '/etc/x y.json' fetch-wal %f %p"
    program.chmod(0o644)
    assert lib.restore_command(str(program), lib.DEFAULT_CONFIG).startswith(
        f"{sys.executable} {program}")


def test_label_and_time_helpers():
    moment = datetime(2026, 11, 23, 16, 30, 5, tzinfo=UTC)
    assert lib.new_label(moment) == "20261123T163005Z"
    assert lib.label_time("20261123T163005Z") == moment
    assert lib.parse_time(lib.iso(moment + timedelta(microseconds=7))) == \
        moment + timedelta(microseconds=7)
