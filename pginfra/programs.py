"""The host programs: the ``pginfra_host`` package and its entry points, as the control machine
sees them. The deploy ships them (the programs step), plans with their own code (the migration
runner's planning, the configurations they validate), and unit tests reach their functions.

    >>> host_program("pginfra-migrate").__name__
    'pginfra_host.migrate'
    >>> print(entry_point("pginfra-health"))  # doctest: +ELLIPSIS
    #!/usr/bin/python3
    ...
    from pginfra_host.health import main
    ...
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
            f'"""{name}: see {module} (python3 -m {module} --help)."""\n'
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
    primary's: it keeps pginfra-restore only, to rebuild itself from the repository."""
    from pginfra.sql_bundles import databases_with_bundles

    wanted = ["pginfra-apply-config"]
    if settings.backup_enabled:
        wanted += ["pginfra-restore"] if settings.is_standby else ["pginfra-backup",
                                                                   "pginfra-restore"]
    if settings.health_enabled:
        wanted.append("pginfra-health")
    if settings.runs_maintenance:
        wanted.append("pginfra-maintenance")
    if settings.runs_bundles and databases_with_bundles(settings):
        wanted.append("pginfra-migrate")
    return wanted
