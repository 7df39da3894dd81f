"""A host that archived with basic_archive (pginfra before pgBackRest) moves to pgBackRest with
its next deploy and loses no WAL: the last segment basic_archive took and the first pgBackRest
took are consecutive, the first pgBackRest full backup is taken and verified, and the old
archive and base backups stay until pgBackRest holds backup_retention_full verified fulls."""

from __future__ import annotations

import json

from conftest import deploy_ok, sql

ARCHIVE = "/var/lib/postgresql/wal-archive"
CONF = "/etc/postgresql/15/main/conf.d/postgresql-production.conf"
LEGACY_BASE = "/var/backups/postgresql/pginfra/base/20261101T030000Z"
BACKUP = "/usr/local/lib/pginfra/pginfra-backup"


def next_segment(name: str) -> str:
    """The WAL segment after ``name`` (16 MB segments: 256 per log file)."""
    timeline, log, seg = int(name[:8], 16), int(name[8:16], 16), int(name[16:], 16)
    log, seg = (log + 1, 0) if seg == 0xFF else (log, seg + 1)
    return f"{timeline:08X}{log:08X}{seg:08X}"


def test_next_segment():
    assert next_segment("00000001000000000000000A") == "00000001000000000000000B"
    assert next_segment("0000000100000000000000FF") == "000000010000000100000000"


def as_before_pgbackrest(lab) -> list[str]:
    """Put pgt1 back in the state pginfra's earlier version left: archive_library =
    basic_archive into the archive directory, no pgBackRest stanza; a legacy base backup. Returns
    the segments basic_archive archived."""
    script = f"""set -e
sed -i -e "s|^archive_library = ''|archive_library = 'basic_archive'|" \\
       -e "/^archive_library = /a basic_archive.archive_directory = '{ARCHIVE}'" \\
       -e '/^archive_command = /d' -e '/^restore_command = /d' {CONF}
rm -rf {ARCHIVE}/archive {ARCHIVE}/backup /etc/pgbackrest/conf.d/main.conf \\
       /etc/pgbackrest/conf.d/main-secrets.conf /var/spool/pgbackrest/archive
install -d -o postgres -g postgres -m 700 {LEGACY_BASE.rsplit("/", 1)[0]} {LEGACY_BASE}
echo '{{}}' > {LEGACY_BASE}/pginfra.json
chown postgres {LEGACY_BASE}/pginfra.json
"""
    lab.ssh("pgt1", ["sh"], input=script)
    sql(lab, "SELECT pg_reload_conf()")
    assert sql(lab, "SHOW archive_library") == "basic_archive"
    for _ in range(3):
        sql(lab, "SELECT txid_current()")
        sql(lab, "SELECT pg_switch_wal()")
    last = sql(lab, "SELECT pg_walfile_name(pg_current_wal_lsn() - 1)")
    for _ in range(100):
        if sql(lab, "SELECT last_archived_wal FROM pg_stat_archiver") >= last:
            break
        lab.ssh("pgt1", ["sleep", "0.2"])
    names = lab.ssh("pgt1", ["ls", ARCHIVE]).stdout.split()
    return sorted(n for n in names if len(n) == 24 and all(c in "0123456789ABCDEF" for c in n))


def test_basic_archive_to_pgbackrest_without_a_gap(lab, first_deploy):
    old = as_before_pgbackrest(lab)
    assert old, "basic_archive archived segments"
    moved = deploy_ok(lab)
    changed = moved.changed
    assert "Backup repository (pgBackRest) | Create the pgBackRest stanza in repository 1" \
        in changed
    assert "Backups | First pgBackRest full backup, verified: point-in-time recovery works " \
        "from now" in changed
    assert sql(lab, "SHOW archive_library") == ""
    info = json.loads(lab.ssh("pgt1", ["runuser", "-u", "postgres", "--", "pgbackrest",
                                       "--stanza=main", "--output=json", "info"]).stdout)[0]
    first = min(a["min"] for a in info["archive"] if a["database"]["repo-key"] == 1)
    assert first <= next_segment(old[-1]), f"a gap: basic_archive ended at {old[-1]}, " \
        f"pgBackRest starts at {first}"
    verified = json.loads(lab.ssh("pgt1", ["cat", "/var/lib/pginfra/backup/"
                                           "pgbackrest-verify.json"]).stdout)
    assert verified["repos"]["1"]["ok"], verified
    # nothing of the old backups goes before pgBackRest holds backup_retention_full (2)
    # verified full backups
    lab.ssh("pgt1", ["cd", "/tmp", "&&", "runuser", "-u", "postgres", "--", BACKUP,
                     "retention"])
    assert lab.ssh("pgt1", ["test", "-d", LEGACY_BASE], check=False).returncode == 0
    assert lab.ssh("pgt1", ["test", "-e", f"{ARCHIVE}/{old[-1]}"], check=False).returncode == 0
    lab.ssh("pgt1", ["cd", "/tmp", "&&", "runuser", "-u", "postgres", "--", BACKUP, "full"],
            timeout=900)
    lab.ssh("pgt1", ["cd", "/tmp", "&&", "runuser", "-u", "postgres", "--", BACKUP,
                     "retention"])
    assert lab.ssh("pgt1", ["test", "-d", LEGACY_BASE], check=False).returncode != 0
    assert lab.ssh("pgt1", ["test", "-e", f"{ARCHIVE}/{old[-1]}"], check=False).returncode != 0
    assert lab.ssh("pgt1", ["test", "-d", f"{ARCHIVE}/archive/main"]).returncode == 0
    assert deploy_ok(lab).changed == []
