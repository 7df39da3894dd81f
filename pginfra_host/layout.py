"""Where pginfra's things are on a host: its programs and their package, their configuration,
state and logs, and a cluster's unit, data and configuration directories in Debian's layout.
One declaration, used by the deploy's steps (``from pginfra_host import layout``) and by the
host programs alike.

    >>> unit(15, "main")
    'postgresql@15-main'
    >>> data_directory(15, "reports")
    '/var/lib/postgresql/15/reports'
    >>> program("pginfra-health")
    '/usr/local/lib/pginfra/pginfra-health'
"""

from __future__ import annotations

BIN = "/usr/local/lib/pginfra"  # the programs' entry points (cron and the steps call these)
CONFIG_DIR = "/etc/pginfra"  # the programs' JSON configuration, one file per program
BACKUP_CONFIG = f"{CONFIG_DIR}/backup.json"
HEALTH_CONFIG = f"{CONFIG_DIR}/health.json"
MAINTENANCE_CONFIG = f"{CONFIG_DIR}/maintenance.json"
LOG_DIR = "/var/log/pginfra"  # their JSON logs (postgres:adm 0750), rotated weekly
BACKUP_STATE_DIR = "/var/lib/pginfra/backup"  # locks, last successes, the last verify
HEALTH_STATE_DIR = "/var/lib/pginfra/health"
MAINTENANCE_STATE_DIR = "/var/lib/pginfra/maintenance"
METRICS_DIR = "/var/lib/pginfra/metrics"  # node-exporter's textfile directory
HEALTH_TEXTFILE = f"{METRICS_DIR}/pginfra_health.prom"
CRON_FILE = "/etc/cron.d/pginfra"  # every scheduled job of pginfra (the schedule step's)
DEFAULT_SOCKET_DIR = "/var/run/postgresql"  # Debian's unix_socket_directories

PACKAGE = "pginfra_host"  # this package, installed in the host python3's site directory
# Each program: its entry point in BIN (a few lines that call ``main()``) and its module.
PROGRAMS = {
    "pginfra-apply-config": "pginfra_host.apply_config",
    "pginfra-backup": "pginfra_host.backup",
    "pginfra-restore": "pginfra_host.restore",
    "pginfra-health": "pginfra_host.health",
    "pginfra-maintenance": "pginfra_host.maintenance",
    "pginfra-migrate": "pginfra_host.migrate",
}
# What earlier versions of pginfra left in BIN: the deploy removes it.
RETIRED = ("pginfra_backup_lib.py", "__pycache__")


def program(name: str) -> str:
    """Where host program ``name``'s entry point is installed."""
    return f"{BIN}/{name}"


def unit(version, cluster: str) -> str:
    """The cluster's systemd unit (Debian's template), without ``.service``."""
    return f"postgresql@{version}-{cluster}"


def data_directory(version, cluster: str) -> str:
    return f"/var/lib/postgresql/{version}/{cluster}"


def config_directory(version, cluster: str) -> str:
    return f"/etc/postgresql/{version}/{cluster}"


def pg_bin(version, name: str) -> str:
    """A PostgreSQL program of ``version`` (``psql``, ``pg_ctl`` ...) in Debian's layout."""
    return f"/usr/lib/postgresql/{version}/bin/{name}"
