"""The health check, maintenance and metrics set-up a deploy leaves behind: programs, their
configuration (thresholds from the settings), state directories, cron jobs, and a host that
reports healthy."""

import json

import pytest

BIN = "/usr/local/lib/pginfra"
THRESHOLDS = ("connections_percent", "long_running_seconds", "idle_in_transaction_seconds",
              "lock_wait_seconds", "archive_failing_seconds", "archive_ready_segments",
              "backup_base_age_hours", "backup_dump_age_hours", "disk_used_percent",
              "wraparound_percent", "cache_hit_ratio", "replication_lag_mb",
              "pgbouncer_wait_seconds")


@pytest.mark.usefixtures("primary_only")
def test_programs_installed(host):
    for name in ("pginfra-health", "pginfra-maintenance"):
        f = host.file(f"{BIN}/{name}")
        assert (f.user, f.group, f.mode) == ("root", "root", 0o755), name
        assert "exit" in host.check_output(f"{BIN}/{name} --help").lower()


@pytest.mark.usefixtures("primary_only")
def test_configuration_carries_the_thresholds_readable_by_postgres_only(host, settings, psql):
    for path in ("/etc/pginfra/health.json", "/etc/pginfra/maintenance.json"):
        f = host.file(path)
        assert (f.user, f.group, f.mode) == ("root", "postgres", 0o640), path
    config = json.loads(host.file("/etc/pginfra/health.json").content_string)
    assert config["thresholds"] == {name: list(getattr(settings, f"health_{name}"))
                                    for name in THRESHOLDS}
    assert config["query_timeout"] == settings.health_query_timeout
    maintenance = json.loads(host.file("/etc/pginfra/maintenance.json").content_string)
    existing = psql("SELECT datname FROM pg_database WHERE NOT datistemplate").split()
    assert set(maintenance["databases"]) <= set(existing)  # the inventory's, all created


@pytest.mark.usefixtures("primary_only")
def test_state_directories_are_private(host):
    for path in ("/var/lib/pginfra/health", "/var/lib/pginfra/maintenance"):
        d = host.file(path)
        assert d.is_directory and (d.user, d.group, d.mode) == ("postgres", "postgres", 0o700)


@pytest.mark.usefixtures("primary_only")
def test_health_and_maintenance_are_scheduled_next_to_the_backups(host, settings):
    f = host.file("/etc/cron.d/pginfra")
    jobs = [line for line in f.content_string.splitlines() if line and line[0] in "0123456789*@"]
    text = "\n".join(jobs) + "\n"
    assert f"{settings.health_schedule} postgres {BIN}/pginfra-health --json --alerts-only " \
        in text
    for step, schedule in (("vacuum analyze", settings.maintenance_schedule_vacuum),
                           ("reindex", settings.maintenance_schedule_reindex),
                           ("refresh", settings.maintenance_schedule_refresh)):
        assert f"{schedule} postgres {BIN}/pginfra-maintenance {step} " in text, step
    assert f"postgres {BIN}/pginfra-backup full " in text


def test_the_host_reports_healthy(host):
    result = host.run(f"{BIN}/pginfra-health --json")
    report = json.loads(result.stdout)
    assert result.rc == 0 and report["status"] == "ok", [
        (c["check"], c["status"], c["detail"]) for c in report["checks"] if c["status"] != "ok"]


def test_no_exporter_unless_asked_for(host, settings):
    assert not settings.health_prometheus
    assert not host.socket("tcp://0.0.0.0:9187").is_listening
    assert not host.socket("tcp://0.0.0.0:9100").is_listening
