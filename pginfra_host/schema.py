"""Checks for the programs' JSON configuration: each raises ConfigError naming the key, the
rule and the value, and ``load_json`` reads a file into its declared, typed structure.
"""

from __future__ import annotations

import dataclasses
import json
import re

from pginfra_host.runner import ConfigError
from pginfra_host.util import OS_USER

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")


def require(ok: bool, key: str, what: str, value) -> None:
    if not ok:
        raise ConfigError(f"key '{key}': {what} (got {json.dumps(value)})")


def integer(key, value, low, high=None) -> int:
    require(isinstance(value, int) and not isinstance(value, bool) and value >= low
          and (high is None or value <= high), key,
          f"must be an integer >= {low}" + (f" and <= {high}" if high is not None else ""),
          value)
    return value


def string(key, value, pattern: re.Pattern | None = None, what: str = "a non-empty string",
         empty: bool = False) -> str:
    require(isinstance(value, str) and (empty or value != ""), key, f"must be {what}", value)
    if value and pattern is not None:
        require(bool(pattern.match(value)), key, f"must be {what}", value)
    return value


def abspath(key, value, empty: bool = False) -> str:
    require(isinstance(value, str) and (value.startswith("/") or (empty and value == ""))
          and "\0" not in value, key,
          "must be an absolute path" + (" or empty" if empty else ""), value)
    return value.rstrip("/") or "/" if value else value


def argv_list(key, value) -> list[str]:
    require(isinstance(value, list) and value != [] and all(isinstance(v, str) and v
                                                          for v in value),
          key, "must be a non-empty list of non-empty strings (argv, no shell)", value)
    return list(value)


def check_keys(raw: dict, required, optional=(), prefix: str = "") -> None:
    """Refuse unknown keys (listing the known ones) and missing required keys."""
    known = [*required, *optional]
    unknown = sorted(set(raw) - set(known))
    if unknown:
        names = (prefix + k if prefix else repr(k) for k in unknown)
        raise ConfigError(f"unknown key(s) {', '.join(names)}; "
                          f"known: {', '.join(known)}")
    for key in required:
        if key not in raw:
            raise ConfigError(f"key '{prefix}{key}' is missing")



def keys(declaration, internal=("path",)) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(required, optional) keys of a configuration declared as a dataclass: its fields without
    and with a default, but the ``internal`` ones the program fills in itself. The JSON file,
    the deploy that writes it and the program that reads it share this one list.

    >>> @dataclasses.dataclass
    ... class Demo:
    ...     path: str
    ...     port: int
    ...     socket_dir: str = "/run"
    >>> keys(Demo)
    (('port',), ('socket_dir',))
    """
    fields = [f for f in dataclasses.fields(declaration) if f.name not in internal]
    no_default = dataclasses.MISSING
    return (tuple(f.name for f in fields if f.default is no_default
                  and f.default_factory is no_default),
            tuple(f.name for f in fields if f.default is not no_default
                  or f.default_factory is not no_default))


def check_declared(raw: dict, declaration, prefix: str = "") -> None:
    """``check_keys`` against a dataclass declaration's ``keys``."""
    required, optional = keys(declaration)
    check_keys(raw, required, optional, prefix)


def load_json(path: str, validate):
    """``validate(raw, path)`` of the JSON object in ``path``; every problem is a ConfigError
    that starts with the path."""
    try:
        with open(path, encoding="utf-8") as f:
            raw = json.load(f)
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such file (pass --config PATH)") from None
    except PermissionError:
        raise ConfigError(f"{path}: permission denied (run as {OS_USER})") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: not valid JSON: {exc}") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read it: {exc}") from None
    try:
        return validate(raw, path)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None
