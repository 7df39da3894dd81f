"""PgBouncer from the control machine: TLS and SCRAM through the pooler, refusals, the admin
console, reloads that keep clients, password rotation, capacity checks and auth_query."""

import psycopg
import pytest
from conftest import client, control_env, deploy_ok, run_pyinfra, sql

AUTH_FAILED = "(password|SASL) authentication failed"


def bouncer(password, user="app", dbname="app", sslmode="verify-full", port=6432, **kwargs):
    return client(password, port, user=user, dbname=dbname, sslmode=sslmode, **kwargs)


def test_app_queries_through_pgbouncer_with_tls_and_scram(first_deploy, secret):
    with bouncer(secret("app")) as conn:
        assert conn.execute("SELECT current_user, current_database()").fetchone() == (
            "app", "app")
        conn.execute("CREATE TEMP TABLE IF NOT EXISTS t (n int)")  # transaction pooling
        assert conn.pgconn.ssl_in_use


def test_refusals(lab, first_deploy, secret):
    with pytest.raises(psycopg.OperationalError, match=AUTH_FAILED):
        bouncer("wrong-password")
    with pytest.raises(psycopg.OperationalError, match="SSL required"):
        bouncer(secret("app"), sslmode="disable")
    sql(lab, "CREATE ROLE outsider LOGIN PASSWORD 'outsider-pass'")
    sql(lab, "GRANT CONNECT ON DATABASE app TO outsider")
    try:
        with pytest.raises(psycopg.OperationalError):
            bouncer("outsider-pass", user="outsider")
    finally:
        sql(lab, "REVOKE CONNECT ON DATABASE app FROM outsider")
        sql(lab, "DROP ROLE outsider")


def test_admin_console_is_for_admins_only(first_deploy, secret):
    # A non-admin is turned away at the console's door, before SHOW CONFIG can run.
    with pytest.raises(psycopg.OperationalError, match="not allowed"), \
            bouncer(secret("app"), dbname="pgbouncer") as conn:
        conn.execute("SHOW CONFIG")
    with bouncer(secret("pgbouncer_admin"), user="pgbouncer_admin", dbname="pgbouncer",
                 prepare_threshold=None) as conn:
        rows = conn.execute("SHOW CONFIG").fetchall()
        assert ("auth_type", "scram-sha-256") in [(r[0], r[1]) for r in rows]


def test_reload_keeps_established_clients(lab, first_deploy, secret):
    with bouncer(secret("app")) as conn:
        conn.execute("SELECT 1")
        result = deploy_ok(lab, "--data", "pgbouncer_default_pool_size=21")
        assert ("PgBouncer | Reload PgBouncer (re-reads pgbouncer.ini and userlist.txt) and "
                "check it took") in result.changed
        assert not [op for op in result.changed if "Restart PgBouncer" in op]
        assert conn.execute("SELECT 2").fetchone() == (2,)  # the same client connection
    deploy_ok(lab)


def test_listen_change_restarts(lab, first_deploy, secret):
    result = deploy_ok(lab, "--data", "pgbouncer_port=6433")
    assert "PgBouncer | Restart PgBouncer for: listen_port" in result.changed
    with bouncer(secret("app"), port=6433) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)
    deploy_ok(lab)


def test_rotated_password_reaches_server_and_pgbouncer(lab, first_deploy, secret):
    old = secret("app")
    new = "rotated-through-pgbouncer-" + old[:6]
    deploy_ok(lab, env=control_env(lab, PGINFRA_PASSWORD_APP=new))
    for port in (6432, 5432):
        with bouncer(new, port=port) as conn:
            assert conn.execute("SELECT current_user").fetchone() == ("app",)
        with pytest.raises(psycopg.OperationalError, match=AUTH_FAILED):
            bouncer(old, port=port)
    deploy_ok(lab)
    with bouncer(old):
        pass


def test_pools_larger_than_the_server_are_refused(lab, first_deploy):
    result = run_pyinfra(lab, "--data", "pgbouncer_default_pool_size=400")
    assert result.returncode != 0
    # 400 + 5 reserve for each pooled database/role pair: app and community, both for app
    assert "PgBouncer could open 810 server connections" in result.stderr
    assert "nothing was changed" in result.stderr
    assert "Starting operation" not in result.stderr


def test_auth_query_mode(lab, first_deploy, secret):
    deploy_ok(lab, "--data", "pgbouncer_auth=auth_query")
    try:
        userlist = lab.ssh("pgt1", ["cat", "/etc/pgbouncer/userlist.txt"]).stdout
        assert '"app"' not in userlist  # looked up through auth_query instead
        assert '"pgbouncer_auth"' not in userlist  # it comes in by peer, with no secret here
        assert sql(lab, "SELECT count(*) FROM pg_hba_file_rules WHERE auth_method = 'peer' "
                        "AND user_name = '{pgbouncer_auth}' AND options = '{map=pgbouncer}'") \
            == "1"
        with bouncer(secret("app")) as conn:
            assert conn.execute("SELECT current_user").fetchone() == ("app",)
        fn = sql(lab, "SELECT prosecdef, array_to_string(proconfig, ';'), "
                      "has_function_privilege('app', p.oid, 'EXECUTE') FROM pg_proc p "
                      "WHERE proname = 'get_auth'", db="app")
        assert fn == "t|search_path=pg_catalog, pg_temp|f"
        assert sql(lab, "SELECT rolsuper FROM pg_roles WHERE rolname = 'pgbouncer_auth'") == "f"
        with pytest.raises(psycopg.OperationalError, match=AUTH_FAILED):
            bouncer("wrong-password")
    finally:
        deploy_ok(lab)
    assert '"app"' in lab.ssh("pgt1", ["cat", "/etc/pgbouncer/userlist.txt"]).stdout


def test_pgbouncer_converged(lab, first_deploy):
    assert deploy_ok(lab).changed == []
