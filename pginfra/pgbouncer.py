"""PgBouncer's configuration, from the same settings and verifiers as the server.

    >>> from pginfra.settings import resolve
    >>> pools = pooled_pairs(resolve({"postgres_roles": [{"name": "app", "login": True}],
    ...     "postgres_databases": [{"name": "app", "owner": "app"}]}))
    >>> pools
    [('app', 'app')]
"""

from __future__ import annotations

from pginfra.roles import role_spec
from pginfra.settings import Settings, SettingsError

INI = "/etc/pgbouncer/pgbouncer.ini"
USERLIST = "/etc/pgbouncer/userlist.txt"
AUTH_USER = "pgbouncer_auth"
AUTH_SCHEMA = "pgbouncer"
# Changing any of these needs a restart; everything else PgBouncer takes on reload (SIGHUP).
# (A reload also keeps users that left the auth file, and the auth settings' old lookups.)
RESTART_KEYS = ("listen_addr", "listen_port", "unix_socket_dir", "unix_socket_mode",
                "unix_socket_group", "pidfile", "user", "so_reuseport", "peer_id",
                "auth_type", "auth_file", "auth_user", "auth_query")
TLS_CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20:DHE+AESGCM:!aNULL:!eNULL:!MD5"


def listen_addresses(settings: Settings) -> list[str]:
    """Where PgBouncer listens: its own addresses (else the server's), and with
    ``ha_client_path: vip`` the floating address too, held or not (``pginfra.vip``)."""
    from pginfra import vip

    addresses = settings.pgbouncer_listen_addresses or settings.postgres_listen_addresses
    found = ["127.0.0.1" if a == "localhost" else a for a in addresses]
    floating = vip.address(settings)
    return found + [floating] if floating and floating not in found else found


def pooled_pairs(settings: Settings) -> list[tuple[str, str]]:
    """(database, role) pairs PgBouncer may pool: login roles allowed to CONNECT."""
    logins = {r["name"] for r in map(role_spec, settings.postgres_roles) if r["login"]}
    pairs = []
    for db in settings.postgres_databases:
        for role in sorted({db["owner"], *db.get("connect", [])} & logins):
            pairs.append((db["name"], role))
    return pairs


def pooled_roles(settings: Settings) -> list[str]:
    return sorted({role for _, role in pooled_pairs(settings)})


def userlist_roles(settings: Settings) -> list[str]:
    """Who gets a userlist line: pooled roles (none with auth_query, which looks them up in
    pg_authid, its own user coming in by peer), and console users."""
    server = [] if settings.pgbouncer_auth == "auth_query" else pooled_roles(settings)
    console = [*settings.pgbouncer_admin_users, *settings.pgbouncer_stats_users]
    return sorted(set(server)) + [u for u in dict.fromkeys(console) if u not in server]


def server_connection_ceiling(settings: Settings) -> int:
    """The most server connections PgBouncer can open at once."""
    per_pool = settings.pgbouncer_default_pool_size + settings.pgbouncer_reserve_pool_size
    total = 0
    for db in settings.postgres_databases:
        pools = sum(1 for name, _ in pooled_pairs(settings) if name == db["name"])
        ceiling = per_pool * pools
        if settings.pgbouncer_max_db_connections:
            ceiling = min(ceiling, settings.pgbouncer_max_db_connections)
        total += ceiling
    if settings.pgbouncer_auth == "auth_query":
        total += len(settings.postgres_databases)  # one auth_user connection per database
    return total


def check_capacity(settings: Settings, params: dict[str, str]) -> None:
    """Refuse pools that could exhaust the server's connection slots."""
    max_connections = int(params["max_connections"])
    reserved = int(params.get("superuser_reserved_connections", "3"))
    senders = int(params.get("max_wal_senders", "10"))
    room = max_connections - reserved - senders
    need = server_connection_ceiling(settings)
    if need > room:
        raise SettingsError(
            f"{settings.host_name}: PgBouncer could open {need} server connections (pools of "
            f"{settings.pgbouncer_default_pool_size} + {settings.pgbouncer_reserve_pool_size} "
            f"reserve for {len(pooled_pairs(settings))} database/role pairs), more than the "
            f"{room} the server has: max_connections {max_connections} - "
            f"superuser_reserved_connections {reserved} - max_wal_senders {senders}. "
            "Lower pgbouncer_default_pool_size or pgbouncer_max_db_connections, or raise "
            "postgres_max_connections; nothing was changed"
        )


def ini_sections(settings: Settings, tls: dict[str, str]) -> dict[str, list[tuple[str, str]]]:
    """pgbouncer.ini as sections of (key, value)."""
    socket_dir = "/var/run/postgresql"
    databases = []
    for db in settings.postgres_databases:
        mode = settings.pgbouncer_pool_modes.get(db["name"], settings.pgbouncer_pool_mode)
        value = f"host={socket_dir} port={settings.postgres_port} dbname={db['name']}"
        if mode != settings.pgbouncer_pool_mode:
            value += f" pool_mode={mode}"
        databases.append((db["name"], value))
    pgbouncer = [
        ("logfile", "/var/log/postgresql/pgbouncer.log"),
        ("pidfile", "/var/run/postgresql/pgbouncer.pid"),
        ("listen_addr", ",".join(listen_addresses(settings))),
        ("listen_port", str(settings.pgbouncer_port)),
        ("unix_socket_dir", socket_dir),
        ("unix_socket_mode", "0770"),
        ("unix_socket_group", "postgres"),
        ("auth_type", "scram-sha-256"),
        ("auth_file", USERLIST),
    ]
    if settings.pgbouncer_auth == "auth_query":
        pgbouncer += [
            ("auth_user", AUTH_USER),
            ("auth_query", f"SELECT usename, passwd FROM {AUTH_SCHEMA}.get_auth($1)"),
        ]
    pgbouncer += [
        ("admin_users", ",".join(settings.pgbouncer_admin_users)),
        ("stats_users", ",".join(settings.pgbouncer_stats_users)),
        ("pool_mode", settings.pgbouncer_pool_mode),
        ("default_pool_size", str(settings.pgbouncer_default_pool_size)),
        ("min_pool_size", str(settings.pgbouncer_min_pool_size)),
        ("reserve_pool_size", str(settings.pgbouncer_reserve_pool_size)),
        ("max_client_conn", str(settings.pgbouncer_max_client_conn)),
        ("max_db_connections", str(settings.pgbouncer_max_db_connections)),
        ("client_tls_sslmode", "require"),
        ("client_tls_key_file", tls["key"]),
        ("client_tls_cert_file", tls["cert"]),
        ("client_tls_ca_file", tls["ca"]),
        ("client_tls_protocols", "tlsv1.2,tlsv1.3"),
        ("client_tls_ciphers", TLS_CIPHERS),
        ("server_tls_sslmode", "disable"),  # the server is reached over its Unix socket
        ("ignore_startup_parameters", "extra_float_digits"),
        ("log_connections", "1"),
        ("log_disconnections", "1"),
        ("log_pooler_errors", "1"),
    ]
    return {"databases": databases, "pgbouncer": pgbouncer}


def parse_ini(text: str | None) -> dict[str, dict[str, str]]:
    """A pgbouncer.ini's sections and keys (enough to tell what changed)."""
    sections: dict[str, dict[str, str]] = {}
    current = sections.setdefault("", {})
    for raw in (text or "").splitlines():
        line = raw.strip()
        if not line or line[0] in ";#":
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1].strip(), {})
        elif "=" in line:
            key, _, value = line.partition("=")
            current[key.strip()] = value.strip()
    return sections


def needs_restart(old_text: str | None, sections: dict[str, list[tuple[str, str]]]) -> list[str]:
    """The restart-only keys whose value changes; ["first configuration"] with no old file."""
    if old_text is None:
        return ["first configuration"]
    old = parse_ini(old_text).get("pgbouncer", {})
    new = dict(sections["pgbouncer"])
    return [k for k in RESTART_KEYS if old.get(k) != new.get(k)]


def auth_function_sql() -> list[str]:
    """The SECURITY DEFINER lookup auth_query calls, in each pooled database."""
    fn = f"{AUTH_SCHEMA}.get_auth(text)"
    return [
        f"CREATE SCHEMA IF NOT EXISTS {AUTH_SCHEMA} AUTHORIZATION postgres",
        f"REVOKE ALL ON SCHEMA {AUTH_SCHEMA} FROM PUBLIC",
        f"GRANT USAGE ON SCHEMA {AUTH_SCHEMA} TO {AUTH_USER}",
        f"CREATE OR REPLACE FUNCTION {AUTH_SCHEMA}.get_auth(p_usename text) "
        "RETURNS TABLE (usename name, passwd text) LANGUAGE sql STABLE SECURITY DEFINER "
        "SET search_path = pg_catalog, pg_temp AS $$ SELECT rolname, rolpassword::text "
        "FROM pg_catalog.pg_authid WHERE rolname = p_usename AND rolcanlogin "
        "AND NOT rolsuper AND NOT rolreplication $$",
        f"REVOKE ALL ON FUNCTION {fn} FROM PUBLIC",
        f"GRANT EXECUTE ON FUNCTION {fn} TO {AUTH_USER}",
    ]
