"""Health checks, maintenance and metrics on the lab's host: each state the on-call engineer must
hear about is forced for real (a read-only WAL archive, stale backups, a session idle in a
transaction, a blocked lock, PgBouncer stopped) and the installed pginfra-health, run as cron
runs it, reports it with the right Nagios exit code; a healthy host exits 0. The thresholds come
from inventory data (--data), as an operator would set them. pginfra-maintenance vacuums what
the threshold selects and logs it. The Prometheus exporters listen on the host's address only
and serve the health results."""

from __future__ import annotations

import json
import time
import urllib.request

import pytest
from conftest import HOST, deploy_ok, psql_session, send, sql, wait_for

HEALTH = "/usr/local/lib/pginfra/pginfra-health"
MAINTENANCE = "/usr/local/lib/pginfra/pginfra-maintenance"
ARCHIVE = "/var/lib/postgresql/wal-archive"
LAST_SUCCESS = "/var/lib/pginfra/backup/last-success"
# Lower than the defaults, so the forced states cross them within seconds; set as inventory data.
THRESHOLDS = ["--data", "health_idle_in_transaction_seconds=[2,600]",
              "--data", "health_lock_wait_seconds=[2,600]"]
EXIT = {"ok": 0, "warning": 1, "critical": 2, "unknown": 3}


def health(lab, *args: str) -> tuple[int, dict]:
    """pginfra-health --json as root (it re-executes as postgres): (exit code, report)."""
    result = lab.ssh("pgt1", [HEALTH, "--json", *args], check=False, timeout=120)
    assert result.stdout.strip(), result.stderr
    return result.returncode, json.loads(result.stdout.strip().splitlines()[-1])


def check(report: dict, name: str) -> dict:
    found = [c for c in report["checks"] if c["check"] == name]
    assert found, f"no check {name} in {[c['check'] for c in report['checks']]}"
    return found[0]


def problems(report: dict) -> dict:
    return {c["check"]: (c["status"], c["detail"]) for c in report["checks"]
            if c["status"] != "ok"}


@pytest.fixture(scope="module")
def lowered(lab, first_deploy):
    """The host deployed with lower idle-in-transaction and lock-wait thresholds; put back
    afterwards."""
    deploy_ok(lab, *THRESHOLDS)
    config = json.loads(lab.ssh("pgt1", ["cat", "/etc/pginfra/health.json"]).stdout)
    assert config["thresholds"]["idle_in_transaction_seconds"] == [2, 600]
    yield config
    deploy_ok(lab)


def test_a_healthy_host_exits_0_with_every_check_ok(lab, lowered):
    code, report = health(lab)
    assert (code, report["status"]) == (0, "ok"), problems(report)
    names = {c["check"] for c in report["checks"]}
    assert names >= {"postgres", "pgbouncer", "connections", "long_running",
                     "idle_in_transaction", "blocking_locks", "archiver", "backup_base",
                     "backup_dump", "disk_data", "disk_wal_archive", "wraparound",
                     "cache_hit_ratio", "replication", "pending_restart", "invalid_indexes"}
    assert check(report, "pgbouncer")["value"] is not None  # the longest wait, from SHOW POOLS
    # the default output is one Nagios line with performance data
    line = lab.ssh("pgt1", [HEALTH], check=False).stdout.strip()
    assert line.startswith("PGINFRA OK") and " | " in line


def test_a_session_idle_in_transaction_past_the_threshold_is_a_warning(lab, lowered):
    idle = psql_session(lab, "health_e2e_idle")
    try:
        send(idle, "BEGIN;\nSELECT 1;\n")
        pid = wait_for(lambda: sql(lab, "SELECT pid FROM pg_stat_activity WHERE application_name"
                                        " = 'health_e2e_idle' AND state = 'idle in transaction'"),
                       "the idle session")
        time.sleep(2.5)
        code, report = health(lab, "--alerts-only")
        found = check(report, "idle_in_transaction")
        assert found["status"] == "warning" and code == 1, problems(report)
        assert pid in found["detail"]
        assert {c["status"] for c in report["checks"]} == {"warning"}  # alerts only
    finally:
        idle.communicate("ROLLBACK;\n", timeout=30)


def test_a_blocked_lock_is_reported_with_both_pids(lab, lowered):
    sql(lab, "DROP TABLE IF EXISTS health_e2e; CREATE TABLE health_e2e (id int PRIMARY KEY, n int);"
             " INSERT INTO health_e2e VALUES (1, 0)")
    holder, waiter = psql_session(lab, "health_e2e_holder"), psql_session(lab, "health_e2e_waiter")
    try:
        send(holder, "BEGIN;\nUPDATE health_e2e SET n = n + 1 WHERE id = 1;\n")
        holder_pid = wait_for(lambda: sql(
            lab, "SELECT pid FROM pg_stat_activity WHERE application_name = 'health_e2e_holder' "
                 "AND state = 'idle in transaction'"), "the lock holder")
        send(waiter, "UPDATE health_e2e SET n = n + 10 WHERE id = 1;\n")
        waiter_pid = wait_for(lambda: sql(
            lab, "SELECT pid FROM pg_stat_activity WHERE application_name = 'health_e2e_waiter' "
                 "AND wait_event_type = 'Lock'"), "the blocked session")
        time.sleep(2.5)
        code, report = health(lab)
        found = check(report, "blocking_locks")
        assert found["status"] == "warning" and code >= 1, problems(report)
        assert waiter_pid in found["detail"] and holder_pid in found["detail"]
        assert f"blocked by pid {holder_pid}" in found["detail"]
        assert "UPDATE" not in found["detail"]  # no query text: it could carry a secret
    finally:
        holder.communicate("ROLLBACK;\n", timeout=30)
        waiter.communicate("", timeout=30)
        sql(lab, "DROP TABLE IF EXISTS health_e2e")


def test_a_read_only_wal_archive_is_critical(lab, lowered):
    failures = int(sql(lab, "SELECT failed_count FROM pg_stat_archiver"))
    lab.ssh("pgt1", ["chmod", "0000", ARCHIVE])  # postgres can neither write nor enter it
    try:
        sql(lab, "CREATE TABLE IF NOT EXISTS health_e2e_wal (x int); "
                 "INSERT INTO health_e2e_wal VALUES (1); SELECT pg_switch_wal()")
        wait_for(lambda: int(sql(lab, "SELECT failed_count FROM pg_stat_archiver")) > failures,
                 "a failed archive attempt")
        code, report = health(lab)
        found = check(report, "archiver")
        assert (found["status"], code) == ("critical", 2), problems(report)
        assert ARCHIVE in found["detail"]
    finally:
        lab.ssh("pgt1", ["chmod", "0700", ARCHIVE])
        sql(lab, "DROP TABLE IF EXISTS health_e2e_wal; SELECT pg_switch_wal()")
    wait_for(lambda: sql(lab, "SELECT last_archived_time > coalesce(last_failed_time, "
                              "'-infinity') FROM pg_stat_archiver") == "t",
             "archiving to recover", timeout=90)
    found = check(health(lab)[1], "archiver")
    # the failures since the last check are still worth a warning, then it is ok again
    assert found["status"] in ("ok", "warning"), found
    assert check(health(lab)[1], "archiver")["status"] == "ok"


def test_stale_backups_are_a_warning_then_critical(lab, lowered):
    """The newest pgBackRest backup is minutes old: thresholds in a copy of the configuration
    (0 and 1000 hours, then 0 and 0) make it a warning, then critical; a dump record three days
    old is critical, a missing one too."""
    saved = lab.ssh("pgt1", ["cat", f"{LAST_SUCCESS}/dump.json"]).stdout
    config = json.loads(lab.ssh("pgt1", ["cat", "/etc/pginfra/health.json"]).stdout)

    def with_age_hours(pair: list[int]) -> tuple[int, dict]:
        changed = {**config, "thresholds": {**config["thresholds"],
                                            "backup_base_age_hours": pair}}
        lab.ssh("pgt1", ["sh", "-c", "'cat > /tmp/health-aged.json && chmod 644 "
                         "/tmp/health-aged.json'"], input=json.dumps(changed))
        return health(lab, "--config", "/tmp/health-aged.json")

    try:
        code, report = with_age_hours([0, 1000])
        found = check(report, "backup_base")
        assert found["status"] == "warning", problems(report)
        assert "repo1" in found["detail"] or "repo 1" in found["detail"], found
        assert check(with_age_hours([0, 0])[1], "backup_base")["status"] == "critical"
        record = dict(json.loads(saved))
        record["time"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() - 3 * 86400))
        lab.ssh("pgt1", ["runuser", "-u", "postgres", "--", "sh", "-c",
                         f"'cat > {LAST_SUCCESS}/dump.json'"], input=json.dumps(record))
        code, report = health(lab)
        assert check(report, "backup_dump")["status"] == "critical", problems(report)
        assert code == 2
        lab.ssh("pgt1", ["rm", f"{LAST_SUCCESS}/dump.json"])
        found = check(health(lab)[1], "backup_dump")
        assert found["status"] == "critical" and "no verified" in found["detail"]
    finally:
        lab.ssh("pgt1", ["runuser", "-u", "postgres", "--", "sh", "-c",
                         f"'cat > {LAST_SUCCESS}/dump.json'"], input=saved)
        lab.ssh("pgt1", ["rm", "-f", "/tmp/health-aged.json"])
    assert health(lab)[0] == 0


def test_pgbouncer_stopped_is_critical(lab, lowered):
    lab.ssh("pgt1", ["systemctl", "stop", "pgbouncer"])
    try:
        code, report = health(lab)
        found = check(report, "pgbouncer")
        assert (found["status"], code) == ("critical", 2), problems(report)
        assert "6432" in found["detail"]
        assert check(report, "postgres")["status"] == "ok"
    finally:
        lab.ssh("pgt1", ["systemctl", "start", "pgbouncer"])
    assert wait_for(lambda: health(lab)[0] == 0, "PgBouncer back", timeout=30)


def test_the_cron_jobs_run_as_cron_runs_them(lab, first_deploy):
    cron = lab.ssh("pgt1", ["cat", "/etc/cron.d/pginfra"]).stdout
    jobs = [line for line in cron.splitlines()
            if line and line[0] in "0123456789*@" and ("pginfra-health" in line
                                                       or "pginfra-maintenance" in line)]
    assert len(jobs) == 4, cron
    for job in jobs:
        command = job.split(" postgres ", 1)[1]
        result = lab.ssh("pgt1", ["cd", "/tmp", "&&", "runuser", "-u", "postgres", "--", "sh",
                                  "-c", repr(command)], check=False, timeout=300)
        assert result.returncode == 0, (command, result.stderr)
    last = lab.ssh("pgt1", ["tail", "-n", "1", "/var/log/pginfra/health.log"]).stdout
    assert json.loads(last)["status"] == "ok"
    log = lab.ssh("pgt1", ["cat", "/var/log/pginfra/maintenance.log"]).stdout.splitlines()
    assert log and all(json.loads(line)["job"] == "maintenance" for line in log)
    assert lab.ssh("pgt1", ["cat", "/var/log/pginfra/cron.log"], check=False).stdout.strip() == ""


def test_maintenance_vacuums_what_the_threshold_selects_and_logs_it(lab, first_deploy):
    sql(lab, "DROP TABLE IF EXISTS maint_e2e; "
             "CREATE TABLE maint_e2e (id int PRIMARY KEY, pad text) "
             "WITH (autovacuum_enabled = false); "
             "INSERT INTO maint_e2e SELECT g, repeat('x', 100) FROM generate_series(1, 20000) g; "
             "DELETE FROM maint_e2e WHERE id % 4 <> 0", db="app")
    try:
        wait_for(lambda: int(sql(lab, "SELECT n_dead_tup FROM pg_stat_user_tables WHERE relname"
                                      " = 'maint_e2e'", db="app") or 0) >= 15000,
                 "the dead tuples to be counted")
        result = lab.ssh("pgt1", [MAINTENANCE, "vacuum", "analyze"], check=False, timeout=300)
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
        lines = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
        vacuumed = [x for x in lines if x["stage"] == "vacuum" and x["status"] == "ok"
                    and "maint_e2e" in json.dumps(x["detail"])]
        assert vacuumed, lines
        assert sql(lab, "SELECT n_dead_tup FROM pg_stat_user_tables WHERE relname = 'maint_e2e'",
                   db="app") == "0"
        assert sql(lab, "SELECT count(*) FROM monitoring.maintenance_log WHERE action = 'vacuum' "
                        "AND target LIKE '%maint_e2e%' AND status = 'ok'", db="app") != "0"
        # a second run right after finds nothing over the threshold for this table
        again = lab.ssh("pgt1", [MAINTENANCE, "vacuum"], check=False, timeout=300)
        assert again.returncode == 0 and "maint_e2e" not in again.stdout
    finally:
        sql(lab, "DROP TABLE IF EXISTS maint_e2e", db="app")


def fetch(url: str) -> str:
    with urllib.request.urlopen(url, timeout=10) as response:  # noqa: S310 (the lab's host)
        return response.read().decode()


def test_prometheus_exporters_listen_on_the_host_address_and_serve_the_health(lab, first_deploy):
    deploy_ok(lab, "--data", "health_prometheus=true")
    try:
        listening = lab.ssh("pgt1", ["ss", "-Hltn"]).stdout
        for port in (9187, 9100):
            local = [line.split()[3] for line in listening.splitlines()
                     if line.split()[3].endswith(f":{port}")]
            assert local == [f"{HOST}:{port}"], listening
        assert "\npg_up 1" in "\n" + fetch(f"http://{HOST}:9187/metrics")
        lab.ssh("pgt1", ["runuser", "-u", "postgres", "--", HEALTH, "--json"], check=False)
        metrics = fetch(f"http://{HOST}:9100/metrics")
        assert 'pginfra_health_status{check="postgres"} 0' in metrics
        assert "pginfra_health_exit_code" in metrics
        # the exporter's role logs in by peer only: no password exists for it
        assert sql(lab, "SELECT rolpassword IS NULL AND pg_has_role(oid, 'pg_monitor', 'MEMBER')"
                        " FROM pg_authid WHERE rolname = 'prometheus'") == "t"
        again = deploy_ok(lab, "--data", "health_prometheus=true")
        assert again.changed == [], again.changed
    finally:
        deploy_ok(lab)
    assert lab.ssh("pgt1", ["systemctl", "is-active", "prometheus-postgres-exporter"],
                   check=False).stdout.strip() != "active"
