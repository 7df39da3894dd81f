"""Step: the cluster pginfra manages exists (Debian's pg_createcluster)."""

from __future__ import annotations

import shlex

from pyinfra import host, logger
from pyinfra.api import deploy
from pyinfra.operations import server

from pginfra.facts import PostgresClusterData, PostgresClusters
from pginfra.settings import Settings, database_hosts_only
from pginfra_host import layout


def createcluster_command(settings: Settings) -> str:
    initdb = ["--auth-local=peer", "--auth-host=scram-sha-256"]
    if settings.postgres_data_checksums:
        initdb.append("--data-checksums")
    args = [
        "pg_createcluster", str(settings.postgres_version), settings.postgres_cluster,
        f"--port={settings.postgres_port}", f"--locale={settings.postgres_locale}",
        "--start-conf=auto", "--", *initdb,
    ]
    return shlex.join(args)


def reinit_commands(settings: Settings, data_directory: str) -> list[str]:
    """Re-initialise an empty cluster's data directory in place, keeping its configuration in
    /etc/postgresql (pg_createcluster keeps it there; initdb's copies are removed)."""
    unit = layout.unit(*settings.pg_cluster)
    initdb = f"/usr/lib/postgresql/{settings.postgres_version}/bin/initdb"
    data = shlex.quote(data_directory)
    return [
        f"systemctl stop {unit}",
        f"find {data} -mindepth 1 -delete",
        shlex.join(["runuser", "-u", "postgres", "--", initdb, "-D", data_directory,
                    "--data-checksums", f"--locale={settings.postgres_locale}",
                    "--auth-local=peer", "--auth-host=scram-sha-256"]),
        f"rm -f {data}/postgresql.conf {data}/pg_hba.conf {data}/pg_ident.conf",
        f"systemctl start {unit}",
    ]


@database_hosts_only(default=False)
@deploy("Create the PostgreSQL cluster")
def create_cluster(settings: Settings):
    """
    Create cluster ``VERSION/NAME`` when it does not exist. An existing cluster without data
    checksums is re-created with them only when it holds no user data at all (Debian's own
    freshly created cluster); a cluster with data is never touched.

    .. code:: python

        create_cluster(load_settings())
    """
    key = f"{settings.postgres_version}/{settings.postgres_cluster}"
    clusters = host.get_fact(PostgresClusters)
    existing = clusters.get(key)
    if existing is None:
        server.shell(
            name=f"Create cluster {key}",
            commands=[createcluster_command(settings)],
        )
        return True
    if settings.postgres_data_checksums:
        data = host.get_fact(PostgresClusterData, port=existing["port"])
        if data and not data["checksums"]:
            if data["user_databases"] or data["user_tables"] or data["user_roles"]:
                logger.warning(
                    f"{host.name}: cluster {key} has no data checksums but holds user data "
                    f"({data['user_databases']} databases, {data['user_tables']} tables in "
                    f"postgres, {data['user_roles']} roles): pginfra never re-creates it. "
                    "Enable checksums offline with "
                    "pg_checksums --enable during a maintenance window."
                )
            else:
                server.shell(
                    name=f"Re-create empty cluster {key} with data checksums",
                    commands=reinit_commands(settings, existing["data_directory"]),
                )
                return True
    if existing["port"] != settings.postgres_port:
        logger.warning(
            f"{host.name}: cluster {key} listens on {existing['port']}, not postgres_port "
            f"{settings.postgres_port}; pginfra does not move an existing cluster's port yet"
        )
    host.noop(f"cluster {key} exists in {existing['data_directory']}")
    return False
