"""The parameters pginfra writes to ``conf.d/postgresql-production.conf``.

Three layers, later ones win: ``BASE_PARAMETERS`` (pginfra's production values, below), the
values ``pginfra.tuning`` computes from the host's RAM and CPUs, and ``postgres_parameters`` from
inventory data. The result is checked for contradictions before anything is written.

    >>> from pginfra.settings import resolve
    >>> params = server_parameters(resolve({}), memory=16 * 1024**3, cpus=4)
    >>> params["shared_buffers"], params["archive_mode"]
    ('4GB', 'on')
"""

from __future__ import annotations

import re

from pginfra import pgbackrest
from pginfra.settings import Settings, SettingsError
from pginfra.topology import synchronous_standby_names
from pginfra.tuning import contradictions, tune
from pginfra_host import layout

CONF_NAME = "postgresql-production.conf"

# name -> (value, why). Values that depend on settings are filled in by server_parameters().
BASE_PARAMETERS: dict[str, tuple[str, str]] = {
    # connections
    "listen_addresses": ("", "from postgres_listen_addresses"),
    "port": ("", "from postgres_port"),
    "superuser_reserved_connections": ("3", "room for the DBA when every slot is taken"),
    "unix_socket_directories": ("/var/run/postgresql", "Debian's socket directory"),
    "unix_socket_group": ("postgres", "only members of group postgres reach the socket"),
    "unix_socket_permissions": ("0770", "the socket is not world-writable"),
    "idle_in_transaction_session_timeout": ("10min", "ends sessions that hold locks idle"),
    # security
    "password_encryption": ("scram-sha-256", "no md5 verifiers"),
    "ssl": ("on", "TLS for every TCP client"),
    "ssl_cert_file": ("", "the host's certificate, from the pginfra CA or the operator"),
    "ssl_key_file": ("", "its key, mode 0600"),
    "ssl_ca_file": ("", "the CA that signed it"),
    "ssl_min_protocol_version": ("TLSv1.2", "nothing older than TLS 1.2"),
    "ssl_ciphers": ("ECDHE+AESGCM:ECDHE+CHACHA20:DHE+AESGCM:!aNULL:!eNULL:!MD5",
                    "forward-secret ciphers only (TLS 1.2; TLS 1.3 suites all are)"),
    "ssl_prefer_server_ciphers": ("on", "the server's cipher order wins"),
    # WAL and archiving
    "wal_level": ("replica", "enough for archiving and streaming replicas"),
    "max_wal_senders": ("10", "streaming replicas and pg_basebackup; more in a larger cluster"),
    "max_replication_slots": ("10", "a slot per standby; more in a larger cluster"),
    "wal_keep_size": ("1GB", "WAL kept for replicas that fall behind"),
    "archive_mode": ("on", "every segment goes to the WAL archive"),
    "archive_library": ("", "empty: PostgreSQL 15 ignores archive_command while it is set"),
    "archive_command": ("", "pgBackRest archive-push: asynchronous, to every repository"),
    "restore_command": ("", "pgBackRest archive-get: a standby that fell behind catches up from "
                            "the repositories"),
    "archive_timeout": ("5min", "a quiet server still archives at least every 5 minutes"),
    "wal_compression": ("lz4", "smaller WAL for full-page writes"),
    # streaming replication
    "max_slot_wal_keep_size": ("", "from postgres_max_slot_wal_keep_size: a lost standby's slot "
                                   "cannot fill the disk"),
    "synchronous_standby_names": ("", "from the primary's postgres_synchronous_standbys"),
    "hot_standby": ("on", "a standby answers read-only queries"),
    "hot_standby_feedback": ("", "from postgres_hot_standby_feedback"),
    "primary_conninfo": ("", "a standby's upstream: TLS verify-full, the password in a "
                             "passfile (postgres, 0600)"),
    "primary_slot_name": ("", "a standby's slot on its upstream, named after it"),
    "recovery_target_timeline": ("latest", "a standby follows a promoted primary"),
    "log_replication_commands": ("on", "replication connections are logged like the others"),
    # checkpoints
    "checkpoint_timeout": ("15min", "fewer full-page writes than the 5min default"),
    # logging
    "logging_collector": ("on", "the server writes its own log files"),
    "log_directory": ("", "from postgres_log_directory, outside the data directory"),
    "log_filename": ("postgresql-%a.log", "one file a weekday, overwritten a week later"),
    "log_truncate_on_rotation": ("on", "so the weekday files do not grow forever"),
    "log_rotation_age": ("1d", "a new file each day"),
    "log_rotation_size": ("0", "rotate by time only"),
    "log_file_mode": ("0600", "only postgres reads the logs"),
    "log_line_prefix": ("%m [%p] user=%u,db=%d,app=%a,client=%h ",
                        "time, pid, user, database, application, client"),
    "log_timezone": ("UTC", "one clock across hosts"),
    "log_connections": ("on", "who connected"),
    "log_disconnections": ("on", "and for how long"),
    "log_lock_waits": ("on", "waits longer than deadlock_timeout"),
    "log_temp_files": ("0", "every temporary file, with its size"),
    "log_checkpoints": ("on", "checkpoint timing"),
    "log_autovacuum_min_duration": ("0", "every autovacuum run"),
    "log_min_duration_statement": ("", "from postgres_slow_statement_ms"),
    "log_statement": ("ddl", "every change to the schema (CIS PostgreSQL benchmark)"),
    # audit (pgAudit) and login guessing (auth_delay)
    "pgaudit.log": ("", "from postgres_audit_log"),
    "pgaudit.log_catalog": ("off", "no entries for catalog reads of psql and tools"),
    "pgaudit.log_parameter": ("off", "bind parameters may carry secrets"),
    "pgaudit.log_relation": ("off", "one entry a statement"),
    "auth_delay.milliseconds": ("", "from postgres_auth_delay_ms"),
    # statistics
    "shared_preload_libraries": ("pg_stat_statements,auto_explain,pgaudit,auth_delay",
                                 "query statistics, plans, audit, a delay after failed logins"),
    "pg_stat_statements.max": ("10000", "distinct statements tracked"),
    "pg_stat_statements.track": ("top", "statements issued by clients"),
    "track_io_timing": ("on", "I/O time in pg_stat_statements and EXPLAIN"),
    "auto_explain.log_min_duration": ("", "plans of statements 4x slower than the slow log"),
    "auto_explain.log_format": ("text", "readable in the log"),
}

SECTIONS: list[tuple[str, list[str]]] = [
    ("Connections", ["listen_addresses", "port", "max_connections",
                     "superuser_reserved_connections", "unix_socket_directories",
                     "unix_socket_group", "unix_socket_permissions",
                     "idle_in_transaction_session_timeout"]),
    ("Security and TLS", ["password_encryption", "ssl", "ssl_cert_file", "ssl_key_file",
                          "ssl_ca_file", "ssl_min_protocol_version", "ssl_ciphers",
                          "ssl_prefer_server_ciphers"]),
    ("Memory (tuned from RAM)", ["shared_buffers", "huge_pages", "effective_cache_size",
                                 "work_mem", "maintenance_work_mem"]),
    ("Workers (tuned from CPUs)", ["max_worker_processes", "max_parallel_workers",
                                   "max_parallel_workers_per_gather",
                                   "max_parallel_maintenance_workers"]),
    ("Planner", ["random_page_cost", "effective_io_concurrency", "default_statistics_target",
                 "jit"]),
    ("WAL and archiving", ["wal_level", "max_wal_senders", "max_replication_slots",
                           "wal_keep_size", "wal_buffers",
                           "wal_compression", "archive_mode", "archive_library",
                           "archive_command", "restore_command", "archive_timeout"]),
    ("Streaming replication", ["max_slot_wal_keep_size", "synchronous_standby_names",
                               "hot_standby", "hot_standby_feedback", "primary_conninfo",
                               "primary_slot_name", "recovery_target_timeline",
                               "log_replication_commands"]),
    ("Checkpoints", ["checkpoint_timeout", "checkpoint_completion_target", "min_wal_size",
                     "max_wal_size"]),
    ("Logging", ["logging_collector", "log_directory", "log_filename",
                 "log_truncate_on_rotation", "log_rotation_age", "log_rotation_size",
                 "log_file_mode", "log_line_prefix", "log_timezone", "log_connections",
                 "log_disconnections", "log_lock_waits", "log_temp_files", "log_checkpoints",
                 "log_autovacuum_min_duration", "log_min_duration_statement",
                 "log_statement"]),
    ("Audit and failed logins", ["pgaudit.log", "pgaudit.log_catalog", "pgaudit.log_parameter",
                                 "pgaudit.log_relation", "auth_delay.milliseconds"]),
    ("Statistics", ["shared_preload_libraries", "pg_stat_statements.max",
                    "pg_stat_statements.track", "track_io_timing",
                    "auto_explain.log_min_duration", "auto_explain.log_format"]),
]


def config_dir(settings: Settings) -> str:
    """Debian's configuration directory of the cluster."""
    return layout.config_directory(*settings.pg_cluster)


def tls_paths(settings: Settings) -> dict[str, str]:
    base = f"{config_dir(settings)}/tls"
    return {"cert": f"{base}/server.crt", "key": f"{base}/server.key", "ca": f"{base}/ca.crt"}


def passfile_path(settings: Settings) -> str:
    """The replication user's passfile on a standby (postgres, 0600, in the 0700 config
    directory): libpq reads the password from it, so it is in no command line or setting."""
    return f"{config_dir(settings)}/replication.pgpass"


def primary_conninfo(settings: Settings) -> str:
    """A standby's connection to its upstream, or '' on a primary."""
    upstream = settings.upstream
    if upstream is None:
        return ""
    return " ".join([
        f"host={upstream.address}", f"port={upstream.port}",
        f"user={settings.postgres_replication_user}", f"application_name={settings.node.slot}",
        "sslmode=verify-full", f"sslrootcert={tls_paths(settings)['ca']}",
        f"passfile={passfile_path(settings)}", "connect_timeout=5",
        "keepalives_idle=30", "keepalives_interval=10", "keepalives_count=3",
    ])


def passfile_text(settings: Settings, password: str) -> str:
    """The passfile line: any host, replication connections, the replication user."""
    if re.search(r"[\x00-\x1f\x7f]", password):
        raise SettingsError(f"{settings.host_name}: the password of "
                            f"{settings.postgres_replication_user} holds a line break or another "
                            "control character: a passfile holds it on one line")
    escaped = password.replace("\\", "\\\\").replace(":", "\\:")
    return f"*:*:replication:{settings.postgres_replication_user}:{escaped}\n"


# A hot standby will not start with less of these than its primary has: every server of a
# cluster gets the largest value any of them would have (each may become the primary).
HOT_STANDBY_MINIMUMS = {"max_connections": 100, "max_worker_processes": 8,
                        "max_wal_senders": 10, "max_prepared_transactions": 0,
                        "max_locks_per_transaction": 64}


def hot_standby_floor(params: dict[str, str]) -> dict[str, int]:
    """The values of ``HOT_STANDBY_MINIMUMS`` in a server's parameters (defaults if unset)."""
    return {name: int(params.get(name, default)) for name, default in
            HOT_STANDBY_MINIMUMS.items()}


def _conf_value(value) -> str:
    if isinstance(value, bool):
        return "on" if value else "off"
    return str(value)


def server_parameters(settings: Settings, memory: int, cpus: int,
                      floor: dict[str, int] | None = None) -> dict[str, str]:
    """Every parameter pginfra sets on a host with ``memory`` bytes and ``cpus`` CPUs; with
    ``floor`` (the other servers' ``hot_standby_floor``), no value of ``HOT_STANDBY_MINIMUMS``
    below it.

    Raises SettingsError when the result contradicts itself or the host.
    """
    params = {name: value for name, (value, _) in BASE_PARAMETERS.items()}
    tls = tls_paths(settings)
    slow = settings.postgres_slow_statement_ms
    params.update({
        "listen_addresses": ",".join(settings.postgres_listen_addresses),
        "port": str(settings.postgres_port),
        "ssl_cert_file": tls["cert"],
        "ssl_key_file": tls["key"],
        "ssl_ca_file": tls["ca"],
        "archive_command": pgbackrest.archive_command(settings),
        # With Patroni, replicas stream only (their slots keep the WAL they need): after a
        # failover the archive may hold the old leader's diverged segments (Patroni archives
        # them before pg_rewind), and a replica restoring one would replay past the fork.
        "restore_command": "" if settings.postgres_ha else pgbackrest.restore_command(settings),
        "log_directory": settings.postgres_log_directory,
        "log_min_duration_statement": f"{slow}ms" if slow >= 0 else "-1",
        "auto_explain.log_min_duration": f"{slow * 4}ms" if slow >= 0 else "-1",
        "pgaudit.log": settings.postgres_audit_log,
        "auth_delay.milliseconds": str(settings.postgres_auth_delay_ms),
        "max_slot_wal_keep_size": settings.postgres_max_slot_wal_keep_size,
        "synchronous_standby_names": "" if settings.is_standby else synchronous_standby_names(
            settings.postgres_synchronous_standbys),
        "hot_standby_feedback": _conf_value(settings.postgres_hot_standby_feedback),
        "primary_conninfo": primary_conninfo(settings),
        "primary_slot_name": settings.node.slot if settings.is_standby else "",
    })
    if settings.node is not None:
        # Any server may become the primary of all the others: a sender and a slot for each,
        # the slots pginfra keeps, and two senders for a pg_basebackup with -X stream.
        others = len(settings.cluster) - 1
        keep = len(settings.postgres_replication_slots_keep)
        params["max_wal_senders"] = str(max(10, others + keep + 2))
        params["max_replication_slots"] = str(max(10, others + keep))
    params.update(tune(memory, cpus, settings.postgres_profile, settings.postgres_storage,
                       settings.postgres_max_connections or None))
    params.update({k: _conf_value(v) for k, v in settings.postgres_parameters.items()})
    for name, least in (floor or {}).items():
        if int(params.get(name, HOT_STANDBY_MINIMUMS[name])) < least:
            params[name] = str(least)
    standbys = len(settings.node.downstream) if settings.node else 0
    problems = contradictions(params, memory, max(settings.postgres_replicas, standbys))
    if problems:
        raise SettingsError("contradictory server settings, nothing was changed:\n"
                            + "\n".join(f"  {settings.host_name}: {p}" for p in problems))
    return params


def render_sections(params: dict[str, str]) -> list[tuple[str, list[tuple[str, str]]]]:
    """The parameters grouped as the template writes them, leftovers in a last section."""
    placed: set[str] = set()
    out = []
    for title, names in SECTIONS:
        rows = [(n, params[n]) for n in names if n in params]
        placed.update(n for n, _ in rows)
        out.append((title, rows))
    extra = [(n, v) for n, v in sorted(params.items()) if n not in placed]
    if extra:
        out.append(("Other parameters from postgres_parameters", extra))
    return out


def quote(value: str) -> str:
    """A postgresql.conf value, always single-quoted."""
    return "'" + str(value).replace("\\", "\\\\").replace("'", "''") + "'"


def parameters_reference() -> str:
    """The parameters pginfra writes, in Markdown, for docs/settings.md."""
    out = [
        "",
        "## Server parameters",
        "",
        f"Written to `conf.d/{CONF_NAME}`. Memory, worker and planner values are computed from",
        "the host's RAM and CPUs (`postgres_profile`, `postgres_storage`); override any parameter,",
        "these included, with `postgres_parameters`. Contradictions (archiving with `wal_level`",
        "minimal, `shared_buffers` not below RAM, `max_wal_senders` below `postgres_replicas`)",
        "stop the run before anything changes.",
        "",
        "| parameter | value | why |",
        "| --- | --- | --- |",
    ]
    for name, (value, why) in BASE_PARAMETERS.items():
        shown = f"`{value}`" if value else "(computed)"
        out.append(f"| `{name}` | {shown} | {why} |")
    return "\n".join(out) + "\n"


def cluster_floor(settings: Settings) -> dict[str, int]:
    """The largest ``HOT_STANDBY_MINIMUMS`` values the other servers of the cluster get from
    their own RAM, CPUs and data, so that a standby never has less than its primary (it would
    not start) and any of them may be promoted."""
    from pyinfra import host, inventory
    from pyinfra.facts.hardware import Cpus, Memory

    from pginfra.settings import resolve
    from pginfra.tuning import MB

    floor: dict[str, int] = {}
    for name in settings.cluster:
        other = inventory.get_host(name, None)
        if name == host.name or other is None:
            continue
        try:
            theirs = resolve(other.data.dict(), name)
            theirs.cluster, theirs.node = settings.cluster, settings.cluster[name]
            params = server_parameters(theirs, other.get_fact(Memory) * MB,
                                       other.get_fact(Cpus))
        except SettingsError:
            continue  # that host's own run reports it
        for key, value in hot_standby_floor(params).items():
            floor[key] = max(floor.get(key, 0), value)
    return floor
