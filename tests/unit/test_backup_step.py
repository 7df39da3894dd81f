"""The backup step's planning on the control machine: the host programs' configuration, the S3
keys and the reachability check (against a real local S3 endpoint, plain and TLS), the cron
file."""

from __future__ import annotations

import pytest

from pginfra.s3_access import credentials_text, s3_keys
from pginfra.settings import SettingsError, resolve
from pginfra.steps.backups import backup_config
from pginfra.steps.schedule import cron_file
from pginfra_lab.s3_local import local_s3


@pytest.fixture(scope="module")
def endpoint(tmp_path_factory):
    with local_s3(buckets=["backups"], ca_dir=tmp_path_factory.mktemp("ca")) as url:
        yield url


def s3_credentials(settings, host_name):
    return credentials_text(s3_keys(settings, host_name))


def settings(**data):
    base = {"postgres_roles": [{"name": "o"}],
            "postgres_databases": [{"name": "app", "owner": "o"}, {"name": "web", "owner": "o"}]}
    return resolve({**base, **data})


def test_config_without_s3():
    config = backup_config(settings(), "db1")
    assert config["s3"] is None
    assert config["databases"] == ["app", "web"]
    assert config["stop_command"] == ["systemctl", "stop", "postgresql@15-main"]
    assert config["data_directory"] == "/var/lib/postgresql/15/main"
    assert config["wal_archive_dir"] == "/var/lib/postgresql/wal-archive"
    assert config["pgbackrest"] == {"stanza": "main", "config": "/etc/pgbackrest/pgbackrest.conf",
                                    "repos": [1], "backup_standby": False, "retention_full": 2}


def test_config_with_s3_carries_no_secret(monkeypatch):
    monkeypatch.setenv("PGINFRA_PASSWORD_S3_SECRET_ACCESS_KEY", "very-secret")
    config = backup_config(settings(backup_s3_bucket="backups", backup_s3_sse="aws:kms",
                                    backup_s3_kms_key_id="alias/pg"), "db1")
    assert config["s3"]["sse"] == "aws:kms" and config["s3"]["kms_key_id"] == "alias/pg"
    assert config["s3"]["credentials_file"] == "/etc/pginfra/s3-credentials"
    assert "very-secret" not in str(config)


def test_credentials_from_the_secrets_source_are_checked_against_the_bucket(monkeypatch,
                                                                           endpoint):
    monkeypatch.setenv("PGINFRA_PASSWORD_S3_ACCESS_KEY_ID", "key")
    monkeypatch.setenv("PGINFRA_PASSWORD_S3_SECRET_ACCESS_KEY", "secret")
    ca = {"backup_s3_endpoint_url": endpoint, "backup_s3_ca_file": endpoint.ca}
    text = s3_credentials(settings(backup_s3_bucket="backups", **ca), "db1")
    assert text == "[default]\naws_access_key_id = key\naws_secret_access_key = secret\n"
    with pytest.raises(SettingsError, match=r"db1: backup_s3_bucket 'nope' .* HeadBucket failed"):
        s3_credentials(settings(backup_s3_bucket="nope", **ca), "db1")
    # the endpoint's certificate is checked: without its CA it does not verify
    with pytest.raises(SettingsError, match=r"db1: backup_s3_endpoint_url .* does not verify"):
        s3_credentials(settings(backup_s3_bucket="backups", backup_s3_endpoint_url=endpoint),
                       "db1")


def test_an_unreachable_endpoint_stops_the_deploy(monkeypatch):
    monkeypatch.setenv("PGINFRA_PASSWORD_S3_ACCESS_KEY_ID", "key")
    monkeypatch.setenv("PGINFRA_PASSWORD_S3_SECRET_ACCESS_KEY", "secret")
    with pytest.raises(SettingsError) as err:
        s3_credentials(settings(backup_s3_bucket="backups",
                                backup_s3_endpoint_url="https://127.0.0.1:9"), "db1")
    assert "db1: backup_s3_endpoint_url https://127.0.0.1:9 cannot be reached" in str(err.value)
    assert "nothing was changed" in str(err.value) and "secret" not in str(err.value)


def test_half_a_key_pair_is_refused_and_none_means_the_host_environment(monkeypatch,
                                                                       tmp_path):
    monkeypatch.delenv("PGINFRA_PASSWORD_S3_SECRET_ACCESS_KEY", raising=False)
    empty = tmp_path / "secrets.yaml"
    empty.write_text("passwords: {}\n")
    empty.chmod(0o600)
    monkeypatch.setenv("PGINFRA_SECRETS_FILE", str(empty))
    monkeypatch.delenv("PGINFRA_PASSWORD_S3_ACCESS_KEY_ID", raising=False)
    assert s3_credentials(settings(backup_s3_bucket="backups"), "db1") is None
    monkeypatch.setenv("PGINFRA_PASSWORD_S3_ACCESS_KEY_ID", "key")
    with pytest.raises(SettingsError, match="only one of s3_access_key_id"):
        s3_credentials(settings(backup_s3_bucket="backups"), "db1")


def test_cron_file_runs_every_job_as_postgres_on_its_schedule():
    text = cron_file(settings(backup_schedule_dump="30 1 * * *", backup_s3_bucket="backups"))
    jobs = [line for line in text.splitlines() if line and line[0] in "0123456789*@"]
    backup = [j for j in jobs if "/pginfra-backup " in j]
    assert "30 1 * * * postgres /usr/local/lib/pginfra/pginfra-backup dump" in text
    assert {j.split()[7] for j in backup} == {"full", "diff", "verify", "dump", "retention",
                                              "drill"}
    assert all(" postgres /usr/local/lib/pginfra/pginfra-backup " in j for j in backup)
    assert all(" postgres /usr/local/lib/pginfra/" in j for j in jobs)
    assert "0 3 * * 0 postgres /usr/local/lib/pginfra/pginfra-backup full" in text
    assert "0 3 * * 1-6 postgres /usr/local/lib/pginfra/pginfra-backup diff" in text


@pytest.mark.parametrize("bad", ["0 3 * *", "61 * * * *", "0 25 * * *", "0 3 * * 8", "daily"])
def test_bad_schedules_are_refused(bad):
    with pytest.raises(SettingsError, match="backup_schedule_full"):
        resolve({"backup_schedule_full": bad})


@pytest.mark.parametrize(("key", "hint"), [
    ("backup_keep_local_base", "backup_retention_full"),
    ("backup_schedule_base", "renamed backup_schedule_full"),
    ("backup_schedule_wal_ship", r"as it is\s+archived"),
])
def test_keys_of_the_old_backups_are_refused_with_the_way_forward(key, hint):
    with pytest.raises(SettingsError, match=rf"{key}: no longer a setting: .*{hint}"):
        resolve({key: "0 3 * * 0" if "schedule" in key else 2})


def test_pgbackrest_speaks_to_s3_over_tls_only():
    with pytest.raises(SettingsError, match="backup_s3_endpoint_url"):
        resolve({"backup_s3_endpoint_url": "http://10.0.0.5:9000"})


def test_settings_the_host_programs_would_refuse_are_refused_before_anything():
    with pytest.raises(SettingsError, match="backup_s3_kms_key_id: a KMS key is used only"):
        resolve({"backup_s3_kms_key_id": "alias/pg"})
    assert resolve({"backup_s3_kms_key_id": "alias/pg", "backup_s3_sse": "aws:kms"})
    for name in ("_scratch", "d" * 50):
        with pytest.raises(SettingsError, match="backups need a name of at most 49 bytes"):
            settings(postgres_databases=[{"name": name, "owner": "o"}])
    assert settings(backup_enabled=False, postgres_databases=[{"name": "_scratch", "owner": "o"}])
