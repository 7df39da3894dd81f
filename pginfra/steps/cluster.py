"""Step: the cluster pginfra manages exists (Debian's pg_createcluster)."""

from __future__ import annotations

import shlex

from pyinfra import host, logger
from pyinfra.api import deploy
from pyinfra.operations import server

from pginfra.facts import PostgresClusters
from pginfra.settings import Settings


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


@deploy("Create the PostgreSQL cluster")
def create_cluster(settings: Settings):
    """
    Create cluster ``VERSION/NAME`` when it does not exist; an existing cluster is never touched.

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
        return
    if existing["port"] != settings.postgres_port:
        logger.warning(
            f"{host.name}: cluster {key} listens on {existing['port']}, not postgres_port "
            f"{settings.postgres_port}; pginfra does not move an existing cluster's port yet"
        )
    host.noop(f"cluster {key} exists in {existing['data_directory']}")
