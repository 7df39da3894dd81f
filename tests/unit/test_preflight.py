"""pginfra.preflight: inventory data against the host's own facts, before any operation."""

import os
import pwd
import subprocess

from pginfra.facts import HostAddresses, PathStates, ResolvedNames
from pginfra.preflight import directory_problems, hostnames, listen_problems
from pginfra.settings import resolve


def state(resolved, owner=None, kind="directory"):
    return {"resolved": resolved, "exists": owner is not None, "owner": owner,
            "type": kind if owner else None}


def test_path_states_fact_reads_what_is_there(tmp_path):
    """The fact's own shell command, run here: a directory, a file, a link, nothing."""
    (tmp_path / "dir").mkdir()
    (tmp_path / "file").write_text("x")
    (tmp_path / "it's").symlink_to("/etc")
    paths = tuple(str(tmp_path / name) for name in ("dir", "file", "it's", "new"))
    fact = PathStates()
    proc = subprocess.run(["sh", "-c", fact.command(paths=paths)], capture_output=True,
                          text=True, check=True)
    owner = pwd.getpwuid(os.getuid()).pw_name
    assert fact.process(proc.stdout.splitlines()) == {
        paths[0]: state(paths[0], owner), paths[1]: state(paths[1], owner, "regular file"),
        paths[2]: {"resolved": "/etc", "exists": True, "owner": owner, "type": "symbolic link"},
        paths[3]: state(paths[3])}


def test_directories_pginfra_did_not_make_or_that_lead_elsewhere_are_refused():
    settings = resolve({"postgres_wal_archive_dir": "/srv/wal", "backup_dir": "/srv/backups",
                        "postgres_log_directory": "/srv/log",
                        "pginfra_migrate_dump_dir": "/srv/dumps"})
    states = {"/srv/wal": state("/etc"), "/srv/backups": state("/srv/backups", "root"),
              "/srv/log": state("/srv/log", "root", kind="regular file"),
              "/srv/dumps": state("/srv/dumps", "postgres")}
    assert directory_problems(settings, states) == [
        "postgres_wal_archive_dir: /srv/wal resolves to /etc through a symbolic link: give the "
        "real path",
        "postgres_log_directory: /srv/log exists and is a regular file, not a directory",
        "backup_dir: /srv/backups exists and belongs to root: pginfra hands postgres only "
        "directories it makes; if this one is meant for PostgreSQL, 'chown postgres: "
        "/srv/backups' first",
    ]
    states = {"/srv/wal": state("/srv/wal"), "/srv/backups": state("/srv/backups", "postgres")}
    assert directory_problems(settings, states) == []


def test_listen_addresses_the_host_does_not_have_are_refused():
    fact = HostAddresses()
    addresses = fact.process(["1: lo    inet 127.0.0.1/8 scope host lo",
                              "2: host0    inet 10.77.0.10/24 brd 10.77.0.255 scope global",
                              "1: lo    inet6 ::1/128 scope host"])
    assert addresses == ["127.0.0.1", "10.77.0.10", "::1"]
    ok = resolve({"postgres_listen_addresses": ["localhost", "10.77.0.10", "::1"]})
    assert listen_problems(ok, addresses, {}) == []
    bad = resolve({"postgres_listen_addresses": ["localhost", "10.77.20.10"],
                   "pgbouncer_listen_addresses": ["10.77.0.10", "db1.internal"]})
    assert hostnames(bad) == ("db1.internal",)
    resolved = ResolvedNames().process(["db1.internal\t10.0.0.9", "db1.internal\t"])
    assert resolved == {"db1.internal": ["10.0.0.9"]}
    assert listen_problems(bad, addresses, resolved) == [
        "postgres_listen_addresses: 10.77.20.10 is not an address of this host (address while "
        "the host has 10.77.0.10, 127.0.0.1, ::1): nothing would listen there",
        "pgbouncer_listen_addresses: db1.internal is not an address of this host (name, which "
        "resolves to 10.0.0.9, while the host has 10.77.0.10, 127.0.0.1, ::1): nothing would "
        "listen there",
    ]
    inherited = resolve({"postgres_listen_addresses": ["10.1.1.1"]})
    assert [p.split(":")[0] for p in listen_problems(inherited, addresses, {})] == [
        "postgres_listen_addresses", "postgres_listen_addresses (PgBouncer's too)"]


def test_the_floating_address_is_not_asked_of_the_host():
    """PgBouncer listens on ha_vip on every member (the leader holds it); the listen check
    passes it by, and pginfra.vip.interface_problem checks where it goes instead."""
    addresses = ["127.0.0.1", "10.77.0.10"]
    floating = resolve({"postgres_ha": "patroni", "ha_client_path": "vip",
                        "ha_vip": "10.77.0.200/24", "ha_vip_interface": "host0",
                        "postgres_listen_addresses": ["localhost", "10.77.0.10"]})
    assert listen_problems(floating, addresses, {}) == []
    elsewhere = resolve({"postgres_listen_addresses": ["localhost", "10.77.0.10"],
                         "pgbouncer_listen_addresses": ["10.77.0.200"]})
    assert listen_problems(elsewhere, addresses, {})  # without HA it is any other address
