"""The production configuration: tuning, WAL archiving, logging, TLS, access, roles."""

import re

import pytest

from pginfra.roles import EXPORTER_ROLE
from pginfra.server_config import server_parameters
from pginfra.tuning import MB


@pytest.fixture(scope="module")
def conf_dir(settings):
    return f"/etc/postgresql/{settings.postgres_version}/{settings.postgres_cluster}"


def setting(psql, name):
    return psql(f"SELECT current_setting('{name}')")


def test_config_files_owned_by_postgres_and_private(host, conf_dir):
    assert (host.file(conf_dir).user, host.file(conf_dir).mode) == ("postgres", 0o700)
    for name in ("postgresql.conf", "pg_hba.conf", "pg_ident.conf",
                 "conf.d/postgresql-production.conf"):
        f = host.file(f"{conf_dir}/{name}")
        assert (f.user, f.group) == ("postgres", "postgres"), name
        assert f.mode in (0o600, 0o640), f"{name} mode {f.mode:o}"


def test_no_configuration_errors_and_nothing_pending(psql):
    assert psql("SELECT count(*) FROM pg_file_settings WHERE error IS NOT NULL") == "0"
    assert psql("SELECT count(*) FROM pg_hba_file_rules WHERE error IS NOT NULL") == "0"
    assert psql("SELECT string_agg(name, ',') FROM pg_settings WHERE pending_restart") == ""


def test_tuned_from_the_hosts_ram_and_cpus(host, psql, settings):
    memory_mb = round(int(re.search(r"(\d+) K total memory",
                                    host.check_output("LANG=C vmstat -s")).group(1)) / 1024)
    cpus = int(host.check_output("getconf _NPROCESSORS_ONLN"))
    # The deploy computed these from the same facts; the server must run with them.
    wanted = server_parameters(settings, memory_mb * MB, cpus)
    for name in ("shared_buffers", "effective_cache_size", "maintenance_work_mem",
                 "work_mem", "wal_buffers", "max_connections", "random_page_cost"):
        value = psql(f"SELECT setting || coalesce(unit, '') FROM pg_settings WHERE name = '{name}'")
        shown = setting(psql, name)
        assert wanted[name] in (shown, value), f"{name}: wanted {wanted[name]}, server {shown}"


@pytest.mark.parametrize(("name", "value"), [
    ("wal_level", "replica"),
    ("archive_mode", "on"),
    ("archive_library", ""),
    ("wal_compression", "lz4"),
    ("password_encryption", "scram-sha-256"),
    ("ssl", "on"),
    ("ssl_min_protocol_version", "TLSv1.2"),
    ("logging_collector", "on"),
    ("log_file_mode", "0600"),
    ("log_timezone", "UTC"),
    ("log_connections", "on"),
    ("log_disconnections", "on"),
    ("log_lock_waits", "on"),
    ("log_temp_files", "0"),
    ("log_checkpoints", "on"),
    ("log_autovacuum_min_duration", "0"),
    ("unix_socket_permissions", "0770"),
    ("idle_in_transaction_session_timeout", "10min"),
    ("data_checksums", "on"),
])
def test_production_values(psql, name, value):
    assert setting(psql, name) == value


def test_preloaded_statistics_and_slow_log(psql, settings):
    assert setting(psql, "shared_preload_libraries") == \
        "pg_stat_statements,auto_explain,pgaudit,auth_delay"
    assert setting(psql, "log_min_duration_statement") == f"{settings.postgres_slow_statement_ms}ms"
    prefix = setting(psql, "log_line_prefix")
    for escape in ("%m", "%p", "%u", "%d", "%a", "%h"):
        assert escape in prefix


def test_log_directory_outside_pgdata(host, psql, settings):
    log_dir = setting(psql, "log_directory")
    assert log_dir == settings.postgres_log_directory
    assert not log_dir.startswith(setting(psql, "data_directory"))
    d = host.file(log_dir)
    assert (d.user, d.mode) == ("postgres", 0o700)
    logs = host.check_output(f"find {log_dir} -type f -name '*.log' -printf '%m\\n' | sort -u")
    assert logs.split() == ["600"]


def test_wal_archive_directory(host, psql, settings, standby):
    d = host.file(settings.postgres_wal_archive_dir)
    assert (d.user, d.group, d.mode) == ("postgres", "postgres", 0o700)
    # pgBackRest's local repository: WAL under archive/<stanza>, backups under backup/<stanza>
    assert setting(psql, "archive_command") == \
        f"pgbackrest --stanza={settings.postgres_cluster} archive-push %p"
    # on a standby it stays empty: the repository is the primary's, reached over TLS
    assert host.file(f"{settings.postgres_wal_archive_dir}/archive/"
                     f"{settings.postgres_cluster}/archive.info").exists != standby


@pytest.mark.usefixtures("primary_only")
def test_switched_segment_is_archived(host, psql, settings):
    before = psql("SELECT archived_count || ' ' || failed_count FROM pg_stat_archiver").split()
    psql("SELECT txid_current()")
    segment = psql("SELECT pg_walfile_name(pg_switch_wal())")
    for _ in range(50):
        row = psql("SELECT archived_count, failed_count, last_archived_wal FROM pg_stat_archiver")
        archived, failed, last = row.split("|")
        if int(archived) > int(before[0]) and last >= segment:
            break
        host.run("sleep 0.2")
    assert int(archived) > int(before[0])
    assert failed == before[1], "the switch caused an archive failure"
    # in pgBackRest's repository: archive/<stanza>/<version>-<n>/<first 16>/<segment>-<sha1>
    found = host.run(f"ls {settings.postgres_wal_archive_dir}/archive/"
                     f"{settings.postgres_cluster}/15-*/{segment[:16]}/ | grep '^{segment}-'")
    assert found.rc == 0 and found.stdout.strip().endswith(".lz4"), found.stdout


def test_socket_not_world_writable(host, settings):
    sock = host.file(f"/var/run/postgresql/.s.PGSQL.{settings.postgres_port}")
    assert sock.exists
    assert sock.mode & 0o002 == 0


def test_tls_key_and_certificate_are_the_hosts_own(host, psql, conf_dir):
    key = host.file(f"{conf_dir}/tls/server.key")
    assert (key.user, key.mode) == ("postgres", 0o600)
    assert setting(psql, "ssl_cert_file") == f"{conf_dir}/tls/server.crt"
    issuer = host.check_output(f"openssl x509 -noout -issuer -in {conf_dir}/tls/server.crt")
    assert issuer.startswith("issuer=")
    assert "snakeoil" not in issuer.lower()
    assert "snakeoil" not in setting(psql, "ssl_key_file")


def test_hba_uses_only_scram_and_peer_and_rejects_the_rest(psql):
    methods = set(psql("SELECT string_agg(DISTINCT auth_method, ' ') FROM pg_hba_file_rules")
                  .split())
    assert methods <= {"peer", "scram-sha-256", "reject"}
    assert psql("SELECT auth_method FROM pg_hba_file_rules ORDER BY line_number DESC LIMIT 1") \
        == "reject"
    assert psql("SELECT count(*) FROM pg_hba_file_rules WHERE type = 'host' "
                "AND auth_method <> 'reject'") == "0"
    assert psql("SELECT array_to_string(user_name, ',') || ' ' || auth_method "
                "FROM pg_hba_file_rules "
                "WHERE type = 'local' ORDER BY line_number LIMIT 1") == "postgres peer"


def test_every_login_role_and_postgres_have_a_scram_password(psql):
    """The Prometheus exporter's role (health_prometheus) excepted: it has no password at all,
    so it can only come in over the Unix socket by peer authentication, never over TCP."""
    assert psql("SELECT count(*) FROM pg_authid WHERE (rolcanlogin OR rolname = 'postgres') "
                f"AND rolname <> '{EXPORTER_ROLE}' "
                "AND coalesce(rolpassword, '') NOT LIKE 'SCRAM-SHA-256$%'") == "0"
    assert psql(f"SELECT count(*) FROM pg_authid WHERE rolname = '{EXPORTER_ROLE}' "
                "AND rolpassword IS NOT NULL") == "0"


def test_databases_refuse_public_connect_and_public_schema_create_and_usage(host, psql):
    dbs = psql("SELECT string_agg(datname, ' ') FROM pg_database WHERE NOT datistemplate "
               "AND datname <> 'postgres'").split()
    for db in dbs:
        public_connect = psql(
            "SELECT count(*) FROM pg_database d, aclexplode(coalesce(d.datacl, "
            f"acldefault('d', d.datdba))) a WHERE d.datname = '{db}' AND a.grantee = 0 "
            "AND a.privilege_type = 'CONNECT'")
        assert public_connect == "0", db
    for db in ["postgres", *dbs]:
        assert psql("SELECT has_schema_privilege('public', 'public', 'CREATE')", db) == "f"
        # USAGE on schema public: only the roles that may connect (and the owner)
        assert psql("SELECT has_schema_privilege('public', 'public', 'USAGE')", db) == "f"
        assert psql("SELECT extname FROM pg_extension WHERE extname = 'pg_stat_statements'",
                    db) == "pg_stat_statements"
        assert psql("SELECT has_table_privilege('public', 'pg_stat_statements', 'SELECT')",
                    db) == "f"
        assert psql("SELECT has_table_privilege('pg_read_all_stats', 'pg_stat_statements', "
                    "'SELECT')", db) == "t"


def test_audit_logging_and_a_delay_after_failed_logins(host, psql, settings):
    assert host.package("postgresql-15-pgaudit").is_installed
    assert setting(psql, "pgaudit.log") == settings.postgres_audit_log
    assert setting(psql, "pgaudit.log_parameter") == "off"
    assert setting(psql, "log_statement") == "ddl"
    assert setting(psql, "auth_delay.milliseconds") == f"{settings.postgres_auth_delay_ms}ms"


def test_units_start_after_the_network_with_a_private_umask(host, settings):
    unit = f"postgresql@{settings.postgres_version}-{settings.postgres_cluster}.service"
    for name in (unit, "pgbouncer.service"):
        show = host.check_output(f"systemctl show -p After -p Wants -p UMask {name}")
        assert "network-online.target" in show.split("After=")[1].split("\n")[0], name
        assert "UMask=0077" in show, name
