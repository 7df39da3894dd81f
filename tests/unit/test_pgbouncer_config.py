import pytest

from pginfra.pgbouncer import (
    check_capacity,
    ini_sections,
    needs_restart,
    parse_ini,
    pooled_pairs,
    server_connection_ceiling,
    userlist_roles,
)
from pginfra.settings import SettingsError, resolve
from pginfra.templating import render

TLS = {"key": "/k", "cert": "/c", "ca": "/a"}
DATA = {
    "postgres_roles": [{"name": "owner"}, {"name": "app", "login": True},
                       {"name": "report", "login": True}],
    "postgres_databases": [{"name": "app", "owner": "owner", "connect": ["app", "report"]},
                           {"name": "dw", "owner": "report"}],
    "postgres_listen_addresses": ["localhost", "10.0.0.5"],
}


def test_pools_are_login_roles_allowed_to_connect():
    settings = resolve(DATA)
    assert pooled_pairs(settings) == [("app", "app"), ("app", "report"), ("dw", "report")]
    assert userlist_roles(settings) == ["app", "report", "pgbouncer_admin"]
    auth_query = resolve({**DATA, "pgbouncer_auth": "auth_query"})
    assert userlist_roles(auth_query) == ["pgbouncer_admin"]


def test_ini_listens_on_host_addresses_and_overrides_pool_mode():
    settings = resolve({**DATA, "pgbouncer_pool_modes": {"dw": "session"}})
    sections = ini_sections(settings, TLS)
    text = render("pgbouncer.ini.j2", path="/etc/pgbouncer/pgbouncer.ini", sections=sections)
    ini = parse_ini(text)
    assert ini["pgbouncer"]["listen_addr"] == "127.0.0.1,10.0.0.5"
    assert ini["pgbouncer"]["auth_type"] == "scram-sha-256"
    assert ini["pgbouncer"]["client_tls_sslmode"] == "require"
    assert ini["databases"]["dw"].endswith("pool_mode=session")
    assert "pool_mode" not in ini["databases"]["app"]


def test_wildcard_listen_is_refused():
    with pytest.raises(SettingsError, match="never listens on every address"):
        resolve({"pgbouncer_listen_addresses": ["*"]})


def test_console_users_cannot_be_server_roles():
    with pytest.raises(SettingsError, match="console-only user"):
        resolve({**DATA, "pgbouncer_admin_users": ["app"]})


def test_capacity():
    settings = resolve(DATA, "db7")
    assert server_connection_ceiling(settings) == 3 * (20 + 5)
    check_capacity(settings, {"max_connections": "100"})
    with pytest.raises(SettingsError, match="^db7: PgBouncer could open 75 server connections"):
        check_capacity(settings, {"max_connections": "80"})  # 80 - 3 - 10 = 67 < 75
    capped = resolve({**DATA, "pgbouncer_max_db_connections": 10})
    assert server_connection_ceiling(capped) == 20


def test_restart_only_for_what_a_reload_cannot_take():
    settings = resolve(DATA)
    sections = ini_sections(settings, TLS)
    text = render("pgbouncer.ini.j2", path="/x", sections=sections)
    assert needs_restart(text, sections) == []
    bigger = ini_sections(resolve({**DATA, "pgbouncer_default_pool_size": 30}), TLS)
    assert needs_restart(text, bigger) == []
    moved = ini_sections(resolve({**DATA, "pgbouncer_port": 6433}), TLS)
    assert needs_restart(text, moved) == ["listen_port"]
    assert needs_restart(None, sections) == ["first configuration"]
