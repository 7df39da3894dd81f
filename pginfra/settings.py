"""Every setting a user may change, declared once: name, default, type and meaning.

This module is the single source of truth for inventory data. ``docs/settings.md`` is generated
from it (``python -m pginfra.settings > docs/settings.md``) and a unit test keeps the two equal.

Settings are read from pyinfra host data (host data > group data > ``all``; ``--data`` wins) and
validated before the first operation runs::

    from pginfra.settings import load_settings

    settings = load_settings()       # raises SettingsError naming host, key and problem
    settings.postgres_port           # -> 5432

pginfra owns every data key that starts with one of ``OWNED_PREFIXES``; an unknown key there is
an error with a "did you mean" suggestion. A key outside those prefixes that looks like a typo of
a setting (``postgress_port``) is an error too. Everything else (``ssh_user``, your own keys) is
left alone.
"""

from __future__ import annotations

import difflib
import functools
import ipaddress
import posixpath
import re
import sys
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from pyinfra.api.exceptions import PyinfraError

from pginfra.tuning import PROFILES, STORAGE
from pginfra_host import durations
from pginfra_host.health.config import THRESHOLDS as HEALTH_THRESHOLDS

OWNED_PREFIXES = ("postgres_", "pgbouncer_", "pginfra_", "backup_", "health_", "maintenance_",
                  "ha_")

_ABS_PATH = r"/[A-Za-z0-9_./-]+"
# Debian package names (Debian policy 5.6.1), optionally pinned with =version.
_DEB_PACKAGE = r"^[a-z0-9][a-z0-9+.-]+(=[A-Za-z0-9.+~:-]+)?$"


_NAME = r"[a-z_][a-z0-9_]{0,62}"  # as pginfra.roles.IDENT: no "$" (PgBouncer)
_DURATION = r"0|[1-9][0-9]*(ms|s|min|h)"
_HBA_KEYS = {"database", "user", "address", "comment"}


def _check_hba_rules(rules: list) -> str | None:
    """Each rule: {database, user, address[, comment]}; address a network, never a hostname."""
    for i, rule in enumerate(rules):
        where = f"rule {i + 1}"
        if not isinstance(rule, dict):
            return f"{where}: expected a mapping with database, user and address, got {rule!r}"
        unknown = set(rule) - _HBA_KEYS
        if unknown:
            return f"{where}: unknown key(s) {', '.join(sorted(unknown))}"
        missing = {"database", "user", "address"} - set(rule)
        if missing:
            return f"{where}: missing {', '.join(sorted(missing))}"
        for key in ("database", "user"):
            for name in str(rule[key]).split(","):
                if not re.fullmatch(r"\+?" + _NAME, name):
                    return f"{where}: {key} {name!r} is not a role or database name"
        try:
            ipaddress.ip_network(str(rule["address"]), strict=True)
        except ValueError as exc:
            return f"{where}: address {rule['address']!r} is not a network: {exc}"
    return None


_CRON_FIELD = r"(\*|[0-9]+(-[0-9]+)?)(/[0-9]+)?(,(\*|[0-9]+(-[0-9]+)?)(/[0-9]+)?)*"
_CRON_RANGES = ((0, 59), (0, 23), (1, 31), (1, 12), (0, 7))


def _check_cron(value: str) -> str | None:
    """A five-field cron schedule with numbers, ranges, lists and steps (or @daily and so on)."""
    if not isinstance(value, str):
        return f"expected a cron schedule, got {value!r}"
    if value in ("@hourly", "@daily", "@weekly", "@monthly"):
        return None
    fields = value.split()
    if len(fields) != 5:
        return f"{value!r} is not a cron schedule of five fields (minute hour day month weekday)"
    for field, (lo, hi), name in zip(fields, _CRON_RANGES,
                                     ("minute", "hour", "day", "month", "weekday"), strict=True):
        if not re.fullmatch(_CRON_FIELD, field):
            return f"{value!r}: {name} field {field!r} is not a number, range, list or step"
        for number in re.findall(r"(?<![/0-9])[0-9]+", field):
            if not lo <= int(number) <= hi:
                return f"{value!r}: {name} {number} is outside {lo}-{hi}"
    return None


def _thresholds(lower_is_worse: bool = False, most: float | None = None):
    """A [warning, critical] pair of numbers; critical is the worse one (higher, or lower for a
    ratio where lower is worse)."""

    def check(value) -> str | None:
        if (not isinstance(value, list | tuple) or len(value) != 2 or any(
                isinstance(v, bool) or not isinstance(v, int | float) for v in value)):
            return f"expected [warning, critical], two numbers, got {value!r}"
        warning, critical = value
        if min(value) < 0 or (most is not None and max(value) > most):
            top = "" if most is None else f" and at most {most}"
            return f"thresholds must be at least 0{top}, got {value!r}"
        if lower_is_worse and warning < critical:
            return f"lower is worse here: warning {warning} must be at least critical {critical}"
        if not lower_is_worse and warning > critical:
            return f"warning {warning} must not be above critical {critical}"
        return None

    return check


def _duration_ms(zero: bool = True):
    """A PostgreSQL duration (``_DURATION``) that fits its int milliseconds; 0 only if ``zero``."""

    def check(value) -> str | None:
        ms = durations.milliseconds(str(value))
        if ms is None:
            return None  # the pattern (a narrower grammar) reports it
        if ms == 0 and not zero:
            return "must be more than 0"
        if ms > durations.INT_MAX:
            return f"{value!r} is more than PostgreSQL's largest timeout (2147483647ms)"
        return None

    return check


# postgresql.conf names postgres_parameters may not set: directives that read other files, the
# cluster's own file locations, and values that have a setting of their own (checked there).
_PARAMETERS_REFUSED = {
    **dict.fromkeys(("include", "include_dir", "include_if_exists"),
                    "a directive that reads another file, not a parameter"),
    **dict.fromkeys(("data_directory", "config_file", "hba_file", "ident_file",
                     "external_pid_file"), "the cluster's own layout, kept by Debian and pginfra"),
    "unix_socket_directories": "pginfra's programs and PgBouncer reach the server in "
                               "/var/run/postgresql",
    "listen_addresses": "use postgres_listen_addresses",
    "port": "use postgres_port",
    "log_directory": "use postgres_log_directory",
    "basic_archive.archive_directory": "use postgres_wal_archive_dir",
    **dict.fromkeys(("archive_command", "archive_library", "restore_command"),
                    "WAL is archived and fetched by pgBackRest, which pginfra configures"),
    "ssl_cert_file": "use postgres_tls_cert_file",
    "ssl_key_file": "use postgres_tls_key_file",
    "ssl_ca_file": "use postgres_tls_ca_file",
    "synchronous_standby_names": "use postgres_synchronous_standbys (checked against the "
                                 "inventory's standbys)",
    "primary_conninfo": "a standby's upstream comes from the inventory (the group 'primary', "
                        "postgres_upstream)",
    "primary_slot_name": "each standby's slot is named after it by pginfra",
    "hot_standby_feedback": "use postgres_hot_standby_feedback",
    "max_slot_wal_keep_size": "use postgres_max_slot_wal_keep_size",
}
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")

# Keys of earlier versions, with what replaced them: refused with the way forward.
RETIRED = {
    "backup_keep_local_base": "pgBackRest keeps backup_retention_full full backups in the local "
                              "repository",
    "backup_schedule_base": "renamed backup_schedule_full (pgBackRest full backups)",
    "backup_schedule_wal_ship": "pgBackRest pushes each WAL segment to every repository as it is "
                                "archived; remove the key",
}


def _check_parameters(params: dict) -> str | None:
    """postgres_parameters: names pginfra does not own, values one line of printable text (a
    newline or another control character would end or break the line in postgresql.conf)."""
    for name, value in params.items():
        if name in _PARAMETERS_REFUSED:
            return f"{name}: cannot be set here: {_PARAMETERS_REFUSED[name]}"
        text = str(value)
        if _CONTROL.search(text):
            return (f"{name}: the value {text!r} holds a control character (newline, tab...): "
                    "a postgresql.conf value is one line of text")
        if len(text) > 1024:
            return f"{name}: the value is {len(text)} characters long, at most 1024"
    return None


# The directories pginfra makes and hands to the postgres user (owner postgres, mode 0700).
POSTGRES_DIRECTORIES = ("postgres_wal_archive_dir", "postgres_log_directory", "backup_dir",
                        "pginfra_migrate_dump_dir")
# Nothing at or under these may be handed to postgres: what root runs, reads or trusts.
_SYSTEM_TREES = ("/bin", "/boot", "/dev", "/etc", "/lib", "/lib32", "/lib64", "/libx32",
                 "/proc", "/root", "/run", "/sbin", "/sys", "/tmp", "/usr", "/var/cache",
                 "/var/lib/apt", "/var/lib/dpkg", "/var/lib/pginfra", "/var/lib/systemd",
                 "/var/lock", "/var/log/pginfra", "/var/mail", "/var/run", "/var/spool",
                 "/var/tmp")
# These themselves are not handed to postgres; a directory of its own below them may be.
_SYSTEM_DIRS = ("/", "/home", "/media", "/mnt", "/opt", "/srv", "/var", "/var/backups",
                "/var/lib", "/var/local", "/var/log", "/var/opt", "/var/lib/postgresql",
                "/var/log/postgresql")


def _inside(path: str, top: str) -> bool:
    return path == top or path.startswith(top.rstrip("/") + "/")


def directory_problem(path: str, data_directory: str) -> str | None:
    """Why ``path`` may not become a directory owned by postgres, mode 0700, or None.

    >>> directory_problem("/etc", "/var/lib/postgresql/15/main")
    "/etc is a system directory: postgres would own what root trusts"
    """
    if posixpath.normpath(path) != path or path.startswith("//"):
        return f"{path} is not a normalised absolute path (no '..', '.', '//' or trailing '/')"
    for top in _SYSTEM_TREES:
        if _inside(path, top):
            return (f"{path} is a system directory: postgres would own what root trusts"
                    if path == top else
                    f"{path} is inside {top}, a system directory: postgres would own what root"
                    " trusts")
    if path in _SYSTEM_DIRS:
        return (f"{path} is a system directory: it would become postgres' own, mode 0700; "
                "use a directory of its own below it")
    for top in _SYSTEM_TREES + _SYSTEM_DIRS:
        if top != "/" and _inside(top, path):
            return f"{path} holds the system directory {top}"
    if _inside(path, data_directory):
        return f"{path} is inside the data directory {data_directory}"
    if _inside(data_directory, path):
        return f"{path} holds the data directory {data_directory}"
    return None


def _directory_problems(values: Mapping[str, Any]) -> list[str]:
    from pginfra_host.layout import data_directory as cluster_data_directory

    data = cluster_data_directory(values["postgres_version"], values["postgres_cluster"])
    found = []
    for key in POSTGRES_DIRECTORIES:
        problem = directory_problem(values[key], data)
        if problem:
            found.append(f"{key}: {problem}")
    for i, key in enumerate(POSTGRES_DIRECTORIES):
        for other in POSTGRES_DIRECTORIES[i + 1:]:
            a, b = values[key], values[other]
            if _inside(a, b) or _inside(b, a):
                found.append(f"{key}: {a} and {other} {b} overlap: each needs a directory of "
                             "its own (backups and WAL are expired by what each holds)")
    return found


def _port_problems(values: Mapping[str, Any]) -> list[str]:
    """Every port pginfra opens on a host is distinct."""
    ports = [("postgres_port", values["postgres_port"])]
    if values["pgbouncer_enabled"]:
        ports.append(("pgbouncer_port", values["pgbouncer_port"]))
    ports.append(("backup_tls_port", values["backup_tls_port"]))
    if values["postgres_ha"]:
        ports += [(key, values[key]) for key in ("ha_rest_port", "ha_etcd_client_port",
                                                 "ha_etcd_peer_port")]
        if values["ha_client_path"] == "haproxy":
            ports += [(key, values[key]) for key in ("ha_haproxy_port_rw", "ha_haproxy_port_ro")]
    if values["health_prometheus"]:
        ports += [("health_prometheus_postgres_port", values["health_prometheus_postgres_port"]),
                  ("health_prometheus_node_port", values["health_prometheus_node_port"])]
    found, seen = [], {}
    for key, port in ports:
        if port in seen:
            found.append(f"{key}: port {port} is already {seen[port]}'s: every port pginfra "
                         "opens on a host must be its own")
        seen.setdefault(port, key)
    return found


def _vip_problems(values: Mapping[str, Any]) -> list[str]:
    """ha_client_path 'vip': a floating IPv4 address with its prefix, and where it goes."""
    if not (values["ha_vip"] and values["ha_vip_interface"]):
        return ["ha_vip: ha_client_path 'vip' needs ha_vip (address/prefix, such as "
                "10.0.0.50/24) and ha_vip_interface"]
    try:
        vip = ipaddress.IPv4Interface(values["ha_vip"])
    except ValueError:
        return [f"ha_vip: {values['ha_vip']!r} is not an IPv4 address with its prefix "
                "(such as 10.0.0.50/24)"]
    if vip.network.prefixlen < 32 and vip.ip in (vip.network.network_address,
                                                 vip.network.broadcast_address):
        kind = "network" if vip.ip == vip.network.network_address else "broadcast"
        return [f"ha_vip: {vip} is its network's own {kind} address, not one a host can hold"]
    if vip.ip.is_loopback or vip.ip.is_unspecified or vip.ip.is_multicast or vip.ip.is_link_local:
        return [f"ha_vip: {vip.ip} cannot float between hosts"]
    return []


def _ip_problem(value: str) -> str | None:
    try:
        ipaddress.ip_address(value)
    except ValueError:
        return f"{value!r} is not an IP address"
    return None


def _roles():
    from pginfra import roles

    return roles


def _sql_bundles():
    from pginfra import sql_bundles
    return sql_bundles


def _cross_problems(values: Mapping[str, Any]) -> list[str]:
    """Problems that involve more than one setting."""
    found = []
    known = {"postgres", *(r["name"] for r in values["postgres_roles"])}
    replication_user = values["postgres_replication_user"]
    if replication_user in known or replication_user.startswith("pg_") or \
            replication_user in _roles().RESERVED_ROLES:
        found.append(f"postgres_replication_user: {replication_user!r} must be a role of its own "
                     "(REPLICATION and LOGIN only), not postgres, a pg_ role or one of "
                     "postgres_roles")
    for key in ("pgbouncer_admin_users", "pgbouncer_stats_users"):
        for role in values[key]:
            if role == "postgres" or role in known:
                found.append(f"{key}: {role!r} must be a console-only user, not a server role "
                             "(it would be pooled to the server with its password)")
    databases = {db["name"] for db in values["postgres_databases"]}
    for db in values["pgbouncer_pool_modes"]:
        if db not in databases:
            found.append(f"pgbouncer_pool_modes: {db!r} is not in postgres_databases")
    for db in values["postgres_sql_bundles"]:
        if db != "*" and db not in databases:
            found.append(f"postgres_sql_bundles: {db!r} is not in postgres_databases")
    if values["backup_s3_kms_key_id"] and values["backup_s3_sse"] != "aws:kms":
        found.append("backup_s3_kms_key_id: a KMS key is used only with backup_s3_sse "
                     "'aws:kms'")
    if values["backup_enabled"]:
        for db in sorted(databases):
            # dumps/_globals holds the roles; pginfra_drill_<db> must fit in 63 bytes
            if db.startswith("_") or len(db.encode()) > 49:
                found.append(f"postgres_databases: {db!r}: backups need a name of at most 49 "
                             "bytes that does not start with '_'")
    if values["pginfra_example_community"] and "community" not in databases:
        found.append("pginfra_example_community: the example loads database 'community'; "
                     "add it to postgres_databases")
    for db in values["postgres_databases"]:
        for role in [db["owner"], *db.get("connect", [])]:
            if role not in known:
                found.append(f"postgres_databases: {db['name']}: role {role!r} is not in "
                             "postgres_roles")
    return found + _ha_problems(values) + _directory_problems(values) + _port_problems(values)


def _ha_problems(values: Mapping[str, Any]) -> list[str]:
    """Patroni's settings that contradict each other, refused before Patroni could half apply
    them."""
    found = []
    ttl, loop, retry = values["ha_ttl"], values["ha_loop_wait"], values["ha_retry_timeout"]
    if loop + 2 * retry > ttl:
        found.append(f"ha_ttl: {ttl} s is too short for ha_loop_wait {loop} s and "
                     f"ha_retry_timeout {retry} s: Patroni needs loop_wait + 2 x retry_timeout "
                     f"<= ttl ({loop + 2 * retry} s), or a leader that is alive loses its key")
    if values["ha_synchronous_mode_strict"] and not values["ha_synchronous_mode"]:
        found.append("ha_synchronous_mode_strict: only with ha_synchronous_mode: true")
    if values["postgres_ha"] and values["postgres_synchronous_standbys"]:
        found.append("postgres_synchronous_standbys: with postgres_ha, Patroni chooses the "
                     "synchronous standby: use ha_synchronous_mode")
    if values["postgres_ha"] and values["postgres_former_primary"]:
        found.append("postgres_former_primary: with postgres_ha, Patroni promotes: use "
                     "patronictl switchover or failover (README: High availability)")
    if values["postgres_ha"] and values["ha_client_path"] == "vip":
        found += _vip_problems(values)
    rewind = values["ha_rewind_user"]
    if rewind in ("postgres", values["postgres_replication_user"]) or rewind.startswith("pg_") \
            or rewind in {r["name"] for r in values["postgres_roles"]}:
        found.append(f"ha_rewind_user: {rewind!r} must be a role of its own, not postgres, the "
                     "replication user, a pg_ role or one of postgres_roles")
    return found


class SettingsError(PyinfraError):
    """Inventory data failed validation; the message names each host, key and problem."""


@dataclass(frozen=True)
class Setting:
    """One user-changeable setting."""

    name: str
    default: Any
    type: type
    meaning: str
    choices: tuple | None = None
    minimum: int | None = None
    maximum: int | None = None
    pattern: str | None = None  # for str, and for each item of a list
    item_type: type | None = None  # for list
    validator: Callable[[Any], str | None] | None = None  # further checks, after the type's

    def check(self, value: Any) -> str | None:
        """Return a problem description for ``value``, or None when it is acceptable."""
        if self.type is int:
            if isinstance(value, bool) or not isinstance(value, int):
                return f"expected an integer, got {value!r}"
            if self.minimum is not None and value < self.minimum:
                return f"must be at least {self.minimum}, got {value}"
            if self.maximum is not None and value > self.maximum:
                return f"must be at most {self.maximum}, got {value}"
        elif self.type is float:
            if isinstance(value, bool) or not isinstance(value, int | float):
                return f"expected a number, got {value!r}"
            if self.minimum is not None and value < self.minimum:
                return f"must be at least {self.minimum}, got {value}"
            if self.maximum is not None and value > self.maximum:
                return f"must be at most {self.maximum}, got {value}"
        elif self.type is bool:
            if not isinstance(value, bool):
                return f"expected true or false, got {value!r}"
        elif self.type is str:
            if not isinstance(value, str):
                return f"expected a string, got {value!r}"
            if self.pattern and not re.fullmatch(self.pattern, value):
                return f"{value!r} does not match {self.pattern}"
        elif self.type is dict:
            if not isinstance(value, dict):
                return f"expected a mapping, got {value!r}"
            for key, item in value.items():
                if not isinstance(key, str) or not re.fullmatch(self.pattern or ".+", key):
                    return f"key {key!r} does not match {self.pattern}"
                if self.item_type is list:
                    if not isinstance(item, list | tuple) or not all(
                            isinstance(i, str) for i in item):
                        return f"value of {key!r} must be a list of strings, got {item!r}"
                elif not isinstance(item, str | int | float | bool):
                    return f"value of {key!r} must be a string, number or boolean, got {item!r}"
        elif self.type is list:
            if not isinstance(value, list | tuple):
                return f"expected a list, got {value!r}"
            for item in value:
                if self.item_type and not isinstance(item, self.item_type):
                    return f"list items must be {self.item_type.__name__}, got {item!r}"
                if self.pattern and not re.fullmatch(self.pattern, str(item)):
                    return f"list item {item!r} does not match {self.pattern}"
        if self.validator is not None:
            problem = self.validator(value)
            if problem:
                return problem
        if self.choices is not None and value not in self.choices:
            allowed = ", ".join(repr(c) for c in self.choices)
            return f"must be one of {allowed}, got {value!r}"
        return None

    @property
    def type_name(self) -> str:
        if self.type is list and self.item_type:
            return f"list of {self.item_type.__name__}"
        return self.type.__name__


SETTINGS: tuple[Setting, ...] = (
    Setting(
        "postgres_version", 15, int,
        "PostgreSQL major version, installed from Debian's own packages.",
        choices=(15,),
    ),
    Setting(
        "postgres_cluster", "main", str,
        "Name of the cluster pginfra manages (as pg_lsclusters shows it).",
        pattern=r"[a-z][a-z0-9_]{0,30}",
    ),
    Setting(
        "postgres_port", 5432, int,
        "TCP port the cluster listens on.",
        minimum=1024, maximum=65535,
    ),
    Setting(
        "postgres_locale", "C.UTF-8", str,
        "Locale of a new cluster (initdb --locale); it must exist on the host.",
        pattern=r"[A-Za-z0-9_.@-]+",
    ),
    Setting(
        "postgres_data_checksums", True, bool,
        "Create new clusters with data checksums (initdb --data-checksums).",
    ),
    Setting(
        "postgres_extra_packages", [], list,
        "More Debian packages to install with the server, e.g. postgresql-15-pgvector.",
        item_type=str, pattern=_DEB_PACKAGE,
    ),
    Setting(
        "postgres_profile", "web", str,
        "Workload profile the memory and worker settings are tuned for (pgtune's formulas).",
        choices=PROFILES,
    ),
    Setting(
        "postgres_storage", "ssd", str,
        "Storage under the data directory; sets random_page_cost and effective_io_concurrency.",
        choices=STORAGE,
    ),
    Setting(
        "postgres_max_connections", 0, int,
        "max_connections; 0 takes the profile's (web 200, oltp 300, mixed 100).",
        minimum=0, maximum=10000,
    ),
    Setting(
        "postgres_replicas", 0, int,
        "Streaming replicas planned for this server; max_wal_senders must cover them.",
        minimum=0, maximum=100,
    ),
    Setting(
        "postgres_replication_user", "replicator", str,
        "Role the standbys stream as: REPLICATION and LOGIN only, its password a secret.",
        pattern=_NAME,
    ),
    Setting(
        "postgres_replication_address", "", str,
        "Address other hosts reach this server at and it connects from; empty: first listen IP.",
        pattern=r"([0-9.]+|[0-9a-fA-F:]+)?",
        validator=lambda v: _ip_problem(v) if v else None,
    ),
    Setting(
        "postgres_upstream", "", str,
        "Host this standby streams from; empty: the primary (another standby: a cascade).",
        pattern=r"[A-Za-z0-9@/._:-]*",
    ),
    Setting(
        "postgres_synchronous_standbys", "", str,
        "On the primary: 'ANY n (host, ...)' or 'FIRST n (host, ...)'; empty: asynchronous.",
        pattern=r"((ANY|FIRST) [1-9][0-9]* \([A-Za-z0-9@/._:-]+(, ?[A-Za-z0-9@/._:-]+)*\))?",
    ),
    Setting(
        "postgres_hot_standby_feedback", True, bool,
        "Standbys tell the primary which rows their queries need (fewer cancelled queries).",
    ),
    Setting(
        "postgres_max_slot_wal_keep_size", "10GB", str,
        "Most WAL a replication slot may hold on the primary (-1: no cap; the disk may fill).",
        pattern=r"-1|[1-9][0-9]*(MB|GB|TB)",
    ),
    Setting(
        "postgres_replication_slots_keep", [], list,
        "Physical slots on the primary that are not pginfra's (pg_receivewal...): never dropped.",
        item_type=str, pattern=r"[a-z0-9_]{1,63}",
    ),
    Setting(
        "postgres_former_primary", "", str,
        "Set on the host named primary to promote it: the primary it replaces, gone for good.",
        pattern=r"[A-Za-z0-9@/._:-]*",
    ),
    Setting(
        "postgres_ha", "", str,
        "'patroni': Patroni and etcd fail over automatically; empty: promotion by hand.",
        choices=("", "patroni"),
    ),
    Setting(
        "ha_scope", "pginfra", str,
        "With postgres_ha: Patroni's cluster name (its scope, the key under etcd's /service/).",
        pattern=r"[a-z][a-z0-9_-]{0,62}",
    ),
    Setting(
        "ha_ttl", 30, int,
        "Seconds the leader key lives without renewal: the longest a lost leader blocks failover.",
        minimum=20, maximum=600,
    ),
    Setting(
        "ha_loop_wait", 10, int,
        "Seconds Patroni sleeps between its checks of the cluster.",
        minimum=1, maximum=300,
    ),
    Setting(
        "ha_retry_timeout", 10, int,
        "Seconds Patroni retries etcd and PostgreSQL before it demotes (loop_wait + 2x < ttl).",
        minimum=3, maximum=300,
    ),
    Setting(
        "ha_synchronous_mode", False, bool,
        "Commit waits for a synchronous replica, and only it may be promoted: no committed loss.",
    ),
    Setting(
        "ha_synchronous_mode_strict", False, bool,
        "With ha_synchronous_mode: refuse writes when no replica is synchronous, never degrade.",
    ),
    Setting(
        "ha_maximum_lag_on_failover", 1048576, int,
        "Bytes a replica may be behind and still be promoted by a failover (not in sync mode).",
        minimum=0,
    ),
    Setting(
        "ha_rest_port", 8008, int,
        "Port of Patroni's REST API (TLS, on the replication address; HAProxy checks it).",
        minimum=1, maximum=65535,
    ),
    Setting(
        "ha_etcd_client_port", 2379, int,
        "Port etcd serves its clients (Patroni) on, TLS with client certificates.",
        minimum=1, maximum=65535,
    ),
    Setting(
        "ha_etcd_peer_port", 2380, int,
        "Port etcd members talk to each other on, TLS with client certificates.",
        minimum=1, maximum=65535,
    ),
    Setting(
        "ha_etcd_version", "3.4.23-4+b4", str,
        "Debian's etcd-server package version, the same on every member.",
        pattern=r"[0-9][A-Za-z0-9.+~:-]*",
    ),
    Setting(
        "ha_patroni_version", "3.0.2-1", str,
        "Debian's patroni package version, the same on every host.",
        pattern=r"[0-9][A-Za-z0-9.+~:-]*",
    ),
    Setting(
        "ha_rewind_user", "rewinder", str,
        "Role pg_rewind connects as when a former leader rejoins; its password a secret.",
        pattern=_NAME,
    ),
    Setting(
        "ha_client_path", "haproxy", str,
        "How clients find the leader: 'haproxy' on each host, or 'vip' (keepalived moves ha_vip).",
        choices=("haproxy", "vip"),
    ),
    Setting(
        "ha_haproxy_port_rw", 5000, int,
        "HAProxy port that reaches the leader's PgBouncer (read-write).",
        minimum=1, maximum=65535,
    ),
    Setting(
        "ha_haproxy_port_ro", 5001, int,
        "HAProxy port that reaches the replicas' PgBouncers (read-only).",
        minimum=1, maximum=65535,
    ),
    Setting(
        "ha_vip", "", str,
        "With ha_client_path 'vip': the floating address/prefix keepalived puts on the leader.",
        pattern=r"([0-9.]+/[0-9]{1,2})?",
    ),
    Setting(
        "ha_vip_interface", "", str,
        "With ha_client_path 'vip': this host's network interface that carries ha_vip.",
        pattern=r"[A-Za-z0-9._-]{0,15}",
    ),
    Setting(
        "ha_vip_router_id", 51, int,
        "With ha_client_path 'vip': the VRRP router id, unique among clusters on that network.",
        minimum=1, maximum=255,
    ),
    Setting(
        "postgres_listen_addresses", ["localhost"], list,
        "Addresses the server listens on (listen_addresses); never '*' unless you mean it.",
        item_type=str, pattern=r"[A-Za-z0-9.:*-]+",
    ),
    Setting(
        "postgres_hba", [], list,
        "Who may connect over TCP: {database, user, address}, each hostssl scram-sha-256.",
        item_type=dict, validator=_check_hba_rules,
    ),
    Setting(
        "postgres_roles", [], list,
        "Roles: {name, login, connection_limit, member_of, createdb, createrole}.",
        item_type=dict, validator=lambda v: _roles().check_roles(v),
    ),
    Setting(
        "postgres_password_min_length", 12, int,
        "Shortest password a role may have; shorter than 20 it must mix 3 character classes.",
        minimum=8, maximum=128,
    ),
    Setting(
        "postgres_databases", [], list,
        "Databases: {name, owner, connect: [roles], extensions: [names]}; PUBLIC never connects.",
        item_type=dict, validator=lambda v: _roles().check_databases(v),
    ),
    Setting(
        "postgres_tls_names", [], list,
        "More DNS names or addresses clients use for this host, added to its certificate.",
        item_type=str, pattern=r"[A-Za-z0-9.:-]+",
    ),
    Setting(
        "postgres_tls_cert_file", "", str,
        "Your certificate for this host (path on the control machine); empty: pginfra's CA.",
        pattern=r"(~?/[^\0]*)?",
    ),
    Setting(
        "postgres_tls_key_file", "", str,
        "Its private key (path on the control machine); installed with mode 0600.",
        pattern=r"(~?/[^\0]*)?",
    ),
    Setting(
        "postgres_tls_ca_file", "", str,
        "The CA certificate that signed it (path on the control machine).",
        pattern=r"(~?/[^\0]*)?",
    ),
    Setting(
        "postgres_parameters", {}, dict,
        "postgresql.conf parameters overriding the computed and pginfra's values.",
        pattern=r"[a-z_][a-z0-9_.]*", validator=_check_parameters,
    ),
    Setting(
        "postgres_wal_archive_dir", "/var/lib/postgresql/wal-archive", str,
        "Directory WAL segments are archived into (owner postgres, mode 0700).",
        pattern=_ABS_PATH,
    ),
    Setting(
        "postgres_wal_archive_device", "", str,
        "Block device of its own for postgres_wal_archive_dir: ext4 made if blank, mounted.",
        pattern=r"(/dev/[A-Za-z0-9][A-Za-z0-9/_.:-]*)?",
        validator=lambda v: ("must name a device under /dev, not a directory of it"
                             if v and ("/../" in v or v.endswith("/")) else None),
    ),
    Setting(
        "postgres_log_directory", "/var/log/postgresql/pginfra", str,
        "Server log directory, outside the data directory (owner postgres, mode 0700).",
        pattern=_ABS_PATH,
    ),
    Setting(
        "postgres_audit_log", "ddl, role", str,
        "pgaudit.log: statement classes pgAudit writes to the server log ('none' for none).",
        pattern=r"none|-?(read|write|function|role|ddl|misc|misc_set|all)"
                r"(, ?-?(read|write|function|role|ddl|misc|misc_set|all))*",
    ),
    Setting(
        "postgres_auth_delay_ms", 500, int,
        "auth_delay: milliseconds a failed login waits before its answer (0: none).",
        minimum=0, maximum=60000,
    ),
    Setting(
        "postgres_slow_statement_ms", 500, int,
        "Statements slower than this many milliseconds are logged, with their plan at 4x.",
        minimum=-1,
    ),
    Setting(
        "pgbouncer_enabled", True, bool,
        "Run PgBouncer in front of the server.",
    ),
    Setting(
        "pgbouncer_listen_addresses", [], list,
        "Addresses PgBouncer listens on (never '*'); empty: those of postgres_listen_addresses.",
        item_type=str, pattern=r"[A-Za-z0-9.:*-]+",
        validator=lambda v: "PgBouncer never listens on every address" if set(v) & {
            "*", "0.0.0.0", "::"} else None,
    ),
    Setting(
        "pgbouncer_port", 6432, int,
        "TCP port PgBouncer listens on.",
        minimum=1024, maximum=65535,
    ),
    Setting(
        "pgbouncer_pool_mode", "transaction", str,
        "Default pool mode: session, transaction or statement.",
        choices=("session", "transaction", "statement"),
    ),
    Setting(
        "pgbouncer_pool_modes", {}, dict,
        "Per-database pool mode overrides, e.g. {'reports': 'session'}.",
        pattern=r"[a-z_][a-z0-9_]*",
        validator=lambda v: next((f"{db}: pool mode {m!r} is not session, transaction or "
                                  "statement" for db, m in v.items()
                                  if m not in ("session", "transaction", "statement")), None),
    ),
    Setting(
        "pgbouncer_default_pool_size", 20, int,
        "Server connections per database and user pair.",
        minimum=1, maximum=10000,
    ),
    Setting(
        "pgbouncer_min_pool_size", 0, int,
        "Server connections kept open per pool even when idle.",
        minimum=0, maximum=10000,
    ),
    Setting(
        "pgbouncer_reserve_pool_size", 5, int,
        "Extra server connections a pool may open when clients wait too long.",
        minimum=0, maximum=10000,
    ),
    Setting(
        "pgbouncer_max_client_conn", 1000, int,
        "Client connections PgBouncer accepts at once.",
        minimum=1, maximum=100000,
    ),
    Setting(
        "pgbouncer_max_db_connections", 0, int,
        "Server connections per database across its pools; 0 means no limit.",
        minimum=0, maximum=10000,
    ),
    Setting(
        "pgbouncer_admin_users", ["pgbouncer_admin"], list,
        "Console-only users allowed every command on the pgbouncer admin console.",
        item_type=str, pattern=_NAME,
    ),
    Setting(
        "pgbouncer_stats_users", [], list,
        "Console-only users allowed the read-only SHOW commands (health checks).",
        item_type=str, pattern=_NAME,
    ),
    Setting(
        "pgbouncer_auth", "userlist", str,
        "How PgBouncer checks passwords: userlist (verifiers in userlist.txt) or auth_query.",
        choices=("userlist", "auth_query"),
    ),
    Setting(
        "postgres_sql_bundles", {"*": ["baseline"]}, dict,
        "SQL bundles (directories under sql/) per database, in order; '*' is every database.",
        pattern=r"\*|[a-z_][a-z0-9_]*", item_type=list,
        validator=lambda v: _sql_bundles().check_bundles(v),
    ),
    Setting(
        "pginfra_migrate_lock_timeout", "1s", str,
        "Migrations' lock_timeout unless a file SETs its own; timed-out statements retry.",
        pattern=_DURATION, validator=_duration_ms(),
    ),
    Setting(
        "pginfra_migrate_statement_timeout", "30min", str,
        "Migrations' statement_timeout, unless a file SETs its own (0: none).",
        pattern=_DURATION, validator=_duration_ms(),
    ),
    Setting(
        "pginfra_migrate_retries", 5, int,
        "Retries of a migration statement that hit lock_timeout, waits doubling from 0.5 s.",
        minimum=0, maximum=20,
    ),
    Setting(
        "pginfra_migrate_dump", True, bool,
        "Take a pg_dump of a database before applying its pending SQL files.",
    ),
    Setting(
        "pginfra_migrate_dump_dir", "/var/backups/postgresql/pre-migrate", str,
        "Where those dumps go (owner postgres, mode 0700).",
        pattern=_ABS_PATH,
    ),
    Setting(
        "pginfra_migrate_dump_keep", 5, int,
        "Dumps kept per database in pginfra_migrate_dump_dir, newest first (0: all).",
        minimum=0,
    ),
    Setting(
        "pginfra_example_community", False, bool,
        "Load the community example's schema and generated data into database 'community'.",
    ),
    Setting(
        "pginfra_example_community_users", 2000, int,
        "Users the community example generates (each with posts, reactions and stats).",
        minimum=10, maximum=10_000_000,
    ),
    Setting(
        "backup_enabled", True, bool,
        "Install the backup programs, their configuration and /etc/cron.d/pginfra.",
    ),
    Setting(
        "backup_dir", "/var/backups/postgresql/pginfra", str,
        "Local dumps, and base backups of pginfra before pgBackRest (owner postgres, mode 0700).",
        pattern=_ABS_PATH,
    ),
    Setting(
        "backup_pgbackrest_version", "2.45-1", str,
        "pgBackRest's Debian package version, the same on every host (pgBackRest requires it).",
        pattern=r"[0-9][A-Za-z0-9.+~-]{0,40}",
    ),
    Setting(
        "backup_retention_full", 2, int,
        "Full backups kept in the local pgBackRest repository; WAL back to the oldest of them.",
        minimum=1, maximum=100,
    ),
    Setting(
        "backup_retention_diff", 6, int,
        "Differential backups kept in each pgBackRest repository.",
        minimum=1, maximum=100,
    ),
    Setting(
        "backup_compress_type", "zst", str,
        "Compression of pgBackRest backups (WAL segments are pushed with lz4, the fastest).",
        choices=("zst", "lz4"),
    ),
    Setting(
        "backup_process_max", 0, int,
        "pgBackRest processes for backup and restore; 0: half the host's CPUs, at least 2.",
        minimum=0, maximum=64,
    ),
    Setting(
        "backup_from_standby", True, bool,
        "With standbys, copy backups' data files from a standby, not from the primary.",
    ),
    Setting(
        "backup_tls_port", 8432, int,
        "Port of pgBackRest's TLS server between the cluster's hosts (with standbys only).",
        minimum=1024, maximum=65535,
    ),
    Setting(
        "backup_keep_local_dumps", 7, int,
        "Verified dumps kept locally per database.",
        minimum=1, maximum=1000,
    ),
    Setting(
        "backup_s3_bucket", "", str,
        "S3 bucket of the second pgBackRest repository and of dumps; empty: on the host only.",
        pattern=r"([a-z0-9][a-z0-9.-]{1,61}[a-z0-9])?",
    ),
    Setting(
        "backup_s3_prefix", "pginfra", str,
        "Key prefix in the bucket; the primary's name (repository) or host name (dumps) follow.",
        pattern=r"[A-Za-z0-9_.-]{1,100}(/[A-Za-z0-9_.-]{1,100}){0,4}",
    ),
    Setting(
        "backup_s3_region", "us-east-1", str,
        "Region of the bucket.",
        pattern=r"[a-z0-9-]{2,40}",
    ),
    Setting(
        "backup_s3_endpoint_url", "", str,
        "HTTPS endpoint of an S3-compatible store (e.g. https://10.0.0.5:9000); empty for AWS.",
        pattern=r"(https://[A-Za-z0-9.:\[\]-]+/?)?",
    ),
    Setting(
        "backup_s3_ca_file", "", str,
        "CA bundle on the control machine that signs the S3 endpoint; empty: the host's CAs.",
        pattern=r"(/?[^\x00-\x1f]+)?",
    ),
    Setting(
        "backup_s3_sse", "AES256", str,
        "Server-side encryption of dumps: AES256, or aws:kms with backup_s3_kms_key_id.",
        choices=("AES256", "aws:kms"),
    ),
    Setting(
        "backup_s3_kms_key_id", "", str,
        "KMS key id or ARN for aws:kms encryption (dumps and pgBackRest); empty: the default.",
        pattern=r"[A-Za-z0-9:/_-]{0,2048}",
    ),
    Setting(
        "backup_s3_storage_class", "STANDARD", str,
        "Storage class of uploaded dumps.",
        choices=("STANDARD", "STANDARD_IA", "ONEZONE_IA", "INTELLIGENT_TIERING",
                 "GLACIER_IR", "REDUCED_REDUNDANCY"),
    ),
    Setting(
        "backup_s3_request_checksum_calculation", "when_required", str,
        "boto3's request checksums; when_required suits stores that reject CRC checksums.",
        choices=("when_required", "when_supported"),
    ),
    Setting(
        "backup_s3_keep_days", 30, int,
        "Days of point-in-time recovery the S3 repository keeps, and days of dumps in S3.",
        minimum=1, maximum=3650,
    ),
    Setting(
        "backup_schedule_full", "0 3 * * 0", str,
        "Cron schedule of pgBackRest full backups, to every repository (weekly, Sunday 03:00).",
        validator=_check_cron,
    ),
    Setting(
        "backup_schedule_diff", "0 3 * * 1-6", str,
        "Cron schedule of differential backups (default: 03:00 on the other days).",
        validator=_check_cron,
    ),
    Setting(
        "backup_schedule_verify", "30 5 * * *", str,
        "Cron schedule of pgbackrest check and verify, and of the dumps' checks (daily 05:30).",
        validator=_check_cron,
    ),
    Setting(
        "backup_schedule_dump", "0 2 * * *", str,
        "Cron schedule of the logical dumps of every database (default: daily 02:00).",
        validator=_check_cron,
    ),
    Setting(
        "backup_schedule_retention", "0 4 * * *", str,
        "Cron schedule of expiring old backups, dumps and WAL (default: daily 04:00).",
        validator=_check_cron,
    ),
    Setting(
        "backup_schedule_drill", "0 5 * * 6", str,
        "Cron schedule of the restore drill of the newest dumps (default: Saturday 05:00).",
        validator=_check_cron,
    ),
    Setting(
        "health_enabled", True, bool,
        "Install pginfra-health and run it from /etc/cron.d/pginfra on health_schedule.",
    ),
    Setting(
        "health_schedule", "*/5 * * * *", str,
        "Cron schedule of the health check; its results go to /var/log/pginfra/health.log.",
        validator=_check_cron,
    ),
    Setting(
        "health_query_timeout", 5, int,
        "Seconds the health check waits for a connection or any one query before 'unknown'.",
        minimum=1, maximum=300,
    ),
    # The thresholds of pginfra-health: declared once, by the program (name, defaults, meaning,
    # bounds), in pginfra_host/health/config.py.
    *(Setting(f"health_{name}", list(t.default), list,
              f"Warning and critical {t.meaning}.",
              validator=_thresholds(lower_is_worse=t.lower_is_worse, most=t.high))
      for name, t in HEALTH_THRESHOLDS.items()),
    Setting(
        "health_prometheus", False, bool,
        "Install prometheus-postgres-exporter, and node-exporter for the health results.",
    ),
    Setting(
        "health_prometheus_address", "", str,
        "Address both exporters listen on; empty: the first non-loopback listen address.",
        pattern=r"([0-9.]+|[0-9a-fA-F:]+)?",
        validator=lambda v: _ip_problem(v) if v else None,
    ),
    Setting(
        "health_prometheus_postgres_port", 9187, int,
        "Port of prometheus-postgres-exporter.",
        minimum=1024, maximum=65535,
    ),
    Setting(
        "health_prometheus_node_port", 9100, int,
        "Port of prometheus-node-exporter (its textfile collector carries the health results).",
        minimum=1024, maximum=65535,
    ),
    Setting(
        "maintenance_enabled", True, bool,
        "Install pginfra-maintenance and its cron jobs (vacuum, analyze, reindex, MV refresh).",
    ),
    Setting(
        "maintenance_schedule_vacuum", "30 3 * * *", str,
        "Cron schedule of VACUUM and ANALYZE by threshold (default: daily 03:30).",
        validator=_check_cron,
    ),
    Setting(
        "maintenance_schedule_reindex", "30 5 * * 0", str,
        "Cron schedule of REINDEX CONCURRENTLY of bloated indexes (default: Sunday 05:30).",
        validator=_check_cron,
    ),
    Setting(
        "maintenance_schedule_refresh", "*/5 * * * *", str,
        "Cron schedule of the materialized-view refresh queue (default: every 5 minutes).",
        validator=_check_cron,
    ),
    Setting(
        "maintenance_vacuum_min_dead_ratio", 0.2, float,
        "VACUUM a table when dead rows are at least this share of it (and the count below).",
        minimum=0, maximum=1,
    ),
    Setting(
        "maintenance_vacuum_min_dead_tuples", 1000, int,
        "VACUUM a table only when it has at least this many dead rows.",
        minimum=0,
    ),
    Setting(
        "maintenance_analyze_min_mod_ratio", 0.1, float,
        "ANALYZE a table when rows changed since its last analyze are this share of it.",
        minimum=0, maximum=100,
    ),
    Setting(
        "maintenance_analyze_min_mod_tuples", 1000, int,
        "ANALYZE a table only when at least this many rows changed since its last analyze.",
        minimum=0,
    ),
    Setting(
        "maintenance_reindex_min_bloat_ratio", 0.3, float,
        "REINDEX CONCURRENTLY a btree index whose estimated bloat is this share of its size.",
        minimum=0, maximum=1,
    ),
    Setting(
        "maintenance_reindex_min_bloat_mb", 10, int,
        "REINDEX an index only when its estimated bloat is at least this many MB.",
        minimum=0,
    ),
    Setting(
        "maintenance_lock_timeout", "5s", str,
        "lock_timeout of each maintenance statement; a busy table is skipped until next run.",
        pattern=_DURATION, validator=_duration_ms(zero=False),
    ),
    Setting(
        "maintenance_statement_timeout", "2h", str,
        "statement_timeout of each maintenance statement (0: none).",
        pattern=_DURATION, validator=_duration_ms(),
    ),
    Setting(
        "pginfra_apt_cache_time", 3600, int,
        "Seconds an apt package index stays fresh before installing packages refreshes it.",
        minimum=0,
    ),
    Setting(
        "kernel_swappiness", 1, int,
        "vm.swappiness on a VM or a real host (containers skip kernel settings).",
        minimum=0, maximum=100,
    ),
    Setting(
        "kernel_overcommit_memory", 2, int,
        "vm.overcommit_memory: 2 refuses allocations instead of OOM-killing the postmaster.",
        choices=(0, 2),
    ),
    Setting(
        "kernel_overcommit_ratio", 90, int,
        "vm.overcommit_ratio with overcommit 2: percent of RAM (less huge pages) committable.",
        minimum=50, maximum=100,
    ),
    Setting(
        "kernel_nofile", 65536, int,
        "Open files the postgres user and the server may hold (limits.d, LimitNOFILE).",
        minimum=4096, maximum=1048576,
    ),
)

BY_NAME: dict[str, Setting] = {s.name: s for s in SETTINGS}


class Settings:
    """The validated settings of one host, as attributes: ``settings.postgres_port``."""

    def __init__(self, values: Mapping[str, Any], host_name: str = "host"):
        self._values = dict(values)
        self.host_name = host_name  # for messages: every problem names its host
        # This host's place in the inventory's cluster (pginfra.topology): set by
        # load_settings(); None is a server on its own, a primary without standbys.
        self.node = None
        self.cluster: dict = {}
        self.etcd_hosts: dict = {}  # with postgres_ha: etcd's own hosts (not database hosts)

    @property
    def pg_cluster(self) -> tuple[int, str]:
        """(postgres_version, postgres_cluster): what the host layout's paths take."""
        return self.postgres_version, self.postgres_cluster

    @property
    def etcd_only(self) -> bool:
        """Whether this host is one of etcd's own (the inventory's etcd group, not a database
        host): the runbook's steps pass it by, but for etcd in the HA step."""
        return self.node is not None and self.node.role == "etcd"

    @property
    def is_standby(self) -> bool:
        return self.node is not None and self.node.role == "standby"

    @property
    def upstream(self):
        """The Node this standby streams from, or None."""
        return self.cluster.get(self.node.upstream) if self.is_standby else None

    @property
    def runs_backups(self) -> bool:
        """Whether this host gets the backup jobs. Without HA the primary only (a standby's are
        the primary's). With postgres_ha every member: whichever leads now takes the dumps and
        drills, the others log "standby: skipped"; pgBackRest's jobs stay on the repository
        host (``repository_host``)."""
        return self.backup_enabled and (bool(self.postgres_ha) or not self.is_standby)

    @property
    def repository_host(self) -> bool:
        """Whether this host holds pgBackRest's repository 1 and runs its backups, expiry and
        checks: the inventory's primary. With postgres_ha it goes on doing so after a failover
        made it a replica: pgBackRest finds the primary among its pg1..pgN."""
        return self.backup_enabled and not self.is_standby

    @property
    def runs_maintenance(self) -> bool:
        """VACUUM, ANALYZE, REINDEX and refreshes write: on the primary only; with postgres_ha
        on every member, where the job runs only while the member leads."""
        return self.maintenance_enabled and (bool(self.postgres_ha) or not self.is_standby)

    @property
    def runs_bundles(self) -> bool:
        """SQL bundles are applied on the primary; standbys replay them. With postgres_ha every
        member has the runner, and the deploy applies them on the current leader."""
        return bool(self.postgres_sql_bundles) and (bool(self.postgres_ha)
                                                    or not self.is_standby)

    @property
    def replicated(self) -> bool:
        """Whether this host is part of a cluster of more than one server."""
        return len(self.cluster) > 1

    def __getattr__(self, name: str) -> Any:
        try:
            return self._values[name]
        except KeyError:
            raise AttributeError(f"no pginfra setting named {name!r}") from None

    def as_dict(self) -> dict[str, Any]:
        return dict(self._values)

    def __repr__(self) -> str:
        return f"Settings({self._values!r})"


def _suggest(key: str) -> str:
    match = difflib.get_close_matches(key, BY_NAME, n=1, cutoff=0.6)
    return f"; did you mean {match[0]!r}?" if match else ""


def _looks_like_typo(key: str) -> bool:
    return bool(difflib.get_close_matches(key, BY_NAME, n=1, cutoff=0.85))


def problems(data: Mapping[str, Any]) -> list[str]:
    """All problems with one host's data, each as ``key: problem``. Empty when valid."""
    found = []
    for key in sorted(data):
        if key in BY_NAME:
            problem = BY_NAME[key].check(data[key])
            if problem:
                found.append(f"{key}: {problem}")
        elif key in RETIRED:
            found.append(f"{key}: no longer a setting: {RETIRED[key]}")
        elif key.startswith(OWNED_PREFIXES) or _looks_like_typo(key):
            found.append(f"{key}: unknown setting{_suggest(key)}")
    return found


def resolve(data: Mapping[str, Any], host_name: str = "host") -> Settings:
    """Validate ``data`` and return it merged over the defaults.

    >>> resolve({"postgres_port": 5433}).postgres_port
    5433
    """
    found = problems(data)
    if found:
        lines = "\n".join(f"  {host_name}: {p}" for p in found)
        raise SettingsError(f"invalid inventory data, nothing was changed:\n{lines}")
    values = {s.name: _copy(s.default) for s in SETTINGS}
    values.update({k: _copy(v) for k, v in data.items() if k in BY_NAME})
    found = _cross_problems(values)
    if found:
        lines = "\n".join(f"  {host_name}: {p}" for p in found)
        raise SettingsError(f"invalid inventory data, nothing was changed:\n{lines}")
    return Settings(values, host_name)


def _copy(value: Any) -> Any:
    if isinstance(value, dict):
        return dict(value)
    return list(value) if isinstance(value, list | tuple) else value


def load_settings() -> Settings:
    """Validate and return the settings of pyinfra's current host: its data on its own, then
    against the host (``pginfra.preflight``), before any operation."""
    from pyinfra import host

    from pginfra import factcache
    from pginfra.preflight import check_host
    from pginfra.topology import TopologyError, current, current_etcd_only

    factcache.install()  # facts this host's last run read come in one command (preflight)
    settings = resolve(host.data.dict(), host.name)
    settings.cluster = current()
    settings.etcd_hosts = current_etcd_only()
    settings.node = settings.cluster.get(host.name) or settings.etcd_hosts.get(host.name)
    if settings.node is None:
        raise TopologyError(f"{host.name} is not in the inventory's group postgres_servers "
                            "(nor, with postgres_ha, in its group etcd), nothing was changed: "
                            "pginfra deploys to the hosts of those groups")
    check_host(settings)
    return settings


def database_hosts_only(default: Any = None) -> Callable:
    """A runbook step that etcd's own hosts (``Settings.etcd_only``) pass by, returning
    ``default``; on every other host it runs. Put it above ``@deploy``:

    .. code:: python

        @database_hosts_only(default=False)
        @deploy("Create the PostgreSQL cluster")
        def create_cluster(settings): ...
    """
    def wrap(step: Callable) -> Callable:
        @functools.wraps(step)
        def run(settings: Settings, *args: Any, **kwargs: Any) -> Any:
            return default if settings.etcd_only else step(settings, *args, **kwargs)
        return run
    return wrap


def reference(settings: Iterable[Setting] = SETTINGS) -> str:
    """The settings reference, in Markdown."""
    out = [
        "# Settings reference",
        "",
        "Generated from `pginfra/settings.py` by `pginfra settings`; do not edit by hand.",
        "Set any of these as host data or group data in an inventory, or with `--data key=value`.",
        "",
        "| setting | default | type | meaning |",
        "| --- | --- | --- | --- |",
    ]
    for s in settings:
        constraint = ""
        if s.choices is not None:
            constraint = " One of: " + ", ".join(f"`{c}`" for c in s.choices) + "."
        elif s.minimum is not None or s.maximum is not None:
            lo = "" if s.minimum is None else f"{s.minimum} ≤ "
            hi = "" if s.maximum is None else f" ≤ {s.maximum}"
            constraint = f" Range: {lo}value{hi}."
        out.append(f"| `{s.name}` | `{s.default!r}` | {s.type_name} | {s.meaning}{constraint} |")
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    sys.stdout.write(reference())
