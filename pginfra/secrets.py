"""Role passwords: from the environment or a git-ignored secrets file, never from the repository."""

from __future__ import annotations

import os
import re
import stat
from pathlib import Path

import yaml
from pyinfra.api.exceptions import PyinfraError

from pginfra import ROOT

ENV_PREFIX = "PGINFRA_PASSWORD_"
FILE_ENV = "PGINFRA_SECRETS_FILE"
DEFAULT_FILE = ROOT / ".pginfra" / "secrets.yaml"

# (path, st_ino, st_mtime_ns, st_size, st_mode) -> passwords of the file, read once per process.
_cache: dict[tuple, dict[str, str]] = {}


class SecretsError(PyinfraError):
    """Passwords cannot be read or are missing; messages never contain a password."""


def env_var(role: str) -> str:
    """
    The environment variable holding ``role``'s password.

    .. code:: python

        env_var("app_rw")  # "PGINFRA_PASSWORD_APP_RW"
        env_var("web-1")  # "PGINFRA_PASSWORD_WEB_1"
    """
    return ENV_PREFIX + re.sub(r"[^A-Z0-9]", "_", role.upper())


def secrets_file() -> Path:
    """
    The secrets file: ``$PGINFRA_SECRETS_FILE`` if set, else ``.pginfra/secrets.yaml`` in the
    project (git-ignored). Format:

    .. code:: yaml

        passwords:
          app_rw: "correct horse battery staple"
    """
    path = os.environ.get(FILE_ENV)
    return Path(path).expanduser() if path else DEFAULT_FILE


def password_for(role: str) -> str | None:
    """
    ``role``'s password: ``$PGINFRA_PASSWORD_<ROLE>`` first (an empty value counts as unset),
    then the secrets file; None when neither has one.

    .. code:: python

        password_for("app_rw")  # "correct horse battery staple", or None
    """
    value = os.environ.get(env_var(role))
    if value:
        return value
    return _read_file(secrets_file()).get(role)


def require_password(role: str, host_name: str) -> str:
    """
    ``role``'s password, or a SecretsError that says where to put it.

    .. code:: python

        password = require_password("app_rw", host.name)
    """
    password = password_for(role)
    if password is None:
        raise SecretsError(
            f"{host_name}: no password for role {role!r}: set the environment variable "
            f"{env_var(role)}, or add it under 'passwords:' in {secrets_file()} "
            f"(then chmod 600 that file)"
        )
    return password


# A few passwords every guessing tool tries first; the length rule stops most of the rest.
COMMON = ("password", "postgres", "changeme", "letmein", "welcome", "qwerty", "123456",
          "abcdef", "default", "passw0rd")


def password_problem(role: str, password: str, min_length: int = 12) -> str | None:
    """Why ``password`` is too weak for ``role``, or None. The server cannot judge it (its
    passwordcheck module sees only the verifier pginfra sends), so it is judged here.

    .. code:: python

        password_problem("app", "app-2024")  # "is shorter than 12 characters"
    """
    classes = sum(bool(re.search(pattern, password))
                  for pattern in (r"[a-z]", r"[A-Z]", r"[0-9]", r"[^A-Za-z0-9]"))
    lowered = password.lower()
    if re.search(r"[\x00-\x1f\x7f]", password):
        return ("holds a line break or another control character (a passfile, userlist or "
                "environment line would cut it)")
    if len(password) < min_length:
        return f"is shorter than {min_length} characters"
    if len(set(password)) < 4:
        return "repeats too few characters"
    if (len(role) >= 4 and role.lower() in lowered) or any(w in lowered for w in COMMON):
        return "contains the role's name or a common password"
    if len(password) < 20 and classes < 3:
        return ("mixes fewer than three of lower case, upper case, digits and symbols (a "
                "passphrase of 20 characters or more need not)")
    return None


def require_strong_password(role: str, host_name: str, min_length: int = 12) -> str:
    """``role``'s password (as require_password), refused with a SecretsError that names the
    host, the role and the rule it breaks, never the password, when it is too weak."""
    password = require_password(role, host_name)
    problem = password_problem(role, password, min_length)
    if problem:
        raise SecretsError(f"{host_name}: the password of role {role!r} {problem} "
                           f"(postgres_password_min_length {min_length}); nothing was changed")
    return password


def _read_file(path: Path) -> dict[str, str]:
    """The file's passwords, read once per file version; {} when the default file is absent."""
    try:
        st = path.stat()
    except FileNotFoundError:
        if os.environ.get(FILE_ENV):
            raise SecretsError(f"{FILE_ENV} is set to {path}, which does not exist") from None
        return {}
    except OSError as exc:
        raise SecretsError(f"cannot read secrets file {path}: {exc.strerror}") from None
    if not stat.S_ISREG(st.st_mode):
        raise SecretsError(f"secrets file {path} is not a regular file")
    if st.st_mode & 0o077:
        raise SecretsError(
            f"secrets file {path} is accessible by group or others "
            f"(mode {stat.S_IMODE(st.st_mode):04o}); run: chmod 600 {path}"
        )
    key = (str(path.resolve()), st.st_ino, st.st_mtime_ns, st.st_size, st.st_mode)
    if key not in _cache:
        _cache.clear()
        _cache[key] = _parse(path)
    return _cache[key]


def _parse(path: Path) -> dict[str, str]:
    """Load and check the file. Errors give places and role names, never file contents."""
    try:
        with path.open(encoding="utf-8") as stream:
            data = yaml.safe_load(stream)
    except yaml.MarkedYAMLError as exc:
        # The parser's own message may quote the file (a password): give the position only.
        mark = exc.problem_mark or exc.context_mark
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise SecretsError(f"secrets file {path} is not valid YAML{where}") from None
    except (yaml.YAMLError, UnicodeDecodeError):
        raise SecretsError(f"secrets file {path} is not valid UTF-8 YAML") from None
    except OSError as exc:
        raise SecretsError(f"cannot read secrets file {path}: {exc.strerror}") from None

    expected = "expected a mapping like 'passwords: {ROLE: PASSWORD}'"
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise SecretsError(f"secrets file {path}: {expected}")
    if set(data) - {"passwords"}:  # not named: a misplaced line could be a password
        raise SecretsError(
            f"secrets file {path}: 'passwords' is the only top-level key; {expected}"
        )
    passwords = data.get("passwords") or {}
    if not isinstance(passwords, dict):
        raise SecretsError(f"secrets file {path}: 'passwords' is not a mapping; {expected}")
    for role, password in passwords.items():
        if not isinstance(role, str):
            raise SecretsError(f"secrets file {path}: role names must be strings")
        if not isinstance(password, str):
            raise SecretsError(
                f"secrets file {path}: the password of role {role!r} is a "
                f"{type(password).__name__}, not a string; quote it"
            )
        if not password:
            raise SecretsError(f"secrets file {path}: the password of role {role!r} is empty")
    return dict(passwords)


def generate_missing(roles: list[str], path: Path | None = None) -> list[str]:
    """
    Give each role without a password a random one in the secrets file (created 0600), for
    rehearsals; production passwords are the operator's. Returns the roles given one.

    .. code:: python

        generate_missing(["postgres", "app"])  # ["postgres", "app"] the first time, then []
    """
    import secrets as random_source

    path = path or secrets_file()
    current = _read_file(path) if path.exists() else {}
    missing = [r for r in roles if r not in current and not os.environ.get(env_var(r))]
    if not missing:
        return []
    passwords = dict(current)
    passwords.update({r: random_source.token_urlsafe(24) for r in missing})
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as stream:
        yaml.safe_dump({"passwords": passwords}, stream, default_flow_style=False)
    os.replace(tmp, path)
    return missing
