"""The backup set-up a deploy leaves behind: pgBackRest (pinned, configured, its secrets
postgres-only, its stanza healthy in every repository, its TLS server between the hosts of a
cluster), the programs, configuration, directories, cron jobs, log rotation, and a first full
backup that verifies."""

import json

import pytest

BIN = "/usr/local/lib/pginfra"
PGBR = "/etc/pgbackrest"


def info(host) -> dict:
    with host.sudo("postgres"):
        return json.loads(host.check_output(
            "cd /tmp && pgbackrest --stanza=main --output=json info"))[0]


def test_pgbackrest_pinned_to_the_packaged_version(host, settings):
    package = host.package("pgbackrest")
    assert package.is_installed and package.version == settings.backup_pgbackrest_version


def test_pgbackrest_configuration_and_secrets(host, settings):
    for path, user, mode in ((f"{PGBR}/pgbackrest.conf", "root", 0o640),
                             (f"{PGBR}/conf.d/main.conf", "root", 0o640),
                             (f"{PGBR}/conf.d/main-secrets.conf", "postgres", 0o600)):
        f = host.file(path)
        assert (f.user, f.group, f.mode) == (user, "postgres", mode), path
    stanza = host.file(f"{PGBR}/conf.d/main.conf").content_string
    assert "cipher-pass" not in stanza and "s3-key" not in stanza
    assert f"pg1-path=/var/lib/postgresql/{settings.postgres_version}/main" in stanza
    for path in ("/var/spool/pgbackrest", "/var/log/pgbackrest"):
        d = host.file(path)
        assert d.is_directory and (d.user, d.mode) == ("postgres", 0o750), path


def test_wal_goes_to_pgbackrest(psql):
    assert psql("SHOW archive_command") == "pgbackrest --stanza=main archive-push %p"
    assert psql("SHOW restore_command") == 'pgbackrest --stanza=main archive-get %f "%p"'
    assert psql("SHOW archive_library") == ""


def test_the_stanza_is_healthy_in_every_repository(host):
    """On a standby this goes through the primary's pgBackRest server (TLS, certificates)."""
    state = info(host)
    assert state["status"]["code"] == 0, state["status"]
    assert all(repo["status"]["code"] == 0 for repo in state["repo"]), state["repo"]
    assert state["backup"], "a full backup, at least"


def test_tls_server_between_the_hosts_of_a_cluster(host):
    conf = host.file(f"{PGBR}/pgbackrest.conf").content_string
    service = host.service("pgbackrest")
    if "tls-server-address=" not in conf:  # one server: nobody to serve
        assert not service.is_running and not service.is_enabled
        return
    address = next(line.split("=", 1)[1] for line in conf.splitlines()
                   if line.startswith("tls-server-address="))
    assert service.is_running and service.is_enabled
    assert host.socket(f"tcp://{address}:8432").is_listening
    assert not host.socket("tcp://0.0.0.0:8432").is_listening
    key = host.file(f"{PGBR}/tls/pgbackrest.key")
    assert (key.user, key.mode) == ("postgres", 0o600)
    assert "tls-server-auth=" in conf


@pytest.mark.usefixtures("primary_only")
class TestOnThePrimary:
    def test_programs_installed(self, host):
        for name, mode in (("pginfra-backup", 0o755), ("pginfra-restore", 0o755)):
            f = host.file(f"{BIN}/{name}")
            assert (f.user, f.group, f.mode) == ("root", "root", mode), name
        # what the programs share: the host package where Debian's python3 finds it, no
        # longer a library beside them
        site = host.check_output("python3 -c 'import site; print(site.getsitepackages()[0])'")
        for module in ("pginfra_host/runner.py", "pginfra_host/pgbr.py"):
            f = host.file(f"{site}/{module}")
            assert (f.user, f.group, f.mode) == ("root", "root", 0o644), module
        assert not host.file(f"{BIN}/pginfra_backup_lib.py").exists
        assert host.run("runuser -u postgres -- python3 -c 'import pginfra_host.backup'").rc == 0
        assert host.package("python3-boto3").is_installed

    def test_configuration_readable_by_postgres_only(self, host, settings):
        f = host.file("/etc/pginfra/backup.json")
        assert (f.user, f.group, f.mode) == ("root", "postgres", 0o640)
        config = json.loads(f.content_string)
        assert config["backup_dir"] == settings.backup_dir
        assert config["wal_archive_dir"] == settings.postgres_wal_archive_dir
        assert config["pgbackrest"]["stanza"] == "main"

    def test_private_directories(self, host, settings):
        for path, group, mode in ((settings.backup_dir, "postgres", 0o700),
                                  (settings.postgres_wal_archive_dir, "postgres", 0o700),
                                  ("/var/lib/pginfra/backup", "postgres", 0o700),
                                  ("/var/log/pginfra", "adm", 0o750)):
            d = host.file(path)
            assert d.is_directory and (d.user, d.group, d.mode) == ("postgres", group, mode), \
                path

    def test_cron_jobs_run_as_postgres_on_the_default_schedules(self, host, settings):
        f = host.file("/etc/cron.d/pginfra")
        assert (f.user, f.group, f.mode) == ("root", "root", 0o644)
        jobs = [line for line in f.content_string.splitlines()
                if line and line[0] in "0123456789*@"]
        expected = {"full": settings.backup_schedule_full,
                    "diff": settings.backup_schedule_diff,
                    "verify": settings.backup_schedule_verify,
                    "dump": settings.backup_schedule_dump,
                    "retention": settings.backup_schedule_retention,
                    "drill": settings.backup_schedule_drill}
        for job, schedule in expected.items():
            assert f"{schedule} postgres {BIN}/pginfra-backup {job} " in "\n".join(jobs) + " ", \
                job
        assert host.service("cron").is_running

    def test_logs_are_rotated(self, host):
        f = host.file("/etc/logrotate.d/pginfra")
        assert f.contains("/var/log/pginfra/\\*.log")
        assert host.run("logrotate -d /etc/logrotate.d/pginfra").rc == 0
        assert host.file("/etc/logrotate.d/pgbackrest").exists  # Debian's, for its logs

    def test_the_local_repository_holds_a_full_backup_that_verifies(self, host, settings):
        state = info(host)
        fulls = [b for b in state["backup"]
                 if b["type"] == "full" and b["database"]["repo-key"] == 1]
        assert fulls and not any(b["error"] for b in fulls)
        with host.sudo("postgres"):
            out = host.run("cd /tmp && pgbackrest --stanza=main --repo=1 --output=text "
                           "--verbose verify")
        assert out.rc == 0 and "status: error" not in out.stdout, out.stdout
        repo = host.file(f"{settings.postgres_wal_archive_dir}/backup/main/backup.info")
        assert repo.exists and repo.user == "postgres"
