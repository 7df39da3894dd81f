"""Step: PgBouncer in front of the server, its userlist in step with pg_authid."""

from __future__ import annotations

from pyinfra import host
from pyinfra.api import deploy
from pyinfra.facts.files import FileContents
from pyinfra.operations import apt, files, server, systemd
from pyinfra.operations.util import any_changed

from pginfra.credentials import credentials
from pginfra.facts import Listeners
from pginfra.pgbouncer import (
    INI,
    USERLIST,
    ini_sections,
    needs_restart,
    parse_ini,
    userlist_roles,
)
from pginfra.programs import host_program
from pginfra.scram import make_verifier, verify
from pginfra.secrets import require_strong_password
from pginfra.server_config import tls_paths
from pginfra.settings import Settings, database_hosts_only
from pginfra.templating import render_io

LIMITS_DROPIN = "/etc/systemd/system/pgbouncer.service.d/pginfra.conf"
LOG = "/var/log/postgresql/pgbouncer.log"
# PgBouncer answers a reload (SIGHUP) at once and reads its files afterwards: a file it refuses
# shows only in its log. Read what the reload added to the log; an ERROR or FATAL fails the run.
RELOAD_AND_CHECK = f"""set -e
log={LOG}
before=$(stat -c %s "$log" 2>/dev/null || echo 0)
systemctl reload pgbouncer.service
for i in $(seq 1 50); do
  tail -c +$((before + 1)) "$log" 2>/dev/null | grep -q 'got SIGHUP' && break
  sleep 0.2
done
sleep 0.5
if tail -c +$((before + 1)) "$log" | grep -E ' (ERROR|FATAL) '; then
  echo "PgBouncer refused its new configuration (above, from $log)" >&2
  exit 1
fi"""


def userlist_verifiers(settings: Settings, new_cluster: bool) -> list[tuple[str, str]]:
    """(role, verifier) lines: the server's verifiers for server roles, and for console-only
    users the verifier already in the userlist while it matches, else a new one."""
    server = credentials(settings, new_cluster)
    old = _userlist_names()
    lines = []
    for role in userlist_roles(settings):
        if role in server:
            lines.append((role, server[role]))
            continue
        password = require_strong_password(role, host.name, settings.postgres_password_min_length)
        have = old.get(role)
        lines.append((role, have if have and verify(password, have) else make_verifier(password)))
    return lines


def _userlist_names() -> dict[str, str]:
    """Role -> verifier in the host's current userlist.txt."""
    old = {}
    for line in host.get_fact(FileContents, path=USERLIST) or []:
        parts = line.split('"')
        if len(parts) >= 4:
            old[parts[1]] = parts[3]
    return old


@database_hosts_only()
@deploy("PgBouncer")
def run_pgbouncer(settings: Settings, new_cluster: bool = False, tls_changed=None):
    """
    Install PgBouncer, write pgbouncer.ini and a userlist.txt whose SCRAM verifiers are the
    ones in pg_authid (computed in the same run as the roles), and reload it on a change;
    restart only when a listen or socket setting changed, or when it does not listen where its
    file says. (Pools that could exhaust the server's connection slots stopped the run before
    anything changed: ``pginfra.preflight``.)

    .. code:: python

        run_pgbouncer(load_settings(), new_cluster)
    """
    if not settings.pgbouncer_enabled:
        return
    sections = ini_sections(settings, tls_paths(settings))
    old_ini = host.get_fact(FileContents, path=INI)
    force_restart = False
    restart_for = needs_restart("\n".join(old_ini) if old_ini else None, sections)
    users = userlist_verifiers(settings, new_cluster)
    if set(_userlist_names()) - {role for role, _ in users}:
        restart_for = [*restart_for, "users removed from userlist.txt"]
    if old_ini and not restart_for:
        # Running, but not where its current file says (it started before an address existed).
        running = parse_ini("\n".join(old_ini)).get("pgbouncer", {})
        missing = host_program("pginfra-health").missing_listeners(
            running.get("listen_addr", "").split(","), int(running.get("listen_port", 0) or 0),
            set(host.get_fact(Listeners)))
        if missing:
            restart_for = [f"nothing listens on {', '.join(missing)}"]
            force_restart = True

    apt.packages(name="Install PgBouncer", packages=["pgbouncer"],
                 _env={"DEBIAN_FRONTEND": "noninteractive"})
    limits = files.put(
        name="PgBouncer may hold many client connections (LimitNOFILE)",
        src=render_io("pgbouncer.service.d-pginfra.conf.j2"),
        dest=LIMITS_DROPIN, user="root", group="root", mode="644", create_remote_dir=True,
    )
    files.directory(name="/etc/pgbouncer (postgres, 0750)", path="/etc/pgbouncer",
                    user="postgres", group="postgres", mode="750")
    ini = files.put(
        name="pgbouncer.ini",
        src=render_io("pgbouncer.ini.j2", path=INI, sections=sections),
        dest=INI, user="postgres", group="postgres", mode="640",
    )
    userlist = files.put(
        name=f"userlist.txt: {', '.join(role for role, _ in users)}",
        src=render_io("userlist.txt.j2", users=users),
        dest=USERLIST, user="postgres", group="postgres", mode="600",
    )
    systemd.daemon_reload(name="systemd picks up the PgBouncer drop-in", _if=limits.did_change)
    # A restart drops client connections: only for the settings PgBouncer cannot reload.
    restart_if = any_changed(ini, limits) if restart_for else any_changed(limits)
    if force_restart:
        restart_if = None  # whatever else changes
    systemd.service(
        name="Restart PgBouncer for: " + ", ".join(restart_for or ["LimitNOFILE"]),
        service="pgbouncer.service", restarted=True, _if=restart_if,
    )
    server.shell(
        name="Reload PgBouncer (re-reads pgbouncer.ini and userlist.txt) and check it took",
        commands=[RELOAD_AND_CHECK], _if=any_changed(ini, userlist, *(tls_changed or [])),
    )
    systemd.service(name="PgBouncer enabled and running", service="pgbouncer.service",
                    running=True, enabled=True)
