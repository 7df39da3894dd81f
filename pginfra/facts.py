"""pyinfra facts pginfra adds: small, one concern each."""

from __future__ import annotations

from pyinfra.api import FactBase


class PostgresClusters(FactBase):
    """
    PostgreSQL clusters on the host, from Debian's ``pg_lsclusters``, keyed ``"VERSION/NAME"``.

    .. code:: python

        {
            "15/main": {
                "version": 15, "name": "main", "port": 5432, "status": "online",
                "owner": "postgres", "data_directory": "/var/lib/postgresql/15/main",
            },
        }
    """

    default = dict

    def requires_command(self, *args, **kwargs) -> str:
        return "pg_lsclusters"

    def command(self) -> str:
        return "pg_lsclusters --no-header"

    def process(self, output):
        clusters = {}
        for line in output:
            fields = line.split()
            if len(fields) < 6:
                continue
            version, name, port, status, owner, data_directory = fields[:6]
            clusters[f"{version}/{name}"] = {
                "version": int(version),
                "name": name,
                "port": int(port),
                "status": status,
                "owner": owner,
                "data_directory": data_directory,
            }
        return clusters
