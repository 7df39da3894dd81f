"""Roles and databases from inventory data, as the SQL that brings a server to them.

Planning is pure: it compares what inventory data wants with what the server has (the
``PostgresRoles`` and ``PostgresDatabases`` facts) and returns only the statements needed, so a
converged server gets none. Passwords are checked against the stored SCRAM verifier; a new
verifier is computed on the control machine only when the password changed.

    >>> plan_roles([{"name": "app", "login": True}], {}, {})[0][:31]
    'CREATE ROLE "app" WITH LOGIN NOS'

pginfra never drops a role or a database, and leaves roles it does not manage alone.
"""

from __future__ import annotations

import re

from pginfra.scram import make_verifier, verify

ROLE_KEYS = {"name", "login", "connection_limit", "member_of", "createdb", "createrole"}
DATABASE_KEYS = {"name", "owner", "connect", "extensions"}
IDENT = re.compile(r"[a-z_][a-z0-9_$]{0,62}")
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
    """Validation for the ``postgres_roles`` setting."""
    names = set()
    for i, role in enumerate(roles):
        where = f"role {i + 1}"
        if not isinstance(role, dict) or "name" not in role:
            return f"{where}: expected a mapping with at least a name, got {role!r}"
        unknown = set(role) - ROLE_KEYS
        if unknown:
            return f"{where} ({role['name']}): unknown key(s) {', '.join(sorted(unknown))}"
        if not isinstance(role["name"], str) or not IDENT.fullmatch(role["name"]):
            return f"{where}: name {role['name']!r} is not a lower-case role name"
        if role["name"] == "postgres" or role["name"].startswith("pg_"):
            return f"{where}: {role['name']} is reserved"
        for key in ("login", "createdb", "createrole"):
            if key in role and not isinstance(role[key], bool):
                return f"{where} ({role['name']}): {key} must be true or false"
        limit = role.get("connection_limit", -1)
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < -1:
            return f"{where} ({role['name']}): connection_limit must be -1 or more"
        member_of = role.get("member_of", [])
        if not isinstance(member_of, list) or not all(isinstance(m, str) for m in member_of):
            return f"{where} ({role['name']}): member_of must be a list of role names"
        names.add(role["name"])
    for role in roles:
        for group in role.get("member_of", []):
            if group not in names and not group.startswith("pg_"):
                return f"role {role['name']}: member_of names {group!r}, not in postgres_roles"
    return None


def check_databases(databases: list) -> str | None:
    """Validation for the ``postgres_databases`` setting."""
    for i, db in enumerate(databases):
        where = f"database {i + 1}"
        if not isinstance(db, dict) or "name" not in db or "owner" not in db:
            return f"{where}: expected a mapping with name and owner, got {db!r}"
        unknown = set(db) - DATABASE_KEYS
        if unknown:
            return f"{where} ({db['name']}): unknown key(s) {', '.join(sorted(unknown))}"
        for key in ("name", "owner"):
            if not isinstance(db[key], str) or not IDENT.fullmatch(db[key]):
                return f"{where}: {key} {db[key]!r} is not a lower-case name"
        if db["name"] in ("postgres", "template0", "template1"):
            return f"{where}: {db['name']} is managed by PostgreSQL itself"
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
    statements = []
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
        for group in role["member_of"]:
            if group not in have["member_of"]:
                statements.append(f"GRANT {ident(group)} TO {ident(name)}")
        for group in have["member_of"]:
            if group in managed and group not in role["member_of"]:
                statements.append(f"REVOKE {ident(group)} FROM {ident(name)}")
    return statements


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


def plan_database_objects(wanted_extensions: list[str], state: dict) -> list[str]:
    """Statements inside one database: extensions, a public schema PUBLIC cannot create in,
    and pg_stat_statements readable through pg_read_all_stats only."""
    statements = []
    if state.get("public_create"):
        statements.append("REVOKE CREATE ON SCHEMA public FROM PUBLIC")
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
