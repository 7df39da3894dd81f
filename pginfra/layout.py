"""Where pginfra's things are on a host: its programs, their configuration, state and logs, and
a cluster's unit, data and configuration directories in Debian's layout. One declaration, used
by every step (and, by name, by the host programs' configuration the steps write).

    >>> from pginfra.settings import resolve
    >>> unit(resolve({"postgres_cluster": "main"}))
    'postgresql@15-main'
    >>> data_directory(resolve({}))
    '/var/lib/postgresql/15/main'
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pginfra.settings import Settings

BIN = "/usr/local/lib/pginfra"  # the host programs (files/) and their library
LIBRARY = "pginfra_backup_lib.py"
CONFIG_DIR = "/etc/pginfra"  # the programs' JSON configuration
LOG_DIR = "/var/log/pginfra"  # their JSON logs (postgres:adm 0750), rotated weekly
BACKUP_STATE_DIR = "/var/lib/pginfra/backup"  # locks, last successes, the last verify
HEALTH_STATE_DIR = "/var/lib/pginfra/health"
MAINTENANCE_STATE_DIR = "/var/lib/pginfra/maintenance"
METRICS_DIR = "/var/lib/pginfra/metrics"  # node-exporter's textfile directory
HEALTH_TEXTFILE = f"{METRICS_DIR}/pginfra_health.prom"
CRON_FILE = "/etc/cron.d/pginfra"  # every scheduled job of pginfra (the schedule step's)


def program(name: str) -> str:
    """Where host program ``name`` is installed."""
    return f"{BIN}/{name}"


def unit(settings: Settings) -> str:
    """The cluster's systemd unit (Debian's template), without ``.service``."""
    return f"postgresql@{settings.postgres_version}-{settings.postgres_cluster}"


def data_directory(settings: Settings) -> str:
    return cluster_data_directory(settings.postgres_version, settings.postgres_cluster)


def cluster_data_directory(version, cluster: str) -> str:
    return f"/var/lib/postgresql/{version}/{cluster}"


def config_directory(settings: Settings) -> str:
    return f"/etc/postgresql/{settings.postgres_version}/{settings.postgres_cluster}"
