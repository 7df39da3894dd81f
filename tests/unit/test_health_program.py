"""files/pginfra-health for real, against a throwaway PostgreSQL 15 cluster archived by
pgBackRest as pginfra sets it up (archive-push, asynchronous, into repo 1 in wal_archive_dir,
encrypted with the passphrase in conf.d; one full backup). Every state is forced for real:
sessions idle in a transaction, rows and tables locked by one session while another waits, a
repository the server cannot write to (pgBackRest's error files in the spool), a catalog
locked so that a query would hang, a streaming standby whose replay is paused, a restart-only
parameter changed, an INVALID index left by a failed CREATE UNIQUE INDEX CONCURRENTLY, a stanza
never created, one without a backup, a repository pgBackRest cannot read, a verify that found a
problem, dump records of the wrong age. pgBackRest's info outputs and error files recorded on
this machine (tests/unit/data/health-pgbackrest) cover what a test cluster cannot show (S3
down). The program runs as postgres through runuser, as from cron or NRPE.

The programs run from throwaway_pg's world-readable copy of files/ with Debian's
/usr/bin/python3 and its modules, as on a host (PGINFRA_TEST_PYTHON overrides the interpreter).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import stat
import subprocess
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from throwaway_pg import (
    BIN,
    ENV,
    HOST_PYTHON,
    PGBIN,
    Cluster,
    drop_cluster,
    free_port,
    needs_postgres,
    new_cluster,
    postgres_missing,
)

from pginfra.programs import host_program
from pginfra_host import runner
from pginfra_host.health import archiving, backups, listeners, pgbouncer
from pginfra_host.health.config import THRESHOLDS, BackupSettings, validate_config
from pginfra_host.health.context import Context
from pginfra_host.health.result import grade, worst

PROGRAM = BIN / "pginfra-health"
DATA = Path(__file__).parent / "data" / "health-pgbackrest"
PGBACKREST = "/usr/bin/pgbackrest"
STANZA = "main"


health = host_program("pginfra-health")
ALL = list(health.CHECKS)
HA = ("patroni", "etcd")  # write_config's configurations have no "ha": these stay out
WITHOUT_HA = [c for c in ALL if c not in HA]
WITHOUT_PGBOUNCER = [c for c in WITHOUT_HA if c != "pgbouncer"]
SQL_CHECKS = ["connections", "long_running", "idle_in_transaction", "blocking_locks",
              "wraparound", "cache_hit_ratio", "replication", "pending_restart",
              "invalid_indexes"]


def _pgbackrest_missing() -> str | None:
    return postgres_missing() or (None if os.access(PGBACKREST, os.X_OK)
                                  else f"{PGBACKREST} is absent: apt-get install pgbackrest")


needs_pgbackrest = pytest.mark.skipif(_pgbackrest_missing() is not None,
                                      reason=_pgbackrest_missing() or "")


# ---------------------------------------------------------------------------------------------
# a cluster archived by pgBackRest

def write_pgbackrest_config(directory: Path, options: str, secrets: str | None = None) -> Path:
    """``directory``/pgbackrest.conf with ``options`` and, unless ``secrets`` is None, a 0600
    conf.d/secrets.conf (pgBackRest refuses passphrases on a command line); owned by
    postgres."""
    directory.mkdir(mode=0o700, exist_ok=True)
    config = directory / "pgbackrest.conf"
    config.write_text(options)
    if secrets is not None:
        (directory / "conf.d").mkdir(mode=0o700, exist_ok=True)
        (directory / "conf.d" / "secrets.conf").write_text(secrets)
        (directory / "conf.d" / "secrets.conf").chmod(0o600)
    subprocess.run(["chown", "-R", "postgres:postgres", str(directory)], check=True)
    return config


class PgbrCluster(Cluster):
    """The throwaway cluster with pgBackRest's archive_command from its first start (and
    archive_library empty, which would win over it): stanza main, repo 1 (posix, aes-256-cbc)
    in ``archive`` (the configuration's wal_archive_dir), asynchronous archive-push with the
    spool, lock and log paths in ``pgbr``."""

    def init(self) -> PgbrCluster:
        self.pgbr = self.root / "pgbackrest"
        self.archive.mkdir()
        shutil.chown(self.archive, self.uid, self.gid)
        self.pgbr_config = write_pgbackrest_config(self.pgbr, (
            "[global]\n"
            f"repo1-type=posix\nrepo1-path={self.archive}\nrepo1-cipher-type=aes-256-cbc\n"
            "repo1-retention-full=2\n"
            f"archive-async=y\nspool-path={self.pgbr}/spool\nlock-path={self.pgbr}/lock\n"
            f"log-path={self.pgbr}/log\nlog-level-console=warn\nlog-level-file=info\n"
            "compress-type=lz4\nstart-fast=y\narchive-timeout=30\n"
            f"\n[{STANZA}]\npg1-path={self.data}\npg1-port={self.port}\n"
            f"pg1-socket-path={self.root}\n"),
            secrets=f"[global]\nrepo1-cipher-pass={uuid.uuid4().hex}\n")
        for name in ("spool", "lock", "log"):
            (self.pgbr / name).mkdir(mode=0o750)
            shutil.chown(self.pgbr / name, self.uid, self.gid)
        # 1 MiB WAL segments, as throwaway_pg's clusters
        self.as_postgres(PGBIN / "initdb", "-D", self.data, "-N", "--auth-local=peer",
                         "--auth-host=reject", "-U", "postgres", "--wal-segsize=1")
        command = " ".join(self.pgbackrest_argv("archive-push", "%p"))
        with open(self.data / "postgresql.conf", "a") as conf:
            conf.write(f"listen_addresses = ''\nunix_socket_directories = '{self.root}'\n"
                       f"port = {self.port}\narchive_mode = on\narchive_library = ''\n"
                       f"archive_command = '{command}'\nfsync = off\nshared_buffers = 16MB\n")
        self.start()
        self.pgbackrest("stanza-create")
        return self

    def pgbackrest_argv(self, *args) -> list[str]:
        return [PGBACKREST, f"--config={self.pgbr_config}",
                f"--config-include-path={self.pgbr / 'conf.d'}", f"--stanza={STANZA}", *args]

    def pgbackrest(self, *args) -> subprocess.CompletedProcess:
        return self.as_postgres(*self.pgbackrest_argv(*args))

    def switch_wal(self) -> None:
        """A new segment, and the previous one archived (pg_stat_archiver says so)."""
        segment = self.sql("SELECT pg_walfile_name(pg_switch_wal())")
        wait_until(lambda: self.sql("SELECT coalesce(last_archived_wal, '') "
                                    "FROM pg_stat_archiver") >= segment,
                   f"{segment} to be archived")


# ---------------------------------------------------------------------------------------------
# helpers

def wait_until(predicate, what: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def iso_hours_ago(hours: float) -> str:
    return (datetime.now(UTC) - timedelta(hours=hours)).isoformat().replace("+00:00", "Z")


def thresholds(**changes) -> dict:
    out = {name: list(threshold.default) for name, threshold in THRESHOLDS.items()}
    # The machine's disk, not the program, would decide these otherwise.
    out["disk_used_percent"] = [97, 99]
    out.update({k: list(v) for k, v in changes.items()})
    return out


def write_backup_state(directory: Path, dump=1.0, verify=None) -> Path:
    """pginfra-backup's records: last-success/dump.json (a number: that many hours old, None:
    absent, a string: that text) and pgbackrest-verify.json (None: absent; a dict: its
    "repos", a string: that text)."""
    last = directory / "last-success"
    shutil.rmtree(directory, ignore_errors=True)
    last.mkdir(parents=True)
    if dump is not None:
        (last / "dump.json").write_text(dump if isinstance(dump, str) else json.dumps(
            {"job": "dump", "time": iso_hours_ago(dump), "label": "20261123T180000Z"}))
    if verify is not None:
        (directory / "pgbackrest-verify.json").write_text(
            verify if isinstance(verify, str)
            else json.dumps({"time": iso_hours_ago(0.5), "repos": verify}))
    for path in (directory, *directory.iterdir(), *last.iterdir()):
        os.chmod(path, 0o755 if path.is_dir() else 0o644)
    return directory


def write_config(cluster, name: str, *, port=None, backup: Path | None = None,
                 pgbr: dict | None = None, no_backup: bool = False, th: dict | None = None,
                 **overrides) -> Path:
    """A configuration for ``cluster`` in its temporary directory; its own state_dir.
    "backup": the records in ``backup`` (default: the fresh ones), pgBackRest's stanza main
    of the cluster with ``pgbr``'s changes; null with ``no_backup``."""
    pgbr_dir = getattr(cluster, "pgbr", cluster.root / "pgbackrest")
    backup_section = None if no_backup else {
        "state_dir": str(backup or cluster.root / "backup-fresh"), "stanza": STANZA,
        "pgbackrest_config": str(pgbr_dir / "pgbackrest.conf"),
        "spool_path": str(pgbr_dir / "spool"), "repos": [1], **(pgbr or {})}
    raw = {"host": "pgt1", "version": 15, "cluster": "main",
           "port": cluster.port if port is None else port, "socket_dir": str(cluster.root),
           "data_directory": str(cluster.data), "wal_archive_dir": str(cluster.archive),
           "state_dir": str(cluster.root / f"state-{name}"), "query_timeout": 3,
           "run_timeout": 30, "pgbouncer": None, "backup": backup_section,
           "textfile": None, "thresholds": th or thresholds()}
    raw.update(overrides)
    path = cluster.root / f"health-{name}.json"
    path.write_text(json.dumps(raw, indent=2))
    os.chmod(path, 0o644)
    return path


def run(config, *args, timeout: float = 60) -> subprocess.CompletedProcess:
    cmd = [HOST_PYTHON, str(PROGRAM), "--config", str(config), *args]
    if os.geteuid() == 0:
        cmd = ["runuser", "-u", "postgres", "--", *cmd]
    return subprocess.run(cmd, capture_output=True, text=True, env=ENV, cwd="/",
                          timeout=timeout)


def run_json(config, *args, **kw) -> tuple[dict, dict, subprocess.CompletedProcess]:
    proc = run(config, "--json", *args, **kw)
    lines = proc.stdout.splitlines()
    assert len(lines) == 1, f"stdout: {proc.stdout!r} stderr: {proc.stderr!r}"
    report = json.loads(lines[0])
    assert report["exit_code"] == proc.returncode, proc.stderr
    return report, {c["check"]: c for c in report["checks"]}, proc


def not_ok(checks: dict) -> dict:
    return {name: (c["status"], c["detail"]) for name, c in checks.items()
            if c["status"] != "ok"}


class Session:
    """A real psql session kept open; statements go to its stdin. Found in pg_stat_activity
    by its application_name."""

    def __init__(self, cluster, db: str = "postgres"):
        self.cluster, self.name = cluster, f"holder-{uuid.uuid4().hex[:10]}"
        self.proc = subprocess.Popen(
            ["runuser", "-u", "postgres", "--", str(PGBIN / "psql"), "-X", "-q", "-h",
             str(cluster.root), "-p", str(cluster.port), "-d", db],
            stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            text=True, cwd="/", env={**ENV, "PGAPPNAME": self.name})

    def send(self, sql: str) -> None:
        self.proc.stdin.write(sql + "\n")
        self.proc.stdin.flush()

    def pid(self, state: str | None = None) -> int:
        where = f"application_name = '{self.name}'" + (f" AND state = '{state}'" if state
                                                         else "")
        found = []
        wait_until(lambda: found.append(self.cluster.sql(
            f"SELECT pid FROM pg_stat_activity WHERE {where}")) or found[-1],
            f"session {self.name} {state or ''}")
        return int(found[-1])

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.cluster.sql("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                             f"WHERE application_name = '{self.name}'")
        with contextlib.suppress(Exception):
            self.proc.stdin.close()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


# ---------------------------------------------------------------------------------------------
# fixtures

@pytest.fixture(scope="module")
def pg():
    if _pgbackrest_missing():
        pytest.skip(_pgbackrest_missing())
    cluster = new_cluster(PgbrCluster, prefix="pginfra-health-")
    try:
        cluster.sql("CREATE DATABASE shop")
        cluster.sql("CREATE TABLE accounts (id int PRIMARY KEY, balance int NOT NULL); "
                    "INSERT INTO accounts SELECT g, 0 FROM generate_series(1, 10) AS g", "shop")
        cluster.pgbackrest("--type=full", "backup")
        write_backup_state(cluster.root / "backup-fresh")
        yield cluster
    finally:
        drop_cluster(cluster)


@pytest.fixture
def hang_db(pg):
    """A database whose pg_index a session holds in ACCESS EXCLUSIVE mode: whatever reads it
    there (even a new connection) would wait forever."""
    pg.sql("CREATE DATABASE hang")
    holder = Session(pg, "hang")
    try:
        holder.send("BEGIN; LOCK pg_index IN ACCESS EXCLUSIVE MODE;")
        wait_until(lambda: pg.sql(
            "SELECT count(*) FROM pg_locks l JOIN pg_database d ON d.oid = l.database "
            "WHERE d.datname = 'hang' AND l.relation = 'pg_index'::regclass AND l.granted "
            "AND l.mode = 'AccessExclusiveLock'") == "1", "the lock on pg_index")
        yield "hang"
    finally:
        holder.close()
        pg.sql("DROP DATABASE IF EXISTS hang WITH (FORCE)")


@pytest.fixture(scope="module")
def confdir():
    """A directory postgres can read (the program re-executes itself as postgres)."""
    path = Path(tempfile.mkdtemp(prefix="pginfra-health-conf-"))
    os.chmod(path, 0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


# ---------------------------------------------------------------------------------------------
# usage, configuration, pure functions

def test_help_explains_every_check_option_and_exit_code():
    proc = subprocess.run([HOST_PYTHON, str(PROGRAM), "--help"], capture_output=True, text=True,
                          env=ENV, cwd="/")
    assert proc.returncode == 0, proc.stderr
    text = " ".join(proc.stdout.split())
    assert "Exit codes (Nagios): 0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN" in text
    for word in [*ALL, "--config", "--check", "--json", "--verbose", "--alerts-only",
                 "--textfile", "--no-textfile", "run_timeout", "query_timeout"]:
        assert word in proc.stdout, word
    proc = subprocess.run([HOST_PYTHON, str(PROGRAM), "--check", "nonsense"], capture_output=True,
                          text=True, env=ENV, cwd="/")
    assert proc.returncode == 3  # UNKNOWN for Nagios, not argparse's 2 (CRITICAL)
    assert proc.stdout.startswith("PGINFRA UNKNOWN - ") and "nonsense" in proc.stdout


def _good_raw() -> dict:
    return {"host": "pgt1", "version": 15, "cluster": "main", "port": 5432,
            "data_directory": "/var/lib/postgresql/15/main",
            "wal_archive_dir": "/var/lib/postgresql/wal-archive",
            "state_dir": "/var/lib/pginfra/health", "query_timeout": 5, "run_timeout": 60,
            "pgbouncer": {"port": 6432},
            "backup": {"state_dir": "/var/lib/pginfra/backup", "stanza": "main",
                       "pgbackrest_config": "/etc/pgbackrest/pgbackrest.conf",
                       "spool_path": "/var/spool/pgbackrest", "repos": [1, 2]},
            "textfile": "/var/lib/pginfra/metrics/pginfra_health.prom",
            "thresholds": {n: list(t.default) for n, t in THRESHOLDS.items()}}


def test_the_configuration_of_the_spec_is_valid():
    cfg = validate_config(_good_raw())
    assert cfg.socket_dir == "/var/run/postgresql" and cfg.pgbouncer_port == 6432
    assert cfg.thresholds["cache_hit_ratio"] == (0.95, 0.90)
    assert cfg.backup == BackupSettings(
        state_dir="/var/lib/pginfra/backup", stanza="main",
        pgbackrest_config="/etc/pgbackrest/pgbackrest.conf",
        spool_path="/var/spool/pgbackrest", repos=(1, 2))
    assert cfg.backup.include_path == "/etc/pgbackrest/conf.d"
    assert cfg.backup_state_dir == "/var/lib/pginfra/backup"
    off = validate_config({**_good_raw(), "pgbouncer": None, "backup": None,
                           "textfile": None})
    assert off.backup is None and off.backup_state_dir is None
    assert backups.pgbackrest_argv(cfg.backup, "--output=json", "info") == [
        "/usr/bin/pgbackrest", "--config=/etc/pgbackrest/pgbackrest.conf",
        "--config-include-path=/etc/pgbackrest/conf.d", "--stanza=main",
        "--log-level-console=off", "--log-level-file=off", "--output=json", "info"]


def _bad(**changes):
    raw = _good_raw()
    for key, value in changes.items():
        if key.startswith("th_"):
            raw["thresholds"][key[3:]] = value
        elif key.startswith("backup_"):
            if value is KeyError:
                del raw["backup"][key[7:]]
            else:
                raw["backup"][key[7:]] = value
        elif value is KeyError:
            del raw[key]
        else:
            raw[key] = value
    return raw


BAD_CONFIGS = [
    (_bad(colour="blue"), "'colour'"),
    (_bad(port=KeyError), "key 'port' is missing"),
    (_bad(port="5432"), "key 'port'"),
    (_bad(query_timeout=0), "key 'query_timeout'"),
    (_bad(run_timeout=True), "key 'run_timeout'"),
    (_bad(data_directory="relative/path"), "key 'data_directory'"),
    (_bad(pgbouncer={"port": 0}), "key 'pgbouncer.port'"),
    (_bad(pgbouncer={"port": 6432, "host": "x"}), "pgbouncer.host"),
    (_bad(backup={"dir": "/x"}), "backup.dir"),
    (_bad(backup={"state_dir": "/var/lib/pginfra/backup"}), "key 'backup.stanza' is missing"),
    (_bad(backup="/var/lib/pginfra/backup"), "key 'backup'"),
    (_bad(backup_repos=KeyError), "key 'backup.repos' is missing"),
    (_bad(backup_repos=[]), "key 'backup.repos'"),
    (_bad(backup_repos=[1, 1]), "key 'backup.repos'"),
    (_bad(backup_repos=[0]), "key 'backup.repos'"),
    (_bad(backup_repos=["1"]), "key 'backup.repos'"),
    (_bad(backup_repos=[True]), "key 'backup.repos'"),
    (_bad(backup_stanza="ma in"), "key 'backup.stanza'"),
    (_bad(backup_stanza=""), "key 'backup.stanza'"),
    (_bad(backup_pgbackrest_config="pgbackrest.conf"), "key 'backup.pgbackrest_config'"),
    (_bad(backup_spool_path=None), "key 'backup.spool_path'"),
    (_bad(backup_state_dir="relative"), "key 'backup.state_dir'"),
    (_bad(backup_verify=True), "backup.verify"),
    (_bad(textfile="/var/lib/pginfra/metrics/health.txt"), "key 'textfile'"),
    (_bad(th_connections_percent=[90, 75]), "key 'thresholds.connections_percent'"),
    (_bad(th_cache_hit_ratio=[0.90, 0.95]), "key 'thresholds.cache_hit_ratio'"),
    (_bad(th_disk_used_percent=[80, 120]), "key 'thresholds.disk_used_percent'"),
    (_bad(th_lock_wait_seconds=[-1, 300]), "key 'thresholds.lock_wait_seconds'"),
    (_bad(th_replication_lag_mb=[50]), "key 'thresholds.replication_lag_mb'"),
    (_bad(th_lag_mb=[1, 2]), "thresholds.lag_mb"),
    (_bad(standbys=["db-2.example.com"]), "key 'standbys'"),
    (_bad(standbys="pg2"), "key 'standbys'"),
    ({**_good_raw(), "thresholds": {"connections_percent": [75, 90]}},
     "key 'thresholds.long_running_seconds' is missing"),
]


@pytest.mark.parametrize("raw, named", BAD_CONFIGS, ids=[n for _r, n in BAD_CONFIGS])
def test_validation_names_the_bad_key(raw, named):
    with pytest.raises(runner.ConfigError) as caught:
        validate_config(raw)
    assert named in str(caught.value) and "\n" not in str(caught.value)


@pytest.mark.parametrize("raw, named", [
    BAD_CONFIGS[0], BAD_CONFIGS[1],
    next(c for c in BAD_CONFIGS if c[1] == "key 'thresholds.connections_percent'"),
    ("not json {", "not valid JSON")],
    ids=["unknown-key", "missing-key", "threshold-order", "not-json"])
def test_a_bad_configuration_is_unknown_with_one_line(confdir, raw, named):
    path = confdir / f"bad-{uuid.uuid4().hex[:8]}.json"
    path.write_text(raw if isinstance(raw, str) else json.dumps(raw))
    os.chmod(path, 0o644)
    proc = run(path)
    assert proc.returncode == 3, proc.stdout + proc.stderr
    lines = proc.stdout.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"PGINFRA UNKNOWN - {path}: "), proc.stdout
    assert named in lines[0]
    report, _checks, proc = run_json(path)
    assert report["status"] == "unknown" and report["exit_code"] == 3
    assert named in report["error"] and report["checks"] == []


def test_a_missing_configuration_is_unknown(confdir):
    proc = run(confdir / "absent.json")
    assert proc.returncode == 3
    assert proc.stdout == f"PGINFRA UNKNOWN - {confdir / 'absent.json'}: no such file " \
        "(pass --config PATH)\n"


SHOW_POOLS_1_18 = """\
database,user,cl_active,cl_waiting,cl_active_cancel_req,cl_waiting_cancel_req,sv_active,\
sv_active_cancel,sv_being_canceled,sv_idle,sv_used,sv_tested,sv_login,maxwait,maxwait_us,\
pool_mode
pgbouncer,pgbouncer,1,0,0,0,0,0,0,0,0,0,0,0,0,statement
shop,app,20,7,0,0,20,0,0,0,0,0,0,3,250000,transaction
shop,reporting,2,0,0,0,1,0,0,1,0,0,0,0,0,transaction
"odd,name",app,0,2,0,0,0,0,0,0,0,0,0,0,400000,session
"""


def test_show_pools_parser_reads_pgbouncer_1_18_csv():
    pools = pgbouncer.parse_show_pools(SHOW_POOLS_1_18)
    assert [(p["database"], p["user"]) for p in pools] == [
        ("pgbouncer", "pgbouncer"), ("shop", "app"), ("shop", "reporting"),
        ("odd,name", "app")]
    assert pools[1]["cl_waiting"] == 7 and pools[1]["cl_active"] == 20
    assert pools[1]["maxwait_seconds"] == pytest.approx(3.25)
    assert pools[3]["maxwait_seconds"] == pytest.approx(0.4)
    assert pools[1]["pool_mode"] == "transaction"
    summary = pgbouncer.summarize_pools(pools)
    assert summary["waiting"] == 9 and summary["maxwait_seconds"] == pytest.approx(3.25)
    assert summary["longest_pool"] == "shop/app"
    # Older PgBouncers have no maxwait_us; no pool at all is no wait.
    old = "database,user,cl_active,cl_waiting,sv_active,sv_idle,maxwait,pool_mode\n" \
          "shop,app,1,1,1,0,2,session\n"
    assert pgbouncer.parse_show_pools(old)[0]["maxwait_seconds"] == 2
    header_only = SHOW_POOLS_1_18.splitlines()[0] + "\n"
    assert pgbouncer.summarize_pools(pgbouncer.parse_show_pools(header_only)) == {
        "pools": 0, "waiting": 0, "maxwait_seconds": 0.0, "longest_pool": None}
    with pytest.raises(ValueError, match="cl_waiting, maxwait"):
        pgbouncer.parse_show_pools("database,user,cl_active\nshop,app,1\n")
    with pytest.raises(ValueError):
        pgbouncer.parse_show_pools("")


def test_thresholds_grade_at_or_above_and_below_when_lower_is_worse():
    assert [grade(v, (75, 90)) for v in (74.9, 75, 89.9, 90)] == [
        "ok", "warning", "warning", "critical"]
    assert grade(0, (0, 300)) == "warning"   # archive_failing_seconds: at once
    assert [grade(v, (0.95, 0.90), True) for v in (0.99, 0.95, 0.94, 0.89)] == [
        "ok", "ok", "warning", "critical"]
    assert worst(["ok", "unknown", "warning"]) == "unknown"
    assert worst(["unknown", "critical"]) == "critical"


def test_the_thresholds_table_is_the_deploys_default_configuration():
    """THRESHOLDS declares each threshold once; the deploy's default health.json carries
    exactly its defaults, and the program accepts them."""
    from pginfra.settings import resolve
    from pginfra.steps.health import health_config as deploy_health_config

    deployed = deploy_health_config(resolve({
        "postgres_roles": [{"name": "o"}],
        "postgres_databases": [{"name": "app", "owner": "o"}]}), "db1")["thresholds"]
    assert deployed == {name: [t.warning, t.critical] for name, t in THRESHOLDS.items()}
    assert list(deployed) == list(THRESHOLDS)
    for name, t in THRESHOLDS.items():
        assert t.default == (t.warning, t.critical)
        assert t.unit in ("%", "s", "segments", "h", "MB", "ratio") and t.meaning, name
        assert t.checks and set(t.checks) <= set(ALL), name
        assert t.high is None or max(t.default) <= t.high, name
    assert [n for n, t in THRESHOLDS.items() if t.lower_is_worse] == ["cache_hit_ratio"]
    assert validate_config(_good_raw()).thresholds == {n: t.default
                                                      for n, t in THRESHOLDS.items()}


def test_the_package_keeps_what_the_deploy_and_the_entry_point_use():
    assert health.__name__ == "pginfra_host.health"
    for name in ("main", "load_config", "validate_config", "missing_listeners",
                 "listening_sockets", "CHECKS", "THRESHOLDS"):
        assert callable(getattr(health, name)) or name.isupper(), name
    assert health.missing_listeners is listeners.missing_listeners
    assert health.THRESHOLDS is THRESHOLDS


# ---------------------------------------------------------------------------------------------
# against the cluster

@needs_postgres
def test_a_healthy_cluster_is_ok(pg):
    config = write_config(pg, "healthy")
    report, checks, proc = run_json(config)
    assert proc.returncode == 0 and report["status"] == "ok", not_ok(checks)
    assert list(checks) == WITHOUT_PGBOUNCER  # the order; pgbouncer is null: omitted
    assert report["host"] == "pgt1" and report["duration_seconds"] < 10
    assert datetime.fromisoformat(report["time"]) > datetime.now(UTC) - timedelta(minutes=1)
    for c in report["checks"]:
        assert set(c) == {"check", "status", "value", "unit", "warning", "critical", "detail",
                          "data"}
    assert checks["postgres"]["data"]["in_recovery"] is False
    assert checks["postgres"]["data"]["version"].startswith("15.")
    base = checks["backup_base"]
    assert base["value"] < 1.1 and base["unit"] == "h" and base["warning"] == 180
    # pgbackrest info really ran: the stanza's one full backup, read with the passphrase of
    # conf.d (the include path beside the configuration file)
    repo = base["data"]["repos"]["1"]
    assert repo["type"] == "full" and re.fullmatch(r"\d{8}-\d{6}F", repo["label"]), base
    assert repo["code"] == 0 and repo["backups"] == 1 and repo["age_hours"] == base["value"]
    assert base["detail"].startswith(f"repo 1: full {repo['label']} finished ")
    assert "no pgbackrest verify recorded yet" in base["detail"]
    assert checks["archiver"]["data"]["pgbackrest"]["archive_command_ok"] is True
    assert checks["archiver"]["data"]["pgbackrest"]["push_errors"] == []
    assert checks["connections"]["warning"] == 75 and checks["connections"]["unit"] == "%"
    assert checks["replication"]["detail"] == "no replicas"
    assert checks["invalid_indexes"]["data"]["databases_checked"] >= 3  # postgres shop template1
    assert checks["disk_data"]["data"]["bytes"] > 0
    assert checks["disk_wal_archive"]["data"]["bytes"] > 0
    assert json.loads((pg.root / "state-healthy" / "archiver.json").read_text())[
        "failed_count"] == checks["archiver"]["data"]["failed_count"]
    proc = run(config)
    assert proc.returncode == 0
    assert proc.stdout.startswith("PGINFRA OK - 15 checks ok | connections="), proc.stdout


PERF = re.compile(r"^([a-z_]+)=(-?\d+(?:\.\d+)?)(s|%|MB)?;(\d+(?:\.\d+)?:?)?;(\d+(?:\.\d+)?:?)?$")
HELP = re.compile(r"^# HELP (pginfra_health_[a-z_]+) \S.*$")
TYPE = re.compile(r"^# TYPE (pginfra_health_[a-z_]+) gauge$")
SAMPLE = re.compile(r'^(pginfra_health_[a-z_]+)(?:\{((?:[a-z_]+="(?:[^"\\\n]|\\["\\n])*",?)*)\})?'
                    r" (-?\d+(?:\.\d+)?(?:e[+-]?\d+)?)$")


def parse_textfile(text: str) -> list[tuple[str, dict, float]]:
    """Every line well formed (HELP and TYPE before the family's samples); the samples."""
    samples, typed = [], set()
    assert text.endswith("\n")
    for line in text.splitlines():
        if line.startswith("# HELP"):
            assert HELP.match(line), line
        elif line.startswith("# TYPE"):
            match = TYPE.match(line)
            assert match, line
            typed.add(match.group(1))
        else:
            match = SAMPLE.match(line)
            assert match, line
            assert match.group(1) in typed, f"{line}: no # TYPE before it"
            labels = dict(re.findall(r'([a-z_]+)="((?:[^"\\]|\\.)*)"', match.group(2) or ""))
            samples.append((match.group(1), labels, float(match.group(3))))
    return samples


@needs_postgres
def test_output_modes_and_the_textfile(pg):
    # connections at or above 0.5 % is a warning: our own connection makes sure of it
    config = write_config(pg, "modes", th=thresholds(connections_percent=[0.5, 99]))
    proc = run(config)
    assert proc.returncode == 1
    line = proc.stdout.rstrip("\n")
    assert "\n" not in line and line.startswith("PGINFRA WARNING - connections: ")
    text, perf = line.split(" | ")
    assert "of max_connections" in text
    tokens = perf.split(" ")
    assert all(PERF.match(t) for t in tokens), tokens
    names = [PERF.match(t).group(1) for t in tokens]
    assert names[0] == "connections" and "postgres" not in names  # no value, no perfdata
    assert "cache_hit_ratio=" in perf and re.search(r"cache_hit_ratio=[\d.]+;0\.95:;0\.9:", perf)
    assert re.search(r"connections=[\d.]+%;0\.5;99( |$)", perf)

    proc = run(config, "--verbose")
    lines = proc.stdout.splitlines()
    assert proc.returncode == 1 and len(lines) == len(WITHOUT_PGBOUNCER)
    for name, text in zip(WITHOUT_PGBOUNCER, lines, strict=True):
        status, check = text.split()[:2]
        assert check == name and status in ("OK", "WARNING"), text
    connections = lines[WITHOUT_PGBOUNCER.index("connections")]
    assert connections.startswith("WARNING ") and "warn 0.5 crit 99" in connections
    assert " %" in connections

    proc = run(config, "--verbose", "--alerts-only")
    assert proc.returncode == 1 and len(proc.stdout.splitlines()) == 1
    assert proc.stdout.startswith("WARNING  connections")
    report, checks, proc = run_json(config, "--alerts-only")
    assert report["status"] == "warning" and list(checks) == ["connections"]
    proc = run(write_config(pg, "modes-ok"), "--verbose", "--alerts-only")
    assert proc.returncode == 0 and proc.stdout == f"all {len(WITHOUT_PGBOUNCER)} checks ok\n"

    # --check: only those, in the program's order whatever the order asked
    report, checks, proc = run_json(config, "--check", "invalid_indexes", "--check", "postgres")
    assert list(checks) == ["postgres", "invalid_indexes"] and proc.returncode == 0

    # the textfile: every check, well formed, atomically replaced, readable by the collector
    metrics = pg.root / "metrics"
    metrics.mkdir(exist_ok=True)
    shutil.chown(metrics, "postgres", "postgres")
    prom = metrics / "pginfra_health.prom"
    report, checks, proc = run_json(config, "--alerts-only", "--textfile", str(prom))
    samples = parse_textfile(prom.read_text())
    status = {labels["check"]: value for name, labels, value in samples
              if name == "pginfra_health_status"}
    assert list(status) == WITHOUT_PGBOUNCER  # ALL checks, even with --alerts-only
    assert status["connections"] == 1 and all(v == 0 for k, v in status.items()
                                              if k != "connections")
    values = {labels["check"]: (labels["unit"], value) for name, labels, value in samples
              if name == "pginfra_health_value"}
    assert values["connections"][0] == "%" and values["replication"] == ("MB", 0)
    levels = {(labels["check"], labels["level"]): value for name, labels, value in samples
              if name == "pginfra_health_threshold"}
    assert levels[("connections", "warning")] == 0.5
    assert levels[("cache_hit_ratio", "critical")] == 0.9
    single = {name: value for name, labels, value in samples if not labels}
    assert single["pginfra_health_exit_code"] == 1
    assert 0 < single["pginfra_health_duration_seconds"] < 30
    assert abs(single["pginfra_health_last_run_timestamp_seconds"] - time.time()) < 120
    assert stat.S_IMODE(prom.stat().st_mode) == 0o644
    assert sorted(p.name for p in metrics.iterdir()) == ["pginfra_health.prom"]  # no temp

    # the configured textfile by default, not with --check (partial) nor --no-textfile
    configured = write_config(pg, "modes-textfile", textfile=str(metrics / "configured.prom"))
    run(configured, "--check", "postgres")
    assert not (metrics / "configured.prom").exists()
    run(configured, "--no-textfile")
    assert not (metrics / "configured.prom").exists()
    run(configured)
    assert len([s for s in parse_textfile((metrics / "configured.prom").read_text())
                if s[0] == "pginfra_health_status"]) == len(WITHOUT_PGBOUNCER)
    # one that cannot be written: a warning on stderr, the exit code the checks'
    proc = run(config, "--textfile", str(pg.root / "no-such-dir" / "x.prom"))
    assert proc.returncode == 1 and "cannot write the textfile" in proc.stderr
    assert proc.stdout.startswith("PGINFRA WARNING - connections: ")


@needs_postgres
def test_idle_in_transaction_and_long_running_sessions_are_named_by_pid(pg):
    config = write_config(pg, "sessions", th=thresholds(idle_in_transaction_seconds=[1, 600],
                                                        long_running_seconds=[1, 600]))
    with Session(pg, "shop") as idle, Session(pg, "shop") as busy:
        idle.send("BEGIN; SELECT 1;")
        busy.send("SELECT pg_sleep(60) /* password=hunter2 */;")
        idle_pid, busy_pid = idle.pid("idle in transaction"), busy.pid("active")
        time.sleep(1.3)
        report, checks, proc = run_json(config)
        assert proc.returncode == 1 and report["status"] == "warning"
        assert set(not_ok(checks)) == {"idle_in_transaction", "long_running"}, not_ok(checks)
        idle_check = checks["idle_in_transaction"]
        assert f"pid {idle_pid} (postgres@shop, {idle.name})" in idle_check["detail"]
        assert idle_check["value"] >= 1 and idle_check["data"]["count"] == 1
        assert idle_check["data"]["sessions"][0]["pid"] == idle_pid
        running = checks["long_running"]
        assert f"pid {busy_pid} (postgres@shop" in running["detail"]
        assert running["value"] >= 1 and running["data"]["sessions"][0]["pid"] == busy_pid
        # the program's own session is not "running"; query texts are never shown
        assert running["data"]["active"] == 1
        assert "hunter2" not in proc.stdout and "pg_sleep" not in proc.stdout
        idle.send("SELECT 1/0;")  # aborted: still idle in a (failed) transaction
        idle.pid("idle in transaction (aborted)")
        time.sleep(1.3)  # the failed statement was the last state change
        report, checks, proc = run_json(config, "--check", "idle_in_transaction")
        assert checks["idle_in_transaction"]["status"] == "warning"
        assert "idle (aborted)" in checks["idle_in_transaction"]["detail"]


@needs_postgres
@pytest.mark.parametrize("kind", ["row", "table"])
def test_blocking_locks_name_the_waiting_and_the_blocking_pid(pg, kind):
    config = write_config(pg, f"locks-{kind}", th=thresholds(lock_wait_seconds=[1, 600]))
    hold = {"row": "BEGIN; UPDATE accounts SET balance = balance + 1 WHERE id = 1;",
            "table": "BEGIN; LOCK TABLE accounts IN SHARE MODE;"}[kind]
    with Session(pg, "shop") as holder, Session(pg, "shop") as waiter:
        holder.send(hold)
        holder_pid = holder.pid("idle in transaction")
        waiter.send("UPDATE accounts SET balance = balance - 1 WHERE id = 1;")
        waiter_pid = waiter.pid("active")
        wait_until(lambda: pg.sql(f"SELECT count(*) FROM pg_locks WHERE pid = {waiter_pid} "
                                  "AND NOT granted") == "1", "the waiter to wait")
        time.sleep(1.3)
        report, checks, proc = run_json(config)
        locks = checks["blocking_locks"]
        assert locks["status"] == "warning" and proc.returncode == 1, locks
        assert locks["value"] >= 1 and locks["unit"] == "s"
        detail = locks["detail"]
        assert f"pid {waiter_pid} (postgres@shop) waits " in detail
        assert f"blocked by pid {holder_pid} (postgres@shop, idle in transaction)" in detail
        if kind == "table":
            assert "for RowExclusiveLock on relation shop.public.accounts" in detail
        else:
            assert "for ShareLock on transaction " in detail
        session = locks["data"]["sessions"][0]
        assert session["pid"] == waiter_pid and session["blocked_by"] == [holder_pid]
        assert locks["data"]["blockers"][0]["pid"] == holder_pid
        assert "balance" not in proc.stdout  # no query text
        report, checks, proc = run_json(write_config(pg, f"locks-{kind}-default"),
                                        "--check", "blocking_locks")
        assert checks["blocking_locks"]["status"] == "ok"  # 30 s not reached yet
    wait_until(lambda: pg.sql("SELECT count(*) FROM pg_locks WHERE NOT granted") == "0",
               "the locks to go")


def archiver_stats(pg) -> dict:
    row = pg.sql("SELECT failed_count, coalesce(last_failed_time > coalesce(last_archived_time,"
                 " '-infinity'), false), (SELECT count(*) FROM pg_ls_archive_statusdir() "
                 "WHERE name LIKE '%.ready') FROM pg_stat_archiver")
    failed, failing, ready = row.split("|")
    return {"failed_count": int(failed), "failing": failing == "t", "ready": int(ready)}


def spool_errors(pg) -> list[str]:
    """The error files of pgBackRest's asynchronous archive-push in the cluster's spool."""
    return sorted(p.name for p in (pg.pgbr / "spool" / "archive" / STANZA / "out").glob(
        "*.error"))


@needs_pgbackrest
def test_archiver_critical_when_the_repository_cannot_be_written_then_recovers(pg):
    """repo 1 read-only: archive-push fails for real, pgBackRest leaves its error file in the
    spool, PostgreSQL keeps the segment (.ready)."""
    config = write_config(pg, "archiver")
    directories = [pg.archive, *(p for p in (pg.archive / "archive").rglob("*") if p.is_dir()),
                   pg.archive / "archive"]
    modes = {d: stat.S_IMODE(d.stat().st_mode) for d in directories}
    before = archiver_stats(pg)["failed_count"]
    pg.sql("CREATE TABLE IF NOT EXISTS filler (x int)")
    try:
        for directory in directories:
            os.chmod(directory, 0o500)
        pg.sql("INSERT INTO filler VALUES (1)")
        segment = pg.sql("SELECT pg_walfile_name(pg_switch_wal())")
        # PostgreSQL tries three times, then waits a minute: the error file stays meanwhile
        wait_until(lambda: archiver_stats(pg)["failed_count"] >= before + 3
                   and archiver_stats(pg)["failing"] and spool_errors(pg) == [f"{segment}.error"],
                   "three failures and pgBackRest's error file", timeout=60)
        report, checks, proc = run_json(config, "--check", "archiver")
        archiver = checks["archiver"]
        assert archiver["status"] == "critical" and proc.returncode == 2, archiver
        detail = archiver["detail"]
        assert f"wal_archive_dir {pg.archive} is not writable by postgres" in detail
        assert "archiving fails for " in detail
        assert (f"pgBackRest archive-push fails for 1 segment(s), 1 waiting in pg_wal: segment "
                f"{segment} (exit code 104): repo1: [FileOpenError] unable to open file '"
                f"{pg.archive}/archive/{STANZA}/15-1/") in detail, detail
        assert "for write: [13] Permission denied" in detail
        assert detail.endswith("; PostgreSQL keeps the WAL in pg_wal until it is archived: "
                               "nothing is lost until that disk fills")
        errors = archiver["data"]["pgbackrest"]["push_errors"]
        assert [(e["segment"], e["code"]) for e in errors] == [(segment, 104)]
        assert archiver["data"]["failing"] is True and archiver["value"] >= 1
        assert archiver["unit"] == "segments"
        proc = run(config, "--check", "archiver", "--check", "postgres")
        assert proc.stdout.startswith(f"PGINFRA CRITICAL - archiver: wal_archive_dir {pg.archive}")
    finally:
        for directory, mode in modes.items():
            os.chmod(directory, mode)
        pg.sql("INSERT INTO filler VALUES (2)")
        pg.switch_wal()
        wait_until(lambda: not archiver_stats(pg)["failing"] and not archiver_stats(pg)["ready"],
                   "archiving to recover")
    assert spool_errors(pg) == []  # pgBackRest's next run cleared them
    run_json(config, "--check", "archiver")  # failed_count may have risen meanwhile
    report, checks, proc = run_json(config, "--check", "archiver")
    assert checks["archiver"]["status"] == "ok" and checks["archiver"]["value"] == 0
    assert checks["archiver"]["detail"].startswith("archiving works: the last archived ")
    # An error file of a segment archived since (or of a run when nothing waits) is history.
    out = pg.pgbr / "spool" / "archive" / STANZA / "out"
    for name in (f"{segment}.error", "global.error"):
        (out / name).write_text("104\nrepo1: [FileOpenError] an old failure")
    try:
        report, checks, proc = run_json(config, "--check", "archiver")
        assert checks["archiver"]["status"] == "ok", checks["archiver"]
        assert checks["archiver"]["data"]["pgbackrest"]["stale_push_errors"] == 2
    finally:
        for name in (f"{segment}.error", "global.error"):
            (out / name).unlink()
    # A failure between two runs, even one archived since, is a warning in the next run.
    state_file = pg.root / "state-archiver" / "archiver.json"
    state = json.loads(state_file.read_text())
    state["failed_count"] -= 1
    state_file.write_text(json.dumps(state))
    report, checks, proc = run_json(config, "--check", "archiver")
    assert checks["archiver"]["status"] == "warning" and proc.returncode == 1
    assert "failed_count rose from " in checks["archiver"]["detail"]
    report, checks, proc = run_json(config, "--check", "archiver")
    assert checks["archiver"]["status"] == "ok"


@needs_postgres
def test_an_archive_command_that_is_not_pgbackrest_is_a_warning_when_backup_is_set():
    cluster = new_cluster(prefix="pginfra-health-basic-")  # throwaway_pg's: basic_archive
    try:
        report, checks, proc = run_json(write_config(cluster, "basic"), "--check", "archiver")
        archiver = checks["archiver"]
        assert archiver["status"] == "warning" and proc.returncode == 1, archiver
        assert archiver["detail"].startswith(
            "archive_library basic_archive is set: PostgreSQL uses it and ignores "
            "archive_command, WAL does not go to pgBackRest")
        assert archiver["data"]["pgbackrest"]["archive_command_ok"] is False
        # without "backup", how the server archives is its own business
        report, checks, proc = run_json(write_config(cluster, "basic-alone", no_backup=True),
                                        "--check", "archiver")
        assert checks["archiver"]["status"] == "ok", checks["archiver"]
        assert "pgbackrest" not in checks["archiver"]["data"]
    finally:
        drop_cluster(cluster)


@pytest.mark.parametrize("command, library, problem", [
    ("pgbackrest --stanza=main archive-push %p", "", None),
    ("/usr/bin/pgbackrest --config=/etc/pgbackrest/pgbackrest.conf --stanza main "
     "archive-push %p", "", None),
    ("pgbackrest --stanza=main archive-push %p", "basic_archive",
     "archive_library basic_archive is set: PostgreSQL uses it and ignores archive_command"),
    ("pgbackrest --stanza=other archive-push %p", "", "(its stanza is other)"),
    ("pgbackrest archive-push %p", "", "(no --stanza)"),
    ("pgbackrest --stanza=main archive-get %f \"%p\"", "", "(not archive-push %p)"),
    ("cp %p /mnt/server/archivedir/%f", "", "(it runs cp)"),
    ("'unbalanced %p", "", "(it runs 'unbalanced)"),
])
def test_archive_command_is_pgbackrests_archive_push_for_the_stanza(command, library, problem):
    found = archiving.archiving_problem(command, library, "main")
    if problem is None:
        assert found is None
    else:
        assert problem in found and "\n" not in found
        assert "/mnt/server" not in found  # the command itself is not shown


@needs_postgres
@pytest.mark.parametrize("dump, expected", [
    (30.0, ("warning", "finished 30.0 h ago")),
    (60.0, ("critical", "finished 2.5 days ago")),
    (None, ("critical", "no verified dump recorded in ")),
    ("{not json", ("unknown", "is malformed")),
    ('{"job": "dump", "time": 5}', ("unknown", "is malformed")),
], ids=["old", "too-old", "missing", "malformed", "no-time"])
def test_dump_age_from_the_last_success_file(pg, dump, expected):
    name = f"backup-{uuid.uuid4().hex[:6]}"
    state = write_backup_state(pg.root / name, dump)
    config = write_config(pg, name, backup=state)
    report, checks, proc = run_json(config, "--check", "backup_dump")
    status, text = expected
    assert checks["backup_dump"]["status"] == status and text in checks["backup_dump"]["detail"]
    assert proc.returncode == {"warning": 1, "critical": 2, "unknown": 3}[status]
    if dump == 30.0:
        assert checks["backup_dump"]["value"] == pytest.approx(30, abs=0.1)
        assert checks["backup_dump"]["warning"] == 26


# ---------------------------------------------------------------------------------------------
# backup_base: pgBackRest's info, recorded (tests/unit/data/health-pgbackrest)

INFO_NOW = 1796054292  # the stop of info-two-repos.json's newest backup (repo 2)


def recorded_info(name: str, stanza: str | None = None) -> dict:
    text = (DATA / f"{name}.json").read_text()
    return backups.parse_pgbackrest_info(text, stanza or json.loads(text)[0]["name"])


def settings_for(stanza: str = "pgbr", repos=(1, 2)):
    return BackupSettings("/var/lib/pginfra/backup", stanza,
                          "/etc/pgbackrest/pgbackrest.conf", "/var/spool/pgbackrest",
                          tuple(repos))


def test_pgbackrest_info_json_is_read_exactly():
    info = recorded_info("info-two-repos")
    # above 2^53: a float would have rounded it
    assert info["system_ids"] == {1: 7713989343216642905, 2: 7713989343216642905}
    assert info["code"] == 0 and info["message"] == "ok" and info["backup_running"] is False
    assert info["repos"] == {1: {"code": 0, "message": "ok", "cipher": "aes-256-cbc"},
                             2: {"code": 0, "message": "ok", "cipher": "aes-256-cbc"}}
    assert [(b["repo"], b["type"]) for b in info["backups"]] == [
        (2, "full"), (2, "diff"), (1, "full"), (1, "full"), (1, "incr"), (2, "full"),
        (1, "incr"), (1, "incr"), (2, "incr")]
    assert info["backups"][-1] == {"repo": 2, "label": "20261130-155518F_20261130-155809I",
                                   "type": "incr", "start": 1796054289, "stop": 1796054292,
                                   "error": False}
    assert recorded_info("info-backup-running")["backup_running"] is True
    down = recorded_info("info-s3-down")
    assert down["code"] == 4 and down["repos"][2]["code"] == 99
    never = recorded_info("info-never-created")
    assert never["repos"] == {1: {"code": 1, "message": "missing stanza path", "cipher": "none"}}
    assert never["backups"] == [] and never["system_ids"] == {}


@pytest.mark.parametrize("text, error", [
    ((DATA / "info-two-repos.json").read_text(), "stanza main is not in it (it lists ['pgbr'])"),
    ("", "not JSON"),
    ("ERROR: [073]: unable to list file info", "not JSON"),
    ('{"name": "main"}', "not a JSON list"),
    ('[{"name": "main"}]', "no 'status'"),
    ('[{"name": "main", "status": {"code": "0"}, "repo": [], "backup": []}]',
     "stanza status: no 'code' (int)"),
    ('[{"name": "main", "status": {"code": 0}, "repo": [{"key": true, "status": {"code": 0}}],'
     ' "backup": []}]', "repo[0]: no 'key' (int)"),
    ('[{"name": "main", "status": {"code": 0}, "repo": [], "backup": [{"label": "x", '
     '"type": "full", "database": {"repo-key": 1}, "timestamp": {"start": 1}}]}]',
     "backup[0] timestamp: no 'stop' (int)"),
])
def test_pgbackrest_info_that_is_not_a_report_is_refused(text, error):
    with pytest.raises(ValueError) as caught:
        backups.parse_pgbackrest_info(text, "main")
    assert error in str(caught.value)


@pytest.mark.parametrize("hours, pair, status", [
    (5, (180, 348), "ok"), (200, (180, 348), "warning"), (400, (180, 348), "critical"),
    (10, (10.01, 20), "warning"),  # only repo 1's newest (59 s older) reaches it
], ids=["ok", "warning", "critical", "worst-repo"])
def test_backup_base_ages_per_repository_against_the_thresholds(hours, pair, status):
    check = backups.base_backup_result(recorded_info("info-two-repos"), settings_for(), pair,
                                       INFO_NOW + hours * 3600)
    assert check["status"] == status and check["unit"] == "h"
    assert (check["warning"], check["critical"]) == pair
    repos = check["data"]["repos"]
    assert repos["1"]["label"] == "20261130-155348F_20261130-155712I"
    assert repos["1"]["type"] == "incr" and repos["1"]["stop"] == "2026-11-30T15:57:13.000000Z"
    assert repos["2"]["label"] == "20261130-155518F_20261130-155809I"
    assert repos["1"]["backups"] == 5 and repos["2"]["backups"] == 4
    assert repos["1"]["age_hours"] == pytest.approx(hours + 59 / 3600, abs=0.01)
    assert repos["2"]["age_hours"] == pytest.approx(hours, abs=0.01)
    assert check["value"] == repos["1"]["age_hours"]  # the oldest of the newest
    assert "repo 1: incr 20261130-155348F_20261130-155712I finished " in check["detail"]
    assert "repo 2: incr 20261130-155518F_20261130-155809I finished " in check["detail"]
    if hours == 10:
        assert repos["1"]["status"] == "warning" and repos["2"]["status"] == "ok"
        assert check["detail"].startswith("repo 1: ")  # the worst first
    if hours == 200:
        assert "finished 8.3 days ago" in check["detail"]


def test_a_repository_pgbackrest_cannot_reach_is_critical_with_its_message():
    info = recorded_info("info-s3-down")  # S3 refusing connections
    check = backups.base_backup_result(info, settings_for(), (180, 348), INFO_NOW)
    assert check["status"] == "critical"
    assert check["detail"].startswith(
        "repo 2: [HostConnectError] unable to connect to 'localhost:9443': [111] Connection "
        "refused (pgBackRest status 99); repo 1: diff 20261130-154138F_20261130-154157D "
        "finished ")
    assert check["data"]["repos"]["2"] == {
        "code": 99, "status": "critical", "backups": 0,
        "message": "[HostConnectError] unable to connect to 'localhost:9443': [111] Connection "
                   "refused"}
    assert check["value"] == check["data"]["repos"]["1"]["age_hours"]
    # a host whose only repository is repo 1 does not care
    alone = backups.base_backup_result(info, settings_for(repos=[1]), (180, 348), INFO_NOW)
    assert alone["status"] == "ok", alone["detail"]
    denied = backups.base_backup_result(recorded_info("info-repo2-denied"),
                                        settings_for("main"), (180, 348), 1796062040 + 60)
    assert denied["status"] == "critical"
    assert denied["detail"].startswith("repo 2: [PathOpenError] unable to list file info for "
                                       "path '")
    assert "[13] Permission denied (pgBackRest status 99); repo 1: full 20261130-180718F " \
        "finished 60.0 s ago" in denied["detail"]


def test_a_stanza_never_created_no_backup_and_an_unknown_repository_are_critical():
    main = settings_for("main", repos=[1])
    never = backups.base_backup_result(recorded_info("info-never-created"), main, (180, 348),
                                       INFO_NOW)
    assert never["status"] == "critical" and never["value"] is None
    assert never["detail"] == ("repo 1: missing stanza path (pgBackRest status 1: stanza-create "
                               "has not run for stanza main?); no pgbackrest verify recorded yet")
    empty = backups.base_backup_result(recorded_info("info-no-backup"), main, (180, 348),
                                       INFO_NOW)
    assert empty["status"] == "critical" and empty["value"] is None
    assert empty["detail"] == "no backup in repo 1; no pgbackrest verify recorded yet"
    assert empty["data"]["repos"]["1"] == {"code": 2, "message": "no valid backups",
                                           "backups": 0, "status": "critical"}
    unknown = backups.base_backup_result(recorded_info("info-one-repo"),
                                         settings_for("main", repos=[1, 2]), (180, 348),
                                         1796061948)
    assert unknown["status"] == "critical"
    assert unknown["detail"].startswith("repo 2 is not in pgBackRest's configuration "
                                        "/etc/pgbackrest/pgbackrest.conf (it has repo(s) 1); "
                                        "repo 1: diff 20261130-180505F_20261130-180546D ")


def test_a_backup_in_progress_is_said_and_is_no_problem():
    check = backups.base_backup_result(recorded_info("info-backup-running"),
                                       settings_for("main"), (180, 348), 1796062043 + 3600)
    assert check["status"] == "ok" and check["data"]["backup_running"] is True
    assert check["detail"].endswith("; a backup is running now")


def test_stanza_problems_page_checksum_errors_and_clock_skew():
    info = recorded_info("info-two-repos")
    mismatch = {**info, "code": 5, "message": "database mismatch across repos"}
    check = backups.base_backup_result(mismatch, settings_for(), (180, 348), INFO_NOW)
    assert check["status"] == "critical"
    assert check["detail"].startswith("stanza pgbr: database mismatch across repos "
                                      "(pgBackRest status 5); repo 1: ")
    flagged = {**info, "backups": [*info["backups"][:-1], {**info["backups"][-1],
                                                           "error": True}]}
    check = backups.base_backup_result(flagged, settings_for(), (180, 348), INFO_NOW)
    assert check["status"] == "warning"
    assert check["detail"].startswith("repo 2: backup 20261130-155518F_20261130-155809I found "
                                      "page checksum errors in the database")
    early = backups.base_backup_result(info, settings_for(), (180, 348), INFO_NOW - 3600)
    assert early["status"] == "unknown"
    assert "finished in the future (2026-11-30T15:58:12.000000Z; is the clock right?)" in \
        early["detail"]


def _fake_pgbackrest(tmp_path, monkeypatch, script: str, run_timeout=4):
    """backups.PGBACKREST replaced by a shell script (it records its arguments); the check
    run in this process with a configuration whose run_timeout gives pgbackrest half."""
    fake = tmp_path / "pgbackrest"
    fake.write_text(f"#!/bin/sh\nprintf '%s\\n' \"$@\" > {tmp_path}/argv\n{script}\n")
    fake.chmod(0o755)
    monkeypatch.setattr(backups, "PGBACKREST", str(fake))
    raw = _good_raw()
    raw.update(run_timeout=run_timeout, backup={**raw["backup"], "repos": [1],
                                                 "state_dir": str(tmp_path)})
    check = backups.check_backup_base(Context(validate_config(raw)))
    argv = (tmp_path / "argv").read_text().splitlines() if (tmp_path / "argv").exists() \
        else None
    return check, argv


def test_pgbackrest_info_that_hangs_fails_or_prints_nonsense(tmp_path, monkeypatch):
    one = (DATA / "info-one-repo.json").read_text()
    check, argv = _fake_pgbackrest(tmp_path, monkeypatch, f"cat <<'EOF'\n{one}\nEOF")
    assert check["data"]["repos"]["1"]["label"] == "20261130-180505F_20261130-180546D"
    # half the run_timeout (2 s), io-timeout a fifth of that (at least 1 s)
    assert argv == ["--config=/etc/pgbackrest/pgbackrest.conf",
                    "--config-include-path=/etc/pgbackrest/conf.d", "--stanza=main",
                    "--log-level-console=off", "--log-level-file=off", "--io-timeout=1",
                    "--output=json", "info"]
    started = time.monotonic()
    check, _ = _fake_pgbackrest(tmp_path, monkeypatch, "exec sleep 30")
    assert time.monotonic() - started < 10
    assert check["status"] == "unknown"
    assert check["detail"] == ("pgbackrest info did not finish within 2 s (a repository that "
                               "does not answer?)")
    check, _ = _fake_pgbackrest(tmp_path, monkeypatch, "exit 56")
    assert check["status"] == "critical"
    assert check["detail"] == "pgbackrest info failed (exit code 56): no message"
    check, _ = _fake_pgbackrest(tmp_path, monkeypatch, "echo 'WARN: something'; echo '[]'")
    assert check["status"] == "unknown"
    assert check["detail"].startswith("pgbackrest info printed no usable report: not JSON")
    monkeypatch.setattr(backups, "PGBACKREST", str(tmp_path / "absent"))
    raw = _good_raw()
    check = backups.check_backup_base(Context(validate_config(raw)))
    assert check["status"] == "critical"
    assert check["detail"] == (f"{tmp_path / 'absent'} is missing: pgBackRest is not installed "
                               "(apt-get install pgbackrest)")


VERIFY_SAMPLE = {"time": "2026-11-30T18:00:00Z",
                 "repos": {"1": {"ok": True, "problems": []},
                           "2": {"ok": False,
                                 "problems": ["backup 20261130-154138F: checksum invalid: 1"]}}}


@pytest.mark.parametrize("text, status, says", [
    (None, "ok", "; no pgbackrest verify recorded yet"),
    (json.dumps(VERIFY_SAMPLE), "critical",
     "last pgbackrest verify (2026-11-30T18:00:00.000000Z) found: repo 2: backup "
     "20261130-154138F: checksum invalid: 1"),
    (json.dumps({**VERIFY_SAMPLE, "repos": {"1": {"ok": True, "problems": []}}}), "ok",
     "; last pgbackrest verify (2026-11-30T18:00:00.000000Z): ok"),
    (json.dumps({**VERIFY_SAMPLE, "repos": {"1": {"ok": False}}}), "critical",
     "found: repo 1: not ok"),
    ("{", "unknown", "pgbackrest-verify.json is malformed: "),
    (json.dumps({"time": "2026-11-30T18:00:00Z"}), "unknown", "no \"repos\" object"),
    (json.dumps({**VERIFY_SAMPLE, "repos": {"1": {"ok": "yes"}}}), "unknown",
     "repo 1: not {\"ok\": true|false"),
], ids=["none", "a-problem", "ok", "not-ok", "not-json", "no-repos", "bad-ok"])
def test_the_last_verify_record(tmp_path, text, status, says):
    path = tmp_path / "pgbackrest-verify.json"
    if text is not None:
        path.write_text(text)
    verify, problem = backups.read_verify_record(path)
    check = backups.base_backup_result(recorded_info("info-two-repos"), settings_for(),
                                       (180, 348), INFO_NOW + 3600, verify, problem, str(path))
    assert check["status"] == status and says in check["detail"], check["detail"]
    if status == "critical":
        assert check["detail"].startswith("last pgbackrest verify")  # the worst first
        assert check["data"]["verify"]["path"] == str(path)


def test_pgbackrests_error_files_are_read_and_summarized(tmp_path):
    code, message = archiving.parse_async_status(
        (DATA / "00000001000000000000000A.error").read_text())
    assert code == 104 and message.startswith("repo1: [FileOpenError] unable to open file '")
    assert message.endswith("' for write: [13] Permission denied")
    code, message = archiving.parse_async_status((DATA / "s3-refused.error").read_text())
    assert (code, message) == (104, (
        "repo2: [HostConnectError] unable to load info file '/pgbr/archive/pgbr/archive.info' or "
        "'/pgbr/archive/pgbr/archive.info.copy': HostConnectError: unable to connect to "
        "'localhost:9443': [111] Connection refused"))
    assert archiving.parse_async_status("garbage") == (None, "garbage")
    assert len(backups.summarize_pgbackrest_error("x" * 1000)) == 300
    # a spool: error files of segments, of a whole run (global), status files that are ok
    out = tmp_path / "archive" / "main" / "out"
    out.mkdir(parents=True)
    shutil.copy(DATA / "00000001000000000000000A.error", out)
    shutil.copy(DATA / "s3-refused.error", out / "00000001000000000000000B.error")
    (out / "000000010000000000000009.ok").write_text("")
    (out / "global.error").write_text("103\nunable to find a valid repository:\n"
                                      "repo1: [FileMissingError] unable to load info file\n"
                                      "HINT: has a stanza-create been performed?")
    errors, problem = archiving.push_errors(str(tmp_path), "main")
    assert problem is None
    assert [(e["segment"], e["code"]) for e in errors] == [
        ("00000001000000000000000A", 104), ("00000001000000000000000B", 104), ("global", 103)]
    assert errors[2]["message"] == ("unable to find a valid repository: repo1: "
                                    "[FileMissingError] unable to load info file")
    still = archiving.pending_push_errors(errors, {"00000001000000000000000B"})
    assert [e["segment"] for e in still] == ["00000001000000000000000B", "global"]
    assert archiving.pending_push_errors(errors, set()) == []
    assert archiving.push_errors(str(tmp_path / "nothing-pushed-yet"), "main") == ([], None)


# ---------------------------------------------------------------------------------------------
# backup_base: pgbackrest info for real

@needs_pgbackrest
def test_backup_base_runs_pgbackrest_info_and_reads_the_verify_record(pg):
    config = write_config(pg, "base-warn", th=thresholds(backup_base_age_hours=[0, 1000]))
    report, checks, proc = run_json(config, "--check", "backup_base")
    base = checks["backup_base"]
    assert base["status"] == "warning" and proc.returncode == 1, base
    assert base["value"] >= 0 and (base["warning"], base["critical"]) == (0, 1000)
    label = base["data"]["repos"]["1"]["label"]
    assert base["detail"].startswith(f"repo 1: full {label} finished ")
    assert base["data"]["stanza_status"] == {"code": 0, "message": "ok"}
    config = write_config(pg, "base-crit", th=thresholds(backup_base_age_hours=[0, 0]))
    report, checks, proc = run_json(config, "--check", "backup_base")
    assert checks["backup_base"]["status"] == "critical" and proc.returncode == 2
    proc = run(config, "--check", "backup_base")
    assert re.match(rf"PGINFRA CRITICAL - backup_base: repo 1: full {label} finished .* \| "
                    r"backup_base=[\d.]+;0;0$", proc.stdout.strip()), proc.stdout
    # pginfra-backup verify's record: a problem is critical whatever the age
    state = write_backup_state(pg.root / "verify-bad", verify={
        "1": {"ok": False, "problems": [f"backup {label}: checksum invalid: 1"]}})
    report, checks, proc = run_json(write_config(pg, "verify-bad", backup=state),
                                    "--check", "backup_base")
    base = checks["backup_base"]
    assert base["status"] == "critical" and proc.returncode == 2
    assert re.match(rf"last pgbackrest verify \(\S+Z\) found: repo 1: backup {label}: "
                    r"checksum invalid: 1; repo 1: full ", base["detail"]), base["detail"]
    assert base["data"]["verify"]["repos"] == {
        "1": {"ok": False, "problems": [f"backup {label}: checksum invalid: 1"]}}
    state = write_backup_state(pg.root / "verify-ok", verify={"1": {"ok": True,
                                                                   "problems": []}})
    report, checks, proc = run_json(write_config(pg, "verify-ok", backup=state),
                                    "--check", "backup_base")
    assert checks["backup_base"]["status"] == "ok" and "): ok" in checks["backup_base"]["detail"]


@needs_pgbackrest
def test_backup_base_of_a_stanza_never_created_then_without_a_backup(pg):
    repo = pg.root / "repo-fresh"
    repo.mkdir(mode=0o750)
    shutil.chown(repo, "postgres", "postgres")
    directory = pg.root / "pgbackrest-fresh"
    conf = write_pgbackrest_config(directory, (
        f"[global]\nrepo1-path={repo}\nlock-path={pg.pgbr}/lock\nlog-path={pg.pgbr}/log\n"
        f"\n[fresh]\npg1-path={pg.data}\npg1-port={pg.port}\npg1-socket-path={pg.root}\n"),
        secrets="")
    config = write_config(pg, "fresh", pgbr={"stanza": "fresh", "pgbackrest_config": str(conf)})
    report, checks, proc = run_json(config, "--check", "backup_base")
    base = checks["backup_base"]
    assert base["status"] == "critical" and proc.returncode == 2 and base["value"] is None
    assert base["detail"] == ("repo 1: missing stanza path (pgBackRest status 1: stanza-create "
                              "has not run for stanza fresh?); no pgbackrest verify recorded yet")
    pg.as_postgres(PGBACKREST, f"--config={conf}", f"--config-include-path={directory}/conf.d",
                   "--stanza=fresh", "stanza-create")
    report, checks, proc = run_json(config, "--check", "backup_base")
    base = checks["backup_base"]
    assert base["status"] == "critical" and proc.returncode == 2
    assert base["detail"] == "no backup in repo 1; no pgbackrest verify recorded yet"
    assert base["data"]["repos"]["1"]["code"] == 2


@needs_pgbackrest
def test_backup_base_names_a_repository_pgbackrest_cannot_read(pg):
    """pg's configuration and passphrase, and a repo 2 postgres may not open."""
    repo2 = pg.root / "repo2-denied"
    repo2.mkdir(mode=0o700)
    shutil.chown(repo2, "postgres", "postgres")
    repo2.chmod(0o000)
    directory = pg.root / "pgbackrest-two"
    conf = write_pgbackrest_config(
        directory, pg.pgbr_config.read_text().replace("[global]\n", f"[global]\nrepo2-path="
                                                      f"{repo2}\n", 1),
        secrets=(pg.pgbr / "conf.d" / "secrets.conf").read_text())
    config = write_config(pg, "two", pgbr={"pgbackrest_config": str(conf), "repos": [1, 2]})
    report, checks, proc = run_json(config, "--check", "backup_base")
    base = checks["backup_base"]
    assert base["status"] == "critical" and proc.returncode == 2, base
    assert base["detail"].startswith(f"repo 2: [PathOpenError] unable to list file info for "
                                     f"path '{repo2}/backup': [13] Permission denied "
                                     "(pgBackRest status 99); repo 1: full ")
    assert base["data"]["repos"]["2"]["code"] == 99
    assert base["data"]["stanza_status"]["code"] == 4  # different across repos
    assert base["value"] == base["data"]["repos"]["1"]["age_hours"]
    # a host that does not use repo 2 is fine; one that names a repo pgBackRest lacks is not
    report, checks, proc = run_json(write_config(pg, "two-1", pgbr={
        "pgbackrest_config": str(conf), "repos": [1]}), "--check", "backup_base")
    assert checks["backup_base"]["status"] == "ok", checks["backup_base"]
    report, checks, proc = run_json(write_config(pg, "three", pgbr={"repos": [1, 3]}),
                                    "--check", "backup_base")
    assert checks["backup_base"]["status"] == "critical"
    assert checks["backup_base"]["detail"].startswith(
        f"repo 3 is not in pgBackRest's configuration {pg.pgbr_config} (it has repo(s) 1)")


@needs_pgbackrest
def test_backup_base_when_pgbackrest_itself_fails(pg):
    directory = pg.root / "pgbackrest-bare"
    conf = write_pgbackrest_config(directory, pg.pgbr_config.read_text())  # no conf.d at all
    config = write_config(pg, "bare", pgbr={"pgbackrest_config": str(conf)})
    report, checks, proc = run_json(config, "--check", "backup_base")
    base = checks["backup_base"]
    assert base["status"] == "critical" and proc.returncode == 2
    assert base["detail"] == (f"pgbackrest info failed (exit code 73): ERROR: [073]: unable to "
                              f"list file info for missing path '{directory}/conf.d'")
    (directory / "conf.d").mkdir()
    shutil.chown(directory / "conf.d", "postgres", "postgres")  # but no passphrase in it
    report, checks, proc = run_json(config, "--check", "backup_base")
    assert checks["backup_base"]["detail"] == (
        "pgbackrest info failed (exit code 37): ERROR: [037]: info command requires option: "
        "repo1-cipher-pass")
    assert checks["backup_base"]["data"]["exit_code"] == 37
    # asked for by name where "backup" is null: unknown, saying so
    report, checks, proc = run_json(write_config(pg, "no-backup", no_backup=True),
                                    "--check", "backup_base")
    assert checks["backup_base"]["status"] == "unknown" and proc.returncode == 3
    assert "not configured" in checks["backup_base"]["detail"]
    report, checks, proc = run_json(write_config(pg, "no-backup"))
    assert "backup_base" in checks and "backup_dump" in checks
    report, checks, proc = run_json(write_config(pg, "no-backup-all", no_backup=True))
    assert "backup_base" not in checks and "backup_dump" not in checks


@needs_postgres
def test_pgbouncer_not_answering_is_critical_naming_the_port(pg):
    port = free_port()
    config = write_config(pg, "pgbouncer", pgbouncer={"port": port})
    report, checks, proc = run_json(config)
    assert list(checks) == WITHOUT_HA and proc.returncode == 2
    assert not_ok(checks).keys() == {"pgbouncer"}
    assert checks["pgbouncer"]["status"] == "critical"
    assert f"PgBouncer did not answer on port {port} " in checks["pgbouncer"]["detail"]
    proc = run(config)
    assert proc.stdout.startswith(f"PGINFRA CRITICAL - pgbouncer: PgBouncer did not answer on "
                                  f"port {port} ")
    # asked for by name where it is not configured: unknown, saying so
    report, checks, proc = run_json(write_config(pg, "no-pgbouncer"), "--check", "pgbouncer")
    assert checks["pgbouncer"]["status"] == "unknown" and proc.returncode == 3
    assert "not configured" in checks["pgbouncer"]["detail"]


@needs_postgres
def test_postgres_not_answering_is_critical_and_the_rest_still_runs(pg):
    port = free_port()
    config = write_config(pg, "down", port=port)
    report, checks, proc = run_json(config)
    assert proc.returncode == 2 and report["status"] == "critical"
    assert checks["postgres"]["status"] == "critical"
    assert f"cannot connect on port {port} in {pg.root}" in checks["postgres"]["detail"]
    for name in [*SQL_CHECKS, "archiver"]:
        assert checks[name]["status"] == "unknown", checks[name]
        assert checks[name]["detail"].startswith("PostgreSQL did not answer: ")
    for name in ("disk_data", "disk_wal_archive", "backup_base", "backup_dump"):
        assert checks[name]["status"] == "ok", checks[name]
    assert checks["disk_data"]["data"]["bytes"] is None
    proc = run(config)
    assert proc.stdout.startswith("PGINFRA CRITICAL - postgres: PostgreSQL did not answer")
    # the unknowns share one reason: said once
    assert proc.stdout.count("PostgreSQL did not answer") == 2
    assert "connections, long_running, idle_in_transaction, blocking_locks, archiver" in \
        proc.stdout


@needs_postgres
def test_a_query_that_would_hang_times_out_and_the_rest_is_ok(pg, hang_db):
    config = write_config(pg, "hang", query_timeout=2)
    started = time.monotonic()
    report, checks, proc = run_json(config, timeout=30)
    elapsed = time.monotonic() - started
    assert elapsed < 10, elapsed  # one connect_timeout (2 s) and some
    invalid = checks["invalid_indexes"]
    assert invalid["status"] == "unknown" and proc.returncode == 3
    # connect_timeout or lock_timeout (both 2 s) ends the wait, whichever comes first
    assert re.search(f"database {hang_db}: (connection|query) timed out after 2 s",
                     invalid["detail"]), invalid["detail"]
    assert invalid["data"]["databases_checked"] >= 3
    assert not_ok(checks).keys() == {"invalid_indexes"}, not_ok(checks)


@needs_postgres
def test_a_statement_timeout_makes_the_check_unknown(pg):
    """pg_namespace held in ACCESS EXCLUSIVE mode in shop: a connection there starts, but the
    statement that needs it is cut short by the timeouts; the run goes on."""
    config = write_config(pg, "locked-catalog", query_timeout=1)
    with Session(pg, "shop") as holder:
        holder.send("BEGIN; LOCK TABLE pg_catalog.pg_namespace IN ACCESS EXCLUSIVE MODE;")
        holder.pid("idle in transaction")
        report, checks, proc = run_json(config, "--check", "postgres", "--check",
                                        "invalid_indexes", "--check", "wraparound",
                                        timeout=30)
    assert checks["postgres"]["status"] == "ok" and checks["wraparound"]["status"] == "ok"
    invalid = checks["invalid_indexes"]
    assert invalid["status"] == "unknown" and proc.returncode == 3
    assert "database shop: query timed out after 1 s" in invalid["detail"]
    assert report["duration_seconds"] < 10


@needs_postgres
def test_the_watchdog_ends_the_run_and_still_reports(pg, hang_db):
    config = write_config(pg, "watchdog", query_timeout=20, run_timeout=2)
    started = time.monotonic()
    report, checks, proc = run_json(config, timeout=30)
    elapsed = time.monotonic() - started
    assert elapsed < 5, elapsed  # SIGALRM at 2 s, not the backstop thread at 7 s
    assert list(checks) == WITHOUT_PGBOUNCER  # every check reported
    assert checks["invalid_indexes"]["status"] == "unknown"
    assert checks["invalid_indexes"]["detail"] == "run_timeout of 2 s reached"
    assert checks["postgres"]["status"] == "ok"
    assert proc.returncode == 3


@needs_postgres
def test_the_backstop_ends_a_run_the_alarm_cannot_interrupt(pg, hang_db):
    """SIGALRM blocked (the mask survives exec): the thread that waits run_timeout + 5 s
    prints the report and ends the process."""
    config = write_config(pg, "backstop", query_timeout=20, run_timeout=1)
    cmd = [HOST_PYTHON, str(PROGRAM), "--config", str(config), "--json"]
    if os.geteuid() == 0:
        cmd = ["runuser", "-u", "postgres", "--", *cmd]
    started = time.monotonic()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=ENV, cwd="/", timeout=30,
                          preexec_fn=lambda: signal.pthread_sigmask(signal.SIG_BLOCK,
                                                                    {signal.SIGALRM}))
    elapsed = time.monotonic() - started
    assert 5.5 < elapsed < 12, elapsed
    report = json.loads(proc.stdout)
    checks = {c["check"]: c for c in report["checks"]}
    assert proc.returncode == report["exit_code"] == 3
    assert checks["invalid_indexes"]["detail"] == "run_timeout of 1 s reached"
    assert checks["postgres"]["status"] == "ok"


@needs_postgres
def test_replication_on_the_primary_and_on_a_streaming_standby(pg):
    standby = pg.standby("healthstandby")
    root = standby.root
    try:
        wait_until(lambda: pg.sql("SELECT count(*) FROM pg_stat_replication WHERE "
                                  "application_name = 'healthstandby' AND state = 'streaming'")
                   == "1", "the standby to stream")

        # the standby's own run: in recovery; what the primary does is ok here
        empty = root / "backup-empty"
        empty.mkdir(mode=0o755)
        standby_config = write_config(standby, "standby", backup=empty)
        report, checks, proc = run_json(standby_config)
        assert proc.returncode == 0, not_ok(checks)
        assert checks["postgres"]["data"]["in_recovery"] is True
        assert "standby" in checks["postgres"]["detail"]
        assert checks["archiver"]["detail"] == "standby: the primary archives"
        assert checks["backup_base"]["detail"].startswith("standby: ")  # no file needed
        replication = checks["replication"]
        assert replication["data"]["role"] == "standby"
        assert replication["data"]["receiver"]["status"] == "streaming"

        config = write_config(pg, "primary", th=thresholds(replication_lag_mb=[1, 1000]),
                              standbys=["healthstandby"])
        report, checks, proc = run_json(config, "--check", "replication")
        replication = checks["replication"]
        assert replication["status"] == "ok", replication
        assert [r["application_name"] for r in replication["data"]["replicas"]] == [
            "healthstandby"]
        # a standby the inventory has that does not stream from here is a warning
        expecting = write_config(pg, "expecting", standbys=["healthstandby", "ghost_db2"])
        report, checks, proc = run_json(expecting, "--check", "replication")
        assert checks["replication"]["status"] == "warning" and proc.returncode == 1
        assert "standby(s) ghost_db2 not streaming from this server" in \
            checks["replication"]["detail"]
        assert checks["replication"]["data"]["absent_standbys"] == ["ghost_db2"]

        standby.sql("SELECT pg_wal_replay_pause()")
        pg.sql("CREATE TABLE lag_filler AS SELECT g, repeat('x', 500) AS pad "
               "FROM generate_series(1, 8000) AS g")
        wait_until(lambda: float(pg.sql(
            "SELECT coalesce(pg_wal_lsn_diff(pg_current_wal_lsn(), replay_lsn), 0) "
            "FROM pg_stat_replication WHERE application_name = 'healthstandby'"))
            > 1.5 * 1048576, "the replay lag to pass 1.5 MB")
        report, checks, proc = run_json(config, "--check", "replication")
        replication = checks["replication"]
        assert replication["status"] == "warning" and proc.returncode == 1, replication
        assert replication["value"] >= 1.5 and replication["unit"] == "MB"
        assert "replica healthstandby" in replication["detail"]

        wait_until(lambda: float(standby.sql(
            "SELECT pg_wal_lsn_diff(pg_last_wal_receive_lsn(), pg_last_wal_replay_lsn())"))
            > 1048576, "the standby to receive what it does not replay")
        report, checks, proc = run_json(standby_config, "--check", "replication")
        assert checks["replication"]["status"] == "warning"
        assert "replay is paused" in checks["replication"]["detail"]
    finally:
        with contextlib.suppress(Exception):
            standby.sql("SELECT pg_wal_replay_resume()")
        drop_cluster(standby)
        pg.sql("DROP TABLE IF EXISTS lag_filler")
    report, checks, proc = run_json(write_config(pg, "primary-alone"), "--check",
                                    "replication")
    assert checks["replication"]["detail"] == "no replicas"
    report, checks, proc = run_json(write_config(pg, "primary-lost", standbys=["db2"]),
                                    "--check", "replication")
    assert checks["replication"]["status"] == "warning", checks["replication"]
    assert "standby(s) db2 not streaming" in checks["replication"]["detail"]


@needs_postgres
def test_a_parameter_waiting_for_a_restart_is_a_warning_naming_it(pg):
    config = write_config(pg, "pending")

    def pending() -> str:
        return pg.sql("SELECT count(*) FROM pg_settings WHERE pending_restart")

    try:
        # shared_buffers is in postgresql.conf too: RESET really takes the change back (the
        # removal of a restart-only parameter set nowhere else waits for a restart itself)
        pg.sql("ALTER SYSTEM SET shared_buffers = '24MB'")
        pg.sql("SELECT pg_reload_conf()")
        wait_until(lambda: pending() == "1", "the reload")
        report, checks, proc = run_json(config, "--check", "pending_restart")
        check = checks["pending_restart"]
        assert check["status"] == "warning" and proc.returncode == 1
        assert "waiting for a restart: shared_buffers" in check["detail"]
        assert check["data"]["file_errors"] == []  # "could not be applied": the same news
    finally:
        pg.sql("ALTER SYSTEM RESET shared_buffers")
        pg.sql("SELECT pg_reload_conf()")
        wait_until(lambda: pending() == "0", "the reload")
    report, checks, proc = run_json(config, "--check", "pending_restart")
    assert checks["pending_restart"]["status"] == "ok"


@needs_postgres
def test_an_invalid_index_is_a_warning_naming_it(pg):
    config = write_config(pg, "invalid")
    pg.sql("CREATE TABLE dup (v int); INSERT INTO dup VALUES (1), (1)", "shop")
    try:
        proc = pg.as_postgres(PGBIN / "psql", "-X", "-h", pg.root, "-p", pg.port, "-d", "shop",
                              "-c", "CREATE UNIQUE INDEX CONCURRENTLY dup_v ON dup (v)",
                              check=False)
        assert proc.returncode != 0 and "could not create unique index" in proc.stderr
        report, checks, proc = run_json(config, "--check", "invalid_indexes")
        check = checks["invalid_indexes"]
        assert check["status"] == "warning" and proc.returncode == 1
        assert "shop.public.dup_v" in check["detail"] and check["value"] == 1
        assert check["data"]["invalid"] == [{"database": "shop", "schema": "public",
                                             "index": "dup_v", "table": "dup"}]
        # An index being built concurrently is INVALID until it is done: not reported.
        pg.sql("CREATE TABLE building (v int)", "shop")
        with Session(pg, "shop") as writer, Session(pg, "shop") as builder:
            writer.send("BEGIN; INSERT INTO building VALUES (1);")
            writer.pid("idle in transaction")
            builder.send("CREATE INDEX CONCURRENTLY building_v ON building (v);")
            wait_until(lambda: pg.sql(
                "SELECT count(*) FROM pg_index WHERE NOT indisvalid AND indexrelid = "
                "to_regclass('building_v')", "shop") == "1", "the build to begin")
            report, checks, proc = run_json(config, "--check", "invalid_indexes")
            assert [i["index"] for i in checks["invalid_indexes"]["data"]["invalid"]] == [
                "dup_v"]
    finally:
        pg.sql("DROP TABLE IF EXISTS dup, building", "shop")
    report, checks, proc = run_json(config, "--check", "invalid_indexes")
    assert checks["invalid_indexes"]["status"] == "ok"


@needs_postgres
def test_disk_usage_thresholds_and_missing_directories(pg):
    config = write_config(pg, "disk", th=thresholds(disk_used_percent=[0, 100]))
    report, checks, proc = run_json(config, "--check", "disk_data", "--check",
                                    "disk_wal_archive")
    for name in ("disk_data", "disk_wal_archive"):
        assert checks[name]["status"] == "warning"
        assert 0 < checks[name]["value"] < 100 and checks[name]["unit"] == "%"
        assert checks[name]["data"]["free_bytes"] > 0
    usage = os.statvfs(pg.data)
    used = (usage.f_blocks - usage.f_bfree) * usage.f_frsize
    expected = 100 * used / (used + usage.f_bavail * usage.f_frsize)
    assert checks["disk_data"]["value"] == pytest.approx(expected, abs=1)
    config = write_config(pg, "disk-missing", data_directory=str(pg.root / "nope"),
                          wal_archive_dir=str(pg.root / "nope-archive"))
    report, checks, proc = run_json(config, "--check", "disk_data", "--check",
                                    "disk_wal_archive", "--check", "archiver")
    assert proc.returncode == 2
    assert checks["disk_data"]["status"] == "critical"
    assert f"data_directory {pg.root / 'nope'} is missing" == checks["disk_data"]["detail"]
    assert checks["disk_wal_archive"]["status"] == "critical"
    assert checks["archiver"]["status"] == "critical"
    assert f"wal_archive_dir {pg.root / 'nope-archive'} is missing" in \
        checks["archiver"]["detail"]


def test_listening_sockets_are_read_from_the_kernels_tables(tmp_path):
    tcp = tmp_path / "tcp"
    tcp.write_text(
        "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid\n"
        "   0: 0100007F:1538 00000000:0000 0A 00000000:00000000 00:00000000 00000000   108\n"
        "   1: 0A014D0A:1920 00000000:0000 0A 00000000:00000000 00:00000000 00000000   108\n"
        "   2: 0A014D0A:1538 0B014D0A:D431 01 00000000:00000000 00:00000000 00000000   108\n")
    tcp6 = tmp_path / "tcp6"
    tcp6.write_text(
        "  sl  local_address                         remote_address                        st\n"
        "   0: 00000000000000000000000001000000:1538 00000000000000000000000000000000:0000 0A\n")
    sockets = listeners.listening_sockets((str(tcp), str(tcp6), str(tmp_path / "absent")))
    assert sockets == {"127.0.0.1:5432", "10.77.1.10:6432", "::1:5432"}
    assert listeners.missing_listeners(["localhost", "10.77.1.10", "::1"], 5432, sockets) == [
        "10.77.1.10:5432"]
    assert listeners.missing_listeners(["10.77.1.10"], 6432, sockets) == []
    assert listeners.missing_listeners(["10.9.9.9"], 5432, sockets | {"0.0.0.0:5432"}) == []


@needs_postgres
def test_an_address_the_server_could_not_listen_on_is_critical(tmp_path):
    """The server started while one of its listen_addresses did not exist (192.0.2.77, an
    address no interface here has): it runs on the others, and the check says so."""
    cluster = new_cluster()
    try:
        with open(cluster.data / "postgresql.conf", "a") as conf:
            conf.write("listen_addresses = '127.0.0.1, 192.0.2.77'\n")
        subprocess.run([*cluster.pg_ctl, "-l", str(cluster.pg_log), "-m", "fast", "-w",
                        "restart"], check=True, capture_output=True, cwd="/")
        report, checks, proc = run_json(write_config(cluster, "listen"), "--check", "postgres")
        assert checks["postgres"]["status"] == "critical", checks["postgres"]
        assert f"does not listen on 192.0.2.77:{cluster.port} of its listen_addresses" in \
            checks["postgres"]["detail"]
        assert checks["postgres"]["data"]["not_listening"] == [f"192.0.2.77:{cluster.port}"]
        with open(cluster.data / "postgresql.conf", "a") as conf:
            conf.write("listen_addresses = '127.0.0.1'\n")
        subprocess.run([*cluster.pg_ctl, "-l", str(cluster.pg_log), "-m", "fast", "-w",
                        "restart"], check=True, capture_output=True, cwd="/")
        report, checks, proc = run_json(write_config(cluster, "listen-ok"), "--check",
                                        "postgres")
        assert checks["postgres"]["status"] == "ok", checks["postgres"]
    finally:
        drop_cluster(cluster)
