"""Streaming replication, as the host's own configuration says it should be: a host whose
``primary_conninfo`` names an upstream is a hot standby streaming from it over TLS verify-full,
with its passfile readable by postgres only; any other host is a primary whose slots are all
in use by standbys connected over TLS."""

import pytest

PASSFILE = "/etc/postgresql/15/main/replication.pgpass"
HBA = "/etc/postgresql/15/main/pg_hba.conf"


@pytest.fixture(scope="module")
def upstream(primary_conninfo):
    return dict(part.split("=", 1) for part in primary_conninfo.split()) \
        if primary_conninfo else None


def test_role_matches_the_configuration(psql, upstream):
    assert psql("SELECT pg_is_in_recovery()") == ("t" if upstream else "f")


def test_standby_streams_from_its_upstream_over_verified_tls(psql, upstream):
    if upstream is None:
        pytest.skip("a primary: it streams from no one")
    row = psql("SELECT status, sender_host, sender_port, slot_name, conninfo "
               "FROM pg_stat_wal_receiver").split("|")
    assert row[:4] == ["streaming", upstream["host"], upstream["port"],
                       upstream["application_name"]]
    assert "sslmode=verify-full" in row[4]
    assert "password" not in row[4]
    assert upstream["user"] == "replicator"


def test_standby_is_read_only(host, upstream):
    if upstream is None:
        pytest.skip("a primary takes writes")
    with host.sudo("postgres"):
        out = host.run("cd /tmp && psql -XAtq -c 'CREATE TABLE pginfra_write_probe (i int)'")
    assert out.rc != 0
    assert "read-only transaction" in out.stderr


def test_passfile_is_postgres_only(host, upstream):
    passfile = host.file(PASSFILE)
    if upstream is None:
        assert not passfile.exists  # a primary keeps no replication password
        return
    assert passfile.user == "postgres" and passfile.group == "postgres"
    assert passfile.mode == 0o600
    assert host.file("/etc/postgresql/15/main").mode == 0o700


def test_replication_password_is_not_in_the_process_list(host):
    assert "password=" not in host.check_output("ps -eo args")


def test_primary_slots_are_all_in_use_over_tls(psql, upstream):
    if upstream is not None:
        pytest.skip("a standby without standbys of its own")
    slots = psql("SELECT slot_name, active FROM pg_replication_slots "
                 "WHERE slot_type = 'physical' ORDER BY 1").splitlines()
    senders = psql("SELECT r.application_name, s.ssl FROM pg_stat_replication r "
                   "JOIN pg_stat_ssl s USING (pid) ORDER BY 1").splitlines()
    assert [s.split("|")[1] for s in slots] == ["t"] * len(slots), slots
    assert [s.split("|")[0] for s in slots] == [s.split("|")[0] for s in senders]
    assert all(s.endswith("|t") for s in senders), senders


def test_replication_rules_are_hostssl_scram_for_single_addresses(host):
    rules = [line.split() for line in host.file(HBA).content_string.splitlines()
             if line.split()[:2] and line.split()[1:2] == ["replication"]]
    for rule in rules:
        if rule[0] == "local":
            assert rule[2:] == ["postgres", "peer"]
        elif rule[-1] == "reject":
            assert rule[0] == "host"
        else:
            assert rule[0] == "hostssl" and rule[2] == "replicator", rule
            assert rule[3].endswith(("/32", "/128")) and rule[4] == "scram-sha-256", rule


def test_replication_commands_are_logged(psql):
    assert psql("SHOW log_replication_commands") == "on"


def test_standby_runs_no_backups_maintenance_or_bundles(host, upstream):
    if upstream is None:
        pytest.skip("a primary runs them (test_backups.py, test_health.py check)")
    cron = host.file("/etc/cron.d/pginfra").content_string
    assert "pginfra-health" in cron
    assert "pginfra-backup" not in cron and "pginfra-maintenance" not in cron
    for program in ("pginfra-backup", "pginfra-maintenance", "pginfra-migrate"):
        assert not host.file(f"/usr/local/lib/pginfra/{program}").exists, program
    assert host.file("/usr/local/lib/pginfra/pginfra-health").exists
    # pginfra-restore, to rebuild the standby from the repository (pginfra-restore standby)
    assert host.file("/usr/local/lib/pginfra/pginfra-restore").exists
    assert host.file("/etc/pginfra/backup.json").exists


def test_health_check_sees_the_role(host, upstream):
    with host.sudo("postgres"):
        report = host.check_output("cd /tmp && /usr/local/lib/pginfra/pginfra-health --json")
    assert '"status":"ok"' in report.replace(" ", "")[:200], report[:600]
    assert ("standby (in recovery)" if upstream else "primary") in report
