"""The configuration of pginfra-health, ``/etc/pginfra/health.json``, declared and checked:
``THRESHOLDS`` (every threshold, its defaults, unit and meaning, once), ``HealthConfig``,
``BackupSettings``, ``PgBouncerSettings`` and ``HaSettings`` (the typed configuration),
``validate_config(raw, path)`` and ``load_config(path)``.

Importing this module has no side effects (no file is read, no connection made): the deploy's
settings take the thresholds' defaults and meanings from here.

    >>> THRESHOLDS["connections_percent"].default
    (75, 90)
    >>> THRESHOLDS["cache_hit_ratio"].lower_is_worse
    True
"""

from __future__ import annotations

import ipaddress
import json
import math
import os
import re
import urllib.parse
from dataclasses import dataclass

from pginfra_host import layout, runner, schema

DEFAULT_CONFIG = layout.HEALTH_CONFIG


@dataclass(frozen=True)
class Threshold:
    """One [warning, critical] threshold of health.json's "thresholds" (the deploy's setting
    ``health_<name>``). ``warning``, ``critical``: the defaults. A value at or above a
    threshold reaches it; with ``lower_is_worse``, a value below it. ``high``: the largest
    value a threshold may have (None: no bound). ``checks``: the checks that grade with it."""

    warning: float
    critical: float
    unit: str
    meaning: str
    checks: tuple[str, ...]
    lower_is_worse: bool = False
    high: float | None = None

    @property
    def default(self) -> tuple:
        """(warning, critical): the deploy's default pair."""
        return (self.warning, self.critical)


# Every threshold, in the order health.json and the settings list them.
THRESHOLDS: dict[str, Threshold] = {
    "connections_percent": Threshold(
        warning=75, critical=90, unit="%", high=100, checks=("connections",),
        meaning="% of max_connections in use by client sessions"),
    "long_running_seconds": Threshold(
        warning=300, critical=1800, unit="s", checks=("long_running",),
        meaning="age in seconds of the oldest statement another session is running"),
    "idle_in_transaction_seconds": Threshold(
        warning=300, critical=900, unit="s", checks=("idle_in_transaction",),
        meaning="seconds the oldest session has sat idle in a transaction"),
    "lock_wait_seconds": Threshold(
        warning=30, critical=300, unit="s", checks=("blocking_locks",),
        meaning="seconds the longest lock wait has lasted (blocked sessions)"),
    "archive_failing_seconds": Threshold(
        warning=0, critical=300, unit="s", checks=("archiver",),
        meaning="seconds WAL archiving has been failing (0: at once)"),
    "archive_ready_segments": Threshold(
        warning=10, critical=50, unit="segments", checks=("archiver",),
        meaning="count of WAL segments waiting to be archived"),
    "backup_base_age_hours": Threshold(
        warning=180, critical=348, unit="h", checks=("backup_base",),
        meaning="age in hours of the newest pgBackRest backup (full, diff or incr) of each "
                "repository"),
    "backup_dump_age_hours": Threshold(
        warning=26, critical=50, unit="h", checks=("backup_dump",),
        meaning="age in hours of the last verified dump"),
    "disk_used_percent": Threshold(
        warning=80, critical=90, unit="%", high=100, checks=("disk_data", "disk_wal_archive"),
        meaning="% used (space or inodes) of the filesystems of the data directory, pg_wal "
                "and the WAL archive directory"),
    "wraparound_percent": Threshold(
        warning=50, critical=75, unit="%", high=100, checks=("wraparound",),
        meaning="% of the transaction-id (or multixact) horizon, 2^31, the oldest database "
                "has used"),
    "cache_hit_ratio": Threshold(
        warning=0.95, critical=0.90, unit="ratio", high=1, lower_is_worse=True,
        checks=("cache_hit_ratio",),
        meaning="shared-buffer hit ratio over all databases (lower is worse)"),
    "replication_lag_mb": Threshold(
        warning=50, critical=100, unit="MB", checks=("replication", "patroni"),
        meaning="MB a replica (or a replication slot) is behind; on a standby, WAL received "
                "but not replayed"),
    "pgbouncer_wait_seconds": Threshold(
        warning=1, critical=5, unit="s", checks=("pgbouncer",),
        meaning="seconds the longest-waiting PgBouncer client has waited"),
}

STANZA_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
MAX_REPO = 256  # pgBackRest's repo1..repo256


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
class PgBouncerSettings:
    """The configuration's "pgbouncer" (null: no PgBouncer on this host)."""
    port: int
    listen: tuple = ()  # the addresses it should listen on


@dataclass(frozen=True)
class HaSettings:
    """The configuration's "ha" (null or absent: PostgreSQL is not run by Patroni here).
    ``member``: this host's Patroni member name; ``members``: every member the inventory
    expects in the cluster (this one included); ``rest_url``: this member's Patroni REST API,
    "https://ADDRESS:PORT"; ``etcd_endpoints``: every etcd member's client URL,
    "https://ADDRESS:PORT"; ``cafile``, ``certfile``, ``keyfile``: the CA that signed both
    servers' certificates, and the client certificate and key shown to them."""
    member: str
    members: tuple
    rest_url: str
    etcd_endpoints: tuple
    cafile: str
    certfile: str
    keyfile: str
    # ha_synchronous_mode: Patroni promotes only a named synchronous standby, so while none
    # is named a dead leader is not replaced (the patroni check warns of it)
    synchronous: bool = False
    # ha_client_path 'vip': the floating address that must be on the leader and nowhere else
    # ("": none)
    vip: str = ""


# The declaration: HealthConfig's fields (and BackupSettings', PgBouncerSettings',
# HaSettings') are the file's keys (schema.keys): those with a default are optional; "path" is
# the program's own.
@dataclass(frozen=True)
class HealthConfig:
    """/etc/pginfra/health.json."""
    path: str  # the file it was read from (not a key)
    host: str
    version: int
    cluster: str
    port: int
    data_directory: str
    wal_archive_dir: str
    state_dir: str
    query_timeout: float
    run_timeout: float
    pgbouncer: PgBouncerSettings | None
    backup: BackupSettings | None
    textfile: str | None
    thresholds: dict  # name -> (warning, critical), every one of THRESHOLDS
    socket_dir: str = layout.DEFAULT_SOCKET_DIR
    standbys: tuple = ()  # application names that should stream from this server
    ha: HaSettings | None = None  # Patroni and etcd; None: no HA checks

    @property
    def pgbouncer_port(self) -> int | None:
        return None if self.pgbouncer is None else self.pgbouncer.port

    @property
    def pgbouncer_listen(self) -> tuple:
        return () if self.pgbouncer is None else self.pgbouncer.listen

    def bin(self, name: str) -> str:
        return layout.pg_bin(self.version, name)

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


def _pair(key: str, value, threshold: Threshold) -> tuple:
    lower_is_worse, high = threshold.lower_is_worse, threshold.high
    order = ("warning >= critical (lower is worse)" if lower_is_worse
             else "warning <= critical")
    ok = (isinstance(value, list) and len(value) == 2
          and all(_is_number(v) and v >= 0 and (high is None or v <= high) for v in value)
          and (value[0] >= value[1] if lower_is_worse else value[0] <= value[1]))
    schema.require(ok, key, "must be [warning, critical]: two non-negative numbers"
                   + (f" <= {high}" if high is not None else "") + f", {order}", value)
    return tuple(value)


def validate_backup(backup) -> BackupSettings | None:
    """The "backup" key: null, or every key of BackupSettings."""
    schema.require(backup is None or isinstance(backup, dict), "backup",
                   "must be null or an object {"
                   + ", ".join(f'"{k}"' for k in schema.keys(BackupSettings)[0])
                   + "}", backup)
    if backup is None:
        return None
    schema.check_declared(backup, BackupSettings, prefix="backup.")
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


def https_url(key: str, value) -> str:
    """"https://HOST:PORT" (an IPv6 address in brackets), nothing after it but one "/";
    returned without that "/"."""
    what = 'must be a URL "https://HOST:PORT" (no path, no user, no query)'
    schema.require(isinstance(value, str) and value.isprintable() and " " not in value,
                   key, what, value)
    try:
        parts = urllib.parse.urlsplit(value)
        port = parts.port
    except ValueError:
        parts, port = None, None
    schema.require(parts is not None and parts.scheme == "https" and bool(parts.hostname)
                   and port is not None and 0 < port < 65536 and parts.path in ("", "/")
                   and not parts.query and not parts.fragment and "@" not in parts.netloc
                   and not value.endswith("?") and not value.endswith("#"), key, what, value)
    return value.rstrip("/")


def _names(key: str, value, what: str) -> tuple:
    schema.require(isinstance(value, list) and value != []
                   and all(isinstance(n, str) and schema.NAME.fullmatch(n) for n in value)
                   and len(set(value)) == len(value), key,
                   f"must be a non-empty list of distinct {what} ([A-Za-z0-9._-], 1..63)", value)
    return tuple(value)


def validate_ha(ha) -> HaSettings | None:
    """The "ha" key: null, or every key of HaSettings."""
    schema.require(ha is None or isinstance(ha, dict), "ha",
                   "must be null or an object {"
                   + ", ".join(f'"{k}"' for k in schema.keys(HaSettings)[0]) + "}", ha)
    if ha is None:
        return None
    schema.check_declared(ha, HaSettings, prefix="ha.")
    member = ha["member"]
    schema.require(isinstance(member, str) and bool(schema.NAME.fullmatch(member)),
                   "ha.member", "must be a Patroni member name ([A-Za-z0-9._-], 1..63)",
                   member)
    members = _names("ha.members", ha["members"], "Patroni member names")
    schema.require(member in members, "ha.members",
                   f"must include ha.member ({json.dumps(member)})", ha["members"])
    endpoints = ha["etcd_endpoints"]
    schema.require(isinstance(endpoints, list) and endpoints != [], "ha.etcd_endpoints",
                   'must be a non-empty list of URLs "https://HOST:PORT"', endpoints)
    urls = tuple(https_url(f"ha.etcd_endpoints[{i}]", url) for i, url in enumerate(endpoints))
    schema.require(len(set(urls)) == len(urls), "ha.etcd_endpoints",
                   "must not name an endpoint twice", endpoints)
    files = {}
    for name in ("cafile", "certfile", "keyfile"):
        files[name] = schema.abspath(f"ha.{name}", ha[name])
        schema.require(files[name] != "/", f"ha.{name}", "must be the path of a file",
                       ha[name])
    synchronous = ha.get("synchronous", False)
    schema.require(isinstance(synchronous, bool), "ha.synchronous", "must be true or false",
                   synchronous)
    vip = ha.get("vip", "")
    schema.require(vip == "" or (isinstance(vip, str) and _is_ipv4(vip)), "ha.vip",
                   'must be "" or an IPv4 address', vip)
    return HaSettings(member=member, members=members,
                      rest_url=https_url("ha.rest_url", ha["rest_url"]),
                      etcd_endpoints=urls, synchronous=synchronous, vip=vip, **files)


def _is_ipv4(value: str) -> bool:
    try:
        ipaddress.IPv4Address(value)
    except ValueError:
        return False
    return True


def validate_config(raw, path: str = DEFAULT_CONFIG) -> HealthConfig:
    """The configuration, checked strictly; runner.ConfigError names the first bad key."""
    if not isinstance(raw, dict):
        raise runner.ConfigError("the configuration must be a JSON object")
    schema.check_declared(raw, HealthConfig)
    bouncer = raw["pgbouncer"]
    schema.require(bouncer is None or isinstance(bouncer, dict), "pgbouncer",
                   "must be an object {\"port\": N} or null", bouncer)
    if bouncer is not None:
        schema.check_declared(bouncer, PgBouncerSettings, prefix="pgbouncer.")
        schema.integer("pgbouncer.port", bouncer["port"], 1, 65535)
        listen = bouncer.get("listen", [])
        schema.require(isinstance(listen, list) and all(isinstance(a, str) for a in listen),
                       "pgbouncer.listen", "must be a list of addresses", listen)
    backup = validate_backup(raw["backup"])
    ha = validate_ha(raw.get("ha"))
    textfile = raw["textfile"]
    if textfile is not None:
        schema.abspath("textfile", textfile)
        schema.require(textfile.endswith(".prom") and len(textfile) > len("/.prom"),
                       "textfile",
                       "must be null or a path ending in .prom (what the node exporter reads)",
                       textfile)
    thresholds = raw["thresholds"]
    schema.require(isinstance(thresholds, dict), "thresholds", "must be an object", thresholds)
    schema.check_keys(thresholds, tuple(THRESHOLDS), prefix="thresholds.")
    pairs = {name: _pair(f"thresholds.{name}", thresholds[name], threshold)
             for name, threshold in THRESHOLDS.items()}
    standbys = raw.get("standbys", [])
    schema.require(isinstance(standbys, list) and all(
        isinstance(n, str) and re.fullmatch(r"[a-z0-9_]{1,63}", n) for n in standbys),
        "standbys", "must be a list of application names ([a-z0-9_], 1..63)", standbys)
    return HealthConfig(
        path=path,
        standbys=tuple(standbys),
        host=schema.string("host", raw["host"], schema.NAME,
                           "a host name ([A-Za-z0-9._-], 1..63)"),
        version=schema.integer("version", raw["version"], 10, 99),
        cluster=schema.string("cluster", raw["cluster"], schema.NAME, "a cluster name"),
        port=schema.integer("port", raw["port"], 1, 65535),
        socket_dir=schema.abspath("socket_dir",
                                  raw.get("socket_dir", layout.DEFAULT_SOCKET_DIR)),
        data_directory=schema.abspath("data_directory", raw["data_directory"]),
        wal_archive_dir=schema.abspath("wal_archive_dir", raw["wal_archive_dir"]),
        state_dir=schema.abspath("state_dir", raw["state_dir"]),
        query_timeout=_positive("query_timeout", raw["query_timeout"], 600),
        run_timeout=_positive("run_timeout", raw["run_timeout"], 3600),
        pgbouncer=None if bouncer is None else PgBouncerSettings(
            port=bouncer["port"], listen=tuple(bouncer.get("listen", []))),
        backup=backup,
        textfile=textfile,
        thresholds=pairs,
        ha=ha,
    )


def load_config(path: str) -> HealthConfig:
    """``path`` read and validated; every problem is a runner.ConfigError starting with the
    path (schema.load_json's messages)."""
    return schema.load_json(path, validate_config)
