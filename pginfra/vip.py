"""The floating-address client path of an HA cluster, planned: with ``postgres_ha: patroni`` and
``ha_client_path: vip``, keepalived (Debian 12's 2.2) on every member puts ``ha_vip`` on
``ha_vip_interface`` of the member whose Patroni answers ``/primary`` with 200, and only there.
Clients call the floating address on PgBouncer's port and reach the leader's PgBouncer, which
listens on the floating address too (``net.ipv4.ip_nonlocal_bind``: it binds an address the
host does not hold yet). Pure functions of the settings.

Why keepalived and not vip-manager: Debian 12's vip-manager (1.0.2) reads only etcd's v2 API
(vip-manager#71, #250), and pginfra's Patroni keeps its keys through the v3 API (``etcd3``),
which the v2 API does not see; etcd's v2 API is off here and gone in etcd 3.6.

Each member's VRRP instance tracks a check of its own Patroni (``curl`` with pginfra's CA,
``OPTIONS /primary``): a member whose check fails is in the FAULT state and holds nothing, so
the address is never on a replica; VRRP goes unicast to the other members (no multicast on the
network needed).

    from pginfra.settings import resolve
    from pginfra.topology import plan

    hosts = {f"db{i}": {"postgres_ha": "patroni", "ha_client_path": "vip",
                        "ha_vip": "10.0.0.50/24", "ha_vip_interface": "eth0",
                        "postgres_listen_addresses": ["localhost", f"10.0.0.{i}"]}
             for i in (1, 2, 3)}
    settings = resolve(hosts["db1"], "db1")
    settings.cluster = plan(hosts, ["db1"]); settings.node = settings.cluster["db1"]
    keepalived_context(settings, "db1")["peers"]     # ['10.0.0.2', '10.0.0.3']
    render("keepalived.conf.j2", **keepalived_context(settings, "db1"))
"""

from __future__ import annotations

import ipaddress
import shlex
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pginfra.settings import Settings

PACKAGES = ("keepalived", "curl")  # Debian 12's keepalived 2.2.7; curl asks Patroni
SERVICE = "keepalived.service"
BINARY = "/usr/sbin/keepalived"
CONFIG = "/etc/keepalived/keepalived.conf"
STAGED = "/etc/keepalived/keepalived.conf.pginfra-staged"
SYSCTL = "/etc/sysctl.d/60-pginfra-floating-address.conf"
SYSCTL_KEY = "net.ipv4.ip_nonlocal_bind"
CHECK_INTERVAL = 1  # seconds between checks of Patroni
CHECK_FALL = 2  # failed checks before the address is let go
ADVERT_INTERVAL = 1  # seconds between VRRP adverts


def wanted(settings: Settings) -> bool:
    return bool(settings.postgres_ha) and settings.ha_client_path == "vip"


def address(settings: Settings) -> str:
    """The floating address, without its prefix.

    >>> from pginfra.settings import resolve
    >>> address(resolve({"postgres_ha": "patroni", "ha_client_path": "vip",
    ...                  "ha_vip": "10.0.0.50/24", "ha_vip_interface": "eth0"}))
    '10.0.0.50'
    """
    return str(ipaddress.IPv4Interface(settings.ha_vip).ip) if wanted(settings) else ""


def check_command(settings: Settings, host_name: str) -> str:
    """The command keepalived runs as its check: 0 only while this member's Patroni says it
    leads. Patroni's certificate is checked against pginfra's CA and its address."""
    from pginfra import ha

    url = f"{ha.rest_url(settings, host_name)}/primary"
    return shlex.join(["/usr/bin/curl", "--silent", "--fail", "--max-time", "2",
                       "--request", "OPTIONS", "--cacert", ha.PATRONI_TLS["ca"],
                       "--output", "/dev/null", url])


def keepalived_context(settings: Settings, host_name: str) -> dict[str, Any]:
    """What templates/keepalived.conf.j2 needs for ``host_name``."""
    vip = ipaddress.IPv4Interface(settings.ha_vip)
    me = settings.cluster[host_name]
    return {
        "member": host_name,
        "scope": settings.ha_scope,
        "interface": settings.ha_vip_interface,
        "router_id": settings.ha_vip_router_id,
        "vip": str(vip),
        "own": me.address,
        "peers": [n.address for name, n in settings.cluster.items() if name != host_name],
        "check": check_command(settings, host_name),
        "check_interval": CHECK_INTERVAL,
        "check_fall": CHECK_FALL,
        "advert_interval": ADVERT_INTERVAL,
    }


def interface_problem(settings: Settings, devices: dict[str, dict]) -> str | None:
    """Whether this host has ``ha_vip_interface`` on the floating address's network
    (``devices``: pyinfra's NetworkDevices fact); None when it does."""
    if not wanted(settings):
        return None
    name = settings.ha_vip_interface
    vip = ipaddress.IPv4Interface(settings.ha_vip)
    device = devices.get(name)
    if device is None:
        return (f"ha_vip_interface: this host has no interface {name!r} (it has "
                f"{', '.join(sorted(devices)) or 'none'})")
    ipv4 = (device.get("ipv4") or {}).get("address")
    have = [ipv4] if ipv4 else []
    have += [a.get("address") for a in (device.get("ipv4") or {}).get("additional_ips", [])]
    if not any(a and ipaddress.ip_address(a) in vip.network for a in have):
        return (f"ha_vip_interface: {name} has no address in {vip.network} (it has "
                f"{', '.join(a for a in have if a) or 'none'}): ha_vip {vip} would not be "
                "reachable there")
    return None
