"""Step: the server's TLS key and certificate, never Debian's snakeoil pair."""

from __future__ import annotations

import ipaddress
from pathlib import Path

from pyinfra import host
from pyinfra.api import deploy
from pyinfra.operations import files

from pginfra import vip
from pginfra.server_config import tls_paths
from pginfra.settings import Settings, SettingsError, database_hosts_only


def certificate_names(settings: Settings) -> tuple[list[str], list[str]]:
    """(DNS names, IP addresses) a client may use for this host, for the certificate's SAN."""
    names = [host.name, *settings.postgres_tls_names]
    if settings.node is not None and settings.node.address:
        names.append(settings.node.address)  # where the other servers reach this one
    ssh_hostname = host.data.get("ssh_hostname")
    if ssh_hostname:
        names.append(ssh_hostname)
    names += [a for a in settings.postgres_listen_addresses if a not in ("*", "0.0.0.0", "::")]
    if settings.postgres_ha and settings.ha_client_path == "haproxy":
        # every member's HAProxy passes clients' TLS through to the leader's PgBouncer: a client
        # that called any member (verify-full) gets the leader's certificate, so each names all
        for name, node in settings.cluster.items():
            names += [name, node.address]
    if vip.wanted(settings):  # clients call the floating address, held by the leader
        names.append(vip.address(settings))
    dns, ips = [], []
    for name in names:
        try:
            ip = str(ipaddress.ip_address(name))
            if ip not in ips:
                ips.append(ip)
        except ValueError:
            if name not in dns and not name.startswith("@"):
                dns.append(name)
    return dns, ips


def source_files(settings: Settings) -> dict[str, Path]:
    """The key, certificate and CA to install: the operator's, or pginfra's CA's."""
    given = {
        "key": settings.postgres_tls_key_file,
        "cert": settings.postgres_tls_cert_file,
        "ca": settings.postgres_tls_ca_file,
    }
    if any(given.values()):
        missing = [f"postgres_tls_{k}_file" for k, v in given.items() if not v]
        if missing:
            raise SettingsError(f"{host.name}: TLS files from the operator need all three; "
                                f"missing {', '.join(missing)}")
        paths = {k: Path(v).expanduser() for k, v in given.items()}
        for key, path in paths.items():
            if not path.is_file():
                raise SettingsError(f"{host.name}: postgres_tls_{key}_file: {path} not found")
        return paths

    from pginfra.ca import ensure_ca, ensure_server_cert

    ca_key, ca_cert = ensure_ca()
    dns, ips = certificate_names(settings)
    key, cert = ensure_server_cert(host.name, ips, dns)
    return {"key": key, "cert": cert, "ca": ca_cert}


@database_hosts_only()
@deploy("Install TLS key and certificate")
def install_tls(settings: Settings):
    """
    Upload the host's key (0600, postgres), certificate and CA certificate next to its
    configuration. With no files given in inventory data, pginfra's own CA (on the control
    machine, git-ignored) issues a certificate naming the host, so clients can verify-full.

    .. code:: python

        tls_ops = install_tls(load_settings())
    """
    sources = source_files(settings)
    targets = tls_paths(settings)
    files.directory(name="TLS directory (postgres, 0700)", path=str(Path(targets["key"]).parent),
                    user="postgres", group="postgres", mode="700")
    return [
        files.put(name=f"TLS {kind} -> {targets[kind]}", src=str(sources[kind]),
                  dest=targets[kind], user="postgres", group="postgres",
                  mode="600" if kind == "key" else "644")
        for kind in ("key", "cert", "ca")
    ]
