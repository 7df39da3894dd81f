"""The archiver check: pg_stat_archiver and the .ready files, wal_archive_dir (pgBackRest's
repo 1) present and writable, failed_count rising between runs (state_dir/archiver.json),
and, with "backup" set, pgBackRest's side: archive_command is its archive-push for the stanza,
and the asynchronous archive-push's error files (<spool_path>/archive/<stanza>/out/*.error)
of segments still waiting.
"""

from __future__ import annotations

import os
import pwd
import shlex
from pathlib import Path

from pginfra_host import util
from pginfra_host.health.backups import summarize_pgbackrest_error
from pginfra_host.health.context import Context
from pginfra_host.health.db import query, query_one, settings
from pginfra_host.health.result import (
    CRITICAL,
    OK,
    SEVERITY,
    WARNING,
    clean,
    grade,
    result,
    rounded,
    seconds_text,
    worst,
)


def parse_async_status(text: str) -> tuple[int | None, str]:
    """A status file of pgBackRest's asynchronous archiving (<segment>.error, global.error):
    the exit code on the first line, then the message."""
    first, _, rest = text.partition("\n")
    try:
        return int(first.strip()), summarize_pgbackrest_error(rest)
    except ValueError:
        return None, summarize_pgbackrest_error(text)


def push_errors(spool_path: str, stanza: str) -> tuple[list[dict], str | None]:
    """([{"segment", "code", "message"}, ...] from <spool_path>/archive/<stanza>/out/*.error,
    sorted by name ("global" is a failure of the whole run), a problem reading the spool)."""
    out = Path(spool_path) / "archive" / stanza / "out"
    try:
        names = sorted(n for n in os.listdir(out) if n.endswith(".error"))
    except FileNotFoundError:
        return [], None  # nothing pushed asynchronously yet
    except OSError as exc:
        return [], f"cannot read pgBackRest's spool {out}: {exc.strerror}"
    errors = []
    for name in names:
        try:
            text = (out / name).read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            continue  # the next try cleared it
        except OSError as exc:
            text = f"\ncannot read {out / name}: {exc.strerror}"
        code, message = parse_async_status(text)
        errors.append({"segment": name[:-len(".error")], "code": code, "message": message})
    return errors, None


def pending_push_errors(errors: list[dict], ready: set[str]) -> list[dict]:
    """The errors of segments PostgreSQL still waits to archive (and global.error while any
    does): one left behind by a segment archived since is history."""
    return [e for e in errors if e["segment"] in ready or (e["segment"] == "global" and ready)]


def archiving_problem(command: str, library: str, stanza: str) -> str | None:
    """Why archive_command is not pgBackRest's archive-push for ``stanza``, or None."""
    if library:
        return (f"archive_library {clean(library)} is set: PostgreSQL uses it and ignores "
                "archive_command, WAL does not go to pgBackRest")
    try:
        words = shlex.split(command)
    except ValueError:
        words = command.split()
    program = os.path.basename(words[0]) if words else ""
    given = None
    for i, word in enumerate(words):
        if word.startswith("--stanza="):
            given = word.split("=", 1)[1]
        elif word == "--stanza" and i + 1 < len(words):
            given = words[i + 1]
    if program == "pgbackrest" and "archive-push" in words and "%p" in words \
            and given == stanza:
        return None
    if program != "pgbackrest":
        runs = f"it runs {clean(program) or 'nothing'}"
    elif given is None:
        runs = "no --stanza"
    elif given != stanza:
        runs = f"its stanza is {clean(given)}"
    else:
        runs = "not archive-push %p"
    return (f"archive_command is not pgbackrest archive-push for stanza {stanza} ({runs}): "
            "the archiving is not what pginfra set up")


def archive_dir_problem(ctx: Context) -> str | None:
    """Why wal_archive_dir cannot take WAL (missing, not a directory, not writable), or
    None."""
    path = ctx.cfg.wal_archive_dir
    try:
        if not os.path.isdir(path):
            return (f"wal_archive_dir {path} is not a directory" if os.path.exists(path)
                    else f"wal_archive_dir {path} is missing")
    except OSError as exc:
        return f"wal_archive_dir {path}: {exc.strerror}"
    if not os.access(path, os.W_OK | os.X_OK):
        user = pwd.getpwuid(os.geteuid()).pw_name
        return f"wal_archive_dir {path} is not writable by {user}: archiving cannot work"
    return None


def archiver_state(ctx: Context, stats: dict) -> tuple[str | None, str | None]:
    """(warning text when failed_count rose since the previous run, a problem keeping the
    state); records this run's counts in state_dir/archiver.json."""
    path = Path(ctx.cfg.state_dir) / "archiver.json"
    previous = util.read_json(path) or {}
    reset = util.iso(stats["stats_reset"]) if stats["stats_reset"] else None
    rose = None
    before = previous.get("failed_count")
    if (isinstance(before, int) and previous.get("stats_reset") == reset
            and stats["failed_count"] > before):
        rose = (f"failed_count rose from {before} to {stats['failed_count']} since the "
                f"previous run (the last failure: {stats['last_failed_wal']} at "
                f"{util.iso(stats['last_failed_time'])})")
    try:
        util.ensure_dir(ctx.cfg.state_dir)
        util.write_json(path, {"failed_count": stats["failed_count"], "stats_reset": reset,
                              "time": util.iso(util.utcnow())})
    except OSError as exc:
        return rose, f"cannot record the archiver's counts in {path}: {exc.strerror}"
    return rose, None


def check_archiver(ctx: Context) -> dict:
    """Archiving against archive_failing_seconds and archive_ready_segments (the value:
    segments waiting); wal_archive_dir unusable: critical; archive_mode off: warning; a
    standby is ok unless archive_mode is always."""
    pair = ctx.th["archive_ready_segments"]
    failing_pair = ctx.th["archive_failing_seconds"]
    problem = archive_dir_problem(ctx)
    if ctx.conn is None:
        if problem:
            return result("archiver", CRITICAL, problem, unit="segments", pair=pair)
        return ctx.not_answering("archiver")
    conf = settings(ctx.conn, "archive_mode", "archive_command", "archive_library")
    mode = conf.get("archive_mode", "off")
    if mode == "off":
        return result("archiver", WARNING, "archive_mode is off: point-in-time recovery "
                      "is impossible", unit="segments", pair=pair,
                      data={"archive_mode": mode})
    if ctx.in_recovery and mode != "always":
        return result("archiver", OK, "standby: the primary archives", unit="segments",
                      pair=pair, data={"archive_mode": mode, "in_recovery": True})
    stats = query_one(ctx.conn, """
        SELECT archived_count, last_archived_wal, last_archived_time, failed_count,
               last_failed_wal, last_failed_time, stats_reset,
               (last_failed_time IS NOT NULL AND (last_archived_time IS NULL
                OR last_failed_time > last_archived_time)) AS failing,
               extract(epoch FROM clock_timestamp() - last_failed_time)::float8
                   AS since_failure,
               extract(epoch FROM clock_timestamp() - last_archived_time)::float8
                   AS since_archived
        FROM pg_catalog.pg_stat_archiver""")
    ready = query_one(ctx.conn, """
        SELECT count(*)::int AS segments,
               extract(epoch FROM clock_timestamp() - min(modification))::float8 AS oldest
        FROM pg_catalog.pg_ls_archive_statusdir() WHERE name LIKE '%.ready'""")
    reasons: list[tuple[str, str]] = []
    if problem:
        reasons.append((CRITICAL, problem))
    if not conf.get("archive_command") and not conf.get("archive_library"):
        reasons.append((WARNING, f"archive_mode is {mode} but archive_command and "
                        "archive_library are empty: WAL piles up in pg_wal"))
    failing_for = None
    if stats["failing"]:
        failing_for = ready["oldest"] if ready["segments"] else stats["since_failure"]
        failing_for = max(0.0, failing_for or 0.0)
        reasons.append((grade(failing_for, failing_pair),
                        f"archiving fails for {seconds_text(failing_for)}: the last "
                        f"failure {stats['last_failed_wal']} at "
                        f"{util.iso(stats['last_failed_time'])}, failed_count "
                        f"{stats['failed_count']}"))
    rose, state_problem = archiver_state(ctx, stats)
    if rose:
        reasons.append((WARNING, rose))
    if state_problem:
        reasons.append((WARNING, state_problem))
    waiting = ready["segments"]
    pgbr = pgbackrest_archiving(ctx, conf, waiting) if ctx.cfg.backup else None
    if pgbr:
        reasons += pgbr.pop("reasons")
    waiting_text = (f"{waiting} segment(s) waiting to be archived"
                    + (f", the oldest for {seconds_text(ready['oldest'])}"
                       if waiting else ""))
    if waiting:
        reasons.append((grade(waiting, pair), waiting_text))
    status = worst(s for s, _ in reasons)
    if status == OK and not stats["failing"]:
        last = (f"the last archived {stats['last_archived_wal']}, "
                f"{seconds_text(stats['since_archived'])} ago"
                if stats["last_archived_wal"] else "nothing archived yet")
        detail = f"archiving works: {last}; {waiting_text}"
    else:  # the worst first; a failure still below its threshold is said too
        detail = "; ".join(text for _, text in sorted(reasons,
                                                       key=lambda r: -SEVERITY[r[0]]))
        if not waiting:
            detail += "; no segment waiting"
        if stats["failing"] or (pgbr and pgbr["push_errors"]):
            detail += ("; PostgreSQL keeps the WAL in pg_wal until it is archived: nothing "
                       "is lost until that disk fills")
    data = {"archive_mode": mode, "archived_count": stats["archived_count"],
            "last_archived_wal": stats["last_archived_wal"],
            "last_archived_time": util.iso(stats["last_archived_time"])
            if stats["last_archived_time"] else None,
            "failed_count": stats["failed_count"],
            "last_failed_wal": stats["last_failed_wal"],
            "last_failed_time": util.iso(stats["last_failed_time"])
            if stats["last_failed_time"] else None,
            "failing": stats["failing"], "failing_seconds": rounded(failing_for),
            "ready_segments": waiting, "oldest_ready_seconds": rounded(ready["oldest"]),
            "wal_archive_dir": ctx.cfg.wal_archive_dir}
    if pgbr is not None:
        data["pgbackrest"] = pgbr
    return result("archiver", status, detail, waiting, "segments", pair, data)


def pgbackrest_archiving(ctx: Context, conf: dict, waiting: int) -> dict:
    """What pgBackRest adds to the archiver check: archive_command is its archive-push
    for the stanza; the asynchronous archive-push's .error files of segments still
    waiting. {"reasons": [(status, text)], ...data}."""
    backup = ctx.cfg.backup
    reasons = []
    command, library = conf.get("archive_command") or "", conf.get("archive_library") or ""
    problem = archiving_problem(command, library, backup.stanza) \
        if command or library else None  # both empty: said above
    if problem:
        reasons.append((WARNING, problem))
    errors, spool_problem = push_errors(backup.spool_path, backup.stanza)
    if spool_problem:
        reasons.append((WARNING, spool_problem))
    pending = []
    if errors:
        ready = {r["name"][:-len(".ready")] for r in query(ctx.conn, """
            SELECT name FROM pg_catalog.pg_ls_archive_statusdir()
            WHERE name LIKE '%.ready'""")}
        pending = pending_push_errors(errors, ready)
    if pending:
        first = pending[0]
        where = ("the last run as a whole" if first["segment"] == "global"
                 else f"segment {first['segment']}")
        code = f" (exit code {first['code']})" if first["code"] is not None else ""
        segments = sum(e["segment"] != "global" for e in pending)
        reasons.append((WARNING, "pgBackRest archive-push fails"
                        + (f" for {segments} segment(s)" if segments else "")
                        + f", {waiting} waiting in pg_wal: {where}{code}: "
                        f"{first['message']}"
                        + (f" (and {len(pending) - 1} more error file(s) in "
                           f"{backup.spool_path})" if len(pending) > 1 else "")))
    return {"reasons": reasons,
            "archive_command_ok": bool(command or library) and problem is None,
            "spool_path": backup.spool_path, "push_errors": pending[:10],
            "stale_push_errors": len(errors) - len(pending)}
