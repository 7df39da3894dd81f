"""Every check, in the order they run and are reported: ``REGISTRY`` maps a check's name to its
function ``check_<name>(ctx: Context) -> dict`` in its area's module. ``run_check(ctx, name)``
runs one (connecting to PostgreSQL first, unless the check needs no connection at all).
"""

from __future__ import annotations

from pginfra_host.health import (
    archiving,
    backups,
    pgbouncer,
    replication,
    server,
    sessions,
    storage,
)
from pginfra_host.health.context import Context

REGISTRY = {
    "postgres": server.check_postgres,
    "pgbouncer": pgbouncer.check_pgbouncer,
    "connections": sessions.check_connections,
    "long_running": sessions.check_long_running,
    "idle_in_transaction": sessions.check_idle_in_transaction,
    "blocking_locks": sessions.check_blocking_locks,
    "archiver": archiving.check_archiver,
    "backup_base": backups.check_backup_base,
    "backup_dump": backups.check_backup_dump,
    "disk_data": storage.check_disk_data,
    "disk_wal_archive": storage.check_disk_wal_archive,
    "wraparound": storage.check_wraparound,
    "cache_hit_ratio": storage.check_cache_hit_ratio,
    "replication": replication.check_replication,
    "pending_restart": server.check_pending_restart,
    "invalid_indexes": server.check_invalid_indexes,
}
CHECKS = tuple(REGISTRY)
WITHOUT_SERVER = {"pgbouncer", "disk_wal_archive"}  # need no connection at all


def run_check(ctx: Context, name: str) -> dict:
    """Check ``name`` (one of CHECKS); its exceptions are the caller's."""
    if name not in WITHOUT_SERVER and not ctx.connected:
        ctx.connect_main()
    return REGISTRY[name](ctx)
