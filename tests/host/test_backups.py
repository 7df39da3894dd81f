"""The backup set-up a deploy leaves behind: programs, configuration, directories, cron jobs,
log rotation, and a first verified base backup."""

import json

import pytest

pytestmark = pytest.mark.usefixtures("primary_only")

BIN = "/usr/local/lib/pginfra"


def test_programs_installed(host):
    for name, mode in (("pginfra-backup", 0o755), ("pginfra-restore", 0o755),
                       ("pginfra_backup_lib.py", 0o644)):
        f = host.file(f"{BIN}/{name}")
        assert (f.user, f.group, f.mode) == ("root", "root", mode), name
    assert host.package("python3-boto3").is_installed


def test_configuration_readable_by_postgres_only(host, settings):
    f = host.file("/etc/pginfra/backup.json")
    assert (f.user, f.group, f.mode) == ("root", "postgres", 0o640)
    config = json.loads(f.content_string)
    assert config["backup_dir"] == settings.backup_dir
    assert config["wal_archive_dir"] == settings.postgres_wal_archive_dir


def test_private_directories(host, settings):
    for path, group, mode in ((settings.backup_dir, "postgres", 0o700),
                              ("/var/lib/pginfra/backup", "postgres", 0o700),
                              ("/var/log/pginfra", "adm", 0o750)):
        d = host.file(path)
        assert d.is_directory and (d.user, d.group, d.mode) == ("postgres", group, mode), path


def test_cron_jobs_run_as_postgres_on_the_default_schedules(host, settings):
    f = host.file("/etc/cron.d/pginfra")
    assert (f.user, f.group, f.mode) == ("root", "root", 0o644)
    jobs = [line for line in f.content_string.splitlines() if line and line[0] in "0123456789*@"]
    expected = {"base": settings.backup_schedule_base, "dump": settings.backup_schedule_dump,
                "retention": settings.backup_schedule_retention,
                "drill": settings.backup_schedule_drill}
    for job, schedule in expected.items():
        assert f"{schedule} postgres {BIN}/pginfra-backup {job} " in "\n".join(jobs) + " ", job
    assert host.service("cron").is_running


def test_logs_are_rotated(host):
    f = host.file("/etc/logrotate.d/pginfra")
    assert f.contains("/var/log/pginfra/\\*.log")
    assert host.run("logrotate -d /etc/logrotate.d/pginfra").rc == 0


def test_a_verified_base_backup_exists(host, settings):
    with host.sudo("postgres"):
        listing = json.loads(host.check_output(f"cd /tmp && {BIN}/pginfra-backup list --json "
                                               "--local"))
    assert any(b["kind"] == "base" and b["state"] == "verified"
               for b in listing["backups"]), listing
