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
