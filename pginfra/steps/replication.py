"""Step: streaming replication. The primary gets the replication role and one physical slot per
standby; a new standby is made from its upstream with pg_basebackup over TLS; a standby the
inventory names the primary is promoted, when the inventory says the old primary is gone."""

from __future__ import annotations

import shlex

from pyinfra import host, inventory, logger
from pyinfra.api import deploy
from pyinfra.operations import server

from pginfra import ha
from pginfra.facts import PostgresClusters, PostgresRoles, ReplicationState
from pginfra.roles import (
    literal,
    plan_replication_role,
    plan_slots,
    psql_stdin,
    quiet_sql,
    wanted_verifiers,
)
from pginfra.secrets import require_strong_password
from pginfra.server_config import primary_conninfo
from pginfra.settings import BY_NAME, Settings, database_hosts_only
from pginfra.topology import TopologyError
from pginfra_host import layout

PROMOTE_WAIT = 300  # seconds a promotion may take
BUILD_RETRIES_CASCADE = 120  # 10 minutes of 5 s: a cascade's upstream may be built this run


def _lsn(text: str | None) -> int:
    """'16/B374D848' -> an integer, for comparing WAL positions."""
    if not text:
        return -1
    high, low = text.split("/")
    return (int(high, 16) << 32) + int(low, 16)


def data_directory(settings: Settings) -> str:
    key = f"{settings.postgres_version}/{settings.postgres_cluster}"
    cluster = host.get_fact(PostgresClusters).get(key) or {}
    return cluster.get("data_directory") or layout.data_directory(*settings.pg_cluster)


def unit(settings: Settings) -> str:
    return layout.unit(*settings.pg_cluster)


def psql(settings: Settings, atomic: bool = True) -> str:
    return psql_stdin(settings.postgres_port, atomic=atomic)


def probe(settings: Settings, query: str) -> str:
    """A shell command printing ``query``'s answer, unaligned, as the postgres OS user."""
    return shlex.join(["runuser", "-u", "postgres", "--", "psql", "-XAtq", "-p",
                       str(settings.postgres_port), "-c", query])


def _other_state(name: str) -> dict | None:
    """Another server's state (ReplicationState), or None when it cannot be read (down, or its
    connection is not part of this run)."""
    other = inventory.get_host(name, None)
    if other is None:
        return None
    port, version, cluster = (other.data.get(key, BY_NAME[key].default) for key in
                              ("postgres_port", "postgres_version", "postgres_cluster"))
    try:
        state = other.get_fact(ReplicationState, port=port,
                               data_directory=layout.data_directory(version, cluster))
    except Exception as exc:  # noqa: BLE001 - an unreachable host is "unknown", said so
        logger.warning(f"{host.name}: could not read {name}'s replication state: {exc}")
        return None
    return (state or {}).get("server")


def check_promotion(settings: Settings, me: dict) -> None:
    """A standby named the primary is promoted only when the inventory says which primary it
    replaces, that one no longer streams to it, and no other standby has more WAL."""
    node = settings.node
    if not node.former_primary:
        raise TopologyError(
            f"{host.name} is a standby (in recovery) but the inventory names it the primary; "
            "nothing was changed. To promote it: stop the old primary for good, remove it from "
            f"the inventory, and set postgres_former_primary: <old primary> on {host.name}. "
            f"To keep {host.name} a standby, name the real primary in the group 'primary'.")
    receiver = me.get("receiver") or {}
    if receiver.get("status") == "streaming":
        raise TopologyError(
            f"{host.name}: still streams from {receiver.get('sender_host')}:"
            f"{receiver.get('sender_port')}, so {node.former_primary} (or whoever that is) is "
            "alive; nothing was changed. Stop it first: two primaries would both take writes.")
    mine = _lsn(me.get("lsn"))
    for name in settings.cluster:
        if name == host.name:
            continue
        state = _other_state(name)
        if (state and state.get("in_recovery")
                and state.get("system_identifier") == me.get("system_identifier")
                and _lsn(state.get("lsn")) > mine):
            raise TopologyError(
                f"{host.name}: {name} has WAL up to {state['lsn']}, beyond {host.name}'s "
                f"{me.get('lsn')}: promoting {host.name} would lose those commits; nothing was "
                f"changed. Name {name} the primary instead (with postgres_former_primary).")


def standby_needs_build(settings: Settings, state: dict | None, new_cluster: bool,
                        upstream: dict | None) -> bool:
    """Whether to make this standby from its upstream; raises rather than wipe data."""
    if new_cluster or state is None:
        return True
    me = state.get("server")
    version_cluster = f"{settings.postgres_version} {settings.postgres_cluster}"
    if me is None:
        if state.get("standby_signal"):
            return False  # a standby that is down: the service step starts it
        raise TopologyError(
            f"{host.name}: the cluster {version_cluster} does not answer and is no standby, so "
            "pginfra cannot tell whether it holds data; nothing was changed. Start it "
            f"(pg_ctlcluster {version_cluster} start) and run again.")
    if me["in_recovery"]:
        if upstream and upstream.get("system_identifier") != me["system_identifier"]:
            raise TopologyError(
                f"{host.name} is a standby of another cluster (system identifier "
                f"{me['system_identifier']}; {settings.node.upstream}'s is "
                f"{upstream.get('system_identifier')}); nothing was changed. If its data is "
                f"not needed: pg_dropcluster --stop {version_cluster} on {host.name}, then run "
                "again.")
        return False
    held = {k: me[k] for k in ("user_databases", "user_tables", "user_roles") if me[k]}
    if held:
        what = ", ".join(f"{n} {k.removeprefix('user_')}" for k, n in held.items())
        raise TopologyError(
            f"{host.name} is named a standby of {settings.node.upstream} but holds a primary's "
            f"data ({what}): pginfra never wipes data to make a standby; nothing was changed. "
            f"If the data is not needed: pg_dropcluster --stop {version_cluster} on "
            f"{host.name}, then run again. If it is, keep {host.name} out of this inventory's "
            "postgres_servers (or make it the primary).")
    return True


def build_command(settings: Settings, data: str, cascade: bool) -> str:
    """Make this standby from its upstream: pg_basebackup into a new directory next to the
    data directory (the old, empty one serves meanwhile), then swap them and start."""
    new, old = f"{data}.pginfra-standby", f"{data}.pginfra-replaced"
    conninfo = primary_conninfo(settings)
    backup = ["runuser", "-u", "postgres", "--", "pg_basebackup", "-d", conninfo, "-D", new,
              "-X", "stream", "-c", "fast", "-w"]
    if not cascade:  # the primary made the slot already; a cascade's upstream makes it later
        backup += ["-S", settings.node.slot]
    tries = BUILD_RETRIES_CASCADE if cascade else 1
    q = shlex.quote
    return "\n".join([
        "set -eu",
        f"rm -rf {q(new)} {q(old)}",
        "ok=",
        f"for i in $(seq 1 {tries}); do",
        f"  install -d -o postgres -g postgres -m 700 {q(new)}",
        f"  if {shlex.join(backup)}; then ok=1; break; fi",
        f"  rm -rf {q(new)}",
        f"  [ \"$i\" = {tries} ] || sleep 5",
        "done",
        f"[ -n \"$ok\" ] || {{ echo 'pg_basebackup from {settings.node.upstream} failed' >&2; "
        "exit 1; }",
        f"install -o postgres -g postgres -m 600 /dev/null {q(new + '/standby.signal')}",
        f"systemctl stop {unit(settings)}",
        f"mv {q(data)} {q(old)}",
        f"mv {q(new)} {q(data)}",
        f"systemctl start {unit(settings)}",
        f"rm -rf {q(old)}",
    ])


def wait_streaming_command(settings: Settings, seconds: int = 120) -> str:
    status = probe(settings, "SELECT status FROM pg_stat_wal_receiver")
    return "\n".join([
        f"for i in $(seq 1 {seconds}); do",
        f"  [ \"$({status} 2>/dev/null)\" = streaming ] && exit 0",
        "  sleep 1",
        "done",
        f"echo '{host.name} is not streaming from {settings.node.upstream} after {seconds}s: "
        f"see the server log in {settings.postgres_log_directory}' >&2",
        "exit 1",
    ])


def promote_command(settings: Settings, seconds: int = PROMOTE_WAIT) -> str:
    cluster = f"{settings.postgres_version} {settings.postgres_cluster}"
    recovering = probe(settings, "SELECT pg_is_in_recovery()")
    return "\n".join([
        "set -eu",
        # no wait in pg_ctl (60 s): a restore_command still trying the lost primary's
        # repository holds the promotion up until it gives up (pgBackRest's io-timeout)
        f"pg_ctlcluster {cluster} promote -- -W",
        f"for i in $(seq 1 {seconds}); do",
        f"  [ \"$({recovering})\" = f ] && exit 0",
        "  sleep 1",
        "done",
        f"echo 'still in recovery {seconds} s after pg_ctlcluster promote' >&2",
        "exit 1",
    ])


def slots_sql(create: list[str], drop: list[str]) -> str:
    sql = []
    for name in drop:  # its walsender first (its host is no longer allowed back in)
        sql.append(
            "SELECT pg_terminate_backend(active_pid, 5000) FROM pg_replication_slots "
            f"WHERE slot_name = {literal(name)} AND active_pid IS NOT NULL;\n"
            f"SELECT pg_drop_replication_slot({literal(name)});")
    sql += [f"SELECT pg_create_physical_replication_slot({literal(n)}, true);" for n in create]
    return "\n".join(sql) + "\n"


def slot_changes(settings: Settings, me: dict | None) -> tuple[str, str]:
    """(op name, SQL) for this host's slots: one per host streaming from it; others dropped."""
    wanted = [settings.cluster[n].slot for n in settings.node.downstream]
    have = (me or {}).get("slots") or []
    create, drop = plan_slots(wanted, have, settings.postgres_replication_slots_keep)
    for slot in drop:
        if slot in create:
            logger.warning(f"{host.name}: replication slot {slot} lost the WAL its standby "
                           "needs (past postgres_max_slot_wal_keep_size): created again; the "
                           "standby catches up from the archive, or rebuild it with "
                           "pginfra-restore standby")
            continue
        logger.warning(f"{host.name}: dropping replication slot {slot}: no host of the "
                       "inventory streams through it, and WAL would pile up for it")
    if not (create or drop):
        return "", ""
    what = ", ".join([*(f"drop {n}" for n in drop), *(f"create {n}" for n in create)])
    return f"slots: {what}", slots_sql(create, drop)


def replication_role_sql(settings: Settings, new_cluster: bool) -> str:
    """The replication role's statements on the primary of a cluster, or ''."""
    if not settings.replicated:
        return ""
    name = settings.postgres_replication_user
    password = require_strong_password(name, host.name, settings.postgres_password_min_length)
    roles = {} if new_cluster else host.get_fact(PostgresRoles, port=settings.postgres_port) or {}
    verifier = wanted_verifiers({name: password}, roles)[name]
    statements = plan_replication_role(name, roles.get(name), verifier)
    return quiet_sql(statements) if statements else ""


@database_hosts_only()
@deploy("Streaming replication")
def replicate(settings: Settings, new_cluster: bool = False):
    """
    The primary: promoted first when it is a standby the inventory names the primary (see
    ``postgres_former_primary``); the replication role (REPLICATION and LOGIN only, its SCRAM
    verifier from the secrets source) when it has standbys; a physical slot per standby,
    and slots of hosts no longer in the inventory dropped. A standby: made from its upstream
    with pg_basebackup over TLS when it is new (never when it holds data), started as a hot
    standby, streaming before the run goes on.

    Every host runs the same five operations, most with nothing to do on most hosts: pyinfra
    runs an operation on all hosts before the next, so the primary's role and slots exist
    before any standby copies it.

    .. code:: python

        replicate(load_settings(), new_cluster)
    """
    if ha.patroni_runs_server(settings):
        return  # Patroni's now: replicas, their slots, promotion and rewind (step 10)
    node = settings.node
    data = data_directory(settings)
    state = None if new_cluster else host.get_fact(
        ReplicationState, data_directory=data, port=settings.postgres_port)
    me = (state or {}).get("server")
    promote = build = False
    primary_sql = cascade_sql = ""
    names = {"primary": "", "cascade": ""}
    if node.role == "primary":
        promote = bool(me and me["in_recovery"])
        if promote:
            check_promotion(settings, me)  # raises unless it is safe
        role_sql = replication_role_sql(settings, new_cluster)
        slots_name, slots = slot_changes(settings, me)
        primary_sql = role_sql + slots
        names["primary"] = ", ".join(filter(None, [
            f"role {settings.postgres_replication_user}" if role_sql else "", slots_name]))
    else:
        upstream = _other_state(node.upstream)
        cascade = settings.cluster[node.upstream].role == "standby"
        build = standby_needs_build(settings, state, new_cluster, upstream)
        # A cascade's upstream: its standbys' slots, once it is a standby; a standby that no
        # longer has any drops those it kept.
        names["cascade"], cascade_sql = slot_changes(settings, None if build else me)

    # One name each: pyinfra shows an operation that runs on every host under one name.
    for what in filter(None, [promote and f"promote it: it replaces {node.former_primary}",
                              names["primary"], names["cascade"],
                              build and f"copy it from {node.upstream} with pg_basebackup"]):
        logger.info(f"{host.print_prefix}streaming replication: {what}")
    server.shell(name="Promote the standby the inventory names primary",
                 commands=[promote_command(settings)] if promote else [])
    server.shell(name="The primary's replication role and slots",
                 commands=[psql(settings, atomic=False)] if primary_sql else [],
                 _stdin=primary_sql or None)
    server.shell(name="Copy new standbys from their upstream (pg_basebackup over TLS)",
                 commands=[build_command(settings, data, cascade)] if build else [])
    server.shell(name="Slots of cascaded standbys",
                 commands=[psql(settings, atomic=False)] if cascade_sql else [],
                 _stdin=cascade_sql or None)
    server.shell(name="Wait for new standbys to stream",
                 commands=[wait_streaming_command(settings)] if build else [])
