"""Step: the cluster runs under systemd, starts at boot once the network is up, and listens
where it is configured to."""

from __future__ import annotations

from pyinfra import host
from pyinfra.api import deploy
from pyinfra.facts.systemd import SystemdEnabled
from pyinfra.operations import files, systemd

from pginfra import ha
from pginfra.facts import Listeners, PostgresListenAddresses
from pginfra.programs import host_program
from pginfra.settings import Settings, database_hosts_only
from pginfra.templating import render_io
from pginfra_host import layout

DROPIN = "/etc/systemd/system/postgresql@.service.d/pginfra.conf"
WAIT_ONLINE = "systemd-networkd-wait-online.service"


def unit_name(settings: Settings) -> str:
    return f"{layout.unit(*settings.pg_cluster)}.service"


@database_hosts_only()
@deploy("Run the PostgreSQL service")
def run_service(settings: Settings):
    """
    Enable ``postgresql.service`` (which starts every cluster whose start.conf says ``auto``) and
    the cluster's own ``postgresql@VERSION-NAME`` unit, ordered after ``network-online.target``
    (and, on a host whose network is systemd-networkd's, with its wait-online service enabled,
    so that target means the addresses exist), with umask 0077; make sure both are running, and
    restart a server that does not listen on an address of its ``listen_addresses`` (it started
    before the address existed).

    .. code:: python

        run_service(load_settings())
    """
    dropin = files.put(
        name="postgresql@.service: after the network is up, umask 0077, LimitNOFILE",
        src=render_io("postgresql@.service.d-pginfra.conf.j2", nofile=settings.kernel_nofile),
        dest=DROPIN,
        user="root", group="root", mode="644", create_remote_dir=True,
    )
    systemd.daemon_reload(name="systemd picks up the PostgreSQL drop-in",
                          _if=dropin.did_change)
    if host.get_fact(SystemdEnabled).get("systemd-networkd.service"):
        systemd.service(name=f"{WAIT_ONLINE}: network-online means the addresses are there",
                        service=WAIT_ONLINE, enabled=True)
    systemd.service(
        name="Enable postgresql.service",
        service="postgresql.service",
        running=True,
        enabled=True,
    )
    if ha.patroni_runs_server(settings):
        return  # Patroni starts, stops and restarts the server (step 10); start.conf: manual
    # the health check's own test of the same thing
    missing = host_program("pginfra-health").missing_listeners(
        host.get_fact(PostgresListenAddresses, port=settings.postgres_port),
        settings.postgres_port, set(host.get_fact(Listeners)))
    if missing:
        systemd.service(
            name=f"Restart {unit_name(settings)}: nothing listens on {', '.join(missing)}",
            service=unit_name(settings), restarted=True,
        )
    systemd.service(
        name=f"Run {unit_name(settings)}",
        service=unit_name(settings),
        running=True,
        enabled=True,
    )
