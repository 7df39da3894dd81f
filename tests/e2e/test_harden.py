"""SQL hardening through the deploy: the baseline on every database, the community example
loaded and hardened, --dry naming what would run, refusals that change nothing, rollback."""

from __future__ import annotations

import json
import subprocess

import pytest
from conftest import BIN, control_env, run_pyinfra, sql

from pginfra import ROOT
from pginfra.sql_bundles import SQL_ROOT, runner

RUNNER = "/usr/local/lib/pginfra/pginfra-migrate"
SQL_DIR = "/usr/local/share/pginfra/sql"
BUNDLES = [f"{SQL_DIR}/baseline", f"{SQL_DIR}/examples/community"]
TABLES = ["users", "posts", "post_reactions", "user_community_stats"]


def files_of(bundle: str) -> list[str]:
    return [m.name for m in runner().load_bundle(SQL_ROOT / bundle)]


def applied(lab, db: str, bundle: str) -> list[str]:
    out = sql(lab, f"SELECT name FROM pginfra.migrations WHERE bundle = '{bundle}' ORDER BY name",
              db)
    return out.split() if out else []


def migrate(lab, db: str, *args: str):
    return lab.ssh("pgt1", ["cd", "/tmp", "&&", "runuser", "-u", "postgres", "--", RUNNER,
                            "--dbname", db, *args], check=False, timeout=600)


def harden(lab, *args: str):
    return run_pyinfra(lab, *args, deploy="deploys/harden.py")


def digest(lab, db: str) -> str:
    return sql(lab, " || ".join(
        f"(SELECT coalesce(md5(string_agg(t::text, ',' ORDER BY t::text)), '-') FROM {t} t)"
        for t in TABLES).join(["SELECT ", ""]), db)


def test_first_deploy_applied_the_baseline_and_hardened_the_example(lab, first_deploy):
    for db in ("app", "community"):
        assert applied(lab, db, "baseline") == files_of("baseline")
    assert applied(lab, "community", "community") == files_of("examples/community")
    assert applied(lab, "app", "community") == []
    # the example was loaded with generated data, then hardened
    assert int(sql(lab, "SELECT count(*) FROM posts", "community")) == 20 * 2000
    constraints = sql(lab, "SELECT string_agg(conname || ':' || convalidated, ' ' ORDER BY "
                      "conname) FROM pg_constraint WHERE connamespace = 'public'::regnamespace "
                      "AND contype IN ('p', 'f', 'u')", "community").split()
    for name in ("user_community_stats_pkey", "user_community_stats_user_fk", "posts_user_fk",
                 "post_reactions_post_fk", "post_reactions_user_fk", "post_reactions_unique"):
        assert f"{name}:true" in constraints
    assert sql(lab, "SELECT count(*) FROM pg_index WHERE NOT indisvalid", "community") == "0"
    assert sql(lab, "SELECT bool_and(matches) FROM smoke_test_user_summary(7)",
               "community") == "t"
    statuses = sql(lab, "SELECT string_agg(status, ' ') FROM community_system_health()",
                   "community")
    assert "critical" not in statuses
    # the tables stay the application owner's; what the runner made, it made as postgres
    assert sql(lab, "SELECT DISTINCT tableowner FROM pg_tables WHERE schemaname = 'public'",
               "community") == "community_owner"


def test_a_dump_was_taken_before_hardening(lab, first_deploy):
    out = lab.ssh("pgt1", ["stat", "-c", "'%U %a'", "/var/backups/postgresql/pre-migrate"])
    assert out.stdout.split() == ["postgres", "700"]
    dumps = lab.ssh("pgt1", ["ls", "/var/backups/postgresql/pre-migrate"]).stdout.split()
    assert any(d.startswith("community-") and d.endswith("-before-migrate.dump") for d in dumps)
    listing = lab.ssh("pgt1", ["runuser", "-u", "postgres", "--", "pg_restore", "--list",
                               "/var/backups/postgresql/pre-migrate/" + next(
                                   d for d in dumps if d.startswith("community-"))])
    assert "TABLE DATA public post_reactions" in listing.stdout


def test_dry_run_names_the_pending_file_then_the_deploy_applies_it(lab, first_deploy):
    bundle = f"{SQL_DIR}/examples/community"
    last, keep = files_of("examples/community")[-1], files_of("examples/community")[-2]
    rolled = migrate(lab, "community", "rollback", bundle, "--to", keep)
    assert rolled.returncode == 0, rolled.stderr
    assert last not in applied(lab, "community", "community")

    proc = subprocess.run(
        [str(BIN / "pyinfra"), "--dry", "--json", "inventories/rehearsal.py", "deploys/harden.py"],
        cwd=ROOT, env=control_env(lab), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    changing = [op["name"] for op in json.loads(proc.stdout)["plan"] if op["hosts_with_change"]]
    assert changing == [f"SQL hardening | Apply 1 SQL file(s) to community: community/{last}"]
    assert last not in applied(lab, "community", "community")  # --dry changed nothing

    result = harden(lab)
    assert result.returncode == 0, result.stderr[-4000:]
    assert last in applied(lab, "community", "community")
    again = harden(lab)
    assert again.returncode == 0, again.stderr[-4000:]
    assert again.changed == [], "nothing pending: no operation changes anything"


def test_a_changed_applied_file_stops_the_deploy_before_anything(lab, first_deploy):
    name = "020_foreign_keys.sql"
    where = f"bundle = 'community' AND name = '{name}'"
    real = sql(lab, f"SELECT checksum FROM pginfra.migrations WHERE {where}", "community")
    sql(lab, f"UPDATE pginfra.migrations SET checksum = 'edited' WHERE {where}", "community")
    try:
        result = harden(lab)
        output = result.stdout + result.stderr
        assert result.returncode != 0
        assert "applied SQL files have changed since they ran" in output
        assert f"community: community/{name}" in output
        assert "Starting operation" not in output
    finally:
        sql(lab, f"UPDATE pginfra.migrations SET checksum = '{real}' WHERE {where}",
            "community")


@pytest.fixture
def example_copy(lab, first_deploy):
    """A second, smaller community database loaded from the seed, hardened by nobody yet."""
    db = "community_copy"
    sql(lab, f"DROP DATABASE IF EXISTS {db} WITH (FORCE)")
    sql(lab, f"CREATE DATABASE {db} OWNER community_owner")
    seed = f"{SQL_DIR}/examples/community/seed"
    lab.ssh("pgt1", ["runuser", "-u", "postgres", "--", "env",
                     "PGOPTIONS='-c role=community_owner -c pginfra.example_users=200'",
                     "psql", "-X", "-q", "-o", "/dev/null", "-v", "ON_ERROR_STOP=1",
                     "--single-transaction", "-d", db, "-f", f"{seed}/schema.sql",
                     "-f", f"{seed}/generate.sql"])
    yield db
    sql(lab, f"DROP DATABASE IF EXISTS {db} WITH (FORCE)")


def test_orphans_and_duplicate_reactions_are_refused_and_the_data_stays(lab, example_copy):
    db = example_copy
    sql(lab, "INSERT INTO posts (user_id, body) VALUES (999999, 'orphan'); "
        "INSERT INTO post_reactions (post_id, user_id) SELECT post_id, user_id "
        "FROM post_reactions ORDER BY id LIMIT 1", db)
    before = digest(lab, db)
    result = migrate(lab, db, "--dump-dir", f"/tmp/{db}-dumps", "apply", *BUNDLES)
    assert result.returncode == 1
    report = result.stderr
    assert "020_foreign_keys.preflight.sql:5: 1 row(s) violate it; first 1: id=" in report
    assert "user_id=999999" in report
    assert "030_reaction_unique_index.preflight.sql:2: 1 row(s) violate it" in report
    assert "nothing was changed" in report
    assert digest(lab, db) == before
    # refused before anything: no file applied, no constraint added, no dump taken
    assert sql(lab, "SELECT to_regclass('pginfra.migrations') IS NULL OR "
               "NOT EXISTS (SELECT FROM pginfra.migrations)", db) == "t"
    assert sql(lab, "SELECT count(*) FROM pg_constraint WHERE contype = 'f'", db) == "0"
    assert lab.ssh("pgt1", ["test", "-e", f"/tmp/{db}-dumps/"], check=False).returncode != 0


def test_the_example_rolls_back_to_nothing_and_applies_again(lab, example_copy):
    db = example_copy
    first = migrate(lab, db, "apply", *BUNDLES)
    assert first.returncode == 0, first.stderr
    before = digest(lab, db)
    back = migrate(lab, db, "rollback", BUNDLES[1], "--to", "000")
    assert back.returncode == 0, back.stderr
    assert applied(lab, db, "community") == []
    assert sql(lab, "SELECT count(*) FROM pg_constraint WHERE connamespace = "
               "'public'::regnamespace AND (contype IN ('f', 'u') "
               "OR conname = 'user_community_stats_pkey')", db) == "0"
    assert sql(lab, "SELECT count(*) FROM pg_proc WHERE pronamespace = 'public'::regnamespace "
               "AND proname NOT LIKE 'pg_stat_statements%'", db) == "0"
    assert sql(lab, "SELECT to_regclass('public.user_activity_mv') IS NULL", db) == "t"
    assert sql(lab, "SELECT count(*) FROM pg_indexes WHERE schemaname = 'public' "
               "AND indexname LIKE 'idx_%'", db) == "0"
    assert digest(lab, db) == before  # reverting definitions never touched a row
    again = migrate(lab, db, "apply", *BUNDLES)
    assert again.returncode == 0, again.stderr
    assert applied(lab, db, "community") == files_of("examples/community")
    assert migrate(lab, db, "apply", *BUNDLES).stdout.strip().endswith("nothing to apply")


def test_the_example_jobs_are_scheduled_and_run(lab, first_deploy):
    cron = "/etc/cron.d/pginfra-example-community"
    assert lab.ssh("pgt1", ["stat", "-c", "'%U %a'", cron]).stdout.split() == ["root", "644"]
    assert lab.ssh("pgt1", ["systemctl", "is-active", "cron"]).stdout.strip() == "active"
    jobs = [line for line in lab.ssh("pgt1", ["cat", cron]).stdout.splitlines()
            if line and not line.startswith(("#", "SHELL", "PATH"))]
    # the refresh queue is pginfra-maintenance's (/etc/cron.d/pginfra), with its lock and log
    assert len(jobs) == 2 and not any("process_refresh_queue" in job for job in jobs)
    # each job's command, run as cron would run it, succeeds
    for job in jobs:
        command = job.split(" postgres ", 1)[1].split(" 2>&1")[0]
        result = lab.ssh("pgt1", ["cd", "/tmp", "&&", "runuser", "-u", "postgres", "--", "sh",
                                  "-c", repr(command)], check=False)
        assert result.returncode == 0, (command, result.stderr)
