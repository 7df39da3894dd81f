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
    order = restart_order(members(config), leader_first)
    if not order:
        log("pginfra-apply-config: no member waits for a restart")
    for member in order:
        log(f"pginfra-apply-config: restarting {member} through Patroni")
        proc = patronictl(config, "restart", scope, member, "--force", timeout=timeout)
        if proc.returncode or "Success" not in proc.stdout:
            log(f"pginfra-apply-config: restart of {member} failed: "
                f"{(proc.stderr or proc.stdout).strip()}; the others are left as they are")
            return 1
        try:
            # a replica restarted after its leader's value shrank keeps the larger one (Patroni
            # reads it from the replica's pg_control) until its next restartpoint
            wait_back(config, member, timeout, pending_ok=leader_first)
        except RuntimeError as exc:
            log(f"pginfra-apply-config: {exc}; the others are left as they are")
            return 1
    still = [m["Member"] for m in members(config) if m.get("Pending restart")]
    if still:
        log(f"pginfra-apply-config: {', '.join(still)} still wait(s) for a restart: a replica "
            "keeps a shrunk value's larger old one until its next restartpoint (Patroni reads "
            "it from pg_control); after that (checkpoint_timeout at most): patronictl -c "
            f"{config} restart {scope} --pending")
    return 0
