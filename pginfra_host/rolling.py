"""Change a Patroni cluster's shared configuration and apply pending restarts one member at a
time (``pginfra-apply-config --rolling-restart``, run by the deploy on the leader).

    pginfra-apply-config --rolling-restart /etc/patroni/15-main.yml pginfra \
        --dcs-set ttl=30 --dcs-pg max_connections=300 --settle 12

1. With ``--dcs-set``/``--dcs-pg``: ``patronictl edit-config`` writes them to the cluster's
   configuration in etcd, the one place Patroni reads them from (a file would be overridden).
2. After ``--settle`` seconds (a loop of every member, so each has seen the change and the
   server reports its pending restart), the members whose server waits for a restart are
   restarted through Patroni, one at a time, each back before the next: replicas first, the
   leader last (a replica must not run with less of ``max_connections`` and its kin than its
   primary); with ``--leader-first`` (such a value shrank) the leader first. A replica then
   keeps the larger value until its next restartpoint (Patroni reads it from the replica's
   pg_control): it is said, with the command that restarts it after that.

Restarting through Patroni keeps its view right: it does not take a restart for a crash, and in
synchronous mode it moves the synchronous role off a replica that restarts.
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Callable

from pginfra_host.util import OS_USER

RUNNING = ("running", "streaming")


def patronictl(config: str, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(["runuser", "-u", OS_USER, "--", "patronictl", "-c", config, *args],
                          capture_output=True, text=True, timeout=timeout, cwd="/")


def members(config: str) -> list[dict]:
    """``patronictl list -f json``: [] when it does not answer."""
    proc = patronictl(config, "list", "-f", "json", timeout=60)
    try:
        found = json.loads(proc.stdout) if proc.returncode == 0 else []
    except ValueError:
        return []
    return found if isinstance(found, list) else []


def restart_order(found: list[dict], leader_first: bool = False) -> list[str]:
    """The members waiting for a restart, in the order to restart them.

        >>> restart_order([{"Member": "a", "Role": "Leader", "Pending restart": "*"},
        ...                {"Member": "c", "Role": "Replica", "Pending restart": "*"},
        ...                {"Member": "b", "Role": "Sync Standby", "Pending restart": "*"},
        ...                {"Member": "d", "Role": "Replica"}])
        ['b', 'c', 'a']
        >>> restart_order([{"Member": "a", "Role": "Leader", "Pending restart": "*"},
        ...                {"Member": "b", "Role": "Replica", "Pending restart": "*"}], True)
        ['a', 'b']
    """
    pending = [m for m in found if m.get("Pending restart")]
    leaders = [m["Member"] for m in pending if m.get("Role") == "Leader"]
    replicas = sorted(m["Member"] for m in pending if m.get("Role") != "Leader")
    return leaders + replicas if leader_first else replicas + leaders


def wait_back(config: str, member: str, timeout: float, pending_ok: bool = False,
              look: Callable[[str], list[dict]] = members,
              sleep: Callable[[float], None] = time.sleep) -> None:
    """Until ``member`` runs again with nothing pending (``pending_ok``: running is enough);
    RuntimeError after ``timeout``.

        >>> seen = iter([[], [{"Member": "b", "State": "starting"}],
        ...              [{"Member": "b", "State": "running", "Pending restart": "*"}],
        ...              [{"Member": "b", "State": "running"}]])
        >>> wait_back("cfg", "b", 60, look=lambda _: next(seen), sleep=lambda _: None)
        >>> next(seen, "all read")
        'all read'
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        mine = next((m for m in look(config) if m.get("Member") == member), None)
        if mine and mine.get("State") in RUNNING and (pending_ok
                                                       or not mine.get("Pending restart")):
            return
        sleep(1)
    raise RuntimeError(f"{member} did not come back within {timeout:.0f}s of its restart")


def psql(query: str) -> str:
    """One value from this host's server (the leader), as postgres over the local socket."""
    proc = subprocess.run(["runuser", "-u", OS_USER, "--", "psql", "-XAtq", "-c", query],
                          capture_output=True, text=True, timeout=60, cwd="/")
    if proc.returncode:
        raise RuntimeError(proc.stderr.strip())
    return proc.stdout.strip()


def local_lsn() -> str:
    return psql("SELECT pg_current_wal_lsn()")


def caught_up(member: str, lsn: str, timeout: float, log: Callable[[str], None],
              sleep: Callable[[float], None] = time.sleep) -> bool:
    """Wait until ``member`` has replayed this server's WAL up to ``lsn`` (pg_stat_replication;
    Patroni names a replica's connection after the member). False, said, after ``timeout``."""
    deadline = time.monotonic() + timeout
    query = ("SELECT count(*) FROM pg_stat_replication WHERE application_name = "
             f"'{member.replace(chr(39), chr(39) * 2)}' AND replay_lsn >= '{lsn}'::pg_lsn")
    while time.monotonic() < deadline:
        try:
            if psql(query) == "1":
                return True
        except RuntimeError:
            pass
        sleep(1)
    log(f"pginfra-apply-config: {member} has not replayed {lsn} within {timeout:.0f}s")
    return False


def restart_one(config: str, scope: str, member: str, timeout: float,
                log: Callable[[str], None]) -> bool:
    """Restart one member through Patroni and wait until it runs again (a replica may still
    wait for a restart: see rolling_restart). False, said, when it did not."""
    log(f"pginfra-apply-config: restarting {member} through Patroni")
    proc = patronictl(config, "restart", scope, member, "--force", timeout=timeout)
    if proc.returncode or "Success" not in proc.stdout:
        log(f"pginfra-apply-config: restart of {member} failed: "
            f"{(proc.stderr or proc.stdout).strip()}; the others are left as they are")
        return False
    try:
        wait_back(config, member, timeout, pending_ok=True)
    except RuntimeError as exc:
        log(f"pginfra-apply-config: {exc}; the others are left as they are")
        return False
    return True


def rolling_restart(config: str, scope: str, dcs_set: list[str], dcs_pg: list[str],
                    settle: float, leader_first: bool, log: Callable[[str], None],
                    timeout: float = 300) -> int:
    """Steps 1 and 2 of the module's docstring. 0 done, 1 failed (a member did not come back:
    the next ones are not touched)."""
    if dcs_set or dcs_pg:
        args = [a for kv in dcs_set for a in ("-s", kv)] + [a for kv in dcs_pg for a in ("-p", kv)]
        proc = patronictl(config, "edit-config", scope, "--force", "--quiet", *args)
        if proc.returncode:
            log(f"pginfra-apply-config: patronictl edit-config failed: "
                f"{(proc.stderr or proc.stdout).strip()}")
            return 1
        log(f"pginfra-apply-config: cluster {scope}'s configuration: "
            + ", ".join([*dcs_set, *dcs_pg]))
    time.sleep(settle)
    found = members(config)
    order = restart_order(found, leader_first)
    leader = next((m["Member"] for m in found if m.get("Role") == "Leader"), None)
    if not order:
        log("pginfra-apply-config: no member waits for a restart")
    leader_lsn = None
    for member in order:
        if leader_lsn is not None:
            caught_up(member, leader_lsn, timeout, log)
        if not restart_one(config, scope, member, timeout, log):
            return 1
        if member == leader:
            # the restarted leader logged its new values (XLOG_PARAMETER_CHANGE); a replica
            # that has replayed them has them in pg_control, where Patroni reads them
            leader_lsn = local_lsn()
    # a value shrank: a replica restarted before its leader kept the larger one (it may not go
    # below its primary's); once it has replayed the leader's new values, once more
    again = [m["Member"] for m in members(config) if m.get("Pending restart")
             and m.get("Role") != "Leader"] if leader_lsn is not None else []
    for member in again:
        caught_up(member, leader_lsn, timeout, log)
        if not restart_one(config, scope, member, timeout, log):
            return 1
    still = [m["Member"] for m in members(config) if m.get("Pending restart")]
    if still:
        log(f"pginfra-apply-config: {', '.join(still)} still wait(s) for a restart: a replica "
            "may keep a shrunk value's larger old one until its next restartpoint (Patroni reads "
            "it from pg_control); after that (checkpoint_timeout at most): patronictl -c "
            f"{config} restart {scope} --pending")
    return 0
