import pytest

from pginfra import ROOT
from pginfra.settings import BY_NAME, SETTINGS, SettingsError, problems, reference, resolve


def test_defaults_are_valid_and_complete():
    settings = resolve({})
    for setting in SETTINGS:
        assert getattr(settings, setting.name) == setting.default
        assert setting.check(setting.default) is None, setting.name
        assert setting.meaning.endswith("."), f"{setting.name}: one-line meaning, as a sentence"


def test_values_override_defaults_and_other_keys_pass_through():
    settings = resolve({"postgres_port": 5433, "ssh_user": "admin", "my_team": "db"})
    assert settings.postgres_port == 5433
    assert settings.postgres_cluster == "main"
    assert "ssh_user" not in settings.as_dict()


def test_unknown_owned_key_suggests_the_setting():
    with pytest.raises(SettingsError) as err:
        resolve({"postgres_prot": 5433}, "db1.example.com")
    message = str(err.value)
    expected = "db1.example.com: postgres_prot: unknown setting; did you mean 'postgres_port'?"
    assert expected in message
    assert "nothing was changed" in message


def test_typo_outside_owned_prefixes_is_caught():
    assert problems({"postgress_port": 5433}) == [
        "postgress_port: unknown setting; did you mean 'postgres_port'?"
    ]


def test_unrelated_keys_are_left_alone():
    assert problems({"ssh_hostname": "10.0.0.1", "_sudo": True, "datacenter": "fra1"}) == []


@pytest.mark.parametrize(
    ("key", "value", "fragment"),
    [
        ("postgres_port", "5432", "expected an integer"),
        ("postgres_port", True, "expected an integer"),
        ("postgres_port", 80, "at least 1024"),
        ("postgres_port", 70000, "at most 65535"),
        ("postgres_version", 14, "must be one of 15"),
        ("postgres_cluster", "Main Cluster", "does not match"),
        ("postgres_data_checksums", "yes", "expected true or false"),
        ("postgres_extra_packages", "postgresql-15-pgvector", "expected a list"),
        ("postgres_extra_packages", ["ok-pkg", "Bad Pkg"], "'Bad Pkg' does not match"),
        ("pginfra_apt_cache_time", -1, "at least 0"),
    ],
)
def test_bad_values_name_key_and_problem(key, value, fragment):
    with pytest.raises(SettingsError) as err:
        resolve({key: value}, "pg1")
    assert f"pg1: {key}: " in str(err.value)
    assert fragment in str(err.value)


def test_every_problem_is_reported_at_once():
    found = problems({"postgres_port": "x", "postgres_clustr": "main"})
    assert len(found) == 2


def test_defaults_are_not_shared_between_hosts():
    a = resolve({})
    a.postgres_extra_packages.append("vim")
    assert resolve({}).postgres_extra_packages == []


def test_settings_reference_in_docs_is_current():
    from pginfra.server_config import parameters_reference

    doc = (ROOT / "docs/settings.md").read_text()
    assert doc == reference() + parameters_reference(), (
        "regenerate with: pginfra settings > docs/settings.md"
    )
    for name in BY_NAME:
        assert f"`{name}`" in doc


@pytest.mark.parametrize(("data", "fragment"), [
    ({"postgres_parameters": {"work_mem": "8MB\nssl = off"}},
     "postgres_parameters: work_mem: the value '8MB\\nssl = off' holds a control character"),
    ({"postgres_parameters": {"search_path": "a\tb"}}, "holds a control character"),
    ({"postgres_parameters": {"include": "/etc/shadow"}},
     "include: cannot be set here: a directive that reads another file"),
    ({"postgres_parameters": {"data_directory": "/srv/x"}}, "the cluster's own layout"),
    ({"postgres_parameters": {"log_directory": "/etc"}}, "use postgres_log_directory"),
    ({"postgres_parameters": {"basic_archive.archive_directory": "/etc"}},
     "use postgres_wal_archive_dir"),
    ({"postgres_parameters": {"application_name": "x" * 2000}}, "at most 1024"),
    ({"postgres_log_directory": "/etc"},
     "postgres_log_directory: /etc is a system directory: postgres would own what root trusts"),
    ({"postgres_log_directory": "/etc/cron.d"}, "inside /etc, a system directory"),
    ({"backup_dir": "/var/lib"}, "backup_dir: /var/lib is a system directory"),
    ({"backup_dir": "/"}, "backup_dir: '/' does not match"),
    ({"backup_dir": "/usr/local/backups"}, "inside /usr"),
    ({"pginfra_migrate_dump_dir": "/var/spool/cron/x"}, "inside /var/spool"),
    ({"postgres_wal_archive_dir": "/var/lib/postgresql/15/main/pg_wal"},
     "inside the data directory /var/lib/postgresql/15/main"),
    ({"postgres_wal_archive_dir": "/var/lib/postgresql/15"},
     "holds the data directory /var/lib/postgresql/15/main"),
    ({"postgres_wal_archive_dir": "/srv/../etc"}, "not a normalised absolute path"),
    ({"backup_dir": "/srv/pg", "postgres_wal_archive_dir": "/srv/pg/wal"},
     "postgres_wal_archive_dir: /srv/pg/wal and backup_dir /srv/pg overlap"),
    ({"pgbouncer_port": 5432}, "pgbouncer_port: port 5432 is already postgres_port's"),
    ({"health_prometheus": True, "health_prometheus_node_port": 6432},
     "health_prometheus_node_port: port 6432 is already pgbouncer_port's"),
])
def test_inputs_that_could_wedge_or_open_a_host_are_refused(data, fragment):
    with pytest.raises(SettingsError) as err:
        resolve(data, "db1.example.com")
    message = str(err.value)
    assert "nothing was changed" in message
    line = next(line for line in message.splitlines() if fragment in line)
    assert line.startswith("  db1.example.com: ") and ": " in line.removeprefix("  db1"), line


def test_usual_directories_and_ports_pass():
    resolve({"postgres_wal_archive_dir": "/srv/pg/wal", "backup_dir": "/srv/pg/backups",
             "postgres_log_directory": "/var/log/postgresql/main",
             "pginfra_migrate_dump_dir": "/data/pre-migrate",
             "pgbouncer_enabled": False, "pgbouncer_port": 5432,  # off: its port is free
             "postgres_parameters": {"search_path": '"$user", public', "work_mem": 8}})
