"""Bad input never wedges or opens a host: every case below is refused before any operation,
with a message that names the host, the key and the problem, and the host is byte-identical
afterwards (its configuration directories, the ownership of the directories at stake, and
``pg_dumpall --globals-only``). Two deploys at once: the second stops, naming the first.
Memberships in any order, and a missing listener noticed and mended."""

from __future__ import annotations

import json
import subprocess
import time

import pytest
from conftest import BIN, HOST, control_env, deploy_ok, run_pyinfra, sql, wait_for

from pginfra import ROOT

WATCHED = ("/etc/postgresql", "/etc/pgbouncer", "/etc/pginfra", "/etc/cron.d",
           "/etc/systemd/system", "/usr/local/lib/pginfra")
SNAPSHOT = (
    "find " + " ".join(WATCHED) + " -xdev \\( -type f -o -type l \\) -printf '%p %U %G %m ' "
    "-exec sha256sum {} \\; 2>/dev/null | sort; "
    "stat -c '%n %U %G %a' /etc /srv /var/lib /var/lib/postgresql 2>/dev/null; "
    "cd /tmp && runuser -u postgres -- pg_dumpall --globals-only --no-role-passwords -p 5432 "
    "| grep -v '^.\\(un\\)\\{0,1\\}restrict '"  # pg_dump's random \restrict key
)


def snapshot(lab) -> str:
    return lab.ssh("pgt1", ["sh", "-c", repr(SNAPSHOT)], timeout=120).stdout


@pytest.fixture(scope="module")
def prepared(lab, first_deploy):
    """Things on the host a hostile operator would point pginfra at."""
    lab.ssh("pgt1", ["sh", "-c", repr(
        "mkdir -p /srv/rootowned /srv/real && echo keep > /srv/rootowned/file && "
        "ln -sfn /etc /srv/link-to-etc")])
    yield
    lab.ssh("pgt1", ["rm", "-rf", "/srv/rootowned", "/srv/real", "/srv/link-to-etc"])


def data_args(data: dict) -> list[str]:
    args = []
    for key, value in data.items():
        args += ["--data", f"{key}={json.dumps(value)}"]
    return args


ROLES = [{"name": "app_owner"},
         {"name": "app", "login": True, "connection_limit": 50, "member_of": ["app_owner"]},
         {"name": "community_owner"}]
DATABASES = [{"name": "app", "owner": "app_owner", "connect": ["app"]},
             {"name": "community", "owner": "community_owner", "connect": ["app"]}]

CASES = {
    "newline in a parameter": (
        {"postgres_parameters": {"work_mem": "8MB\nssl = off"}},
        "pgt1: postgres_parameters: work_mem: the value '8MB\\nssl = off' holds a control "
        "character"),
    "log directory /etc": (
        {"postgres_log_directory": "/etc"},
        "pgt1: postgres_log_directory: /etc is a system directory"),
    "WAL archive in pg_wal": (
        {"postgres_wal_archive_dir": "/var/lib/postgresql/15/main/pg_wal"},
        "pgt1: postgres_wal_archive_dir: /var/lib/postgresql/15/main/pg_wal is inside the data "
        "directory"),
    "backup dir owned by root": (
        {"backup_dir": "/srv/rootowned"},
        "pgt1: backup_dir: /srv/rootowned exists and belongs to root"),
    "log directory through a symlink": (
        {"postgres_log_directory": "/srv/link-to-etc/x"},
        "pgt1: postgres_log_directory: /srv/link-to-etc/x resolves to /etc/x through a symbolic "
        "link"),
    "duplicate role": (
        {"postgres_roles": [*ROLES, {"name": "app"}]},
        "pgt1: postgres_roles: role 4: app is already role 2"),
    "duplicate database": (
        {"postgres_databases": [*DATABASES, {"name": "app", "owner": "community_owner"}]},
        "pgt1: postgres_databases: database 3: app is already database 1"),
    "PgBouncer on PostgreSQL's port": (
        {"pgbouncer_port": 5432}, "pgt1: pgbouncer_port: port 5432 is already postgres_port's"),
    "exporter on PostgreSQL's port": (
        {"health_prometheus": True, "health_prometheus_postgres_port": 5432},
        "pgt1: health_prometheus_postgres_port: port 5432 is already postgres_port's"),
    "a database PgBouncer cannot name": (
        {"postgres_databases": [*DATABASES, {"name": "d$home", "owner": "app_owner"}]},
        "pgt1: postgres_databases: database 3: name 'd$home' is not a name of lower-case"),
    "membership cycle": (
        {"postgres_roles": [{"name": "a", "member_of": ["b"]}, {"name": "b", "member_of": ["a"]},
                            *ROLES]},
        "pgt1: postgres_roles: member_of makes a cycle: a -> b -> a"),
    "member of itself": (
        {"postgres_roles": [*ROLES, {"name": "self", "member_of": ["self"]}]},
        "a role cannot be a member of itself"),
    "role public": (
        {"postgres_roles": [*ROLES, {"name": "public"}]}, "pgt1: postgres_roles: role 4: public "
        "is reserved"),
    "huge connection limit": (
        {"postgres_roles": [*ROLES, {"name": "big", "connection_limit": 10**12}]},
        "connection_limit must be -1 (no limit) to 10000, got 1000000000000"),
    "listen address the host does not have": (
        {"postgres_listen_addresses": ["localhost", "10.77.254.10"]},
        "pgt1: postgres_listen_addresses: 10.77.254.10 is not an address of this host"),
    "PgBouncer address the host does not have": (
        {"pgbouncer_listen_addresses": ["10.77.254.10"]},
        "pgt1: pgbouncer_listen_addresses: 10.77.254.10 is not an address of this host"),
    "contradictory settings": (
        {"postgres_parameters": {"wal_level": "minimal"}},
        "pgt1: wal_level minimal cannot archive"),
    "pools beyond the server's slots": (
        {"pgbouncer_default_pool_size": 500},
        "pgt1: PgBouncer could open"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_is_refused_before_anything_changes(lab, prepared, case):
    data, message = CASES[case]
    before = snapshot(lab)
    result = run_pyinfra(lab, *data_args(data))
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert message in output, output[-3000:]
    assert "Starting operation" not in output and "Beginning operation run" not in output
    assert snapshot(lab) == before


def test_a_weak_password_is_refused_before_anything_changes(lab, prepared):
    before = snapshot(lab)
    result = run_pyinfra(lab, env=control_env(lab, PGINFRA_PASSWORD_APP="app2024"))
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert "pgt1: the password of role 'app' is shorter than 12 characters" in output
    assert "app2024" not in output
    assert snapshot(lab) == before


def test_memberships_may_name_roles_listed_later(lab, first_deploy):
    roles = [{"name": "early", "login": True, "member_of": ["late_group"]},
             {"name": "late_group"}, *ROLES]
    env = control_env(lab, PGINFRA_PASSWORD_EARLY="Mbr-0f-the-late-group-9")
    deploy_ok(lab, *data_args({"postgres_roles": roles}), env=env)
    assert sql(lab, "SELECT pg_has_role('early', 'late_group', 'MEMBER')") == "t"
    sql(lab, "DROP ROLE early; DROP ROLE late_group")


def test_two_deploys_at_once_the_second_stops_naming_the_first(lab, first_deploy):
    """The first holds the host from the moment it reads it to the end of its connection;
    a second one started meanwhile stops before it reads anything, and changes nothing."""
    slow = subprocess.Popen(
        [str(BIN / "pyinfra"), "-y", "inventories/rehearsal.py", "deploys/postgres.py"],
        cwd=ROOT, env=control_env(lab), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True)
    try:
        wait_for(lambda: f"(pid {slow.pid})" in lab.ssh(
            "pgt1", ["cat", "/run/pginfra/deploy.lock"], check=False).stdout,
            "the first deploy's lock", 60)
        second = run_pyinfra(lab)
        output = second.stdout + second.stderr
        assert second.returncode != 0
        assert "pgt1: another pginfra deploy is running on this host (run by " in output
        assert "Starting operation" not in output
    finally:
        first_output, _ = slow.communicate(timeout=600)
    assert slow.returncode == 0, first_output[-3000:]
    # The first run's connection is gone: its lock no longer holds the host.
    again = run_pyinfra(lab)
    assert again.returncode == 0, again.stderr[-3000:]
    assert again.changed == []


def test_a_killed_deploys_lock_is_taken_over(lab, first_deploy):
    run = subprocess.Popen(
        [str(BIN / "pyinfra"), "-y", "inventories/rehearsal.py", "deploys/postgres.py"],
        cwd=ROOT, env=control_env(lab), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_for(lambda: f"(pid {run.pid})" in lab.ssh(
        "pgt1", ["cat", "/run/pginfra/deploy.lock"], check=False).stdout,
        "the deploy's lock", 60)
    run.kill()
    run.wait()
    time.sleep(1)  # sshd notices the connection is gone
    deploy_ok(lab)  # nothing to clean up: the killed run's lock died with its connection


def test_a_missing_listener_is_noticed_and_mended(lab, first_deploy):
    """The server started while one of its addresses was missing (as at a boot that raced the
    network): it listens on the others only. The next deploy restarts it, naming why."""
    extra = HOST.rsplit(".", 1)[0] + ".99"
    lab.ssh("pgt1", ["ip", "addr", "add", f"{extra}/32", "dev", "host0"])
    data = data_args({"postgres_listen_addresses": ["localhost", HOST, extra]})
    try:
        deploy_ok(lab, *data)
        listening = lab.ssh("pgt1", ["ss", "-Hltn", "sport", "=", ":5432"]).stdout
        assert f"{extra}:5432" in listening
        lab.ssh("pgt1", ["ip", "addr", "del", f"{extra}/32", "dev", "host0"])
        lab.ssh("pgt1", ["systemctl", "restart", "postgresql@15-main"])
        lab.ssh("pgt1", ["ip", "addr", "add", f"{extra}/32", "dev", "host0"])
        assert f"{extra}:5432" not in lab.ssh("pgt1", ["ss", "-Hltn", "sport", "=",
                                                        ":5432"]).stdout
        result = deploy_ok(lab, *data)
        assert any(f"nothing listens on {extra}:5432" in name for name in result.changed), \
            result.changed
        assert f"{extra}:5432" in lab.ssh("pgt1", ["ss", "-Hltn", "sport", "=",
                                                    ":5432"]).stdout
    finally:
        lab.ssh("pgt1", ["ip", "addr", "del", f"{extra}/32", "dev", "host0"], check=False)
        deploy_ok(lab)


def test_a_reload_pgbouncer_refuses_fails(lab, first_deploy):
    """What the deploy runs after writing pgbouncer.ini: PgBouncer takes a reload signal
    whatever the file holds, so the check reads its log. A name PgBouncer's parser refuses (the
    settings refuse it now) is written by hand here."""
    from pginfra.steps.pgbouncer import INI, RELOAD_AND_CHECK

    lab.ssh("pgt1", ["cp", "-p", INI, f"{INI}.e2e"])
    try:
        lab.ssh("pgt1", ["sh", "-c", repr(f"printf 'd$home = dbname=x\\n' >> {INI}")])
        result = lab.ssh("pgt1", ["sh"], input=RELOAD_AND_CHECK, check=False)
        assert result.returncode == 1, result.stdout + result.stderr
        assert "PgBouncer refused its new configuration" in result.stderr
        assert "ERROR" in result.stdout
    finally:
        lab.ssh("pgt1", ["mv", f"{INI}.e2e", INI])
        lab.ssh("pgt1", ["sh"], input=RELOAD_AND_CHECK)


def test_a_host_without_security_updates_is_warned_about(lab, first_deploy):
    lab.ssh("pgt1", ["mv", "/etc/apt/sources.list", "/etc/apt/sources.list.e2e", "&&", "grep",
                     "-v", "security", "/etc/apt/sources.list.e2e", ">", "/etc/apt/sources.list"])
    try:
        result = run_pyinfra(lab)
        assert result.returncode == 0, result.stderr[-3000:]
        assert "pgt1: no Debian security archive in the APT sources" in (
            result.stdout + result.stderr)
    finally:
        lab.ssh("pgt1", ["mv", "/etc/apt/sources.list.e2e", "/etc/apt/sources.list"])
    result = run_pyinfra(lab)
    assert "no Debian security archive" not in result.stdout + result.stderr
