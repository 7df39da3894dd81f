"""Apply staged PostgreSQL configuration files safely, or put the old ones back. With
postgres_ha (``--patroni``) a pending restart is left to ``--rolling-restart`` (rolling.py).

    pginfra-apply-config --cluster 15/main --port 5432 \
        /etc/postgresql/15/main/pginfra-staged/postgresql-production.conf=\
/etc/postgresql/15/main/conf.d/postgresql-production.conf

For each STAGED=TARGET pair whose contents differ, the target is saved and replaced by a copy of
the staged file. Then, on the running server:

1. pg_file_settings and pg_hba_file_rules are read for errors, which applies nothing. On any
   error every target is put back as it was, the staged copies are removed (so the next deploy
   uploads and checks them again), the bad lines are printed and the exit code is 1.
2. The configuration is reloaded (pg_reload_conf), and the program waits for the reload.
3. Only when pg_settings.pending_restart names a parameter is the cluster restarted, and the
   parameters are printed.

A running server is never left on a broken configuration and never restarted for a change a
reload can apply. Whatever goes wrong after the first target is replaced (a refused file, a psql
that cannot run, a reload that does not finish, a restart that does not come back, this program's
own crash or a signal), every target is put back as it was before the error is reported; a
failed restart is followed by a start on the previous files. psql is the cluster version's own
binary, not Debian's wrapper, which stops on a line of the configuration it cannot parse.

Exit codes: 0 applied (or nothing to do), 1 refused or failed and reverted, 2 could not run
(server down, bad arguments). Runs as root; queries run as the postgres user.
"""

from __future__ import annotations

import argparse
import contextlib
import filecmp
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from pginfra_host import layout, rolling
from pginfra_host.util import OS_USER

# A valid new value of a restart-only parameter shows as "setting could not be applied": that
# is a pending restart, not an error. Every other message is.
FILE_ERRORS = (
    "SELECT coalesce(f.sourcefile, '?'), coalesce(f.sourceline, 0), coalesce(f.name, ''), "
    "f.error FROM pg_file_settings f LEFT JOIN pg_settings s ON s.name = f.name "
    "WHERE f.error IS NOT NULL AND NOT (f.error = 'setting could not be applied' "
    "AND s.context = 'postmaster') ORDER BY f.sourcefile, f.sourceline"
)
HBA_ERRORS = (
    "SELECT coalesce(file_name, 'pg_hba.conf'), line_number, '', error "
    "FROM pg_hba_file_rules WHERE error IS NOT NULL ORDER BY line_number"
)
HBA_ERRORS_15 = (
    "SELECT 'pg_hba.conf', line_number, '', error "
    "FROM pg_hba_file_rules WHERE error IS NOT NULL ORDER BY line_number"
)


class Psql:
    """Runs SQL through the cluster version's psql as the postgres OS user, over the cluster's
    Unix socket (``host``: its directory). Not pg.Psql, which returns psql's text stripped and
    raises runner.Failed("psql: <sql>: ..."): here rows are split on tabs, and an error is a
    RuntimeError of psql's own message, which value_error() reads and restart() waits out."""

    def __init__(self, port: int, version: str = "15", user: str = OS_USER,
                 host: str = layout.DEFAULT_SOCKET_DIR):
        self.port, self.user, self.host = port, user, host
        self.psql = layout.pg_bin(version, "psql")

    def rows(self, sql: str) -> list[list[str]]:
        cmd = [self.psql, "-XAtq", "-v", "ON_ERROR_STOP=1", "-F", "\t", "-h", self.host,
               "-p", str(self.port), "-d", "postgres", "-c", sql]
        if os.geteuid() == 0 and self.user:
            cmd = ["runuser", "-u", self.user, "--", *cmd]
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd="/", timeout=60)
        if proc.returncode != 0:
            raise RuntimeError(proc.stderr.strip() or f"psql exited {proc.returncode}")
        return [line.split("\t") for line in proc.stdout.splitlines() if line]


def parse_pairs(pairs: list[str]) -> list[tuple[Path, Path]]:
    out = []
    for pair in pairs:
        staged, sep, target = pair.partition("=")
        if not sep or not staged or not target:
            raise ValueError(f"expected STAGED=TARGET, got {pair!r}")
        out.append((Path(staged), Path(target)))
    return out


def install(pairs: list[tuple[Path, Path]], changed: list[tuple[Path, Path | None]]) -> None:
    """Copy each changed staged file over its target, appending (target, backup or None) to
    ``changed`` as soon as the target is replaced, so a failure half-way can be undone."""
    for staged, target in pairs:
        if not staged.exists():
            raise FileNotFoundError(f"staged file {staged} is missing")
        if target.exists() and filecmp.cmp(staged, target, shallow=False):
            continue
        backup = None
        if target.exists():
            backup = target.with_name(target.name + ".pginfra-prev")
            shutil.copy2(target, backup)
            st = target.stat()
            os.chown(backup, st.st_uid, st.st_gid)
        tmp = target.with_name(f".{target.name}.pginfra-tmp")
        shutil.copy2(staged, tmp)
        st = staged.stat()
        os.chown(tmp, st.st_uid, st.st_gid)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, target)
        changed.append((target, backup))


def restore(changed: list[tuple[Path, Path | None]], pairs: list[tuple[Path, Path]]) -> None:
    """Put every changed target back as it was and drop the staged copies."""
    for target, backup in changed:
        if backup is None:
            target.unlink(missing_ok=True)
        else:
            os.replace(backup, target)
    for staged, _ in pairs:
        staged.unlink(missing_ok=True)


IDENT_ERRORS = (
    "SELECT 'pg_ident.conf', line_number, '', error "
    "FROM pg_ident_file_mappings WHERE error IS NOT NULL ORDER BY line_number"
)


def config_errors(psql: Psql, server_version_num: int) -> list[str]:
    """Errors the server would meet reading its configuration files now, one line each."""
    queries = [FILE_ERRORS, HBA_ERRORS if server_version_num >= 160000 else HBA_ERRORS_15,
               IDENT_ERRORS]
    errors = []
    for sql in queries:
        for source, line, name, error in psql.rows(sql):
            what = f" ({name})" if name else ""
            detail = value_error(psql, name) if name else None
            errors.append(f"{source}:{line}{what}: {detail or error}")
    return errors


def value_error(psql: Psql, name: str) -> str | None:
    """The server's own complaint about a parameter's value in the files, when it has one.

    pg_file_settings says only "setting could not be applied"; trying the value with
    set_config() in a transaction that is rolled back names the real problem.
    """
    rows = psql.rows(
        "SELECT setting FROM pg_file_settings WHERE name = " + literal(name) +
        " ORDER BY seqno DESC LIMIT 1")
    if not rows:
        return None
    try:
        psql.rows(f"BEGIN; SELECT set_config({literal(name)}, {literal(rows[0][0])}, true); "
                  "ROLLBACK")
    except RuntimeError as exc:
        message = str(exc).removeprefix("ERROR:").strip()
        if "cannot be changed" not in message and "permission denied" not in message:
            return message
    return None


def literal(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def reload_and_wait(psql: Psql, timeout: float = 15) -> None:
    before = psql.rows("SELECT pg_conf_load_time()")[0][0]
    psql.rows("SELECT pg_reload_conf()")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        # A new session sees the postmaster's new load time once the reload is done.
        if psql.rows("SELECT pg_conf_load_time()")[0][0] != before:
            return
        time.sleep(0.2)
    raise RuntimeError("the server did not finish reloading its configuration")


def pending_restart(psql: Psql) -> list[str]:
    return [row[0] for row in psql.rows(
        "SELECT name FROM pg_settings WHERE pending_restart ORDER BY name")]


# With Patroni (postgres_ha), the server is Patroni's to restart: (config, scope, member).
PATRONI: tuple[str, str, str] | None = None
PENDING = "pending restart"  # what the deploy reads in the output, under Patroni


def restart(cluster: str, psql: Psql, timeout: float = 120, verb: str = "restart") -> None:
    version, name = cluster.split("/", 1)
    unit = layout.unit(version, name)
    if PATRONI is not None:
        config, scope, member = PATRONI
        argv = ["runuser", "-u", OS_USER, "--", "patronictl", "-c", config, "restart",
                scope, member, "--force"]
        what = f"patronictl restart {scope} {member}"
    else:
        argv, what = ["systemctl", verb, unit], f"systemctl {verb} {unit}"
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    if proc.returncode:
        raise RuntimeError(f"{what} failed: {(proc.stderr or proc.stdout).strip()}")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            psql.rows("SELECT 1")
            return
        except RuntimeError:
            time.sleep(0.5)
    raise RuntimeError(f"cluster {cluster} did not come back after the restart")


def apply(pairs: list[tuple[Path, Path]], cluster: str, psql: Psql, log=print) -> int:
    try:
        version_num = int(psql.rows("SHOW server_version_num")[0][0])
    except RuntimeError as exc:
        log(f"pginfra-apply-config: the server is not answering, nothing applied: {exc}")
        return 2
    changed: list[tuple[Path, Path | None]] = []
    restarting = False
    try:
        install(pairs, changed)
        errors = config_errors(psql, version_num)
        if errors:
            restore(changed, pairs)
            log("pginfra-apply-config: configuration refused, previous files restored:")
            for line in errors:
                log(f"  {line}")
            return 1
        for target, _ in changed:
            log(f"pginfra-apply-config: installed {target}")
        if changed:
            reload_and_wait(psql)
            log("pginfra-apply-config: reloaded")
        waiting = pending_restart(psql)
        if waiting and PATRONI is not None:
            # every member at once would be an outage: the deploy's rolling restart
            # (--rolling-restart, on the leader) restarts them one at a time, replicas first
            log(f"pginfra-apply-config: {PENDING} for: {', '.join(waiting)} (Patroni's rolling "
                "restart applies it)")
        elif waiting:
            log(f"pginfra-apply-config: restarting {cluster} for: {', '.join(waiting)}")
            restarting = True
            restart(cluster, psql)
    except BaseException as exc:  # noqa: BLE001 - any failure, a signal included, is undone
        restore(changed, pairs)
        log(f"pginfra-apply-config: failed, previous files restored: "
            f"{exc or type(exc).__name__}")
        if restarting:
            # The new files stopped the server from coming back: start it on the old ones.
            try:
                restart(cluster, psql)
                log(f"pginfra-apply-config: {cluster} restarted on the previous files")
            except (RuntimeError, OSError, subprocess.SubprocessError) as again:
                log(f"pginfra-apply-config: {cluster} did not start on the previous files "
                    f"either: {again}")
        elif changed:
            with contextlib.suppress(RuntimeError, OSError, subprocess.SubprocessError):
                reload_and_wait(psql)  # the previous files in force again
        if not isinstance(exc, Exception):
            raise
        return 1
    for _target, backup in changed:
        if backup is not None:
            backup.unlink(missing_ok=True)
    return 0


def _raise_on_signal(signum, frame):
    raise KeyboardInterrupt(f"signal {signal.Signals(signum).name}")


def main(argv: list[str] | None = None) -> int:
    for signum in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT):
        signal.signal(signum, _raise_on_signal)
    parser = argparse.ArgumentParser(
        description="Apply staged PostgreSQL configuration files: check them on the running "
                    "server, reload, and restart only when a changed parameter needs it; on any "
                    "error put the previous files back.")
    parser.add_argument("--cluster", help="VERSION/NAME, e.g. 15/main (required)")
    parser.add_argument("--port", type=int, help="the cluster's port (required)")
    parser.add_argument("--patroni", nargs=3, metavar=("CONFIG", "SCOPE", "MEMBER"),
                        help="Patroni runs the server: restart it through patronictl")
    parser.add_argument("pairs", nargs="*", metavar="STAGED=TARGET",
                        help="a staged file and the configuration file it replaces")
    rolling_group = parser.add_argument_group(
        "rolling restart (postgres_ha, on the leader; see pginfra_host/rolling.py)")
    rolling_group.add_argument("--rolling-restart", nargs=2, metavar=("CONFIG", "SCOPE"),
                               help="change the cluster's shared configuration, then restart "
                                    "the members waiting for it one at a time, replicas first")
    rolling_group.add_argument("--dcs-set", action="append", default=[], metavar="KEY=VALUE",
                               help="patronictl edit-config -s (repeatable)")
    rolling_group.add_argument("--dcs-pg", action="append", default=[], metavar="NAME=VALUE",
                               help="patronictl edit-config -p (repeatable)")
    rolling_group.add_argument("--settle", type=float, default=0,
                               help="seconds for every member to see the change first")
    rolling_group.add_argument("--leader-first", action="store_true",
                               help="restart the leader first (a shared value shrank)")
    args = parser.parse_args(argv)
    if args.rolling_restart:
        config, scope = args.rolling_restart
        return rolling.rolling_restart(config, scope, args.dcs_set, args.dcs_pg, args.settle,
                                       args.leader_first, print)
    if not (args.pairs and args.cluster and args.port):
        parser.error("--cluster, --port and STAGED=TARGET pairs are required (or "
                     "--rolling-restart)")
    global PATRONI
    PATRONI = tuple(args.patroni) if args.patroni else None
    try:
        pairs = parse_pairs(args.pairs)
    except ValueError as exc:
        parser.error(str(exc))
    try:
        return apply(pairs, args.cluster, Psql(args.port, args.cluster.split("/", 1)[0]))
    except (RuntimeError, OSError, subprocess.SubprocessError) as exc:
        print(f"pginfra-apply-config: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
