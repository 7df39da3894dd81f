"""Every check, in the order they run and are reported: ``REGISTRY`` maps a check's name to its
function ``check_<name>(ctx: Context) -> dict`` in its area's module. ``run_check(ctx, name)``
runs one (connecting to PostgreSQL first, unless the check needs no connection at all).
``not_configured(cfg, name)``: the configuration key whose null turns a check off.
"""

from __future__ import annotations

from pginfra_host.health import (
    archiving,
    backups,
    ha,
    pgbouncer,
    replication,
    server,
    sessions,
    storage,
)
from pginfra_host.health.config import HealthConfig
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
    "patroni": ha.check_patroni,
    "etcd": ha.check_etcd,
    "pending_restart": server.check_pending_restart,
    "invalid_indexes": server.check_invalid_indexes,
}
CHECKS = tuple(REGISTRY)
WITHOUT_SERVER = {"pgbouncer", "disk_wal_archive", "patroni", "etcd"}  # need no connection
# The checks a key of the configuration turns off: with that key null (or absent), a run
# leaves them out, and asked for by name (--check) they are unknown, "not configured".
CONFIGURED_BY = {"pgbouncer": "pgbouncer", "backup_base": "backup", "backup_dump": "backup",
                 "patroni": "ha", "etcd": "ha"}


def not_configured(cfg: HealthConfig, name: str) -> str | None:
    """The key of the configuration that is null and turns check ``name`` off, or None."""
    key = CONFIGURED_BY.get(name)
    return key if key is not None and getattr(cfg, key) is None else None


def run_check(ctx: Context, name: str) -> dict:
    """Check ``name`` (one of CHECKS); its exceptions are the caller's."""
    if name not in WITHOUT_SERVER and not ctx.connected:
        ctx.connect_main()
    return REGISTRY[name](ctx)
