"""The backup checks. backup_base: pgBackRest's ``info`` of the stanza (run with the
configuration, its conf.d and the stanza; at most half the run_timeout), the newest backup of
each configured repository against backup_base_age_hours, and the last verify pginfra-backup
recorded. backup_dump: the age of the last verified dumps pginfra-backup recorded. Both are ok
on a standby (the primary takes the backups). ``parse_pgbackrest_info``,
``read_verify_record`` and ``base_backup_result`` are pure: the tests feed them recorded
outputs.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
from datetime import UTC, datetime
from pathlib import Path

from pginfra_host import util
from pginfra_host.health.config import BackupSettings
from pginfra_host.health.context import Context
from pginfra_host.health.result import (
    CRITICAL,
    OK,
    SEVERITY,
    UNKNOWN,
    WARNING,
    clean,
    grade,
    num,
    one_line,
    result,
    rounded,
    seconds_text,
    worst,
)

PGBACKREST = "/usr/bin/pgbackrest"  # Debian's package
VERIFY_RECORD = "pgbackrest-verify.json"  # pginfra-backup verify's, in backup.state_dir
# pgBackRest's info status codes (stanza and repository): 2 is "no valid backups", said here
# as "no backup in repo N"; the others are problems with pgBackRest's own message.
INFO_OK, INFO_NO_BACKUP, INFO_MIXED = 0, 2, 4
INFO_NEEDS_STANZA = {1, 3}  # missing stanza path / data: stanza-create has not run there


def pgbackrest_argv(backup: BackupSettings, *args: str) -> list[str]:
    """pgbackrest with the configuration file, its conf.d (a stanza's options and the
    repositories' passphrases are there) and the stanza; nothing on the console but what the
    command prints (no log lines in the JSON), no log file."""
    return [PGBACKREST, f"--config={backup.pgbackrest_config}",
            f"--config-include-path={backup.include_path}", f"--stanza={backup.stanza}",
            "--log-level-console=off", "--log-level-file=off", *args]


def _field(obj, key: str, kind: type, where: str):
    value = obj.get(key) if isinstance(obj, dict) else None
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise ValueError(f"{where}: no {key!r} ({kind.__name__})")
    return value


def parse_pgbackrest_info(text: str, stanza: str) -> dict:
    """The stanza's part of ``pgbackrest --output=json info``, checked and reduced to what the
    check needs; ValueError when the text is not that. JSON integers stay exact (system-id is
    above 2^53)."""
    try:
        stanzas = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"not JSON: {exc}") from None
    if not isinstance(stanzas, list):
        raise ValueError("not a JSON list of stanzas")
    found = [s for s in stanzas if isinstance(s, dict) and s.get("name") == stanza]
    if not found:
        names = [s.get("name") for s in stanzas if isinstance(s, dict)]
        raise ValueError(f"stanza {stanza} is not in it (it lists {names or 'none'})")
    raw = found[0]
    status = _field(raw, "status", dict, "status")
    lock = status.get("lock") if isinstance(status.get("lock"), dict) else {}
    held = lock.get("backup", {}).get("held") if isinstance(lock.get("backup"), dict) else None
    repos = {}
    for i, repo in enumerate(_field(raw, "repo", list, "stanza")):
        key = _field(repo, "key", int, f"repo[{i}]")
        repo_status = _field(repo, "status", dict, f"repo[{i}]")
        repos[key] = {"code": _field(repo_status, "code", int, f"repo {key} status"),
                      "message": clean(repo_status.get("message")),
                      "cipher": repo.get("cipher")}
    backups = []
    for i, backup in enumerate(_field(raw, "backup", list, "stanza")):
        where = f"backup[{i}]"
        database = _field(backup, "database", dict, where)
        stamps = _field(backup, "timestamp", dict, where)
        backups.append({"repo": _field(database, "repo-key", int, f"{where} database"),
                        "label": _field(backup, "label", str, where),
                        "type": _field(backup, "type", str, where),
                        "start": _field(stamps, "start", int, f"{where} timestamp"),
                        "stop": _field(stamps, "stop", int, f"{where} timestamp"),
                        "error": backup.get("error") is True})
    system_ids = {}
    for db in raw.get("db") or []:
        if isinstance(db, dict) and isinstance(db.get("repo-key"), int):
            system_ids[db["repo-key"]] = db.get("system-id")
    return {"name": stanza,
            "code": _field(status, "code", int, "stanza status"),
            "message": clean(status.get("message")),
            "backup_running": held is True,
            "repos": repos, "backups": backups, "system_ids": system_ids}


def read_verify_record(path: Path) -> tuple[dict | None, str | None]:
    """(the record pginfra-backup verify wrote, None) or (None, why it cannot be used); both
    None when there is none yet. The record: {"time": ISO, "repos": {"N": {"ok": bool,
    "problems": [text, ...]}}}."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None, None
    except (OSError, UnicodeDecodeError) as exc:
        return None, f"cannot read {path}: {exc.strerror if isinstance(exc, OSError) else exc}"
    try:
        record = json.loads(text)
        if not isinstance(record, dict) or not isinstance(record.get("time"), str):
            raise ValueError("no \"time\" string")
        moment = util.parse_time(record["time"])
        repos = record.get("repos")
        if not isinstance(repos, dict):
            raise ValueError("no \"repos\" object")
        checked = {}
        for key, repo in repos.items():
            if not (isinstance(repo, dict) and isinstance(repo.get("ok"), bool)
                    and isinstance(repo.get("problems", []), list)):
                raise ValueError(f"repo {key}: not {{\"ok\": true|false, \"problems\": [...]}}")
            checked[str(key)] = {"ok": repo["ok"],
                                 "problems": [clean(p) for p in repo.get("problems", [])]}
    except ValueError as exc:
        return None, f"{path} is malformed: {one_line(exc)}"
    return {"time": util.iso(moment), "repos": checked}, None


def base_backup_result(info: dict, backup: BackupSettings, pair: tuple, now: float,
                       verify: dict | None = None, verify_problem: str | None = None,
                       verify_path: str | None = None) -> dict:
    """backup_base from pgBackRest's info (parse_pgbackrest_info) and the last verify record:
    per configured repository the age of its newest backup (full, diff or incr) against
    ``pair``; a repository pgBackRest reports a problem with, or without a backup: critical;
    the worst repository decides. A verify that found a problem: critical. ``now``: epoch
    seconds."""
    reasons: list[tuple[str, str]] = []
    repos_data: dict[str, dict] = {}
    ages = []
    for n in backup.repos:
        repo = info["repos"].get(n)
        mine = [b for b in info["backups"] if b["repo"] == n]
        entry = {"code": None if repo is None else repo["code"],
                 "message": None if repo is None else repo["message"], "backups": len(mine)}
        repos_data[str(n)] = entry
        if repo is None:
            listed = ", ".join(map(str, sorted(info["repos"]))) or "none"
            status, text = CRITICAL, (f"repo {n} is not in pgBackRest's configuration "
                                      f"{backup.pgbackrest_config} (it has repo(s) {listed})")
        elif repo["code"] not in (INFO_OK, INFO_NO_BACKUP):
            hint = (f": stanza-create has not run for stanza {backup.stanza}?"
                    if repo["code"] in INFO_NEEDS_STANZA else "")
            status, text = CRITICAL, (f"repo {n}: {repo['message']} (pgBackRest status "
                                      f"{repo['code']}{hint})")
        elif not mine:
            status, text = CRITICAL, f"no backup in repo {n}"
        else:
            newest = mine[-1]  # info lists them oldest first
            age = (now - newest["stop"]) / 3600
            entry.update(label=newest["label"], type=newest["type"],
                         stop=util.iso(datetime.fromtimestamp(newest["stop"], UTC)),
                         age_hours=rounded(age), error=newest["error"])
            what = f"{newest['type']} {clean(newest['label'])}"
            if age < -0.1:
                status, text = UNKNOWN, (f"repo {n}: {what} finished in the future "
                                         f"({entry['stop']}; is the clock right?)")
            else:
                age = max(0.0, age)
                ages.append(age)
                status, text = grade(age, pair), (f"repo {n}: {what} finished "
                                                  f"{seconds_text(age * 3600)} ago")
            if newest["error"]:
                reasons.append((WARNING, f"repo {n}: backup {clean(newest['label'])} found "
                                "page checksum errors in the database (pgbackrest info "
                                f"--set={clean(newest['label'])} names the files)"))
        entry["status"] = status
        reasons.append((status, text))
    if info["code"] not in (INFO_OK, INFO_NO_BACKUP, INFO_MIXED) and not any(
            e["code"] == info["code"] for e in repos_data.values()):
        reasons.append((CRITICAL, f"stanza {backup.stanza}: {info['message']} (pgBackRest "
                        f"status {info['code']})"))
    notes, verify_data = [], None  # notes: said after the reasons, never a problem
    if verify_problem:
        reasons.append((UNKNOWN, verify_problem))
    elif verify is None:
        notes.append("no pgbackrest verify recorded yet")
    else:
        verify_data = {"path": verify_path, **verify}
        bad = [f"repo {key}: " + ("; ".join(r["problems"]) or "not ok")
               for key, r in sorted(verify["repos"].items()) if not r["ok"]]
        if bad:
            reasons.append((CRITICAL, f"last pgbackrest verify ({verify['time']}) found: "
                            + "; ".join(bad)))
        else:
            notes.append(f"last pgbackrest verify ({verify['time']}): ok")
    if info["backup_running"]:
        notes.append("a backup is running now")
    status = worst(s for s, _ in reasons)
    ordered = sorted(reasons, key=lambda r: -SEVERITY[r[0]])  # the worst first, stable
    detail = "; ".join([text for _, text in ordered] + notes)
    value = max(ages) if ages else None
    data = {"stanza": backup.stanza, "config": backup.pgbackrest_config,
            "stanza_status": {"code": info["code"], "message": info["message"]},
            "backup_running": info["backup_running"], "age_hours": rounded(value),
            "repos": repos_data, "verify": verify_data}
    return result("backup_base", status, detail, value, "h", pair, data)


def summarize_pgbackrest_error(message: str, limit: int = 300) -> str:
    """pgBackRest's error text on one line: without its protocol wrapper, retry notes, HINTs
    and repeated lines."""
    kept: list[str] = []
    for line in message.splitlines():
        line = clean(line)
        if (not line or line.startswith("HINT:") or re.match(r"raised from \S+ protocol:", line)
                or re.match(r"\[\w+\] on retry after", line)):
            continue
        if line not in kept:
            kept.append(line)
    text = " ".join(kept) or one_line(message) or "no message"
    return text if len(text) <= limit else text[:limit - 3] + "..."


def check_backup_dump(ctx: Context) -> dict:
    """The age of the last verified dumps, as pginfra-backup recorded it."""
    name, what, pair = "backup_dump", "dump", ctx.th["backup_dump_age_hours"]
    if ctx.in_recovery:
        return result(name, OK, "standby: the primary takes the backups", unit="h",
                      pair=pair, data={"in_recovery": True})
    path = Path(ctx.cfg.backup_state_dir) / "last-success" / "dump.json"
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return result(name, CRITICAL, f"no verified {what} recorded in {path}", unit="h",
                      pair=pair, data={"path": str(path)})
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else str(exc)
        return result(name, UNKNOWN, f"cannot read {path}: {reason}", unit="h", pair=pair,
                      data={"path": str(path)})
    try:
        record = json.loads(text)
        if not isinstance(record, dict):
            raise ValueError("not a JSON object")
        if not isinstance(record.get("time"), str):
            raise ValueError("no \"time\" string")
        moment = util.parse_time(record["time"])
    except ValueError as exc:
        return result(name, UNKNOWN, f"{path} is malformed: {one_line(exc)}", unit="h",
                      pair=pair, data={"path": str(path)})
    age = (util.utcnow() - moment).total_seconds() / 3600
    label = record.get("label")
    data = {"path": str(path), "time": util.iso(moment), "label": label,
            "age_hours": rounded(age)}
    if age < -0.1:
        return result(name, UNKNOWN, f"{path}: the recorded time {util.iso(moment)} is "
                      "in the future (is the clock right?)", unit="h", pair=pair,
                      data=data)
    age = max(0.0, age)
    detail = (f"the last verified {what}{' ' + clean(label) if label else ''} finished "
              f"{seconds_text(age * 3600)} ago ({util.iso(moment)})")
    return result(name, grade(age, pair), detail, age, "h", pair, data)


def pgbackrest_limit(ctx: Context) -> float:
    """Seconds pgbackrest may take: half the run_timeout, and less than what is left."""
    limit = ctx.cfg.run_timeout / 2
    if ctx.deadline is not None:
        limit = min(limit, ctx.deadline - time.monotonic() - 1)
    return max(1.0, limit)


def check_backup_base(ctx: Context) -> dict:
    """pgbackrest info of the stanza (within pgbackrest_limit) and the last verify
    record, judged by base_backup_result; pgbackrest failing: critical; too slow: unknown."""
    backup, pair = ctx.cfg.backup, ctx.th["backup_base_age_hours"]
    if ctx.in_recovery:
        return result("backup_base", OK, "standby: the primary takes the backups",
                      unit="h", pair=pair, data={"in_recovery": True})
    limit = pgbackrest_limit(ctx)
    # A repository that does not answer costs about 4 x io-timeout (pgBackRest retries):
    # within the limit, its problem is reported rather than a timeout.
    io_timeout = max(1, int(limit / 5))
    argv = pgbackrest_argv(backup, f"--io-timeout={io_timeout}", "--output=json", "info")
    # pgBackRest options may come from PGBACKREST_* variables, as archive_command's can
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LC_ALL": "C",
           **{k: v for k, v in os.environ.items() if k.startswith("PGBACKREST_")}}
    data = {"stanza": backup.stanza, "config": backup.pgbackrest_config}
    try:
        proc = subprocess.run(argv, capture_output=True, encoding="utf-8",
                              errors="replace", env=env, cwd="/",
                              stdin=subprocess.DEVNULL, timeout=limit)
    except FileNotFoundError:
        return result("backup_base", CRITICAL, f"{PGBACKREST} is missing: pgBackRest is "
                      "not installed (apt-get install pgbackrest)", unit="h", pair=pair,
                      data=data)
    except subprocess.TimeoutExpired:
        return result("backup_base", UNKNOWN, f"pgbackrest info did not finish within "
                      f"{num(round(limit, 1))} s (a repository that does not answer?)",
                      unit="h", pair=pair, data=data)
    if proc.returncode != 0:
        reason = summarize_pgbackrest_error(proc.stderr) if proc.stderr.strip() \
            else "no message"
        return result("backup_base", CRITICAL, f"pgbackrest info failed (exit code "
                      f"{proc.returncode}): {reason}", unit="h", pair=pair,
                      data={**data, "exit_code": proc.returncode})
    try:
        info = parse_pgbackrest_info(proc.stdout, backup.stanza)
    except ValueError as exc:
        return result("backup_base", UNKNOWN, f"pgbackrest info printed no usable report: "
                      f"{one_line(exc)}", unit="h", pair=pair, data=data)
    path = Path(backup.state_dir) / VERIFY_RECORD
    verify, problem = read_verify_record(path)
    return base_backup_result(info, backup, pair, time.time(), verify, problem, str(path))
