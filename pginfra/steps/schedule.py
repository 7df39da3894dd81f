"""Step: the scheduled jobs. ``/etc/cron.d/pginfra`` is this step's alone: the backup jobs (on the
primary), the health check and maintenance (on the primary), on their ``*_schedule*`` settings,
as the postgres user."""

from __future__ import annotations

import io

from pyinfra.api import deploy
from pyinfra.operations import files

from pginfra.settings import Settings, database_hosts_only
from pginfra.templating import render
from pginfra_host import layout


def cron_file(settings: Settings) -> str | None:
    """/etc/cron.d/pginfra: every scheduled job of pginfra; None when nothing is scheduled."""
    backup = health = maintenance = None
    if settings.runs_backups:
        backup = {key: getattr(settings, f"backup_schedule_{key}")
                  for key in ("full", "diff", "verify", "dump", "retention", "drill")}
    if settings.health_enabled:
        health = {"schedule": settings.health_schedule,
                  "textfile": layout.HEALTH_TEXTFILE if settings.health_prometheus else None}
    if settings.runs_maintenance:
        maintenance = {key: getattr(settings, f"maintenance_schedule_{key}")
                       for key in ("vacuum", "reindex", "refresh")}
    if not (backup or health or maintenance):
        return None
    return render("cron.d-pginfra.j2", bin=layout.BIN, backup=backup, health=health,
                  maintenance=maintenance,
                  cluster=f"{settings.postgres_version}/{settings.postgres_cluster}")


@database_hosts_only()
@deploy("Scheduled jobs")
def schedule_jobs(settings: Settings):
    """
    Write ``/etc/cron.d/pginfra`` with every job the earlier steps installed a program for, or
    remove it when there is none.

    .. code:: python

        schedule_jobs(load_settings())
    """
    text = cron_file(settings)
    if text:
        files.put(name="Scheduled jobs: backups, health check, maintenance",
                  src=io.StringIO(text), dest=layout.CRON_FILE, user="root", group="root",
                  mode="0644")
    else:
        files.file(name="No scheduled jobs", path=layout.CRON_FILE, present=False)
