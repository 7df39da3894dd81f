"""files/pginfra-maintenance for real: a throwaway PostgreSQL 15 cluster with pg_stat_statements
preloaded, the baseline SQL bundle applied to two databases (app, community) by
files/pginfra-migrate, and a third database (plain) without it. Dead tuples, bloated indexes,
held locks, requested materialized-view refreshes and held step locks are all real; the program
runs as postgres through runuser, as from cron (once as root, which it re-executes as postgres).

The programs run from throwaway_pg's world-readable copy of files/ with Debian's
/usr/bin/python3 and its modules, as on a host (PGINFRA_TEST_PYTHON overrides the interpreter).
"""

import contextlib
import fcntl
import json
import os
import re
import shutil
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import pytest
from throwaway_pg import (
    BIN,
    ENV,
    HOST_PYTHON,
    PGBIN,
    SQL,
    Cluster,
    drop_cluster,
    needs_postgres,
    postgres_missing,
)
from throwaway_pg import new_cluster as _new_cluster

from pginfra.programs import host_program

PROGRAM = BIN / "pginfra-maintenance"

maintenance = host_program("pginfra-maintenance")


# ---------------------------------------------------------------------------------------------
# usage and configuration (no server needed)

def good_raw(**overrides) -> dict:
    raw = {"host": "pgt1", "version": 15, "port": 5432, "socket_dir": "/var/run/postgresql",
           "data_directory": "/var/lib/postgresql/15/main",
           "state_dir": "/var/lib/pginfra/maintenance", "log_dir": "/var/log/pginfra",
           "databases": ["app", "community"],
           "vacuum": {"min_dead_ratio": 0.2, "min_dead_tuples": 1000},
           "analyze": {"min_mod_ratio": 0.1, "min_mod_tuples": 1000},
           "reindex": {"min_bloat_ratio": 0.3, "min_bloat_bytes": 10485760},
           "lock_timeout": "5s", "statement_timeout": "2h"}
    raw.update(overrides)
    return raw


def test_the_documented_configuration_is_valid():
    cfg = maintenance.validate_config(good_raw())
    assert cfg.databases == ["app", "community"] and cfg.statement_timeout_ms == 7_200_000
    assert cfg.vacuum == maintenance.Vacuum(min_dead_ratio=0.2, min_dead_tuples=1000)
    raw = good_raw()
    del raw["socket_dir"]
    assert maintenance.validate_config(raw).socket_dir == "/var/run/postgresql"
    assert maintenance.validate_config(good_raw(statement_timeout="0")).statement_timeout_ms == 0
    assert maintenance.validate_config(good_raw(
        analyze={"min_mod_ratio": 2, "min_mod_tuples": 0})).analyze.min_mod_ratio == 2.0
    for text, ms in (("5s", 5000), ("500ms", 500), ("1min", 60000), ("2h", 7_200_000),
                     ("1.5 min", 90000), ("250", 250), ("1d", 86_400_000)):
        assert maintenance.durations.milliseconds(text) == ms
        assert maintenance.validate_config(good_raw(lock_timeout=text)).lock_timeout == text
    assert maintenance.ordered_steps(["refresh", "vacuum", "vacuum"]) == ["vacuum", "refresh"]
    assert maintenance.ordered_steps(["reindex", "all"]) == list(maintenance.STEPS)


def _without(key):
    raw = good_raw()
    del raw[key]
    return raw


@pytest.mark.parametrize("raw, key", [
    (_without("reindex"), "'reindex' is missing"),
    (good_raw(vacum={}), "'vacum'"),
    (good_raw(vacuum={"min_dead_ratio": 0.2}), "'vacuum.min_dead_tuples' is missing"),
    (good_raw(vacuum={"min_dead_ratio": 0.2, "min_dead_tuples": 1, "x": 1}), "vacuum.x"),
    (good_raw(vacuum={"min_dead_ratio": 1.5, "min_dead_tuples": 1000}),
     "'vacuum.min_dead_ratio'"),
    (good_raw(analyze={"min_mod_ratio": True, "min_mod_tuples": 1000}),
     "'analyze.min_mod_ratio'"),
    (good_raw(analyze={"min_mod_ratio": 101, "min_mod_tuples": 1000}),
     "'analyze.min_mod_ratio': must be a number from 0 to 100"),
    (good_raw(reindex={"min_bloat_ratio": 0.3, "min_bloat_bytes": -1}),
     "'reindex.min_bloat_bytes'"),
    (good_raw(reindex={"min_bloat_ratio": 0.3, "min_bloat_bytes": "10MB"}),
     "'reindex.min_bloat_bytes'"),
    (good_raw(analyze=[]), "'analyze'"),
    (good_raw(lock_timeout="5 parsecs"), "'lock_timeout'"),
    (good_raw(lock_timeout="0"), "'lock_timeout'"),
    (good_raw(lock_timeout="0.2ms"), "'lock_timeout'"),
    (good_raw(statement_timeout=7200), "'statement_timeout'"),
    (good_raw(statement_timeout="30days"), "'statement_timeout'"),
    (good_raw(databases=["app", "app"]), "'databases'"),
    (good_raw(databases=["app", ""]), "'databases[1]'"),
    (good_raw(port=0), "'port'"),
    (good_raw(state_dir="relative/dir"), "'state_dir'"),
    (good_raw(data_directory=None), "'data_directory'"),
    ([], "JSON object"),
], ids=lambda v: v if isinstance(v, str) else None)
def test_a_bad_configuration_names_the_key(raw, key):
    with pytest.raises(maintenance.runner.ConfigError, match=re.escape(key)):
        maintenance.validate_config(raw)


def _readable_dir() -> Path:
    """A directory postgres can read (the program re-executes itself as postgres)."""
    path = Path(tempfile.mkdtemp(prefix="pginfra-maintenance-cfg-"))
    path.chmod(0o755)
    return path


def test_help_lists_the_steps_and_exit_codes_and_bad_usage_exits_2():
    proc = subprocess.run([HOST_PYTHON, str(PROGRAM), "--help"], capture_output=True, text=True,
                          env=ENV)
    assert proc.returncode == 0, proc.stderr
    for word in ("vacuum", "analyze", "reindex", "refresh", "all", "--dry-run", "--database",
                 "--config", "Exit codes: 0", "1 an action failed", "2 bad usage",
                 "75 another run holds a step's lock"):
        assert word in proc.stdout, word
    for words in ([], ["vaccum"], ["--nope", "all"]):
        proc = subprocess.run([HOST_PYTHON, str(PROGRAM), *words], capture_output=True, text=True,
                              env=ENV)
        assert proc.returncode == 2, (words, proc.stderr)
    directory = _readable_dir()
    try:
        path = directory / "maintenance.json"
        raw = good_raw(vacuum={"min_dead_ratio": 2, "min_dead_tuples": 1000})
        path.write_text(json.dumps(raw))
        path.chmod(0o644)
        proc = subprocess.run([HOST_PYTHON, str(PROGRAM), "--config", str(path), "all"],
                              capture_output=True, text=True, env=ENV)
        assert proc.returncode == 2
        assert "key 'vacuum.min_dead_ratio': must be a number from 0 to 1" in proc.stderr
        assert proc.stdout == ""
        proc = subprocess.run([HOST_PYTHON, str(PROGRAM), "--config", str(directory / "none.json"),
                               "vacuum"], capture_output=True, text=True, env=ENV)
        assert proc.returncode == 2 and "none.json: no such file" in proc.stderr
    finally:
        shutil.rmtree(directory, ignore_errors=True)


# ---------------------------------------------------------------------------------------------
# The throwaway cluster

class MaintenanceCluster(Cluster):
    """pg_stat_statements preloaded (the baseline's preflight wants it)."""

    def init(self):
        super().init()
        with open(self.data / "postgresql.conf", "a") as conf:
            conf.write("shared_preload_libraries = 'pg_stat_statements'\n")
        subprocess.run([*self.pg_ctl, "-l", str(self.pg_log), "-m", "fast", "-w", "-t", "60",
                        "restart"], check=True, capture_output=True, cwd="/")
        return self

    def migrate(self, db: str) -> None:
        proc = subprocess.run(
            ["runuser", "-u", "postgres", "--", HOST_PYTHON, str(BIN / "pginfra-migrate"),
             "--dbname", db, "--host", str(self.root), "--port", str(self.port), "apply",
             str(SQL / "baseline")], capture_output=True, text=True, env=ENV, cwd="/")
        assert proc.returncode == 0, proc.stdout + proc.stderr

    def config(self, name: str, **overrides) -> Path:
        work = self.root / name
        work.mkdir()
        shutil.chown(work, self.uid, self.gid)
        raw = good_raw(port=self.port, socket_dir=str(self.root),
                       data_directory=str(self.data), state_dir=str(work / "state"),
                       log_dir=str(work / "log"),
                       reindex={"min_bloat_ratio": 0.3, "min_bloat_bytes": 100_000})
        raw.update(overrides)
        path = work / "maintenance.json"
        path.write_text(json.dumps(raw, indent=1))
        return path

    def sql(self, query: str, db: str = "app") -> str:
        return super().sql(query, db)

    value = sql


@pytest.fixture(scope="module")
def pg():
    reason = postgres_missing()
    if reason:
        pytest.skip(reason)
    cluster = _new_cluster(MaintenanceCluster, prefix="pginfra-maintenance-test-")
    try:
        for db in ("app", "community", "plain"):
            cluster.sql(f"CREATE DATABASE {db}", "postgres")
        cluster.migrate("app")
        cluster.migrate("community")
        yield cluster
    finally:
        cluster.stop()
        shutil.rmtree(cluster.root, ignore_errors=True)


def parse(stdout: str) -> list[dict]:
    lines = []
    for line in stdout.splitlines():
        with contextlib.suppress(ValueError):
            record = json.loads(line)
            if isinstance(record, dict) and "stage" in record:
                lines.append(record)
    return lines


def run(config: Path, *args, root: bool = False, timeout: float = 120):
    cmd = [HOST_PYTHON, str(PROGRAM), "--config", str(config), *map(str, args)]
    if not root:
        cmd = ["runuser", "-u", "postgres", "--", *cmd]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=ENV, timeout=timeout,
                          cwd="/")
    proc.lines = parse(proc.stdout)
    return proc


def about(proc, target: str, stage: str | None = None) -> list[dict]:
    return [line for line in proc.lines if isinstance(line["detail"], dict)
            and line["detail"].get("target") == target
            and (stage is None or line["stage"] == stage)]


def end(proc) -> dict:
    assert proc.lines[-1]["stage"] == "end", proc.stdout + proc.stderr
    return proc.lines[-1]


def wait_for(check, what: str, timeout: float = 30):
    deadline = time.monotonic() + timeout
    while True:
        found = check()
        if found:
            return found
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def dead_tuples(pg, table: str, db: str = "app") -> int:
    return int(pg.value("SELECT n_dead_tup FROM pg_stat_user_tables "
                        f"WHERE relname = '{table}'", db) or -1)


def churn(pg, table: str, db: str = "app", rows: int = 5000, keep: int = 1000) -> int:
    """A table (autovacuum off) with ``rows - keep`` dead tuples, seen by the statistics."""
    pg.sql(f"CREATE TABLE {table} (id int PRIMARY KEY, body text) "
           "WITH (autovacuum_enabled = false); "
           f"INSERT INTO {table} SELECT g, 'row ' || g FROM generate_series(1, {rows}) g", db)
    pg.sql(f"DELETE FROM {table} WHERE id > {keep}", db)
    dead = rows - keep
    wait_for(lambda: dead_tuples(pg, table, db) == dead, f"{dead} dead tuples in {table}")
    return dead


def bloated(pg, table: str, db: str = "app", rows: int = 100_000) -> None:
    """A btree index of ``rows`` keys with 90 % of them deleted, spread out: pages stay."""
    pg.sql(f"CREATE TABLE {table} (id int PRIMARY KEY, v int) "
           "WITH (autovacuum_enabled = false); "
           f"INSERT INTO {table} SELECT g, g FROM generate_series(1, {rows}) g", db)
    pg.sql(f"DELETE FROM {table} WHERE id % 10 <> 0", db)
    pg.sql(f"VACUUM (ANALYZE) {table}", db)


def invalid_indexes(pg, table: str, db: str = "app") -> list[str]:
    out = pg.value("SELECT c.relname FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid "
                   f"WHERE i.indrelid = '{table}'::regclass AND NOT i.indisvalid", db)
    return out.split()


def maintenance_log(pg, target: str, db: str = "app") -> list[list[str]]:
    out = pg.value("SELECT action, status, detail FROM monitoring.maintenance_log "
                   f"WHERE target = '{target}' ORDER BY id", db)
    return [row.split("|", 2) for row in out.splitlines()]


class Holder:
    """A psql session in an open transaction that ran ``statement``: its locks are held until
    release()."""

    def __init__(self, pg, db: str, statement: str):
        self.proc = subprocess.Popen(
            ["runuser", "-u", "postgres", "--", str(PGBIN / "psql"), "-XAtq", "-v",
             "ON_ERROR_STOP=1", "-h", str(pg.root), "-p", str(pg.port), "-d", db],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            env=ENV, cwd="/")
        self.proc.stdin.write(f"BEGIN;\n{statement};\nSELECT 'held';\n")
        self.proc.stdin.flush()
        for line in self.proc.stdout:  # what the statement printed, then 'held'
            if line.strip() == "held":
                break
        else:
            raise AssertionError(self.proc.stderr.read())

    def release(self) -> None:
        if self.proc.poll() is None and not self.proc.stdin.closed:
            self.proc.stdin.write("COMMIT;\n")
            self.proc.stdin.close()
        self.proc.wait(timeout=30)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.release()


# ---------------------------------------------------------------------------------------------
# vacuum, analyze

@needs_postgres
def test_vacuum_runs_on_a_table_with_many_dead_tuples(pg):
    dead = churn(pg, "churn")
    config = pg.config("vacuum")
    proc = run(config, "--database", "app", "vacuum")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    [line] = about(proc, "public.churn")
    assert line["stage"] == "vacuum" and line["status"] == "ok" and line["job"] == "maintenance"
    assert line["detail"]["statement"] == "VACUUM (ANALYZE) public.churn"
    assert line["detail"]["database"] == "app" and line["detail"]["dead_tuples"] == dead
    assert line["detail"]["dead_tuples_after"] == 0 and line["seconds"] >= 0
    assert dead_tuples(pg, "churn") == 0
    assert pg.value("SELECT last_vacuum IS NOT NULL FROM pg_stat_user_tables "
                    "WHERE relname = 'churn'") == "t"
    [[action, status, detail]] = maintenance_log(pg, "public.churn")
    assert (action, status) == ("vacuum", "ok")
    assert json.loads(detail)["statement"] == "VACUUM (ANALYZE) public.churn"
    assert end(proc)["status"] == "ok"
    assert end(proc)["detail"]["counts"]["ok"] == len(
        [x for x in proc.lines[:-1] if x["status"] == "ok"]) >= 1
    logged = parse((Path(json.loads(config.read_text())["log_dir"]) / "maintenance.log")
                   .read_text())
    assert [x["stage"] for x in logged] == [x["stage"] for x in proc.lines]
    # the lock was taken and let go
    assert (Path(json.loads(config.read_text())["state_dir"]) / "locks"
            / "maintenance-vacuum.lock").exists()

    proc = run(config, "--database", "app", "vacuum")  # nothing left to do: said so, exit 0
    assert proc.returncode == 0 and about(proc, "public.churn") == []


@needs_postgres
def test_analyze_runs_on_a_table_changed_since_its_last_analyze(pg):
    pg.sql("CREATE TABLE fresh (id int) WITH (autovacuum_enabled = false); "
           "INSERT INTO fresh SELECT generate_series(1, 3000)")
    wait_for(lambda: pg.value("SELECT n_mod_since_analyze FROM pg_stat_user_tables "
                              "WHERE relname = 'fresh'") == "3000", "3000 rows changed")
    assert pg.value("SELECT last_analyze FROM pg_stat_user_tables WHERE relname = 'fresh'") == ""
    proc = run(pg.config("analyze"), "--database", "app", "analyze")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    [line] = about(proc, "public.fresh")
    assert line["status"] == "ok" and line["detail"]["statement"] == "ANALYZE public.fresh"
    assert line["detail"]["modified_tuples"] == 3000 and line["detail"]["last_analyze"]
    assert pg.value("SELECT last_analyze IS NOT NULL AND n_mod_since_analyze = 0 "
                    "FROM pg_stat_user_tables WHERE relname = 'fresh'") == "t"
    assert pg.value("SELECT reltuples FROM pg_class WHERE relname = 'fresh'") == "3000"
    assert [r[:2] for r in maintenance_log(pg, "public.fresh")] == [["analyze", "ok"]]


@needs_postgres
def test_vacuum_of_a_locked_table_is_skipped_on_lock_timeout(pg):
    dead = churn(pg, "held")
    config = pg.config("vacuum-locked", lock_timeout="500ms")
    with Holder(pg, "app", "LOCK TABLE held IN SHARE UPDATE EXCLUSIVE MODE"):
        started = time.monotonic()
        proc = run(config, "--database", "app", "vacuum")
        took = time.monotonic() - started
    assert proc.returncode == 0, proc.stdout + proc.stderr
    [line] = about(proc, "public.held")
    assert line["status"] == "skipped" and line["stage"] == "vacuum"
    assert line["detail"]["reason"] == "public.held is busy: lock_timeout"
    assert 0.5 <= line["seconds"] < took
    assert dead_tuples(pg, "held") == dead  # not vacuumed; the next run tries again
    [[action, status, detail]] = maintenance_log(pg, "public.held")
    assert (action, status) == ("vacuum", "skipped") and "lock_timeout" in detail
    assert end(proc)["detail"]["counts"]["failed"] == 0


# ---------------------------------------------------------------------------------------------
# reindex

def index_size(pg, index: str, db: str = "app") -> int:
    return int(pg.value(f"SELECT pg_relation_size('{index}')", db))


@needs_postgres
def test_reindex_rebuilds_a_bloated_index_smaller_and_valid(pg):
    bloated(pg, "bloat")
    before = index_size(pg, "bloat_pkey")
    assert pg.value("SELECT count(*) FROM monitoring.reindex_candidates(0.3, 100000) "
                    "WHERE index_name = 'bloat_pkey'") == "1"
    proc = run(pg.config("reindex"), "--database", "app", "reindex")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    [line] = about(proc, "public.bloat_pkey")
    assert line["status"] == "ok" and line["stage"] == "reindex"
    assert line["detail"]["statement"] == "REINDEX INDEX CONCURRENTLY public.bloat_pkey"
    assert line["detail"]["table"] == "public.bloat"
    assert line["detail"]["index_bytes_before"] == before
    after = index_size(pg, "bloat_pkey")
    assert line["detail"]["index_bytes_after"] == after and after < before / 3
    assert line["detail"]["free_bytes"] >= 2 * before
    assert pg.value("SELECT indisvalid FROM pg_index WHERE indexrelid = 'bloat_pkey'::regclass"
                    ) == "t"
    assert invalid_indexes(pg, "bloat") == []
    [[action, status, detail]] = maintenance_log(pg, "public.bloat_pkey")
    assert (action, status) == ("reindex", "ok")
    assert json.loads(detail)["index_bytes_after"] == after


@needs_postgres
def test_a_reindex_that_times_out_leaves_no_invalid_copy(pg):
    """statement_timeout: the REINDEX waits for a transaction that wrote to the table after
    its copy (bloat2_pkey_ccnew) was made, and is cancelled; the copy is dropped as soon as
    that transaction ends."""
    bloated(pg, "bloat2")
    config = pg.config("reindex-timeout", statement_timeout="1s", lock_timeout="1min")
    holder = Holder(pg, "app", "INSERT INTO bloat2 VALUES (-1, -1)")
    proc = subprocess.Popen(
        ["runuser", "-u", "postgres", "--", HOST_PYTHON, str(PROGRAM), "--config", str(config),
         "--database", "app", "reindex"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True, env=ENV, cwd="/")
    watchdog = threading.Timer(90, proc.kill)
    watchdog.start()
    out = []
    try:
        for line in proc.stdout:
            out.append(line)
            record = parse(line)
            if record and record[0]["detail"] and record[0]["detail"].get("target") == \
                    "public.bloat2_pkey" and record[0]["status"] != "ok":
                # the copy exists now, INVALID; the drop waits for this transaction
                assert invalid_indexes(pg, "bloat2") == ["bloat2_pkey_ccnew"]
                holder.release()
        stderr = proc.stderr.read()
        proc.wait()
    finally:
        watchdog.cancel()
        holder.release()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    result = subprocess.CompletedProcess(proc.args, proc.returncode, "".join(out), stderr)
    result.lines = parse(result.stdout)
    assert result.returncode == 1, result.stdout + result.stderr
    [failed] = about(result, "public.bloat2_pkey")
    assert failed["status"] == "failed"
    assert "statement timeout" in failed["detail"]["error"]
    assert failed["detail"]["index_bytes_after"] == failed["detail"]["index_bytes_before"]
    [dropped] = about(result, "public.bloat2_pkey_ccnew")
    assert dropped["status"] == "ok" and dropped["stage"] == "reindex"
    assert dropped["detail"]["statement"] == \
        "DROP INDEX CONCURRENTLY IF EXISTS public.bloat2_pkey_ccnew"
    assert dropped["detail"]["leftover_of"] == "public.bloat2_pkey"
    assert invalid_indexes(pg, "bloat2") == []
    assert pg.value("SELECT indisvalid FROM pg_index "
                    "WHERE indexrelid = 'bloat2_pkey'::regclass") == "t"
    assert [r[:2] for r in maintenance_log(pg, "public.bloat2_pkey")] == [["reindex", "failed"]]
    assert [r[:2] for r in maintenance_log(pg, "public.bloat2_pkey_ccnew")] == [
        ["reindex", "ok"]]
    state = json.loads((Path(json.loads(config.read_text())["state_dir"])
                        / "reindex-leftovers.json").read_text())
    assert state == {"leftovers": []}


@needs_postgres
def test_a_reindex_on_lock_timeout_is_skipped_and_its_copy_dropped_by_the_next_run(pg):
    bloated(pg, "bloat3")
    config = pg.config("reindex-busy", lock_timeout="500ms")
    state = Path(json.loads(config.read_text())["state_dir"]) / "reindex-leftovers.json"
    with Holder(pg, "app", "INSERT INTO bloat3 VALUES (-1, -1)"):
        proc = run(config, "--database", "app", "reindex")
        assert proc.returncode == 0, proc.stdout + proc.stderr
        [line] = about(proc, "public.bloat3_pkey")
        assert line["status"] == "skipped"
        assert line["detail"]["reason"] == "public.bloat3_pkey is busy: lock_timeout"
        # its copy cannot be dropped while that transaction runs either: kept for next time
        [copy] = about(proc, "public.bloat3_pkey_ccnew")
        assert copy["status"] == "skipped" and "the next reindex run drops it" in \
            copy["detail"]["reason"]
        assert invalid_indexes(pg, "bloat3") == ["bloat3_pkey_ccnew"]
        [entry] = json.loads(state.read_text())["leftovers"]
        assert (entry["database"], entry["index"], entry["of"]) == (
            "app", "public.bloat3_pkey_ccnew", "public.bloat3_pkey")
    proc = run(config, "--database", "app", "reindex")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    [dropped, rebuilt] = [x for x in proc.lines if isinstance(x["detail"], dict) and (
        x["detail"].get("target") or "").startswith("public.bloat3_pkey")]
    assert (dropped["detail"]["target"], dropped["status"]) == ("public.bloat3_pkey_ccnew", "ok")
    assert (rebuilt["detail"]["target"], rebuilt["status"]) == ("public.bloat3_pkey", "ok")
    assert invalid_indexes(pg, "bloat3") == []
    assert json.loads(state.read_text()) == {"leftovers": []}


@needs_postgres
def test_a_reindex_without_twice_the_index_size_free_is_skipped(pg):
    bloated(pg, "bloat4")
    small = Path(tempfile.mkdtemp(prefix="pginfra-small-fs-"))
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(small)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        small.rmdir()
        pytest.skip(f"cannot mount a small tmpfs here: {mounted.stderr.strip()}")
    try:
        config = pg.config("reindex-full", data_directory=str(small))
        proc = run(config, "--database", "app", "reindex")
    finally:
        subprocess.run(["umount", str(small)], check=True)
        small.rmdir()
    assert proc.returncode == 0, proc.stdout + proc.stderr
    [line] = about(proc, "public.bloat4_pkey")
    assert line["status"] == "skipped" and "not enough free space" in line["detail"]["reason"]
    assert line["detail"]["free_bytes"] < line["detail"]["needed_bytes"]
    assert index_size(pg, "bloat4_pkey") == line["detail"]["index_bytes_before"]
    pg.sql("DROP TABLE bloat4")


# ---------------------------------------------------------------------------------------------
# refresh

@needs_postgres
def test_refresh_refreshes_a_requested_view_and_logs_a_failing_one(pg):
    pg.sql("""
        CREATE TABLE events (id int, kind text);
        CREATE MATERIALIZED VIEW mv_kinds AS
            SELECT kind, count(*) AS n FROM events GROUP BY kind;
        CREATE UNIQUE INDEX ON mv_kinds (kind);
        CREATE MATERIALIZED VIEW mv_broken AS
            SELECT 1 / (SELECT count(*) FROM events WHERE kind = 'never')::int AS x
            WITH NO DATA;
        SELECT monitoring.register_mv('mv_kinds', interval '0');
        SELECT monitoring.register_mv('mv_broken', interval '1 hour');
        INSERT INTO events VALUES (1, 'a'), (2, 'a'), (3, 'b');
        SELECT monitoring.request_refresh('mv_kinds');
        SELECT monitoring.request_refresh('mv_broken');
    """)
    try:
        proc = run(pg.config("refresh"), "--database", "app", "refresh")
        assert proc.returncode == 1, proc.stdout + proc.stderr
        [good] = about(proc, "public.mv_kinds")
        assert good["status"] == "ok" and good["stage"] == "refresh"
        assert good["detail"]["statement"] == \
            "REFRESH MATERIALIZED VIEW CONCURRENTLY public.mv_kinds"
        assert good["detail"]["refresh_status"] == "ok" and good["detail"]["concurrently"]
        assert good["detail"]["duration_ms"] >= 0
        [bad] = about(proc, "public.mv_broken")
        assert bad["status"] == "failed" and bad["detail"]["error"] == "division by zero"
        assert bad["detail"]["statement"] == "REFRESH MATERIALIZED VIEW public.mv_broken"
        assert pg.value("SELECT string_agg(kind || n, ',' ORDER BY kind) FROM mv_kinds") == \
            "a2,b1"
        assert pg.value("SELECT requested_at IS NULL FROM monitoring.mv_refresh_registry "
                        "WHERE mv = 'mv_kinds'::regclass") == "t"
        assert [r[:2] for r in maintenance_log(pg, "public.mv_kinds")] == [["refresh", "ok"]]
        assert [r[:2] for r in maintenance_log(pg, "public.mv_broken")] == [
            ["refresh", "failed"]]
        assert end(proc)["status"] == "failed"
    finally:
        pg.sql("SELECT monitoring.unregister_mv('mv_broken')")
    # Another caller is processing the queue: skipped, not "nothing due"
    pg.sql("SELECT monitoring.request_refresh('mv_kinds')")
    with Holder(pg, "app", "SELECT pg_advisory_xact_lock("
                "hashtext('monitoring.process_refresh_queue'), 0)"):
        proc = run(pg.config("refresh-busy"), "--database", "app", "refresh")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    [line] = proc.lines[:-1]
    assert line["status"] == "skipped" and "another run is under way" in line["detail"]["reason"]
    assert pg.value("SELECT requested_at IS NOT NULL FROM monitoring.mv_refresh_registry "
                    "WHERE mv = 'mv_kinds'::regclass") == "t"


# ---------------------------------------------------------------------------------------------
# locks, databases without the bundle or unreachable, dry runs, standbys

@needs_postgres
def test_a_held_step_lock_skips_that_step_the_others_run_exit_75(pg):
    config = pg.config("step-locked")
    locks = Path(json.loads(config.read_text())["state_dir"]) / "locks"
    locks.mkdir(parents=True)
    lock = locks / "maintenance-vacuum.lock"
    lock.touch()
    for path in (locks.parent, locks, lock):
        os.chown(path, pg.uid, pg.gid)
    churn(pg, "waiting")
    with open(lock, "r+") as held:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        proc = run(config, "--database", "app", "analyze", "vacuum", "refresh")
    assert proc.returncode == 75, proc.stdout + proc.stderr
    steps = [x["stage"] for x in proc.lines]
    assert steps[0] == "vacuum" and "analyze" in steps and "refresh" in steps
    assert steps.index("analyze") < steps.index("refresh")  # the documented order
    assert proc.lines[0]["status"] == "skipped"
    assert str(lock) in proc.lines[0]["detail"]["reason"]
    assert [x for x in proc.lines if x["stage"] == "vacuum"] == [proc.lines[0]]
    assert dead_tuples(pg, "waiting") == 4000
    # analyze ran: the table's changes were analyzed
    assert about(proc, "public.waiting", "analyze")[0]["status"] == "ok"
    assert end(proc)["status"] == "skipped" and end(proc)["detail"]["counts"]["failed"] == 0


@needs_postgres
def test_a_database_without_the_baseline_is_skipped_and_an_unreachable_one_fails(pg):
    config = pg.config("plain", databases=["plain"])
    proc = run(config, "all", root=True)  # root: re-executed as postgres
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert [(x["stage"], x["status"]) for x in proc.lines[:-1]] == [
        ("vacuum", "skipped"), ("analyze", "skipped"), ("reindex", "skipped"),
        ("refresh", "skipped")]
    for line in proc.lines[:-1]:
        assert line["detail"]["reason"] == "the baseline SQL bundle is not applied to plain"
    assert end(proc)["detail"]["counts"] == {"ok": 0, "skipped": 4, "failed": 0, "planned": 0}
    log_dir = Path(json.loads(config.read_text())["log_dir"])
    assert os.stat(log_dir / "maintenance.log").st_uid == pg.uid

    proc = run(config, "--database", "nosuch", "--database", "plain", "vacuum")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    [gone, plain] = proc.lines[:-1]
    assert gone["status"] == "failed" and gone["detail"]["database"] == "nosuch"
    assert 'database "nosuch" does not exist' in gone["detail"]["error"]
    assert plain["status"] == "skipped" and plain["detail"]["database"] == "plain"


@needs_postgres
def test_a_dry_run_plans_and_changes_nothing(pg):
    dead = churn(pg, "drypage", db="community")
    config = pg.config("dry", databases=["community"])
    proc = run(config, "--dry-run", "all")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    [line] = about(proc, "public.drypage", "vacuum")
    assert line["status"] == "planned"
    assert line["detail"]["statement"] == "VACUUM (ANALYZE) public.drypage"
    assert line["detail"]["dead_tuples"] == dead
    assert {x["status"] for x in proc.lines[:-1]} <= {"planned", "ok"}
    assert dead_tuples(pg, "drypage", "community") == dead
    assert pg.value("SELECT last_vacuum IS NULL AND last_analyze IS NULL "
                    "FROM pg_stat_user_tables WHERE relname = 'drypage'", "community") == "t"
    assert pg.value("SELECT count(*) FROM monitoring.maintenance_log", "community") == "0"
    assert not Path(json.loads(config.read_text())["state_dir"]).exists()  # no lock taken
    assert end(proc)["detail"]["dry_run"] is True


@needs_postgres
def test_on_a_standby_every_step_is_skipped(pg):
    standby = pg.standby()
    try:
        config = pg.config("standby", port=standby.port, socket_dir=str(standby.root),
                           data_directory=str(standby.data))
        proc = run(config, "all")
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert [(x["stage"], x["status"]) for x in proc.lines[:-1]] == [
            (step, "skipped") for step in ("vacuum", "analyze", "reindex", "refresh")]
        assert all("standby" in x["detail"]["reason"] for x in proc.lines[:-1])
        assert not Path(json.loads(config.read_text())["state_dir"]).exists()
    finally:
        drop_cluster(standby)
