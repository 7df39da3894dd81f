"""Step: pginfra's host programs. The ``pginfra_host`` package goes where the host's own python3
finds it (its site directory, from the ``PythonSitePackages`` fact), and each program this host
runs gets a small entry point in ``/usr/local/lib/pginfra``; entry points it no longer runs, and
what earlier versions left there (``pginfra_backup_lib.py``), are removed."""

from __future__ import annotations

import io

from pyinfra import host
from pyinfra.api import deploy
from pyinfra.operations import files

from pginfra.facts import PythonSitePackages
from pginfra.programs import PACKAGE_DIR, entry_point, wanted_programs
from pginfra.settings import Settings, SettingsError, database_hosts_only
from pginfra.templating import render_io
from pginfra_host import layout


@database_hosts_only()
@deploy("pginfra's host programs")
def install_programs(settings: Settings):
    """
    Ship the host package and the entry points of the programs this host runs (backups on a
    primary, ``pginfra-restore`` on a standby, health, maintenance, the migration runner, and
    ``pginfra-apply-config`` everywhere), with their log directory and its rotation.

    .. code:: python

        install_programs(load_settings())
    """
    site = host.get_fact(PythonSitePackages)
    if not site or not site.startswith("/"):
        raise SettingsError(f"{host.name}: python3 names no site directory for pginfra's host "
                            f"programs (site.getsitepackages() gave {site!r})")
    files.sync(name=f"Package {layout.PACKAGE} in {site}", src=str(PACKAGE_DIR),
               dest=f"{site}/{layout.PACKAGE}", user="root", group="root", mode="0644",
               dir_mode="0755", delete=True, exclude=["*.pyc"], exclude_dir=["__pycache__"])
    files.directory(name="Directory of pginfra's host programs", path=layout.BIN,
                    user="root", group="root", mode="0755")
    wanted = wanted_programs(settings)
    for name in layout.PROGRAMS:
        if name in wanted:
            files.put(name=f"Program {name}", src=io.StringIO(entry_point(name)),
                      dest=layout.program(name), user="root", group="root", mode="0755")
        else:
            files.file(name=f"No {name} here", path=layout.program(name), present=False)
    for name in layout.RETIRED:
        path = f"{layout.BIN}/{name}"
        if name == "__pycache__":
            files.directory(name=f"No {path} (left by earlier versions)", path=path,
                            present=False)
        else:
            files.file(name=f"No {path} (left by earlier versions)", path=path, present=False)
    files.directory(name=f"Directory {layout.LOG_DIR}", path=layout.LOG_DIR,
                    user="postgres", group="adm", mode="0750")
    files.put(name=f"Log rotation of {layout.LOG_DIR}",
              src=render_io("logrotate.d-pginfra.j2"), dest="/etc/logrotate.d/pginfra",
              user="root", group="root", mode="0644")

