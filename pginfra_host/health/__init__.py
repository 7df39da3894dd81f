"""pginfra-health: check this host's PostgreSQL cluster, its PgBouncer, WAL archiving, backups,
disks and (with Patroni) its high-availability cluster, and report the way monitoring wants
it (Nagios line, --verbose, --json, the node exporter's textfile). What it checks and how, for
operators: cli.py's docstring (its --help).

Where things are:

    cli.py          the program: arguments, main(), Run (the checks under the run_timeout
                    watchdog, then the report printed once)
    checks.py       REGISTRY: every check's name -> its function, in the order they run
    context.py      Context: what one run's checks share (the configuration, the connection,
                    in recovery or not, the deadline)
    config.py       /etc/pginfra/health.json: THRESHOLDS (each threshold's defaults, unit,
                    meaning), HealthConfig, BackupSettings, PgBouncerSettings, HaSettings,
                    validate_config, load_config
    result.py       statuses and Nagios codes, result(), grade(), worst(), text helpers
    db.py           connect (the timeouts), query helpers, describe (an error as a detail)
    output.py       the Nagios line and perfdata, --verbose, --json, the textfile
    listeners.py    which TCP sockets listen (the kernel's tables); the deploy uses it too

    The checks, by area:
    server.py       postgres, pending_restart, invalid_indexes
    pgbouncer.py    pgbouncer (SHOW POOLS)
    sessions.py     connections, long_running, idle_in_transaction, blocking_locks
    archiving.py    archiver (pg_stat_archiver, pgBackRest's archive-push and its errors)
    backups.py      backup_base (pgbackrest info, the verify record), backup_dump
    storage.py      disk_data, disk_wal_archive, wraparound, cache_hit_ratio
    replication.py  replication (lag, slots, standbys; on a standby, its receiver)
    ha.py           patroni (the REST API's /cluster), etcd (/health of every member): HTTPS
                    with urllib and the client certificate; only with "ha" set

To add a check: write ``check_<name>(ctx: Context) -> dict`` (returning ``result(...)``) in
its area's module, add it to checks.REGISTRY where it should run (and to WITHOUT_SERVER if it
needs no connection, to CONFIGURED_BY if a null key of the configuration turns it off),
describe it in cli.py's docstring. A new threshold goes in config.THRESHOLDS and nowhere else:
the deploy's settings table makes it the setting ``health_<name>`` (default, meaning, bounds)
and the health step writes it to health.json.

The package imports only the standard library, pginfra_host's shared modules and Debian's
python3-psycopg: it runs under the host's /usr/bin/python3.
"""

from pginfra_host.health.checks import CHECKS
from pginfra_host.health.cli import main
from pginfra_host.health.config import THRESHOLDS, Threshold, load_config, validate_config
from pginfra_host.health.listeners import listening_sockets, missing_listeners

# What the deploy and the entry point use: host_program("pginfra-health").<name>.
__all__ = ["CHECKS", "THRESHOLDS", "Threshold", "listening_sockets", "load_config", "main",
           "missing_listeners", "validate_config"]
