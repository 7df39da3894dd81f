"""Step: the server's configuration, TLS files and access rules, applied safely."""

from __future__ import annotations

import hashlib
import io
import ipaddress
import shlex

from pyinfra import host, logger
from pyinfra.api import deploy
from pyinfra.facts.files import Sha1File
from pyinfra.facts.hardware import Cpus, Memory
from pyinfra.operations import files, python
from pyinfra.operations.util import any_changed

from pginfra import ha
from pginfra.pgbouncer import AUTH_USER
from pginfra.roles import EXPORTER_ROLE
from pginfra.secrets import require_strong_password
from pginfra.server_config import (
    CONF_NAME,
    cluster_floor,
    config_dir,
    passfile_path,
    passfile_text,
    quote,
    render_sections,
    server_parameters,
)
from pginfra.settings import Settings, database_hosts_only
from pginfra.templating import render_io
from pginfra.tuning import MB, format_size
from pginfra_host import layout
from pginfra_host.apply_config import PENDING

APPLY_CONFIG = layout.program("pginfra-apply-config")


def apply_command(settings: Settings, pairs: list[tuple[str, str]],
                  patroni: bool = False) -> str:
    """``patroni``: Patroni runs the server, so a restart goes through patronictl."""
    cluster = f"{settings.postgres_version}/{settings.postgres_cluster}"
    through = (["--patroni", ha.patroni_config_path(settings), settings.ha_scope,
                settings.host_name] if patroni else [])
    return shlex.join([APPLY_CONFIG, f"--cluster={cluster}", f"--port={settings.postgres_port}",
                       *through, *(f"{staged}={target}" for staged, target in pairs)])


@database_hosts_only()
@deploy("Configure the PostgreSQL server")
def configure_server(settings: Settings, tls_changed=None):
    """
    Render ``conf.d/postgresql-production.conf`` (tuned from the host's RAM and CPUs),
    ``pg_hba.conf`` and ``pg_ident.conf`` into a staging directory, then let
    ``pginfra-apply-config`` check them on the
    running server, reload, and restart only when a changed parameter needs it. A refused file
    fails the run and the previous one stays in force.

    .. code:: python

        configure_server(load_settings())
    """
    memory = host.get_fact(Memory) * MB  # the fact is in MB
    cpus = host.get_fact(Cpus)
    # refuses contradictions: no op yet
    params = server_parameters(settings, memory, cpus, cluster_floor(settings))
    conf = config_dir(settings)
    staged_dir = f"{conf}/pginfra-staged"

    for path in (conf, f"{conf}/conf.d", staged_dir):
        files.directory(name=f"Directory {path} (postgres, 0700)", path=path,
                        user="postgres", group="postgres", mode="700")
    # Debian's postgresql.conf keeps its content (pginfra writes conf.d/), not its 0644 mode.
    files.file(name=f"{conf}/postgresql.conf (postgres, 0640)", path=f"{conf}/postgresql.conf",
               user="postgres", group="postgres", mode="640")
    for path in (settings.postgres_log_directory, settings.postgres_wal_archive_dir):
        files.directory(name=f"Directory {path} (postgres, 0700)", path=path,
                        user="postgres", group="postgres", mode="700")

    targets = {
        CONF_NAME: f"{conf}/conf.d/{CONF_NAME}",
        "pg_hba.conf": f"{conf}/pg_hba.conf",
        "pg_ident.conf": f"{conf}/pg_ident.conf",
    }
    auth_query_user = AUTH_USER if (settings.pgbouncer_enabled
                                    and settings.pgbouncer_auth == "auth_query") else ""
    rendered = {
        CONF_NAME: render_io(
            "postgresql-production.conf.j2", path=targets[CONF_NAME], host_name=host.name,
            memory=format_size(memory), cpus=cpus, profile=settings.postgres_profile,
            storage=settings.postgres_storage,
            sections=[(title, [(n, quote(v)) for n, v in rows])
                      for title, rows in render_sections(params)],
        ),
        "pg_hba.conf": render_io("pg_hba.conf.j2", path=targets["pg_hba.conf"],
                                 rules=settings.postgres_hba, auth_query_user=auth_query_user,
                                 exporter_user=EXPORTER_ROLE if settings.health_prometheus
                                 else "", replication_user=settings.postgres_replication_user,
                                 replication_peers=replication_peers(settings),
                                 rewind_user=settings.ha_rewind_user if settings.postgres_ha
                                 else ""),
        "pg_ident.conf": render_io("pg_ident.conf.j2", path=targets["pg_ident.conf"],
                                   auth_query_user=auth_query_user),
    }
    passfile_ops = install_passfile(settings)
    staged_ops = [
        files.put(name=f"Stage {name}", src=rendered[name], dest=f"{staged_dir}/{name}",
                  user="postgres", group="postgres", mode="640")
        for name in targets
    ]
    # Apply when a staged file or TLS file changed, or when a live file differs from what is
    # wanted (edited by hand, or left as it was by a refused run).
    drifted = any(
        host.get_fact(Sha1File, path=targets[name]) != _sha1(rendered[name]) for name in targets
    )
    return python.call(
        name="Check, reload, and restart only if needed (pginfra-apply-config)",
        function=run_reporting,
        command=apply_command(settings, [(f"{staged_dir}/{n}", t) for n, t in targets.items()],
                              patroni=ha.patroni_runs_server(settings)),
        _if=any_changed(*staged_ops, *passfile_ops, *(tls_changed or []))
        if not drifted else None,
    )


def replication_peers(settings: Settings) -> list[tuple[str, str]]:
    """(host, network) of the other servers of the cluster: any of them may stream from this
    one (its standbys now, every server once another is promoted)."""
    peers = []
    for name, node in sorted(settings.cluster.items()):
        if name != settings.host_name and node.address:
            ip = ipaddress.ip_address(node.address)
            peers.append((name, f"{ip}/{ip.max_prefixlen}"))
    return peers


def install_passfile(settings: Settings) -> list:
    """The replication user's password for libpq, on a standby only (postgres, 0600)."""
    path = passfile_path(settings)
    if not settings.is_standby:
        files.file(name=f"No replication passfile {path} (not a standby)", path=path,
                   present=False)
        return []
    password = require_strong_password(settings.postgres_replication_user, host.name,
                                       settings.postgres_password_min_length)
    return [files.put(name=f"Replication passfile {path} (postgres, 0600)",
                      src=io.StringIO(passfile_text(settings, password)), dest=path,
                      user="postgres", group="postgres", mode="600")]


def run_reporting(state, host, command: str) -> bool:
    """Run a host-side program and show its report in the run output; its status is the op's.

    With the op's own connector arguments (``_sudo`` and the like): pyinfra runs a callback's
    commands with none, so as the SSH user, not root, where a deploy runs with sudo (Vagrant)."""
    from pyinfra.api.arguments import CONNECTOR_ARGUMENT_KEYS

    arguments = host.current_op_global_arguments or {}
    connector = {key: arguments[key] for key in CONNECTOR_ARGUMENT_KEYS if key in arguments}
    ok, output = host.run_shell_command(command=command, print_output=False, **connector)
    for line in output.output_lines:
        logger.info(f"{host.print_prefix}{line}")
        if line.startswith(f"pginfra-apply-config: {PENDING} for"):
            ha.PENDING_RESTART.add(host.name)  # Patroni's rolling restart, in the HA step
    return ok


def _sha1(io) -> str:
    value = hashlib.sha1(io.getvalue().encode()).hexdigest()
    io.seek(0)
    return value
