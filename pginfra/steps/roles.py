"""Step: roles, databases and pg_stat_statements, from inventory data and the secrets source."""

from __future__ import annotations

from pyinfra import host
from pyinfra.api import deploy
from pyinfra.operations import server

from pginfra import ha
from pginfra.credentials import credentials, server_roles
from pginfra.facts import PostgresDatabases, PostgresDatabaseState, PostgresRoles
from pginfra.pgbouncer import AUTH_USER, auth_function_sql
from pginfra.roles import (
    plan_database_objects,
    plan_databases,
    plan_roles,
    psql_stdin,
    quiet_sql,
)
from pginfra.settings import Settings, database_hosts_only


def needs_auth_function(settings: Settings, state: dict) -> bool:
    """Whether auth_query mode is on and the lookup function is missing or not as it must be:
    SECURITY DEFINER, search_path pinned, no EXECUTE for PUBLIC."""
    if not (settings.pgbouncer_enabled and settings.pgbouncer_auth == "auth_query"):
        return False
    fn = state.get("auth_function")
    return not (fn and fn["secdef"] and not fn["public_execute"]
                and fn["config"] == ["search_path=pg_catalog, pg_temp"])


@database_hosts_only()
@deploy("Roles and databases")
def manage_roles(settings: Settings, new_cluster: bool = False):
    """
    Create and change roles to match ``postgres_roles`` (passwords as SCRAM verifiers computed
    here, sent over stdin, never on a command line), the postgres superuser's password, the
    databases of ``postgres_databases`` with CONNECT for their roles only, and
    pg_stat_statements in every managed database, readable through pg_read_all_stats.

    .. code:: python

        manage_roles(load_settings())
    """
    if not ha.writes_here(settings, host.name):
        return  # read-only: roles and databases arrive from the primary (Patroni's leader)
    roles = server_roles(settings)
    port = settings.postgres_port

    def fact(cls, **kwargs):  # a cluster created in this run has nothing yet
        return None if new_cluster else host.get_fact(cls, port=port, **kwargs)

    statements = plan_roles(roles, fact(PostgresRoles) or {}, credentials(settings, new_cluster))
    if statements:
        touched = sorted({s.split('"')[1] for s in statements})
        server.shell(name=f"Create or change roles: {', '.join(touched)}",
                     commands=[psql_stdin(port)], _stdin=quiet_sql(statements))

    existing = fact(PostgresDatabases) or {}
    databases = settings.postgres_databases
    if any(r["name"] == AUTH_USER for r in roles):  # auth_query looks up in each database
        databases = [dict(db, connect=[*db.get("connect", []), AUTH_USER]) for db in databases]
    statements = plan_databases(databases, existing)
    if statements:
        # CREATE DATABASE cannot run inside a transaction block.
        server.shell(name="Create databases, set owners and CONNECT grants",
                     commands=[psql_stdin(port, atomic=False)], _stdin=quiet_sql(statements))

    connect_roles = {db["name"]: [db["owner"], *db.get("connect", [])] for db in databases}
    for db in [{"name": "postgres"}, *settings.postgres_databases]:
        state = {}
        if db["name"] in existing:
            state = fact(PostgresDatabaseState, database=db["name"]) or {}
        statements = plan_database_objects(db.get("extensions", []), state,
                                           connect_roles.get(db["name"], []))
        if db["name"] != "postgres" and needs_auth_function(settings, state):
            statements += auth_function_sql()
        if statements:
            server.shell(name=f"Database {db['name']}: public schema, pg_stat_statements",
                         commands=[psql_stdin(port, db["name"])], _stdin=quiet_sql(statements))
