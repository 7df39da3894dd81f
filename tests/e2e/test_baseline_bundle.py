"""sql/baseline on a real PostgreSQL 15 (the lab's host), applied by pginfra_host/migrate.py to a
fresh database: the views and health checks report what is seeded, only pg_monitor may read
them, the refresh queue debounces and loses no request, and a rollback removes it all."""

from __future__ import annotations

import json
import re
import subprocess
import time

import pytest
from conftest import psql_session, send, wait_for

from pginfra import ROOT

BUNDLE = ROOT / "sql/baseline"
DB = "baseline_e2e"
WORK = f"/tmp/{DB}"
RUNNER = f"{WORK}/pginfra-migrate"
MONITOR, PLAIN, APP = "baseline_e2e_monitor", "baseline_e2e_plain", "baseline_e2e_app"
FILES = sorted(p.name for p in BUNDLE.glob("[0-9][0-9][0-9]_*.sql")
               if not p.name.endswith((".preflight.sql", ".revert.sql")))
VIEWS = ["v_slow_queries", "v_table_sizes", "v_cache_hit_ratio", "v_database_summary",
         "v_fk_without_index", "v_unused_indexes", "v_duplicate_indexes", "v_invalid_indexes",
         "v_table_bloat", "v_index_bloat", "v_long_running_sessions", "v_idle_in_transaction",
         "v_blocking_locks", "v_wraparound"]
CHECKS = ["connections", "idle_in_transaction", "long_running_queries", "lock_waits",
          "wraparound", "cache_hit_ratio", "invalid_indexes", "mv_refresh_failed"]
DEFINERS = {"enqueue_mv_refresh", "log_maintenance", "register_mv", "request_refresh",
            "unregister_mv"}
STATUSES = {"ok", "warning", "critical"}
ROWS = {  # a valid row for each of the baseline's tables
    "mv_refresh_registry": "(mv) VALUES ('pg_class')",
    "mv_refresh_late_requests": "(mv) VALUES ('pg_class')",
    "mv_refresh_log": ("(mv, started_at, duration_ms, \"concurrently\", status) "
                       "VALUES ('pg_class', now(), 0, false, 'ok')"),
    "maintenance_log": ("(started_at, action, target, status) "
                        "VALUES (now(), 'vacuum', 'x', 'ok')"),
}


# -- helpers ----------------------------------------------------------------------------------

def psql(lab, query: str, user: str = "postgres", db: str = DB, check: bool = True):
    """``query`` (one statement or several, fed through stdin, each in autocommit) on pgt1,
    as postgres over peer authentication, with ``user`` as the current role for every
    privilege check (no password on a command line, where a process list would show it)."""
    words = ["runuser", "-u", "postgres", "--"]
    if user != "postgres":
        words += ["env", f"PGOPTIONS='-c role={user}'"]
    words += ["psql", "-XAtq", "-v", "ON_ERROR_STOP=1", "-d", db]
    return lab.ssh("pgt1", words, input=query, check=check)


def value(lab, query: str, user: str = "postgres") -> str:
    return psql(lab, query, user).stdout.strip()


def rows(lab, query: str, user: str = "postgres") -> list[list[str]]:
    out = value(lab, query, user)
    return [line.split("|") for line in out.splitlines()] if out else []


def denied(lab, query: str, user: str) -> str:
    """The error of a statement that must fail for lack of privileges."""
    result = psql(lab, query, user, check=False)
    assert result.returncode != 0, f"{user} may run: {query}"
    assert "permission denied" in result.stderr, result.stderr
    return result.stderr


def migrate(lab, *args: str):
    """The runner (pginfra_host/migrate.py: the standard library and psycopg only), uploaded
    and run by the host's python3 (/tmp may be noexec)."""
    return lab.ssh("pgt1", ["cd", "/tmp", "&&", "runuser", "-u", "postgres", "--",
                            "/usr/bin/python3", RUNNER, "--dbname", DB, *args],
                   check=False, timeout=300)


def upload(lab, path: str, text: str) -> None:
    lab.ssh("pgt1", ["sh", "-c", f"'cat > {path}'"], input=text)


def session(lab, name: str) -> subprocess.Popen:
    return psql_session(lab, name, DB)


def pid_where(lab, name: str, condition: str) -> str:
    return value(lab, "SELECT pid FROM pg_stat_activity WHERE application_name = "
                      f"'{name}' AND {condition}")


def cleanup(lab) -> None:
    psql(lab, f"DROP DATABASE IF EXISTS {DB} WITH (FORCE);\n"
              f"DROP ROLE IF EXISTS {MONITOR}, {PLAIN}, {APP};\n", db="postgres")
    lab.ssh("pgt1", ["rm", "-rf", WORK])


@pytest.fixture(scope="module")
def applied(lab, first_deploy):
    """A fresh database, three LOGIN roles (one in pg_monitor), and the result of the first
    apply of the bundle, uploaded with the runner under /tmp/baseline_e2e."""
    cleanup(lab)
    lab.ssh("pgt1", ["mkdir", "-p", f"{WORK}/baseline"])
    upload(lab, RUNNER, (ROOT / "pginfra_host/migrate.py").read_text())
    for path in sorted(BUNDLE.glob("*.sql")):
        upload(lab, f"{WORK}/baseline/{path.name}", path.read_text())
    lab.ssh("pgt1", ["chown", "-R", "postgres", WORK])
    psql(lab, f"CREATE DATABASE {DB};\n"
              f"CREATE ROLE {MONITOR} LOGIN IN ROLE pg_monitor;\n"
              f"CREATE ROLE {PLAIN} LOGIN;\n"
              f"CREATE ROLE {APP} LOGIN;\n"
              f"GRANT CONNECT ON DATABASE {DB} TO {MONITOR}, {PLAIN}, {APP};\n", db="postgres")
    yield migrate(lab, "apply", f"{WORK}/baseline")
    cleanup(lab)


@pytest.fixture(scope="module")
def mvs(lab, applied):
    """events (owned by the application role) and three materialized views over it under the
    queue, refreshed at most hourly: mv_counts (unique index: CONCURRENTLY), mv_total (none:
    plain) and mv_ratio (fails once an event has x = 0). A statement trigger requests all
    three."""
    psql(lab, f"""
        CREATE TABLE public.events (id bigint PRIMARY KEY, kind text NOT NULL,
                                    x int NOT NULL DEFAULT 1);
        ALTER TABLE public.events OWNER TO {APP};
        INSERT INTO public.events SELECT g, 'k' || g % 3, 1 FROM generate_series(1, 30) AS g;
        CREATE MATERIALIZED VIEW public.mv_counts AS
            SELECT kind, count(*) AS n FROM public.events GROUP BY kind;
        CREATE UNIQUE INDEX mv_counts_kind ON public.mv_counts (kind);
        CREATE MATERIALIZED VIEW public.mv_total AS SELECT count(*) AS n FROM public.events;
        CREATE MATERIALIZED VIEW public.mv_ratio AS
            SELECT id, 10 / x AS y FROM public.events;
        CREATE UNIQUE INDEX mv_ratio_id ON public.mv_ratio (id);
        SELECT monitoring.register_mv('public.mv_counts', interval '1 hour');
        SELECT monitoring.register_mv('public.mv_total', interval '1 hour');
        SELECT monitoring.register_mv('public.mv_ratio', interval '1 hour');
        CREATE TRIGGER events_refresh AFTER INSERT OR UPDATE OR DELETE ON public.events
            FOR EACH STATEMENT
            EXECUTE FUNCTION monitoring.enqueue_mv_refresh('mv_counts', 'public.mv_total',
                                                           'public.mv_ratio');
    """)


# -- applying ---------------------------------------------------------------------------------

def test_applies_to_a_fresh_database_and_a_rerun_applies_nothing(lab, applied):
    assert applied.returncode == 0, applied.stderr
    for name in FILES:
        assert f"applied baseline/{name}" in applied.stdout
    again = migrate(lab, "apply", f"{WORK}/baseline")
    assert again.returncode == 0 and "nothing to apply" in again.stdout, again.stderr
    status = json.loads(migrate(lab, "status", "--json", f"{WORK}/baseline").stdout)
    assert status["applied"] == [f"baseline/{n}" for n in FILES]
    assert status["pending"] == [] and status["changed"] == []
    kinds = dict(rows(lab, "SELECT name, kind FROM pginfra.migrations "
                           "WHERE bundle = 'baseline' ORDER BY name"))
    assert kinds.pop("001_schema.sql") == "transactional"
    assert set(kinds.values()) == {"repeatable"}


def test_every_object_belongs_to_monitoring_owner(lab, applied):
    assert rows(lab, """
        SELECT 'schema', nspname FROM pg_namespace
        WHERE nspname = 'monitoring' AND nspowner <> 'monitoring_owner'::regrole
        UNION ALL SELECT 'relation', relname FROM pg_class
        WHERE relnamespace = 'monitoring'::regnamespace
          AND relowner <> 'monitoring_owner'::regrole
        UNION ALL SELECT 'function', proname FROM pg_proc
        WHERE pronamespace = 'monitoring'::regnamespace
          AND proowner <> 'monitoring_owner'::regrole
        UNION ALL SELECT 'type', typname FROM pg_type
        WHERE typnamespace = 'monitoring'::regnamespace
          AND typowner <> 'monitoring_owner'::regrole""") == []
    counts = value(lab, """
        SELECT (SELECT count(*) FROM pg_class WHERE relnamespace = 'monitoring'::regnamespace
                AND relkind = 'v') || ' ' ||
               (SELECT count(*) FROM pg_proc WHERE pronamespace = 'monitoring'::regnamespace)""")
    assert counts == f"{len(VIEWS)} 10"
    assert value(lab, "SELECT rolcanlogin OR rolsuper OR rolcreaterole FROM pg_roles "
                      "WHERE rolname = 'monitoring_owner'") == "f"


def test_security_definer_functions_pin_search_path_and_public_gets_nothing(lab, applied):
    functions = rows(lab, "SELECT proname, prosecdef, coalesce(array_to_string(proconfig, ';'),"
                          " '') FROM pg_proc WHERE pronamespace = 'monitoring'::regnamespace")
    definers = {name: config for name, secdef, config in functions if secdef == "t"}
    assert set(definers) == DEFINERS
    for name, config in definers.items():
        assert "search_path=pg_catalog, pg_temp" in config, name
    assert rows(lab, """
        SELECT proname FROM pg_proc WHERE pronamespace = 'monitoring'::regnamespace
          AND has_function_privilege('public', oid, 'EXECUTE')
        UNION ALL SELECT relname FROM pg_class WHERE relnamespace = 'monitoring'::regnamespace
          AND relkind IN ('r', 'v')
          AND has_table_privilege('public', oid, 'SELECT, INSERT, UPDATE, DELETE, TRUNCATE')
        UNION ALL SELECT 'pg_stat_statements'
        WHERE has_table_privilege('public', 'public.pg_stat_statements', 'SELECT')""") == []


# -- access -----------------------------------------------------------------------------------

def test_pg_monitor_reads_every_view_and_a_plain_role_nothing(lab, applied):
    script = "".join(f"SELECT count(*) FROM monitoring.{view};\n" for view in VIEWS)
    script += ("SELECT count(*) FROM monitoring.health();\n"
               "SELECT count(*) FROM monitoring.vacuum_candidates();\n"
               "SELECT count(*) FROM monitoring.analyze_candidates();\n"
               "SELECT count(*) FROM monitoring.reindex_candidates();\n"
               "SELECT count(*) FROM monitoring.mv_refresh_log;\n")
    assert len(value(lab, script, MONITOR).splitlines()) == len(VIEWS) + 5
    # Statements of other roles, with their text: pg_monitor includes pg_read_all_stats.
    others, hidden = value(lab, "SELECT count(*) FILTER (WHERE role_name <> current_user), "
                                "count(*) FILTER (WHERE query = '<insufficient privilege>') "
                                "FROM monitoring.v_slow_queries", MONITOR).split("|")
    assert int(others) > 0 and hidden == "0"

    psql(lab, f"GRANT USAGE ON SCHEMA monitoring TO {PLAIN}")  # so the objects' own ACLs answer
    try:
        for view in VIEWS:
            assert f"permission denied for view {view}" in denied(
                lab, f"SELECT count(*) FROM monitoring.{view}", PLAIN)
        denied(lab, "SELECT * FROM monitoring.health()", PLAIN)
        denied(lab, "SELECT * FROM public.pg_stat_statements", PLAIN)
        denied(lab, "SELECT monitoring.request_refresh('pg_class')", PLAIN)
        denied(lab, "SELECT monitoring.log_maintenance('vacuum', 'x', 'ok')", PLAIN)
        for table, columns in ROWS.items():
            assert f"permission denied for table {table}" in denied(
                lab, f"INSERT INTO monitoring.{table} {columns}", PLAIN)
        denied(lab, "DELETE FROM monitoring.mv_refresh_registry", PLAIN)
    finally:
        psql(lab, f"REVOKE USAGE ON SCHEMA monitoring FROM {PLAIN}")


# -- what the views and health() report --------------------------------------------------------

def test_health_has_one_row_per_check_and_sees_an_idle_transaction(lab, applied):
    checks = rows(lab, "SELECT check_name, status FROM monitoring.health()", MONITOR)
    assert [name for name, _ in checks] == CHECKS
    assert {status for _, status in checks} <= STATUSES
    idle = session(lab, "baseline_e2e_idle")
    try:
        send(idle, "BEGIN;\nSELECT 1;\n")
        pid = wait_for(lambda: value(
            lab, "SELECT pid FROM monitoring.v_idle_in_transaction WHERE application_name = "
                 "'baseline_e2e_idle' AND state_seconds >= 1.5", MONITOR), "an idle transaction")
        assert pid.isdigit()
        [[status, measured]] = rows(
            lab, "SELECT status, value FROM monitoring.health(idle_in_transaction_warning => 1, "
                 "idle_in_transaction_critical => 3600) "
                 "WHERE check_name = 'idle_in_transaction'", MONITOR)
        assert status in {"warning", "critical"} and float(measured) >= 1.5
    finally:
        idle.communicate("COMMIT;\n", timeout=30)


def test_fk_without_index_gives_the_fix_that_removes_it(lab, applied):
    long_table = "t" * 40 + "_order_lines"
    psql(lab, f"""
        CREATE TABLE public.users (id bigint PRIMARY KEY, email text NOT NULL);
        CREATE TABLE public.posts (id bigint PRIMARY KEY,
                                   user_id bigint NOT NULL REFERENCES public.users (id));
        CREATE SCHEMA "Odd Schema";
        CREATE TABLE "Odd Schema"."Order Items" (
            id bigint PRIMARY KEY, "Customer Id" bigint REFERENCES public.users (id));
        CREATE TABLE public.{long_table} (
            id bigint PRIMARY KEY,
            the_user_who_placed_this_order_line bigint REFERENCES public.users (id));
        -- covered: the index's leading columns are the FK's, in another order
        ALTER TABLE "Odd Schema"."Order Items" ADD UNIQUE (id, "Customer Id");
        CREATE TABLE public.pairs (a bigint, b bigint, FOREIGN KEY (b, a)
                                   REFERENCES "Odd Schema"."Order Items" (id, "Customer Id"));
        CREATE INDEX pairs_a_b ON public.pairs (a, b);
    """)
    fixes = dict(rows(lab, "SELECT constraint_name, fix FROM monitoring.v_fk_without_index",
                      MONITOR))
    statements = list(fixes.values())
    assert fixes.pop("posts_user_id_fkey") == (
        "CREATE INDEX CONCURRENTLY IF NOT EXISTS posts_user_id_idx ON public.posts (user_id);")
    assert fixes.pop("Order Items_Customer Id_fkey") == (
        'CREATE INDEX CONCURRENTLY IF NOT EXISTS "Order Items_Customer Id_idx" '
        'ON "Odd Schema"."Order Items" ("Customer Id");')
    (long_fix,) = fixes.values()  # and pairs is covered
    long_name = re.match(r"CREATE INDEX CONCURRENTLY IF NOT EXISTS (\w+) ON", long_fix).group(1)
    assert len(long_name.encode()) <= 63 and long_name.startswith(long_table[:30])
    for fix in statements:  # CREATE INDEX CONCURRENTLY: each on its own, outside a transaction
        psql(lab, fix)
    assert value(lab, "SELECT count(*) FROM monitoring.v_fk_without_index", MONITOR) == "0"
    assert value(lab, f"""
        SELECT count(*) FROM pg_index WHERE indisvalid AND indexrelid IN (
            'public.posts_user_id_idx'::regclass,
            '"Odd Schema"."Order Items_Customer Id_idx"'::regclass,
            'public.{long_name}'::regclass)""") == "3"


def test_duplicate_indexes_are_reported(lab, applied):
    psql(lab, """
        CREATE TABLE public.dup (id bigint PRIMARY KEY, email text NOT NULL);
        CREATE INDEX dup_email_a ON public.dup (email);
        CREATE INDEX dup_email_b ON public.dup (email);
        CREATE INDEX dup_email_partial ON public.dup (email) WHERE email <> '';
        CREATE UNIQUE INDEX dup_id_again ON public.dup (id);
    """)
    found = rows(lab, "SELECT keep_index, array_to_string(duplicate_indexes, ',') "
                      "FROM monitoring.v_duplicate_indexes WHERE table_name = 'dup' "
                      "ORDER BY keep_index", MONITOR)
    assert found == [["dup_email_a", "dup_email_b"], ["dup_pkey", "dup_id_again"]]


def test_blocking_locks_shows_both_sessions(lab, applied):
    psql(lab, "CREATE TABLE public.locked (id bigint PRIMARY KEY, n int NOT NULL);\n"
              "INSERT INTO public.locked VALUES (1, 0);\n")
    holder = session(lab, "baseline_e2e_holder")
    waiter = session(lab, "baseline_e2e_waiter")
    try:
        send(holder, "BEGIN;\nUPDATE public.locked SET n = n + 1 WHERE id = 1;\n")
        holder_pid = wait_for(lambda: pid_where(lab, "baseline_e2e_holder",
                                                "state = 'idle in transaction'"), "the holder")
        send(waiter, "UPDATE public.locked SET n = n + 10 WHERE id = 1;\n")
        waiter_pid = wait_for(lambda: pid_where(lab, "baseline_e2e_waiter",
                                                "wait_event_type = 'Lock'"), "the waiter")
        found = wait_for(lambda: rows(
            lab, "SELECT blocked_pid, blocking_pid, blocked_query, blocking_query, wait_seconds "
                 f"FROM monitoring.v_blocking_locks WHERE blocked_pid = {waiter_pid} "
                 "AND wait_seconds >= 1", MONITOR), "a wait of a second")
        assert [r[:2] for r in found] == [[waiter_pid, holder_pid]]
        assert "SET n = n + 10" in found[0][2] and "SET n = n + 1 " in found[0][3]
        (status,) = value(lab, "SELECT status FROM monitoring.health(lock_wait_warning => 0.5) "
                               "WHERE check_name = 'lock_waits'", MONITOR).split()
        assert status in {"warning", "critical"}
    finally:
        holder.communicate("COMMIT;\n", timeout=30)
        waiter.communicate("", timeout=30)
    assert value(lab, "SELECT n FROM public.locked") == "11"


def test_maintenance_candidates_and_the_log(lab, applied):
    psql(lab, """
        CREATE TABLE public.churn (id bigint PRIMARY KEY, body text)
            WITH (autovacuum_enabled = false);
        INSERT INTO public.churn SELECT g, 'row ' || g FROM generate_series(1, 4000) AS g;
        DELETE FROM public.churn WHERE id % 2 = 0;
    """)
    # The statistics reach pg_stat_user_tables when the writing session ends: shortly.
    found = wait_for(lambda: rows(
        lab, "SELECT n_dead_tup, statement FROM monitoring.vacuum_candidates() "
             "WHERE table_name = 'churn'", MONITOR), "dead tuples in the statistics")
    assert found == [["2000", "VACUUM (ANALYZE) public.churn"]]
    assert rows(lab, "SELECT statement FROM monitoring.analyze_candidates() "
                     "WHERE table_name = 'churn'", MONITOR) == [["ANALYZE public.churn"]]
    psql(lab, "VACUUM (ANALYZE) public.churn;")
    log_id = value(lab, "SELECT monitoring.log_maintenance('vacuum', 'public.churn', 'ok', "
                        "'2000 dead tuples', now() - interval '1 second')")
    assert rows(lab, "SELECT action, target, status, detail, finished_at > started_at "
                     f"FROM monitoring.maintenance_log WHERE id = {log_id}", MONITOR) == [
        ["vacuum", "public.churn", "ok", "2000 dead tuples", "t"]]
    bad = psql(lab, "SELECT monitoring.log_maintenance('vacuum', 'x', 'done')", check=False)
    assert bad.returncode != 0 and "maintenance_log_status_check" in bad.stderr


# -- the refresh queue ------------------------------------------------------------------------

def test_refresh_queue_refreshes_once_then_debounces_and_logs(lab, mvs):
    # The application role writes; its trigger enqueues without any grant on monitoring.
    psql(lab, "INSERT INTO public.events VALUES (31, 'k9', 1);\n"
              "UPDATE public.events SET x = 0 WHERE id = 1;\n", APP)
    denied(lab, "UPDATE monitoring.mv_refresh_registry SET requested_at = NULL", APP)
    assert rows(lab, "SELECT mv::text, requested_at IS NOT NULL "
                     "FROM monitoring.mv_refresh_registry ORDER BY 1") == [
        ["mv_counts", "t"], ["mv_ratio", "t"], ["mv_total", "t"]]

    first = rows(lab, "SELECT q.mv::text, q.status, q.duration_ms >= 0, q.concurrently "
                      "FROM monitoring.process_refresh_queue() AS q ORDER BY 1")
    assert first == [["mv_counts", "ok", "t", "t"],    # unique index: CONCURRENTLY
                     ["mv_ratio", "failed", "t", "t"],  # division by zero; the others go on
                     ["mv_total", "ok", "t", "f"]]      # no unique index: plain
    assert value(lab, "SELECT n FROM public.mv_counts WHERE kind = 'k9'") == "1"
    assert value(lab, "SELECT n FROM public.mv_total") == "31"
    assert rows(lab, "SELECT mv::text, requested_at IS NOT NULL, last_status, "
                     "coalesce(last_error, '') FROM monitoring.mv_refresh_registry "
                     "ORDER BY 1") == [["mv_counts", "f", "ok", ""],
                                       ["mv_ratio", "t", "failed", "division by zero"],
                                       ["mv_total", "f", "ok", ""]]
    assert rows(lab, "SELECT l.mv::text, l.status, l.duration_ms >= 0, l.concurrently, "
                     "coalesce(l.error, '') FROM monitoring.mv_refresh_log AS l ORDER BY 1",
                MONITOR) == [["mv_counts", "ok", "t", "t", ""],
                             ["mv_ratio", "failed", "t", "t", "division by zero"],
                             ["mv_total", "ok", "t", "f", ""]]
    [[status, measured]] = rows(lab, "SELECT status, value FROM monitoring.health() "
                                    "WHERE check_name = 'mv_refresh_failed'", MONITOR)
    assert (status, measured) == ("warning", "1")

    # Within the hour nothing runs again, even with new requests; they wait their turn.
    assert value(lab, "SELECT count(*) FROM monitoring.process_refresh_queue()") == "0"
    psql(lab, "INSERT INTO public.events VALUES (32, 'k9', 1);\n", APP)
    assert value(lab, "SELECT count(*) FROM monitoring.process_refresh_queue()") == "0"
    assert value(lab, "SELECT count(*) FROM monitoring.mv_refresh_log") == "3"
    assert value(lab, "SELECT count(*) FROM monitoring.mv_refresh_registry "
                      "WHERE requested_at IS NOT NULL") == "3"
    assert value(lab, "SELECT n FROM public.mv_counts WHERE kind = 'k9'") == "1"

    # force skips the interval; with the bad row fixed every view refreshes.
    psql(lab, "UPDATE public.events SET x = 1 WHERE id = 1;\n", APP)
    assert rows(lab, "SELECT q.mv::text, q.status FROM monitoring.process_refresh_queue(true) "
                     "AS q ORDER BY 1") == [["mv_counts", "ok"], ["mv_ratio", "ok"],
                                            ["mv_total", "ok"]]
    assert value(lab, "SELECT n FROM public.mv_counts WHERE kind = 'k9'") == "2"


def test_a_refresh_waits_for_the_transactions_that_requested_it(lab, mvs):
    psql(lab, "SELECT monitoring.request_refresh('public.mv_counts');")  # already requested
    writer = session(lab, "baseline_e2e_writer")
    processor = session(lab, "baseline_e2e_processor")
    try:
        # The writer's request finds one pending and leaves it; it has not committed yet.
        send(writer, "BEGIN;\nINSERT INTO public.events VALUES (40, 'k40', 1);\n")
        wait_for(lambda: pid_where(lab, "baseline_e2e_writer", "state = 'idle in transaction'"),
                 "the writer")
        send(processor, "SELECT count(*) FROM monitoring.process_refresh_queue(true);\n")
        wait_for(lambda: pid_where(lab, "baseline_e2e_processor",
                                   "wait_event_type = 'Lock' AND wait_event = 'advisory'"),
                 "the refresh to wait for the writer")
        writer.communicate("COMMIT;\n", timeout=30)
        processor.communicate("", timeout=120)
    finally:
        for proc in (writer, processor):
            if proc.poll() is None:
                proc.kill()
    # The refresh started after the writer committed: its row is in.
    assert value(lab, "SELECT n FROM public.mv_counts WHERE kind = 'k40'") == "1"


def test_a_request_made_during_a_refresh_is_not_lost(lab, mvs):
    psql(lab, """
        CREATE MATERIALIZED VIEW public.mv_slow AS
            SELECT (SELECT count(*) FROM public.events) AS n FROM pg_sleep(3) WITH NO DATA;
        SELECT monitoring.register_mv('public.mv_slow', interval '1 hour');
        CREATE TRIGGER events_refresh_slow AFTER INSERT OR UPDATE OR DELETE ON public.events
            FOR EACH STATEMENT EXECUTE FUNCTION monitoring.enqueue_mv_refresh('mv_slow');
        SELECT monitoring.request_refresh('public.mv_slow');
    """)
    processor = session(lab, "baseline_e2e_processor")
    try:
        send(processor, "SELECT count(*) FROM monitoring.process_refresh_queue(true);\n")
        wait_for(lambda: pid_where(lab, "baseline_e2e_processor", "wait_event = 'PgSleep'"),
                 "the slow refresh")
        started = time.monotonic()
        psql(lab, "INSERT INTO public.events VALUES (50, 'k50', 1);\n", APP)
        assert time.monotonic() - started < 2.5, "the writer waited for the refresh"
        processor.communicate("", timeout=120)
    finally:
        if processor.poll() is None:
            processor.kill()
    # That refresh may have missed the row: the request waits for the next run.
    assert value(lab, "SELECT count(*) FROM monitoring.mv_refresh_late_requests "
                      "WHERE mv = 'public.mv_slow'::regclass") == "1"
    assert rows(lab, "SELECT q.mv::text, q.status FROM monitoring.process_refresh_queue(true) "
                     "AS q WHERE q.mv = 'public.mv_slow'::regclass") == [["mv_slow", "ok"]]
    assert value(lab, "SELECT n FROM public.mv_slow") == value(
        lab, "SELECT count(*) FROM public.events")
    assert value(lab, "SELECT count(*) FROM monitoring.mv_refresh_late_requests") == "0"


# -- rollback (last: it removes what the tests above use) -------------------------------------

def test_rollback_to_before_001_removes_the_schema(lab, applied):
    # The application's triggers use monitoring.enqueue_mv_refresh(): the bundle's revert
    # refuses to drop it from under them, so the application goes first.
    psql(lab, "DROP TABLE IF EXISTS public.events CASCADE;")
    result = migrate(lab, "rollback", f"{WORK}/baseline", "--to", "000")
    assert result.returncode == 0, result.stderr
    positions = [result.stdout.index(f"reverted baseline/{name}") for name in reversed(FILES)]
    assert positions == sorted(positions)
    assert value(lab, "SELECT count(*) FROM pg_namespace WHERE nspname = 'monitoring'") == "0"
    assert value(lab, "SELECT count(*) FROM pginfra.migrations WHERE bundle = 'baseline'") == "0"
    # The role stays: other databases' monitoring schemas belong to it.
    assert value(lab, "SELECT count(*) FROM pg_roles WHERE rolname = 'monitoring_owner'") == "1"
    again = migrate(lab, "apply", f"{WORK}/baseline")
    assert again.returncode == 0, again.stderr
    assert again.stdout.count("applied baseline/") == len(FILES)
