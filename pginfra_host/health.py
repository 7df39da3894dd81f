"""Check this host's PostgreSQL cluster, its PgBouncer, WAL archiving, backups and disks, and
report the way monitoring wants it: one Nagios line with perfdata and a Nagios exit code (the
default), one line per check (--verbose) or one line of JSON (--json); and, for the node
exporter's textfile collector, every check's status and value as Prometheus gauges.

    pginfra-health                        Nagios line: "PGINFRA OK - 16 checks ok | ..."
    pginfra-health --verbose              one line per check: status, value, thresholds, detail
    pginfra-health --json                 {"host", "time", "status", "exit_code", ...}
    pginfra-health --alerts-only          only the checks that are not ok
    pginfra-health --check archiver       only these checks (repeatable)

The configuration is /etc/pginfra/health.json (--config PATH); its "backup" is null (no backup
checks) or {"state_dir": PATH, "stanza": NAME, "pgbackrest_config": PATH, "spool_path": PATH,
"repos": [1, 2]}, every key required. The program runs as postgres (root is switched to
postgres through runuser), connects over the Unix socket by peer authentication (autocommit,
read only, application_name pginfra-health) with connect_timeout, statement_timeout and
lock_timeout all set to query_timeout, and never hangs: a watchdog ends the run after
run_timeout seconds, every check not finished by then is unknown ("run_timeout of
N s reached") and the output is printed all the same. A check that fails in itself (timeout,
permission, bug) is unknown with the reason and never stops the others; a statement cut short
by statement_timeout or lock_timeout is unknown ("query timed out after N s").

Checks, in the order they run and are reported ([warning, critical] thresholds from the
configuration; a value at or above a threshold reaches it, for cache_hit_ratio a value below):
  postgres             the server answers (SELECT 1); version, in recovery or not, uptime.
                       Critical with the reason when it does not; then every SQL check is
                       unknown while the filesystem and PgBouncer checks still run.
  pgbouncer            SHOW POOLS on PgBouncer's console (psql, Unix socket, user pgbouncer);
                       critical when it does not answer; value: the longest client wait in
                       seconds (pgbouncer_wait_seconds). Omitted when "pgbouncer" is null.
  connections          client backends in % of max_connections (connections_percent).
  long_running         the oldest active statement of another session, in seconds
                       (long_running_seconds).
  idle_in_transaction  the oldest session idle in a transaction (aborted or not), in seconds
                       (idle_in_transaction_seconds).
  blocking_locks       sessions waiting for a lock: the longest wait in seconds
                       (lock_wait_seconds), naming the waiting and the blocking pids.
  archiver             pg_stat_archiver and the .ready files: critical when wal_archive_dir
                       (pgBackRest's repo 1) is missing or not writable; archiving failing for
                       archive_failing_seconds (warning 0: as soon as it fails); failed_count
                       risen since the previous run (state_dir/archiver.json): warning;
                       segments waiting (archive_ready_segments; the value). archive_mode
                       off: warning. While archiving fails the detail says so: PostgreSQL
                       keeps the WAL in pg_wal, nothing is lost until that disk fills. With
                       "backup" set, also: archive_command not "pgbackrest --stanza=<stanza>
                       archive-push %p" (or archive_library set, which wins over it): warning;
                       the asynchronous archive-push's error files of segments still waiting
                       (<backup.spool_path>/archive/<stanza>/out/*.error, pgBackRest's exit
                       code and message, e.g. an unreachable S3): warning naming the segment.
                       A standby is ok (the primary archives) unless archive_mode is always.
  backup_base          the newest pgBackRest backup (full, diff or incr) of each repository in
                       backup.repos, from "pgbackrest --config=<backup.pgbackrest_config>
                       --config-include-path=<its directory>/conf.d --stanza=<backup.stanza>
                       --output=json info" (at most half the run_timeout): its age in hours
                       against backup_base_age_hours, the worst repository deciding (the value:
                       the oldest of them); a repository pgBackRest reports a problem with
                       (unreachable, stanza not created, ...; its message), one it does not
                       have, or one without a backup: critical; a newest backup that found
                       page checksum errors: warning. The last verify
                       (<backup.state_dir>/pgbackrest-verify.json, written by pginfra-backup
                       verify) with a repository not ok: critical naming its problems; none
                       recorded is not a problem. A backup in progress is said, not a problem.
                       pgbackrest failing: critical; not finishing in time: unknown. Ok on a
                       standby. Omitted when "backup" is null.
  backup_dump          the age in hours of the last verified dumps
                       (<backup.state_dir>/last-success/dump.json, backup_dump_age_hours); none
                       recorded: critical; unreadable or malformed: unknown; ok on a standby.
  disk_data            filesystem usage in % of data_directory's filesystem, like df
                       (disk_used_percent; inodes too, and pg_wal's filesystem when it is
                       another one); a missing directory: critical.
  disk_wal_archive     the same for wal_archive_dir.
  wraparound           the oldest transaction or multixact ID age of any database in % of 2^31
                       (wraparound_percent), naming the database.
  cache_hit_ratio      blocks found in shared buffers / blocks needed, over all databases
                       (cache_hit_ratio, lower is worse); ok below 10000 blocks in all.
  replication          primary: the largest replay lag of a replica or WAL retained by a slot,
                       in MB (replication_lag_mb), "no replicas" when there is neither; a slot
                       that lost WAL: critical; a standby of "standbys" in the
                       configuration that is not streaming: warning. Standby: received but
                       not replayed WAL in MB;
                       critical when no WAL receiver streams; replay paused: warning.
  pending_restart      parameters changed but waiting for a restart, and configuration file
                       lines in error (pg_file_settings, pg_hba_file_rules): warning.
  invalid_indexes      INVALID indexes (not being built right now) in every database that
                       allows connections: warning naming db.schema.index; a database that
                       cannot be reached: unknown.

Query texts of other sessions are never shown (they may hold passwords): sessions are named by
pid, user@database, application_name and durations.

--textfile PATH (default: the configuration's "textfile"; not with --check unless given
explicitly) writes every check in the node exporter's textfile format, atomically, mode 0644:
pginfra_health_status{check} (0 ok, 1 warning, 2 critical, 3 unknown), pginfra_health_value
{check,unit}, pginfra_health_threshold{check,level}, pginfra_health_exit_code,
pginfra_health_duration_seconds and pginfra_health_last_run_timestamp_seconds. A textfile that
cannot be written is a warning on stderr; the exit code stays the checks'.

Exit codes (Nagios): 0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN. The overall status is the worst
check's, ordered ok < warning < unknown < critical. A bad configuration or bad usage exits 3
(UNKNOWN) with one line naming the problem (with --json: {"status": "unknown", ...}).
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import io
import ipaddress
import json
import math
import os
import pwd
import re
import shlex
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from pginfra_host import layout, runner, schema, util

try:
    import psycopg
    from psycopg import errors as pg_errors
    from psycopg.rows import dict_row
except ImportError:  # the postgres check reports it
    psycopg = pg_errors = dict_row = None

NAME = "pginfra-health"
DEFAULT_CONFIG = "/etc/pginfra/health.json"
APPLICATION_NAME = "pginfra-health"

OK, WARNING, CRITICAL, UNKNOWN = "ok", "warning", "critical", "unknown"
NAGIOS_CODE = {OK: 0, WARNING: 1, CRITICAL: 2, UNKNOWN: 3}
SEVERITY = {OK: 0, WARNING: 1, UNKNOWN: 2, CRITICAL: 3}
EXIT_UNKNOWN = 3

CHECKS = ("postgres", "pgbouncer", "connections", "long_running", "idle_in_transaction",
          "blocking_locks", "archiver", "backup_base", "backup_dump", "disk_data",
          "disk_wal_archive", "wraparound", "cache_hit_ratio", "replication",
          "pending_restart", "invalid_indexes")
WITHOUT_SERVER = {"pgbouncer", "disk_wal_archive"}  # need no connection at all
LOWER_IS_WORSE = {"cache_hit_ratio"}
XID_HORIZON = 2 ** 31
MIN_BLOCKS = 100_000  # cache_hit_ratio: below this (800 MB of reads) a cold cache is no signal
LIST_AT_MOST = 3     # sessions, slots, indexes named in a detail; the rest are counted

# name: (the deploy's default [warning, critical], lower is worse, largest value)
THRESHOLDS = {
    "connections_percent": ((75, 90), False, 100),
    "long_running_seconds": ((300, 1800), False, None),
    "idle_in_transaction_seconds": ((300, 900), False, None),
    "lock_wait_seconds": ((30, 300), False, None),
    "archive_failing_seconds": ((0, 300), False, None),
    "archive_ready_segments": ((10, 50), False, None),
    "backup_base_age_hours": ((180, 348), False, None),
    "backup_dump_age_hours": ((26, 50), False, None),
    "disk_used_percent": ((80, 90), False, 100),
    "wraparound_percent": ((50, 75), False, 100),
    "cache_hit_ratio": ((0.95, 0.90), True, 1),
    "replication_lag_mb": ((50, 100), False, None),
    "pgbouncer_wait_seconds": ((1, 5), False, None),
}
TOP_KEYS = ("host", "version", "cluster", "port", "data_directory", "wal_archive_dir",
            "state_dir", "query_timeout", "run_timeout", "pgbouncer", "backup", "textfile",
            "thresholds")
OPTIONAL_KEYS = ("socket_dir", "standbys")
BACKUP_KEYS = ("state_dir", "stanza", "pgbackrest_config", "spool_path", "repos")
STANZA_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
MAX_REPO = 256  # pgBackRest's repo1..repo256

PGBACKREST = "/usr/bin/pgbackrest"  # Debian's package
VERIFY_RECORD = "pgbackrest-verify.json"  # pginfra-backup verify's, in backup.state_dir
# pgBackRest's info status codes (stanza and repository): 2 is "no valid backups", said here
# as "no backup in repo N"; the others are problems with pgBackRest's own message.
INFO_OK, INFO_NO_BACKUP, INFO_MIXED = 0, 2, 4
INFO_NEEDS_STANZA = {1, 3}  # missing stanza path / data: stanza-create has not run there


class RunTimeout(BaseException):
    """The watchdog fired: not an Exception, so that no check's error handling swallows it."""


# ---------------------------------------------------------------------------------------------
# Configuration

@dataclass(frozen=True)
class BackupSettings:
    """The configuration's "backup": where pginfra-backup keeps its records (dump.json,
    pgbackrest-verify.json) and how to ask pgBackRest about the cluster's stanza."""
    state_dir: str
    stanza: str
    pgbackrest_config: str
    spool_path: str
    repos: tuple

    @property
    def include_path(self) -> str:
        """pgBackRest's conf.d beside its configuration file (a stanza's options and secrets)."""
        return os.path.join(os.path.dirname(self.pgbackrest_config), "conf.d")


@dataclass(frozen=True)
class HealthConfig:
    path: str
    host: str
    version: int
    cluster: str
    port: int
    socket_dir: str
    data_directory: str
    wal_archive_dir: str
    state_dir: str
    query_timeout: float
    run_timeout: float
    pgbouncer_port: int | None
    pgbouncer_listen: tuple
    backup: BackupSettings | None
    textfile: str | None
    thresholds: dict
    standbys: tuple = ()  # application names that should stream from this server

    def bin(self, name: str) -> str:
        return f"/usr/lib/postgresql/{self.version}/bin/{name}"

    @property
    def backup_state_dir(self) -> str | None:
        return None if self.backup is None else self.backup.state_dir

    @property
    def connect_timeout(self) -> int:
        return max(2, math.ceil(self.query_timeout))  # libpq's unit; below 2 it uses 2


def _is_number(value) -> bool:
    return (isinstance(value, int | float) and not isinstance(value, bool)
            and math.isfinite(value))


def _positive(key: str, value, high: float) -> float:
    schema.require(_is_number(value) and 0 < value <= high, key,
              f"must be a number of seconds > 0 and <= {high}", value)
    return value


def _pair(key: str, value, lower_is_worse: bool, high) -> tuple:
    order = ("warning >= critical (lower is worse)" if lower_is_worse
             else "warning <= critical")
    ok = (isinstance(value, list) and len(value) == 2
          and all(_is_number(v) and v >= 0 and (high is None or v <= high) for v in value)
          and (value[0] >= value[1] if lower_is_worse else value[0] <= value[1]))
    schema.require(ok, key, "must be [warning, critical]: two non-negative numbers"
              + (f" <= {high}" if high is not None else "") + f", {order}", value)
    return tuple(value)


def validate_backup(backup) -> BackupSettings | None:
    """The "backup" key: null, or every one of BACKUP_KEYS."""
    schema.require(backup is None or isinstance(backup, dict), "backup",
              "must be null or an object {" + ", ".join(f'"{k}"' for k in BACKUP_KEYS) + "}",
              backup)
    if backup is None:
        return None
    schema.check_keys(backup, BACKUP_KEYS, prefix="backup.")
    state_dir = schema.abspath("backup.state_dir", backup["state_dir"])
    stanza = schema.string("backup.stanza", backup["stanza"], STANZA_RE,
                      "a stanza name ([A-Za-z0-9_.-], 1..64)")
    config = schema.abspath("backup.pgbackrest_config", backup["pgbackrest_config"])
    schema.require(config != "/", "backup.pgbackrest_config",
              "must be the path of pgBackRest's configuration file", config)
    spool_path = schema.abspath("backup.spool_path", backup["spool_path"])
    repos = backup["repos"]
    schema.require(isinstance(repos, list) and repos != []
                   and len(set(map(repr, repos))) == len(repos)
              and all(isinstance(r, int) and not isinstance(r, bool) and 1 <= r <= MAX_REPO
                      for r in repos),
              "backup.repos", f"must be a non-empty list of distinct repository numbers "
              f"(1..{MAX_REPO})", repos)
    return BackupSettings(state_dir=state_dir, stanza=stanza, pgbackrest_config=config,
                          spool_path=spool_path, repos=tuple(repos))


def validate_config(raw, path: str = DEFAULT_CONFIG) -> HealthConfig:
    """The configuration, checked strictly; runner.ConfigError names the first bad key."""
    if not isinstance(raw, dict):
        raise runner.ConfigError("the configuration must be a JSON object")
    schema.check_keys(raw, TOP_KEYS, OPTIONAL_KEYS)
    bouncer = raw["pgbouncer"]
    schema.require(bouncer is None or isinstance(bouncer, dict), "pgbouncer",
              "must be an object {\"port\": N} or null", bouncer)
    if bouncer is not None:
        schema.check_keys(bouncer, ("port",), ("listen",), prefix="pgbouncer.")
        schema.integer("pgbouncer.port", bouncer["port"], 1, 65535)
        listen = bouncer.get("listen", [])
        schema.require(isinstance(listen, list) and all(isinstance(a, str) for a in listen),
                  "pgbouncer.listen", "must be a list of addresses", listen)
    backup = validate_backup(raw["backup"])
    textfile = raw["textfile"]
    if textfile is not None:
        schema.abspath("textfile", textfile)
        schema.require(textfile.endswith(".prom") and len(textfile) > len("/.prom"), "textfile",
                  "must be null or a path ending in .prom (what the node exporter reads)",
                  textfile)
    thresholds = raw["thresholds"]
    schema.require(isinstance(thresholds, dict), "thresholds", "must be an object", thresholds)
    schema.check_keys(thresholds, tuple(THRESHOLDS), prefix="thresholds.")
    pairs = {name: _pair(f"thresholds.{name}", thresholds[name], lower, high)
             for name, (_default, lower, high) in THRESHOLDS.items()}
    standbys = raw.get("standbys", [])
    schema.require(isinstance(standbys, list) and all(
        isinstance(n, str) and re.fullmatch(r"[a-z0-9_]{1,63}", n) for n in standbys),
        "standbys", "must be a list of application names ([a-z0-9_], 1..63)", standbys)
    return HealthConfig(
        path=path,
        standbys=tuple(standbys),
        host=schema.string("host", raw["host"], schema.NAME, "a host name ([A-Za-z0-9._-], 1..63)"),
        version=schema.integer("version", raw["version"], 10, 99),
        cluster=schema.string("cluster", raw["cluster"], schema.NAME, "a cluster name"),
        port=schema.integer("port", raw["port"], 1, 65535),
        socket_dir=schema.abspath("socket_dir", raw.get("socket_dir", layout.DEFAULT_SOCKET_DIR)),
        data_directory=schema.abspath("data_directory", raw["data_directory"]),
        wal_archive_dir=schema.abspath("wal_archive_dir", raw["wal_archive_dir"]),
        state_dir=schema.abspath("state_dir", raw["state_dir"]),
        query_timeout=_positive("query_timeout", raw["query_timeout"], 600),
        run_timeout=_positive("run_timeout", raw["run_timeout"], 3600),
        pgbouncer_port=None if bouncer is None else bouncer["port"],
        pgbouncer_listen=() if bouncer is None else tuple(bouncer.get("listen", [])),
        backup=backup,
        textfile=textfile,
        thresholds=pairs,
    )


def load_config(path: str) -> HealthConfig:
    try:
        with open(path, encoding="utf-8") as f:
            raw = json.load(f)
    except FileNotFoundError:
        raise runner.ConfigError(f"{path}: no such file (pass --config PATH)") from None
    except PermissionError:
        raise runner.ConfigError(f"{path}: permission denied (run as {util.OS_USER})") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise runner.ConfigError(f"{path}: cannot read it: {exc}") from None
    except json.JSONDecodeError as exc:
        raise runner.ConfigError(f"{path}: not valid JSON: {exc}") from None
    try:
        return validate_config(raw, path)
    except runner.ConfigError as exc:
        raise runner.ConfigError(f"{path}: {exc}") from None


# ---------------------------------------------------------------------------------------------
# Results, formatting helpers

def result(check: str, status: str, detail: str, value=None, unit: str | None = None,
           pair: tuple | None = None, data: dict | None = None) -> dict:
    return {"check": check, "status": status,
            "value": None if value is None else _round(value), "unit": unit,
            "warning": None if pair is None else pair[0],
            "critical": None if pair is None else pair[1],
            "detail": detail, "data": data or {}}


def _round(value):
    if isinstance(value, bool) or not isinstance(value, int | float):
        return value
    if isinstance(value, int):
        return value
    return round(value, 4) if abs(value) < 10 else round(value, 2)


def grade(value, pair: tuple, lower_is_worse: bool = False) -> str:
    """A value at or above a threshold reaches it; lower_is_worse: a value below it."""
    if value is None:
        return OK
    warning, critical = pair
    if lower_is_worse:
        return CRITICAL if value < critical else WARNING if value < warning else OK
    return CRITICAL if value >= critical else WARNING if value >= warning else OK


def worst(statuses) -> str:
    return max(statuses, key=SEVERITY.__getitem__, default=OK)


def num(value) -> str:
    """A number as people and Nagios read it: no exponent, no trailing zeros."""
    if value is None:
        return ""
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    text = f"{float(value):.4f}".rstrip("0").rstrip(".")
    return text if text not in ("", "-0") else "0"


def seconds_text(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 120:
        return f"{seconds:.1f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    if seconds < 172800:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} days"


def clean(text) -> str:
    """One printable line (names come from clients: application_name is theirs)."""
    text = "" if text is None else str(text)
    return "".join(ch if ch.isprintable() else " " for ch in text).strip()


def one_line(exc) -> str:
    return " ".join(str(exc).split())


def who(row: dict) -> str:
    user = row.get("usename") or row.get("backend_type") or "?"
    return f"{clean(user)}@{clean(row.get('datname') or '-')}"


def session_data(row: dict, seconds_key: str = "seconds") -> dict:
    return {"pid": row["pid"], "user": row.get("usename"), "database": row.get("datname"),
            "application_name": clean(row.get("application_name")),
            "seconds": _round(row.get(seconds_key))}


def more(items: list[str], total: int | None = None) -> str:
    total = len(items) if total is None else total
    shown = items[:LIST_AT_MOST]
    return ", ".join(shown) + (f" and {total - len(shown)} more" if total > len(shown) else "")


def describe(exc: BaseException, cfg: HealthConfig) -> str:
    """An exception as a check's unknown detail."""
    qt = num(cfg.query_timeout)
    if psycopg is not None and isinstance(exc, psycopg.Error):
        # The timeouts also cut the start of a session short (a FATAL at connection time).
        text = str(exc)
        if isinstance(exc, pg_errors.LockNotAvailable) or "due to lock timeout" in text:
            return f"query timed out after {qt} s (lock_timeout: waiting for a lock)"
        if "due to statement timeout" in text:
            return f"query timed out after {qt} s (statement_timeout)"
        timeout_class = getattr(pg_errors, "ConnectionTimeout", None)
        if timeout_class is not None and isinstance(exc, timeout_class):
            return f"connection timed out after {cfg.connect_timeout} s"
    return f"{type(exc).__name__}: {one_line(exc)}"


# ---------------------------------------------------------------------------------------------
# PostgreSQL

def connect(cfg: HealthConfig, dbname: str = "postgres"):
    ms = max(1, int(cfg.query_timeout * 1000))
    return psycopg.connect(host=cfg.socket_dir, port=cfg.port, dbname=dbname, autocommit=True,
                           connect_timeout=cfg.connect_timeout,
                           application_name=APPLICATION_NAME, row_factory=dict_row,
                           options=f"-c statement_timeout={ms} -c lock_timeout={ms} "
                                   "-c default_transaction_read_only=on")


def query(conn, sql: str, params=None) -> list[dict]:
    return conn.execute(sql, params).fetchall()


def query_one(conn, sql: str, params=None) -> dict:
    return conn.execute(sql, params).fetchone()


def settings(conn, *names: str) -> dict:
    rows = query(conn, "SELECT name, setting FROM pg_catalog.pg_settings WHERE name = ANY(%s)",
                 (list(names),))
    return {r["name"]: r["setting"] for r in rows}


# ---------------------------------------------------------------------------------------------
# Listening sockets

def listening_sockets(tables=("/proc/net/tcp", "/proc/net/tcp6")) -> set[str]:
    """``address:port`` of every TCP socket in LISTEN in this network namespace."""
    found = set()
    for table in tables:
        try:
            with open(table, encoding="ascii") as f:
                lines = f.read().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if len(fields) > 3 and fields[3] == "0A":  # TCP_LISTEN
                found.add(decode_socket(fields[1]))
    return found


def decode_socket(text: str) -> str:
    """``0100007F:1538`` -> ``127.0.0.1:5432`` (each 32-bit word of the address is in the
    kernel's byte order, little-endian here; IPv6 has four of them)."""
    address, port = text.split(":")
    raw = bytes.fromhex(address)
    ordered = b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4))
    return f"{ipaddress.ip_address(ordered)}:{int(port, 16)}"


def missing_listeners(addresses: list[str], port: int, sockets: set[str]) -> list[str]:
    """The ``address:port`` of each IP address in ``addresses`` nothing listens on; names and
    "*" are the server's to resolve, and a wildcard socket serves every address."""
    if {f"0.0.0.0:{port}", f":::{port}", f"*:{port}"} & sockets:
        return []
    missing = []
    for address in addresses:
        try:
            ip = ipaddress.ip_address(address.strip())
        except ValueError:
            continue
        if f"{ip}:{port}" not in sockets:
            missing.append(f"{ip}:{port}")
    return missing


# ---------------------------------------------------------------------------------------------
# PgBouncer

POOLS_NEEDED = ("database", "user", "cl_waiting", "maxwait")


def parse_show_pools(text: str) -> list[dict]:
    """SHOW POOLS as ``psql --csv`` prints it: one dict per pool with the client counts and
    ``maxwait_seconds`` (maxwait + maxwait_us / 1e6). ValueError when it is not that."""
    reader = csv.DictReader(io.StringIO(text))
    header = reader.fieldnames or []
    missing = [c for c in POOLS_NEEDED if c not in header]
    if missing:
        raise ValueError(f"SHOW POOLS output lacks the column(s) {', '.join(missing)} "
                         f"(header: {','.join(header) or 'none'})")
    pools = []
    for row in reader:
        def count(column: str, row=row) -> int:
            value = row.get(column)
            return int(value) if value not in (None, "") else 0
        pools.append({
            "database": row["database"], "user": row["user"],
            "cl_active": count("cl_active"), "cl_waiting": count("cl_waiting"),
            "sv_active": count("sv_active"), "sv_idle": count("sv_idle"),
            "sv_used": count("sv_used"),
            "maxwait_seconds": count("maxwait") + count("maxwait_us") / 1e6,
            "pool_mode": row.get("pool_mode") or None,
        })
    return pools


def summarize_pools(pools: list[dict]) -> dict:
    """The longest wait and the waiting clients over all pools."""
    longest = max(pools, key=lambda p: p["maxwait_seconds"], default=None)
    return {"pools": len(pools), "waiting": sum(p["cl_waiting"] for p in pools),
            "maxwait_seconds": longest["maxwait_seconds"] if longest else 0.0,
            "longest_pool": f"{longest['database']}/{longest['user']}" if longest else None}


# ---------------------------------------------------------------------------------------------
# pgBackRest: info, the verify record, the asynchronous archive-push's status files

def pgbackrest_argv(backup: BackupSettings, *args: str) -> list[str]:
    """pgbackrest with the configuration file, its conf.d (a stanza's options and the
    repositories' passphrases are there) and the stanza; nothing on the console but what the
    command prints (no log lines in the JSON), no log file."""
    return [PGBACKREST, f"--config={backup.pgbackrest_config}",
            f"--config-include-path={backup.include_path}", f"--stanza={backup.stanza}",
            "--log-level-console=off", "--log-level-file=off", *args]


def _field(obj, key: str, kind: type, where: str):
    value = obj.get(key) if isinstance(obj, dict) else None
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise ValueError(f"{where}: no {key!r} ({kind.__name__})")
    return value


def parse_pgbackrest_info(text: str, stanza: str) -> dict:
    """The stanza's part of ``pgbackrest --output=json info``, checked and reduced to what the
    check needs; ValueError when the text is not that. JSON integers stay exact (system-id is
    above 2^53)."""
    try:
        stanzas = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"not JSON: {exc}") from None
    if not isinstance(stanzas, list):
        raise ValueError("not a JSON list of stanzas")
    found = [s for s in stanzas if isinstance(s, dict) and s.get("name") == stanza]
    if not found:
        names = [s.get("name") for s in stanzas if isinstance(s, dict)]
        raise ValueError(f"stanza {stanza} is not in it (it lists {names or 'none'})")
    raw = found[0]
    status = _field(raw, "status", dict, "status")
    lock = status.get("lock") if isinstance(status.get("lock"), dict) else {}
    held = lock.get("backup", {}).get("held") if isinstance(lock.get("backup"), dict) else None
    repos = {}
    for i, repo in enumerate(_field(raw, "repo", list, "stanza")):
        key = _field(repo, "key", int, f"repo[{i}]")
        repo_status = _field(repo, "status", dict, f"repo[{i}]")
        repos[key] = {"code": _field(repo_status, "code", int, f"repo {key} status"),
                      "message": clean(repo_status.get("message")),
                      "cipher": repo.get("cipher")}
    backups = []
    for i, backup in enumerate(_field(raw, "backup", list, "stanza")):
        where = f"backup[{i}]"
        database = _field(backup, "database", dict, where)
        stamps = _field(backup, "timestamp", dict, where)
        backups.append({"repo": _field(database, "repo-key", int, f"{where} database"),
                        "label": _field(backup, "label", str, where),
                        "type": _field(backup, "type", str, where),
                        "start": _field(stamps, "start", int, f"{where} timestamp"),
                        "stop": _field(stamps, "stop", int, f"{where} timestamp"),
                        "error": backup.get("error") is True})
    system_ids = {}
    for db in raw.get("db") or []:
        if isinstance(db, dict) and isinstance(db.get("repo-key"), int):
            system_ids[db["repo-key"]] = db.get("system-id")
    return {"name": stanza,
            "code": _field(status, "code", int, "stanza status"),
            "message": clean(status.get("message")),
            "backup_running": held is True,
            "repos": repos, "backups": backups, "system_ids": system_ids}


def read_verify_record(path: Path) -> tuple[dict | None, str | None]:
    """(the record pginfra-backup verify wrote, None) or (None, why it cannot be used); both
    None when there is none yet. The record: {"time": ISO, "repos": {"N": {"ok": bool,
    "problems": [text, ...]}}}."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None, None
    except (OSError, UnicodeDecodeError) as exc:
        return None, f"cannot read {path}: {exc.strerror if isinstance(exc, OSError) else exc}"
    try:
        record = json.loads(text)
        if not isinstance(record, dict) or not isinstance(record.get("time"), str):
            raise ValueError("no \"time\" string")
        moment = util.parse_time(record["time"])
        repos = record.get("repos")
        if not isinstance(repos, dict):
            raise ValueError("no \"repos\" object")
        checked = {}
        for key, repo in repos.items():
            if not (isinstance(repo, dict) and isinstance(repo.get("ok"), bool)
                    and isinstance(repo.get("problems", []), list)):
                raise ValueError(f"repo {key}: not {{\"ok\": true|false, \"problems\": [...]}}")
            checked[str(key)] = {"ok": repo["ok"],
                                 "problems": [clean(p) for p in repo.get("problems", [])]}
    except ValueError as exc:
        return None, f"{path} is malformed: {one_line(exc)}"
    return {"time": util.iso(moment), "repos": checked}, None


def base_backup_result(info: dict, backup: BackupSettings, pair: tuple, now: float,
                       verify: dict | None = None, verify_problem: str | None = None,
                       verify_path: str | None = None) -> dict:
    """backup_base from pgBackRest's info (parse_pgbackrest_info) and the last verify record:
    per configured repository the age of its newest backup (full, diff or incr) against
    ``pair``; a repository pgBackRest reports a problem with, or without a backup: critical;
    the worst repository decides. A verify that found a problem: critical. ``now``: epoch
    seconds."""
    reasons: list[tuple[str, str]] = []
    repos_data: dict[str, dict] = {}
    ages = []
    for n in backup.repos:
        repo = info["repos"].get(n)
        mine = [b for b in info["backups"] if b["repo"] == n]
        entry = {"code": None if repo is None else repo["code"],
                 "message": None if repo is None else repo["message"], "backups": len(mine)}
        repos_data[str(n)] = entry
        if repo is None:
            listed = ", ".join(map(str, sorted(info["repos"]))) or "none"
            status, text = CRITICAL, (f"repo {n} is not in pgBackRest's configuration "
                                      f"{backup.pgbackrest_config} (it has repo(s) {listed})")
        elif repo["code"] not in (INFO_OK, INFO_NO_BACKUP):
            hint = (f": stanza-create has not run for stanza {backup.stanza}?"
                    if repo["code"] in INFO_NEEDS_STANZA else "")
            status, text = CRITICAL, (f"repo {n}: {repo['message']} (pgBackRest status "
                                      f"{repo['code']}{hint})")
        elif not mine:
            status, text = CRITICAL, f"no backup in repo {n}"
        else:
            newest = mine[-1]  # info lists them oldest first
            age = (now - newest["stop"]) / 3600
            entry.update(label=newest["label"], type=newest["type"],
                         stop=util.iso(datetime.fromtimestamp(newest["stop"], UTC)),
                         age_hours=_round(age), error=newest["error"])
            what = f"{newest['type']} {clean(newest['label'])}"
            if age < -0.1:
                status, text = UNKNOWN, (f"repo {n}: {what} finished in the future "
                                         f"({entry['stop']}; is the clock right?)")
            else:
                age = max(0.0, age)
                ages.append(age)
                status, text = grade(age, pair), (f"repo {n}: {what} finished "
                                                  f"{seconds_text(age * 3600)} ago")
            if newest["error"]:
                reasons.append((WARNING, f"repo {n}: backup {clean(newest['label'])} found "
                                "page checksum errors in the database (pgbackrest info "
                                f"--set={clean(newest['label'])} names the files)"))
        entry["status"] = status
        reasons.append((status, text))
    if info["code"] not in (INFO_OK, INFO_NO_BACKUP, INFO_MIXED) and not any(
            e["code"] == info["code"] for e in repos_data.values()):
        reasons.append((CRITICAL, f"stanza {backup.stanza}: {info['message']} (pgBackRest "
                        f"status {info['code']})"))
    notes, verify_data = [], None  # notes: said after the reasons, never a problem
    if verify_problem:
        reasons.append((UNKNOWN, verify_problem))
    elif verify is None:
        notes.append("no pgbackrest verify recorded yet")
    else:
        verify_data = {"path": verify_path, **verify}
        bad = [f"repo {key}: " + ("; ".join(r["problems"]) or "not ok")
               for key, r in sorted(verify["repos"].items()) if not r["ok"]]
        if bad:
            reasons.append((CRITICAL, f"last pgbackrest verify ({verify['time']}) found: "
                            + "; ".join(bad)))
        else:
            notes.append(f"last pgbackrest verify ({verify['time']}): ok")
    if info["backup_running"]:
        notes.append("a backup is running now")
    status = worst(s for s, _ in reasons)
    ordered = sorted(reasons, key=lambda r: -SEVERITY[r[0]])  # the worst first, stable
    detail = "; ".join([text for _, text in ordered] + notes)
    value = max(ages) if ages else None
    data = {"stanza": backup.stanza, "config": backup.pgbackrest_config,
            "stanza_status": {"code": info["code"], "message": info["message"]},
            "backup_running": info["backup_running"], "age_hours": _round(value),
            "repos": repos_data, "verify": verify_data}
    return result("backup_base", status, detail, value, "h", pair, data)


def summarize_pgbackrest_error(message: str, limit: int = 300) -> str:
    """pgBackRest's error text on one line: without its protocol wrapper, retry notes, HINTs
    and repeated lines."""
    kept: list[str] = []
    for line in message.splitlines():
        line = clean(line)
        if (not line or line.startswith("HINT:") or re.match(r"raised from \S+ protocol:", line)
                or re.match(r"\[\w+\] on retry after", line)):
            continue
        if line not in kept:
            kept.append(line)
    text = " ".join(kept) or one_line(message) or "no message"
    return text if len(text) <= limit else text[:limit - 3] + "..."


def parse_async_status(text: str) -> tuple[int | None, str]:
    """A status file of pgBackRest's asynchronous archiving (<segment>.error, global.error):
    the exit code on the first line, then the message."""
    first, _, rest = text.partition("\n")
    try:
        return int(first.strip()), summarize_pgbackrest_error(rest)
    except ValueError:
        return None, summarize_pgbackrest_error(text)


def push_errors(spool_path: str, stanza: str) -> tuple[list[dict], str | None]:
    """([{"segment", "code", "message"}, ...] from <spool_path>/archive/<stanza>/out/*.error,
    sorted by name ("global" is a failure of the whole run), a problem reading the spool)."""
    out = Path(spool_path) / "archive" / stanza / "out"
    try:
        names = sorted(n for n in os.listdir(out) if n.endswith(".error"))
    except FileNotFoundError:
        return [], None  # nothing pushed asynchronously yet
    except OSError as exc:
        return [], f"cannot read pgBackRest's spool {out}: {exc.strerror}"
    errors = []
    for name in names:
        try:
            text = (out / name).read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            continue  # the next try cleared it
        except OSError as exc:
            text = f"\ncannot read {out / name}: {exc.strerror}"
        code, message = parse_async_status(text)
        errors.append({"segment": name[:-len(".error")], "code": code, "message": message})
    return errors, None


def pending_push_errors(errors: list[dict], ready: set[str]) -> list[dict]:
    """The errors of segments PostgreSQL still waits to archive (and global.error while any
    does): one left behind by a segment archived since is history."""
    return [e for e in errors if e["segment"] in ready or (e["segment"] == "global" and ready)]


def archiving_problem(command: str, library: str, stanza: str) -> str | None:
    """Why archive_command is not pgBackRest's archive-push for ``stanza``, or None."""
    if library:
        return (f"archive_library {clean(library)} is set: PostgreSQL uses it and ignores "
                "archive_command, WAL does not go to pgBackRest")
    try:
        words = shlex.split(command)
    except ValueError:
        words = command.split()
    program = os.path.basename(words[0]) if words else ""
    given = None
    for i, word in enumerate(words):
        if word.startswith("--stanza="):
            given = word.split("=", 1)[1]
        elif word == "--stanza" and i + 1 < len(words):
            given = words[i + 1]
    if program == "pgbackrest" and "archive-push" in words and "%p" in words \
            and given == stanza:
        return None
    if program != "pgbackrest":
        runs = f"it runs {clean(program) or 'nothing'}"
    elif given is None:
        runs = "no --stanza"
    elif given != stanza:
        runs = f"its stanza is {clean(given)}"
    else:
        runs = "not archive-push %p"
    return (f"archive_command is not pgbackrest archive-push for stanza {stanza} ({runs}): "
            "the archiving is not what pginfra set up")


# ---------------------------------------------------------------------------------------------
# The checks

class Checks:
    """One run's checks. ``conn`` is the connection to the postgres database, or None with
    ``down`` saying why PostgreSQL did not answer."""

    def __init__(self, cfg: HealthConfig, deadline: float | None = None):
        self.cfg, self.th = cfg, cfg.thresholds
        self.deadline = deadline  # time.monotonic() when run_timeout ends the run
        self.conn = None
        self.connected = False
        self.down: str | None = None
        self.server: dict = {}
        self.in_recovery: bool | None = None
        self.others: list = []  # connections to other databases, closed at the end

    # -- the connection ------------------------------------------------------------------------

    def connect_main(self) -> None:
        self.connected = True
        if psycopg is None:
            self.down = "psycopg is not installed (apt-get install python3-psycopg)"
            return
        try:
            conn = connect(self.cfg)
        except Exception as exc:
            self.down = (f"cannot connect on port {self.cfg.port} in {self.cfg.socket_dir}: "
                         f"{describe(exc, self.cfg)}")
            return
        try:
            query_one(conn, "SELECT 1 AS answer")
            self.server = query_one(conn, """
                SELECT current_setting('server_version') AS version,
                       pg_catalog.pg_is_in_recovery() AS in_recovery,
                       extract(epoch FROM now() - pg_catalog.pg_postmaster_start_time())::float8
                           AS uptime_seconds,
                       pg_catalog.pg_postmaster_start_time() AS started""")
        except Exception as exc:
            with contextlib.suppress(Exception):
                conn.close()
            self.down = f"SELECT 1 failed: {describe(exc, self.cfg)}"
            return
        self.conn, self.in_recovery = conn, self.server["in_recovery"]

    def close(self) -> None:
        for conn in [self.conn, *self.others]:
            if conn is not None:
                with contextlib.suppress(Exception):
                    conn.close()

    def not_answering(self, name: str) -> dict:
        return result(name, UNKNOWN, f"PostgreSQL did not answer: {self.down}")

    def run(self, name: str) -> dict:
        if name not in WITHOUT_SERVER and not self.connected:
            self.connect_main()
        return getattr(self, f"check_{name}")()

    # -- postgres -----------------------------------------------------------------------------

    def check_postgres(self) -> dict:
        if self.conn is None:
            return result("postgres", CRITICAL, f"PostgreSQL did not answer: {self.down}",
                          data={"port": self.cfg.port, "socket_dir": self.cfg.socket_dir})
        s = self.server
        role = "standby (in recovery)" if s["in_recovery"] else "primary"
        data = {"version": s["version"], "in_recovery": s["in_recovery"],
                "uptime_seconds": _round(s["uptime_seconds"]), "started": util.iso(s["started"])}
        addresses = settings(self.conn, "listen_addresses")["listen_addresses"].split(",")
        missing = missing_listeners(addresses, self.cfg.port, listening_sockets())
        if missing:
            return result("postgres", CRITICAL,
                          f"PostgreSQL does not listen on {', '.join(missing)} of its "
                          "listen_addresses (the address was missing when it started?): "
                          "clients there are refused until it restarts",
                          data={**data, "not_listening": missing})
        return result("postgres", OK,
                      f"PostgreSQL {s['version']}, {role}, up {seconds_text(s['uptime_seconds'])}",
                      data=data)

    # -- pgbouncer ----------------------------------------------------------------------------

    def check_pgbouncer(self) -> dict:
        cfg, pair = self.cfg, self.th["pgbouncer_wait_seconds"]
        port = cfg.pgbouncer_port
        where = f"port {port} (socket {cfg.socket_dir}/.s.PGSQL.{port})"
        cmd = [cfg.bin("psql"), "-X", "-w", "--csv", "-h", cfg.socket_dir, "-p", str(port),
               "-U", "pgbouncer", "-d", "pgbouncer", "-c", "SHOW POOLS"]
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LC_ALL": "C",
               "PGCONNECT_TIMEOUT": str(cfg.connect_timeout), "PGAPPNAME": APPLICATION_NAME}
        limit = cfg.connect_timeout + math.ceil(cfg.query_timeout)
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd="/",
                                  stdin=subprocess.DEVNULL, timeout=limit)
        except subprocess.TimeoutExpired:
            return result("pgbouncer", CRITICAL,
                          f"PgBouncer did not answer on {where} within {limit} s", pair=pair)
        if proc.returncode != 0:
            reason = one_line(proc.stderr) or f"psql exited with {proc.returncode}"
            return result("pgbouncer", CRITICAL, f"PgBouncer did not answer on {where}: "
                          f"{reason}", pair=pair, data={"port": port})
        missing = missing_listeners(cfg.pgbouncer_listen, port, listening_sockets())
        if missing:
            return result("pgbouncer", CRITICAL,
                          f"PgBouncer does not listen on {', '.join(missing)} (the address was "
                          "missing when it started?): clients there are refused until it "
                          "restarts", pair=pair, data={"port": port, "not_listening": missing})
        pools = parse_show_pools(proc.stdout)
        summary = summarize_pools(pools)
        value = summary["maxwait_seconds"]
        status = grade(value, pair) if summary["waiting"] or value else OK
        if summary["waiting"] or value:
            detail = (f"{summary['waiting']} client(s) waiting for a server connection; the "
                      f"longest wait {seconds_text(value)} in pool {summary['longest_pool']}")
        else:
            detail = f"{len(pools)} pool(s), no client waiting"
        waiting = [{"database": p["database"], "user": p["user"], "waiting": p["cl_waiting"],
                    "maxwait_seconds": _round(p["maxwait_seconds"])} for p in pools]
        return result("pgbouncer", status, detail, value, "s", pair,
                      {"waiting": summary["waiting"], "pools": waiting})

    # -- sessions -----------------------------------------------------------------------------

    def check_connections(self) -> dict:
        if self.conn is None:
            return self.not_answering("connections")
        pair = self.th["connections_percent"]
        rows = query(self.conn, """
            SELECT coalesce(state, 'unknown') AS state, count(*)::int AS n
            FROM pg_catalog.pg_stat_activity WHERE backend_type = 'client backend'
            GROUP BY 1 ORDER BY 2 DESC, 1""")
        limits = settings(self.conn, "max_connections", "superuser_reserved_connections")
        max_connections = int(limits["max_connections"])
        reserved = int(limits["superuser_reserved_connections"])
        by_state = {r["state"]: r["n"] for r in rows}
        total = sum(by_state.values())
        value = 100.0 * total / max_connections
        states = ", ".join(f"{n} {state}" for state, n in by_state.items())
        return result("connections", grade(value, pair),
                      f"{total} of max_connections {max_connections} in use ({reserved} "
                      f"reserved for superusers){': ' + states if states else ''}",
                      value, "%", pair, {"clients": total, "max_connections": max_connections,
                                         "superuser_reserved_connections": reserved,
                                         "by_state": by_state})

    def check_long_running(self) -> dict:
        if self.conn is None:
            return self.not_answering("long_running")
        pair = self.th["long_running_seconds"]
        rows = query(self.conn, """
            SELECT pid, usename, datname, application_name, backend_type,
                   wait_event_type, wait_event,
                   extract(epoch FROM clock_timestamp() - query_start)::float8 AS seconds
            FROM pg_catalog.pg_stat_activity
            WHERE backend_type = 'client backend' AND state = 'active'
              AND pid <> pg_catalog.pg_backend_pid() AND query_start IS NOT NULL
            ORDER BY query_start""")
        if not rows:
            return result("long_running", OK, "no other statement is running", 0, "s", pair,
                          {"active": 0, "sessions": []})
        oldest = rows[0]
        value = max(0.0, oldest["seconds"])
        waiting = (f", waiting on {oldest['wait_event_type']}:{oldest['wait_event']}"
                   if oldest["wait_event_type"] else "")
        app = clean(oldest["application_name"])
        detail = (f"{len(rows)} statement(s) running; the oldest: pid {oldest['pid']} "
                  f"({who(oldest)}{', ' + app if app else ''}) for {seconds_text(value)}"
                  f"{waiting}")
        return result("long_running", grade(value, pair), detail, value, "s", pair,
                      {"active": len(rows), "sessions": [session_data(r) for r in rows[:10]]})

    def check_idle_in_transaction(self) -> dict:
        if self.conn is None:
            return self.not_answering("idle_in_transaction")
        pair = self.th["idle_in_transaction_seconds"]
        rows = query(self.conn, """
            SELECT pid, usename, datname, application_name, state,
                   extract(epoch FROM clock_timestamp() - state_change)::float8 AS seconds,
                   extract(epoch FROM clock_timestamp() - xact_start)::float8 AS xact_seconds
            FROM pg_catalog.pg_stat_activity
            WHERE backend_type = 'client backend'
              AND state IN ('idle in transaction', 'idle in transaction (aborted)')
            ORDER BY state_change""")
        if not rows:
            return result("idle_in_transaction", OK, "no session is idle in a transaction", 0,
                          "s", pair, {"count": 0, "sessions": []})
        sessions = []
        for r in rows:
            app = clean(r["application_name"])
            aborted = " (aborted)" if r["state"].endswith("(aborted)") else ""
            sessions.append(f"pid {r['pid']} ({who(r)}{', ' + app if app else ''}) idle"
                            f"{aborted} for {seconds_text(r['seconds'])}")
        value = max(0.0, rows[0]["seconds"])
        data = {"count": len(rows),
                "sessions": [{**session_data(r), "state": r["state"],
                              "transaction_seconds": _round(r["xact_seconds"])}
                             for r in rows[:10]]}
        return result("idle_in_transaction", grade(value, pair),
                      f"{len(rows)} session(s) idle in a transaction: {more(sessions)}",
                      value, "s", pair, data)

    LOCK_WAITS = """
        WITH here AS (SELECT oid FROM pg_catalog.pg_database
                      WHERE datname = pg_catalog.current_database())
        SELECT w.pid, w.locktype, w.mode, w.database, w.relation::bigint AS relation,
               w.page, w.tuple, w.transactionid::text AS transactionid, w.virtualxid,
               w.classid::bigint AS classid, w.objid::bigint AS objid,
               d.datname AS lock_database,
               CASE WHEN w.relation IS NOT NULL
                         AND (w.database = 0 OR w.database = (SELECT oid FROM here))
                    THEN (SELECT format('%I.%I', n.nspname, c.relname)
                          FROM pg_catalog.pg_class AS c
                          JOIN pg_catalog.pg_namespace AS n ON n.oid = c.relnamespace
                          WHERE c.oid = w.relation) END AS relname,
               extract(epoch FROM clock_timestamp()
                                  - coalesce(w.waitstart, clock_timestamp()))::float8
                   AS seconds,
               pg_catalog.pg_blocking_pids(w.pid) AS blocked_by,
               a.usename, a.datname, a.application_name, a.backend_type
        FROM pg_catalog.pg_locks AS w
        LEFT JOIN pg_catalog.pg_database AS d ON d.oid = w.database
        LEFT JOIN pg_catalog.pg_stat_activity AS a ON a.pid = w.pid
        WHERE NOT w.granted
        ORDER BY seconds DESC, w.pid"""

    def relation_names(self, waits: list[dict]) -> dict:
        """{(database, relation oid): name} for relations in other databases than ours, looked
        up there (best effort: a database that cannot be asked leaves the OID)."""
        wanted: dict[str, set] = {}
        for w in waits:
            if w["relation"] is not None and w["relname"] is None and w["lock_database"]:
                wanted.setdefault(w["lock_database"], set()).add(w["relation"])
        names = {}
        for db, oids in sorted(wanted.items())[:LIST_AT_MOST]:
            try:
                with connect(self.cfg, db) as conn:
                    for row in query(conn, """
                            SELECT c.oid::bigint AS oid,
                                   format('%%I.%%I', n.nspname, c.relname) AS name
                            FROM pg_catalog.pg_class AS c
                            JOIN pg_catalog.pg_namespace AS n ON n.oid = c.relnamespace
                            WHERE c.oid = ANY(%s)""", (sorted(oids),)):
                        names[(db, row["oid"])] = row["name"]
            except Exception:  # the OID is still a name
                continue
        return names

    @staticmethod
    def lock_target(w: dict, names: dict) -> str:
        db = w["lock_database"]
        if w["relation"] is not None:  # database.schema.relation (shared: schema.relation)
            rel = w["relname"] or names.get((db, w["relation"])) or f"OID {w['relation']}"
            rel = f"{db}.{rel}" if db else rel
            if w["locktype"] == "tuple":
                return f"a row (page {w['page']}, tuple {w['tuple']}) of relation {rel}"
            if w["locktype"] == "relation":
                return f"relation {rel}"
            return f"{w['locktype']} of relation {rel}"
        if w["locktype"] == "transactionid":
            return f"transaction {w['transactionid']} (a row it changed)"
        if w["locktype"] == "virtualxid":
            return f"virtual transaction {w['virtualxid']}"
        if w["locktype"] == "advisory":
            return f"advisory lock ({w['classid']}, {w['objid']})"
        if w["locktype"] == "object":
            return f"object {w['classid']}/{w['objid']}"
        return str(w["locktype"])

    def check_blocking_locks(self) -> dict:
        if self.conn is None:
            return self.not_answering("blocking_locks")
        pair = self.th["lock_wait_seconds"]
        waits, seen = [], set()
        for w in query(self.conn, self.LOCK_WAITS):
            if w["pid"] not in seen:  # one lock awaited per process
                seen.add(w["pid"])
                waits.append(w)
        if not waits:
            return result("blocking_locks", OK, "no session is waiting for a lock", 0, "s",
                          pair, {"waiting": 0, "sessions": []})
        blocker_pids = sorted({p for w in waits for p in (w["blocked_by"] or []) if p})
        blockers = {r["pid"]: r for r in query(self.conn, """
            SELECT pid, usename, datname, application_name, backend_type, state,
                   extract(epoch FROM clock_timestamp() - xact_start)::float8 AS xact_seconds,
                   extract(epoch FROM clock_timestamp() - state_change)::float8
                       AS state_seconds
            FROM pg_catalog.pg_stat_activity WHERE pid = ANY(%s)""", (blocker_pids,))}
        names = self.relation_names(waits)

        def blocker_text(pid: int) -> str:
            if pid == 0:
                return "a prepared transaction (pg_prepared_xacts)"
            b = blockers.get(pid)
            if b is None:
                return f"pid {pid} (gone)"
            state = clean(b["state"]) or clean(b["backend_type"])
            return f"pid {pid} ({who(b)}, {state})"

        texts, data = [], []
        for w in waits:
            target = self.lock_target(w, names)
            by = list(w["blocked_by"] or [])
            texts.append(f"pid {w['pid']} ({who(w)}) waits {seconds_text(w['seconds'])} for "
                         f"{w['mode']} on {target}"
                         + (f", blocked by {', '.join(blocker_text(p) for p in by)}"
                            if by else ""))
            data.append({"pid": w["pid"], "blocked_by": by, "seconds": _round(w["seconds"]),
                         "mode": w["mode"], "locktype": w["locktype"], "target": target,
                         "user": w["usename"], "database": w["datname"],
                         "application_name": clean(w["application_name"])})
        value = max(0.0, waits[0]["seconds"])
        shown = " / ".join(texts[:LIST_AT_MOST])
        if len(texts) > LIST_AT_MOST:
            shown += f" / and {len(texts) - LIST_AT_MOST} more"
        blocker_data = [{"pid": pid, "user": b["usename"], "database": b["datname"],
                         "application_name": clean(b["application_name"]),
                         "state": b["state"], "transaction_seconds": _round(b["xact_seconds"])}
                        for pid, b in sorted(blockers.items())]
        return result("blocking_locks", grade(value, pair),
                      f"{len(waits)} session(s) waiting for a lock: {shown}", value, "s", pair,
                      {"waiting": len(waits), "sessions": data, "blockers": blocker_data})

    # -- archiving ----------------------------------------------------------------------------

    def archive_dir_problem(self) -> str | None:
        path = self.cfg.wal_archive_dir
        try:
            if not os.path.isdir(path):
                return (f"wal_archive_dir {path} is not a directory" if os.path.exists(path)
                        else f"wal_archive_dir {path} is missing")
        except OSError as exc:
            return f"wal_archive_dir {path}: {exc.strerror}"
        if not os.access(path, os.W_OK | os.X_OK):
            user = pwd.getpwuid(os.geteuid()).pw_name
            return f"wal_archive_dir {path} is not writable by {user}: archiving cannot work"
        return None

    def archiver_state(self, stats: dict) -> tuple[str | None, str | None]:
        """(warning text when failed_count rose since the previous run, a problem keeping the
        state); records this run's counts in state_dir/archiver.json."""
        path = Path(self.cfg.state_dir) / "archiver.json"
        previous = util.read_json(path) or {}
        reset = util.iso(stats["stats_reset"]) if stats["stats_reset"] else None
        rose = None
        before = previous.get("failed_count")
        if (isinstance(before, int) and previous.get("stats_reset") == reset
                and stats["failed_count"] > before):
            rose = (f"failed_count rose from {before} to {stats['failed_count']} since the "
                    f"previous run (the last failure: {stats['last_failed_wal']} at "
                    f"{util.iso(stats['last_failed_time'])})")
        try:
            util.ensure_dir(self.cfg.state_dir)
            util.write_json(path, {"failed_count": stats["failed_count"], "stats_reset": reset,
                                  "time": util.iso(util.utcnow())})
        except OSError as exc:
            return rose, f"cannot record the archiver's counts in {path}: {exc.strerror}"
        return rose, None

    def check_archiver(self) -> dict:
        pair = self.th["archive_ready_segments"]
        failing_pair = self.th["archive_failing_seconds"]
        problem = self.archive_dir_problem()
        if self.conn is None:
            if problem:
                return result("archiver", CRITICAL, problem, unit="segments", pair=pair)
            return self.not_answering("archiver")
        conf = settings(self.conn, "archive_mode", "archive_command", "archive_library")
        mode = conf.get("archive_mode", "off")
        if mode == "off":
            return result("archiver", WARNING, "archive_mode is off: point-in-time recovery "
                          "is impossible", unit="segments", pair=pair,
                          data={"archive_mode": mode})
        if self.in_recovery and mode != "always":
            return result("archiver", OK, "standby: the primary archives", unit="segments",
                          pair=pair, data={"archive_mode": mode, "in_recovery": True})
        stats = query_one(self.conn, """
            SELECT archived_count, last_archived_wal, last_archived_time, failed_count,
                   last_failed_wal, last_failed_time, stats_reset,
                   (last_failed_time IS NOT NULL AND (last_archived_time IS NULL
                    OR last_failed_time > last_archived_time)) AS failing,
                   extract(epoch FROM clock_timestamp() - last_failed_time)::float8
                       AS since_failure,
                   extract(epoch FROM clock_timestamp() - last_archived_time)::float8
                       AS since_archived
            FROM pg_catalog.pg_stat_archiver""")
        ready = query_one(self.conn, """
            SELECT count(*)::int AS segments,
                   extract(epoch FROM clock_timestamp() - min(modification))::float8 AS oldest
            FROM pg_catalog.pg_ls_archive_statusdir() WHERE name LIKE '%.ready'""")
        reasons: list[tuple[str, str]] = []
        if problem:
            reasons.append((CRITICAL, problem))
        if not conf.get("archive_command") and not conf.get("archive_library"):
            reasons.append((WARNING, f"archive_mode is {mode} but archive_command and "
                            "archive_library are empty: WAL piles up in pg_wal"))
        failing_for = None
        if stats["failing"]:
            failing_for = ready["oldest"] if ready["segments"] else stats["since_failure"]
            failing_for = max(0.0, failing_for or 0.0)
            reasons.append((grade(failing_for, failing_pair),
                            f"archiving fails for {seconds_text(failing_for)}: the last "
                            f"failure {stats['last_failed_wal']} at "
                            f"{util.iso(stats['last_failed_time'])}, failed_count "
                            f"{stats['failed_count']}"))
        rose, state_problem = self.archiver_state(stats)
        if rose:
            reasons.append((WARNING, rose))
        if state_problem:
            reasons.append((WARNING, state_problem))
        waiting = ready["segments"]
        pgbr = self.pgbackrest_archiving(conf, waiting) if self.cfg.backup else None
        if pgbr:
            reasons += pgbr.pop("reasons")
        waiting_text = (f"{waiting} segment(s) waiting to be archived"
                        + (f", the oldest for {seconds_text(ready['oldest'])}"
                           if waiting else ""))
        if waiting:
            reasons.append((grade(waiting, pair), waiting_text))
        status = worst(s for s, _ in reasons)
        if status == OK and not stats["failing"]:
            last = (f"the last archived {stats['last_archived_wal']}, "
                    f"{seconds_text(stats['since_archived'])} ago"
                    if stats["last_archived_wal"] else "nothing archived yet")
            detail = f"archiving works: {last}; {waiting_text}"
        else:  # the worst first; a failure still below its threshold is said too
            detail = "; ".join(text for _, text in sorted(reasons,
                                                           key=lambda r: -SEVERITY[r[0]]))
            if not waiting:
                detail += "; no segment waiting"
            if stats["failing"] or (pgbr and pgbr["push_errors"]):
                detail += ("; PostgreSQL keeps the WAL in pg_wal until it is archived: nothing "
                           "is lost until that disk fills")
        data = {"archive_mode": mode, "archived_count": stats["archived_count"],
                "last_archived_wal": stats["last_archived_wal"],
                "last_archived_time": util.iso(stats["last_archived_time"])
                if stats["last_archived_time"] else None,
                "failed_count": stats["failed_count"],
                "last_failed_wal": stats["last_failed_wal"],
                "last_failed_time": util.iso(stats["last_failed_time"])
                if stats["last_failed_time"] else None,
                "failing": stats["failing"], "failing_seconds": _round(failing_for),
                "ready_segments": waiting, "oldest_ready_seconds": _round(ready["oldest"]),
                "wal_archive_dir": self.cfg.wal_archive_dir}
        if pgbr is not None:
            data["pgbackrest"] = pgbr
        return result("archiver", status, detail, waiting, "segments", pair, data)

    def pgbackrest_archiving(self, conf: dict, waiting: int) -> dict:
        """What pgBackRest adds to the archiver check: archive_command is its archive-push
        for the stanza; the asynchronous archive-push's .error files of segments still
        waiting. {"reasons": [(status, text)], ...data}."""
        backup = self.cfg.backup
        reasons = []
        command, library = conf.get("archive_command") or "", conf.get("archive_library") or ""
        problem = archiving_problem(command, library, backup.stanza) \
            if command or library else None  # both empty: said above
        if problem:
            reasons.append((WARNING, problem))
        errors, spool_problem = push_errors(backup.spool_path, backup.stanza)
        if spool_problem:
            reasons.append((WARNING, spool_problem))
        pending = []
        if errors:
            ready = {r["name"][:-len(".ready")] for r in query(self.conn, """
                SELECT name FROM pg_catalog.pg_ls_archive_statusdir()
                WHERE name LIKE '%.ready'""")}
            pending = pending_push_errors(errors, ready)
        if pending:
            first = pending[0]
            where = ("the last run as a whole" if first["segment"] == "global"
                     else f"segment {first['segment']}")
            code = f" (exit code {first['code']})" if first["code"] is not None else ""
            segments = sum(e["segment"] != "global" for e in pending)
            reasons.append((WARNING, "pgBackRest archive-push fails"
                            + (f" for {segments} segment(s)" if segments else "")
                            + f", {waiting} waiting in pg_wal: {where}{code}: "
                            f"{first['message']}"
                            + (f" (and {len(pending) - 1} more error file(s) in "
                               f"{backup.spool_path})" if len(pending) > 1 else "")))
        return {"reasons": reasons,
                "archive_command_ok": bool(command or library) and problem is None,
                "spool_path": backup.spool_path, "push_errors": pending[:10],
                "stale_push_errors": len(errors) - len(pending)}

    # -- backups ------------------------------------------------------------------------------

    def check_backup_dump(self) -> dict:
        """The age of the last verified dumps, as pginfra-backup recorded it."""
        name, what, pair = "backup_dump", "dump", self.th["backup_dump_age_hours"]
        if self.in_recovery:
            return result(name, OK, "standby: the primary takes the backups", unit="h",
                          pair=pair, data={"in_recovery": True})
        path = Path(self.cfg.backup_state_dir) / "last-success" / "dump.json"
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return result(name, CRITICAL, f"no verified {what} recorded in {path}", unit="h",
                          pair=pair, data={"path": str(path)})
        except (OSError, UnicodeDecodeError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) else str(exc)
            return result(name, UNKNOWN, f"cannot read {path}: {reason}", unit="h", pair=pair,
                          data={"path": str(path)})
        try:
            record = json.loads(text)
            if not isinstance(record, dict):
                raise ValueError("not a JSON object")
            if not isinstance(record.get("time"), str):
                raise ValueError("no \"time\" string")
            moment = util.parse_time(record["time"])
        except ValueError as exc:
            return result(name, UNKNOWN, f"{path} is malformed: {one_line(exc)}", unit="h",
                          pair=pair, data={"path": str(path)})
        age = (util.utcnow() - moment).total_seconds() / 3600
        label = record.get("label")
        data = {"path": str(path), "time": util.iso(moment), "label": label,
                "age_hours": _round(age)}
        if age < -0.1:
            return result(name, UNKNOWN, f"{path}: the recorded time {util.iso(moment)} is "
                          "in the future (is the clock right?)", unit="h", pair=pair,
                          data=data)
        age = max(0.0, age)
        detail = (f"the last verified {what}{' ' + clean(label) if label else ''} finished "
                  f"{seconds_text(age * 3600)} ago ({util.iso(moment)})")
        return result(name, grade(age, pair), detail, age, "h", pair, data)

    def pgbackrest_limit(self) -> float:
        """Seconds pgbackrest may take: half the run_timeout, and less than what is left."""
        limit = self.cfg.run_timeout / 2
        if self.deadline is not None:
            limit = min(limit, self.deadline - time.monotonic() - 1)
        return max(1.0, limit)

    def check_backup_base(self) -> dict:
        backup, pair = self.cfg.backup, self.th["backup_base_age_hours"]
        if self.in_recovery:
            return result("backup_base", OK, "standby: the primary takes the backups",
                          unit="h", pair=pair, data={"in_recovery": True})
        limit = self.pgbackrest_limit()
        # A repository that does not answer costs about 4 x io-timeout (pgBackRest retries):
        # within the limit, its problem is reported rather than a timeout.
        io_timeout = max(1, int(limit / 5))
        argv = pgbackrest_argv(backup, f"--io-timeout={io_timeout}", "--output=json", "info")
        # pgBackRest options may come from PGBACKREST_* variables, as archive_command's can
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LC_ALL": "C",
               **{k: v for k, v in os.environ.items() if k.startswith("PGBACKREST_")}}
        data = {"stanza": backup.stanza, "config": backup.pgbackrest_config}
        try:
            proc = subprocess.run(argv, capture_output=True, encoding="utf-8",
                                  errors="replace", env=env, cwd="/",
                                  stdin=subprocess.DEVNULL, timeout=limit)
        except FileNotFoundError:
            return result("backup_base", CRITICAL, f"{PGBACKREST} is missing: pgBackRest is "
                          "not installed (apt-get install pgbackrest)", unit="h", pair=pair,
                          data=data)
        except subprocess.TimeoutExpired:
            return result("backup_base", UNKNOWN, f"pgbackrest info did not finish within "
                          f"{num(round(limit, 1))} s (a repository that does not answer?)",
                          unit="h", pair=pair, data=data)
        if proc.returncode != 0:
            reason = summarize_pgbackrest_error(proc.stderr) if proc.stderr.strip() \
                else "no message"
            return result("backup_base", CRITICAL, f"pgbackrest info failed (exit code "
                          f"{proc.returncode}): {reason}", unit="h", pair=pair,
                          data={**data, "exit_code": proc.returncode})
        try:
            info = parse_pgbackrest_info(proc.stdout, backup.stanza)
        except ValueError as exc:
            return result("backup_base", UNKNOWN, f"pgbackrest info printed no usable report: "
                          f"{one_line(exc)}", unit="h", pair=pair, data=data)
        path = Path(backup.state_dir) / VERIFY_RECORD
        verify, problem = read_verify_record(path)
        return base_backup_result(info, backup, pair, time.time(), verify, problem, str(path))


    # -- disks --------------------------------------------------------------------------------

    @staticmethod
    def fs_usage(path: str) -> dict:
        st = os.statvfs(path)
        used = (st.f_blocks - st.f_bfree) * st.f_frsize
        avail = st.f_bavail * st.f_frsize
        inodes_used = st.f_files - st.f_ffree
        inode_total = inodes_used + st.f_favail
        return {"percent": 100.0 * used / (used + avail) if used + avail else 0.0,
                "used_bytes": used, "free_bytes": avail,
                "inodes_percent": 100.0 * inodes_used / inode_total if st.f_files else None}

    @staticmethod
    def tree_bytes(path: str) -> int:
        total, todo = 0, [path]
        while todo:
            with os.scandir(todo.pop()) as entries:
                for entry in entries:
                    with contextlib.suppress(FileNotFoundError):
                        if entry.is_dir(follow_symlinks=False):
                            todo.append(entry.path)
                        elif entry.is_file(follow_symlinks=False):
                            total += entry.stat(follow_symlinks=False).st_size
        return total

    def postgres_bytes(self) -> tuple[int | None, str | None]:
        if self.conn is None:
            return None, "PostgreSQL did not answer"
        try:
            row = query_one(self.conn, """
                SELECT (SELECT sum(pg_catalog.pg_database_size(oid))
                        FROM pg_catalog.pg_database)::bigint AS databases,
                       (SELECT coalesce(sum(size), 0) FROM pg_catalog.pg_ls_waldir())::bigint
                           AS wal""")
        except Exception as exc:
            return None, describe(exc, self.cfg)
        return row["databases"] + row["wal"], None

    def check_disk(self, name: str, key: str, path: str) -> dict:
        pair = self.th["disk_used_percent"]
        try:
            st = os.stat(path)
        except FileNotFoundError:
            return result(name, CRITICAL, f"{key} {path} is missing", unit="%", pair=pair)
        if not os.path.isdir(path):
            return result(name, CRITICAL, f"{key} {path} is not a directory", unit="%",
                          pair=pair)
        usage = self.fs_usage(path)
        value = usage["percent"]
        statuses = [grade(value, pair)]
        notes = []
        if usage["inodes_percent"] is not None and grade(usage["inodes_percent"], pair) != OK:
            statuses.append(grade(usage["inodes_percent"], pair))
            notes.append(f"inodes {usage['inodes_percent']:.1f} % used")
        data = {"path": path, "free_bytes": usage["free_bytes"],
                "used_bytes": usage["used_bytes"],
                "inodes_percent": _round(usage["inodes_percent"])}
        if name == "disk_data":
            size, why = self.postgres_bytes()
            data["bytes"] = size
            what = (f"PostgreSQL uses {util.human(size)}" if size is not None
                    else f"sizes unknown ({why})")
            wal = os.path.join(path, "pg_wal")
            with contextlib.suppress(OSError):
                if os.stat(wal).st_dev != st.st_dev:
                    wal_usage = self.fs_usage(wal)
                    data["pg_wal"] = {"path": os.path.realpath(wal),
                                      "percent": _round(wal_usage["percent"]),
                                      "free_bytes": wal_usage["free_bytes"]}
                    statuses.append(grade(wal_usage["percent"], pair))
                    notes.append(f"pg_wal's filesystem {wal_usage['percent']:.1f} % used, "
                                 f"{util.human(wal_usage['free_bytes'])} free")
        else:
            size = self.tree_bytes(path)
            data["bytes"] = size
            what = f"the archive holds {util.human(size)}"
        detail = (f"{value:.1f} % of the filesystem of {path} used, "
                  f"{util.human(usage['free_bytes'])} free; {what}")
        if notes:
            detail += "; " + "; ".join(notes)
        return result(name, worst(statuses), detail, value, "%", pair, data)

    def check_disk_data(self) -> dict:
        return self.check_disk("disk_data", "data_directory", self.cfg.data_directory)

    def check_disk_wal_archive(self) -> dict:
        return self.check_disk("disk_wal_archive", "wal_archive_dir", self.cfg.wal_archive_dir)

    # -- transaction IDs, cache ---------------------------------------------------------------

    def check_wraparound(self) -> dict:
        if self.conn is None:
            return self.not_answering("wraparound")
        pair = self.th["wraparound_percent"]
        rows = query(self.conn, """
            SELECT datname, pg_catalog.age(datfrozenxid)::bigint AS xid_age,
                   pg_catalog.mxid_age(datminmxid)::bigint AS mxid_age
            FROM pg_catalog.pg_database""")
        ages = [(r["xid_age"], "transaction ID", r["datname"]) for r in rows]
        ages += [(r["mxid_age"], "multixact ID", r["datname"]) for r in rows]
        age, kind, db = max(ages, key=lambda a: a[0])
        value = 100.0 * age / XID_HORIZON
        freeze = settings(self.conn, "autovacuum_freeze_max_age",
                          "autovacuum_multixact_freeze_max_age")
        return result("wraparound", grade(value, pair),
                      f"the oldest: database {db}, {kind} age {age} ({value:.2f} % of 2^31)",
                      value, "%", pair,
                      {"database": db, "kind": kind, "age": age,
                       "max_xid_age": max(r["xid_age"] for r in rows),
                       "max_mxid_age": max(r["mxid_age"] for r in rows),
                       **{k: int(v) for k, v in freeze.items()}})

    def check_cache_hit_ratio(self) -> dict:
        if self.conn is None:
            return self.not_answering("cache_hit_ratio")
        pair = self.th["cache_hit_ratio"]
        row = query_one(self.conn, """
            SELECT coalesce(sum(blks_hit), 0)::bigint AS hit,
                   coalesce(sum(blks_read), 0)::bigint AS read
            FROM pg_catalog.pg_stat_database""")
        total = row["hit"] + row["read"]
        value = row["hit"] / total if total else None
        data = {"blks_hit": row["hit"], "blks_read": row["read"]}
        if total < MIN_BLOCKS:
            return result("cache_hit_ratio", OK, f"too few reads to judge ({total} blocks "
                          f"since the statistics were reset)", value, "ratio", pair, data)
        return result("cache_hit_ratio", grade(value, pair, lower_is_worse=True),
                      f"{100 * value:.2f} % of {total} blocks found in shared buffers",
                      value, "ratio", pair, data)

    # -- replication --------------------------------------------------------------------------

    def check_replication(self) -> dict:
        if self.conn is None:
            return self.not_answering("replication")
        if self.in_recovery:
            return self.standby_replication()
        pair = self.th["replication_lag_mb"]
        replicas = query(self.conn, """
            SELECT pid, application_name, client_addr::text AS client_addr, state, sync_state,
                   pg_catalog.pg_wal_lsn_diff(pg_catalog.pg_current_wal_lsn(),
                       coalesce(replay_lsn, flush_lsn, write_lsn, sent_lsn))::float8
                       AS lag_bytes,
                   extract(epoch FROM replay_lag)::float8 AS replay_lag_seconds
            FROM pg_catalog.pg_stat_replication
            WHERE state <> 'backup'
            ORDER BY application_name, pid""")
        slots = query(self.conn, """
            SELECT slot_name, slot_type, active, wal_status,
                   pg_catalog.pg_wal_lsn_diff(pg_catalog.pg_current_wal_lsn(),
                                              restart_lsn)::float8 AS retained_bytes
            FROM pg_catalog.pg_replication_slots ORDER BY slot_name""")
        streaming_names = {r["application_name"] for r in replicas
                           if r["state"] == "streaming"}
        absent = [n for n in self.cfg.standbys if n not in streaming_names]
        if not replicas and not slots and not absent:
            return result("replication", OK, "no replicas", 0, "MB", pair,
                          {"role": "primary", "replicas": [], "slots": []})
        lags = [(r["lag_bytes"] or 0.0, f"replica {clean(r['application_name'])} "
                 f"(pid {r['pid']}, {r['state']})") for r in replicas]
        lags += [(s["retained_bytes"] or 0.0, f"slot {s['slot_name']}") for s in slots]
        lags = lags or [(0.0, "none")]
        largest, where = max(lags, key=lambda item: item[0])
        value = max(0.0, largest) / util.MiB
        statuses, notes = [grade(value, pair)], []
        lost = [s["slot_name"] for s in slots if s["wal_status"] == "lost"]
        unreserved = [s["slot_name"] for s in slots if s["wal_status"] == "unreserved"]
        inactive = [s["slot_name"] for s in slots if not s["active"]]
        if lost:
            statuses.append(CRITICAL)
            notes.append(f"slot(s) {more(lost)} lost WAL their consumer still needs")
        if unreserved:
            statuses.append(WARNING)
            notes.append(f"slot(s) {more(unreserved)} about to lose WAL "
                         "(max_slot_wal_keep_size)")
        if inactive:
            notes.append(f"{len(inactive)} inactive slot(s): {more(inactive)}")
        if absent:  # the inventory's standbys of this server, each expected to stream
            statuses.append(WARNING)
            notes.append(f"standby(s) {more(absent)} not streaming from this server")
        streaming = [r for r in replicas if r["state"] == "streaming"]
        detail = (f"{len(replicas)} replica(s) ({len(streaming)} streaming), {len(slots)} "
                  f"slot(s); the largest lag {value:.2f} MB: {where}")
        if notes:
            detail += "; " + "; ".join(notes)
        data = {"role": "primary", "inactive_slots": len(inactive), "absent_standbys": absent,
                "replicas": [{"pid": r["pid"], "application_name":
                              clean(r["application_name"]), "client_addr": r["client_addr"],
                              "state": r["state"], "sync_state": r["sync_state"],
                              "lag_bytes": _round(r["lag_bytes"]),
                              "replay_lag_seconds": _round(r["replay_lag_seconds"])}
                             for r in replicas],
                "slots": [{"slot_name": s["slot_name"], "slot_type": s["slot_type"],
                           "active": s["active"], "wal_status": s["wal_status"],
                           "retained_bytes": _round(s["retained_bytes"])} for s in slots]}
        return result("replication", worst(statuses), detail, value, "MB", pair, data)

    def standby_replication(self) -> dict:
        pair = self.th["replication_lag_mb"]
        receivers = query(self.conn, """
            SELECT status, sender_host, sender_port, slot_name,
                   extract(epoch FROM clock_timestamp() - last_msg_receipt_time)::float8
                       AS since_message
            FROM pg_catalog.pg_stat_wal_receiver""")
        row = query_one(self.conn, """
            SELECT pg_catalog.pg_wal_lsn_diff(pg_catalog.pg_last_wal_receive_lsn(),
                       pg_catalog.pg_last_wal_replay_lsn())::float8 AS lag_bytes,
                   pg_catalog.pg_get_wal_replay_pause_state() AS pause_state,
                   extract(epoch FROM clock_timestamp()
                                      - pg_catalog.pg_last_xact_replay_timestamp())::float8
                       AS since_replayed""")
        value = max(0.0, row["lag_bytes"] or 0.0) / util.MiB
        statuses, notes = [grade(value, pair)], []
        receiver = receivers[0] if receivers else None
        if receiver is None or receiver["status"] != "streaming":
            statuses.append(CRITICAL)
            notes.append("no WAL receiver is streaming (pg_stat_wal_receiver "
                         + (f"says {receiver['status']})" if receiver else "is empty)"))
        else:
            notes.append(f"streaming from {clean(receiver['sender_host'])}:"
                         f"{receiver['sender_port']}")
        if row["pause_state"] != "not paused":
            statuses.append(WARNING)
            notes.append(f"replay is {row['pause_state']} (pg_wal_replay_resume() resumes it)")
        detail = f"standby: {value:.2f} MB received but not replayed; " + "; ".join(notes)
        return result("replication", worst(statuses), detail, value, "MB", pair,
                      {"role": "standby", "receiver": receiver and
                       {"status": receiver["status"], "sender_host": receiver["sender_host"],
                        "sender_port": receiver["sender_port"],
                        "slot_name": receiver["slot_name"],
                        "seconds_since_message": _round(receiver["since_message"])},
                       "lag_bytes": _round(row["lag_bytes"]),
                       "replay_paused": row["pause_state"] != "not paused",
                       "seconds_since_replayed_transaction": _round(row["since_replayed"])})

    # -- configuration ------------------------------------------------------------------------

    def check_pending_restart(self) -> dict:
        if self.conn is None:
            return self.not_answering("pending_restart")
        pending = [r["name"] for r in query(self.conn, """
            SELECT name FROM pg_catalog.pg_settings WHERE pending_restart ORDER BY name""")]
        file_errors = [f"{r['sourcefile']}:{r['sourceline']}: {r['name']}: {r['error']}"
                       for r in query(self.conn, """
            SELECT sourcefile, sourceline, name, error FROM pg_catalog.pg_file_settings
            WHERE error IS NOT NULL ORDER BY sourcefile, sourceline""")
                       if not (r["name"] in pending
                               and r["error"] == "setting could not be applied")]
        hba_errors = [f"pg_hba.conf line {r['line_number']}: {r['error']}"
                      for r in query(self.conn, """
            SELECT line_number, error FROM pg_catalog.pg_hba_file_rules
            WHERE error IS NOT NULL ORDER BY line_number""")]
        parts = []
        if pending:
            parts.append(f"{len(pending)} parameter(s) changed, waiting for a restart: "
                         + ", ".join(pending))
        errors = file_errors + hba_errors
        if errors:
            parts.append(f"{len(errors)} configuration line(s) in error: {more(errors)}")
        data = {"pending_restart": pending, "file_errors": file_errors,
                "hba_errors": hba_errors}
        if not parts:
            return result("pending_restart", OK, "no parameter waits for a restart; the "
                          "configuration files have no errors", 0, None, None, data)
        return result("pending_restart", WARNING, "; ".join(parts), len(pending) + len(errors),
                      None, None, data)

    INVALID_INDEXES = """
        SELECT n.nspname, c.relname AS index_name, t.relname AS table_name
        FROM pg_catalog.pg_index AS i
        JOIN pg_catalog.pg_class AS c ON c.oid = i.indexrelid
        JOIN pg_catalog.pg_namespace AS n ON n.oid = c.relnamespace
        JOIN pg_catalog.pg_class AS t ON t.oid = i.indrelid
        WHERE NOT i.indisvalid
          AND NOT EXISTS (
              SELECT 1 FROM pg_catalog.pg_stat_progress_create_index AS p
              WHERE p.datid = (SELECT oid FROM pg_catalog.pg_database
                               WHERE datname = pg_catalog.current_database())
                AND p.relid = i.indrelid)
        ORDER BY 1, 2"""

    def check_invalid_indexes(self) -> dict:
        if self.conn is None:
            return self.not_answering("invalid_indexes")
        databases = [r["datname"] for r in query(self.conn, """
            SELECT datname FROM pg_catalog.pg_database
            WHERE datallowconn AND datname <> 'template0' ORDER BY datname""")]
        here = query_one(self.conn, "SELECT pg_catalog.current_database() AS db")["db"]
        invalid, unreachable = [], {}
        for db in databases:
            try:
                if db == here:
                    rows = query(self.conn, self.INVALID_INDEXES)
                else:
                    conn = connect(self.cfg, db)
                    self.others.append(conn)
                    try:
                        rows = query(conn, self.INVALID_INDEXES)
                    finally:
                        self.others.remove(conn)
                        conn.close()
            except Exception as exc:
                unreachable[db] = describe(exc, self.cfg)
                continue
            invalid += [{"database": db, "schema": r["nspname"], "index": r["index_name"],
                         "table": r["table_name"]} for r in rows]
        names = [f"{i['database']}.{i['schema']}.{i['index']}" for i in invalid]
        parts, statuses = [], []
        if invalid:
            statuses.append(WARNING)
            parts.append(f"{len(invalid)} invalid index(es): {more(names)} (drop and rebuild "
                         "them: DROP INDEX CONCURRENTLY, CREATE INDEX CONCURRENTLY)")
        if unreachable:
            statuses.append(UNKNOWN)
            parts.append("not checked: " + "; ".join(f"database {db}: {why}"
                                                      for db, why in unreachable.items()))
        checked = len(databases) - len(unreachable)
        detail = "; ".join(parts) or f"no invalid index in {checked} database(s)"
        return result("invalid_indexes", worst(statuses), detail, len(invalid), None, None,
                      {"databases_checked": checked, "invalid": invalid,
                       "unreachable": unreachable})


# ---------------------------------------------------------------------------------------------
# The run: watchdog, results, output

class Run:
    def __init__(self, cfg: HealthConfig, args, names: list[str], started: float):
        self.cfg, self.args, self.names, self.started = cfg, args, names, started
        self.time = util.iso(util.utcnow())
        self.results: dict[str, dict] = {}
        self.checks = Checks(cfg, started + cfg.run_timeout)
        self.armed = False
        self.output_lock = threading.Lock()
        self.emitted = False

    def on_alarm(self, signum, frame) -> None:
        if self.armed:
            self.armed = False
            raise RunTimeout()

    def run_one(self, name: str) -> dict:
        if name == "pgbouncer" and self.cfg.pgbouncer_port is None:
            return result(name, UNKNOWN, f"not configured (\"pgbouncer\" is null in "
                          f"{self.cfg.path})")
        if name.startswith("backup_") and self.cfg.backup_state_dir is None:
            return result(name, UNKNOWN, f"not configured (\"backup\" is null in "
                          f"{self.cfg.path})")
        try:
            return self.checks.run(name)
        except Exception as exc:
            return result(name, UNKNOWN, describe(exc, self.cfg))

    def execute(self) -> dict:
        """Every check, under the watchdog; the report, whatever happened."""
        signal.signal(signal.SIGALRM, self.on_alarm)
        # The last resort, should the main thread be stuck where no signal handler can run.
        backstop = threading.Timer(self.cfg.run_timeout + 5, self.backstop)
        backstop.daemon = True
        backstop.start()
        self.armed = True
        signal.setitimer(signal.ITIMER_REAL, self.cfg.run_timeout)
        try:
            for name in self.names:
                self.results[name] = self.run_one(name)
            self.armed = False
        except RunTimeout:
            self.armed = False
        signal.setitimer(signal.ITIMER_REAL, 0)
        report = self.report()
        self.emit(report)
        backstop.cancel()
        self.checks.close()
        return report

    def report(self) -> dict:
        reason = f"run_timeout of {num(self.cfg.run_timeout)} s reached"
        checks = [self.results.get(n) or result(n, UNKNOWN, reason) for n in self.names]
        status = worst(c["status"] for c in checks)
        return {"host": self.cfg.host, "time": self.time, "status": status,
                "exit_code": NAGIOS_CODE[status],
                "duration_seconds": round(time.monotonic() - self.started, 3),
                "checks": checks}

    def emit(self, report: dict) -> None:
        with self.output_lock:
            if self.emitted:
                return
            self.emitted = True
            print_report(report, self.args)
            sys.stdout.flush()
            path = textfile_path(self.args, self.cfg)
            if path:
                try:
                    write_textfile(path, report)
                except OSError as exc:
                    print(f"{NAME}: warning: cannot write the textfile {path}: {exc}",
                          file=sys.stderr, flush=True)

    def backstop(self) -> None:
        report = self.report()
        if self.output_lock.acquire(timeout=5):
            self.output_lock.release()
            self.emit(report)
        os._exit(report["exit_code"])


def perfdata(check: dict) -> str:
    unit = check["unit"] if check["unit"] in ("s", "%", "MB") else ""
    warning, critical = num(check["warning"]), num(check["critical"])
    if check["check"] in LOWER_IS_WORSE:  # Nagios ranges: "x:" alerts below x
        warning, critical = (f"{w}:" if w else "" for w in (warning, critical))
    return f"{check['check']}={num(check['value'])}{unit};{warning};{critical}"


def nagios_text(text: str) -> str:
    return clean(text).replace("|", "/")


def nagios_line(report: dict) -> str:
    checks = report["checks"]
    bad = sorted((c for c in checks if c["status"] != OK),
                 key=lambda c: -SEVERITY[c["status"]])  # stable: check order within a status
    if not bad:
        text = f"{len(checks)} check{'s' if len(checks) != 1 else ''} ok"
    else:
        groups: dict[tuple, list[str]] = {}
        for c in bad:  # the same detail once: "connections, long_running: PostgreSQL ..."
            groups.setdefault((c["status"], c["detail"]), []).append(c["check"])
        text = "; ".join(f"{', '.join(names)}: {detail}"
                         for (_status, detail), names in groups.items())
    line = f"PGINFRA {report['status'].upper()} - {nagios_text(text)}"
    perf = " ".join(perfdata(c) for c in checks if c["value"] is not None)
    return f"{line} | {perf}" if perf else line


def value_text(check: dict) -> str:
    if check["value"] is None:
        return "-"
    return f"{num(check['value'])} {check['unit']}" if check["unit"] else num(check["value"])


def thresholds_text(check: dict) -> str:
    if check["warning"] is None:
        return "-"
    below = "<" if check["check"] in LOWER_IS_WORSE else ""
    return f"warn {below}{num(check['warning'])} crit {below}{num(check['critical'])}"


def verbose_lines(report: dict, alerts_only: bool) -> list[str]:
    checks = [c for c in report["checks"] if c["status"] != OK or not alerts_only]
    if not checks:
        n = len(report["checks"])
        return [f"all {n} check{'s' if n != 1 else ''} ok"]
    return [f"{c['status'].upper():<8} {c['check']:<19} {value_text(c):>16}  "
            f"{thresholds_text(c):<20} {clean(c['detail'])}" for c in checks]


def print_report(report: dict, args) -> None:
    if args.json:
        shown = report if not args.alerts_only else {
            **report, "checks": [c for c in report["checks"] if c["status"] != OK]}
        print(json.dumps(shown, default=str, separators=(",", ":")))
    elif args.verbose:
        print("\n".join(verbose_lines(report, args.alerts_only)))
    else:
        print(nagios_line(report))


# ---------------------------------------------------------------------------------------------
# Textfile (node exporter)

def label_value(text) -> str:
    return str(text).replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def metric_number(value) -> str:
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, int):
        return str(value)
    return repr(float(value))


def textfile_text(report: dict) -> str:
    checks = report["checks"]
    lines: list[str] = []

    def family(name: str, text: str, samples: list[str]) -> None:
        if samples:
            lines.extend([f"# HELP {name} {text}", f"# TYPE {name} gauge", *samples])

    family("pginfra_health_status", "Status of each pginfra health check: 0 ok, 1 warning, "
           "2 critical, 3 unknown.",
           [f'pginfra_health_status{{check="{label_value(c["check"])}"}} '
            f'{NAGIOS_CODE[c["status"]]}' for c in checks])
    family("pginfra_health_value", "The value each pginfra health check measured, in its "
           "unit.",
           [f'pginfra_health_value{{check="{label_value(c["check"])}",'
            f'unit="{label_value(c["unit"] or "")}"}} {metric_number(c["value"])}'
            for c in checks if c["value"] is not None])
    family("pginfra_health_threshold", "The warning and critical thresholds of each pginfra "
           "health check (cache_hit_ratio: lower is worse).",
           [f'pginfra_health_threshold{{check="{label_value(c["check"])}",level="{level}"}} '
            f"{metric_number(c[level])}"
            for c in checks if c["warning"] is not None for level in ("warning", "critical")])
    family("pginfra_health_exit_code", "The run's Nagios exit code: 0 ok, 1 warning, "
           "2 critical, 3 unknown.", [f"pginfra_health_exit_code {report['exit_code']}"])
    family("pginfra_health_duration_seconds", "How long the run took.",
           [f"pginfra_health_duration_seconds {metric_number(report['duration_seconds'])}"])
    family("pginfra_health_last_run_timestamp_seconds", "When the run started, in seconds "
           "since the epoch.",
           [f"pginfra_health_last_run_timestamp_seconds "
            f"{metric_number(util.parse_time(report['time']).timestamp())}"])
    return "\n".join(lines) + "\n"


def write_textfile(path: str, report: dict) -> None:
    """Atomically: a temporary file in the same directory (not *.prom, so the collector never
    reads it half written), fsync, mode 0644, rename."""
    target = Path(path)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(textfile_text(report))
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def textfile_path(args, cfg: HealthConfig) -> str | None:
    if args.no_textfile:
        return None
    if args.textfile:
        return args.textfile
    # A partial run (--check) must not replace the full picture the collector reads.
    return None if args.check else cfg.textfile


# ---------------------------------------------------------------------------------------------

class Parser(argparse.ArgumentParser):
    """Bad usage is UNKNOWN (3) for Nagios, not argparse's 2 (which reads as CRITICAL)."""

    def error(self, message):
        self.print_usage(sys.stderr)
        print(f"PGINFRA UNKNOWN - {self.prog}: {nagios_text(message)}")
        sys.exit(EXIT_UNKNOWN)


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog=NAME, formatter_class=argparse.RawDescriptionHelpFormatter,
                    description=__doc__)
    parser.add_argument("--config", default=DEFAULT_CONFIG,
                        help=f"the JSON configuration (default {DEFAULT_CONFIG})")
    parser.add_argument("--check", action="append", choices=CHECKS, metavar="NAME",
                        help="run only this check (repeatable; results stay in the order "
                        "above): " + ", ".join(CHECKS))
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--json", action="store_true",
                      help="one line of JSON: host, time, status, exit_code, "
                      "duration_seconds, checks (check, status, value, unit, warning, "
                      "critical, detail, data)")
    mode.add_argument("--verbose", "-v", action="store_true",
                      help="one line per check: status, name, value and unit, thresholds, "
                      "detail")
    parser.add_argument("--alerts-only", action="store_true",
                        help="only the checks that are not ok (--json lists only those; "
                        "--verbose prints only those, or one 'all N checks ok' line; the "
                        "Nagios line lists only those anyway)")
    files = parser.add_mutually_exclusive_group()
    files.add_argument("--textfile", metavar="PATH",
                       help="write every check in the node exporter's textfile format to "
                       "PATH (default: the configuration's \"textfile\", except with --check)")
    files.add_argument("--no-textfile", action="store_true",
                       help="do not write the textfile")
    return parser


def config_failure(args, message: str, started: float) -> int:
    if args.json:
        print(json.dumps({"host": None, "time": util.iso(util.utcnow()), "status": UNKNOWN,
                          "exit_code": EXIT_UNKNOWN,
                          "duration_seconds": round(time.monotonic() - started, 3),
                          "checks": [], "error": message}, separators=(",", ":")))
    else:
        print(f"PGINFRA UNKNOWN - {nagios_text(message)}")
    return EXIT_UNKNOWN


def selected(cfg: HealthConfig, args) -> list[str]:
    if args.check:
        return [n for n in CHECKS if n in set(args.check)]
    return [n for n in CHECKS
            if not (n == "pgbouncer" and cfg.pgbouncer_port is None)
            and not (n.startswith("backup_") and cfg.backup_state_dir is None)]


def main(argv: list[str] | None = None) -> int:
    started = time.monotonic()
    os.umask(0o077)  # its state is the postgres user's alone (the textfile is chmod'ed 0644)
    args = build_parser().parse_args(argv)
    if os.geteuid() == 0:
        try:
            runner.reexec_as_postgres(sys.argv[1:] if argv is None else argv)
        except (runner.ConfigError, OSError) as exc:
            return config_failure(args, f"cannot run as {util.OS_USER}: {exc}", started)
    try:
        cfg = load_config(args.config)
    except runner.ConfigError as exc:
        return config_failure(args, str(exc), started)
    report = Run(cfg, args, selected(cfg, args), started).execute()
    return report["exit_code"]


if __name__ == "__main__":
    sys.exit(main())
