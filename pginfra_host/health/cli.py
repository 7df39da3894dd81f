"""Check this host's PostgreSQL cluster, its PgBouncer, WAL archiving, backups, disks and (with
Patroni) its high-availability cluster, and report the way monitoring wants it: one Nagios
line with perfdata and a Nagios exit code (the default), one line per check (--verbose) or one
line of JSON (--json); and, for the node exporter's textfile collector, every check's status
and value as Prometheus gauges.

    pginfra-health                        Nagios line: "PGINFRA OK - 16 checks ok | ..."
    pginfra-health --verbose              one line per check: status, value, thresholds, detail
    pginfra-health --json                 {"host", "time", "status", "exit_code", ...}
    pginfra-health --alerts-only          only the checks that are not ok
    pginfra-health --check archiver       only these checks (repeatable)

The configuration is /etc/pginfra/health.json (--config PATH); its "backup" is null (no backup
checks) or {"state_dir": PATH, "stanza": NAME, "pgbackrest_config": PATH, "spool_path": PATH,
"repos": [1, 2]}, every key required; its "ha" is null or absent (no Patroni here: no HA checks)
or {"member": NAME, "members": [NAME, ...], "rest_url": "https://ADDRESS:8008",
"etcd_endpoints": ["https://ADDRESS:2379", ...], "cafile": PATH, "certfile": PATH,
"keyfile": PATH}, every key required. The program runs as postgres (root is switched to
postgres through runuser), connects over the Unix socket by peer authentication (autocommit,
read only, application_name pginfra-health) with connect_timeout, statement_timeout and
lock_timeout all set to query_timeout, and never hangs: a watchdog ends the run after
run_timeout seconds, every check not finished by then is unknown ("run_timeout of
N s reached") and the output is printed all the same. A check that fails in itself (timeout,
permission, bug) is unknown with the reason and never stops the others; a statement cut short
by statement_timeout or lock_timeout is unknown ("query timed out after N s").

Checks, in the order they run and are reported ([warning, critical] thresholds from the
configuration; a value at or above a threshold reaches it, for cache_hit_ratio a value below):
  postgres             the server answers (SELECT 1); version, in recovery or not, uptime.
                       Critical with the reason when it does not; then every SQL check is
                       unknown while the filesystem, PgBouncer and HA checks still run.
  pgbouncer            SHOW POOLS on PgBouncer's console (psql, Unix socket, user pgbouncer);
                       critical when it does not answer; value: the longest client wait in
                       seconds (pgbouncer_wait_seconds). Omitted when "pgbouncer" is null.
  connections          client backends in % of max_connections (connections_percent).
  long_running         the oldest active statement of another session, in seconds
                       (long_running_seconds).
  idle_in_transaction  the oldest session idle in a transaction (aborted or not), in seconds
                       (idle_in_transaction_seconds).
  blocking_locks       sessions waiting for a lock: the longest wait in seconds
                       (lock_wait_seconds), naming the waiting and the blocking pids.
  archiver             pg_stat_archiver and the .ready files: critical when wal_archive_dir
                       (pgBackRest's repo 1) is missing or not writable; archiving failing for
                       archive_failing_seconds (warning 0: as soon as it fails); failed_count
                       risen since the previous run (state_dir/archiver.json): warning;
                       segments waiting (archive_ready_segments; the value). archive_mode
                       off: warning. While archiving fails the detail says so: PostgreSQL
                       keeps the WAL in pg_wal, nothing is lost until that disk fills. With
                       "backup" set, also: archive_command not "pgbackrest --stanza=<stanza>
                       archive-push %p" (or archive_library set, which wins over it): warning;
                       the asynchronous archive-push's error files of segments still waiting
                       (<backup.spool_path>/archive/<stanza>/out/*.error, pgBackRest's exit
                       code and message, e.g. an unreachable S3): warning naming the segment.
                       A standby is ok (the primary archives) unless archive_mode is always.
  backup_base          the newest pgBackRest backup (full, diff or incr) of each repository in
                       backup.repos, from "pgbackrest --config=<backup.pgbackrest_config>
                       --config-include-path=<its directory>/conf.d --stanza=<backup.stanza>
                       --output=json info" (at most half the run_timeout): its age in hours
                       against backup_base_age_hours, the worst repository deciding (the value:
                       the oldest of them); a repository pgBackRest reports a problem with
                       (unreachable, stanza not created, ...; its message), one it does not
                       have, or one without a backup: critical; a newest backup that found
                       page checksum errors: warning. The last verify
                       (<backup.state_dir>/pgbackrest-verify.json, written by pginfra-backup
                       verify) with a repository not ok: critical naming its problems; none
                       recorded is not a problem. A backup in progress is said, not a problem.
                       pgbackrest failing: critical; not finishing in time: unknown. Ok on a
                       standby. Omitted when "backup" is null.
  backup_dump          the age in hours of the last verified dumps
                       (<backup.state_dir>/last-success/dump.json, backup_dump_age_hours); none
                       recorded: critical; unreadable or malformed: unknown; ok on a standby.
  disk_data            filesystem usage in % of data_directory's filesystem, like df
                       (disk_used_percent; inodes too, and pg_wal's filesystem when it is
                       another one); a missing directory: critical.
  disk_wal_archive     the same for wal_archive_dir.
  wraparound           the oldest transaction or multixact ID age of any database in % of 2^31
                       (wraparound_percent), naming the database.
  cache_hit_ratio      blocks found in shared buffers / blocks needed, over all databases
                       (cache_hit_ratio, lower is worse); ok below 10000 blocks in all.
  replication          primary: the largest replay lag of a replica or WAL retained by a slot,
                       in MB (replication_lag_mb), "no replicas" when there is neither; a slot
                       that lost WAL: critical; a standby of "standbys" in the
                       configuration that is not streaming: warning. Standby: received but
                       not replayed WAL in MB;
                       critical when no WAL receiver streams; replay paused: warning.
  patroni              GET /cluster on this member's Patroni REST API (ha.rest_url, HTTPS: the
                       server checked against ha.cafile, the client certificate ha.certfile
                       shown). Critical: no leader, the leader's PostgreSQL not running, this
                       member (ha.member) absent or not running. Warning: paused (maintenance
                       mode), a member of ha.members absent or not running/streaming, members
                       on different timelines. Value: the largest replica lag in MB
                       (replication_lag_mb). Unknown with the reason when the REST API does
                       not answer. Omitted when "ha" is null or absent.
  etcd                 GET /health on every ha.etcd_endpoints with the client certificate, all
                       at once: warning when a minority is down or unhealthy (naming them and
                       why), critical when the healthy ones are no majority (no quorum:
                       Patroni demotes the leader). Value: the members healthy. Omitted when
                       "ha" is null or absent. Neither HA check needs PostgreSQL; each request
                       waits at most query_timeout.
  pending_restart      parameters changed but waiting for a restart, and configuration file
                       lines in error (pg_file_settings, pg_hba_file_rules): warning.
  invalid_indexes      INVALID indexes (not being built right now) in every database that
                       allows connections: warning naming db.schema.index; a database that
                       cannot be reached: unknown.

Query texts of other sessions are never shown (they may hold passwords): sessions are named by
pid, user@database, application_name and durations.

--textfile PATH (default: the configuration's "textfile"; not with --check unless given
explicitly) writes every check in the node exporter's textfile format, atomically, mode 0644:
pginfra_health_status{check} (0 ok, 1 warning, 2 critical, 3 unknown), pginfra_health_value
{check,unit}, pginfra_health_threshold{check,level}, pginfra_health_exit_code,
pginfra_health_duration_seconds and pginfra_health_last_run_timestamp_seconds. A textfile that
cannot be written is a warning on stderr; the exit code stays the checks'.

Exit codes (Nagios): 0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN. The overall status is the worst
check's, ordered ok < warning < unknown < critical. A bad configuration or bad usage exits 3
(UNKNOWN) with one line naming the problem (with --json: {"status": "unknown", ...}).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
import time

from pginfra_host import runner, schema, util
from pginfra_host.health.checks import CHECKS, not_configured, run_check
from pginfra_host.health.config import DEFAULT_CONFIG, HealthConfig, load_config
from pginfra_host.health.context import Context
from pginfra_host.health.db import describe
from pginfra_host.health.output import nagios_text, print_report, textfile_path, write_textfile
from pginfra_host.health.result import EXIT_UNKNOWN, NAGIOS_CODE, UNKNOWN, num, result, worst

NAME = "pginfra-health"


class RunTimeout(BaseException):
    """The watchdog fired: not an Exception, so that no check's error handling swallows it."""


class Run:
    """One run: every check of ``names`` under the watchdog (SIGALRM at run_timeout, and a
    backstop thread 5 s later should the main thread be stuck where no signal handler can
    run), then the report, printed and written to the textfile exactly once."""

    def __init__(self, cfg: HealthConfig, args, names: list[str], started: float):
        self.cfg, self.args, self.names, self.started = cfg, args, names, started
        self.time = util.iso(util.utcnow())
        self.results: dict[str, dict] = {}
        self.context = Context(cfg, started + cfg.run_timeout)
        self.armed = False
        self.output_lock = threading.Lock()
        self.emitted = False

    def on_alarm(self, signum, frame) -> None:
        if self.armed:
            self.armed = False
            raise RunTimeout()

    def run_one(self, name: str) -> dict:
        key = not_configured(self.cfg, name)
        if key is not None:
            absent = " or absent" if key in schema.keys(HealthConfig)[1] else ""
            return result(name, UNKNOWN, f"not configured (\"{key}\" is null{absent} in "
                          f"{self.cfg.path})")
        try:
            return run_check(self.context, name)
        except Exception as exc:
            return result(name, UNKNOWN, describe(exc, self.cfg))

    def execute(self) -> dict:
        """Every check, under the watchdog; the report, whatever happened."""
        signal.signal(signal.SIGALRM, self.on_alarm)
        # The last resort, should the main thread be stuck where no signal handler can run.
        backstop = threading.Timer(self.cfg.run_timeout + 5, self.backstop)
        backstop.daemon = True
        backstop.start()
        self.armed = True
        signal.setitimer(signal.ITIMER_REAL, self.cfg.run_timeout)
        try:
            for name in self.names:
                self.results[name] = self.run_one(name)
            self.armed = False
        except RunTimeout:
            self.armed = False
        signal.setitimer(signal.ITIMER_REAL, 0)
        report = self.report()
        self.emit(report)
        backstop.cancel()
        self.context.close()
        return report

    def report(self) -> dict:
        reason = f"run_timeout of {num(self.cfg.run_timeout)} s reached"
        checks = [self.results.get(n) or result(n, UNKNOWN, reason) for n in self.names]
        status = worst(c["status"] for c in checks)
        return {"host": self.cfg.host, "time": self.time, "status": status,
                "exit_code": NAGIOS_CODE[status],
                "duration_seconds": round(time.monotonic() - self.started, 3),
                "checks": checks}

    def emit(self, report: dict) -> None:
        with self.output_lock:
            if self.emitted:
                return
            self.emitted = True
            print_report(report, self.args)
            sys.stdout.flush()
            path = textfile_path(self.args, self.cfg)
            if path:
                try:
                    write_textfile(path, report)
                except OSError as exc:
                    print(f"{NAME}: warning: cannot write the textfile {path}: {exc}",
                          file=sys.stderr, flush=True)

    def backstop(self) -> None:
        report = self.report()
        if self.output_lock.acquire(timeout=5):
            self.output_lock.release()
            self.emit(report)
        os._exit(report["exit_code"])


class Parser(argparse.ArgumentParser):
    """Bad usage is UNKNOWN (3) for Nagios, not argparse's 2 (which reads as CRITICAL)."""

    def error(self, message):
        self.print_usage(sys.stderr)
        print(f"PGINFRA UNKNOWN - {self.prog}: {nagios_text(message)}")
        sys.exit(EXIT_UNKNOWN)


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog=NAME, formatter_class=argparse.RawDescriptionHelpFormatter,
                    description=__doc__)
    parser.add_argument("--config", default=DEFAULT_CONFIG,
                        help=f"the JSON configuration (default {DEFAULT_CONFIG})")
    parser.add_argument("--check", action="append", choices=CHECKS, metavar="NAME",
                        help="run only this check (repeatable; results stay in the order "
                        "above): " + ", ".join(CHECKS))
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--json", action="store_true",
                      help="one line of JSON: host, time, status, exit_code, "
                      "duration_seconds, checks (check, status, value, unit, warning, "
                      "critical, detail, data)")
    mode.add_argument("--verbose", "-v", action="store_true",
                      help="one line per check: status, name, value and unit, thresholds, "
                      "detail")
    parser.add_argument("--alerts-only", action="store_true",
                        help="only the checks that are not ok (--json lists only those; "
                        "--verbose prints only those, or one 'all N checks ok' line; the "
                        "Nagios line lists only those anyway)")
    files = parser.add_mutually_exclusive_group()
    files.add_argument("--textfile", metavar="PATH",
                       help="write every check in the node exporter's textfile format to "
                       "PATH (default: the configuration's \"textfile\", except with --check)")
    files.add_argument("--no-textfile", action="store_true",
                       help="do not write the textfile")
    return parser


def config_failure(args, message: str, started: float) -> int:
    if args.json:
        print(json.dumps({"host": None, "time": util.iso(util.utcnow()), "status": UNKNOWN,
                          "exit_code": EXIT_UNKNOWN,
                          "duration_seconds": round(time.monotonic() - started, 3),
                          "checks": [], "error": message}, separators=(",", ":")))
    else:
        print(f"PGINFRA UNKNOWN - {nagios_text(message)}")
    return EXIT_UNKNOWN


def selected(cfg: HealthConfig, args) -> list[str]:
    if args.check:
        return [n for n in CHECKS if n in set(args.check)]
    return [n for n in CHECKS if not_configured(cfg, n) is None]


def main(argv: list[str] | None = None) -> int:
    started = time.monotonic()
    os.umask(0o077)  # its state is the postgres user's alone (the textfile is chmod'ed 0644)
    args = build_parser().parse_args(argv)
    if os.geteuid() == 0:
        try:
            runner.reexec_as_postgres(sys.argv[1:] if argv is None else argv)
        except (runner.ConfigError, OSError) as exc:
            return config_failure(args, f"cannot run as {util.OS_USER}: {exc}", started)
    try:
        cfg = load_config(args.config)
    except runner.ConfigError as exc:
        return config_failure(args, str(exc), started)
    report = Run(cfg, args, selected(cfg, args), started).execute()
    return report["exit_code"]
