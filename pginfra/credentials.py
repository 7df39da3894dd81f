"""The SCRAM verifier each role should have, for the postgres superuser and every login role of
the inventory: computed once per host and run and shared by the roles step (the server) and the
PgBouncer step (its userlist), so both get the same strings. A standby gets the primary's.

    verifiers = credentials(settings)   # {"postgres": "SCRAM-SHA-256$4096:...", "app": ...}
"""

from __future__ import annotations

from pyinfra import host

from pginfra.facts import PostgresRoles
from pginfra.pgbouncer import AUTH_USER
from pginfra.roles import role_spec, wanted_verifiers
from pginfra.secrets import require_strong_password
from pginfra.settings import Settings

_CREDENTIALS: dict[str, dict[str, str]] = {}


def server_roles(settings: Settings) -> list[dict]:
    """The roles of postgres_roles, plus PgBouncer's auth_query user when that mode is on."""
    roles = [role_spec(r) for r in settings.postgres_roles]
    if settings.pgbouncer_enabled and settings.pgbouncer_auth == "auth_query":
        roles.append(role_spec({"name": AUTH_USER, "login": True}))
    return roles


def credentials(settings: Settings, new_cluster: bool = False) -> dict[str, str]:
    """Role name -> the SCRAM verifier it should have, for the postgres superuser and every
    login role; computed once per host and run, so the server and PgBouncer's userlist get the
    same strings."""
    # A standby has the primary's roles: its PgBouncer must offer the primary's verifiers.
    source = _primary(settings) if settings.is_standby else host
    if source.name not in _CREDENTIALS:
        strength = settings.postgres_password_min_length
        passwords = {"postgres": require_strong_password("postgres", host.name, strength)}
        for role in server_roles(settings):
            if role["login"]:
                passwords[role["name"]] = require_strong_password(role["name"], host.name,
                                                                  strength)
        port = source.data.get("postgres_port", settings.postgres_port)
        current = {} if new_cluster and source is host else source.get_fact(
            PostgresRoles, port=port) or {}
        # Hosts are planned side by side: the first to get here decides, so the primary and
        # every standby use the same verifier for a new password.
        _CREDENTIALS.setdefault(source.name, wanted_verifiers(passwords, current))
    return _CREDENTIALS[source.name]


def _primary(settings: Settings):
    from pyinfra import inventory

    name = next(n for n, node in settings.cluster.items() if node.role == "primary")
    return inventory.get_host(name)


