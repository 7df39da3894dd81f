"""pgBackRest: running it (always as postgres, with the configured --config,
--config-include-path and --stanza) and reading what it says (``info --output=json``, and the
text of ``verify``, which exits 0 whatever it finds and so is parsed: ``parse_verify``).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
from datetime import UTC, datetime
from pathlib import Path

from pginfra_host.backup_config import Config
from pginfra_host.runner import ConfigError, Failed, JobLog
from pginfra_host.util import OS_USER, ensure_dir, iso, read_json, run, tail, utcnow, write_json

PGBACKREST = "pgbackrest"


PGBR_NO_STANDBY = 56        # pgBackRest: "unable to find standby cluster"


# What the pre-pgBackRest layout left loose in wal_archive_dir (basic_archive's segments,
# history, .backup and .partial files, and its temporary archtemp.* files); pgBackRest's own
# archive/ and backup/ directories never match.
LEGACY_WAL_RE = re.compile(r"^(?:[0-9A-F]{24}(?:\.partial|\.[0-9A-F]{8}\.backup)?"
                           r"|[0-9A-F]{8}\.history|archtemp\.[^/]+\.\d+\.\d+)$")


VERIFY_STATE = "pgbackrest-verify.json"  # in state_dir; pginfra-health reads it


def pgbackrest_command(cfg: Config, *args: str, repo: int | None = None) -> list[str]:
    """``pgbackrest --config=C --config-include-path=<dir of C>/conf.d --stanza=S [--repo=N]
    ARGS``. Secrets stay in its configuration files: pgBackRest refuses them on the command
    line."""
    conf = cfg.pgbackrest
    return [PGBACKREST, f"--config={conf.config}",
            f"--config-include-path={os.path.join(os.path.dirname(conf.config), 'conf.d')}",
            f"--stanza={conf.stanza}", *([f"--repo={repo}"] if repo else []), *args]


def pgbackrest(cfg: Config, *args: str, repo: int | None = None,
               timeout: float | None = None) -> subprocess.CompletedProcess:
    """``pgbackrest_command`` run as postgres (through runuser when root)."""
    cmd = pgbackrest_command(cfg, *args, repo=repo)
    if os.geteuid() == 0:
        cmd = ["runuser", "-u", OS_USER, "--", *cmd]
    return run(cmd, timeout=timeout, cwd="/")


def pgbackrest_failed(proc: subprocess.CompletedProcess, what: str) -> Failed:
    return Failed(f"pgbackrest {what} exited with {proc.returncode}: "
                  f"{tail(proc.stderr or proc.stdout, 4)}")


def stanza_info(text: str, stanza: str) -> dict:
    """This stanza's object of ``pgbackrest --output=json info`` (a list of stanzas)."""
    for entry in json.loads(text):
        if entry.get("name") == stanza:
            return entry
    raise Failed(f"pgbackrest info does not list stanza {stanza}")


def pgbackrest_info(cfg: Config, repo: int | None = None) -> dict:
    proc = pgbackrest(cfg, "--log-level-console=warn", "--output=json", "info", repo=repo,
                      timeout=600)
    if proc.returncode != 0:
        raise pgbackrest_failed(proc, "info")
    return stanza_info(proc.stdout, cfg.pgbackrest.stanza)


def epoch_time(seconds: int) -> datetime:
    return datetime.fromtimestamp(seconds, UTC)


def repo_backups(info: dict, repo: int) -> list[dict]:
    """The backups of ``info`` held by repository ``repo``, oldest (stop time) first: info
    mixes the repositories."""
    return sorted((b for b in info.get("backup") or []
                   if b.get("database", {}).get("repo-key") == repo),
                  key=lambda b: b["timestamp"]["stop"])


def backup_summary(backup: dict) -> dict:
    return {"repo": backup["database"]["repo-key"], "label": backup["label"],
            "type": backup["type"], "start": iso(epoch_time(backup["timestamp"]["start"])),
            "stop": iso(epoch_time(backup["timestamp"]["stop"])),
            "size": backup["info"]["size"],
            "repo_size": backup["info"]["repository"]["delta"]}


def choose_backup(backups: list[dict], target: datetime) -> dict:
    """The backup pgBackRest restores for a time target: the newest of ``backups`` (one
    repository's) that stopped before ``target``, compared as pgBackRest does, in whole
    seconds (the target's fraction dropped). A target before the oldest one's stop is bad
    usage (ConfigError, naming that time)."""
    if not backups:
        raise Failed("the repository holds no backup")
    limit = int(target.timestamp())
    before = [b for b in backups if b["timestamp"]["stop"] < limit]
    if not before:
        oldest = min(epoch_time(b["timestamp"]["stop"]) for b in backups)
        raise ConfigError(f"--target-time {iso(target)} is before the oldest backup's stop "
                          f"time {iso(oldest)}: no backup can reach it")
    return max(before, key=lambda b: b["timestamp"]["stop"])


_VERIFY_BACKUP = re.compile(r"^backup: ([^,\s]+), status: (\w+)")


_VERIFY_ARCHIVE = re.compile(r"^archiveId: ([^,\s]+)")


_VERIFY_COUNT = re.compile(r"(missing|checksum invalid|size invalid|other): (\d+)")


def parse_verify(stdout: str, returncode: int = 0, stderr: str = "") -> tuple[list[str], list]:
    """(problems, valid backup labels) from ``pgbackrest --output=text --verbose verify``,
    which exits 0 whatever it found: an exit code other than 0, a ``status:`` other than
    ok, a backup whose status is not valid, any non-zero ``missing``, ``checksum invalid``,
    ``size invalid`` or ``other`` count, or no status at all. Each problem names its backup
    label (or archive id)."""
    problems, valid, status_seen = [], [], False
    if returncode != 0:
        problems.append(f"verify exited with {returncode}: {tail(stderr or stdout, 4)}")
    subject = "verify"
    for line in stdout.splitlines():
        text = line.strip()
        backup, archive = _VERIFY_BACKUP.match(text), _VERIFY_ARCHIVE.match(text)
        if backup:
            subject = f"backup {backup.group(1)}"
            if backup.group(2) == "valid":
                valid.append(backup.group(1))
            else:
                problems.append(f"{subject}: status {backup.group(2)} ({text})")
        elif archive:
            subject = f"archive {archive.group(1)}"
        elif text.startswith("status:"):
            status_seen = True
            if text != "status: ok":
                problems.append(f"stanza {text}")
        else:
            counts = [f"{k}: {n}" for k, n in _VERIFY_COUNT.findall(text) if int(n) > 0]
            if counts:
                problems.append(f"{subject}: {', '.join(counts)}")
    if not status_seen and returncode == 0:
        problems.append(f"verify printed no status: {tail(stdout or stderr, 4) or 'nothing'}")
    return problems, valid


def verify_repo(cfg: Config, log: JobLog, repo: int) -> dict:
    """``verify`` of one repository, parsed and logged: {"ok", "problems", "valid"}."""
    started = time.monotonic()
    try:
        proc = pgbackrest(cfg, "--log-level-console=warn", "--output=text", "--verbose",
                          "verify", repo=repo)
        problems, valid = parse_verify(proc.stdout, proc.returncode, proc.stderr)
    except (OSError, subprocess.SubprocessError) as exc:
        problems, valid = [f"verify did not run: {type(exc).__name__}: {exc}"], []
    log.emit("pgbackrest-verify", "failed" if problems else "ok", time.monotonic() - started,
             detail=f"repo{repo}: " + ("; ".join(problems) if problems else
                                        f"{len(valid)} backup(s) and their WAL verified"))
    return {"ok": not problems, "problems": problems, "valid": valid}


def record_verify(cfg: Config, results: dict) -> Path:
    """state_dir/pgbackrest-verify.json (0600), what pginfra-health reads: {"time", "repos":
    {"N": {"ok", "problems", "valid", "time"}}}, the repositories verified now replacing
    their earlier results (repositories no longer configured are dropped)."""
    path = ensure_dir(cfg.state_dir) / VERIFY_STATE
    now = iso(utcnow())
    repos = {key: value for key, value in ((read_json(path) or {}).get("repos") or {}).items()
             if key in {str(r) for r in cfg.pgbackrest.repos}}
    repos.update({str(repo): {**result, "time": now} for repo, result in results.items()})
    write_json(path, {"time": now, "repos": repos}, mode=0o600)
    return path


def clean_fulls(info: dict, repo: int, verify_state: dict | None) -> list[str]:
    """Labels of the full backups ``repo`` holds (per ``info``) that the last recorded verify
    of that repository found valid, with nothing wrong in it."""
    result = ((verify_state or {}).get("repos") or {}).get(str(repo)) or {}
    if not result.get("ok"):
        return []
    valid = set(result.get("valid") or [])
    return [b["label"] for b in repo_backups(info, repo)
            if b["type"] == "full" and b["label"] in valid]


def legacy_wal_names(names) -> list[str]:
    """The names in wal_archive_dir the pre-pgBackRest layout left (see LEGACY_WAL_RE)."""
    return sorted(n for n in names if LEGACY_WAL_RE.match(n))

