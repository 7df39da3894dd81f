"""Step: the HA cluster's client path. With ``ha_client_path: vip``, keepalived on every member
puts the floating address on the leader (``pginfra.vip``). With ``ha_client_path: haproxy``,
HAProxy on every member: read-write on ``ha_haproxy_port_rw`` to the leader's PgBouncer,
read-only on ``ha_haproxy_port_ro`` to the replicas', the leader found by Patroni's REST API
(planned in ``pginfra.haproxy``). A configuration either refuses never replaces the one in
force."""

from __future__ import annotations

import hashlib
import io
import shlex

from pyinfra import host
from pyinfra.api import deploy
from pyinfra.facts.deb import DebPackages
from pyinfra.facts.files import Sha1File
from pyinfra.operations import apt, files, server, systemd
from pyinfra.operations.util import any_changed

from pginfra import haproxy, vip
from pginfra.settings import Settings, database_hosts_only
from pginfra.templating import render

# Check the staged file as HAProxy will read it, then put it in place in one rename.
INSTALL = (f"{haproxy.BINARY} -c -f {shlex.quote(haproxy.STAGED)} && "
           f"install -o root -g {haproxy.GROUP} -m 0640 {shlex.quote(haproxy.STAGED)} "
           f"{shlex.quote(haproxy.CONFIG + '.pginfra-new')} && "
           f"mv -f {shlex.quote(haproxy.CONFIG + '.pginfra-new')} {shlex.quote(haproxy.CONFIG)}")


def members_data(settings: Settings) -> dict[str, dict]:
    """Each member's inventory data (its PgBouncer's port and addresses may be its own)."""
    from pyinfra import inventory

    members = {name: inventory.get_host(name, None) for name in settings.cluster}
    return {name: member.data.dict() for name, member in members.items() if member is not None}


def _floating_address(settings: Settings) -> None:
    """keepalived on every member, its configuration staged, checked with ``keepalived
    --config-test``, then installed; running, started at boot, reloaded when it changed."""
    text = render("keepalived.conf.j2", **vip.keepalived_context(settings, host.name))
    installed = host.get_fact(DebPackages)
    staged = files.put(name=f"Stage {vip.CONFIG} ({vip.STAGED})", src=io.StringIO(text),
                       dest=vip.STAGED, user="root", group="root", mode="0600",
                       create_remote_dir=True)
    # Debian's keepalived does not start without /etc/keepalived/keepalived.conf: it starts
    # below, once its checked configuration is in place
    apt.packages(name="keepalived and curl (Debian's packages)", packages=list(vip.PACKAGES),
                 no_recommends=True, update=any(p not in installed for p in vip.PACKAGES),
                 cache_time=settings.pginfra_apt_cache_time,
                 extra_install_args="-o Dpkg::Options::=--force-confdef "
                                    "-o Dpkg::Options::=--force-confold",
                 _env={"DEBIAN_FRONTEND": "noninteractive"})
    drifted = host.get_fact(Sha1File, path=vip.CONFIG) != hashlib.sha1(text.encode()).hexdigest()
    install = server.shell(
        name=f"keepalived accepts the new configuration (--config-test), then it replaces "
             f"{vip.CONFIG}",
        commands=[f"{vip.BINARY} --config-test --use-file={shlex.quote(vip.STAGED)} && "
                  f"install -o root -g root -m 0600 {shlex.quote(vip.STAGED)} "
                  f"{shlex.quote(vip.CONFIG + '.pginfra-new')} && "
                  f"mv -f {shlex.quote(vip.CONFIG + '.pginfra-new')} {shlex.quote(vip.CONFIG)}"],
        _if=None if drifted else staged.did_change)
    systemd.service(name="keepalived running, started at boot", service=vip.SERVICE,
                    running=True, enabled=True)
    systemd.service(name="keepalived reloads its new configuration", service=vip.SERVICE,
                    reloaded=True, _if=install.did_change)


@database_hosts_only()
@deploy("HA client path (HAProxy or a floating address)")
def route_clients(settings: Settings):
    """
    With ``postgres_ha: patroni`` and ``ha_client_path: vip``: keepalived on every member
    moves the floating address ``ha_vip`` to the leader (``pginfra.vip``).
    With ``ha_client_path: haproxy``: Debian's HAProxy, a copy
    of pginfra's CA it may read (Patroni's certificates are checked against it), and
    /etc/haproxy/haproxy.cfg, staged, checked with ``haproxy -c``, then installed; HAProxy
    enabled, running, and reloaded (its sessions kept) when its configuration or CA changed.

    .. code:: python

        route_clients(load_settings())
    """
    if vip.wanted(settings):
        _floating_address(settings)
    if not haproxy.wanted(settings):
        return
    from pginfra.ca import ensure_ca

    # may refuse (a PgBouncer HAProxy could not reach): before any operation
    text = render("haproxy.cfg.j2", **haproxy.haproxy_config_context(
        settings, host.name, members_data(settings)))
    _, ca_cert = ensure_ca()

    installed = host.get_fact(DebPackages)
    apt.packages(name="HAProxy (Debian's package)", packages=[haproxy.PACKAGE],
                 no_recommends=True, update=haproxy.PACKAGE not in installed,
                 cache_time=settings.pginfra_apt_cache_time,
                 extra_install_args="-o Dpkg::Options::=--force-confdef "
                                    "-o Dpkg::Options::=--force-confold",
                 _env={"DEBIAN_FRONTEND": "noninteractive"})
    ca = files.put(name=f"{haproxy.CA_FILE}: pginfra's CA, Patroni's certificates' signer "
                        f"(root:{haproxy.GROUP}, 0640)",
                   src=str(ca_cert), dest=haproxy.CA_FILE, user="root", group=haproxy.GROUP,
                   mode="0640")
    staged = files.put(name=f"Stage {haproxy.CONFIG} ({haproxy.STAGED})", src=io.StringIO(text),
                       dest=haproxy.STAGED, user="root", group=haproxy.GROUP, mode="0640")
    # Install when the staged file or the CA changed, or when the live file is not what is
    # wanted (edited by hand, Debian's own, or left as it was by a refused run).
    drifted = host.get_fact(Sha1File, path=haproxy.CONFIG) != hashlib.sha1(
        text.encode()).hexdigest()
    install = server.shell(name=f"HAProxy accepts the new configuration (haproxy -c), then it "
                                f"replaces {haproxy.CONFIG}",
                           commands=[INSTALL], _if=None if drifted else any_changed(staged, ca))
    files.file(name=f"{haproxy.CONFIG} (root:{haproxy.GROUP}, 0640)", path=haproxy.CONFIG,
               user="root", group=haproxy.GROUP, mode="0640")
    # Started here (when it was not running) it reads the new file: no reload then.
    systemd.service(name="HAProxy running, started at boot", service=haproxy.SERVICE,
                    running=True, enabled=True)
    systemd.service(name="HAProxy reloads its new configuration (sessions kept)",
                    service=haproxy.SERVICE, reloaded=True, _if=install.did_change)
