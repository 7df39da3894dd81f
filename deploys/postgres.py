"""
The pginfra runbook: take a Debian 12 host to a production PostgreSQL host.

    pyinfra inventories/prod.py deploys/postgres.py

Every step is a ``@deploy`` in ``pginfra/steps/``. Inventory data is validated first, so a typo
stops the run before any operation changes anything.
"""

from pginfra.settings import load_settings
from pginfra.steps import (
    configure_server,
    create_cluster,
    harden_databases,
    install_backups,
    install_health,
    install_packages,
    install_programs,
    install_tls,
    manage_roles,
    mount_wal_archive,
    prepare_repository,
    replicate,
    route_clients,
    run_ha,
    run_pgbouncer,
    run_service,
    schedule_jobs,
    tune_kernel,
)

settings = load_settings()  # 0. validate this host's inventory data and its place in the
#                               cluster (the group 'primary'; every other host a standby)

install_packages(settings)  # 1. PostgreSQL from Debian's packages
tune_kernel(settings)  # 1a. sysctl (overcommit, swappiness, huge pages), the postgres user's
#                             limits; on VMs and real hosts (a container's kernel is its machine's)
mount_wal_archive(settings)  # 1b. the WAL archive on a disk of its own, when one is given
install_programs(settings)  # 2. pginfra's host programs (the pginfra_host package)
new_cluster = create_cluster(settings)  # 3. the cluster, created with data checksums
run_service(settings)  # 4. running under systemd, started at boot
tls_files = install_tls(settings)  # 5. the host's own key and certificate
prepare_repository(settings)  # 6. pgBackRest: encrypted repositories (local, S3), the stanza
configure_server(settings, tls_files)  # 7. tuned config and pg_hba, WAL to pgBackRest:
#                                  checked, reloaded, restarted only when a parameter needs it
replicate(settings, new_cluster)  # 8. the primary's replication role and slots; standbys
#                                     made from it over TLS, streaming; a named promotion
manage_roles(settings, new_cluster)  # 9. roles, passwords, databases, pg_stat_statements
run_ha(settings, new_cluster)  # 10. with postgres_ha: etcd, then Patroni takes the server over
run_pgbouncer(settings, new_cluster, tls_files)  # 11. PgBouncer, its userlist in step with 9.
route_clients(settings)  # 12. with postgres_ha: HAProxy on each member, to the leader's PgBouncer
install_backups(settings)  # 13. the first full backup, verified; dumps, S3 copies, drills
install_health(settings)  # 14. health checks, maintenance, metrics (Prometheus exporters)
schedule_jobs(settings)  # 15. /etc/cron.d/pginfra: backups, health checks, maintenance
harden_databases(settings, new_cluster)  # 16. SQL bundles as tracked migrations: monitoring
#                                           views, constraints and indexes, safely on a live db
