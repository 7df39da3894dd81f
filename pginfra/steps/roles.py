"""Step: roles, databases and pg_stat_statements, from inventory data and the secrets source."""

from __future__ import annotations

import shlex

from pyinfra import host
from pyinfra.api import deploy
from pyinfra.operations import server

from pginfra.facts import PostgresDatabases, PostgresDatabaseState, PostgresRoles
from pginfra.roles import plan_database_objects, plan_databases, plan_roles, role_spec
from pginfra.secrets import require_password
from pginfra.settings import Settings


def psql_stdin(settings: Settings, database: str = "postgres", atomic: bool = True) -> str:
    """psql as the postgres OS user, reading SQL from stdin, stopping at the first error."""
    args = ["runuser", "-u", "postgres", "--", "psql", "-X", "-q", "-v", "ON_ERROR_STOP=1",
            "-p", str(settings.postgres_port), "-d", database]
    if atomic:
        args.append("--single-transaction")
    return shlex.join(args)


# Statements carrying SCRAM verifiers must not reach the server log, even when slow or failing.
QUIET = ("SET log_min_duration_statement = -1;\nSET log_min_error_statement = panic;\n"
         "SET log_statement = 'none';\n")


def _sql(statements: list[str]) -> str:
    return QUIET + "".join(f"{s};\n" for s in statements)


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
    roles = [role_spec(r) for r in settings.postgres_roles]
    passwords = {"postgres": require_password("postgres", host.name)}
    for role in roles:
        if role["login"]:
            passwords[role["name"]] = require_password(role["name"], host.name)

    port = settings.postgres_port

    def fact(cls, **kwargs):  # a cluster created in this run has nothing yet
        return None if new_cluster else host.get_fact(cls, port=port, **kwargs)

    statements = plan_roles(roles, fact(PostgresRoles) or {}, passwords)
    if statements:
        touched = sorted({s.split('"')[1] for s in statements})
        server.shell(name=f"Create or change roles: {', '.join(touched)}",
                     commands=[psql_stdin(settings)], _stdin=_sql(statements))

    existing = fact(PostgresDatabases) or {}
    statements = plan_databases(settings.postgres_databases, existing)
    if statements:
        # CREATE DATABASE cannot run inside a transaction block.
        server.shell(name="Create databases, set owners and CONNECT grants",
                     commands=[psql_stdin(settings, atomic=False)], _stdin=_sql(statements))

    for db in [{"name": "postgres"}, *settings.postgres_databases]:
        state = {}
        if db["name"] in existing:
            state = fact(PostgresDatabaseState, database=db["name"]) or {}
        statements = plan_database_objects(db.get("extensions", []), state)
        if statements:
            server.shell(name=f"Database {db['name']}: public schema, pg_stat_statements",
                         commands=[psql_stdin(settings, db["name"])], _stdin=_sql(statements))
