"""The runbook's steps: each is a pyinfra ``@deploy`` in its own module, called in order by
``deploys/postgres.py`` with the host's validated settings."""

from pginfra.steps.archive_disk import mount_wal_archive
from pginfra.steps.backups import install_backups
from pginfra.steps.cluster import create_cluster
from pginfra.steps.configure import configure_server
from pginfra.steps.ha import run_ha
from pginfra.steps.ha_client import route_clients
from pginfra.steps.harden import harden_databases
from pginfra.steps.health import install_health
from pginfra.steps.kernel import tune_kernel
from pginfra.steps.packages import install_packages
from pginfra.steps.pgbouncer import run_pgbouncer
from pginfra.steps.programs import install_programs
from pginfra.steps.replication import replicate
from pginfra.steps.repository import prepare_repository
from pginfra.steps.roles import manage_roles
from pginfra.steps.schedule import schedule_jobs
from pginfra.steps.service import run_service
from pginfra.steps.tls import install_tls

__all__ = [
    "configure_server", "create_cluster", "harden_databases", "install_backups",
    "install_health", "install_packages", "install_programs", "install_tls",
    "manage_roles", "mount_wal_archive", "prepare_repository", "replicate", "route_clients",
    "run_ha", "run_pgbouncer", "run_service", "schedule_jobs", "tune_kernel",
]
