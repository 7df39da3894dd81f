"""pyinfra facts pginfra adds: small, one concern each."""

from __future__ import annotations

import json
import re
import shlex

from pyinfra.api import FactBase


class PostgresClusters(FactBase):
    """
    PostgreSQL clusters on the host, from Debian's ``pg_lsclusters``, keyed ``"VERSION/NAME"``.

    .. code:: python

        {
            "15/main": {
                "version": 15, "name": "main", "port": 5432, "status": "online",
                "owner": "postgres", "data_directory": "/var/lib/postgresql/15/main",
            },
        }
    """

    default = dict

    def requires_command(self, *args, **kwargs) -> str:
        return "pg_lsclusters"

    def command(self) -> str:
        return "pg_lsclusters --no-header"

    def process(self, output):
        clusters = {}
        for line in output:
            fields = line.split()
            if len(fields) < 6:
                continue
            version, name, port, status, owner, data_directory = fields[:6]
            clusters[f"{version}/{name}"] = {
                "version": int(version),
                "name": name,
                "port": int(port),
                "status": status,
                "owner": owner,
                "data_directory": data_directory,
            }
        return clusters


def psql_command(sql: str, port: int, database: str = "postgres") -> str:
    """A shell command running ``sql`` as the postgres OS user; prints nothing if the server
    cannot be reached (a host being provisioned for the first time)."""
    return (
        f"runuser -u postgres -- psql -XAtq -p {int(port)} -d {shlex.quote(database)} "
        f"-c {shlex.quote(sql)} 2>/dev/null || true"
    )


class _JsonQuery(FactBase):
    abstract = True
    sql = ""

    def requires_command(self, *args, **kwargs) -> str:
        return "psql"

    def process(self, output):
        text = "\n".join(output).strip()
        return json.loads(text) if text else None


class PostgresRoles(_JsonQuery):
    """
    Roles other than the pg_* ones, keyed by name, with their attributes, SCRAM verifier and
    memberships. None when the server does not answer.

    .. code:: python

        {"app": {"login": True, "superuser": False, "createdb": False, "createrole": False,
                 "inherit": True, "connection_limit": -1, "password": "SCRAM-SHA-256$...",
                 "member_of": ["app_rw"]}}
    """

    sql = (
        "SELECT coalesce(json_object_agg(r.rolname, json_build_object("
        "'login', r.rolcanlogin, 'superuser', r.rolsuper, 'createdb', r.rolcreatedb, "
        "'createrole', r.rolcreaterole, 'inherit', r.rolinherit, "
        "'replication', r.rolreplication, 'bypassrls', r.rolbypassrls, "
        "'connection_limit', r.rolconnlimit, 'password', r.rolpassword, "
        "'member_of', coalesce((SELECT json_agg(g.rolname ORDER BY g.rolname) "
        "FROM pg_auth_members m JOIN pg_roles g ON g.oid = m.roleid WHERE m.member = r.oid), "
        "'[]'::json))), '{}'::json) FROM pg_authid r WHERE r.rolname !~ '^pg_'"
    )

    def command(self, port: int = 5432) -> str:
        return psql_command(self.sql, port)


class PostgresDatabases(_JsonQuery):
    """
    Databases (not templates) with their owner and the roles holding CONNECT (``PUBLIC`` for
    everyone).

    .. code:: python

        {"app": {"owner": "app_owner", "connect": ["app_owner", "app"]}}
    """

    sql = (
        "SELECT coalesce(json_object_agg(d.datname, json_build_object("
        "'owner', pg_get_userbyid(d.datdba), "
        "'connect', coalesce((SELECT json_agg(CASE WHEN a.grantee = 0 THEN 'PUBLIC' "
        "ELSE pg_get_userbyid(a.grantee) END) "
        "FROM aclexplode(coalesce(d.datacl, acldefault('d', d.datdba))) a "
        "WHERE a.privilege_type = 'CONNECT'), '[]'::json))), '{}'::json) "
        "FROM pg_database d WHERE NOT d.datistemplate"
    )

    def command(self, port: int = 5432) -> str:
        return psql_command(self.sql, port)


class PostgresDatabaseState(_JsonQuery):
    """
    Inside one database: whether PUBLIC may create in schema public, who has USAGE on it, the
    extensions, and who may read pg_stat_statements.

    .. code:: python

        {"public_create": False, "usage_roles": ["pg_database_owner", "app"],
         "extensions": ["plpgsql", "pg_stat_statements"],
         "stats_public": False, "stats_granted": True}
    """

    sql = (
        "SELECT json_build_object("
        "'public_create', coalesce((SELECT bool_or(a.grantee = 0) FROM pg_namespace n, "
        "aclexplode(coalesce(n.nspacl, acldefault('n', n.nspowner))) a "
        "WHERE n.nspname = 'public' AND a.privilege_type = 'CREATE'), false), "
        "'usage_roles', coalesce((SELECT json_agg(CASE a.grantee WHEN 0 THEN 'PUBLIC' "
        "ELSE a.grantee::regrole::text END ORDER BY a.grantee) FROM pg_namespace n, "
        "aclexplode(coalesce(n.nspacl, acldefault('n', n.nspowner))) a "
        "WHERE n.nspname = 'public' AND a.privilege_type = 'USAGE'), '[]'), "
        "'extensions', (SELECT json_agg(extname ORDER BY extname) FROM pg_extension), "
        "'stats_public', coalesce((SELECT bool_or(a.grantee = 0) FROM pg_class c, "
        "aclexplode(c.relacl) a WHERE c.relname IN ('pg_stat_statements', "
        "'pg_stat_statements_info') AND a.privilege_type = 'SELECT'), false), "
        "'stats_granted', (SELECT count(*) = 2 FROM pg_class c, aclexplode(c.relacl) a "
        "WHERE c.relname IN ('pg_stat_statements', 'pg_stat_statements_info') "
        "AND a.grantee = 'pg_read_all_stats'::regrole AND a.privilege_type = 'SELECT'), "
        "'auth_function', (SELECT json_build_object('secdef', p.prosecdef, "
        "'config', p.proconfig, 'public_execute', coalesce((SELECT bool_or(a.grantee = 0) "
        "FROM aclexplode(coalesce(p.proacl, acldefault('f', p.proowner))) a "
        "WHERE a.privilege_type = 'EXECUTE'), false)) "
        "FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace "
        "WHERE n.nspname = 'pgbouncer' AND p.proname = 'get_auth'))"
    )

    def command(self, database: str, port: int = 5432) -> str:
        return psql_command(self.sql, port, database)


class PostgresClusterData(_JsonQuery):
    """
    Whether a running cluster has data checksums, and whether it holds any user data: a
    database besides postgres and the templates, a table outside the system schemas of
    postgres, or a role of its own. None when the server does not answer.

    .. code:: python

        {"checksums": False, "user_databases": 0, "user_tables": 0, "user_roles": 0}
    """

    sql = (
        "SELECT json_build_object('checksums', current_setting('data_checksums') = 'on', "
        "'user_databases', (SELECT count(*) FROM pg_database WHERE NOT datistemplate "
        "AND datname <> 'postgres'), "
        "'user_tables', (SELECT count(*) FROM pg_class c JOIN pg_namespace n "
        "ON n.oid = c.relnamespace WHERE c.relkind IN ('r', 'p', 'm') "
        "AND n.nspname NOT IN ('pg_catalog', 'information_schema') "
        "AND n.nspname NOT LIKE 'pg_toast%'), "
        "'user_roles', (SELECT count(*) FROM pg_roles WHERE rolname !~ '^pg_' "
        "AND rolname <> 'postgres'))"
    )

    def command(self, port: int = 5432) -> str:
        return psql_command(self.sql, port)


class MigrationHistory(FactBase):
    """
    The files ``pginfra-migrate`` has applied to one database, from ``pginfra.migrations``;
    None when the database or the history table does not exist yet.

    .. code:: python

        [{"bundle": "baseline", "name": "001_schema.sql", "checksum": "9f2c..."}]
    """

    def requires_command(self, *args, **kwargs) -> str:
        return "psql"

    def command(self, database: str, port: int = 5432) -> str:
        exists = psql_command("SELECT to_regclass('pginfra.migrations') IS NOT NULL", port,
                              database)
        rows = psql_command(
            "SELECT coalesce(json_agg(json_build_object('bundle', bundle, 'name', name, "
            "'checksum', checksum) ORDER BY bundle, name), '[]'::json) FROM pginfra.migrations",
            port, database)
        return f'if [ "$({exists})" = t ]; then {rows}; fi'

    def process(self, output):
        text = "\n".join(output).strip()
        return json.loads(text) if text else None


class DatabaseHasTable(FactBase):
    """
    Whether ``table`` (a name search_path finds, or schema.name) exists in a database; False
    when the database does not answer.

    .. code:: python

        True
    """

    def requires_command(self, *args, **kwargs) -> str:
        return "psql"

    def command(self, database: str, table: str, port: int = 5432) -> str:
        if not re.fullmatch(r"[a-z_][a-z0-9_]*(\.[a-z_][a-z0-9_]*)?", table):
            raise ValueError(f"not a table name: {table!r}")
        return psql_command(f"SELECT to_regclass('{table}') IS NOT NULL", port, database)

    def process(self, output):
        return "\n".join(output).strip() == "t"


class PathStates(FactBase):
    """
    Where each path resolves, and, when it exists, its type and owner: what pginfra checks
    before it makes a directory and hands it to postgres.

    .. code:: python

        {"/srv/wal": {"resolved": "/srv/wal", "exists": True, "type": "directory",
                      "owner": "postgres"},
         "/srv/new": {"resolved": "/srv/new", "exists": False, "type": None, "owner": None}}
    """

    default = dict

    def command(self, paths: tuple[str, ...]) -> str:
        lines = []
        for path in paths:
            q = shlex.quote(path)
            lines.append(
                f'printf "%s\\t%s\\t" {q} "$(realpath -m -- {q})"; '
                f'if [ -e {q} ] || [ -L {q} ]; then stat --printf "%U\\t%F\\n" -- {q}; '
                'else printf -- "-\\t-\\n"; fi')
        return "; ".join(lines) or "true"

    def process(self, output):
        states = {}
        for line in output:
            fields = line.split("\t")
            if len(fields) != 4:
                continue
            path, resolved, owner, kind = fields
            exists = kind != "-"
            states[path] = {"resolved": resolved, "exists": exists,
                            "type": kind if exists else None, "owner": owner if exists else None}
        return states


class HostAddresses(FactBase):
    """
    The IP addresses of the host's interfaces (``ip -o addr``), without prefix lengths.

    .. code:: python

        ["127.0.0.1", "10.77.0.10", "::1"]
    """

    default = list

    def requires_command(self, *args, **kwargs) -> str:
        return "ip"

    def command(self) -> str:
        return "ip -o addr show"

    def process(self, output):
        addresses = []
        for line in output:
            fields = line.split()
            if len(fields) >= 4 and fields[2] in ("inet", "inet6"):
                addresses.append(fields[3].split("/")[0])
        return addresses


class ResolvedNames(FactBase):
    """
    The addresses each host name resolves to on the host (``getent ahosts``).

    .. code:: python

        {"db1.internal": ["10.0.0.5"], "nowhere.invalid": []}
    """

    default = dict

    def command(self, names: tuple[str, ...]) -> str:
        return "; ".join(
            f"for a in $(getent ahosts {shlex.quote(n)} | cut -d' ' -f1 | sort -u); do "
            f"printf '%s\\t%s\\n' {shlex.quote(n)} \"$a\"; done; printf '%s\\t\\n' "
            f"{shlex.quote(n)}" for n in names) or "true"

    def process(self, output):
        found: dict[str, list[str]] = {}
        for line in output:
            name, _, address = line.partition("\t")
            found.setdefault(name, [])
            if address:
                found[name].append(address)
        return found


class AptSecuritySources(FactBase):
    """
    The lines of the host's APT sources (one-line and deb822 formats) that name a security
    archive: empty when the host gets no security updates.

    .. code:: python

        ["deb http://deb.debian.org/debian-security bookworm-security main"]
    """

    default = list

    def command(self) -> str:
        return ("cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list "
                "/etc/apt/sources.list.d/*.sources 2>/dev/null | grep -v '^[[:space:]]*#' "
                "| grep -i 'security' || true")

    def process(self, output):
        return [line.strip() for line in output if line.strip()]


# The deploy lock: held for as long as the SSH connection of the run that took it lives.
DEPLOY_LOCK = "/run/pginfra/deploy.lock"
_TAKE_LOCK = r"""
lock=%(lock)s
mkdir -p "$(dirname "$lock")" && chmod 700 "$(dirname "$lock")"
field() { sed 's/.*) //' "/proc/$1/stat" 2>/dev/null | cut -d' ' -f"$2"; }
p=$$; session=""
while [ -n "$p" ] && [ "$p" -gt 1 ]; do
  case "$(cat "/proc/$p/comm" 2>/dev/null)" in sshd*|pyinfra) session=$p; break ;; esac
  p=$(field "$p" 2)
done
[ -n "$session" ] || session=$PPID
me="$session $(field "$session" 20)"
exec 9>>"$lock.guard"
flock 9
if [ -s "$lock" ]; then
  read -r pid start info < "$lock"
  if [ "$pid $start" != "$me" ] && [ "$(field "$pid" 20)" = "$start" ]; then
    echo "held $info"; exit 0
  fi
fi
printf '%%s %%s\n' "$me" %(info)s > "$lock.tmp" && mv "$lock.tmp" "$lock"
echo "taken"
"""


class DeployLock(FactBase):
    """
    Takes the host's deploy lock for this run, or reports who holds it. The lock belongs to
    the process that carries this run's commands on the host (the SSH session, or pyinfra for
    ``@local``): it is held until that connection ends, and a lock whose process is gone (a
    finished or killed run) is simply taken. A fact, not an operation, so that it is taken
    before anything is read to plan the run, and a run that changes nothing reports no change.

    .. code:: python

        {"state": "taken"}            # or {"state": "held", "by": "run ... since ..."}
    """

    def command(self, info: str) -> str:
        return _TAKE_LOCK % {"lock": shlex.quote(DEPLOY_LOCK), "info": shlex.quote(info)}

    def process(self, output):
        result: dict = {}
        for line in output:
            word, _, rest = line.partition(" ")
            if word == "held":
                result = {"state": "held", "by": rest}
            elif word == "taken":
                result["state"] = "taken"
        return result


class Listeners(FactBase):
    """
    The TCP addresses and ports something listens on (``ss -Hltn``), as ``address:port``
    strings, IPv6 addresses without brackets.

    .. code:: python

        ["127.0.0.1:5432", "10.77.0.10:5432", "*:22", "::1:5432"]
    """

    default = list

    def requires_command(self, *args, **kwargs) -> str:
        return "ss"

    def command(self) -> str:
        return "ss -Hltn"

    def process(self, output):
        found = []
        for line in output:
            fields = line.split()
            if len(fields) >= 4:
                address, _, port = fields[3].rpartition(":")
                found.append(f"{address.strip('[]').split('%')[0]}:{port}")
        return found


class PostgresListenAddresses(FactBase):
    """
    ``listen_addresses`` of the running server (empty when it does not answer).

    .. code:: python

        ["localhost", "10.77.0.10"]
    """

    default = list

    def requires_command(self, *args, **kwargs) -> str:
        return "psql"

    def command(self, port: int = 5432) -> str:
        return psql_command("SHOW listen_addresses", port)

    def process(self, output):
        return [a.strip() for line in output for a in line.split(",") if a.strip()]


class ReplicationState(FactBase):
    """
    Where a server stands in replication: in recovery or not, its system identifier and
    timeline, the WAL position it has reached, its WAL receiver (a standby), its physical
    replication slots, whether it holds user data, and whether its data directory has a
    ``standby.signal``. ``server`` is None when the server does not answer.

    .. code:: python

        {"standby_signal": True,
         "server": {"in_recovery": True, "system_identifier": "7301...", "timeline": 1,
                    "lsn": "0/3000148", "user_databases": 2, "user_tables": 0,
                    "user_roles": 3,
                    "receiver": {"status": "streaming", "sender_host": "10.77.0.10",
                                 "sender_port": 5432, "slot_name": "pg2"},
                    "slots": [{"name": "pg3", "active": True, "wal_status": "reserved"}]}}
    """

    sql = (
        "SELECT json_build_object("
        "'in_recovery', pg_is_in_recovery(), "
        "'system_identifier', (SELECT system_identifier::text FROM pg_control_system()), "
        "'timeline', (SELECT timeline_id FROM pg_control_checkpoint()), "
        "'lsn', (CASE WHEN pg_is_in_recovery() THEN greatest(pg_last_wal_receive_lsn(), "
        "pg_last_wal_replay_lsn()) ELSE pg_current_wal_lsn() END)::text, "
        "'user_databases', (SELECT count(*) FROM pg_database WHERE NOT datistemplate "
        "AND datname <> 'postgres'), "
        "'user_tables', (SELECT count(*) FROM pg_class c JOIN pg_namespace n "
        "ON n.oid = c.relnamespace WHERE c.relkind IN ('r', 'p', 'm') "
        "AND n.nspname NOT IN ('pg_catalog', 'information_schema') "
        "AND n.nspname NOT LIKE 'pg_toast%'), "
        "'user_roles', (SELECT count(*) FROM pg_roles WHERE rolname !~ '^pg_' "
        "AND rolname <> 'postgres'), "
        "'receiver', (SELECT json_build_object('status', status, 'sender_host', sender_host, "
        "'sender_port', sender_port, 'slot_name', slot_name) FROM pg_stat_wal_receiver), "
        "'slots', coalesce((SELECT json_agg(json_build_object('name', slot_name, "
        "'active', active, 'wal_status', wal_status) ORDER BY slot_name) "
        "FROM pg_replication_slots WHERE slot_type = 'physical'), '[]'))"
    )

    def requires_command(self, *args, **kwargs) -> str:
        return "psql"

    def command(self, data_directory: str, port: int = 5432) -> str:
        signal = shlex.quote(f"{data_directory}/standby.signal")
        return (f"echo \"signal=$(test -e {signal} && echo yes)\"; "
                + psql_command(self.sql, port))

    def process(self, output):
        lines = [line for line in output if line.strip()]
        signal = bool(lines) and lines[0] == "signal=yes"
        text = "\n".join(lines[1:]).strip()
        return {"standby_signal": signal, "server": json.loads(text) if text else None}


class PgBackRestRepos(FactBase):
    """
    The state of a pgBackRest stanza in each repository this host's configuration names, from
    ``pgbackrest info --output=json`` run as postgres; empty when pgBackRest, its configuration
    or the stanza's answer is missing. ``status`` is pgBackRest's code (0 ok, 1 missing stanza
    path, 2 no valid backups, 3 missing stanza data, 99 other: unreachable, wrong passphrase).

    .. code:: python

        {1: {"status": 0, "message": "ok", "backups": 3},
         2: {"status": 1, "message": "missing stanza path", "backups": 0}}
    """

    default = dict

    def requires_command(self, *args, **kwargs) -> str:
        return "pgbackrest"

    def command(self, stanza: str) -> str:
        return ("test -e /etc/pgbackrest/pgbackrest.conf && runuser -u postgres -- pgbackrest "
                f"--stanza={shlex.quote(stanza)} --io-timeout=10 --output=json info "
                "2>/dev/null || true")

    def process(self, output):
        text = "\n".join(output).strip()
        try:
            stanzas = json.loads(text) if text else []
        except ValueError:
            return {}
        if not stanzas:
            return {}
        found = {}
        for repo in stanzas[0].get("repo", []):
            found[repo["key"]] = {"status": repo["status"]["code"],
                                  "message": repo["status"]["message"], "backups": 0}
        for backup in stanzas[0].get("backup", []):
            key = backup.get("database", {}).get("repo-key")
            if key in found:
                found[key]["backups"] += 1
        return found


class PythonSitePackages(FactBase):
    """
    Where the host's own ``python3`` finds locally installed packages: the first of
    ``site.getsitepackages()`` (Debian: ``/usr/local/lib/python3.<minor>/dist-packages``, which
    no Debian package writes to). The host programs' package goes there.

    .. code:: python

        "/usr/local/lib/python3.11/dist-packages"
    """

    def requires_command(self, *args, **kwargs) -> str:
        return "python3"

    def command(self) -> str:
        return "python3 -c 'import site; print(site.getsitepackages()[0])'"

    def process(self, output):
        return "\n".join(output).strip() or None


class PatroniCluster(FactBase):
    """
    Whether this host's Patroni runs (its unit ``patroni@VERSION-CLUSTER``), and the cluster as
    ``patronictl list -f json`` shows it from here; ``members`` is empty when Patroni is not
    configured or etcd does not answer.

    .. code:: python

        {"active": True,
         "members": [{"Member": "pg1", "Host": "10.77.0.10", "Role": "Leader",
                      "State": "running", "TL": 1},
                     {"Member": "pg2", "Host": "10.77.0.11", "Role": "Replica",
                      "State": "streaming", "TL": 1, "Lag in MB": 0}]}
    """

    def command(self, unit: str, config: str) -> str:
        quoted = shlex.quote(config)
        return (f"echo \"active=$(systemctl is-active {shlex.quote(unit)} 2>/dev/null)\"; "
                f"test -f {quoted} && command -v patronictl >/dev/null && "
                f"timeout 20 runuser -u postgres -- patronictl -c {quoted} list -f json "
                "2>/dev/null || true")

    def process(self, output):
        lines = [line for line in output if line.strip()]
        active = bool(lines) and lines[0] == "active=active"
        text = "\n".join(lines[1:]).strip()
        try:
            members = json.loads(text) if text else []
        except ValueError:
            members = []
        return {"active": active, "members": members if isinstance(members, list) else []}


class PatroniDynamicConfig(FactBase):
    """
    The cluster's shared configuration in etcd (``patronictl show-config``), or {} when Patroni
    is not configured here or etcd does not answer.

    .. code:: python

        {"ttl": 30, "loop_wait": 10, "postgresql": {"parameters": {"max_connections": "200"}}}
    """

    def command(self, config: str) -> str:
        quoted = shlex.quote(config)
        return (f"test -f {quoted} && command -v patronictl >/dev/null && "
                f"timeout 20 runuser -u postgres -- patronictl -c {quoted} show-config "
                "2>/dev/null || true")

    def process(self, output):
        import yaml

        try:
            found = yaml.safe_load("\n".join(output)) if output else {}
        except yaml.YAMLError:
            return {}
        return found if isinstance(found, dict) else {}


class Container(FactBase):
    """
    The container technology the host runs in (``systemd-detect-virt --container``), or "" on a
    VM or a real machine: a container shares its machine's kernel and its kernel settings.

    .. code:: python

        "systemd-nspawn"
    """

    default = str

    def command(self) -> str:
        return "systemd-detect-virt --container 2>/dev/null || true"

    def process(self, output):
        found = output[0].strip() if output else ""
        return "" if found in ("", "none") else found


class MemInfo(FactBase):
    """
    ``/proc/meminfo`` in bytes (the counts, such as ``HugePages_Total``, as they are).

    .. code:: python

        {"MemTotal": 2079014912, "SwapTotal": 0, "Committed_AS": 512000000,
         "HugePages_Total": 0, "Hugepagesize": 2097152}
    """

    default = dict

    def command(self) -> str:
        return "cat /proc/meminfo"

    def process(self, output):
        found = {}
        for line in output:
            key, _, rest = line.partition(":")
            fields = rest.split()
            if not fields or not fields[0].isdigit():
                continue
            found[key.strip()] = int(fields[0]) * (1024 if fields[1:] == ["kB"] else 1)
        return found


class BlockDevice(FactBase):
    """
    A block device and what is on it: its type, where it and its partitions are mounted
    (``lsblk``), its file system and UUID (``blkid -p``, which reads the device itself, not
    udev's database), any other signature (``wipefs``); {} when the path is not a block device.

    .. code:: python

        {"path": "/dev/vdb", "type": "disk", "fstype": "ext4", "uuid": "0b6...",
         "mountpoints": ["/var/lib/postgresql/wal-archive"], "children": 0, "signatures": ""}
    """

    default = dict

    def requires_command(self, *args, **kwargs) -> str:
        return "lsblk"

    def command(self, device: str) -> str:
        q = shlex.quote(device)
        return (f"test -b {q} || exit 0; "
                f"lsblk --json --paths --output NAME,TYPE,MOUNTPOINTS {q} | tr -d '\\n'; echo; "
                f"blkid -p -o export {q} | sed 's/^/blkid:/'; "
                f"echo \"signatures=$(wipefs --no-act --noheadings --output TYPE {q} "
                "2>/dev/null | tr '\\n' ' ')\"")

    def process(self, output):
        if not output:
            return {}
        try:
            devices = json.loads(output[0]).get("blockdevices") or []
        except ValueError:
            return {}
        if not devices:
            return {}
        probed = dict(line[len("blkid:"):].partition("=")[::2] for line in output[1:]
                      if line.startswith("blkid:"))
        signatures = next((line.partition("=")[2].strip() for line in output
                           if line.startswith("signatures=")), "")
        found = devices[0]
        mountpoints = [m for m in found.get("mountpoints") or [] if m]
        children = found.get("children") or []
        for child in children:
            mountpoints += [m for m in child.get("mountpoints") or [] if m]
        return {"path": found.get("name"), "type": found.get("type"),
                "fstype": probed.get("TYPE", ""),
                "uuid": probed.get("UUID", ""), "mountpoints": mountpoints,
                "children": len(children), "signatures": signatures}


class Mountpoint(FactBase):
    """
    What is mounted on a directory, its ``/etc/fstab`` entry, its owner and mode, and how many
    entries it holds (``lost+found`` aside); {} when it does not exist.

    .. code:: python

        {"source": "/dev/vdb", "fstab": "UUID=0b6... ext4 defaults,noatime,nofail",
         "owner": "postgres", "mode": "700", "entries": 12}
    """

    default = dict

    def command(self, path: str, fstab: str = "/etc/fstab") -> str:
        q = shlex.quote(path)
        return (f"test -d {q} || exit 0; "
                "echo \"source=$(findmnt --noheadings --output SOURCE "
                f"--mountpoint {q} || true)\"; "
                f"echo \"fstab=$(awk -v d={q} '$1 !~ /^#/ && $2 == d {{print $1, $3, $4}}' "
                f"{shlex.quote(fstab)} 2>/dev/null | tail -n 1)\"; "
                f"echo \"stat=$(stat -c '%U %a' -- {q})\"; "
                f"echo \"entries=$(find {q} -mindepth 1 -maxdepth 1 ! -name lost+found | wc -l)\"")

    def process(self, output):
        values = dict(line.partition("=")[::2] for line in output if "=" in line)
        if "stat" not in values:
            return {}
        owner, _, mode = values["stat"].partition(" ")
        return {"source": values.get("source", "").strip(), "fstab": values.get("fstab", ""),
                "owner": owner, "mode": mode, "entries": int(values.get("entries") or 0)}
