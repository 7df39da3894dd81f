"""The host programs: the ``pginfra_host`` package and its entry points, as the control machine
sees them. The deploy ships them (the programs step), plans with their own code (the migration
runner's planning, the configurations they validate), and unit tests reach their functions.

    >>> host_program("pginfra-migrate").__name__
    'pginfra_host.migrate'
    >>> "from pginfra_host.health import main" in entry_point("pginfra-health")
    True
"""

from __future__ import annotations

import importlib
from pathlib import Path
from types import ModuleType

import pginfra_host
from pginfra_host import layout

PACKAGE_DIR = Path(pginfra_host.__file__).resolve().parent


def host_program(name: str) -> ModuleType:
    """The module of host program ``name`` (``pginfra-health``: ``pginfra_host.health``)."""
    return importlib.import_module(layout.PROGRAMS[name])


def entry_point(name: str) -> str:
    """The whole of ``/usr/local/lib/pginfra/<name>``: the host's python3 imports the program's
    module from its site directory and runs ``main()``; no bytecode is written beside the
    package (the deploy's copy stays exactly what was shipped)."""
    module = layout.PROGRAMS[name]
    return (f"#!/usr/bin/python3\n"
            f'"""{name}, installed by pginfra: the program is {module}."""\n'
            f"import sys\n\n"
            f"sys.dont_write_bytecode = True\n"
            f"from {module} import main  # noqa: E402\n\n"
            f"sys.exit(main())\n")


def package_files() -> list[Path]:
    """The package's source files, relative to its directory (no bytecode)."""
    return sorted(p.relative_to(PACKAGE_DIR) for p in PACKAGE_DIR.rglob("*.py")
                  if "__pycache__" not in p.parts)


def wanted_programs(settings) -> list[str]:
    """The entry points this host gets; the others are removed. A standby's backups are the
    primary's: it keeps pginfra-restore only, to rebuild itself from the repository. With
    postgres_ha every member gets every program: the jobs run where the leader is now."""
    from pginfra.sql_bundles import databases_with_bundles

    wanted = ["pginfra-apply-config"]
    if settings.backup_enabled:
        wanted += ["pginfra-backup", "pginfra-restore"] if settings.runs_backups else [
            "pginfra-restore"]
    if settings.health_enabled:
        wanted.append("pginfra-health")
    if settings.runs_maintenance:
        wanted.append("pginfra-maintenance")
    if settings.runs_bundles and databases_with_bundles(settings):
        wanted.append("pginfra-migrate")
    return wanted


# Where each program's configuration is declared (its dataclasses and ``validate_config``).
DECLARATIONS = {
    "pginfra-backup": "pginfra_host.backup_config",
    "pginfra-health": "pginfra_host.health.config",
    "pginfra-maintenance": "pginfra_host.maintenance",
}


def checked_config(program: str, config: dict, host_name: str, path: str) -> dict:
    """``config`` as the deploy will write it to ``path``, passed through the program's own
    ``validate_config`` first: a key the program does not know, or a value it would refuse,
    stops the deploy while it plans, naming the host, before any operation.

        >>> checked_config("pginfra-backup", {"hots": "db1"}, "db1", "/etc/pginfra/backup.json")
        Traceback (most recent call last):
        ...
        pginfra.settings.SettingsError: db1: /etc/pginfra/backup.json: pginfra-backup would \
refuse it: unknown key(s) 'hots'; known: host, ...
    """
    from pginfra.settings import SettingsError
    from pginfra_host.runner import ConfigError

    declaration = importlib.import_module(DECLARATIONS[program])
    try:
        declaration.validate_config(config, path)
    except ConfigError as exc:
        raise SettingsError(f"{host_name}: {path}: {program} would refuse it: {exc}") from None
    return config
