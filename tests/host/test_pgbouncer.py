"""PgBouncer: installed, running, listening only where configured, its userlist in step."""

import re

import pytest

from pginfra.pgbouncer import INI, USERLIST


@pytest.fixture(scope="module")
def ini(host):
    text = host.file(INI).content_string
    return dict(re.findall(r"^(\w+) = (.*)$", text, re.M))


def test_package_and_service(host):
    assert host.package("pgbouncer").is_installed
    service = host.service("pgbouncer")
    assert service.is_enabled and service.is_running


def test_listens_only_where_configured(host, ini):
    assert ini["listen_addr"] != "*"
    wanted = {f"{a}:{ini['listen_port']}" for a in ini["listen_addr"].split(",")}
    listening = set(re.findall(r"(\S+:6432)\s", host.check_output("ss -Hltn 'sport = :6432'")))
    assert listening == wanted
    assert ini["listen_port"] == "6432"


def test_configuration(ini):
    assert ini["auth_type"] == "scram-sha-256"
    assert ini["auth_file"] == USERLIST
    assert ini["pool_mode"] in ("session", "transaction", "statement")
    assert ini["client_tls_sslmode"] == "require"
    assert "snakeoil" not in ini["client_tls_cert_file"]
    assert ini["ignore_startup_parameters"] == "extra_float_digits"
    assert ini["admin_users"] and "postgres" not in ini["admin_users"].split(",")
    assert (ini["log_connections"], ini["log_disconnections"]) == ("1", "1")
    assert ini["unix_socket_dir"] == "/var/run/postgresql"


def test_file_modes(host):
    userlist = host.file(USERLIST)
    assert (userlist.user, userlist.group, userlist.mode) == ("postgres", "postgres", 0o600)
    ini_file = host.file(INI)
    assert ini_file.user == "postgres" and ini_file.mode & 0o007 == 0


def test_userlist_verifiers_equal_pg_authid(host, psql):
    lines = re.findall(r'^"([^"]+)" "([^"]+)"$', host.file(USERLIST).content_string, re.M)
    assert lines
    pooled = 0
    for role, verifier in lines:
        assert verifier.startswith("SCRAM-SHA-256$")
        stored = psql(f"SELECT coalesce(rolpassword, '') FROM pg_authid WHERE rolname = '{role}'")
        if stored:  # console-only users have no server role
            assert stored == verifier, role
            pooled += 1
    assert pooled, "no userlist line belongs to a server role"
