"""Roles and databases from inventory data, as the SQL that brings a server to them.

Planning is pure: it compares what inventory data wants with what the server has (the
``PostgresRoles`` and ``PostgresDatabases`` facts) and returns only the statements needed, so a
converged server gets none. Passwords are checked against the stored SCRAM verifier; a new
verifier is computed on the control machine only when the password changed.

    >>> plan_roles([{"name": "app", "login": True}], {}, {})[0][:32]
    'CREATE ROLE "app" WITH LOGIN NOS'

pginfra never drops a role or a database, and leaves roles it does not manage alone.
"""

from __future__ import annotations

import re
import shlex

from pginfra.scram import make_verifier, verify

ROLE_KEYS = {"name", "login", "connection_limit", "member_of", "createdb", "createrole"}
DATABASE_KEYS = {"name", "owner", "connect", "extensions"}
# Lower-case letters, digits and underscores: names every tool on the path takes unquoted
# (PgBouncer's configuration, its userlist, shells, cron lines). "$" is refused: PostgreSQL
# allows it, PgBouncer's ini parser does not.
IDENT = re.compile(r"[a-z_][a-z0-9_]{0,62}")
# Names PostgreSQL gives a meaning of its own in GRANT and ALTER ROLE.
RESERVED_ROLES = {"public", "none", "current_role", "current_user", "session_user", "postgres"}
MAX_CONNECTION_LIMIT = 10000  # postgres_max_connections' own maximum
STATS_RELATIONS = ("pg_stat_statements", "pg_stat_statements_info")


def ident(name: str) -> str:
    """A quoted SQL identifier."""
    return '"' + name.replace('"', '""') + '"'


def literal(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def role_spec(raw: dict) -> dict:
    """A role from inventory data with every attribute filled in."""
    return {
        "name": raw["name"],
        "login": bool(raw.get("login", False)),
        "connection_limit": int(raw.get("connection_limit", -1)),
        "member_of": sorted(raw.get("member_of", [])),
        "createdb": bool(raw.get("createdb", False)),
        "createrole": bool(raw.get("createrole", False)),
    }


def check_roles(roles: list) -> str | None:
    """Validation for the ``postgres_roles`` setting: each role well formed, every name once,
    memberships naming roles of the list (or pg_ roles) without a cycle."""
    names: dict[str, int] = {}
    for i, role in enumerate(roles):
        where = f"role {i + 1}"
        if not isinstance(role, dict) or "name" not in role:
            return f"{where}: expected a mapping with at least a name, got {role!r}"
        unknown = set(role) - ROLE_KEYS
        if unknown:
            return f"{where} ({role['name']}): unknown key(s) {', '.join(sorted(unknown))}"
        if not isinstance(role["name"], str) or not IDENT.fullmatch(role["name"]):
            return (f"{where}: name {role['name']!r} is not a role name of lower-case letters, "
                    "digits and underscores")
        if role["name"] in RESERVED_ROLES or role["name"].startswith("pg_"):
            return f"{where}: {role['name']} is reserved"
        if role["name"] in names:
            return (f"{where}: {role['name']} is already role {names[role['name']]}: each role "
                    "once (a second entry would silently replace the first)")
        names[role["name"]] = i + 1
        for key in ("login", "createdb", "createrole"):
            if key in role and not isinstance(role[key], bool):
                return f"{where} ({role['name']}): {key} must be true or false"
        limit = role.get("connection_limit", -1)
        if (isinstance(limit, bool) or not isinstance(limit, int)
                or not -1 <= limit <= MAX_CONNECTION_LIMIT):
            return (f"{where} ({role['name']}): connection_limit must be -1 (no limit) to "
                    f"{MAX_CONNECTION_LIMIT}, got {limit!r}")
        member_of = role.get("member_of", [])
        if not isinstance(member_of, list) or not all(isinstance(m, str) for m in member_of):
            return f"{where} ({role['name']}): member_of must be a list of role names"
        if role["name"] in member_of:
            return f"{where} ({role['name']}): a role cannot be a member of itself"
    groups = {r["name"]: list(r.get("member_of", [])) for r in roles}
    for role in roles:
        for group in role.get("member_of", []):
            if group not in names and not group.startswith("pg_"):
                return f"role {role['name']}: member_of names {group!r}, not in postgres_roles"
    cycle = _membership_cycle(groups)
    if cycle:
        return f"member_of makes a cycle: {' -> '.join(cycle)}"
    return None


def _membership_cycle(groups: dict[str, list[str]]) -> list[str] | None:
    """A membership cycle (``[a, b, a]``: a is in b, b is in a), or None."""
    done: set[str] = set()

    def visit(name: str, path: list[str]) -> list[str] | None:
        if name in path:
            return path[path.index(name):] + [name]
        if name in done:
            return None
        for group in groups.get(name, []):
            found = visit(group, [*path, name])
            if found:
                return found
        done.add(name)
        return None

    for name in groups:
        found = visit(name, [])
        if found:
            return found
    return None


def check_databases(databases: list) -> str | None:
    """Validation for the ``postgres_databases`` setting: each database once, well formed."""
    seen: dict[str, int] = {}
    for i, db in enumerate(databases):
        where = f"database {i + 1}"
        if not isinstance(db, dict) or "name" not in db or "owner" not in db:
            return f"{where}: expected a mapping with name and owner, got {db!r}"
        unknown = set(db) - DATABASE_KEYS
        if unknown:
            return f"{where} ({db['name']}): unknown key(s) {', '.join(sorted(unknown))}"
        for key in ("name", "owner"):
            if not isinstance(db[key], str) or not IDENT.fullmatch(db[key]):
                return (f"{where}: {key} {db[key]!r} is not a name of lower-case letters, "
                        "digits and underscores")
        if db["name"] in ("postgres", "template0", "template1"):
            return f"{where}: {db['name']} is managed by PostgreSQL itself"
        if db["name"] in seen:
            return (f"{where}: {db['name']} is already database {seen[db['name']]}: each "
                    "database once (a second entry would change its owner and CONNECT grants)")
        seen[db["name"]] = i + 1
        for key in ("connect", "extensions"):
            value = db.get(key, [])
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                return f"{where} ({db['name']}): {key} must be a list of names"
    return None


def wanted_verifiers(passwords: dict[str, str], current: dict[str, dict]) -> dict[str, str]:
    """The SCRAM verifier each role should have: the stored one while it still matches the
    password, else a new one. The same strings go to pg_authid and PgBouncer's userlist.

    >>> wanted_verifiers({"app": "pw"}, {})["app"][:14]
    'SCRAM-SHA-256$'
    """
    out = {}
    for name, password in passwords.items():
        have = (current.get(name) or {}).get("password")
        out[name] = have if have and verify(password, have) else make_verifier(password, name)
    return out


def _password_sql(name: str, verifier: str | None, current: str | None) -> str | None:
    if verifier is None or verifier == current:
        return None
    return f"ALTER ROLE {ident(name)} PASSWORD {literal(verifier)}"


def plan_roles(wanted: list[dict], current: dict[str, dict],
               verifiers: dict[str, str]) -> list[str]:
    """Statements that create or change roles (and the postgres superuser's password)."""
    statements: list[str] = []
    memberships: list[str] = []
    managed = {r["name"] for r in wanted}
    pg = current.get("postgres", {})
    sql = _password_sql("postgres", verifiers.get("postgres"), pg.get("password"))
    if sql:
        statements.append(sql)
    for raw in wanted:
        role = role_spec(raw)
        name = role["name"]
        attrs = [
            "LOGIN" if role["login"] else "NOLOGIN",
            "NOSUPERUSER",
            "CREATEDB" if role["createdb"] else "NOCREATEDB",
            "CREATEROLE" if role["createrole"] else "NOCREATEROLE",
            "INHERIT",
            f"CONNECTION LIMIT {role['connection_limit']}",
        ]
        have = current.get(name)
        if have is None:
            statements.append(f"CREATE ROLE {ident(name)} WITH {' '.join(attrs)}")
            have = {"member_of": []}
        else:
            now = [
                "LOGIN" if have["login"] else "NOLOGIN",
                "SUPERUSER" if have["superuser"] else "NOSUPERUSER",
                "CREATEDB" if have["createdb"] else "NOCREATEDB",
                "CREATEROLE" if have["createrole"] else "NOCREATEROLE",
                "INHERIT" if have["inherit"] else "NOINHERIT",
                f"CONNECTION LIMIT {have['connection_limit']}",
            ]
            changed = [a for a, b in zip(attrs, now, strict=True) if a != b]
            if changed:
                statements.append(f"ALTER ROLE {ident(name)} WITH {' '.join(changed)}")
        sql = _password_sql(name, verifiers.get(name), have.get("password"))
        if sql:
            statements.append(sql)
        # Memberships once every role exists, whatever the order of the list.
        for group in role["member_of"]:
            if group not in have["member_of"]:
                memberships.append(f"GRANT {ident(group)} TO {ident(name)}")
        for group in have["member_of"]:
            if group in managed and group not in role["member_of"]:
                memberships.append(f"REVOKE {ident(group)} FROM {ident(name)}")
    return statements + memberships


def plan_databases(wanted: list[dict], current: dict[str, dict]) -> list[str]:
    """Statements for databases: creation, owner and who may CONNECT (never PUBLIC)."""
    statements = []
    for db in wanted:
        name, owner = db["name"], db["owner"]
        allowed = {owner, *db.get("connect", [])}
        have = current.get(name)
        if have is None:
            statements.append(f"CREATE DATABASE {ident(name)} OWNER {ident(owner)}")
            have = {"owner": owner, "connect": ["PUBLIC", owner]}
        elif have["owner"] != owner:
            statements.append(f"ALTER DATABASE {ident(name)} OWNER TO {ident(owner)}")
        granted = set(have["connect"])
        if "PUBLIC" in granted:
            statements.append(f"REVOKE CONNECT, TEMPORARY ON DATABASE {ident(name)} FROM PUBLIC")
        for role in sorted(allowed - granted):
            statements.append(f"GRANT CONNECT ON DATABASE {ident(name)} TO {ident(role)}")
        for role in sorted(granted - allowed - {"PUBLIC", "postgres"}):
            statements.append(f"REVOKE CONNECT ON DATABASE {ident(name)} FROM {ident(role)}")
    return statements


def plan_database_objects(wanted_extensions: list[str], state: dict,
                          connect: list[str] = ()) -> list[str]:
    """Statements inside one database: extensions, a public schema PUBLIC can neither create
    in nor use (USAGE for the roles that may connect, ``connect``; its owner has it through
    pg_database_owner), and pg_stat_statements readable through pg_read_all_stats only."""
    statements = []
    if state.get("public_create"):
        statements.append("REVOKE CREATE ON SCHEMA public FROM PUBLIC")
    usage = state.get("usage_roles", ["PUBLIC"])
    if "PUBLIC" in usage:
        statements.append("REVOKE USAGE ON SCHEMA public FROM PUBLIC")
    for role in sorted(set(connect) - set(usage)):
        statements.append(f"GRANT USAGE ON SCHEMA public TO {ident(role)}")
    for ext in ["pg_stat_statements", *wanted_extensions]:
        if ext not in state.get("extensions", []):
            statements.append(f"CREATE EXTENSION IF NOT EXISTS {ident(ext)}")
    if "pg_stat_statements" not in state.get("extensions", []) or state.get("stats_public"):
        for rel in STATS_RELATIONS:
            statements.append(f"REVOKE SELECT ON {rel} FROM PUBLIC")
    if not state.get("stats_granted"):
        for rel in STATS_RELATIONS:
            statements.append(f"GRANT SELECT ON {rel} TO pg_read_all_stats")
    return statements


REPLICATION_ATTRIBUTES = ("LOGIN", "REPLICATION", "NOSUPERUSER", "NOCREATEDB", "NOCREATEROLE",
                          "NOINHERIT", "NOBYPASSRLS")


def plan_replication_role(name: str, have: dict | None, verifier: str) -> list[str]:
    """Statements that make ``name`` the streaming replication role: LOGIN and REPLICATION,
    nothing else (no membership either), with the SCRAM ``verifier``.

    >>> plan_replication_role("replicator", None, "SCRAM-SHA-256$x")[0]
    'CREATE ROLE "replicator" WITH LOGIN REPLICATION NOSUPERUSER NOCREATEDB NOCREATEROLE \
NOINHERIT NOBYPASSRLS'
    """
    if have is None:
        return [f"CREATE ROLE {ident(name)} WITH {' '.join(REPLICATION_ATTRIBUTES)}",
                f"ALTER ROLE {ident(name)} PASSWORD {literal(verifier)}"]
    now = ("LOGIN" if have["login"] else "NOLOGIN",
           "REPLICATION" if have.get("replication") else "NOREPLICATION",
           "SUPERUSER" if have["superuser"] else "NOSUPERUSER",
           "CREATEDB" if have["createdb"] else "NOCREATEDB",
           "CREATEROLE" if have["createrole"] else "NOCREATEROLE",
           "INHERIT" if have["inherit"] else "NOINHERIT",
           "BYPASSRLS" if have.get("bypassrls") else "NOBYPASSRLS")
    statements = []
    changed = [a for a, b in zip(REPLICATION_ATTRIBUTES, now, strict=True) if a != b]
    if changed:
        statements.append(f"ALTER ROLE {ident(name)} WITH {' '.join(changed)}")
    sql = _password_sql(name, verifier, have.get("password"))
    if sql:
        statements.append(sql)
    statements += [f"REVOKE {ident(group)} FROM {ident(name)}" for group in have["member_of"]]
    return statements


def plan_slots(wanted: list[str], have: list[dict], keep: list[str]) -> tuple[list[str], list[str]]:
    """(slots to create, slots to drop): a physical slot for each host in ``wanted``; every
    other physical slot is pginfra's and goes, unless it is in ``keep``. A wanted slot that lost
    its WAL (past max_slot_wal_keep_size) is useless to its standby: dropped and created again,
    so the standby streams once it has caught up from the archive or been rebuilt.

    >>> plan_slots(["pg2", "pg3"], [{"name": "pg3"}, {"name": "pg4"}], [])
    (['pg2'], ['pg4'])
    >>> plan_slots(["pg2"], [{"name": "pg2", "wal_status": "lost"}], [])
    (['pg2'], ['pg2'])
    """
    names = [slot["name"] for slot in have if slot.get("wal_status") != "lost"]
    lost = [slot["name"] for slot in have if slot.get("wal_status") == "lost"]
    create = [name for name in wanted if name not in names]
    drop = [name for name in lost + names if name in lost or
            (name not in wanted and name not in keep)]
    return create, drop


# The Prometheus exporter packages' own OS user; peer authentication maps it to the role of the
# same name (the health step creates it; the configure step's pg_ident.conf maps it).
EXPORTER_ROLE = "prometheus"

# Statements carrying SCRAM verifiers must not reach the server log, even when slow or failing,
# nor pgAudit's entries (its role class logs ALTER ROLE ... PASSWORD).
QUIET = ("SET log_min_duration_statement = -1;\nSET log_min_error_statement = panic;\n"
         "SET log_statement = 'none';\nSET pgaudit.log = 'none';\n")


def quiet_sql(statements: list[str]) -> str:
    """``statements`` as a script for ``psql_stdin``, kept out of the server log and pgAudit."""
    return QUIET + "".join(f"{s};\n" for s in statements)


def psql_stdin(port: int, database: str = "postgres", atomic: bool = True) -> str:
    """psql as the postgres OS user, reading SQL from stdin, stopping at the first error."""
    args = ["runuser", "-u", "postgres", "--", "psql", "-X", "-q", "-v", "ON_ERROR_STOP=1",
            "-p", str(port), "-d", database]
    if atomic:
        args.append("--single-transaction")
    return shlex.join(args)
