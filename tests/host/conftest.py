"""testinfra checks of a provisioned host. Point them at hosts over SSH:

    pytest tests/host --hosts=pg1 --ssh-config=/var/lib/pginfra/rehearsal/ssh_config
    pytest tests/host --hosts=pg1 --ssh-config=.vagrant/ssh-config
"""

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
