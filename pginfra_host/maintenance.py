"""Routine maintenance of this host's PostgreSQL databases, planned by the baseline SQL bundle.

    pginfra-maintenance [--config PATH] [--database DB ...] [--dry-run] STEP [STEP ...]

Steps (they always run in this order, whatever order they are given in; `all` is all four):

    vacuum    VACUUM (ANALYZE) each table of monitoring.vacuum_candidates(min_dead_ratio,
              min_dead_tuples): dead tuples before and after are logged
    analyze   ANALYZE each table of monitoring.analyze_candidates(min_mod_ratio, min_mod_tuples)
    reindex   REINDEX INDEX CONCURRENTLY each index of monitoring.reindex_candidates(
              min_bloat_ratio, min_bloat_bytes), when the filesystem holding it has at least
              twice the index's size free; its size before and after is logged. A REINDEX that
              fails or times out leaves an INVALID copy (<index>_ccnew, _ccnew1 ...): it is
              dropped with DROP INDEX CONCURRENTLY IF EXISTS. One that cannot be dropped yet (a
              lock) is remembered in state_dir/reindex-leftovers.json and dropped by the next
              reindex run of that database, before anything else.
    refresh   SELECT monitoring.process_refresh_queue(false): the materialized views whose
              refresh was requested and whose min_interval has passed; one line per view

The configuration is /etc/pginfra/maintenance.json (--config PATH). The program runs as postgres
(root is switched to postgres), connects over the Unix socket (autocommit, application_name
pginfra-maintenance) to each database of 'databases' (or of --database), and sets lock_timeout
and statement_timeout from the configuration. The cleanup of an INVALID leftover runs with a
statement_timeout of at least 10min (its waits are bounded by lock_timeout).

Each step takes its own lock, state_dir/locks/maintenance-<step>.lock: when another run holds it,
that step is skipped and the others still run. Each action (one statement on one table, index or
materialized view) is one JSON line on stdout and in log_dir/maintenance.log (stage = the step,
status ok, failed or skipped; detail: database, target, statement and the step's figures), and
a row in that database's monitoring.maintenance_log through monitoring.log_maintenance() (best
effort: a failure to record is logged). A statement that hits lock_timeout is skipped ("<target>
is busy: lock_timeout") and tried again by the next run; any other error fails that action and
the step goes on with the next one. A database without the baseline bundle is skipped; one that
cannot be reached fails that step for that database, and the other databases still run. On a
standby every step is skipped. The last line (stage "end") counts the lines per status.

--dry-run prints what would run (status "planned"), takes no lock and changes nothing.

A statement is run only if it is exactly the one the program expects for that table or index
(VACUUM (ANALYZE), ANALYZE, REINDEX INDEX CONCURRENTLY of a quoted, qualified name): the
candidates functions cannot make the job run anything else.

Exit codes: 0 every action ok or skipped; 1 an action failed (the rest was done); 2 bad usage or
configuration; 75 another run holds a step's lock (that step skipped) and nothing failed.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import sys
import time
import traceback
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, get_type_hints

from pginfra_host import durations, layout, pg, runner, schema, util

NAME = "pginfra-maintenance"
JOB = "maintenance"
STEPS = ("vacuum", "analyze", "reindex", "refresh")
LEFTOVERS = "reindex-leftovers.json"
CLEANUP_STATEMENT_TIMEOUT_MS = 10 * 60 * 1000
BASELINE = "the baseline SQL bundle is not applied to {db}"
# What each step needs of the bundle in a database.
NEEDS = {"vacuum": "monitoring.vacuum_candidates(float8, bigint)",
         "analyze": "monitoring.analyze_candidates(float8, bigint)",
         "reindex": "monitoring.reindex_candidates(float8, bigint)",
         "refresh": "monitoring.process_refresh_queue(boolean)"}


# ---------------------------------------------------------------------------------------------
# Configuration: /etc/pginfra/maintenance.json is exactly the fields of Config (the ones with a
# default may be left out), its sections exactly the fields of their Thresholds.

@dataclass(frozen=True)
class Thresholds:
    """A step's candidates reach both: a share from 0 to RATIO_MAX, then a count from 0 to
    BIGINT_MAX (the section's two keys, declared in that order)."""

    RATIO_MAX: ClassVar[float] = 1


@dataclass(frozen=True)
class Vacuum(Thresholds):
    min_dead_ratio: float  # dead tuples: a share of the table's, at most all of them
    min_dead_tuples: int


@dataclass(frozen=True)
class Analyze(Thresholds):
    # rows changed since the last analyze can be several times the live rows
    RATIO_MAX: ClassVar[float] = 100
    min_mod_ratio: float
    min_mod_tuples: int


@dataclass(frozen=True)
class Reindex(Thresholds):
    min_bloat_ratio: float  # bloat: a share of the index's size, at most all of it
    min_bloat_bytes: int


@dataclass(frozen=True)
class Config:
    """The configuration, as validate_config() checked it."""

    host: str
    version: int
    port: int
    data_directory: str
    state_dir: str
    log_dir: str
    databases: list[str]
    vacuum: Vacuum
    analyze: Analyze
    reindex: Reindex
    lock_timeout: str
    statement_timeout: str
    socket_dir: str = layout.DEFAULT_SOCKET_DIR

    @property
    def statement_timeout_ms(self) -> int:
        return round(durations.milliseconds(self.statement_timeout))


# section -> its Thresholds class, in the order of Config's fields
SECTIONS = {name: kind for name, kind in get_type_hints(Config).items()
            if isinstance(kind, type) and issubclass(kind, Thresholds)}
BIGINT_MAX = (1 << 63) - 1


def _duration(key: str, value, zero_ok: bool) -> str:
    ms = durations.milliseconds(value)
    schema.require(ms is not None and (ms >= 1 or (zero_ok and ms == 0))
                   and ms <= durations.INT_MAX, key,
                   "must be a PostgreSQL duration string such as '500ms', '5s', '1min', '2h' "
                   f"({', '.join(durations.UNITS_MS)}; at most {durations.INT_MAX}ms)"
                   + ("; '0' disables it" if zero_ok else "; more than 0: a maintenance "
                      "statement must not queue behind a lock without end"), value)
    return value.strip()


def _ratio(key: str, value, high: float = 1) -> float:
    schema.require(isinstance(value, int | float) and not isinstance(value, bool)
                   and 0 <= value <= high, key, f"must be a number from 0 to {high:g}", value)
    return float(value)


def _database(key: str, value) -> str:
    schema.require(isinstance(value, str) and 0 < len(value.encode()) <= 63 and "\0" not in value,
                   key, "must be a database name of 1..63 bytes", value)
    return value


def _thresholds(section: str, value) -> Thresholds:
    declaration = SECTIONS[section]
    schema.require(isinstance(value, dict), section, "must be an object", value)
    required, optional = schema.keys(declaration)
    schema.check_keys(value, required, optional, prefix=f"{section}.")
    ratio, count = required
    return declaration(_ratio(f"{section}.{ratio}", value[ratio], declaration.RATIO_MAX),
                       schema.integer(f"{section}.{count}", value[count], 0, BIGINT_MAX))


def validate_config(raw, path: str = layout.MAINTENANCE_CONFIG) -> Config:
    """The configuration, checked; runner.ConfigError names the first bad key (``path``: where
    it was read, for schema.load_json, which puts it in front of the message)."""
    if not isinstance(raw, dict):
        raise runner.ConfigError("the configuration must be a JSON object")
    schema.check_keys(raw, *schema.keys(Config))
    databases = raw["databases"]
    schema.require(isinstance(databases, list)
                   and len(set(map(str, databases))) == len(databases), "databases",
                   "must be a list of distinct database names", databases)
    for i, db in enumerate(databases):
        _database(f"databases[{i}]", db)
    sections = {section: _thresholds(section, raw[section]) for section in SECTIONS}
    statement_timeout = _duration("statement_timeout", raw["statement_timeout"], zero_ok=True)
    return Config(
        host=schema.string("host", raw["host"], schema.NAME, "a host name ([A-Za-z0-9._-], 1..63)"),
        version=schema.integer("version", raw["version"], 10, 99),
        port=schema.integer("port", raw["port"], 1, 65535),
        data_directory=schema.abspath("data_directory", raw["data_directory"]),
        state_dir=schema.abspath("state_dir", raw["state_dir"]),
        log_dir=schema.abspath("log_dir", raw["log_dir"]),
        databases=list(databases),
        **sections,
        lock_timeout=_duration("lock_timeout", raw["lock_timeout"], zero_ok=False),
        statement_timeout=statement_timeout,
        socket_dir=schema.abspath("socket_dir", raw.get("socket_dir", layout.DEFAULT_SOCKET_DIR)),
    )


def load_config(path: str) -> Config:
    return schema.load_json(path, validate_config)


def ordered_steps(given: list[str]) -> list[str]:
    wanted = set(STEPS) if "all" in given else set(given)
    return [step for step in STEPS if step in wanted]


# ---------------------------------------------------------------------------------------------
# The run

class CountingLog(runner.JobLog):
    """JobLog that counts its lines per status (the "end" line's figures)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.counts: Counter = Counter()

    def emit(self, stage, status, *args, **kwargs) -> None:
        if stage != "end":
            self.counts[status] += 1
        super().emit(stage, status, *args, **kwargs)


class ConnectionLost(Exception):
    """The database connection broke: the rest of that database's step cannot run."""


def detail(db, target=None, statement=None, **extra) -> dict:
    return {"database": db, "target": target, "statement": statement, **extra}


def error_text(exc) -> str:
    diag = getattr(exc, "diag", None)
    message = (diag.message_primary if diag is not None else None) or str(exc)
    return message.strip().splitlines()[0] if message.strip() else type(exc).__name__


class Maintenance:
    def __init__(self, cfg: Config, args, log: CountingLog, psycopg):
        self.cfg, self.args, self.log, self.pg = cfg, args, log, psycopg
        self.dry_run = args.dry_run
        self.databases = list(dict.fromkeys(args.database or cfg.databases))
        self.steps = ordered_steps(args.steps)
        self.locked = False
        self.notices: list[str] = []

    # -- connections ---------------------------------------------------------------------------

    def set_timeouts(self, conn, statement_timeout: str | None = None) -> None:
        conn.execute("SELECT pg_catalog.set_config('lock_timeout', %s, false), "
                     "pg_catalog.set_config('statement_timeout', %s, false)",
                     (self.cfg.lock_timeout, statement_timeout or self.cfg.statement_timeout))

    def connect(self, db: str):
        conn = pg.connect(self.cfg, db, app=NAME)
        self.notices.clear()
        # kept, not printed: RAISE WARNING of failed refreshes, NOTICEs of IF EXISTS ...
        conn.add_notice_handler(lambda diag: self.notices.append(diag.message_primary or ""))
        return conn

    def standby(self) -> bool:
        """Whether the server is a standby, asked of the first database that answers."""
        for db in [*self.databases, "postgres"]:
            try:
                with self.connect(db) as conn:
                    return bool(conn.execute("SELECT pg_catalog.pg_is_in_recovery()")
                                .fetchone()[0])
            except (runner.Failed, self.pg.Error):
                continue
        return False  # nothing answers: each step fails per database, naming why

    def open(self, step: str, db: str):
        """A prepared connection to ``db`` for ``step``, or None (the reason logged)."""
        try:
            conn = self.connect(db)
        except runner.Failed as exc:
            self.log.emit(step, "failed", detail=detail(db, error=str(exc)))
            return None
        try:
            self.set_timeouts(conn)
            standby, applied = conn.execute(
                "SELECT pg_catalog.pg_is_in_recovery(), "
                "pg_catalog.to_regprocedure(%s) IS NOT NULL", (NEEDS[step],)).fetchone()
        except self.pg.Error as exc:
            self.log.emit(step, "failed", detail=detail(db, error=error_text(exc)))
            conn.close()
            return None
        reason = ("this server is a standby (pg_is_in_recovery()): maintenance runs on the "
                  "primary" if standby else None if applied else BASELINE.format(db=db))
        if reason:
            self.log.emit(step, "skipped", detail=detail(db, reason=reason))
            conn.close()
            return None
        return conn

    # -- one action ----------------------------------------------------------------------------

    def record(self, conn, step: str, status: str, info: dict, started) -> None:
        """The action in the database's monitoring.maintenance_log (best effort)."""
        if self.dry_run or conn.closed:
            return
        try:
            conn.execute("SELECT monitoring.log_maintenance(%s, %s, %s, %s, %s)",
                         (step, info["target"] or "", status, json.dumps(info, default=str),
                          started))
        except self.pg.Error as exc:
            self.log.emit("log_maintenance", "failed", detail=detail(
                info["database"], info["target"], error="could not record the action in "
                f"monitoring.maintenance_log: {error_text(exc)}"))

    def action(self, conn, step: str, status: str, info: dict, started, seconds) -> None:
        self.log.emit(step, status, seconds, detail=info)
        self.record(conn, step, status, info, started)

    def execute(self, conn, statement: str, target: str) -> tuple[str, str | None]:
        """("ok", None), ("skipped", reason) on lock_timeout, or ("failed", error)."""
        try:
            conn.execute(statement)
            return "ok", None
        except self.pg.errors.LockNotAvailable:
            return "skipped", f"{target} is busy: lock_timeout"
        except self.pg.Error as exc:
            return "failed", error_text(exc)

    def lost(self, conn, db: str) -> None:
        if conn.closed:
            raise ConnectionLost(f"the connection to {db} was lost")

    def planned(self, step: str, info: dict) -> None:
        self.log.emit(step, "planned", detail=info)

    def nothing(self, step: str, db: str, what: str) -> None:
        self.log.emit(step, "ok", detail=detail(db, candidates=0, note=what))

    # -- vacuum and analyze --------------------------------------------------------------------

    def tables(self, conn, db: str, step: str) -> None:
        """vacuum or analyze: the candidates' statements, one by one."""
        if step == "vacuum":
            query = ("SELECT pg_catalog.format('%%I.%%I', c.schema_name, c.table_name), "
                     "c.statement, pg_catalog.format('VACUUM (ANALYZE) %%I.%%I', c.schema_name, "
                     "c.table_name), c.n_live_tup, c.n_dead_tup, c.dead_ratio "
                     "FROM monitoring.vacuum_candidates(%s::float8, %s::bigint) AS c")
            params = (self.cfg.vacuum.min_dead_ratio, self.cfg.vacuum.min_dead_tuples)
            figures = ("live_tuples", "dead_tuples", "dead_ratio")
        else:
            query = ("SELECT pg_catalog.format('%%I.%%I', c.schema_name, c.table_name), "
                     "c.statement, pg_catalog.format('ANALYZE %%I.%%I', c.schema_name, "
                     "c.table_name), c.n_live_tup, c.n_mod_since_analyze, c.mod_ratio "
                     "FROM monitoring.analyze_candidates(%s::float8, %s::bigint) AS c")
            params = (self.cfg.analyze.min_mod_ratio, self.cfg.analyze.min_mod_tuples)
            figures = ("live_tuples", "modified_tuples", "mod_ratio")
        rows = conn.execute(query, params).fetchall()
        if not rows:
            self.nothing(step, db, f"no table needs {step.upper()} at these thresholds")
        for target, statement, expected, *values in rows:
            info = detail(db, target, statement, **dict(zip(figures, values, strict=True)))
            if statement != expected:
                self.log.emit(step, "failed", detail={**info, "error": "refused: not the "
                              f"expected statement ({expected})"})
                continue
            if self.dry_run:
                self.planned(step, info)
                continue
            started, t0 = util.utcnow(), time.monotonic()
            status, reason = self.execute(conn, statement, target)
            seconds = time.monotonic() - t0
            if status == "ok" and step == "vacuum":
                with contextlib.suppress(self.pg.Error):
                    info["dead_tuples_after"] = conn.execute(
                        "SELECT n_dead_tup FROM pg_catalog.pg_stat_user_tables "
                        "WHERE relid = pg_catalog.to_regclass(%s)", (target,)).fetchone()[0]
            if status == "ok" and step == "analyze":
                with contextlib.suppress(self.pg.Error):
                    row = conn.execute(
                        "SELECT last_analyze FROM pg_catalog.pg_stat_user_tables "
                        "WHERE relid = pg_catalog.to_regclass(%s)", (target,)).fetchone()
                    info["last_analyze"] = util.iso(row[0]) if row and row[0] else None
            if reason:
                info["reason" if status == "skipped" else "error"] = reason
            self.action(conn, step, status, info, started, seconds)
            self.lost(conn, db)

    # -- reindex -------------------------------------------------------------------------------

    def leftovers_path(self) -> Path:
        return Path(self.cfg.state_dir) / LEFTOVERS

    def leftovers(self) -> list[dict]:
        data = util.read_json(self.leftovers_path()) or {}
        return [e for e in data.get("leftovers", []) if isinstance(e, dict)
                and isinstance(e.get("database"), str) and isinstance(e.get("index"), str)]

    def save_leftovers(self, entries: list[dict]) -> None:
        util.ensure_dir(self.cfg.state_dir)
        util.write_json(self.leftovers_path(), {"leftovers": entries}, mode=0o600)

    def remember(self, db: str, index: str, of: str, keep: bool) -> None:
        entries, since = [], util.iso(util.utcnow())
        for entry in self.leftovers():
            if (entry["database"], entry["index"]) == (db, index):
                since = entry.get("since") or since
            else:
                entries.append(entry)
        if keep:
            entries.append({"database": db, "index": index, "of": of, "since": since})
        try:
            self.save_leftovers(entries)
        except OSError as exc:
            self.log.emit("reindex", "failed", detail=detail(
                db, index, error=f"cannot update {self.leftovers_path()}: {exc}"))

    def drop_leftover(self, conn, db: str, index: str, of: str) -> None:
        """DROP INDEX CONCURRENTLY of an INVALID copy left by a REINDEX CONCURRENTLY of ``of``.
        Not dropped now (a lock, an error): remembered for the next run."""
        statement = f"DROP INDEX CONCURRENTLY IF EXISTS {index}"
        info = detail(db, index, statement, leftover_of=of)
        if self.dry_run:
            self.planned("reindex", info)
            return
        started, t0 = util.utcnow(), time.monotonic()
        timeout = self.cfg.statement_timeout_ms
        timeout = 0 if timeout == 0 else max(timeout, CLEANUP_STATEMENT_TIMEOUT_MS)
        try:
            self.set_timeouts(conn, f"{timeout}ms")
        except self.pg.Error as exc:
            status, reason = "failed", error_text(exc)
        else:
            status, reason = self.execute(conn, statement, index)
            if not conn.closed:
                with contextlib.suppress(self.pg.Error):
                    self.set_timeouts(conn)
        if status == "ok":
            info["note"] = "INVALID leftover of a REINDEX CONCURRENTLY dropped"
        else:
            info["reason" if status == "skipped" else "error"] = (
                f"{reason}; the INVALID leftover stays, the next reindex run drops it")
        self.action(conn, "reindex", status, info, started, time.monotonic() - t0)
        self.remember(db, index, of, keep=status != "ok")

    def earlier_leftovers(self, conn, db: str) -> None:
        """INVALID copies earlier runs could not drop: dropped now, before anything else."""
        for entry in self.leftovers():
            if entry["database"] != db:
                continue
            try:  # the name as the catalog spells it, and only an INVALID copy's
                found = conn.execute(
                    "SELECT pg_catalog.format('%%I.%%I', n.nspname, c.relname) "
                    "FROM pg_catalog.pg_index AS i "
                    "JOIN pg_catalog.pg_class AS c ON c.oid = i.indexrelid "
                    "JOIN pg_catalog.pg_namespace AS n ON n.oid = c.relnamespace "
                    "WHERE i.indexrelid = pg_catalog.to_regclass(%s) AND NOT i.indisvalid "
                    "AND c.relname ~ '_cc(new|old)[0-9]*$'", (entry["index"],)).fetchone()
            except self.pg.Error:
                self.lost(conn, db)
                found = None  # not a name at all
            if found is None:
                if not self.dry_run:  # gone, or no longer an INVALID copy: not ours to drop
                    self.remember(db, entry["index"], entry.get("of", ""), keep=False)
                continue
            self.drop_leftover(conn, db, found[0], entry.get("of") or "")
            self.lost(conn, db)

    def invalid_copies(self, conn, table_oid: int) -> dict[int, str]:
        """INVALID indexes named like REINDEX CONCURRENTLY's copies on the table."""
        rows = conn.execute(
            "SELECT i.indexrelid::int8, pg_catalog.format('%%I.%%I', n.nspname, c.relname) "
            "FROM pg_catalog.pg_index AS i "
            "JOIN pg_catalog.pg_class AS c ON c.oid = i.indexrelid "
            "JOIN pg_catalog.pg_namespace AS n ON n.oid = c.relnamespace "
            "WHERE i.indrelid = %s::oid AND NOT i.indisvalid "
            "AND c.relname ~ '_cc(new|old)[0-9]*$'", (table_oid,)).fetchall()
        return dict(rows)

    def free_bytes(self, filepath: str | None) -> tuple[int, str]:
        """Free bytes (for postgres) of the filesystem holding the relation file: its directory
        under the data directory (a tablespace's symlink is followed), else the data
        directory itself."""
        path = self.cfg.data_directory
        if filepath:
            directory = os.path.join(self.cfg.data_directory, os.path.dirname(filepath))
            if os.path.isdir(directory):
                path = directory
        st = os.statvfs(path)
        return st.f_bavail * st.f_frsize, path

    def index_size(self, conn, index: str):
        row = conn.execute("SELECT pg_catalog.pg_relation_size(pg_catalog.to_regclass(%s))",
                           (index,)).fetchone()
        return row[0] if row else None

    def reindex(self, conn, db: str) -> None:
        self.earlier_leftovers(conn, db)
        rows = conn.execute(
            "SELECT pg_catalog.format('%%I.%%I', c.schema_name, c.index_name), c.statement, "
            "pg_catalog.format('REINDEX INDEX CONCURRENTLY %%I.%%I', c.schema_name, "
            "c.index_name), pg_catalog.format('%%I.%%I', c.schema_name, c.table_name), "
            "c.bloat_bytes, c.bloat_ratio "
            "FROM monitoring.reindex_candidates(%s::float8, %s::bigint) AS c",
            (self.cfg.reindex.min_bloat_ratio, self.cfg.reindex.min_bloat_bytes)).fetchall()
        if not rows:
            self.nothing("reindex", db, "no index is bloated past these thresholds")
        for target, statement, expected, table, bloat_bytes, bloat_ratio in rows:
            info = detail(db, target, statement, table=table, estimated_bloat_bytes=bloat_bytes,
                          bloat_ratio=bloat_ratio)
            if statement != expected:
                self.log.emit("reindex", "failed", detail={**info, "error": "refused: not the "
                              f"expected statement ({expected})"})
                continue
            self.reindex_one(conn, db, target, statement, info)
            self.lost(conn, db)

    def reindex_one(self, conn, db: str, target: str, statement: str, info: dict) -> None:
        started, t0 = util.utcnow(), time.monotonic()
        try:
            row = conn.execute(
                "SELECT i.indrelid::int8, pg_catalog.pg_relation_size(i.indexrelid), "
                "pg_catalog.pg_relation_filepath(i.indexrelid) FROM pg_catalog.pg_index AS i "
                "WHERE i.indexrelid = pg_catalog.to_regclass(%s)", (target,)).fetchone()
        except self.pg.errors.LockNotAvailable:
            self.action(conn, "reindex", "skipped", {**info, "reason": f"{target} is busy: "
                        "lock_timeout"}, started, time.monotonic() - t0)
            return
        except self.pg.Error as exc:
            self.action(conn, "reindex", "failed", {**info, "error": error_text(exc)}, started,
                        time.monotonic() - t0)
            return
        if row is None:
            self.action(conn, "reindex", "skipped", {**info, "reason": f"{target} no longer "
                        "exists"}, started, time.monotonic() - t0)
            return
        table_oid, size_before, filepath = row
        info["index_bytes_before"] = size_before
        try:
            free, where = self.free_bytes(filepath)
        except OSError as exc:
            self.action(conn, "reindex", "failed", {**info, "error": "cannot tell the free "
                        f"space of {self.cfg.data_directory}: {exc}"}, started,
                        time.monotonic() - t0)
            return
        info.update(free_bytes=free, needed_bytes=2 * size_before)
        if free < 2 * size_before:
            self.action(conn, "reindex", "skipped", {**info, "reason": "not enough free "
                        f"space: {where} has {util.human(free)} free, REINDEX CONCURRENTLY "
                        f"wants twice the index's {util.human(size_before)}"}, started,
                        time.monotonic() - t0)
            return
        if self.dry_run:
            self.planned("reindex", info)
            return
        try:
            before = self.invalid_copies(conn, table_oid)
        except self.pg.Error as exc:
            self.action(conn, "reindex", "failed", {**info, "error": error_text(exc)}, started,
                        time.monotonic() - t0)
            return
        status, reason = "failed", "interrupted: the statement was cancelled"
        try:
            status, reason = self.execute(conn, statement, target)
        finally:
            seconds = time.monotonic() - t0
            if not conn.closed:
                with contextlib.suppress(self.pg.Error):
                    info["index_bytes_after"] = self.index_size(conn, target)
            if reason:
                info["reason" if status == "skipped" else "error"] = reason
            self.action(conn, "reindex", status, info, started, seconds)
            if status != "ok" and not conn.closed:
                # The copy this statement made (and, failing after the swap, the old index
                # renamed *_ccold), INVALID: dropped now, or remembered for the next run.
                try:
                    after = self.invalid_copies(conn, table_oid)
                except self.pg.Error as exc:
                    self.log.emit("reindex", "failed", detail=detail(
                        db, target, error="cannot look for the INVALID leftover of "
                        f"{statement}: {error_text(exc)}"))
                    after = {}
                for oid, name in sorted(after.items()):
                    if oid not in before:
                        self.drop_leftover(conn, db, name, target)

    # -- refresh -------------------------------------------------------------------------------

    def refresh(self, conn, db: str) -> None:
        if self.dry_run:
            rows = conn.execute(
                "SELECT pg_catalog.format('%I.%I', n.nspname, c.relname), "
                "c.relispopulated AND EXISTS (SELECT 1 FROM pg_catalog.pg_index AS i "
                "  WHERE i.indrelid = g.mv AND i.indisunique AND i.indisvalid "
                "  AND i.indimmediate AND i.indexprs IS NULL AND i.indpred IS NULL) "
                "FROM monitoring.mv_refresh_registry AS g "
                "JOIN pg_catalog.pg_class AS c ON c.oid = g.mv AND c.relkind = 'm' "
                "JOIN pg_catalog.pg_namespace AS n ON n.oid = c.relnamespace "
                "WHERE (g.requested_at IS NOT NULL OR EXISTS (SELECT 1 FROM "
                "  monitoring.mv_refresh_late_requests AS l WHERE l.mv = g.mv)) "
                "AND (g.last_attempt_at IS NULL "
                "     OR g.last_attempt_at + g.min_interval <= pg_catalog.now()) "
                "ORDER BY 2 DESC, g.requested_at NULLS LAST, g.mv").fetchall()
            for target, concurrently in rows:
                self.planned("refresh", detail(db, target, refresh_statement(target,
                                                                             concurrently),
                                               concurrently=concurrently))
            if not rows:
                self.nothing("refresh", db, "no materialized view is due")
            return
        call = "SELECT * FROM monitoring.process_refresh_queue(false)"
        started, t0 = util.utcnow(), time.monotonic()
        self.notices.clear()
        try:
            rows = conn.execute(
                "SELECT q.mv::oid::int8, pg_catalog.format('%I.%I', n.nspname, c.relname), "
                "q.status, q.duration_ms, q.\"concurrently\" "
                "FROM monitoring.process_refresh_queue(false) AS q "
                "LEFT JOIN pg_catalog.pg_class AS c ON c.oid = q.mv "
                "LEFT JOIN pg_catalog.pg_namespace AS n ON n.oid = c.relnamespace").fetchall()
        except self.pg.errors.LockNotAvailable:
            self.log.emit("refresh", "skipped", time.monotonic() - t0,
                          detail=detail(db, None, call, reason="the refresh queue is busy: "
                                        "lock_timeout"))
            return
        except self.pg.Error as exc:
            self.lost(conn, db)
            self.log.emit("refresh", "failed", time.monotonic() - t0,
                          detail=detail(db, None, call, error=error_text(exc)))
            return
        busy = [n for n in self.notices if "another run is under way" in n]
        if not rows and busy:
            self.log.emit("refresh", "skipped", time.monotonic() - t0, detail=detail(
                db, None, call, reason=f"the refresh queue is busy: {busy[0]}"))
        elif not rows:
            self.nothing("refresh", db, "no materialized view is due")
        for oid, target, status, duration_ms, concurrently in rows:
            info = detail(db, target, refresh_statement(target, concurrently),
                          refresh_status=status, concurrently=concurrently,
                          duration_ms=float(duration_ms) if duration_ms is not None else None)
            if status != "ok":
                with contextlib.suppress(self.pg.Error):
                    info["error"] = conn.execute(
                        "SELECT last_error FROM monitoring.mv_refresh_registry "
                        "WHERE mv = %s::oid", (oid,)).fetchone()[0]
            self.action(conn, "refresh", "ok" if status == "ok" else "failed", info, started,
                        float(duration_ms) / 1000 if duration_ms is not None else None)

    # -- steps ---------------------------------------------------------------------------------

    def step(self, step: str) -> None:
        fd = None
        if not self.dry_run:
            try:
                fd, path = runner.acquire_lock(self.cfg.state_dir, f"maintenance-{step}")
            except OSError as exc:
                self.log.emit(step, "failed", detail=detail(
                    None, error=f"cannot open the lock file: {exc}"))
                return
            if fd is None:
                self.locked = True
                self.log.emit(step, "skipped", detail=detail(
                    None, reason=f"another run holds {path}; {step} not started"))
                return
        try:
            for db in self.databases:
                self.step_in(step, db)
        finally:
            if fd is not None:
                os.close(fd)

    def step_in(self, step: str, db: str) -> None:
        conn = self.open(step, db)
        if conn is None:
            return
        with conn:
            try:
                if step in ("vacuum", "analyze"):
                    self.tables(conn, db, step)
                elif step == "reindex":
                    self.reindex(conn, db)
                else:
                    self.refresh(conn, db)
            except ConnectionLost as exc:
                self.log.emit(step, "failed", detail=detail(
                    db, error=f"{exc}; the rest of {step} in {db} waits for the next run"))
            except self.pg.Error as exc:
                self.log.emit(step, "failed", detail=detail(db, error=error_text(exc)))

    def run(self) -> None:
        if self.standby():
            for step in self.steps:
                self.log.emit(step, "skipped", detail=detail(
                    None, reason="this server is a standby (pg_is_in_recovery()): maintenance "
                    "runs on the primary"))
            return
        for step in self.steps:
            self.step(step)


def refresh_statement(target: str, concurrently) -> str:
    return f"REFRESH MATERIALIZED VIEW {'CONCURRENTLY ' if concurrently else ''}{target}"


# ---------------------------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=NAME, formatter_class=argparse.RawDescriptionHelpFormatter, description=__doc__)
    parser.add_argument("--config", default=layout.MAINTENANCE_CONFIG,
                        help=f"the JSON configuration (default {layout.MAINTENANCE_CONFIG})")
    parser.add_argument("--database", action="append", metavar="DB",
                        help="only this database (repeatable; default: 'databases' of the "
                        "configuration)")
    parser.add_argument("--dry-run", action="store_true",
                        help="print the statements that would run (status planned); take no "
                        "lock, change nothing")
    parser.add_argument("steps", nargs="+", metavar="STEP", choices=(*STEPS, "all"),
                        help="vacuum, analyze, reindex, refresh, or all (run in that order)")
    return parser


class Interrupted(KeyboardInterrupt):
    pass


def _terminate(signum, frame):
    # The first SIGTERM cancels the running statement (psycopg sends a cancel on
    # KeyboardInterrupt) and lets the cleanup of a REINDEX's leftover run; later ones wait.
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    raise Interrupted(f"signal {signum}")


# Not runner.run_job, whose prologue main() repeats (postgres, the configuration, exit 2): its job
# takes one lock before it starts and its end line says "finished" or "finished with failures".
# Here each step takes its own lock (a held one skips that step, the others run, and the exit code
# is 75 when nothing failed), an interruption is logged with the end line, and the end line
# counts the lines per status (CountingLog) and names the steps, the databases and --dry-run.

def main(argv: list[str] | None = None) -> int:
    """The shared job runner with no lock of its own (each step takes its lock) and this
    program's end line (counts per status, steps, databases; 75 when a step was skipped)."""
    os.umask(0o077)  # what it writes (logs, state) is the postgres user's alone
    args = build_parser().parse_intermixed_args(argv)

    def load(path: str) -> Config:
        cfg = load_config(path)
        for i, db in enumerate(args.database or []):
            _database(f"--database[{i}]", db)
        return cfg

    return runner.run_job(NAME, JOB, args.config, run_steps, args, load=load, lock=False,
                          last_success=False, argv=argv, log_class=CountingLog, end=end_line)


def run_steps(cfg: Config, args, log: CountingLog) -> dict:
    """The steps of ``args``, logged; what the end line reports."""
    run = None
    interrupted = None
    try:
        signal.signal(signal.SIGTERM, _terminate)
        try:
            import psycopg
            import psycopg.errors  # noqa: F401
        except ImportError:
            log.emit(JOB, "failed", detail=detail(None, error="psycopg is not installed "
                                                  "(apt-get install python3-psycopg)"))
        else:
            run = Maintenance(cfg, args, log, psycopg)
            run.run()
    except KeyboardInterrupt as exc:
        interrupted = f"interrupted ({exc or 'SIGINT'})"
        log.emit(JOB, "failed", detail=detail(None, error=interrupted))
    except Exception as exc:  # a bug: logged, and the exit code says so
        traceback.print_exc(file=sys.stderr)
        log.emit(JOB, "failed", detail=detail(None, error=f"{type(exc).__name__}: {exc}"))
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
    return {"interrupted": interrupted, "locked": run is not None and run.locked,
            "steps": ordered_steps(args.steps),
            "databases": run.databases if run else list(args.database or cfg.databases),
            "dry_run": args.dry_run}


def end_line(log: CountingLog, rc: int, result: dict | None) -> tuple[int, str, dict]:
    result = result or {"interrupted": None, "locked": False, "steps": [], "databases": [],
                        "dry_run": None}  # run_steps logs its own errors: never expected
    if log.counts["failed"] or log.failures or rc != runner.EXIT_OK:
        rc, status, text = runner.EXIT_FAILED, "failed", "finished with failures"
    elif result["locked"]:
        rc, status, text = runner.EXIT_LOCKED, "skipped", ("finished; another run holds a "
                                                           "step's lock, that step skipped")
    else:
        rc, status, text = runner.EXIT_OK, "ok", "finished"
    counts = {s: log.counts.get(s, 0) for s in ("ok", "skipped", "failed", "planned")}
    counts.update({s: n for s, n in log.counts.items() if s not in counts})
    return rc, status, {"result": result["interrupted"] or text, "counts": counts,
                        "steps": result["steps"], "databases": result["databases"],
                        "dry_run": result["dry_run"]}


if __name__ == "__main__":
    sys.exit(main())
