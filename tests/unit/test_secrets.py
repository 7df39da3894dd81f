import os

import pytest
from pyinfra.api.exceptions import PyinfraError

from pginfra import secrets
from pginfra.secrets import SecretsError, env_var, password_for, require_password, secrets_file

SECRET = "Tr0ub4dor&3-do-not-print"


@pytest.fixture
def secrets_path(tmp_path, monkeypatch):
    """A secrets file location in tmp_path; no PGINFRA_PASSWORD_* from the caller's shell."""
    for name in list(os.environ):
        if name.startswith(secrets.ENV_PREFIX):
            monkeypatch.delenv(name)
    path = tmp_path / "secrets.yaml"
    monkeypatch.setenv(secrets.FILE_ENV, str(path))
    return path


def write(path, text, mode=0o600):
    path.write_text(text)
    path.chmod(mode)


def test_env_var_name():
    assert env_var("app_rw") == "PGINFRA_PASSWORD_APP_RW"
    assert env_var("web-1.ro") == "PGINFRA_PASSWORD_WEB_1_RO"


def test_secrets_file_location(secrets_path, monkeypatch):
    assert secrets_file() == secrets_path
    monkeypatch.delenv(secrets.FILE_ENV)
    assert secrets_file() == secrets.ROOT / ".pginfra" / "secrets.yaml"


def test_env_beats_file(secrets_path, monkeypatch):
    write(secrets_path, "passwords:\n  app: from-file\n")
    monkeypatch.setenv("PGINFRA_PASSWORD_APP", "from-env")
    assert password_for("app") == "from-env"
    assert require_password("app", "db1") == "from-env"


def test_file_used(secrets_path):
    write(secrets_path, f"passwords:\n  app: '{SECRET}'\n  other-role: \"x y\"\n")
    assert password_for("app") == SECRET
    assert password_for("other-role") == "x y"
    assert password_for("nobody") is None


def test_file_reread_when_path_changes(secrets_path, tmp_path, monkeypatch):
    write(secrets_path, "passwords:\n  app: first\n")
    assert password_for("app") == "first"
    second = tmp_path / "second.yaml"
    write(second, "passwords:\n  app: second\n")
    monkeypatch.setenv(secrets.FILE_ENV, str(second))
    assert password_for("app") == "second"


def test_missing_names_env_var_and_file(secrets_path):
    write(secrets_path, "passwords: {}\n")
    with pytest.raises(SecretsError) as err:
        require_password("app_rw", "db1.example.com")
    message = str(err.value)
    assert "db1.example.com" in message
    assert "'app_rw'" in message
    assert "PGINFRA_PASSWORD_APP_RW" in message
    assert str(secrets_path) in message
    assert isinstance(err.value, PyinfraError)


def test_default_file_absent_means_no_passwords(monkeypatch, tmp_path):
    monkeypatch.delenv(secrets.FILE_ENV, raising=False)
    monkeypatch.delenv("PGINFRA_PASSWORD_APP", raising=False)
    monkeypatch.setattr(secrets, "DEFAULT_FILE", tmp_path / "absent.yaml")
    assert password_for("app") is None


def test_explicit_file_absent_is_an_error(secrets_path):
    with pytest.raises(SecretsError, match="does not exist"):
        password_for("app")


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o660])
def test_open_file_refused(secrets_path, mode):
    write(secrets_path, f"passwords:\n  app: '{SECRET}'\n", mode)
    with pytest.raises(SecretsError) as err:
        password_for("app")
    assert f"chmod 600 {secrets_path}" in str(err.value)
    assert SECRET not in str(err.value)


def test_chmod_after_a_read_is_noticed(secrets_path):
    write(secrets_path, "passwords:\n  app: x\n")
    assert password_for("app") == "x"
    secrets_path.chmod(0o644)
    with pytest.raises(SecretsError, match="chmod 600"):
        password_for("app")


@pytest.mark.parametrize(("text", "expected"), [
    (f"passwords:\n  app: '{SECRET}\n", "not valid YAML at line"),  # unterminated quote
    (f"passwords: [{SECRET}\n", "not valid YAML"),
    (f"passwords:\n\tapp: {SECRET}\n", "not valid YAML"),  # tab indent
    (f"- {SECRET}\n", "expected a mapping"),
    (f"{SECRET}\n", "expected a mapping"),
    (f"password:\n  app: {SECRET}\n", "'passwords' is the only top-level key"),
    (f"passwords:\n  - {SECRET}\n", "'passwords' is not a mapping"),
    ("passwords:\n  app: 12345\n", "role 'app' is a int, not a string; quote it"),
    ("passwords:\n  app: yes\n", "role 'app' is a bool"),
    ("passwords:\n  app: ''\n", "role 'app' is empty"),
    (f"passwords:\n  123: {SECRET}\n", "role names must be strings"),
    (f"{SECRET}: x\n", "'passwords' is the only top-level key"),
])
def test_malformed_file(secrets_path, text, expected):
    write(secrets_path, text)
    with pytest.raises(SecretsError) as err:
        password_for("app")
    message = str(err.value)
    assert expected in message
    assert str(secrets_path) in message
    assert SECRET not in message and SECRET not in repr(err.value)
    # The YAML parser's exception, which may quote the file, is not chained either.
    assert err.value.__cause__ is None
    assert err.value.__context__ is None or err.value.__suppress_context__


def test_empty_file_has_no_passwords(secrets_path):
    write(secrets_path, "")
    assert password_for("app") is None


def test_passwords_never_in_errors(secrets_path, monkeypatch):
    monkeypatch.setenv("PGINFRA_PASSWORD_OTHER", SECRET)
    write(secrets_path, f"passwords:\n  third: '{SECRET}'\n")
    with pytest.raises(SecretsError) as err:
        require_password("app", "db1")
    assert SECRET not in str(err.value) and SECRET not in repr(err.value)


@pytest.mark.parametrize(("role", "password", "problem"), [
    ("app", "Short1!", "is shorter than 12 characters"),
    ("app", "aaaaaaaaaaaaaaaa", "repeats too few characters"),
    ("reporting", "my-Reporting-9xyz", "contains the role's name"),
    ("app", "Postgres-2026-xy", "a common password"),
    ("app", "alllowercaseletters", "mixes fewer than three"),
    ("app", "correct horse battery staple", None),  # a passphrase
    ("app", "Tr0ub4dor&3xyz", None),
    ("a", "a-Random-pass-9", None),  # a one-letter role name is no clue
])
def test_password_strength(role, password, problem):
    found = secrets.password_problem(role, password, 12)
    assert found == problem if problem is None else problem in found


def test_a_weak_password_stops_the_run_without_showing_it(monkeypatch):
    monkeypatch.setenv("PGINFRA_PASSWORD_APP", "app-2024")
    with pytest.raises(secrets.SecretsError) as err:
        secrets.require_strong_password("app", "db1", 12)
    message = str(err.value)
    assert message.startswith("db1: the password of role 'app' is shorter than 12 characters")
    assert "app-2024" not in message and "nothing was changed" in message


def test_a_password_with_a_line_break_is_refused():
    from pginfra.secrets import password_problem

    assert "line break" in password_problem("replicator", "Correct-Horse-9\nbattery")
    assert password_problem("replicator", "Correct-Horse-9 battery") is None
