"""Inventory data checked against the host itself, before any operation runs.

``pginfra.settings`` validates what can be judged from the data alone. What needs the host is
judged here, from facts, still before the first operation of the run:

- each directory pginfra hands to postgres must not reach anywhere else through a symbolic
  link, and an existing one must already be postgres' (pginfra made it, or the operator gave
  it to postgres): pginfra never takes a directory from another owner;
- every address PostgreSQL and PgBouncer are told to listen on is one the host has;
- the server's parameters for this host's RAM and CPUs contradict nothing, and PgBouncer's
  pools fit the server's connection slots;
- a host without Debian's security archive in its APT sources is warned about.

First of all, the run takes the host's deploy lock (``pginfra.facts.DeployLock``), held until
its connection ends: a second deploy to the same host stops here, before it has read anything
to plan from, naming the run that holds the host.

Every problem names the host and the setting::

    settings = load_settings()   # resolve() the data, then check_host(settings)
"""

from __future__ import annotations

import getpass
import ipaddress
import os
import socket
import time

from pginfra.settings import POSTGRES_DIRECTORIES, Settings, SettingsError

# Who holds a host's deploy lock, as a second run is told.
RUN_INFO = (f"run by {getpass.getuser()}@{socket.gethostname()} (pid {os.getpid()}) since "
            f"{time.strftime('%Y-%m-%d %H:%M:%S %Z')}")

LOCAL_NAMES = {"localhost"}
ANY_ADDRESS = {"*", "0.0.0.0", "::"}


def directory_problems(settings: Settings, states: dict[str, dict]) -> list[str]:
    """Problems of the directories pginfra would hand to postgres, from ``PathStates``."""
    found = []
    for key in POSTGRES_DIRECTORIES:
        path = getattr(settings, key)
        state = states.get(path)
        if not state:
            continue
        if state["resolved"] != path:
            found.append(f"{key}: {path} resolves to {state['resolved']} through a symbolic "
                         "link: give the real path")
        elif state["exists"] and state["type"] != "directory":
            found.append(f"{key}: {path} exists and is a {state['type']}, not a directory")
        elif state["exists"] and state["owner"] != "postgres":
            found.append(f"{key}: {path} exists and belongs to {state['owner']}: pginfra hands "
                         "postgres only directories it makes; if this one is meant for "
                         f"PostgreSQL, 'chown postgres: {path}' first")
    return found


def _listen_wanted(settings: Settings) -> list[tuple[str, str]]:
    """(setting, address) for every address PostgreSQL or PgBouncer is told to listen on that
    must be one of the host's: not "*", not localhost, not the floating address (ha_vip)."""
    from pginfra.pgbouncer import listen_addresses as pgbouncer_addresses

    wanted = [("postgres_listen_addresses", a) for a in settings.postgres_listen_addresses]
    if settings.pgbouncer_enabled:
        key = ("pgbouncer_listen_addresses" if settings.pgbouncer_listen_addresses
               else "postgres_listen_addresses (PgBouncer's too)")
        wanted += [(key, a) for a in pgbouncer_addresses(settings) if (key, a) not in wanted]
    from pginfra import vip

    floating = vip.address(settings)  # held by the leader only; checked on its own
    return [(k, a) for k, a in wanted
            if a not in ANY_ADDRESS and a not in LOCAL_NAMES and a != floating]


def _is_ip(address: str) -> bool:
    try:
        ipaddress.ip_address(address)
    except ValueError:
        return False
    return True


def hostnames(settings: Settings) -> tuple[str, ...]:
    """Listen addresses that are names to resolve on the host."""
    return tuple(sorted({a for _, a in _listen_wanted(settings) if not _is_ip(a)}))


def listen_problems(settings: Settings, addresses: list[str],
                    resolved: dict[str, list[str]]) -> list[str]:
    """Listen addresses the host does not have, for PostgreSQL and PgBouncer."""
    have = {str(ipaddress.ip_address(a)) for a in addresses}
    found = []
    for key, address in _listen_wanted(settings):
        if _is_ip(address):
            ours = str(ipaddress.ip_address(address)) in have
            what = "address"
        else:
            ours = any(str(ipaddress.ip_address(a)) in have for a in resolved.get(address, []))
            what = "name, which resolves to " + (
                ", ".join(resolved.get(address, [])) or "nothing") + ","
        if not ours:
            found.append(f"{key}: {address} is not an address of this host ({what} while the "
                         f"host has {', '.join(sorted(have))}): nothing would listen there")
    return found


def check_host(settings: Settings) -> None:
    """Raise SettingsError naming the host, the setting and the problem; warn where the host
    lacks something that is not pginfra's to change."""
    from pyinfra import host, logger
    from pyinfra.facts.hardware import Cpus, Memory, NetworkDevices

    from pginfra import factcache, vip
    from pginfra.facts import (
        AptSecuritySources,
        DeployLock,
        HostAddresses,
        PathStates,
        ResolvedNames,
    )
    from pginfra.pgbouncer import check_capacity
    from pginfra.server_config import server_parameters
    from pginfra.tuning import MB

    lock = host.get_fact(DeployLock, info=RUN_INFO)
    if lock.get("state") != "taken":
        raise SettingsError(f"{settings.host_name}: another pginfra deploy is running on this "
                            f"host ({lock.get('by', 'unknown')}); nothing was changed: run "
                            "again once it has finished")
    # The host is ours for this run: read every fact its last run read, in one command.
    factcache.prefetch(host)
    if settings.etcd_only:  # one of etcd's own hosts: its address must be its own
        have = set(host.get_fact(HostAddresses))
        if settings.node.address not in have:
            raise SettingsError(
                f"invalid inventory data for this host, nothing was changed:\n  "
                f"{settings.host_name}: postgres_replication_address: etcd would listen on "
                f"{settings.node.address}, which is not an address of this host (it has "
                f"{', '.join(sorted(have))})")
        return
    paths = tuple(getattr(settings, key) for key in POSTGRES_DIRECTORIES)
    problems = directory_problems(settings, host.get_fact(PathStates, paths=paths))
    names = hostnames(settings)
    resolved = host.get_fact(ResolvedNames, names=names) if names else {}
    problems += listen_problems(settings, host.get_fact(HostAddresses), resolved)
    if vip.wanted(settings):
        problems += [p for p in [vip.interface_problem(settings, host.get_fact(NetworkDevices))]
                     if p]
    if problems:
        lines = "\n".join(f"  {settings.host_name}: {p}" for p in problems)
        raise SettingsError(f"invalid inventory data for this host, nothing was changed:\n"
                            f"{lines}")
    # These raise SettingsError naming the host themselves.
    params = server_parameters(settings, host.get_fact(Memory) * MB, host.get_fact(Cpus))
    if settings.pgbouncer_enabled:
        check_capacity(settings, params)
    if not host.get_fact(AptSecuritySources):
        logger.warning(f"{settings.host_name}: no Debian security archive in the APT sources "
                       "(/etc/apt/sources.list*): this host gets no security updates; add "
                       "'deb http://deb.debian.org/debian-security bookworm-security main'")
