"""files/pginfra_backup_lib.py: the pure parts of backup and restore (what pgBackRest's info and
verify say and what is chosen from it, dump retention, chunk sizes, manifest checks,
configuration validation, exit codes). The programs themselves, against PostgreSQL, pgBackRest
and S3, are in test_backup_programs.py.

data/pgbackrest/ holds real pgBackRest 2.45 output (stanza "pgbr", two repositories, repo2 on
S3), from the research run of docs/research/pgbackrest-2.45.md: info-two-repos.json is
`info --output=json` after a PITR (timelines 1 and 2, backups of both repositories mixed);
info-repo2-down.json the same with S3 refusing connections; the verify-*.txt files are
`verify --output=text` as printed (the log lines of /tmp/pgbr/logs/pgbr-verify.log without
their prefix): all valid; one backup file with a flipped byte (without --verbose); that file
and a truncated WAL file (with --verbose)."""

import copy
import json
import math
import os
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from pginfra_host import backup_config, dumps, pgbr, runner, s3store, util

DATA = Path(__file__).parent / "data" / "pgbackrest"
MiB, GiB, TiB = 1 << 20, 1 << 30, 1 << 40

EXAMPLE = {
    "host": "pg1", "version": 15, "cluster": "main", "port": 5432,
    "data_directory": "/var/lib/postgresql/15/main",
    "stop_command": ["systemctl", "stop", "postgresql@15-main"],
    "start_command": ["systemctl", "start", "postgresql@15-main"],
    "wal_archive_dir": "/var/lib/postgresql/wal-archive",
    "backup_dir": "/var/backups/postgresql/pginfra", "state_dir": "/var/lib/pginfra/backup",
    "log_dir": "/var/log/pginfra", "databases": ["app", "community"], "keep_local_dumps": 7,
    "pgbackrest": {"stanza": "main", "config": "/etc/pgbackrest/pgbackrest.conf",
                   "repos": [1, 2], "backup_standby": True, "retention_full": 2},
    "s3": {"bucket": "b-1", "prefix": "pginfra", "region": "eu-west-1",
           "endpoint_url": "https://10.77.1.1:5000", "sse": "AES256", "kms_key_id": "",
           "storage_class": "STANDARD", "request_checksum_calculation": "when_required",
           "keep_days": 30, "credentials_file": "/etc/pginfra/s3-credentials",
           "ca_file": "/etc/pginfra/s3-ca.crt"},
}


def info() -> dict:
    return pgbr.stanza_info((DATA / "info-two-repos.json").read_text(), "pgbr")


def at(text: str) -> datetime:
    return datetime.fromisoformat(text)


# ---------------------------------------------------------------------------------------------
# pgBackRest: info

def test_info_backups_per_repository_oldest_first():
    stanza = info()
    assert [b["label"] for b in pgbr.repo_backups(stanza, 1)] == [
        "20261130-155345F", "20261130-155348F", "20261130-155348F_20261130-155445I",
        "20261130-155348F_20261130-155646I", "20261130-155348F_20261130-155712I"]
    assert [b["label"] for b in pgbr.repo_backups(stanza, 2)] == [
        "20261130-154141F", "20261130-154141F_20261130-154159D", "20261130-155518F",
        "20261130-155518F_20261130-155809I"]
    assert pgbr.repo_backups(stanza, 3) == []
    assert pgbr.backup_summary(pgbr.repo_backups(stanza, 2)[1]) == {
        "repo": 2, "label": "20261130-154141F_20261130-154159D", "type": "diff",
        "start": "2026-11-30T15:41:59.000000Z", "stop": "2026-11-30T15:42:00.000000Z",
        "size": 36866414, "repo_size": 3345136}
    # system-id is above 2**53: json keeps it exact
    assert stanza["db"][0]["system-id"] == 7713989343216642905
    with pytest.raises(runner.Failed, match="does not list stanza main"):
        pgbr.stanza_info((DATA / "info-two-repos.json").read_text(), "main")


def test_info_with_a_repository_down_still_lists_the_other():
    stanza = pgbr.stanza_info((DATA / "info-repo2-down.json").read_text(), "pgbr")
    assert [r["status"]["code"] for r in stanza["repo"]] == [0, 99]
    assert [b["label"] for b in pgbr.repo_backups(stanza, 1)] == [
        "20261130-154138F", "20261130-154138F_20261130-154157D"]
    assert pgbr.repo_backups(stanza, 2) == []


def test_the_backup_for_a_target_time_is_the_newest_that_stopped_before_it():
    repo1 = pgbr.repo_backups(info(), 1)
    # 155445I stopped 15:54:47, 155646I at 15:56:47
    assert pgbr.choose_backup(repo1, at("2026-11-30 15:55:00+00"))["label"] == \
        "20261130-155348F_20261130-155445I"
    assert pgbr.choose_backup(repo1, at("2026-11-30 17:55:00+02"))["label"] == \
        "20261130-155348F_20261130-155445I"  # the same moment, another offset
    assert pgbr.choose_backup(repo1, at("2026-11-30 15:53:50+00"))["label"] == \
        "20261130-155345F"  # 155348F stopped at 15:53:51: not yet
    assert pgbr.choose_backup(repo1, at("2026-11-30 15:53:51.9+00"))["label"] == \
        "20261130-155345F"  # nor in the same second: pgBackRest drops the fraction
    assert pgbr.choose_backup(repo1, at("2026-11-30 15:53:52+00"))["label"] == \
        "20261130-155348F"
    assert pgbr.choose_backup(repo1, at("2027-01-01 00:00:00+00"))["label"] == \
        "20261130-155348F_20261130-155712I"
    repo2 = pgbr.repo_backups(info(), 2)
    assert pgbr.choose_backup(repo2, at("2026-11-30 15:55:00+00"))["label"] == \
        "20261130-154141F_20261130-154159D"  # repo 2's own, not repo 1's newer ones
    with pytest.raises(runner.ConfigError, match="before the oldest backup's stop time "
                       "2026-11-30T15:53:47.000000Z"):
        pgbr.choose_backup(repo1, at("2026-11-30 15:53:00+00"))
    with pytest.raises(runner.Failed, match="holds no backup"):
        pgbr.choose_backup([], at("2026-11-30 15:53:00+00"))


def test_pgbackrest_command_names_config_include_path_and_stanza():
    cfg = backup_config.validate_config(copy.deepcopy(EXAMPLE))
    assert pgbr.pgbackrest_command(cfg, "--type=full", "backup", repo=2) == [
        "pgbackrest", "--config=/etc/pgbackrest/pgbackrest.conf",
        "--config-include-path=/etc/pgbackrest/conf.d", "--stanza=main", "--repo=2",
        "--type=full", "backup"]
    assert "--repo" not in " ".join(pgbr.pgbackrest_command(cfg, "check"))


# ---------------------------------------------------------------------------------------------
# pgBackRest: verify (exits 0 whatever it finds: the text decides)

def test_verify_all_valid():
    problems, valid = pgbr.parse_verify((DATA / "verify-ok.txt").read_text())
    assert problems == []
    assert valid == ["20261130-154138F", "20261130-154138F_20261130-154157D"]


def test_verify_a_corrupt_backup_file_names_the_backup_and_the_count():
    problems, valid = pgbr.parse_verify((DATA / "verify-checksum-invalid.txt").read_text())
    assert problems == [
        "stanza status: error",
        "backup 20261130-154138F: status invalid (backup: 20261130-154138F, status: invalid, "
        "total files checked: 968, total valid files: 967)",
        "backup 20261130-154138F: checksum invalid: 1"]
    assert valid == []


def test_verify_a_corrupt_wal_file_and_a_corrupt_backup():
    problems, valid = pgbr.parse_verify((DATA / "verify-backup-and-wal-invalid.txt").read_text())
    assert problems[0] == "stanza status: error"
    assert "archive 15-1: other: 1" in problems
    assert "backup 20261130-154138F: checksum invalid: 1" in problems
    assert not any("154157D" in p for p in problems)  # the valid diff is not blamed
    assert valid == ["20261130-154138F_20261130-154157D"]


def test_verify_counts_and_exit_codes():
    ok = (DATA / "verify-ok.txt").read_text()
    for name in ("missing", "size invalid", "other"):
        text = ok.replace(f"{name}: 0", f"{name}: 3", 1)
        assert f"archive 15-1: {name}: 3" in pgbr.parse_verify(text)[0]
    problems, _ = pgbr.parse_verify("", 31, "ERROR: [031]: option 'repo1-cipher-pass' is not "
                                   "allowed on the command-line\n")
    assert problems == ["verify exited with 31: ERROR: [031]: option 'repo1-cipher-pass' is "
                        "not allowed on the command-line"]
    assert pgbr.parse_verify("")[0] == ["verify printed no status: nothing"]
    assert pgbr.parse_verify("stanza: x\nstatus: ok\n") == ([], [])  # an empty repository


def test_record_verify_keeps_the_other_repositories_results(tmp_path):
    cfg = backup_config.load_config(job_config(tmp_path))
    ok = {"ok": True, "problems": [], "valid": ["20261130-155345F"]}
    bad = {"ok": False, "problems": ["backup X: checksum invalid: 1"], "valid": []}
    path = pgbr.record_verify(cfg, {1: ok, 2: bad})
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    first = json.loads(path.read_text())
    assert first["repos"]["2"]["problems"] == bad["problems"]
    pgbr.record_verify(cfg, {1: {**ok, "valid": ["L2"]}})
    second = json.loads(path.read_text())
    assert second["repos"]["1"]["valid"] == ["L2"]
    assert second["repos"]["2"] == first["repos"]["2"]  # verified earlier, kept
    assert util.parse_time(second["time"]) >= util.parse_time(first["time"])


# ---------------------------------------------------------------------------------------------
# the pre-pgBackRest layout

def test_legacy_wal_names_are_basic_archives_not_pgbackrests():
    names = ["000000010000000000000003", "00000002.history",
             "000000010000000000000004.00000028.backup", "000000010000000000000005.partial",
             "archtemp.000000010000000000000006.4242.1700000000000", "archive", "backup",
             "backup.info", "archive.info", "notes.txt", "00000001000000000000000g",
             "xarchtemp.000000010000000000000003.1.2", "000000010000000000000003.tmp"]
    assert pgbr.legacy_wal_names(names) == [
        "000000010000000000000003", "000000010000000000000004.00000028.backup",
        "000000010000000000000005.partial", "00000002.history",
        "archtemp.000000010000000000000006.4242.1700000000000"]


def test_legacy_cleanup_waits_for_enough_verified_full_backups_in_repo1():
    stanza = info()
    both = ["20261130-155345F", "20261130-155348F", "20261130-155348F_20261130-155445I"]
    state = {"repos": {"1": {"ok": True, "problems": [], "valid": both}}}
    assert pgbr.clean_fulls(stanza, 1, state) == ["20261130-155345F", "20261130-155348F"]
    # only fulls count, only repo 1's, only valid ones, only from a clean verify
    assert pgbr.clean_fulls(stanza, 2, state) == []
    one = {"repos": {"1": {"ok": True, "problems": [], "valid": both[1:]}}}
    assert pgbr.clean_fulls(stanza, 1, one) == ["20261130-155348F"]
    broken = {"repos": {"1": {"ok": False, "problems": ["x"], "valid": both}}}
    assert pgbr.clean_fulls(stanza, 1, broken) == []
    assert pgbr.clean_fulls(stanza, 1, None) == [] == pgbr.clean_fulls(stanza, 1, {})


# ---------------------------------------------------------------------------------------------
# chunk sizes

def parts(size, chunk):
    return math.ceil(size / chunk)


def test_chunk_fits_one_and_five_tib_in_ten_thousand_parts():
    for size in (1 * TiB, 5 * TiB):
        chunk = s3store.chunk_size(size)
        assert parts(size, chunk) <= 10_000
        assert chunk % MiB == 0 and chunk <= 5 * GiB
    # a small file still gets a chunk that would carry 1 TiB (a growing or streamed object)
    small = s3store.chunk_size(10 * MiB)
    assert parts(1 * TiB, small) <= 10_000
    assert small == s3store.chunk_size(0) == 105 * MiB


def test_chunk_floor_is_8_mib_by_default_and_5_mib_for_the_test_hook():
    for size in (0, 1, 5 * MiB, 100 * GiB, 1 * TiB, 3 * TiB):
        assert s3store.chunk_size(size) >= 8 * MiB
    assert s3store.chunk_size(123, override=1) == 5 * MiB       # S3's smallest part
    assert s3store.chunk_size(123, override=6 * MiB) == 6 * MiB
    assert s3store.chunk_size(123, override=10 * GiB) == 5 * GiB  # S3's largest part


def test_chunk_refuses_what_s3_cannot_hold():
    with pytest.raises(runner.Failed):
        s3store.chunk_size(60 * TiB)


# ---------------------------------------------------------------------------------------------
# retention

def items(spec):
    """'g1 f2 p3' -> verified (g), failed (f) and partial (p) backups with labels in order."""
    out = []
    for n, word in enumerate(spec.split()):
        label = f"2026010{n // 10}T0000{n % 10:02d}Z"
        out.append(dumps.Item(label, word[0] == "g", word))
    return out


def names(selection):
    return [i.ref for i in selection]


def test_retention_keeps_the_newest_verified_and_drops_older():
    kept, deleted = dumps.select_local_retention(items("g1 g2 g3 g4"), keep=2)
    assert names(kept) == ["g3", "g4"] and names(deleted) == ["g1", "g2"]


def test_retention_newest_failed_keeps_the_previous_good_one():
    kept, deleted = dumps.select_local_retention(items("g1 g2 f3"), keep=1)
    assert names(kept) == ["g2", "f3"]      # f3 is newer than any verified: kept as evidence
    assert names(deleted) == ["g1"]


def test_retention_failed_and_partial_go_only_when_older_than_the_newest_verified():
    kept, deleted = dumps.select_local_retention(items("g1 f2 p3 g4 p5"), keep=2)
    assert names(deleted) == ["f2", "p3"]
    assert names(kept) == ["g1", "g4", "p5"]  # p5 may be a run in progress


def test_retention_without_a_verified_backup_deletes_nothing():
    kept, deleted = dumps.select_local_retention(items("f1 p2 f3"), keep=1)
    assert deleted == [] and names(kept) == ["f1", "p2", "f3"]


def test_retention_never_deletes_the_last_verified():
    for keep in (0, -3, 1):
        kept, deleted = dumps.select_local_retention(items("f1 g2 f3 f4"), keep=keep)
        assert "g2" in names(kept) and names(deleted) == ["f1"]


def test_s3_expiry_needs_a_newer_published_backup_and_age():
    now = datetime(2026, 11, 23, tzinfo=UTC)
    old1, old2, recent = "20260901T000000Z", "20260915T000000Z", "20261120T000000Z"
    backups = [dumps.Item(old1, True, "old1"), dumps.Item(old2, False, "old2-unpublished"),
               dumps.Item(recent, True, "recent")]
    assert names(dumps.select_s3_expiry(backups, 30, now)) == ["old1", "old2-unpublished"]
    # the newest published is kept however old; unpublished ones newer than it stay too
    only_old = [dumps.Item(old1, True, "old1"), dumps.Item(old2, True, "old2"),
                dumps.Item(recent, False, "recent-unpublished")]
    assert names(dumps.select_s3_expiry(only_old, 30, now)) == ["old1"]
    assert dumps.select_s3_expiry([dumps.Item(old1, False, "x")], 30, now) == []
    assert dumps.select_s3_expiry(backups, 365, now) == []


# ---------------------------------------------------------------------------------------------
# good and bad dumps: one rule (is_good), the states it gives, and who follows them

REASON = "20261101T000000Z.dump: sha256 0f, the manifest says 9e"


def dump_entry(label: str, where: str = "local", bad: bool = False,
               verified: bool = True) -> dict:
    manifest = {"label": label, "kind": "dump", "database": "app", "verified": verified,
                "error": None, "files": {}}
    if bad:
        manifest["bad"] = dumps.bad_mark(REASON, where)
    return dumps.entry_record(where, "dump", "app", label, manifest,
                              dumps.backup_state(where, manifest))


def test_a_dump_marked_bad_is_not_good_whatever_its_verified_says():
    good = {"verified": True}
    bad = {"verified": True, "bad": dumps.bad_mark(REASON, "local")}
    failed = {"verified": False, "error": "pg_dump exited with 1"}
    assert dumps.is_good(good) and not dumps.is_good(bad) and not dumps.is_good(failed)
    assert not dumps.is_good({}) and not dumps.is_good(None)
    assert [dumps.backup_state("local", m) for m in (good, bad, failed, {})] == [
        "verified", "bad", "failed", "partial"]
    assert dumps.backup_state("local", good, complete=False) == "failed"
    assert [dumps.backup_state("s3", m) for m in (good, bad, {})] == [
        "published", "bad", "unpublished"]
    entry = dump_entry("20261101T000000Z", bad=True)
    assert entry["state"] == "bad" and entry["error"] == REASON and not dumps.usable(entry)
    assert entry["bad"]["by"] == "pginfra-backup verify" and util.parse_time(entry["bad"]["time"])
    assert dumps.usable(dump_entry("20261101T000000Z"))
    assert dumps.usable(dump_entry("20261101T000000Z", where="s3"))
    assert not dumps.usable(dump_entry("20261101T000000Z", where="s3", bad=True))


def test_retention_never_counts_a_bad_dump_as_a_verified_one():
    entries = [dump_entry("20261101T000000Z"), dump_entry("20261108T000000Z"),
               dump_entry("20261115T000000Z", bad=True)]
    kept, deleted = dumps.select_local_retention(
        [dumps.Item(e["label"], dumps.usable(e), e) for e in entries], keep=1)
    assert [i.label for i in deleted] == ["20261101T000000Z"]
    assert [i.label for i in kept] == ["20261108T000000Z", "20261115T000000Z"]
    s3 = [dump_entry("20200101T000000Z", where="s3"),
          dump_entry("20261115T000000Z", where="s3", bad=True)]
    assert dumps.select_s3_expiry([dumps.Item(e["label"], dumps.usable(e), e) for e in s3], 30,
                                datetime(2026, 11, 23, tzinfo=UTC)) == []


def test_batches_hold_at_most_1000_keys():
    assert [len(b) for b in s3store.batches(list(range(2500)))] == [1000, 1000, 500]
    assert list(s3store.batches([])) == []


# ---------------------------------------------------------------------------------------------
# dumps

def test_check_files_names_a_tampered_or_truncated_file(tmp_path):
    (tmp_path / "a.dump").write_bytes(b"A" * 100)
    (tmp_path / "b.dump").write_bytes(b"B" * 100)
    files = {n: dict(zip(("sha256", "size"), util.sha256_file(tmp_path / n), strict=True))
             for n in ("a.dump", "b.dump")}
    assert util.check_files(tmp_path, files) == []
    (tmp_path / "a.dump").write_bytes(b"A" * 50)
    (tmp_path / "b.dump").write_bytes(b"C" * 100)
    problems = util.check_files(tmp_path, {**files, "c.dump": {"size": 1, "sha256": "0"}})
    assert problems[0].startswith("a.dump: size 50, the manifest says 100")
    assert problems[1].startswith("b.dump: sha256 ")
    assert problems[2] == "c.dump: missing"


def test_a_truncated_globals_dump_fails(tmp_path):
    path = tmp_path / "g.sql"
    path.write_text("--\n-- PostgreSQL database cluster dump\n--\nCREATE ROLE app;\n"
                    "--\n-- PostgreSQL database cluster dump complete\n--\n\n")
    assert dumps.verify_globals_file(path) is None
    path.write_text("--\n-- PostgreSQL database cluster dump\n--\nCREATE ROLE app;\n")
    assert "truncated" in dumps.verify_globals_file(path)


def test_compare_counts():
    assert dumps.compare_counts({"public.a": 1}, {"public.a": 1}) == []
    assert dumps.compare_counts({"public.a": 2, "public.b": 1}, {"public.a": 1, "public.c": 0}) \
        == ["public.a: 1 rows restored, 2 expected",
            "public.b: missing from the restore (1 rows expected)",
            "public.c: in the restore only (0 rows)"]


# ---------------------------------------------------------------------------------------------
# configuration

def config_error(change) -> str:
    raw = copy.deepcopy(EXAMPLE)
    change(raw)
    with pytest.raises(runner.ConfigError) as caught:
        backup_config.validate_config(raw)
    return str(caught.value)


def test_the_documented_example_is_valid():
    cfg = backup_config.validate_config(copy.deepcopy(EXAMPLE))
    assert cfg.s3.bucket == "b-1" and cfg.port == 5432 and cfg.databases == ["app", "community"]
    assert cfg.socket_dir == "/var/run/postgresql"
    assert cfg.bin("pg_dump") == "/usr/lib/postgresql/15/bin/pg_dump"
    assert cfg.pgbackrest == backup_config.PgBackRestSettings(
        stanza="main", config="/etc/pgbackrest/pgbackrest.conf", repos=[1, 2],
        backup_standby=True, retention_full=2)
    assert cfg.s3.ca_file == "/etc/pginfra/s3-ca.crt"
    local = copy.deepcopy(EXAMPLE)
    local["s3"] = None
    local["pgbackrest"]["repos"] = [1]
    assert backup_config.validate_config(local).s3 is None
    system_cas = copy.deepcopy(EXAMPLE)
    system_cas["s3"]["ca_file"] = ""
    assert backup_config.validate_config(system_cas).s3.ca_file == ""


def test_config_errors_name_the_key():
    assert config_error(lambda r: r.pop("port")) == "key 'port' is missing"
    assert config_error(lambda r: r.update(port="5432")).startswith(
        "key 'port': must be an integer >= 1 and <= 65535")
    assert config_error(lambda r: r.update(keep_local_dumps=True)).startswith(
        "key 'keep_local_dumps': must be an integer")
    assert config_error(lambda r: r.update(keep_local_base=2)).startswith(
        "unknown key(s) 'keep_local_base'")  # gone with pgBackRest
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
    assert config_error(lambda r: r["s3"].pop("ca_file")) == "key 's3.ca_file' is missing"
    assert config_error(lambda r: r["s3"].update(ca_file="ca.crt")).startswith(
        "key 's3.ca_file': must be an absolute path or empty")


def test_pgbackrest_config_errors_name_the_key():
    assert config_error(lambda r: r.pop("pgbackrest")) == "key 'pgbackrest' is missing"
    assert config_error(lambda r: r.update(pgbackrest=None)).startswith(
        "key 'pgbackrest': must be an object")
    for key in ("stanza", "config", "repos", "backup_standby", "retention_full"):
        assert config_error(lambda r, k=key: r["pgbackrest"].pop(k)) == \
            f"key 'pgbackrest.{key}' is missing"
    assert config_error(lambda r: r["pgbackrest"].update(process_max=2)).startswith(
        "unknown key(s) pgbackrest.process_max")
    assert config_error(lambda r: r["pgbackrest"].update(stanza="a b")).startswith(
        "key 'pgbackrest.stanza': must be a stanza name")
    assert config_error(lambda r: r["pgbackrest"].update(config="pgbackrest.conf")).startswith(
        "key 'pgbackrest.config': must be an absolute path")
    for repos in ([], [1, 1], "1,2", None):
        assert config_error(lambda r, v=repos: r["pgbackrest"].update(repos=v)).startswith(
            "key 'pgbackrest.repos': must be a non-empty list of distinct repository keys")
    assert config_error(lambda r: r["pgbackrest"].update(repos=[1, 0])).startswith(
        "key 'pgbackrest.repos[1]': must be an integer >= 1")
    assert config_error(lambda r: r["pgbackrest"].update(backup_standby="prefer")).startswith(
        "key 'pgbackrest.backup_standby': must be true or false")
    assert config_error(lambda r: r["pgbackrest"].update(retention_full=0)).startswith(
        "key 'pgbackrest.retention_full': must be an integer >= 1")


def test_load_config_messages(tmp_path):
    with pytest.raises(runner.ConfigError, match="no such file"):
        backup_config.load_config(str(tmp_path / "absent.json"))
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(runner.ConfigError, match="not valid JSON"):
        backup_config.load_config(str(bad))
    bad.write_text(json.dumps({**EXAMPLE, "port": 0}))
    with pytest.raises(runner.ConfigError, match=r"bad.json: key 'port'"):
        backup_config.load_config(str(bad))


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
    rc = runner.run_job("/x/pginfra-backup", "demo", job_config(tmp_path), body, None,
                        load=backup_config.load_config, as_root=True, **kw)
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
        raise runner.ConfigError("no such database")
    rc, _ = run(tmp_path, usage, capsys)
    assert rc == 2
    assert runner.run_job("/x/p", "demo", str(tmp_path / "nothing.json"), usage, None,
                          load=backup_config.load_config, as_root=True) == 2
    fd, _path = runner.acquire_lock(str(tmp_path / "s"), "demo")
    try:
        rc, lines = run(tmp_path, lambda cfg, args, log: {}, capsys)
        assert rc == 75 and lines[0]["status"] == "skipped"
        assert "holds" in lines[0]["detail"]
    finally:
        os.close(fd)
    assert run(tmp_path, lambda cfg, args, log: {}, capsys)[0] == 0
    # jobs that share a lock (full and diff: "backup")
    fd, _path = runner.acquire_lock(str(tmp_path / "s"), "backup")
    try:
        assert run(tmp_path, lambda cfg, args, log: {}, capsys, lock_name="backup")[0] == 75
        assert run(tmp_path, lambda cfg, args, log: {}, capsys)[0] == 0
    finally:
        os.close(fd)


def test_label_and_time_helpers():
    moment = datetime(2026, 11, 23, 16, 30, 5, tzinfo=UTC)
    assert dumps.new_label(moment) == "20261123T163005Z"
    assert dumps.label_time("20261123T163005Z") == moment
    assert util.parse_time(util.iso(moment + timedelta(microseconds=7))) == \
        moment + timedelta(microseconds=7)
