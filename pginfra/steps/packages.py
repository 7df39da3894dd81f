"""Step: PostgreSQL from Debian's own packages."""

from __future__ import annotations

from pyinfra import host
from pyinfra.api import deploy
from pyinfra.facts.deb import DebPackages
from pyinfra.operations import apt, files

from pginfra.settings import Settings, database_hosts_only

# pginfra creates clusters itself (checksums, locale, port); Debian must not create one first.
CREATECLUSTER_CONF = "/etc/postgresql-common/createcluster.d/50-pginfra.conf"


def server_packages(settings: Settings) -> list[str]:
    version = settings.postgres_version
    return [
        f"postgresql-{version}",
        f"postgresql-client-{version}",
        f"postgresql-{version}-pgaudit",  # audit logging (pgaudit.log)
        "postgresql-common",
        "python3",  # host-side programs in files/ run on it
        "python3-psycopg",
        "python3-boto3",  # off-site copies of dumps to S3
        # WAL archiving, physical backups and PITR; the same version on every host
        f"pgbackrest={settings.backup_pgbackrest_version}",
        "cron",
        "logrotate",  # scheduled jobs in /etc/cron.d (examples, backups, health checks)
        *settings.postgres_extra_packages,
    ]


@database_hosts_only()
@deploy("Install PostgreSQL packages")
def install_packages(settings: Settings):
    """
    Install the PostgreSQL server and client from Debian's packages, without letting the package
    create a cluster of its own. The apt index is refreshed only when a package is missing.

    .. code:: python

        install_packages(load_settings())
    """
    files.directory(
        name="Directory for postgresql-common cluster defaults",
        path="/etc/postgresql-common/createcluster.d",
        user="root", group="root", mode="755",
    )
    files.put(
        name="Keep Debian from creating a cluster on install",
        src=_createcluster_conf(),
        dest=CREATECLUSTER_CONF,
        user="root", group="root", mode="644",
    )
    wanted = server_packages(settings)
    installed = host.get_fact(DebPackages)
    missing = [pkg for pkg in wanted if pkg.split("=")[0] not in installed]
    apt.packages(
        name="Install PostgreSQL server packages",
        packages=wanted,
        update=bool(missing),
        cache_time=settings.pginfra_apt_cache_time,
        _env={"DEBIAN_FRONTEND": "noninteractive"},
    )


def _createcluster_conf():
    from io import StringIO

    return StringIO(
        "# Managed by pginfra: clusters are created by pginfra's cluster step.\n"
        "create_main_cluster = false\n"
    )
