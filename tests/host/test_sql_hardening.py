"""The SQL hardening a deploy leaves behind: the runner, the bundles, the dump directory, and
every database with the baseline bundle applied and nothing pending."""

import hashlib
import json

import pytest

from pginfra.sql_bundles import SQL_ROOT

pytestmark = pytest.mark.usefixtures("primary_only")

RUNNER = "/usr/local/lib/pginfra/pginfra-migrate"
SQL_DIR = "/usr/local/share/pginfra/sql"


def test_runner_installed(host):
    runner = host.file(RUNNER)
    assert (runner.user, runner.group, runner.mode) == ("root", "root", 0o755)
    assert runner.content_string.startswith("#!/usr/bin/python3")


def test_bundles_uploaded_as_they_are_here(host):
    for path in sorted(SQL_ROOT.rglob("*.sql")):
        remote = host.file(f"{SQL_DIR}/{path.relative_to(SQL_ROOT)}")
        assert (remote.user, remote.mode) == ("root", 0o644), path
        assert remote.sha256sum == hashlib.sha256(path.read_bytes()).hexdigest(), path


def test_dumps_directory_is_private(host, settings):
    if settings.pginfra_migrate_dump:
        d = host.file(settings.pginfra_migrate_dump_dir)
        assert d.is_directory
        assert (d.user, d.group, d.mode) == ("postgres", "postgres", 0o700)


def managed_databases(psql) -> list[str]:
    out = psql("SELECT datname FROM pg_database WHERE NOT datistemplate "
               "AND datname <> 'postgres' ORDER BY 1")
    return out.split()


def test_every_database_has_the_baseline_and_nothing_pending(host, psql):
    databases = managed_databases(psql)
    assert databases, "the rehearsal job manages at least one database"
    for db in databases:
        with host.sudo("postgres"):
            out = host.check_output(f"cd /tmp && {RUNNER} --dbname {db} status --json "
                                    f"{SQL_DIR}/baseline")
        status = json.loads(out)
        assert status["pending"] == [] and status["changed"] == [], (db, status)
        assert status["applied"], db
        assert psql("SELECT nspowner::regrole FROM pg_namespace WHERE nspname = 'monitoring'",
                    db) == "monitoring_owner"


def test_history_records_who_and_how_long(psql):
    for db in managed_databases(psql):
        rows = psql("SELECT count(*), bool_and(applied_by = 'postgres'), "
                    "bool_and(duration_ms >= 0), bool_and(length(checksum) = 64) "
                    "FROM pginfra.migrations", db)
        count, by, duration, checksum = rows.split("|")
        assert int(count) > 0 and by == duration == checksum == "t", (db, rows)
