"""A cluster without data checksums (as Debian creates one) is re-created only when empty."""

import pytest
from conftest import deploy_ok, run_pyinfra, sql

CLUSTER = ["--data", "postgres_cluster=chk", "--data", "postgres_port=5434",
           "--data", "postgres_wal_archive_dir=/var/lib/postgresql/wal-archive-chk",
           "--data", "postgres_log_directory=/var/log/postgresql/pginfra-chk",
           "--data", "postgres_databases=[]", "--data", "postgres_roles=[]",
           "--data", "postgres_hba=[]", "--data", "postgres_sql_bundles={}",
           "--data", "pginfra_example_community=false",
           "--data", "pgbouncer_enabled=false"]  # PgBouncer belongs to the host's main cluster


def on_chk(lab, query):
    return sql(lab, query, port=5434)


@pytest.fixture(scope="module", autouse=True)
def converge_afterwards(lab, first_deploy):
    """Host-wide files (the backup configuration and cron jobs) follow the last deploy: put the
    host back as the rehearsal job leaves it once these deploys to cluster chk are done."""
    yield
    deploy_ok(lab)


@pytest.fixture
def debian_cluster(lab, first_deploy):
    """A second cluster made the Debian way: no checksums."""
    lab.ssh("pgt1", ["pg_createcluster", "15", "chk", "--port=5434", "--start"])
    assert on_chk(lab, "SHOW data_checksums") == "off"
    yield
    lab.ssh("pgt1", ["pg_dropcluster", "--stop", "15", "chk"])
    lab.ssh("pgt1", ["rm", "-rf", "/var/lib/postgresql/wal-archive-chk",
                     "/var/log/postgresql/pginfra-chk"])


def test_empty_cluster_is_recreated_with_checksums(lab, debian_cluster):
    result = run_pyinfra(lab, *CLUSTER)
    assert result.returncode == 0, result.stderr[-4000:]
    assert "Create the PostgreSQL cluster | Re-create empty cluster 15/chk with data checksums" \
        in result.changed
    assert on_chk(lab, "SHOW data_checksums") == "on"
    assert on_chk(lab, "SHOW archive_command") == "pgbackrest --stanza=chk archive-push %p"
    again = run_pyinfra(lab, *CLUSTER)
    assert again.returncode == 0 and again.changed == []


def test_cluster_with_data_is_never_touched(lab, debian_cluster):
    on_chk(lab, "CREATE TABLE keep_me AS SELECT generate_series(1, 100) AS n")
    result = run_pyinfra(lab, *CLUSTER)
    assert result.returncode == 0, result.stderr[-4000:]
    assert "holds user data" in result.stderr and "never re-creates it" in result.stderr
    assert on_chk(lab, "SHOW data_checksums") == "off"
    assert on_chk(lab, "SELECT count(*) FROM keep_me") == "100"
