"""testinfra checks of a provisioned host. Point them at hosts over SSH:

    pytest tests/host --hosts=pg1 --ssh-config=/var/lib/pginfra/rehearsal/ssh_config
    pytest tests/host --hosts=pg1 --ssh-config=.vagrant/ssh-config
"""

import re

import pytest

from pginfra.settings import resolve


def pytest_configure(config):
    if not config.getoption("hosts", None):
        raise pytest.UsageError(
            "tests/host checks provisioned hosts: pass --hosts=NAME --ssh-config=FILE"
        )


@pytest.fixture(scope="session")
def settings():
    """The settings the hosts were deployed with: the defaults (the rehearsal's embedded job)."""
    return resolve({})


@pytest.fixture(scope="session")
def cluster(settings):
    return f"{settings.postgres_version}/{settings.postgres_cluster}"


@pytest.fixture
def psql(host):
    """``psql(sql)`` runs SQL as the postgres superuser over the local socket."""

    def run(sql: str, database: str = "postgres") -> str:
        with host.sudo("postgres"):
            return host.check_output(f"cd /tmp && psql -XAtq -d {database} -c {sql!r}")

    return run


@pytest.fixture(scope="module")
def primary_conninfo(host, settings) -> str:
    """The host's primary_conninfo: its upstream when it is a standby, '' on a primary."""
    conf = host.file(f"/etc/postgresql/{settings.postgres_version}/{settings.postgres_cluster}"
                     "/conf.d/postgresql-production.conf").content_string
    found = re.search(r"^primary_conninfo = '((?:[^']|'')*)'$", conf, re.M)
    return found.group(1).replace("''", "'") if found else ""


@pytest.fixture(scope="module")
def standby(primary_conninfo) -> bool:
    """Whether the host is configured as a standby: its primary_conninfo names an upstream."""
    return bool(primary_conninfo)


@pytest.fixture
def primary_only(standby, host):
    """Backups, maintenance and SQL bundles are the primary's: on a standby, test_replication.py
    checks that they are absent instead."""
    if standby:
        pytest.skip("a standby: backups, maintenance and SQL bundles run on the primary "
                    "(tests/host/test_replication.py checks they are absent here)")
