"""Audit and logging as the CIS PostgreSQL benchmark asks, on the lab's host: pgAudit writes
DDL and role changes to the server log, a rotated password reaches neither the log nor pgAudit,
a failed login waits (auth_delay), what the scheduled jobs write is the postgres user's alone,
and schema public is usable by the roles that may connect to the database only."""

from __future__ import annotations

import hashlib
import time

import psycopg
import pytest
from conftest import client, control_env, deploy_ok, sql

LOG_DIR = "/var/log/postgresql/pginfra"


def server_log(lab) -> str:
    return lab.ssh("pgt1", ["sh", "-c", repr(f"cat {LOG_DIR}/*.log")], timeout=60).stdout


def test_pgaudit_logs_ddl_and_role_changes(lab, first_deploy):
    sql(lab, "CREATE TABLE audit_probe (id int); DROP TABLE audit_probe", "app")
    log = server_log(lab)
    assert "AUDIT: SESSION," in log
    assert ",DDL,CREATE TABLE,TABLE,public.audit_probe," in log or \
        ",DDL,CREATE TABLE,,,CREATE TABLE audit_probe" in log


def test_a_rotated_password_never_reaches_the_server_log(lab, first_deploy, secret):
    old = secret("app")
    new = "audit-rotation-" + hashlib.sha256(old.encode()).hexdigest()[:16]
    deploy_ok(lab, env=control_env(lab, PGINFRA_PASSWORD_APP=new))
    with client(new) as conn:
        assert conn.execute("SELECT current_user").fetchone() == ("app",)
    deploy_ok(lab)  # and back
    log = server_log(lab)
    assert new not in log and old not in log
    assert "SCRAM-SHA-256$" not in log
    assert "PASSWORD" not in log.upper().replace("PASSWORD AUTHENTICATION", "")


def test_a_failed_login_waits(lab, first_deploy):
    started = time.monotonic()
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        client("not-the-password")
    assert time.monotonic() - started >= 0.5  # postgres_auth_delay_ms


def test_what_the_jobs_write_is_private(lab, first_deploy):
    lab.ssh("pgt1", ["cd", "/tmp", "&&", "runuser", "-u", "postgres", "--",
                     "/usr/local/lib/pginfra/pginfra-backup", "dump"], timeout=600)
    modes = lab.ssh("pgt1", ["find", "/var/backups/postgresql/pginfra", "-type", "f",
                             "-printf", "'%m\\n'"]).stdout.split()
    assert modes and set(modes) == {"600"}, modes
    umask = lab.ssh("pgt1", ["sh", "-c", repr(
        "grep Umask /proc/$(head -1 /var/lib/postgresql/15/main/postmaster.pid)/status")])
    assert umask.stdout.split() == ["Umask:", "0077"]


def test_schema_public_is_used_by_the_roles_that_connect_only(lab, first_deploy):
    assert sql(lab, "SELECT has_schema_privilege('app', 'public', 'USAGE')", "app") == "t"
    assert sql(lab, "SELECT has_schema_privilege('app_owner', 'public', 'USAGE')", "app") == "t"
    assert sql(lab, "SELECT has_schema_privilege('community_owner', 'public', 'USAGE')",
               "app") == "f"
    assert sql(lab, "SELECT has_schema_privilege('public', 'public', 'USAGE')", "app") == "f"
