"""Step: the cluster runs under systemd and starts at boot."""

from __future__ import annotations

from pyinfra.api import deploy
from pyinfra.operations import systemd

from pginfra.settings import Settings


def unit_name(settings: Settings) -> str:
    return f"postgresql@{settings.postgres_version}-{settings.postgres_cluster}.service"


@deploy("Run the PostgreSQL service")
def run_service(settings: Settings):
    """
    Enable ``postgresql.service`` (which starts every cluster whose start.conf says ``auto``) and
    the cluster's own ``postgresql@VERSION-NAME`` unit, and make sure both are running.

    .. code:: python

        run_service(load_settings())
    """
    systemd.service(
        name="Enable postgresql.service",
        service="postgresql.service",
        running=True,
        enabled=True,
    )
    systemd.service(
        name=f"Run {unit_name(settings)}",
        service=unit_name(settings),
        running=True,
        enabled=True,
    )
