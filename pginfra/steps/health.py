"""Step: health checks, routine maintenance and metrics. Install ``pginfra-health`` and
``pginfra-maintenance`` with their configuration, write ``/etc/cron.d/pginfra`` (the backup jobs
of the previous step, the health check and the maintenance jobs, in one file), and, with
``health_prometheus``, prometheus-postgres-exporter and prometheus-node-exporter listening on the
host's own address only."""

from __future__ import annotations

import io
import ipaddress

from pyinfra import host
from pyinfra.api import deploy
from pyinfra.facts.deb import DebPackages
from pyinfra.facts.server import Command
from pyinfra.operations import apt, files, server, systemd
from pyinfra.operations.util import any_changed

from pginfra import ha
from pginfra import pgbackrest as pgbr
from pginfra.facts import psql_command
from pginfra.pgbouncer import listen_addresses as pgbouncer_listen_addresses
from pginfra.programs import checked_config
from pginfra.roles import EXPORTER_ROLE
from pginfra.settings import Settings, database_hosts_only
from pginfra.templating import render, render_io
from pginfra_host import layout
from pginfra_host.health.config import THRESHOLDS

BIN, LOG_DIR, STATE_DIR = layout.BIN, layout.LOG_DIR, layout.BACKUP_STATE_DIR
HEALTH_CONFIG = layout.HEALTH_CONFIG
MAINTENANCE_CONFIG = layout.MAINTENANCE_CONFIG
HEALTH_STATE = layout.HEALTH_STATE_DIR
MAINTENANCE_STATE = layout.MAINTENANCE_STATE_DIR
METRICS_DIR = layout.METRICS_DIR
TEXTFILE = layout.HEALTH_TEXTFILE
EXPORTER_PACKAGES = ("prometheus-postgres-exporter", "prometheus-node-exporter")
EXPORTER_DROPIN = "/etc/systemd/system/prometheus-postgres-exporter.service.d/pginfra.conf"
NODE_EXPORTER_DROPIN = "/etc/systemd/system/prometheus-node-exporter.service.d/pginfra.conf"


def _cluster(settings: Settings, host_name: str) -> dict:
    return {"host": host_name, "version": settings.postgres_version,
            "port": settings.postgres_port,
            "data_directory": layout.data_directory(*settings.pg_cluster)}


def health_config(settings: Settings, host_name: str) -> dict:
    """What /etc/pginfra/health.json tells pginfra-health."""
    return {
        **_cluster(settings, host_name),
        "cluster": settings.postgres_cluster,
        "wal_archive_dir": settings.postgres_wal_archive_dir,
        "state_dir": HEALTH_STATE,
        "query_timeout": settings.health_query_timeout,
        "run_timeout": max(60, 6 * settings.health_query_timeout),
        "pgbouncer": {"port": settings.pgbouncer_port,
                      "listen": pgbouncer_listen_addresses(settings)}
        if settings.pgbouncer_enabled else None,
        "backup": {"state_dir": STATE_DIR, "stanza": pgbr.stanza(settings),
                   "pgbackrest_config": pgbr.CONFIG, "spool_path": pgbr.SPOOL,
                   "repos": pgbr.repos(settings)} if settings.repository_host else None,
        "textfile": TEXTFILE if settings.health_prometheus else None,
        "ha": ha.health_settings(settings, host_name),
        "thresholds": {name: list(getattr(settings, f"health_{name}")) for name in THRESHOLDS},
        # the inventory's standbys of this server: each one not streaming is a warning
        "standbys": [settings.cluster[name].slot for name in settings.node.downstream]
        if settings.node else [],
    }


def maintenance_config(settings: Settings, host_name: str) -> dict:
    """What /etc/pginfra/maintenance.json tells pginfra-maintenance."""
    return {
        **_cluster(settings, host_name),
        "state_dir": MAINTENANCE_STATE,
        "log_dir": LOG_DIR,
        "databases": [db["name"] for db in settings.postgres_databases],
        "vacuum": {"min_dead_ratio": settings.maintenance_vacuum_min_dead_ratio,
                   "min_dead_tuples": settings.maintenance_vacuum_min_dead_tuples},
        "analyze": {"min_mod_ratio": settings.maintenance_analyze_min_mod_ratio,
                    "min_mod_tuples": settings.maintenance_analyze_min_mod_tuples},
        "reindex": {"min_bloat_ratio": settings.maintenance_reindex_min_bloat_ratio,
                    "min_bloat_bytes": settings.maintenance_reindex_min_bloat_mb * 1024 * 1024},
        "lock_timeout": settings.maintenance_lock_timeout,
        "statement_timeout": settings.maintenance_statement_timeout,
    }


def exporter_address(settings: Settings) -> str:
    """Where the exporters listen: health_prometheus_address, else the first address the server
    listens on that is not loopback, else 127.0.0.1 (reachable from the host alone)."""
    if settings.health_prometheus_address:
        return settings.health_prometheus_address
    for address in settings.postgres_listen_addresses:
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            continue  # a name such as localhost
        if not ip.is_loopback and not ip.is_unspecified:
            return address
    return "127.0.0.1"


def _listen(address: str, port: int) -> str:
    return f"[{address}]:{port}" if ":" in address else f"{address}:{port}"


def exporter_defaults(settings: Settings) -> dict[str, str]:
    """/etc/default files of both exporters: where they listen and, for the PostgreSQL one, how
    it connects (the Unix socket, peer authentication: no password anywhere)."""
    address = exporter_address(settings)
    return {
        "prometheus-postgres-exporter": render(
            "default-prometheus-postgres-exporter.j2", port=settings.postgres_port,
            role=EXPORTER_ROLE,
            listen=_listen(address, settings.health_prometheus_postgres_port)),
        "prometheus-node-exporter": render(
            "default-prometheus-node-exporter.j2", textfile_dir=METRICS_DIR,
            listen=_listen(address, settings.health_prometheus_node_port)),
    }


EXPORTER_ROLE_OK = (
    f"SELECT count(*) FROM pg_authid r WHERE r.rolname = '{EXPORTER_ROLE}' AND r.rolcanlogin "
    "AND NOT r.rolsuper AND NOT r.rolcreaterole AND NOT r.rolcreatedb AND NOT r.rolreplication "
    "AND NOT r.rolbypassrls AND r.rolpassword IS NULL AND r.rolconnlimit = 3 "
    f"AND pg_has_role(r.oid, 'pg_monitor', 'MEMBER')"
)
EXPORTER_ROLE_SQL = f"""
DO $$BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = '{EXPORTER_ROLE}') THEN
        CREATE ROLE {EXPORTER_ROLE} LOGIN;
    END IF;
END$$;
ALTER ROLE {EXPORTER_ROLE} LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS
    PASSWORD NULL CONNECTION LIMIT 3;
GRANT pg_monitor TO {EXPORTER_ROLE};
"""


@database_hosts_only()
@deploy("Health checks, maintenance and metrics")
def install_health(settings: Settings):
    """
    Install ``pginfra-health`` (``/etc/pginfra/health.json``, thresholds from the
    ``health_*`` settings) and ``pginfra-maintenance`` (``/etc/pginfra/maintenance.json``),
    and with ``health_prometheus`` run both Prometheus exporters on the host's address. The
    next step schedules them in ``/etc/cron.d/pginfra``.

    .. code:: python

        install_health(load_settings())
    """
    wanted = {program: (path, state, checked_config(program, build(settings, host.name),
                                                    host.name, path))  # may refuse: no op yet
              for program, on, path, state, build in (
                  ("pginfra-health", settings.health_enabled, HEALTH_CONFIG, HEALTH_STATE,
                   health_config),
                  ("pginfra-maintenance", settings.runs_maintenance, MAINTENANCE_CONFIG,
                   MAINTENANCE_STATE, maintenance_config)) if on}
    for path in (HEALTH_CONFIG, MAINTENANCE_CONFIG):
        if path not in (p for p, _, _ in wanted.values()):
            files.file(name=f"No {path}", path=path, present=False)
    for path, state, config in wanted.values():
        files.put(name=f"Configuration {path}",
                  src=render_io(f"{path.rsplit('/', 1)[1]}.j2", config=config),
                  dest=path, user="root", group="postgres", mode="0640")
        files.directory(name=f"Directory {state}", path=state, user="postgres",
                        group="postgres", mode="0700")

    if settings.health_prometheus:
        _install_exporters(settings)
    elif any(pkg in host.get_fact(DebPackages) for pkg in EXPORTER_PACKAGES):
        for service in EXPORTER_PACKAGES:
            systemd.service(name=f"{service} stopped (health_prometheus is off)",
                            service=service, running=False, enabled=False)


def _install_exporters(settings: Settings):
    # The /etc/default files go first: the packages start their services on installation, and
    # must never listen on every address, even for a moment; --force-confold keeps ours. The
    # PostgreSQL exporter's postinst then makes its file prometheus:prometheus 0640 (it may hold
    # a password elsewhere), and so does pginfra from then on.
    defaults = exporter_defaults(settings)
    missing = [p for p in EXPORTER_PACKAGES if p not in host.get_fact(DebPackages)]
    changed: dict[str, list] = {name: [] for name in defaults}
    for name in missing:
        changed[name].append(files.put(
            name=f"/etc/default/{name} before the package: its first start listens on the "
            "host's address only", src=io.StringIO(defaults[name]),
            dest=f"/etc/default/{name}", user="root", group="root", mode="0644"))
    dropin = files.put(name="prometheus-postgres-exporter may reach the server's socket",
                       src=render_io("prometheus-postgres-exporter.service.d-pginfra.conf.j2"),
                       dest=EXPORTER_DROPIN, user="root", group="root", mode="0644",
                       create_remote_dir=True)
    changed["prometheus-postgres-exporter"].append(dropin)
    node_dropin = files.put(name="prometheus-node-exporter waits for its address at boot",
                            src=render_io("prometheus-node-exporter.service.d-pginfra.conf.j2"),
                            dest=NODE_EXPORTER_DROPIN, user="root", group="root", mode="0644",
                            create_remote_dir=True)
    changed["prometheus-node-exporter"].append(node_dropin)
    apt.packages(name="Prometheus exporters (Debian packages)", packages=list(EXPORTER_PACKAGES),
                 no_recommends=True, update=bool(missing),
                 cache_time=settings.pginfra_apt_cache_time,
                 extra_install_args="-o Dpkg::Options::=--force-confdef "
                                    "-o Dpkg::Options::=--force-confold",
                 _env={"DEBIAN_FRONTEND": "noninteractive"})
    systemd.daemon_reload(name="systemd picks up the exporters' drop-ins",
                          _if=any_changed(dropin, node_dropin))
    for name, owner, mode in (("prometheus-postgres-exporter", EXPORTER_ROLE, "0640"),
                              ("prometheus-node-exporter", "root", "0644")):
        changed[name].append(files.put(
            name=f"/etc/default/{name}: listen on the host's address only",
            src=io.StringIO(defaults[name]), dest=f"/etc/default/{name}", user=owner,
            group=owner, mode=mode))
    files.directory(name=f"Directory {METRICS_DIR} (written by postgres, read by prometheus)",
                    path=METRICS_DIR, user="postgres", group=EXPORTER_ROLE, mode="0750")
    role_ok = host.get_fact(Command, psql_command(EXPORTER_ROLE_OK, settings.postgres_port))
    if role_ok != "1":
        server.shell(name=f"Role {EXPORTER_ROLE}: login by peer over the Unix socket only, "
                     "pg_monitor, no password",
                     commands=[f"runuser -u postgres -- psql -XAtq -v ON_ERROR_STOP=1 "
                               f"-p {settings.postgres_port} -d postgres"],
                     _stdin=EXPORTER_ROLE_SQL)
    for name, ops in changed.items():
        systemd.service(name=f"{name} running, started at boot", service=name, running=True,
                        enabled=True)
        systemd.service(name=f"{name} restarted for its new settings", service=name,
                        restarted=True, _if=any_changed(*ops))
