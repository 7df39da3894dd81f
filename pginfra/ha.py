"""High availability with Patroni and etcd, planned: etcd's members and their environment file,
Patroni's configuration, the parameters Patroni keeps cluster-wide. Pure functions of the
settings (and of the server parameters pginfra computes anyway), so a setting means the same
with and without HA.

    >>> from pginfra.settings import resolve
    >>> from pginfra.topology import plan
    >>> hosts = {f"db{i}": {"postgres_ha": "patroni",
    ...                     "postgres_listen_addresses": ["localhost", f"10.0.0.{i}"]}
    ...          for i in (1, 2, 3)}
    >>> settings = resolve(hosts["db1"], "db1")
    >>> settings.cluster = plan(hosts, ["db1"]); settings.node = settings.cluster["db1"]
    >>> etcd_endpoints(settings)
    ['10.0.0.1:2379', '10.0.0.2:2379', '10.0.0.3:2379']
    >>> etcd_environment(settings, "db1")["ETCD_INITIAL_CLUSTER"]
    'db1=https://10.0.0.1:2380,db2=https://10.0.0.2:2380,db3=https://10.0.0.3:2380'
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pginfra_host import layout

if TYPE_CHECKING:
    from pginfra.settings import Settings

ETCD_DEFAULT = "/etc/default/etcd"  # the environment file of Debian's etcd.service
ETCD_TLS_DIR = "/etc/etcd/tls"  # etcd:etcd 0700
ETCD_TLS = {kind: f"{ETCD_TLS_DIR}/etcd.{ext}" for kind, ext in
            (("key", "key"), ("cert", "crt"), ("ca", "ca.crt"))}
ETCD_PACKAGES = ("etcd-server", "etcd-client")
PATRONI_DIR = "/etc/patroni"
PATRONI_TLS_DIR = "/etc/patroni/tls"  # postgres 0700
PATRONI_TLS = {kind: f"{PATRONI_TLS_DIR}/patroni.{ext}" for kind, ext in
               (("key", "key"), ("cert", "crt"), ("ca", "ca.crt"))}
ROLE_CHANGED = "/run/postgresql/pginfra-role-changed"  # written by Patroni's callback
# Patroni appends (action, role, scope): they become the file's contents
ROLE_CHANGE_CALLBACK = f"/bin/sh -c 'echo \"$@\" > {ROLE_CHANGED}' pginfra"
ROLE_UNIT = "pginfra-pgbouncer-follows-role"  # .path watches ROLE_CHANGED, .service restarts
REST_USER = "patroni"  # the REST API's user for unsafe methods
REST_SECRET = "patroni_restapi"  # its password, in the secrets source
# What Patroni keeps cluster-wide (its DCS): it passes these to postgres on the command line,
# over whatever a configuration file says; pginfra's values go to the DCS.
DCS_PARAMETERS = ("max_connections", "max_locks_per_transaction", "max_worker_processes",
                  "max_prepared_transactions", "wal_level", "track_commit_timestamp",
                  "max_wal_senders", "max_replication_slots", "wal_log_hints", "hot_standby",
                  "wal_keep_size")


def etcd_members(settings: Settings) -> list:
    """The Nodes that run etcd, in inventory order: database hosts first, then etcd's own."""
    return ([node for node in settings.cluster.values() if node.etcd_member]
            + list(settings.etcd_hosts.values()))


def etcd_data_dir(settings: Settings) -> str:
    return f"/var/lib/etcd/{settings.ha_scope}"


def etcd_endpoints(settings: Settings) -> list[str]:
    return [f"{_host(n.address)}:{settings.ha_etcd_client_port}" for n in etcd_members(settings)]


def etcd_environment(settings: Settings, host_name: str) -> dict[str, str]:
    """/etc/default/etcd: this member on its replication address only, TLS with client
    certificates from pginfra's CA for clients and peers, the v2 API off."""
    me = {n.name: n for n in etcd_members(settings)}[host_name]
    peer = f"https://{_host(me.address)}:{settings.ha_etcd_peer_port}"
    client = f"https://{_host(me.address)}:{settings.ha_etcd_client_port}"
    initial = ",".join(f"{n.name}=https://{_host(n.address)}:{settings.ha_etcd_peer_port}"
                       for n in etcd_members(settings))
    return {
        "ETCD_NAME": host_name,
        "ETCD_DATA_DIR": etcd_data_dir(settings),
        "ETCD_LISTEN_PEER_URLS": peer,
        "ETCD_INITIAL_ADVERTISE_PEER_URLS": peer,
        "ETCD_LISTEN_CLIENT_URLS": client,
        "ETCD_ADVERTISE_CLIENT_URLS": client,
        "ETCD_INITIAL_CLUSTER": initial,
        "ETCD_INITIAL_CLUSTER_STATE": "new",
        "ETCD_INITIAL_CLUSTER_TOKEN": f"pginfra-{settings.ha_scope}",
        "ETCD_CERT_FILE": ETCD_TLS["cert"],
        "ETCD_KEY_FILE": ETCD_TLS["key"],
        "ETCD_TRUSTED_CA_FILE": ETCD_TLS["ca"],
        "ETCD_CLIENT_CERT_AUTH": "true",
        "ETCD_PEER_CERT_FILE": ETCD_TLS["cert"],
        "ETCD_PEER_KEY_FILE": ETCD_TLS["key"],
        "ETCD_PEER_TRUSTED_CA_FILE": ETCD_TLS["ca"],
        "ETCD_PEER_CLIENT_CERT_AUTH": "true",
        "ETCD_ENABLE_V2": "false",
        "ETCD_AUTO_COMPACTION_RETENTION": "1",
    }


def etcdctl_command(settings: Settings, *args: str) -> str:
    """etcdctl (v3 API) against every member, with Patroni's client certificate (etcd's own
    on etcd's own hosts, which have no Patroni)."""
    endpoints = ",".join(f"https://{e}" for e in etcd_endpoints(settings))
    tls = ETCD_TLS if settings.etcd_only else PATRONI_TLS
    return ("ETCDCTL_API=3 etcdctl --command-timeout=5s "
            f"--endpoints={endpoints} --cacert={tls['ca']} "
            f"--cert={tls['cert']} --key={tls['key']} " + " ".join(args))


def rest_url(settings: Settings, host_name: str) -> str:
    """Where a member's Patroni REST API answers (TLS, its replication address)."""
    return f"https://{_host(settings.cluster[host_name].address)}:{settings.ha_rest_port}"


def patroni_name(settings: Settings) -> str:
    """Debian's template instance: patroni@15-main reads /etc/patroni/15-main.yml."""
    return f"{settings.postgres_version}-{settings.postgres_cluster}"


def patroni_config_path(settings: Settings) -> str:
    return f"{PATRONI_DIR}/{patroni_name(settings)}.yml"


def patroni_unit(settings: Settings) -> str:
    return f"patroni@{patroni_name(settings)}"


def dcs_parameters(parameters: dict) -> dict:
    """The cluster-wide subset of the server parameters pginfra computed for this host."""
    out = {name: parameters[name] for name in DCS_PARAMETERS if name in parameters}
    out.setdefault("wal_level", "replica")
    out.setdefault("hot_standby", "on")
    return out


def patroni_config(settings: Settings, host_name: str, parameters: dict,
                   secrets: dict[str, str]) -> dict:
    """/etc/patroni/<version>-<cluster>.yml. ``parameters``: the server parameters pginfra
    computed (the cluster-wide ones seed the DCS); ``secrets``: postgres, the replication user,
    the rewind user and the REST API's passwords."""
    me = settings.cluster[host_name]
    version, cluster = settings.pg_cluster
    address = _host(me.address)
    ssl = {"sslmode": "verify-ca", "sslrootcert": PATRONI_TLS["ca"]}
    listen = ",".join(settings.postgres_listen_addresses)
    return {
        "scope": settings.ha_scope,
        "namespace": "/service/",
        "name": host_name,
        "log": {"level": "INFO"},  # to the journal: Patroni logs no password
        "restapi": {
            "listen": f"{address}:{settings.ha_rest_port}",
            "connect_address": f"{address}:{settings.ha_rest_port}",
            "certfile": PATRONI_TLS["cert"],
            "keyfile": PATRONI_TLS["key"],
            "cafile": PATRONI_TLS["ca"],
            "verify_client": "optional",
            "authentication": {"username": REST_USER, "password": secrets[REST_SECRET]},
        },
        "ctl": {
            "insecure": False,
            "cacert": PATRONI_TLS["ca"],
            "certfile": PATRONI_TLS["cert"],
            "keyfile": PATRONI_TLS["key"],
        },
        "etcd3": {
            "hosts": etcd_endpoints(settings),
            "protocol": "https",
            "cacert": PATRONI_TLS["ca"],
            "cert": PATRONI_TLS["cert"],
            "key": PATRONI_TLS["key"],
        },
        "bootstrap": {
            "dcs": {
                "ttl": settings.ha_ttl,
                "loop_wait": settings.ha_loop_wait,
                "retry_timeout": settings.ha_retry_timeout,
                "maximum_lag_on_failover": settings.ha_maximum_lag_on_failover,
                "synchronous_mode": settings.ha_synchronous_mode,
                "synchronous_mode_strict": settings.ha_synchronous_mode_strict,
                "postgresql": {
                    "use_pg_rewind": True,
                    "use_slots": True,
                    "parameters": dcs_parameters(parameters),
                },
            },
            # Patroni never initialises this cluster (pginfra made it, checksums on); were it
            # ever to, as pginfra would, and the server uses pginfra's pg_hba.conf (hba_file)
            "initdb": ["data-checksums", {"encoding": "UTF8"}],
            "pg_hba": ["local all postgres peer", "host all all 0.0.0.0/0 reject",
                       "host all all ::/0 reject"],
        },
        "postgresql": {
            "listen": f"{listen}:{settings.postgres_port}",
            "connect_address": f"{address}:{settings.postgres_port}",
            "data_dir": layout.data_directory(version, cluster),
            "config_dir": layout.data_directory(version, cluster),
            # Debian's postgresql.conf (data_directory, sockets, conf.d/ with pginfra's tuned
            # file), included by the postgresql.conf Patroni writes in the data directory
            "custom_conf": f"{layout.config_directory(version, cluster)}/postgresql.conf",
            "bin_dir": layout.pg_bin(version, "").rstrip("/"),
            "pgpass": "/var/lib/postgresql/.pgpass.patroni",
            # a new role: PgBouncer's pools cached the old one's in_hot_standby (pgbouncer#859),
            # so a systemd path unit restarts it (root's job; postgres only writes this file)
            **({"callbacks": {"on_role_change": ROLE_CHANGE_CALLBACK}}
               if settings.pgbouncer_enabled else {}),
            "use_unix_socket": True,
            "use_unix_socket_repl": True,  # its own timeline and position (pg_hba: local)
            "authentication": {
                "superuser": {"username": "postgres", "password": secrets["postgres"]},
                "replication": {"username": settings.postgres_replication_user,
                                "password": secrets[settings.postgres_replication_user], **ssl},
                "rewind": {"username": settings.ha_rewind_user,
                           "password": secrets[settings.ha_rewind_user], **ssl},
            },
            "parameters": {
                "hba_file": f"{layout.config_directory(version, cluster)}/pg_hba.conf",
                "ident_file": f"{layout.config_directory(version, cluster)}/pg_ident.conf",
                "unix_socket_directories": layout.DEFAULT_SOCKET_DIR,
            },
            "create_replica_methods": ["basebackup"],
            "basebackup": [{"checkpoint": "fast"}],
            "remove_data_directory_on_rewind_failure": False,
            "remove_data_directory_on_diverged_timelines": False,
        },
        "tags": {"nofailover": False, "noloadbalance": False, "clonefrom": False,
                 "nosync": False},
    }


def _host(address: str) -> str:
    return f"[{address}]" if ":" in address else address


def patroni_state(settings: Settings) -> dict:
    """This host's PatroniCluster fact: {"active": bool, "members": [...]} (inactive without
    postgres_ha)."""
    if not settings.postgres_ha:
        return {"active": False, "members": []}
    from pyinfra import host

    from pginfra.facts import PatroniCluster

    return host.get_fact(PatroniCluster, unit=patroni_unit(settings),
                         config=patroni_config_path(settings))


def leader_now(settings: Settings) -> str | None:
    """The member Patroni reports as leader now (None when Patroni does not run the cluster, or
    has no leader)."""
    state = patroni_state(settings)
    return next((m["Member"] for m in state["members"] if m.get("Role") == "Leader"), None) \
        if state["active"] else None


def writes_here(settings: Settings, host_name: str) -> bool:
    """Whether this run's writing SQL (roles, databases, SQL bundles, the first dump) goes to
    this host: to Patroni's leader when Patroni runs the cluster, wherever a failover put it;
    otherwise, and before Patroni takes over, to the inventory's primary. A Patroni cluster
    with no leader (etcd without quorum, a failover under way) stops the run while it plans,
    before any operation: there is nowhere safe to write."""
    if not patroni_runs_server(settings):
        return not settings.is_standby
    current = leader_now(settings)
    if current is None:
        from pginfra.settings import SettingsError

        raise SettingsError(
            f"{host_name}: Patroni runs cluster {settings.ha_scope!r} but reports no leader "
            "(etcd without quorum, or a failover under way): nothing was changed; run again "
            "when 'patronictl list' shows a leader")
    return current == host_name


def patroni_runs_server(settings: Settings) -> bool:
    """Whether Patroni, not systemd's postgresql@ unit, runs this host's server now (the other
    steps leave starting, stopping, promoting and replication to it)."""
    return patroni_state(settings)["active"]


def health_settings(settings: Settings, host_name: str) -> dict | None:
    """health.json's "ha": where pginfra-health asks Patroni and etcd (None without HA)."""
    from pginfra import vip

    if not settings.postgres_ha:
        return None
    return {"member": host_name, "members": list(settings.cluster),
            "rest_url": rest_url(settings, host_name),
            "etcd_endpoints": [f"https://{e}" for e in etcd_endpoints(settings)],
            "cafile": PATRONI_TLS["ca"], "certfile": PATRONI_TLS["cert"],
            "keyfile": PATRONI_TLS["key"], "synchronous": settings.ha_synchronous_mode,
            "vip": vip.address(settings)}


# Set by the configure step while the run executes: the members whose server waits for a
# restart (pginfra-apply-config left it to Patroni's rolling restart).
PENDING_RESTART: set[str] = set()


def _same(wanted, current) -> bool:
    if isinstance(wanted, bool):
        return str(current).lower() in (("true", "on") if wanted else ("false", "off"))
    return current is not None and str(wanted) == str(current)


def dcs_changes(wanted: dict, current: dict) -> tuple[list[str], list[str], bool]:
    """What ``patronictl edit-config`` must set so the cluster's configuration in etcd holds
    ``wanted`` (Patroni's bootstrap.dcs): (``-s`` KEY=VALUE, ``-p`` NAME=VALUE, whether a
    number shrank, so the leader restarts first). Keys in etcd that pginfra does not set are
    left alone.

        >>> dcs_changes({"ttl": 30, "synchronous_mode": True,
        ...              "postgresql": {"use_slots": True,
        ...                             "parameters": {"max_connections": 300}}},
        ...             {"ttl": 20, "synchronous_mode": True,
        ...              "postgresql": {"use_slots": True,
        ...                             "parameters": {"max_connections": "200"}}})
        (['ttl=30'], ['max_connections=300'], False)
        >>> dcs_changes({"postgresql": {"parameters": {"max_connections": 100}}},
        ...             {"postgresql": {"parameters": {"max_connections": "200"}}})
        ([], ['max_connections=100'], True)
    """
    def text(value) -> str:
        return str(value).lower() if isinstance(value, bool) else str(value)

    current = current or {}
    sets, pgs, shrank = [], [], False
    for key, value in wanted.items():
        if key != "postgresql":
            if not _same(value, current.get(key)):
                sets.append(f"{key}={text(value)}")
            continue
        have = current.get("postgresql") or {}
        for sub, subvalue in value.items():
            if sub != "parameters":
                if not _same(subvalue, have.get(sub)):
                    sets.append(f"postgresql.{sub}={text(subvalue)}")
                continue
            params = have.get("parameters") or {}
            for name, param in subvalue.items():
                if _same(param, params.get(name)):
                    continue
                pgs.append(f"{name}={text(param)}")
                old = params.get(name)
                if str(old).isdigit() and str(param).isdigit() and int(param) < int(old):
                    shrank = True
    return sets, pgs, shrank


def rolling_restart_command(settings: Settings, sets: list[str], pgs: list[str],
                            leader_first: bool) -> str:
    """pginfra-apply-config --rolling-restart, run on the leader: the shared configuration
    first, then the pending restarts one member at a time."""
    import shlex

    return shlex.join([
        layout.program("pginfra-apply-config"), "--rolling-restart",
        patroni_config_path(settings), settings.ha_scope,
        *(a for kv in sets for a in ("--dcs-set", kv)),
        *(a for kv in pgs for a in ("--dcs-pg", kv)),
        "--settle", str(settings.ha_loop_wait + 3), *(["--leader-first"] if leader_first else [])])
