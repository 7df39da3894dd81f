"""The HAProxy client path of an HA cluster, planned: with ``postgres_ha: patroni`` and
``ha_client_path: haproxy`` every member runs Debian's HAProxy 2.6 with two TCP listeners on
the addresses PgBouncer listens on: read-write (``ha_haproxy_port_rw``) to the leader's
PgBouncer, read-only (``ha_haproxy_port_ro``) to the replicas'. Which member leads or follows
HAProxy learns from each member's Patroni REST API (``GET /primary``, ``GET /replica?lag=``)
over TLS, checked against pginfra's CA and the member's name. Client TLS passes through:
it ends at the PgBouncer of the member HAProxy picked. Pure functions of the settings.

    from pginfra.settings import resolve
    from pginfra.topology import plan

    hosts = {f"db{i}": {"postgres_ha": "patroni",
                        "postgres_listen_addresses": ["localhost", f"10.0.0.{i}"]}
             for i in (1, 2, 3)}
    settings = resolve(hosts["db1"], "db1")
    settings.cluster = plan(hosts, ["db1"]); settings.node = settings.cluster["db1"]
    context = haproxy_config_context(settings, "db1", hosts)
    context["listens"][0]["binds"]           # ['127.0.0.1:5000', '10.0.0.1:5000']
    [(s["name"], s["address"], s["port"]) for s in context["servers"]]
    # [('db1', '10.0.0.1', 6432), ('db2', '10.0.0.2', 6432), ('db3', '10.0.0.3', 6432)]
    render("haproxy.cfg.j2", **context)      # /etc/haproxy/haproxy.cfg
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from pginfra.pgbouncer import listen_addresses
from pginfra.settings import BY_NAME, SettingsError
from pginfra.topology import slot_name

if TYPE_CHECKING:
    from pginfra.settings import Settings

PACKAGE = "haproxy"  # Debian 12's: HAProxy 2.6
SERVICE = "haproxy.service"
BINARY = "/usr/sbin/haproxy"
CONFIG = "/etc/haproxy/haproxy.cfg"  # what Debian's haproxy.service reads (root:haproxy 0640)
STAGED = "/etc/haproxy/haproxy.cfg.pginfra-staged"  # checked with haproxy -c, then installed
# The CA that signs Patroni's REST API certificates (pginfra's CA, as PATRONI_TLS["ca"]), a
# copy HAProxy may read: /etc/patroni/tls is postgres' alone (0700).
CA_FILE = "/etc/haproxy/pginfra-ca.crt"  # root:haproxy 0640
ADMIN_SOCKET = "/run/haproxy/admin.sock"  # local only (Debian's), no stats on the network
USER = GROUP = "haproxy"
CHROOT = "/var/lib/haproxy"  # Debian's: journald's /dev/log is bound into it by the unit
# Long-lived database sessions: an idle client or server is cut after CLIENT_TIMEOUT (TCP
# keepalives find dead peers); connecting to a PgBouncer may take CONNECT_TIMEOUT.
CONNECT_TIMEOUT = "4s"
CLIENT_TIMEOUT = SERVER_TIMEOUT = "30m"
# Health checks: every 3 s (1 s while a member's state is changing); down after 3 failures, up
# after 2 successes; a check waits at most CHECK_TIMEOUT for Patroni's answer.
CHECK = {"inter": "3s", "fastinter": "1s", "fall": 3, "rise": 2}
CHECK_TIMEOUT = "3s"
_WORD = re.compile(r"[A-Za-z0-9._:@/+-]+")  # one HAProxy configuration word, nothing to quote


def wanted(settings: Settings) -> bool:
    """Whether this host runs HAProxy in front of the cluster."""
    return bool(settings.postgres_ha) and settings.ha_client_path == "haproxy"


def bind_address(address: str, port: int) -> str:
    """A ``bind`` argument for one of PgBouncer's listen addresses.

    >>> bind_address("10.0.0.1", 5000), bind_address("::1", 5000), bind_address("*", 5000)
    ('10.0.0.1:5000', '[::1]:5000', '0.0.0.0:5000')
    """
    if address == "*":
        address = "0.0.0.0"
    elif address == "localhost":
        address = "127.0.0.1"
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        if not _WORD.fullmatch(address):
            raise ValueError(f"{address!r} is not an address HAProxy can bind to") from None
        return f"{address}:{port}"  # a host name: HAProxy resolves it when it starts
    return f"[{ip}]:{port}" if ip.version == 6 else f"{ip}:{port}"


def replica_check_uri(settings: Settings) -> str:
    """Patroni answers it with 200 on a replica that runs, streams and is at most
    ``ha_maximum_lag_on_failover`` bytes behind (one a failover could promote)."""
    return f"/replica?lag={settings.ha_maximum_lag_on_failover}"


def _value(data: Mapping[str, Any], key: str) -> Any:
    return data.get(key, BY_NAME[key].default)


def backends(settings: Settings,
             members_data: Mapping[str, Mapping[str, Any]] | None = None) -> list[dict]:
    """Each member of the cluster, in inventory order, as HAProxy reaches it: its PgBouncer on
    its replication address (its server when ``pgbouncer_enabled`` is false there), its
    Patroni on the same address. ``members_data``: each member's inventory data
    (``pgbouncer_port`` may differ between hosts); a member without: this host's settings.
    A member whose PgBouncer does not listen on its replication address is refused."""
    servers, problems = [], []
    for name, node in settings.cluster.items():
        data = (members_data or {}).get(name)
        known = settings.as_dict() if data is None else data
        address = node.address
        if _value(known, "pgbouncer_enabled"):
            port, target = _value(known, "pgbouncer_port"), "PgBouncer"
            # without its data: as its server, which listens there (pginfra.topology checked)
            listen = [address] if data is None else (
                _value(data, "pgbouncer_listen_addresses")
                or _value(data, "postgres_listen_addresses"))
            if not set(listen) & {address, "*", "0.0.0.0", "::"}:
                problems.append(
                    f"{name}: pgbouncer_listen_addresses: HAProxy reaches {name}'s PgBouncer at "
                    f"{address} (its replication address), but it listens on "
                    f"{', '.join(listen)} only: add {address}")
        else:
            port, target = node.port, "PostgreSQL (pgbouncer_enabled is false)"
        if not _WORD.fullmatch(name):
            problems.append(f"{name}: HAProxy checks Patroni's certificate for this host name, "
                            "which has a character a configuration word cannot hold")
        servers.append({
            "name": slot_name(name),  # unique (pginfra.topology) and a valid HAProxy name
            "host": name,  # Patroni's certificate names it (common name and DNS name)
            "address": address,
            "endpoint": bind_address(address, port),
            "port": port,
            "target": target,
        })
    if problems:
        lines = "\n".join(f"  {p}" for p in problems)
        raise SettingsError(f"HAProxy cannot reach every member, nothing was changed:\n{lines}")
    return servers


def haproxy_config_context(settings: Settings, host_name: str,
                           members_data: Mapping[str, Mapping[str, Any]] | None = None
                           ) -> dict[str, Any]:
    """What ``templates/haproxy.cfg.j2`` renders /etc/haproxy/haproxy.cfg of ``host_name``
    from: listeners on the host's PgBouncer addresses, every member's PgBouncer behind each,
    the Patroni REST checks. ``members_data`` as :func:`backends`."""
    maxconn = settings.pgbouncer_max_client_conn  # per listener: a PgBouncer takes as many
    scope = settings.ha_scope
    listens = [
        {"name": f"{scope}_rw", "port": settings.ha_haproxy_port_rw,
         "meaning": "read-write: the leader's PgBouncer, the one member Patroni's /primary "
                    "answers 200 on",
         "balance": "first", "check_uri": "/primary"},
        {"name": f"{scope}_ro", "port": settings.ha_haproxy_port_ro,
         "meaning": "read-only: the replicas' PgBouncers, those at most "
                    f"{settings.ha_maximum_lag_on_failover} bytes behind "
                    "(ha_maximum_lag_on_failover)",
         "balance": "leastconn", "check_uri": replica_check_uri(settings)},
    ]
    for listen in listens:
        listen["maxconn"] = maxconn
        listen["binds"] = list(dict.fromkeys(bind_address(a, listen["port"])
                                             for a in listen_addresses(settings)))
    return {
        "path": CONFIG,
        "host_name": host_name,
        "scope": scope,
        "maxconn": maxconn * len(listens),
        "chroot": CHROOT,
        "user": USER,
        "group": GROUP,
        "admin_socket": ADMIN_SOCKET,
        "ca_file": CA_FILE,
        "rest_port": settings.ha_rest_port,
        "timeouts": {"connect": CONNECT_TIMEOUT, "client": CLIENT_TIMEOUT,
                     "server": SERVER_TIMEOUT, "client-fin": "30s", "server-fin": "30s",
                     "check": CHECK_TIMEOUT},
        "check": dict(CHECK),
        "listens": listens,
        "servers": backends(settings, members_data),
    }
