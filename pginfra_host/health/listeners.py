"""Which TCP sockets listen on this host, from the kernel's tables: a server that started
while one of its addresses did not exist runs without it, and only this shows it. Used by
the postgres and pgbouncer checks, and by the deploy (``missing_listeners``, through
``host_program("pginfra-health")``) to restart a server that misses an address.
"""

from __future__ import annotations

import ipaddress


def listening_sockets(tables=("/proc/net/tcp", "/proc/net/tcp6")) -> set[str]:
    """``address:port`` of every TCP socket in LISTEN in this network namespace."""
    found = set()
    for table in tables:
        try:
            with open(table, encoding="ascii") as f:
                lines = f.read().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if len(fields) > 3 and fields[3] == "0A":  # TCP_LISTEN
                found.add(decode_socket(fields[1]))
    return found


def decode_socket(text: str) -> str:
    """``0100007F:1538`` -> ``127.0.0.1:5432`` (each 32-bit word of the address is in the
    kernel's byte order, little-endian here; IPv6 has four of them)."""
    address, port = text.split(":")
    raw = bytes.fromhex(address)
    ordered = b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4))
    return f"{ipaddress.ip_address(ordered)}:{int(port, 16)}"


def missing_listeners(addresses: list[str], port: int, sockets: set[str]) -> list[str]:
    """The ``address:port`` of each IP address in ``addresses`` nothing listens on; names and
    "*" are the server's to resolve, and a wildcard socket serves every address."""
    if {f"0.0.0.0:{port}", f":::{port}", f"*:{port}"} & sockets:
        return []
    missing = []
    for address in addresses:
        try:
            ip = ipaddress.ip_address(address.strip())
        except ValueError:
            continue
        if f"{ip}:{port}" not in sockets:
            missing.append(f"{ip}:{port}")
    return missing
