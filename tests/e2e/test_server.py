"""The production server from the control machine: TLS clients, safe reloads and restarts,
refused configuration, role changes, password rotation and WAL archiving under faults."""

import hashlib
import json
import time

import psycopg
import pytest
from conftest import client, control_env, deploy_ok, run_pyinfra, sql

ARCHIVE = "/var/lib/postgresql/wal-archive"


def connect(password, sslmode="verify-full", user="app", dbname="app"):
    return client(password, 5432, user=user, dbname=dbname, sslmode=sslmode)


def test_app_connects_with_verify_full_and_scram(lab, first_deploy, secret):
    with connect(secret("app")) as conn:
        row = conn.execute("SELECT current_user, s.ssl, s.version, pg_backend_pid() "
                           "FROM pg_stat_ssl s WHERE s.pid = pg_backend_pid()").fetchone()
        assert row[:2] == ("app", True)
        assert row[2] in ("TLSv1.2", "TLSv1.3")
    # The server's own log says how it authenticated that session.
    logged = lab.ssh("pgt1", ["grep", "-h", f"'\\[{row[3]}\\].*connection authenticated'",
                              "-r", "/var/log/postgresql/pginfra"]).stdout
    assert 'identity="app" method=scram-sha-256' in logged


def test_plain_tcp_and_wrong_password_are_refused(first_deploy, secret):
    with pytest.raises(psycopg.OperationalError, match="no encryption"):
        connect(secret("app"), sslmode="disable")
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        connect("not-the-password")
    with pytest.raises(psycopg.OperationalError, match="rejects connection"):
        connect(secret("app"), user="postgres", dbname="postgres")


def test_reloadable_change_reloads_and_shared_buffers_restarts(lab, first_deploy):
    started = sql(lab, "SELECT pg_postmaster_start_time()")
    result = deploy_ok(lab, "--data", "postgres_slow_statement_ms=750")
    assert sql(lab, "SHOW log_min_duration_statement") == "750ms"
    assert sql(lab, "SELECT pg_postmaster_start_time()") == started, "a reload must not restart"
    assert "restarting" not in result.stderr

    result = deploy_ok(lab, "--data", "postgres_slow_statement_ms=750",
                       "--data", 'postgres_parameters={"shared_buffers": "256MB"}')
    assert sql(lab, "SHOW shared_buffers") == "256MB"
    assert sql(lab, "SELECT pg_postmaster_start_time()") != started
    assert "restarting 15/main for: shared_buffers" in result.stderr

    deploy_ok(lab)  # back to the inventory's values
    assert sql(lab, "SHOW log_min_duration_statement") == "500ms"


def test_broken_setting_fails_and_server_keeps_old_configuration(lab, first_deploy):
    conf = "/etc/postgresql/15/main/conf.d/postgresql-production.conf"
    before = lab.ssh("pgt1", ["sha256sum", conf]).stdout
    started = sql(lab, "SELECT pg_postmaster_start_time()")
    result = run_pyinfra(lab, "--data", 'postgres_parameters={"work_mem": "lots"}')
    assert result.returncode != 0
    assert 'invalid value for parameter "work_mem": "lots"' in result.stderr
    assert "previous files restored" in result.stderr
    assert lab.ssh("pgt1", ["sha256sum", conf]).stdout == before
    assert sql(lab, "SHOW work_mem") != "lots"
    assert sql(lab, "SELECT pg_postmaster_start_time()") == started
    assert sql(lab, "SELECT count(*) FROM pg_file_settings WHERE error IS NOT NULL") == "0"
    # The next good run converges again.
    deploy_ok(lab)
    assert run_pyinfra(lab).changed == []


def test_connection_limit_change_reaches_the_role(lab, first_deploy):
    roles = [{"name": "app_owner"}, {"name": "community_owner"},
             {"name": "app", "login": True, "connection_limit": 7, "member_of": ["app_owner"]}]
    result = deploy_ok(lab, "--data", f"postgres_roles={json.dumps(roles)}")
    assert "Create or change roles: app" in " ".join(result.changed)
    assert sql(lab, "SELECT rolconnlimit FROM pg_roles WHERE rolname = 'app'") == "7"
    deploy_ok(lab)
    assert sql(lab, "SELECT rolconnlimit FROM pg_roles WHERE rolname = 'app'") == "50"


def test_password_rotation(lab, first_deploy, secret):
    old = secret("app")
    new = "rotated-" + hashlib.sha256(old.encode()).hexdigest()[:20]
    deploy_ok(lab, env=control_env(lab, PGINFRA_PASSWORD_APP=new))
    with connect(new) as conn:
        assert conn.execute("SELECT current_user").fetchone() == ("app",)
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        connect(old)
    deploy_ok(lab)  # back to the secrets file's password
    with connect(old):
        pass


def _archiver(lab):
    archived, failed, last_ok, last_failed = sql(
        lab, "SELECT archived_count, failed_count, coalesce(last_archived_wal, ''), "
             "coalesce(last_failed_wal, '') FROM pg_stat_archiver").split("|")
    return int(archived), int(failed), last_ok, last_failed


def _switch(lab):
    sql(lab, "SELECT txid_current()")
    return sql(lab, "SELECT pg_walfile_name(pg_switch_wal())")


def _wait(lab, predicate, timeout=40):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        state = _archiver(lab)
        if predicate(state):
            return state
        time.sleep(0.5)
    raise AssertionError(f"archiver state never matched: {_archiver(lab)}")


def _in_repository(lab, segment: str) -> bool:
    """Whether pgBackRest's local repository holds ``segment`` (compressed, with its SHA-1)."""
    return lab.ssh("pgt1", ["sh", "-c", repr(
        f"ls {ARCHIVE}/archive/main/15-*/{segment[:16]}/ | grep -q '^{segment}-'")],
        check=False).returncode == 0


@pytest.mark.parametrize("fault", ["full", "read-only"])
def test_archive_fault_keeps_the_segment_and_archives_it_once_cleared(lab, first_deploy, fault):
    _, failed0, _, _ = _archiver(lab)
    if fault == "full":  # a full filesystem over the repository (which it also hides)
        lab.ssh("pgt1", ["mount", "-t", "tmpfs", "-o", "size=1m,mode=0700,uid=postgres,"
                         "gid=postgres", "tmpfs", ARCHIVE])
    else:  # the repository read-only
        lab.ssh("pgt1", ["chmod", "-R", "a-w", f"{ARCHIVE}/archive"])
    try:
        segment = _switch(lab)
        _wait(lab, lambda s: s[1] > failed0 and s[3] == segment)
        ready = f"/var/lib/postgresql/15/main/pg_wal/archive_status/{segment}.ready"
        assert lab.ssh("pgt1", ["test", "-e", ready], check=False).returncode == 0
    finally:
        if fault == "full":
            lab.ssh("pgt1", ["umount", ARCHIVE])
        else:
            lab.ssh("pgt1", ["chmod", "-R", "u+w", f"{ARCHIVE}/archive"])
    _switch(lab)  # wakes the archiver
    _wait(lab, lambda s: s[2] > segment, timeout=90)
    assert _in_repository(lab, segment)


def test_archive_refuses_a_different_file_and_accepts_an_identical_one(lab, first_deploy):
    """pgBackRest never overwrites an archived segment: the same one pushed again is accepted,
    a different file of the same name is refused."""
    first = _switch(lab)
    _wait(lab, lambda s: s[2] >= first, timeout=90)
    push = ["cd", "/tmp", "&&", "runuser", "-u", "postgres", "--", "pgbackrest",
            "--stanza=main", "--no-archive-async", "archive-push"]
    copy = f"/tmp/{first}"
    lab.ssh("pgt1", ["install", "-o", "postgres", "-m", "600",
                     f"/var/lib/postgresql/15/main/pg_wal/{first}", copy])
    try:
        same = lab.ssh("pgt1", [*push, copy], check=False)
        assert same.returncode == 0, same.stderr
        assert "already exists" in same.stdout + same.stderr and "same checksum" in \
            same.stdout + same.stderr
        lab.ssh("pgt1", ["printf", "'different'", "|", "dd", f"of={copy}", "bs=1",
                         "seek=1048576", "conv=notrunc", "status=none"])
        other = lab.ssh("pgt1", [*push, copy], check=False)
        assert other.returncode != 0
        assert "different checksum" in other.stdout + other.stderr
    finally:
        lab.ssh("pgt1", ["rm", "-f", copy])
    assert _in_repository(lab, first)


def test_converged_after_all_of_the_above(lab, first_deploy):
    result = deploy_ok(lab)
    assert result.changed == []


def test_passwords_never_reach_the_host(lab, first_deploy, secret):
    """Only SCRAM verifiers travel: no password in any file, log or process on the host."""
    for role in ("app", "postgres"):
        password = secret(role)
        found = lab.ssh("pgt1", ["grep", "-rlF", "--", repr(password), "/etc", "/var/log",
                                 "/var/lib/postgresql", "/root", "/tmp", "/usr/local"],
                        check=False)
        assert found.returncode == 1, f"{role}'s password found in: {found.stdout}"
        procs = lab.ssh("pgt1", ["ps", "-eo", "args"]).stdout
        assert password not in procs
