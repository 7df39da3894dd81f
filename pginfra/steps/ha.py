"""Step: high availability. etcd on the cluster's hosts (TLS, client certificates), then
Patroni takes over the server this runbook built: first on the primary, which becomes the
leader with its data, then on each standby, which stays the replica it is. From then on
Patroni starts, stops, promotes and rewinds PostgreSQL."""

from __future__ import annotations

import io
import shlex

import yaml
from pyinfra import host
from pyinfra.api import deploy
from pyinfra.facts.deb import DebPackages
from pyinfra.facts.hardware import Cpus, Memory
from pyinfra.operations import apt, files, server, systemd
from pyinfra.operations.util import any_changed

from pginfra import ha, vip
from pginfra.facts import PatroniCluster, PatroniDynamicConfig, PostgresRoles
from pginfra.roles import ident, literal, psql_stdin, quiet_sql, wanted_verifiers
from pginfra.secrets import password_for, require_strong_password
from pginfra.server_config import cluster_floor, server_parameters
from pginfra.settings import Settings, SettingsError
from pginfra.templating import render_io
from pginfra.tuning import MB
from pginfra_host import layout

DROPIN = "/etc/systemd/system/patroni@.service.d/pginfra.conf"
ETCD_DROPIN = "/etc/systemd/system/etcd.service.d/pginfra.conf"
WAIT = 180  # seconds a takeover waits for the leader, or a replica for streaming
REWIND_FUNCTIONS = ("pg_catalog.pg_ls_dir(text, boolean, boolean)",
                    "pg_catalog.pg_stat_file(text, boolean)",
                    "pg_catalog.pg_read_binary_file(text)",
                    "pg_catalog.pg_read_binary_file(text, bigint, bigint, boolean)")


def secrets(settings: Settings, host_name: str) -> dict[str, str]:
    """Every password Patroni's configuration holds, from the secrets source; a missing or weak
    one stops the run before any operation."""
    out = {}
    for name in ("postgres", settings.postgres_replication_user, settings.ha_rewind_user):
        out[name] = require_strong_password(name, host_name, settings.postgres_password_min_length)
    rest = password_for(ha.REST_SECRET)
    if not rest or len(rest) < settings.postgres_password_min_length:
        raise SettingsError(
            f"{host_name}: the secrets source has no {ha.REST_SECRET!r} of at least "
            f"{settings.postgres_password_min_length} characters: Patroni's REST API asks it "
            "for every change (switchover, restart, configuration); nothing was changed")
    out[ha.REST_SECRET] = rest
    return out


def rewind_role_sql(settings: Settings, password: str, roles: dict) -> str:
    """The pg_rewind role on the leader: LOGIN, nothing else but the functions pg_rewind reads
    files with and CHECKPOINT (pg_checkpoint); '' when it is already so."""
    name = settings.ha_rewind_user
    verifier = wanted_verifiers({name: password}, roles)[name]
    have = roles.get(name)
    if have and have.get("password") == verifier:
        return ""
    statements = []
    if have is None:
        statements.append(f"CREATE ROLE {ident(name)} LOGIN")
        statements += [f"GRANT EXECUTE ON FUNCTION {f} TO {ident(name)}"
                       for f in REWIND_FUNCTIONS]
        statements.append(f"GRANT pg_checkpoint TO {ident(name)}")
    statements.append(f"ALTER ROLE {ident(name)} LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE "
                      f"NOREPLICATION NOBYPASSRLS PASSWORD {literal(verifier)}")
    return quiet_sql(statements)


@deploy("High availability (Patroni, etcd)")
def run_ha(settings: Settings, new_cluster: bool = False):
    """
    With ``postgres_ha: patroni``: etcd on its members (the database hosts, or the inventory's
    group etcd, which may hold hosts of its own: they get etcd and nothing else), TLS between
    them and for Patroni;
    Patroni's configuration (the same parameters as postgresql-production.conf; the
    cluster-wide ones seeded into its DCS); the pg_rewind role; then Patroni takes over the
    running server, the primary first.

    .. code:: python

        run_ha(load_settings())
    """
    if not settings.postgres_ha:
        return
    passwords = {} if settings.etcd_only else secrets(settings, host.name)  # may refuse
    _certificates(settings)
    if settings.node.etcd_member:
        _etcd(settings)  # called here by every member, so they install etcd together
    if settings.etcd_only:  # one of etcd's own hosts: nothing else
        return
    state = host.get_fact(PatroniCluster, unit=ha.patroni_unit(settings),
                          config=ha.patroni_config_path(settings))
    _nonlocal_bind(settings)
    config, wanted = _patroni(settings, passwords)
    _rewind_role(settings, passwords, new_cluster)
    _pgbouncer_follows_role(settings)
    _takeover(settings, state)
    if state["active"]:  # Patroni reads its file again on SIGHUP (its unit's reload)
        systemd.service(name="Patroni reloads its changed configuration",
                        service=ha.patroni_unit(settings), reloaded=True,
                        _if=config.did_change)
        _shared_config_and_restarts(settings, state, wanted["bootstrap"]["dcs"])


def _shared_config_and_restarts(settings: Settings, state: dict, wanted: dict) -> None:
    """On the leader: the settings Patroni keeps in etcd (TTL, synchronous mode, the cluster-wide
    parameters...) changed through patronictl edit-config, never behind its back; then every
    member whose server waits for a restart (a changed parameter, here or from the configure
    step) is restarted through Patroni, one at a time, replicas first."""
    current = host.get_fact(PatroniDynamicConfig, config=ha.patroni_config_path(settings))
    sets, pgs, shrank = ha.dcs_changes(wanted, current) if current else ([], [], False)
    leads = ha.writes_here(settings, host.name)
    # a restart left pending (a run cut short, a member that was down): this run finishes it
    waiting = any(m.get("Pending restart") for m in state["members"])
    server.shell(  # one name on every host: pyinfra reports an operation by its first name
        name="Patroni: the cluster's shared configuration (patronictl edit-config), then "
             "pending restarts one member at a time, replicas first",
        commands=[ha.rolling_restart_command(settings, sets, pgs, shrank)],
        _if=lambda: leads and bool(sets or pgs or ha.PENDING_RESTART or waiting))


def _certificates(settings: Settings) -> None:
    from pginfra.ca import ensure_ca, ensure_server_cert

    _, ca_cert = ensure_ca()
    names = [settings.node.address, host.name]
    key, cert = ensure_server_cert(host.name, [settings.node.address], names, name="ha",
                                   client=True)
    if settings.node.etcd_member:
        server.group(name="Group etcd", group="etcd", system=True)
        server.user(name="User etcd (the package's, made first so its files can be)",
                    user="etcd", group="etcd", system=True, home="/var/lib/etcd",
                    shell="/usr/sbin/nologin", create_home=False)
    for directory, owner, tls, wanted in (
            ("/etc/etcd", "etcd", ha.ETCD_TLS, settings.node.etcd_member),
            (ha.PATRONI_DIR, "postgres", ha.PATRONI_TLS, not settings.etcd_only)):
        if not wanted:
            continue
        files.directory(name=f"Directory {directory}", path=directory, user="root",
                        group="root", mode="0755")
        tls_dir = tls["key"].rsplit("/", 1)[0]
        files.directory(name=f"Directory {tls_dir} ({owner}, 0700)", path=tls_dir, user=owner,
                        group=owner, mode="0700")
        for kind, src in (("key", key), ("cert", cert), ("ca", ca_cert)):
            files.put(name=f"{owner} TLS {kind}", src=str(src), dest=tls[kind], user=owner,
                      group=owner, mode="0600" if kind == "key" else "0644")


def _etcd(settings: Settings) -> None:
    environment = files.put(
        name=f"{ha.ETCD_DEFAULT}: this member, its peers, TLS",
        src=render_io("default-etcd.j2", scope=settings.ha_scope,
                      environment=ha.etcd_environment(settings, host.name)),
        dest=ha.ETCD_DEFAULT, user="root", group="root", mode="0644")
    files.directory(name="Directory /var/lib/etcd (etcd, 0700)", path="/var/lib/etcd",
                    user="etcd", group="etcd", mode="0700")
    dropin = files.put(name="etcd.service: after the network is up, restarted when it fails",
                       src=render_io("etcd.service.d-pginfra.conf.j2"), dest=ETCD_DROPIN,
                       user="root", group="root", mode="0644", create_remote_dir=True)
    systemd.daemon_reload(name="systemd picks up etcd's drop-in", _if=dropin.did_change)
    installed = host.get_fact(DebPackages)
    missing = [p for p in ha.ETCD_PACKAGES if p not in installed]
    # The configuration is in place first: the package starts etcd on installation, and every
    # member installs it in the same operation, so they find each other at once.
    apt.packages(name="etcd (Debian's etcd-server and etcd-client)",
                 packages=[f"{p}={settings.ha_etcd_version}" for p in ha.ETCD_PACKAGES],
                 no_recommends=True, update=bool(missing),
                 cache_time=settings.pginfra_apt_cache_time,
                 extra_install_args="-o Dpkg::Options::=--force-confdef "
                                    "-o Dpkg::Options::=--force-confold",
                 _env={"DEBIAN_FRONTEND": "noninteractive"})
    systemd.service(name="etcd running, started at boot", service="etcd.service",
                    running=True, enabled=True)
    systemd.service(name="etcd restarted for its new settings", service="etcd.service",
                    restarted=True, _if=lambda: environment.did_change() and not missing)
    server.shell(name="etcd: every member healthy", commands=[
        f"for i in $(seq {WAIT // 2}); do {ha.etcdctl_command(settings, 'endpoint health')} "
        ">/dev/null 2>&1 && exit 0; sleep 2; done; "
        f"{ha.etcdctl_command(settings, 'endpoint health')}; exit 1"],
        _if=lambda: environment.did_change() or bool(missing))


def _patroni(settings: Settings, passwords: dict[str, str]):
    installed = host.get_fact(DebPackages)
    apt.packages(name="Patroni (Debian's package)",
                 packages=[f"patroni={settings.ha_patroni_version}"], no_recommends=True,
                 update="patroni" not in installed, cache_time=settings.pginfra_apt_cache_time,
                 _env={"DEBIAN_FRONTEND": "noninteractive"})
    memory = host.get_fact(Memory) * MB  # the fact is in MB
    params = server_parameters(settings, memory, host.get_fact(Cpus), cluster_floor(settings))
    config = ha.patroni_config(settings, host.name, params, passwords)
    text = ("# Managed by pginfra: Patroni's configuration of this member (postgres, 0600: it\n"
            "# holds passwords). Cluster-wide settings live in etcd: patronictl edit-config.\n"
            + yaml.safe_dump(config, sort_keys=False, default_flow_style=False))
    written = files.put(name=f"{ha.patroni_config_path(settings)} (postgres, 0600)",
                        src=io.StringIO(text), dest=ha.patroni_config_path(settings),
                        user="postgres", group="postgres", mode="0600")
    dropin = files.put(name="patroni@.service: after the network, restarted when it dies",
                       src=render_io("patroni@.service.d-pginfra.conf.j2",
                                     nofile=settings.kernel_nofile), dest=DROPIN,
                       user="root", group="root", mode="0644", create_remote_dir=True)
    systemd.daemon_reload(name="systemd picks up Patroni's drop-in", _if=dropin.did_change)
    version, cluster = settings.pg_cluster
    files.put(name="start.conf: manual (Patroni starts the cluster, not postgresql.service)",
              src=io.StringIO("# Managed by pginfra: Patroni starts this cluster "
                              "(postgres_ha)\nmanual\n"),
              dest=f"{layout.config_directory(version, cluster)}/start.conf",
              user="postgres", group="postgres", mode="0644")
    return written, config


def _nonlocal_bind(settings: Settings) -> None:
    """With ``ha_client_path: vip``: PgBouncer (the next step) listens on the floating address
    on every member, held or not, so the host may bind an address it does not hold
    (``net.ipv4.ip_nonlocal_bind``, set now and at boot by systemd-sysctl)."""
    wanted = vip.wanted(settings)
    conf = files.put(name=f"{vip.SYSCTL}: {vip.SYSCTL_KEY} = 1 (PgBouncer listens on ha_vip)",
                     src=io.StringIO(f"# Managed by pginfra: PgBouncer listens on the floating "
                                     f"address ha_vip\n{vip.SYSCTL_KEY} = 1\n"),
                     dest=vip.SYSCTL, user="root", group="root", mode="0644", _if=lambda: wanted)
    files.file(name=f"No {vip.SYSCTL} (no floating address)", path=vip.SYSCTL, present=False,
               _if=lambda: not wanted)
    server.shell(name=f"{vip.SYSCTL_KEY} applied", commands=[
        f"sysctl -q -p {vip.SYSCTL}"], _if=lambda: wanted and conf.did_change())


def _pgbouncer_follows_role(settings: Settings) -> None:
    """PgBouncer restarted when this member's role changes: its pools keep the parameters the
    server reported when they first connected, and a promoted replica's PgBouncer went on
    telling new clients in_hot_standby=on (pgbouncer#859), so target_session_attrs=read-write
    clients refused the new leader. Patroni's on_role_change callback (as postgres) writes
    ha.ROLE_CHANGED; this path unit (root) restarts PgBouncer."""
    path = f"/etc/systemd/system/{ha.ROLE_UNIT}.path"
    service = f"/etc/systemd/system/{ha.ROLE_UNIT}.service"
    if not settings.pgbouncer_enabled:
        for unit in (path, service):
            files.file(name=f"No {unit}", path=unit, present=False)
        return
    units = [files.put(name=f"{unit}", src=render_io(f"{unit.rsplit('/', 1)[1]}.j2",
                                                     role_changed=ha.ROLE_CHANGED),
                       dest=unit, user="root", group="root", mode="0644")
             for unit in (path, service)]
    systemd.daemon_reload(name=f"systemd picks up {ha.ROLE_UNIT}", _if=any_changed(*units))
    systemd.service(name=f"{ha.ROLE_UNIT}.path watching, started at boot",
                    service=f"{ha.ROLE_UNIT}.path", running=True, enabled=True)


def _rewind_role(settings: Settings, passwords: dict[str, str], new_cluster: bool) -> None:
    if not ha.writes_here(settings, host.name):
        return
    roles = {} if new_cluster else host.get_fact(PostgresRoles,
                                                 port=settings.postgres_port) or {}
    sql = rewind_role_sql(settings, passwords[settings.ha_rewind_user], roles)
    if sql:
        server.shell(name=f"Role {settings.ha_rewind_user}: pg_rewind's, nothing more",
                     commands=[psql_stdin(settings.postgres_port)], _stdin=sql)


def _takeover(settings: Settings, state: dict) -> None:
    """Stop the server's own unit and start Patroni on it: the primary first (it initialises
    the cluster in etcd with its system identifier and takes the leader key), then the
    standbys (each waits for the leader, then joins as the replica it already is)."""
    unit = ha.patroni_unit(settings)
    pg_unit = layout.unit(*settings.pg_cluster)
    api = ha.rest_url(settings, settings.node.name)
    curl = (f"python3 -c {shlex.quote(_PROBE)} {shlex.quote(api)} "
            f"{shlex.quote(ha.PATRONI_TLS['ca'])}")
    hand_over = f"systemctl disable --now {pg_unit} && systemctl enable --now {unit}"
    leader_key = f"/service/{settings.ha_scope}/leader"
    # Both operations exist on every host (skipped where they do not apply), so pyinfra runs
    # the primary's on all hosts before the standbys' on any: a standby's Patroni must never
    # find etcd empty, or it would initialise the cluster and race the primary for the lead.
    server.shell(name="Patroni takes over the primary: it becomes the leader, with its data",
                 commands=[f"{hand_over} && for i in $(seq {WAIT}); do {curl} /primary && "
                           "exit 0; sleep 1; done; exit 1"],
                 _if=lambda: not state["active"] and not settings.is_standby)
    server.shell(name="Patroni takes over the standby: it stays a replica of the leader",
                 commands=[
                     # refuse to start without a leader in etcd: never a second initialiser
                     f"for i in $(seq {WAIT}); do test -n \"$("
                     f"{ha.etcdctl_command(settings, 'get --print-value-only', leader_key)}"
                     ")\" && break; sleep 1; done; test -n \"$("
                     f"{ha.etcdctl_command(settings, 'get --print-value-only', leader_key)}"
                     ")\" || { echo 'no leader in etcd: not starting Patroni here' >&2; "
                     "exit 1; }",
                     f"{hand_over} && for i in $(seq {WAIT}); do {curl} /replica && "
                     "exit 0; sleep 1; done; exit 1"],
                 _if=lambda: not state["active"] and settings.is_standby)
    if state["active"]:
        systemd.service(name=f"{unit} running, started at boot", service=unit, running=True,
                        enabled=True)
        # enablement only: stopping this unit would stop the server Patroni runs
        systemd.service(name=f"{pg_unit}: Patroni's to start, not systemd's", service=pg_unit,
                        running=None, enabled=False)


# GET the REST API path in argv[2]: exit 0 on 200 (the role asked for), 1 otherwise.
_PROBE = """
import ssl, sys, urllib.request
ctx = ssl.create_default_context(cafile=sys.argv[2])
ctx.check_hostname = False
try:
    sys.exit(0 if urllib.request.urlopen(sys.argv[1] + sys.argv[3], context=ctx,
                                         timeout=3).status == 200 else 1)
except Exception:
    sys.exit(1)
"""
