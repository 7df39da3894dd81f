"""pginfra-migrate (pginfra_host/migrate.py) on a real PostgreSQL 15 (the lab's host): tracked,
locked, safe."""

import json
import shlex
import subprocess
import time

import pytest
from conftest import sql

from pginfra import ROOT
from pginfra.programs import entry_point

RUNNER = "/usr/local/lib/pginfra/pginfra-migrate"
USERS = """CREATE TABLE users (id bigint PRIMARY KEY, email text NOT NULL);
CREATE TABLE posts (id bigint PRIMARY KEY, user_id bigint NOT NULL, body text);
INSERT INTO users SELECT g, 'u' || g FROM generate_series(1, 50) g;
INSERT INTO posts SELECT g, 1 + g % 50, 'p' FROM generate_series(1, 500) g;
"""
FK = "ALTER TABLE posts ADD CONSTRAINT posts_user_fk FOREIGN KEY (user_id) REFERENCES users (id) " \
     "NOT VALID;\n"
ORPHANS = "SELECT p.id, p.user_id FROM posts p LEFT JOIN users u ON u.id = p.user_id " \
          "WHERE u.id IS NULL;\n"
VALIDATE = """-- pginfra: no-transaction
ALTER TABLE posts VALIDATE CONSTRAINT posts_user_fk;
CREATE INDEX CONCURRENTLY IF NOT EXISTS posts_user_id_idx ON posts (user_id);
"""


@pytest.fixture(scope="module")
def runner(lab, first_deploy):
    """The runner the deploy installed: its entry point, and the package it runs, are this
    checkout's (step 3 ships them)."""
    entry = lab.ssh("pgt1", ["cat", RUNNER]).stdout
    assert entry == entry_point("pginfra-migrate")
    shipped = lab.ssh("pgt1", ["python3", "-c", shlex.quote(
        "import pginfra_host.migrate as m; print(open(m.__file__).read(), end='')")]).stdout
    assert shipped == (ROOT / "pginfra_host/migrate.py").read_text()
    return RUNNER


@pytest.fixture
def db(lab, runner, request):
    name = "mig_" + request.node.name.removeprefix("test_")[:40]
    sql(lab, f"DROP DATABASE IF EXISTS {name}")
    sql(lab, f"CREATE DATABASE {name}")
    lab.ssh("pgt1", ["rm", "-rf", f"/tmp/{name}"])
    yield name
    lab.ssh("pgt1", ["rm", "-rf", f"/tmp/{name}"])
    sql(lab, f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def put(lab, db, path, text):
    full = f"/tmp/{db}/{path}"
    lab.ssh("pgt1", ["sh", "-c", f"'mkdir -p $(dirname {full}) && cat > {full} && "
                     f"chown -R postgres /tmp/{db}'"], input=text)


def migrate(lab, db, *args):
    cmd = ["cd", "/tmp", "&&", "runuser", "-u", "postgres", "--", RUNNER, "--dbname", db, *args]
    return lab.ssh("pgt1", cmd, check=False, timeout=300)


def hold(lab, db, query):
    """Another session on pgt1 running ``query`` (holding a lock) while the test goes on."""
    return subprocess.Popen(
        ["ssh", "-F", str(lab.ssh_config), "pgt1", "--", "runuser", "-u", "postgres", "--",
         "psql", "-XAtq", "-d", db, "-c", repr(query)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def digest(lab, db, table):
    return sql(lab, f"SELECT md5(string_agg(t::text, ',' ORDER BY t::text)) FROM {table} t", db)


def test_fresh_apply_then_nothing_and_history(lab, db):
    put(lab, db, "app/010_users.sql", USERS)
    put(lab, db, "app/020_fk.sql", FK)
    put(lab, db, "app/030_validate.sql", VALIDATE)
    put(lab, db, "app/040_view.sql", "-- pginfra: repeatable\nCREATE OR REPLACE VIEW "
        "post_counts AS SELECT user_id, count(*) AS n FROM posts GROUP BY user_id;\n")
    first = migrate(lab, db, "--dump-dir", f"/tmp/{db}/dumps", "apply", f"/tmp/{db}/app")
    assert first.returncode == 0, first.stderr
    assert first.stdout.count("applied app/") == 4
    assert "dumped" in first.stdout
    assert sql(lab, "SELECT convalidated FROM pg_constraint WHERE conname = 'posts_user_fk'",
               db) == "t"
    again = migrate(lab, db, "apply", f"/tmp/{db}/app")
    assert again.returncode == 0 and "nothing to apply" in again.stdout
    status = json.loads(migrate(lab, db, "status", "--json", f"/tmp/{db}/app").stdout)
    assert status["pending"] == [] and status["changed"] == [] and len(status["applied"]) == 4
    rows = sql(lab, "SELECT name, kind, length(checksum), applied_by FROM pginfra.migrations "
                    "ORDER BY name", db).splitlines()
    assert rows[2] == "030_validate.sql|no-transaction|64|postgres"
    assert rows[3].startswith("040_view.sql|repeatable")
    # A repeatable file runs again when it changes.
    put(lab, db, "app/040_view.sql", "-- pginfra: repeatable\nCREATE OR REPLACE VIEW "
        "post_counts AS SELECT user_id, count(*) AS n, max(id) AS last FROM posts "
        "GROUP BY user_id;\n")
    rerun = migrate(lab, db, "apply", f"/tmp/{db}/app")
    assert rerun.returncode == 0 and "applied app/040_view.sql" in rerun.stdout


def test_changed_applied_file_is_refused(lab, db):
    put(lab, db, "app/010_users.sql", USERS)
    assert migrate(lab, db, "apply", f"/tmp/{db}/app").returncode == 0
    put(lab, db, "app/010_users.sql", USERS + "-- edited\n")
    put(lab, db, "app/020_fk.sql", FK)
    result = migrate(lab, db, "apply", f"/tmp/{db}/app")
    assert result.returncode == 1
    assert "applied files have changed" in result.stderr and "app/010_users.sql" in result.stderr
    assert sql(lab, "SELECT count(*) FROM pg_constraint WHERE conname = 'posts_user_fk'",
               db) == "0"


def test_orphans_make_the_runner_refuse_and_data_stays(lab, db):
    put(lab, db, "app/010_users.sql", USERS + "DELETE FROM users WHERE id IN (3, 4);\n")
    put(lab, db, "app/020_fk.sql", FK)
    put(lab, db, "app/020_fk.preflight.sql", ORPHANS)
    result = migrate(lab, db, "apply", f"/tmp/{db}/app")
    assert result.returncode == 1
    before = digest(lab, db, "posts")
    assert "020_fk.preflight.sql:1: 20 row(s) violate it" in result.stderr
    assert "first " in result.stderr
    again = migrate(lab, db, "apply", f"/tmp/{db}/app")
    assert again.returncode == 1
    assert digest(lab, db, "posts") == before
    assert sql(lab, "SELECT count(*) FROM posts", db) == "500"
    assert sql(lab, "SELECT count(*) FROM pg_constraint WHERE conname = 'posts_user_fk'",
               db) == "0"


def test_failed_concurrent_index_is_repaired_next_run(lab, db):
    put(lab, db, "app/010_users.sql", USERS + "INSERT INTO users VALUES (51, 'u1');\n")
    put(lab, db, "app/020_unique.sql", "-- pginfra: no-transaction\nCREATE UNIQUE INDEX "
        "CONCURRENTLY IF NOT EXISTS users_email_key ON users (email);\n")
    failed = migrate(lab, db, "apply", f"/tmp/{db}/app")
    assert failed.returncode == 1 and "could not create unique index" in failed.stderr
    assert sql(lab, "SELECT indisvalid FROM pg_index WHERE indexrelid = "
                    "'users_email_key'::regclass", db) == "f"
    sql(lab, "DELETE FROM users WHERE id = 51", db)  # the operator fixes the data
    fixed = migrate(lab, db, "apply", f"/tmp/{db}/app")
    assert fixed.returncode == 0, fixed.stderr
    assert "is INVALID" in fixed.stdout
    assert sql(lab, "SELECT indisvalid FROM pg_index WHERE indexrelid = "
                    "'users_email_key'::regclass", db) == "t"


def test_two_runners_one_waits_or_exits_cleanly(lab, db):
    put(lab, db, "app/010_users.sql", USERS)
    holder = hold(lab, db, "SELECT pg_advisory_lock(hashtext('pginfra-migrate')), pg_sleep(4)")
    try:
        deadline = time.monotonic() + 10
        while sql(lab, "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'", db) == "0":
            assert time.monotonic() < deadline
            time.sleep(0.2)
        busy = migrate(lab, db, "apply", f"/tmp/{db}/app")
        assert busy.returncode == 75 and "another runner" in busy.stderr
        waited = migrate(lab, db, "--wait", "30", "apply", f"/tmp/{db}/app")
        assert waited.returncode == 0 and "applied app/010_users.sql" in waited.stdout
    finally:
        holder.wait(timeout=30)


def test_lock_timeout_is_retried_with_backoff(lab, db):
    put(lab, db, "app/010_users.sql", USERS)
    assert migrate(lab, db, "apply", f"/tmp/{db}/app").returncode == 0
    put(lab, db, "app/020_column.sql", "ALTER TABLE posts ADD COLUMN flagged boolean;\n")
    holder = hold(lab, db,
                  "BEGIN; LOCK TABLE posts IN ACCESS EXCLUSIVE MODE; SELECT pg_sleep(2); COMMIT")
    try:
        time.sleep(0.8)
        result = migrate(lab, db, "--lock-timeout", "300ms", "apply", f"/tmp/{db}/app")
        assert result.returncode == 0, result.stderr
        assert "lock_timeout, retry 1 of 5" in result.stdout
    finally:
        holder.wait(timeout=30)
    assert sql(lab, "SELECT count(*) FROM pg_attribute WHERE attrelid = 'posts'::regclass "
                    "AND attname = 'flagged'", db) == "1"


def test_rollback_to_a_named_point(lab, db):
    put(lab, db, "app/010_users.sql", USERS)
    put(lab, db, "app/020_fk.sql", FK)
    put(lab, db, "app/020_fk.revert.sql", "ALTER TABLE posts DROP CONSTRAINT posts_user_fk;\n")
    put(lab, db, "app/030_validate.sql", VALIDATE)
    put(lab, db, "app/030_validate.revert.sql",
        "-- pginfra: no-transaction\nDROP INDEX CONCURRENTLY IF EXISTS posts_user_id_idx;\n")
    assert migrate(lab, db, "apply", f"/tmp/{db}/app").returncode == 0
    result = migrate(lab, db, "rollback", f"/tmp/{db}/app", "--to", "010_users.sql")
    assert result.returncode == 0, result.stderr
    assert result.stdout.index("reverted app/030") < result.stdout.index("reverted app/020")
    assert sql(lab, "SELECT count(*) FROM pg_constraint WHERE conname = 'posts_user_fk'",
               db) == "0"
    assert sql(lab, "SELECT to_regclass('posts_user_id_idx') IS NULL", db) == "t"
    assert sql(lab, "SELECT string_agg(name, ',') FROM pginfra.migrations", db) == \
        "010_users.sql"
    no_revert = migrate(lab, db, "rollback", f"/tmp/{db}/app", "--to", "000")
    assert no_revert.returncode == 1 and "no revert file for: 010_users.sql" in no_revert.stderr


def test_syntax_error_names_file_and_line_and_changes_nothing(lab, db):
    put(lab, db, "app/010_broken.sql", "CREATE TABLE first_half (id int);\n\n"
        "CREAT TABLE second_half (id int);\n")
    result = migrate(lab, db, "apply", f"/tmp/{db}/app")
    assert result.returncode == 1
    assert "app/010_broken.sql:3: syntax error at or near \"CREAT\"" in result.stderr
    assert "rolled back" in result.stderr
    assert sql(lab, "SELECT to_regclass('first_half') IS NULL", db) == "t"
    assert sql(lab, "SELECT count(*) FROM pginfra.migrations", db) == "0"
