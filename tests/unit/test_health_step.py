"""The health step's planning on the control machine: the programs' configuration from the
settings (checked by the programs' own validation), the cron file, the exporters' addresses and
/etc/default files, and the threshold settings' validation."""

from __future__ import annotations

import json

import pytest

from pginfra.programs import host_program
from pginfra.settings import SettingsError, resolve
from pginfra.steps.health import (
    TEXTFILE,
    exporter_address,
    exporter_defaults,
    health_config,
    maintenance_config,
)
from pginfra.steps.schedule import cron_file
from pginfra.templating import render

BIN = "/usr/local/lib/pginfra"


def settings(**data):
    base = {"postgres_roles": [{"name": "o"}],
            "postgres_databases": [{"name": "app", "owner": "o"}, {"name": "web", "owner": "o"}]}
    return resolve({**base, **data})


def test_health_config_carries_the_thresholds_of_the_settings():
    config = health_config(settings(health_idle_in_transaction_seconds=[60, 120]), "db1")
    assert config["thresholds"]["idle_in_transaction_seconds"] == [60, 120]
    assert config["thresholds"]["connections_percent"] == [75, 90]  # engineering notes
    assert config["thresholds"]["replication_lag_mb"] == [50, 100]
    assert config["thresholds"]["wraparound_percent"] == [50, 75]
    assert config["thresholds"]["archive_failing_seconds"] == [0, 300]
    assert config["thresholds"]["backup_base_age_hours"][0] == 180  # 7.5 days
    assert config["pgbouncer"] == {"port": 6432, "listen": ["127.0.0.1"]}
    assert config["backup"] == {"state_dir": "/var/lib/pginfra/backup", "stanza": "main",
                                "pgbackrest_config": "/etc/pgbackrest/pgbackrest.conf",
                                "spool_path": "/var/spool/pgbackrest", "repos": [1]}
    assert config["textfile"] is None
    off = health_config(settings(pgbouncer_enabled=False, backup_enabled=False,
                                 health_prometheus=True), "db1")
    assert off["pgbouncer"] is None and off["backup"] is None and off["textfile"] == TEXTFILE


def test_maintenance_config_from_the_settings():
    config = maintenance_config(settings(maintenance_reindex_min_bloat_mb=20,
                                         maintenance_lock_timeout="10s"), "db1")
    assert config["databases"] == ["app", "web"]
    assert config["reindex"] == {"min_bloat_ratio": 0.3, "min_bloat_bytes": 20 * 1024 * 1024}
    assert config["lock_timeout"] == "10s" and config["statement_timeout"] == "2h"


@pytest.mark.parametrize("name, build", [("pginfra-health", health_config),
                                          ("pginfra-maintenance", maintenance_config)])
def test_the_programs_accept_the_configuration_the_deploy_writes(tmp_path, name, build):
    module = host_program(name)
    for data in ({}, {"pgbouncer_enabled": False, "backup_enabled": False,
                      "health_prometheus": True}):
        path = tmp_path / f"{name}.json"
        path.write_text(render(f"{name.split('-')[1]}.json.j2",
                               config=build(settings(**data), "db1")))
        module.load_config(str(path))  # raises on any key or value it does not accept


def test_cron_file_schedules_health_and_maintenance_next_to_the_backups():
    text = cron_file(settings(health_schedule="*/2 * * * *",
                              maintenance_schedule_reindex="0 6 * * 0"))
    jobs = [line for line in text.splitlines() if line and line[0] in "0123456789*@"]
    assert all(" postgres /usr/local/lib/pginfra/" in j for j in jobs)
    assert f"*/2 * * * * postgres {BIN}/pginfra-health --json --alerts-only " in text
    assert f"0 6 * * 0 postgres {BIN}/pginfra-maintenance reindex " in text
    assert f"30 3 * * * postgres {BIN}/pginfra-maintenance vacuum analyze " in text
    assert f"*/5 * * * * postgres {BIN}/pginfra-maintenance refresh " in text
    assert sum("/pginfra-backup " in j for j in jobs) == 6  # full diff verify dump retention drill
    only_backups = cron_file(settings(health_enabled=False, maintenance_enabled=False))
    assert "pginfra-health" not in only_backups and "pginfra-maintenance" not in only_backups
    assert cron_file(settings(health_enabled=False, maintenance_enabled=False,
                              backup_enabled=False)) is None


def test_exporters_listen_on_the_hosts_address_only():
    assert exporter_address(settings(postgres_listen_addresses=["localhost", "10.0.0.5"])) \
        == "10.0.0.5"
    assert exporter_address(settings()) == "127.0.0.1"  # listens on nothing but loopback
    assert exporter_address(settings(health_prometheus_address="10.0.0.9",
                                     postgres_listen_addresses=["10.0.0.5"])) == "10.0.0.9"
    defaults = exporter_defaults(settings(postgres_listen_addresses=["10.0.0.5"],
                                          health_prometheus=True))
    pg = defaults["prometheus-postgres-exporter"]
    assert "ARGS='--web.listen-address=10.0.0.5:9187'" in pg
    assert "host=/var/run/postgresql" in pg and "user=prometheus" in pg
    assert "password" not in pg.split("DATA_SOURCE_NAME=")[1].lower()
    node = defaults["prometheus-node-exporter"]
    assert "--web.listen-address=10.0.0.5:9100" in node
    assert "--collector.textfile.directory=/var/lib/pginfra/metrics" in node


def test_hba_lets_the_exporter_in_by_peer_only_when_metrics_are_on():
    on = render("pg_hba.conf.j2", path="x", rules=[], auth_query_user="",
                exporter_user="prometheus")
    lines = [line.split() for line in on.splitlines() if line and not line.startswith("#")]
    assert ["local", "postgres", "prometheus", "peer"] in lines
    # before the catch-all scram line, so it is the one that matches
    assert lines.index(["local", "postgres", "prometheus", "peer"]) < lines.index(
        ["local", "all", "all", "scram-sha-256"])
    off = render("pg_hba.conf.j2", path="x", rules=[], auth_query_user="", exporter_user="")
    assert "prometheus" not in off


@pytest.mark.parametrize("key, value, message", [
    ("health_idle_in_transaction_seconds", [900, 300], "warning 900 must not be above critical"),
    ("health_cache_hit_ratio", [0.9, 0.95], "lower is worse"),
    ("health_connections_percent", [75, 190], "at most 100"),
    ("health_replication_lag_mb", [50], "expected [warning, critical]"),
    ("health_lock_wait_seconds", ["30", 300], "expected [warning, critical]"),
    ("health_prometheus_address", "db1.example.com", "does not match"),
    ("maintenance_vacuum_min_dead_ratio", 2, "at most 1"),
    ("maintenance_schedule_refresh", "every minute", "cron schedule"),
    ("maintenance_lock_timeout", "0", "more than 0"),
    ("maintenance_statement_timeout", "1000h", "largest timeout"),
    ("health_idle_in_transaction", [1, 2], "did you mean 'health_idle_in_transaction_seconds'"),
])
def test_bad_health_and_maintenance_settings_are_refused_before_anything_runs(key, value,
                                                                              message):
    with pytest.raises(SettingsError) as err:
        settings(**{key: value})
    assert key in str(err.value) and message in str(err.value), str(err.value)


def test_config_files_carry_no_secret(monkeypatch):
    monkeypatch.setenv("PGINFRA_PASSWORD_POSTGRES", "very-secret")
    for build in (health_config, maintenance_config):
        assert "very-secret" not in json.dumps(build(settings(health_prometheus=True), "db1"))
