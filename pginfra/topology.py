"""Which host is the primary and which stream from whom: the cluster an inventory describes.

The ``primary`` group names the primary (one host). Every other host of ``postgres_servers``
is a standby: of the primary, or of the host its ``postgres_upstream`` names (a cascade). An
inventory with one host and no ``primary`` group is that host, a primary.

Planning is pure: :func:`plan` takes each host's data and the primary group and returns a
:class:`Node` per host, or raises :class:`TopologyError` naming the hosts::

    >>> nodes = plan({"pg1": {"postgres_listen_addresses": ["localhost", "10.0.0.1"]},
    ...               "pg2": {"postgres_listen_addresses": ["localhost", "10.0.0.2"]}},
    ...              ["pg1"])
    >>> nodes["pg2"].role, nodes["pg2"].upstream, nodes["pg1"].downstream
    ('standby', 'pg1', ['pg2'])

:func:`current` does the same for the inventory of the pyinfra run, once per run.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field
from typing import Any

from pginfra.settings import BY_NAME, SettingsError

PRIMARY_GROUP = "primary"
SERVERS_GROUP = "postgres_servers"
ETCD_GROUP = "etcd"  # with postgres_ha: etcd's members (default: every server)
# With postgres_ha, what every host of the cluster must agree on (Patroni's DCS settings,
# etcd's ports, the client path).
HA_SHARED = ("postgres_ha", "ha_scope", "ha_ttl", "ha_loop_wait", "ha_retry_timeout",
             "ha_synchronous_mode", "ha_synchronous_mode_strict", "ha_maximum_lag_on_failover",
             "ha_rest_port", "ha_etcd_client_port", "ha_etcd_peer_port", "ha_etcd_version",
             "ha_patroni_version", "ha_rewind_user", "ha_client_path", "ha_haproxy_port_rw",
             "ha_haproxy_port_ro", "ha_vip", "ha_vip_router_id")
# ... of which etcd's own hosts (the etcd group outside postgres_servers) must agree on these.
ETCD_SHARED = ("postgres_ha", "ha_scope", "ha_etcd_client_port", "ha_etcd_peer_port",
               "ha_etcd_version")
_SYNC = re.compile(r"(ANY|FIRST) ([1-9][0-9]*) \(([^()]+)\)")


class TopologyError(SettingsError):
    """The inventory does not describe one primary with standbys; nothing was changed."""


@dataclass
class Node:
    """One host of the cluster, as the others see it."""

    name: str
    role: str  # "primary" or "standby"
    address: str  # where the others reach its server, and where it connects from
    port: int
    upstream: str | None = None  # the host a standby streams from
    downstream: list[str] = field(default_factory=list)  # hosts streaming from this one
    former_primary: str = ""
    etcd_member: bool = False  # with postgres_ha: one of etcd's members

    @property
    def slot(self) -> str:
        """This host's physical replication slot on its upstream (and its application_name)."""
        return slot_name(self.name)


def slot_name(host_name: str) -> str:
    """A host's replication slot and application_name: its name in lower case, every other
    character an underscore, at most 63 bytes.

    >>> slot_name("db2.example.com")
    'db2_example_com'
    """
    return re.sub(r"[^a-z0-9_]", "_", host_name.lower())[:63]


def _value(data: dict[str, Any], key: str) -> Any:
    return data.get(key, BY_NAME[key].default)


def replication_address(name: str, data: dict[str, Any]) -> str | None:
    """``postgres_replication_address``, else the first listen address that is an IP and not
    loopback, else ``ssh_hostname`` when it is an IP; None when there is none."""
    given = _value(data, "postgres_replication_address")
    if given:
        return given
    candidates = [*_value(data, "postgres_listen_addresses"), data.get("ssh_hostname") or ""]
    for candidate in candidates:
        try:
            ip = ipaddress.ip_address(candidate)
        except ValueError:
            continue
        if not (ip.is_loopback or ip.is_unspecified or ip.is_link_local):
            return str(ip)
    return None


def plan(hosts: dict[str, dict[str, Any]], primary_group: list[str],
         etcd_group: list[str] | None = None,
         etcd_hosts: dict[str, dict[str, Any]] | None = None) -> dict[str, Node]:
    """The cluster of ``hosts`` (name -> data), or TopologyError naming every problem. With
    postgres_ha, ``etcd_group`` names etcd's members (None: every host); ``etcd_hosts`` (name ->
    data) are those of them that are not database hosts (``etcd_only``)."""
    problems: list[str] = []
    names = list(hosts)
    if not names:
        return {}
    primaries = [p for p in primary_group if p in hosts]
    strangers = [p for p in primary_group if p not in hosts]
    if strangers:
        problems.append(f"the {PRIMARY_GROUP} group names {', '.join(strangers)}, not in "
                        f"{SERVERS_GROUP}")
    if len(primaries) > 1:
        problems.append(f"the {PRIMARY_GROUP} group names {len(primaries)} hosts "
                        f"({', '.join(primaries)}): a cluster has one primary")
    if not primary_group and len(names) > 1:
        problems.append(f"{len(names)} servers ({', '.join(names)}) and no {PRIMARY_GROUP} "
                        f"group: name the primary in a group '{PRIMARY_GROUP}'; the other "
                        "hosts become its standbys")
    if problems:
        raise TopologyError(_message(problems))
    primary = primaries[0] if primaries else names[0]

    nodes: dict[str, Node] = {}
    for name, data in hosts.items():
        address = replication_address(name, data)
        if address is None and len(names) > 1:
            problems.append(f"{name}: postgres_replication_address: none given and no listen "
                            "address or ssh_hostname is an IP address other hosts can use; "
                            "set it to the address this host has on the cluster's network")
            address = ""
        listen = _value(data, "postgres_listen_addresses")
        if address and len(names) > 1 and not set(listen) & {address, "*", "0.0.0.0", "::"}:
            problems.append(f"{name}: postgres_listen_addresses: the other servers reach {name} "
                            f"at {address} (postgres_replication_address), but it listens on "
                            f"{', '.join(listen)} only: add {address}")
        upstream = _value(data, "postgres_upstream") or None
        if name == primary:
            if upstream:
                problems.append(f"{name}: postgres_upstream: {upstream!r}, but {name} is the "
                                "primary: a primary streams from no one")
            upstream = None
        else:
            upstream = upstream or primary
            if upstream not in hosts:
                problems.append(f"{name}: postgres_upstream: {upstream!r} is not a host of "
                                f"{SERVERS_GROUP}")
            elif upstream == name:
                problems.append(f"{name}: postgres_upstream: a host cannot stream from itself")
                upstream = primary  # reported once: not a loop as well
        nodes[name] = Node(name=name, role="primary" if name == primary else "standby",
                           address=address or "", port=_value(data, "postgres_port"),
                           upstream=upstream,
                           former_primary=_value(data, "postgres_former_primary"))
    problems += _loops(nodes)
    # one cluster, one pgBackRest stanza: its hosts must agree on what they share
    for key in ("postgres_replication_user", "postgres_cluster", "postgres_wal_archive_dir",
                "backup_pgbackrest_version", "backup_tls_port", "backup_s3_bucket",
                "backup_s3_prefix", "backup_s3_endpoint_url"):
        problems += _uniform(hosts, key)
    problems += _collisions(names)
    if _value(hosts[primary], "postgres_ha"):
        problems += _ha_problems(hosts, nodes, primary, etcd_group, etcd_hosts or {})
    elif etcd_hosts:
        problems.append(f"the {ETCD_GROUP} group names {', '.join(etcd_hosts)}, not in "
                        f"{SERVERS_GROUP}, but postgres_ha is off: etcd runs only for Patroni")
    for name, node in nodes.items():
        if node.upstream in nodes:
            nodes[node.upstream].downstream.append(name)
    sync = _value(hosts[primary], "postgres_synchronous_standbys")
    if sync:  # the primary's (as group data, the standbys have it too: it is not theirs)
        problem = sync_problem(sync, nodes, primary)
        if problem:
            problems.append(f"{primary}: postgres_synchronous_standbys: {problem}")
    for name in hosts:
        former = nodes[name].former_primary
        if former and former in hosts:
            problems.append(f"{name}: postgres_former_primary: {former} is still in "
                            f"{SERVERS_GROUP}: a former primary is one that is gone; remove it "
                            "from the inventory (and make sure it is stopped) first")
    if problems:
        raise TopologyError(_message(problems))
    return nodes


def _ha_problems(hosts: dict[str, dict[str, Any]], nodes: dict[str, Node], primary: str,
                 etcd_group: list[str] | None, etcd_hosts: dict[str, dict[str, Any]]
                 ) -> list[str]:
    """With postgres_ha: one setting for all, etcd's members a majority can be found among."""
    problems = []
    for key in HA_SHARED:
        problems += _uniform({**hosts, **etcd_hosts} if key in ETCD_SHARED else hosts, key)
    members = list(hosts) if etcd_group is None else list(etcd_group)
    outside = [m for m in members if m not in hosts and m not in etcd_hosts]
    if outside:
        problems.append(f"the {ETCD_GROUP} group names {', '.join(outside)}, not hosts of "
                        "the inventory")
    for name, data in etcd_hosts.items():
        if replication_address(name, data) is None:
            problems.append(f"{name}: postgres_replication_address: none given and ssh_hostname "
                            f"is not an IP address: set it to the address etcd on {name} "
                            "listens on, on the cluster's network")
    if len(members) < 3 or len(members) % 2 == 0:
        problems.append(f"postgres_ha: etcd needs 3 or 5 members (an odd number, so a majority "
                        f"survives a host's loss), the inventory gives {len(members)} "
                        f"({', '.join(members)})")
    problems += _vip_problems(hosts[primary], nodes)
    for name, node in nodes.items():
        if name != primary and node.upstream != primary:
            problems.append(f"{name}: postgres_upstream: with postgres_ha every replica streams "
                            "from the leader (Patroni), not from a cascade")
        node.etcd_member = name in members
    return problems


def _vip_problems(data: dict[str, Any], nodes: dict[str, Node]) -> list[str]:
    """ha_client_path 'vip': the floating address is on the members' own network (keepalived
    moves it between them, VRRP on that network) and is none of theirs."""
    if _value(data, "ha_client_path") != "vip" or not _value(data, "ha_vip"):
        return []
    vip = ipaddress.IPv4Interface(_value(data, "ha_vip"))  # its form was checked per host
    found = []
    for name, node in nodes.items():
        try:
            address = ipaddress.ip_address(node.address)
        except ValueError:
            continue
        if address == vip.ip:
            found.append(f"{name}: ha_vip: {vip.ip} is {name}'s own address; the floating "
                         "address must be one no host has")
        elif address not in vip.network:
            found.append(f"{name}: ha_vip: {name} is at {address}, outside {vip.network}: "
                         "the floating address moves only between hosts of its own network")
    return found


def etcd_only(etcd_hosts: dict[str, dict[str, Any]]) -> dict[str, Node]:
    """Nodes for etcd's own hosts (the etcd group outside postgres_servers): they run etcd and
    nothing else of the runbook. Call after ``plan`` accepted them."""
    return {name: Node(name=name, role="etcd", address=replication_address(name, data) or "",
                       port=0, etcd_member=True) for name, data in etcd_hosts.items()}


def _message(problems: list[str]) -> str:
    return ("the inventory's cluster is not one primary with standbys, nothing was changed:\n"
            + "\n".join(f"  {p}" for p in problems))


def _loops(nodes: dict[str, Node]) -> list[str]:
    """Standbys whose chain of upstreams never reaches the primary."""
    found, reported = [], set()
    for name in nodes:
        chain, current = [], name
        while current in nodes and nodes[current].upstream and current not in chain:
            chain.append(current)
            current = nodes[current].upstream
        if current in chain and not set(chain) & reported:
            loop = chain[chain.index(current):] + [current]
            reported.update(loop)
            found.append(f"{name}: postgres_upstream makes a loop: {' -> '.join(loop)} never "
                         "reaches the primary")
    return found


def _uniform(hosts: dict[str, dict[str, Any]], key: str) -> list[str]:
    values = {name: _value(data, key) for name, data in hosts.items()}
    if len(set(values.values())) > 1:
        shown = ", ".join(f"{n}={v!r}" for n, v in values.items())
        return [f"{key} differs between hosts ({shown}): it is one setting of the cluster"]
    return []


def _collisions(names: list[str]) -> list[str]:
    seen: dict[str, str] = {}
    found = []
    for name in names:
        slot = slot_name(name)
        if slot in seen:
            found.append(f"{seen[slot]} and {name} would share the replication slot {slot!r}: "
                         "rename one")
        seen.setdefault(slot, name)
    return found


def parse_sync(value: str) -> tuple[str, int, list[str]]:
    """``"ANY 1 (pg2, pg3)"`` -> ("ANY", 1, ["pg2", "pg3"])."""
    found = _SYNC.fullmatch(value.strip())
    if not found:
        raise ValueError(f"{value!r} is not 'ANY n (host, ...)' or 'FIRST n (host, ...)'")
    names = [n.strip() for n in found.group(3).split(",")]
    return found.group(1), int(found.group(2)), names


def sync_problem(value: str, nodes: dict[str, Node], owner: str) -> str | None:
    """Why ``value`` cannot be the primary's synchronous standbys, or None."""
    try:
        method, count, names = parse_sync(value)
    except ValueError as exc:
        return str(exc)
    for name in names:
        if name not in nodes:
            return f"{name} is not a host of {SERVERS_GROUP}"
        if nodes[name].upstream != owner:
            return (f"{name} does not stream from the primary {owner} directly, so it cannot "
                    "confirm its commits")
    if len(set(names)) != len(names):
        return f"a host is named twice in {value!r}"
    if count > len(names):
        return (f"{method} {count} of {len(names)} standbys: commits would wait forever; "
                f"name at least {count}")
    return None


def synchronous_standby_names(value: str) -> str:
    """The server parameter for ``postgres_synchronous_standbys`` (application names quoted).

    >>> synchronous_standby_names("ANY 1 (pg2, db3.example.com)")
    'ANY 1 ("pg2", "db3_example_com")'
    """
    if not value:
        return ""
    method, count, names = parse_sync(value)
    return f"{method} {count} (" + ", ".join(f'"{slot_name(n)}"' for n in names) + ")"


_CACHE: dict[int, tuple[dict[str, Node], dict[str, Node]]] = {}


def current() -> dict[str, Node]:
    """The cluster of the running pyinfra inventory (``postgres_servers``, else every host),
    planned once per inventory."""
    from pyinfra import inventory

    key = id(inventory._get_module())
    if key not in _CACHE:
        group = inventory.get_group(SERVERS_GROUP, None)
        hosts = list(group) if group else list(inventory)
        primary = [h.name for h in (inventory.get_group(PRIMARY_GROUP, None) or [])]
        etcd = inventory.get_group(ETCD_GROUP, None)
        names = {h.name for h in hosts}
        own = {h.name: h.data.dict() for h in etcd or [] if h.name not in names}
        _CACHE[key] = plan({h.name: h.data.dict() for h in hosts}, primary,
                           [h.name for h in etcd] if etcd else None, own), etcd_only(own)
    return _CACHE[key][0]


def current_etcd_only() -> dict[str, Node]:
    """etcd's own hosts in the running pyinfra inventory (the etcd group outside
    postgres_servers), once ``current()`` has planned the cluster."""
    from pyinfra import inventory

    current()
    return _CACHE[id(inventory._get_module())][1]
