"""Code shared by pginfra-backup and pginfra-restore (and the configuration checks, job logs and
locks that pginfra-health and pginfra-maintenance reuse), installed beside them in
/usr/local/lib/pginfra/.

Physical backups, WAL archiving and point-in-time recovery belong to pgBackRest: this module
only runs it (``pgbackrest``: always as postgres, always with the configured --config,
--config-include-path and --stanza) and reads what it says (``info --output=json``, and the
text of ``verify``, which exits 0 whatever it finds and so is parsed: ``parse_verify``).

What pginfra still does itself: the configuration (/etc/pginfra/backup.json) and its
validation, the JSON log lines, the job locks and last-success files, logical dumps (local
layout, verification, retention, their S3 copies: temporary keys, server-side copies, a
manifest as the mark of publication), and the choices made from pgBackRest's output (the
backup a point in time needs, whether the pre-pgBackRest layout may go), as pure functions.

Whether a dump counts is decided in one place, ``is_good(manifest)``: its manifest says it was
verified when it was taken, and ``verify`` has not marked it "bad" since.

It runs on Debian 12's own Python 3.11 with python3-psycopg (3.1) and python3-boto3 (1.26),
both imported only where they are needed.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import pwd
import re
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_LOCKED = 0, 1, 2, 75
DEFAULT_CONFIG = "/etc/pginfra/backup.json"
DEFAULT_SOCKET_DIR = "/var/run/postgresql"
OS_USER = "postgres"
EXIT_CODES_HELP = ("Exit codes: 0 success; 1 a stage failed (what could safely be finished was); "
                   "2 bad usage or configuration; 75 another run of the same job holds its lock "
                   "(skipped, not a failure).")

KiB, MiB, GiB, TiB = 1 << 10, 1 << 20, 1 << 30, 1 << 40
MIN_PART = 5 * MiB          # S3's smallest multipart part (but the last)
DEFAULT_PART = 8 * MiB      # boto3's default chunk
MAX_PART = 5 * GiB          # S3's largest part
MAX_PARTS = 10_000          # S3's most parts in one upload
PLAN_FOR = 1 * TiB          # every upload is sized to fit an object at least this large
DELETE_BATCH = 1000         # DeleteObjects takes at most 1000 keys

PGBACKREST = "pgbackrest"
PGBR_NO_STANDBY = 56        # pgBackRest: "unable to find standby cluster"
LABEL_RE = re.compile(r"^\d{8}T\d{6}Z$")
# What the pre-pgBackRest layout left loose in wal_archive_dir (basic_archive's segments,
# history, .backup and .partial files, and its temporary archtemp.* files); pgBackRest's own
# archive/ and backup/ directories never match.
LEGACY_WAL_RE = re.compile(r"^(?:[0-9A-F]{24}(?:\.partial|\.[0-9A-F]{8}\.backup)?"
                           r"|[0-9A-F]{8}\.history|archtemp\.[^/]+\.\d+\.\d+)$")
GLOBALS = "_globals"  # the directory and S3 "database" of pg_dumpall --globals-only
GLOBALS_END = "PostgreSQL database cluster dump complete"
VERIFY_STATE = "pgbackrest-verify.json"  # in state_dir; pginfra-health reads it


class Failed(Exception):
    """A stage failed; the message names what and why. ``logged``: already in the log."""

    def __init__(self, message: str, logged: bool = False):
        super().__init__(message)
        self.logged = logged


class ConfigError(Exception):
    """Bad configuration or usage: exit 2."""


# ---------------------------------------------------------------------------------------------
# Configuration

@dataclass(frozen=True)
class S3Settings:
    bucket: str
    prefix: str
    region: str
    endpoint_url: str
    sse: str
    kms_key_id: str
    storage_class: str
    request_checksum_calculation: str
    keep_days: int
    credentials_file: str
    ca_file: str = ""


@dataclass(frozen=True)
class PgBackRestSettings:
    stanza: str
    config: str
    repos: list[int]
    backup_standby: bool
    retention_full: int


@dataclass(frozen=True)
class Config:
    path: str
    host: str
    version: int
    cluster: str
    port: int
    data_directory: str
    stop_command: list[str]
    start_command: list[str]
    wal_archive_dir: str
    backup_dir: str
    state_dir: str
    log_dir: str
    databases: list[str]
    keep_local_dumps: int
    pgbackrest: PgBackRestSettings
    s3: S3Settings | None
    socket_dir: str = DEFAULT_SOCKET_DIR

    @property
    def bin_dir(self) -> str:
        return f"/usr/lib/postgresql/{self.version}/bin"

    def bin(self, name: str) -> str:
        return os.path.join(self.bin_dir, name)


_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")
_PREFIX = re.compile(r"^[A-Za-z0-9!_.*'()/-]{0,200}$")
_URL = re.compile(r"^https?://[A-Za-z0-9.:\[\]-]+(/[A-Za-z0-9._~/-]*)?$")
_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
TOP_KEYS = ("host", "version", "cluster", "port", "data_directory", "stop_command",
            "start_command", "wal_archive_dir", "backup_dir", "state_dir", "log_dir",
            "databases", "keep_local_dumps", "pgbackrest", "s3")
OPTIONAL_KEYS = ("socket_dir",)
PGBACKREST_KEYS = ("stanza", "config", "repos", "backup_standby", "retention_full")
S3_KEYS = ("bucket", "prefix", "region", "endpoint_url", "sse", "kms_key_id", "storage_class",
           "request_checksum_calculation", "keep_days", "credentials_file", "ca_file")


def _want(ok: bool, key: str, what: str, value) -> None:
    if not ok:
        raise ConfigError(f"key '{key}': {what} (got {json.dumps(value)})")


def _int(key, value, low, high=None) -> int:
    _want(isinstance(value, int) and not isinstance(value, bool) and value >= low
          and (high is None or value <= high), key,
          f"must be an integer >= {low}" + (f" and <= {high}" if high is not None else ""),
          value)
    return value


def _str(key, value, pattern: re.Pattern | None = None, what: str = "a non-empty string",
         empty: bool = False) -> str:
    _want(isinstance(value, str) and (empty or value != ""), key, f"must be {what}", value)
    if value and pattern is not None:
        _want(bool(pattern.match(value)), key, f"must be {what}", value)
    return value


def _abs(key, value, empty: bool = False) -> str:
    _want(isinstance(value, str) and (value.startswith("/") or (empty and value == ""))
          and "\0" not in value, key,
          "must be an absolute path" + (" or empty" if empty else ""), value)
    return value.rstrip("/") or "/" if value else value


def _command(key, value) -> list[str]:
    _want(isinstance(value, list) and value != [] and all(isinstance(v, str) and v
                                                          for v in value),
          key, "must be a non-empty list of non-empty strings (argv, no shell)", value)
    return list(value)


def _check_keys(raw: dict, required, optional=(), prefix: str = "") -> None:
    """Refuse unknown keys (listing the known ones) and missing required keys."""
    known = [*required, *optional]
    unknown = sorted(set(raw) - set(known))
    if unknown:
        names = (prefix + k if prefix else repr(k) for k in unknown)
        raise ConfigError(f"unknown key(s) {', '.join(names)}; "
                          f"known: {', '.join(known)}")
    for key in required:
        if key not in raw:
            raise ConfigError(f"key '{prefix}{key}' is missing")


def _pgbackrest_settings(raw) -> PgBackRestSettings:
    _want(isinstance(raw, dict), "pgbackrest", "must be an object", raw)
    _check_keys(raw, PGBACKREST_KEYS, prefix="pgbackrest.")
    repos = raw["repos"]
    _want(isinstance(repos, list) and repos != [] and len(set(map(str, repos))) == len(repos),
          "pgbackrest.repos", "must be a non-empty list of distinct repository keys", repos)
    for i, repo in enumerate(repos):
        _int(f"pgbackrest.repos[{i}]", repo, 1, 256)
    _want(isinstance(raw["backup_standby"], bool), "pgbackrest.backup_standby",
          "must be true or false", raw["backup_standby"])
    return PgBackRestSettings(
        stanza=_str("pgbackrest.stanza", raw["stanza"], _NAME, "a stanza name"),
        config=_abs("pgbackrest.config", raw["config"]),
        repos=list(repos), backup_standby=raw["backup_standby"],
        retention_full=_int("pgbackrest.retention_full", raw["retention_full"], 1, 1000))


def validate_config(raw, path: str = DEFAULT_CONFIG) -> Config:
    """The configuration, checked; ConfigError names the first bad key."""
    if not isinstance(raw, dict):
        raise ConfigError("the configuration must be a JSON object")
    _check_keys(raw, TOP_KEYS, OPTIONAL_KEYS)
    databases = raw["databases"]
    _want(isinstance(databases, list) and len(set(map(str, databases))) == len(databases),
          "databases", "must be a list of distinct database names", databases)
    for i, db in enumerate(databases):
        _want(isinstance(db, str) and 0 < len(db.encode()) <= 49 and "/" not in db
              and "\0" not in db and db not in (".", "..") and not db.startswith("_"),
              f"databases[{i}]", "must be a database name of 1..49 bytes, without '/' and "
              "not starting with '_'", db)
    pgbackrest = _pgbackrest_settings(raw["pgbackrest"])
    s3 = raw["s3"]
    settings = None
    if s3 is not None:
        _want(isinstance(s3, dict), "s3", "must be an object or null", s3)
        _check_keys(s3, S3_KEYS, prefix="s3.")
        sse = s3["sse"]
        _want(sse in ("AES256", "aws:kms"), "s3.sse", "must be 'AES256' or 'aws:kms'", sse)
        _str("s3.kms_key_id", s3["kms_key_id"], empty=True, what="a string")
        _want(not s3["kms_key_id"] or sse == "aws:kms", "s3.kms_key_id",
              "may only be set with s3.sse 'aws:kms'", s3["kms_key_id"])
        check = s3["request_checksum_calculation"]
        _want(check in ("when_required", "when_supported"), "s3.request_checksum_calculation",
              "must be 'when_required' or 'when_supported'", check)
        settings = S3Settings(
            bucket=_str("s3.bucket", s3["bucket"], _BUCKET, "an S3 bucket name"),
            prefix=_str("s3.prefix", s3["prefix"], _PREFIX, "a key prefix", empty=True)
            .strip("/"),
            region=_str("s3.region", s3["region"], re.compile(r"^[a-z0-9-]{2,40}$"),
                        "a region name"),
            endpoint_url=_str("s3.endpoint_url", s3["endpoint_url"], _URL,
                              "an http(s) URL or empty (AWS)", empty=True),
            sse=sse, kms_key_id=s3["kms_key_id"],
            storage_class=_str("s3.storage_class", s3["storage_class"],
                               re.compile(r"^[A-Z_]{2,40}$"), "a storage class"),
            request_checksum_calculation=check,
            keep_days=_int("s3.keep_days", s3["keep_days"], 1, 36500),
            credentials_file=_abs("s3.credentials_file", s3["credentials_file"], empty=True),
            ca_file=_abs("s3.ca_file", s3["ca_file"], empty=True),
        )
    return Config(
        path=path,
        host=_str("host", raw["host"], _NAME, "a host name ([A-Za-z0-9._-], 1..63)"),
        version=_int("version", raw["version"], 10, 99),
        cluster=_str("cluster", raw["cluster"], _NAME, "a cluster name"),
        port=_int("port", raw["port"], 1, 65535),
        data_directory=_abs("data_directory", raw["data_directory"]),
        stop_command=_command("stop_command", raw["stop_command"]),
        start_command=_command("start_command", raw["start_command"]),
        wal_archive_dir=_abs("wal_archive_dir", raw["wal_archive_dir"]),
        backup_dir=_abs("backup_dir", raw["backup_dir"]),
        state_dir=_abs("state_dir", raw["state_dir"]),
        log_dir=_abs("log_dir", raw["log_dir"]),
        databases=list(databases),
        keep_local_dumps=_int("keep_local_dumps", raw["keep_local_dumps"], 1, 100000),
        pgbackrest=pgbackrest, s3=settings,
        socket_dir=_abs("socket_dir", raw.get("socket_dir", DEFAULT_SOCKET_DIR)),
    )


def load_config(path: str) -> Config:
    try:
        with open(path, encoding="utf-8") as f:
            raw = json.load(f)
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such file (pass --config PATH)") from None
    except PermissionError:
        raise ConfigError(f"{path}: permission denied (run as {OS_USER})") from None
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path}: not valid JSON: {exc}") from None
    try:
        return validate_config(raw, path)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None


# ---------------------------------------------------------------------------------------------
# Time, labels, files

def utcnow() -> datetime:
    return datetime.now(UTC)


def iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="microseconds").replace(
        "+00:00", "Z")


def parse_time(text: str) -> datetime:
    moment = datetime.fromisoformat(text)
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def new_label(moment: datetime | None = None) -> str:
    return (moment or utcnow()).strftime("%Y%m%dT%H%M%SZ")


def label_time(label: str) -> datetime:
    return datetime.strptime(label, "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)


def fresh_label(taken) -> str:
    """A label for now that ``taken(label)`` does not know yet (waits for the next second)."""
    while True:
        label = new_label()
        if not taken(label):
            return label
        time.sleep(0.2)


def postgres_ids() -> tuple[int, int]:
    entry = pwd.getpwnam(OS_USER)
    return entry.pw_uid, entry.pw_gid


def ensure_dir(path, mode: int = 0o700, owner: tuple[int, int] | None = None) -> Path:
    """Create ``path`` (and missing parents) with ``mode``, owned by the running user, or by
    ``owner`` when root creates it for postgres."""
    path = Path(path)
    missing = []
    probe = path
    while not probe.exists():
        missing.append(probe)
        probe = probe.parent
    for directory in reversed(missing):
        with contextlib.suppress(FileExistsError):
            directory.mkdir(mode=mode)
            os.chmod(directory, mode)
            if owner:
                os.chown(directory, *owner)
    return path


def write_json(path, data, mode: int = 0o600) -> None:
    """Atomically: a temporary file in the same directory, fsync, rename."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(data, f, indent=2, sort_keys=True)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def read_json(path) -> dict | None:
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
        return data if isinstance(data, dict) else None
    except (OSError, ValueError):
        return None


def sha256_file(path) -> tuple[str, int]:
    h, size = hashlib.sha256(), 0
    with open(path, "rb") as f:
        while chunk := f.read(MiB):
            h.update(chunk)
            size += len(chunk)
    return h.hexdigest(), size


def check_files(directory: Path, files: dict) -> list[str]:
    """Each file of a manifest's ``files`` against its size and sha256: problems, each
    naming the file."""
    problems = []
    for name, want in sorted(files.items()):
        path = directory / name
        if not path.is_file():
            problems.append(f"{name}: missing")
            continue
        digest, size = sha256_file(path)
        if size != want.get("size"):
            problems.append(f"{name}: size {size}, the manifest says {want.get('size')} "
                            "(truncated or replaced)")
        elif digest != want.get("sha256"):
            problems.append(f"{name}: sha256 {digest}, the manifest says {want.get('sha256')}")
    return problems


def tail(text: str, lines: int = 8) -> str:
    return " | ".join(line for line in (text or "").strip().splitlines()[-lines:])


def run(cmd: list[str], timeout: float | None = None, **kw) -> subprocess.CompletedProcess:
    env = {**os.environ, "LC_ALL": "C"}
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env,
                          stdin=subprocess.DEVNULL, **kw)


# ---------------------------------------------------------------------------------------------
# Logging, locks, last success

class JobLog:
    """JSON log lines: to ``stream`` (stdout; None: the file only) and appended to
    ``log_dir/<job>.log``."""

    def __init__(self, job: str, log_dir: str | None, stream="stdout",
                 owner: tuple[int, int] | None = None):
        stream = sys.stdout if stream == "stdout" else stream  # the one in force now
        self.job, self.stream, self.file, self.failures = job, stream, None, 0
        if log_dir:
            try:
                ensure_dir(log_dir, owner=owner)
                self.file = open(Path(log_dir) / f"{job}.log", "a", encoding="utf-8")  # noqa: SIM115
            except OSError as exc:
                print(f"pginfra: cannot append to {log_dir}/{job}.log: {exc}", file=sys.stderr)

    def emit(self, stage: str, status: str, seconds: float | None = None,
             nbytes: int | None = None, detail=None, quiet: bool = False) -> None:
        if status == "failed":
            self.failures += 1
        record = {"time": iso(utcnow()), "job": self.job, "stage": stage, "status": status,
                  "seconds": None if seconds is None else round(seconds, 3),
                  "bytes": nbytes, "detail": detail}
        line = json.dumps(record, default=str, sort_keys=False)
        if self.stream is not None and not quiet:
            print(line, file=self.stream, flush=True)
        elif self.stream is None and status == "failed":
            print(line, file=sys.stderr, flush=True)
        if self.file is not None:
            self.file.write(line + "\n")
            self.file.flush()

    @contextlib.contextmanager
    def stage(self, stage: str, detail=None):
        """Times a stage; ``info.bytes``/``info.detail`` may be set inside. Any exception is
        logged as the stage's failure and raised again as a logged Failed."""
        info = StageInfo(detail=detail)
        started = time.monotonic()
        try:
            yield info
        except Failed as exc:
            if not exc.logged:
                self.emit(stage, "failed", time.monotonic() - started, info.bytes,
                          _join(info.detail, str(exc)))
            raise Failed(str(exc), logged=True) from exc
        except (KeyboardInterrupt, SystemExit):
            raise
        except Exception as exc:
            message = f"{type(exc).__name__}: {exc}"
            self.emit(stage, "failed", time.monotonic() - started, info.bytes,
                      _join(info.detail, message))
            raise Failed(message, logged=True) from exc
        self.emit(stage, info.status, time.monotonic() - started, info.bytes, info.detail)

    def close(self) -> None:
        if self.file is not None:
            self.file.close()


@dataclass
class StageInfo:
    detail: object = None
    bytes: int | None = None
    status: str = "ok"


def _join(detail, message: str):
    if detail is None:
        return message
    if isinstance(detail, dict):
        return {**detail, "error": message}
    return f"{detail}: {message}"


def acquire_lock(state_dir: str, job: str, owner=None) -> tuple[int | None, Path]:
    """(fd, path): fd is None when another process holds the lock."""
    path = ensure_dir(Path(state_dir) / "locks", owner=owner) / f"{job}.lock"
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None, path
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode())
    return fd, path


def write_last_success(state_dir: str, job: str, extra: dict | None = None,
                       owner=None) -> Path:
    path = ensure_dir(Path(state_dir) / "last-success", owner=owner) / f"{job}.json"
    write_json(path, {"job": job, "time": iso(utcnow()), **(extra or {})}, mode=0o644)
    return path


def reexec_as_postgres(program: str, argv: list[str]) -> None:
    """Root runs this job as postgres (peer authentication, files owned by postgres)."""
    runuser = shutil.which("runuser") or "/usr/sbin/runuser"
    try:
        pwd.getpwnam(OS_USER)
    except KeyError:
        raise ConfigError(f"there is no {OS_USER} user to run as") from None
    os.execv(runuser, ["runuser", "-u", OS_USER, "--", sys.executable, program, *argv])


def run_job(program: str, job: str, config_path: str, body, args, *, stream="stdout",
            lock: bool = True, last_success: bool = True, as_root: bool = False,
            argv: list[str] | None = None, print_result: bool = False,
            lock_name: str | None = None) -> int:
    """Load the configuration, take the job's lock, run ``body(cfg, args, log)`` and turn the
    outcome into an exit code. ``body`` returns a dict for last-success (None: do not write
    it); a logged failure anywhere makes the exit code 1. ``print_result``: on success the
    dict is also printed to stdout as the last line (pitr's report). ``lock_name``: the lock,
    when jobs share one (default: ``job``)."""
    name = os.path.basename(program)
    if os.geteuid() == 0 and not as_root:
        try:
            reexec_as_postgres(program, sys.argv[1:] if argv is None else argv)
        except ConfigError as exc:
            print(f"{name}: {exc}", file=sys.stderr)
            return EXIT_USAGE
    try:
        cfg = load_config(config_path)
    except ConfigError as exc:
        print(f"{name}: {exc}", file=sys.stderr)
        return EXIT_USAGE
    owner = postgres_ids() if os.geteuid() == 0 else None
    log = JobLog(job, cfg.log_dir, stream, owner)
    started = time.monotonic()
    fd = None
    try:
        if lock:
            try:
                fd, path = acquire_lock(cfg.state_dir, lock_name or job, owner)
            except OSError as exc:
                log.emit("lock", "failed", detail=f"cannot open the lock file: {exc}")
                return EXIT_FAILED
            if fd is None:
                log.emit("lock", "skipped",
                         detail=f"another {job} run holds {path}; not starting")
                return EXIT_LOCKED
        rc = EXIT_OK
        try:
            result = body(cfg, args, log)
        except ConfigError as exc:
            log.emit("usage", "failed", detail=str(exc))
            print(f"{name}: {exc}", file=sys.stderr)
            return EXIT_USAGE
        except Failed as exc:
            if not exc.logged:
                log.emit(job, "failed", detail=str(exc))
            result, rc = None, EXIT_FAILED
        except Exception as exc:
            traceback.print_exc(file=sys.stderr)
            log.emit(job, "failed", detail=f"{type(exc).__name__}: {exc}")
            result, rc = None, EXIT_FAILED
        if log.failures:
            rc = EXIT_FAILED
        if rc == EXIT_OK and last_success and result is not None:
            try:
                write_last_success(cfg.state_dir, job, result, owner)
            except OSError as exc:
                log.emit("last-success", "failed", detail=str(exc))
                rc = EXIT_FAILED
        log.emit("end", "ok" if rc == EXIT_OK else "failed", time.monotonic() - started,
                 detail="finished" if rc == EXIT_OK else "finished with failures")
        if print_result and rc == EXIT_OK and result is not None:
            print(json.dumps(result, default=str), flush=True)
        return rc
    finally:
        if fd is not None:
            os.close(fd)
        log.close()


# ---------------------------------------------------------------------------------------------
# pgBackRest: running it, and reading what it says (pure functions, unit-tested)

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


# ---------------------------------------------------------------------------------------------
# Dumps: retention and S3 part sizes (pure functions), verification, state

def chunk_size(size: int, override: int | None = None) -> int:
    """Multipart chunk: big enough that an object of max(size, 1 TiB) fits in 10,000 parts,
    rounded up to a MiB, at least 8 MiB (boto3's default). ``override`` (tests) is honoured
    down to S3's 5 MiB floor."""
    if override:
        return min(MAX_PART, max(MIN_PART, int(override)))
    need = -(-max(int(size), PLAN_FOR) // MAX_PARTS)
    chunk = max(DEFAULT_PART, -(-need // MiB) * MiB)
    if chunk > MAX_PART:
        raise Failed(f"{size} bytes do not fit in {MAX_PARTS} parts of at most 5 GiB")
    return chunk


@dataclass
class Item:
    """A backup as retention sees it; ``ref`` carries the caller's object."""
    label: str
    verified: bool
    ref: object = field(default=None, compare=False)


def select_local_retention(items: list[Item], keep: int) -> tuple[list[Item], list[Item]]:
    """(kept, deleted). The newest ``keep`` verified stay; older verified ones go, and so do
    failed or partial ones older than the newest verified. With no verified backup nothing
    goes; the newest verified never goes; a failed or partial one newer than the newest
    verified (the last run failed, or one is running) stays."""
    keep = max(1, keep)
    verified = sorted((i for i in items if i.verified), key=lambda i: i.label, reverse=True)
    if not verified:
        return list(items), []
    newest = verified[0].label
    kept_verified = {id(i) for i in verified[:keep]}
    deleted = [i for i in items
               if (i.verified and id(i) not in kept_verified)
               or (not i.verified and i.label < newest)]
    gone = {id(i) for i in deleted}
    return [i for i in items if id(i) not in gone], deleted


def select_s3_expiry(items: list[Item], keep_days: int, now: datetime) -> list[Item]:
    """S3 backups to delete: label older than ``keep_days`` days and older than the newest
    verified, published one (which never goes). Unpublished leftovers (files without a
    manifest) follow the same rule. Nothing goes when nothing is published."""
    published = [i.label for i in items if i.verified]
    if not published:
        return []
    newest = max(published)
    cutoff = now - timedelta(days=keep_days)
    return [i for i in items if i.label < newest and label_time(i.label) < cutoff]


def batches(seq: list, size: int = DELETE_BATCH):
    for start in range(0, len(seq), size):
        yield seq[start:start + size]


def compare_counts(expected: dict, actual: dict) -> list[str]:
    """Row-count differences between the source (as dumped) and a restore."""
    out = []
    for table in sorted(set(expected) | set(actual)):
        if table not in actual:
            out.append(f"{table}: missing from the restore ({expected[table]} rows expected)")
        elif table not in expected:
            out.append(f"{table}: in the restore only ({actual[table]} rows)")
        elif expected[table] != actual[table]:
            out.append(f"{table}: {actual[table]} rows restored, {expected[table]} expected")
    return out


def verify_dump_file(path: Path, cfg: Config) -> str | None:
    """A full read of a custom-format dump (``--list`` alone passes a truncated file)."""
    proc = run([cfg.bin("pg_restore"), "-f", "/dev/null", str(path)])
    if proc.returncode != 0:
        return f"{path.name}: pg_restore cannot read it: {tail(proc.stderr, 4)}"
    return None


def verify_globals_file(path: Path) -> str | None:
    try:
        with open(path, "rb") as f:
            f.seek(max(0, os.path.getsize(path) - 512))
            ending = f.read().decode("utf-8", "replace")
    except OSError as exc:
        return f"{path.name}: unreadable: {exc}"
    if GLOBALS_END not in ending:
        return f"{path.name}: does not end with pg_dumpall's '{GLOBALS_END}' (truncated)"
    return None


GOOD_STATES = ("verified", "published")


def is_good(manifest: dict | None) -> bool:
    """The one rule for whether a dump counts: its manifest (the local <label>.json, or the
    one published in S3) says it was verified when it was taken, and no
    ``verify`` has marked it bad since (``"bad": {"time", "reason", "by"}``)."""
    return bool(manifest) and bool(manifest.get("verified")) and not manifest.get("bad")


def backup_state(where: str, manifest: dict, complete: bool = True) -> str:
    """An entry's state, from ``is_good``. Local: verified | bad | failed (the run or its
    checks failed) | partial (a run that did not finish, or no manifest). S3: published |
    bad | unpublished (files without a manifest: an upload that did not finish)."""
    if where == "s3":
        return ("published" if is_good(manifest) else "bad" if manifest.get("bad")
                else "unpublished")
    if not manifest:
        return "partial"
    if complete and is_good(manifest):
        return "verified"
    return "bad" if manifest.get("bad") else "failed"


def usable(entry: dict) -> bool:
    """A dump (local_entries, S3Store.entries) that may be restored, kept as a good one by
    retention, published, drilled or verified: a good local copy or a good published one."""
    return entry["state"] in GOOD_STATES


def bad_mark(reason: str, where: str) -> dict:
    return {"time": iso(utcnow()), "reason": reason, "where": where,
            "by": "pginfra-backup verify"}


def local_manifest_path(entry: dict) -> Path:
    """<label>.json beside a local dump."""
    return Path(entry["location"]).parent / f"{entry['label']}.json"


def mark_bad(cfg: Config, entry: dict, reason: str, store: S3Store | None = None) -> str:
    """Record in the entry's own manifest that ``verify`` found it broken: local, the local
    manifest; in S3, the published manifest, rewritten with ``bad`` (so it is no longer
    published, and no longer chosen by anything), and the local copy's note of its
    publication (``published.bad``) when this host holds it. Returns where it was written."""
    mark = bad_mark(reason, entry["where"])
    if entry["where"] == "local":
        path = local_manifest_path(entry)
        write_json(path, {**entry["manifest"], "bad": mark})
        entry["manifest"] = {**entry["manifest"], "bad": mark}
        entry["state"], entry["error"], entry["bad"] = "bad", reason, mark
        return str(path)
    store.put_json(entry["manifest_key"], {**entry["manifest"], "bad": mark})
    entry["manifest"] = {**entry["manifest"], "bad": mark}
    entry["state"], entry["error"], entry["bad"] = "bad", reason, mark
    for local in local_entries(cfg):
        published = local["manifest"].get("published")
        if (local["kind"], local["database"], local["label"]) == \
                (entry["kind"], entry["database"], entry["label"]) and \
                isinstance(published, dict) and \
                str(local["manifest"].get("system_identifier")) == store.system_identifier:
            write_json(local_manifest_path(local),
                       {**local["manifest"], "published": {**published, "bad": mark}})
    return entry["location"]


# ---------------------------------------------------------------------------------------------
# Local dumps

def local_entries(cfg: Config) -> list[dict]:
    """Every local dump, failed, bad and partial ones included, oldest first. state: see
    ``backup_state``."""
    entries: list[dict] = []
    dumps_dir = Path(cfg.backup_dir) / "dumps"
    if dumps_dir.is_dir():
        for db_dir in sorted(p for p in dumps_dir.iterdir() if p.is_dir()):
            by_label: dict[str, list[Path]] = {}
            for path in db_dir.iterdir():
                match = re.match(r"^(\d{8}T\d{6}Z)\.(dump|sql|json)(\.partial)?$", path.name)
                if match:
                    by_label.setdefault(match.group(1), []).append(path)
            for label, paths in sorted(by_label.items()):
                manifest = read_json(db_dir / f"{label}.json") or {}
                kind = "globals" if db_dir.name == GLOBALS else "dump"
                data = db_dir / f"{label}.{'sql' if kind == 'globals' else 'dump'}"
                state = backup_state("local", manifest, complete=data.is_file())
                entries.append(_entry("local", kind, db_dir.name, label, manifest, state,
                                      paths=sorted(paths), location=str(data)))
    return entries


def _entry(where, kind, database, label, manifest, state, paths=None, location=None) -> dict:
    files = manifest.get("files") or {}
    size = sum(f.get("size", 0) for f in files.values()) if files else None
    if size is None and paths:
        size = sum(tree_size(p) for p in paths)
    bad = manifest.get("bad") if isinstance(manifest.get("bad"), dict) else None
    published = manifest.get("published")
    published_bad = (published.get("bad") if where == "local" and isinstance(published, dict)
                     else None)
    return {"where": where, "kind": kind, "database": database, "label": label,
            "end_time": manifest.get("end_time"), "size": size, "state": state,
            "published": bool(published) if where == "local" else state == "published",
            "error": (bad or {}).get("reason") if state == "bad" else manifest.get("error"),
            "bad": bad if state == "bad" else None, "published_bad": published_bad,
            "location": location,
            "manifest": manifest, "paths": [str(p) for p in (paths or [])]}


def tree_size(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    total = 0
    for root, _dirs, files in os.walk(path):
        for name in files:
            with contextlib.suppress(OSError):
                total += os.path.getsize(os.path.join(root, name))
    return total


def remove_paths(paths) -> None:
    for p in paths:
        path = Path(p)
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)


# ---------------------------------------------------------------------------------------------
# PostgreSQL

def connect(cfg: Config, dbname: str = "postgres", app: str = "pginfra-backup"):
    try:
        import psycopg
    except ImportError:
        raise Failed("psycopg is not installed (apt-get install python3-psycopg)") from None

    try:
        return psycopg.connect(host=cfg.socket_dir, port=cfg.port, dbname=dbname,
                               autocommit=True, application_name=app, connect_timeout=10)
    except psycopg.Error as exc:
        raise Failed(f"cannot connect to database {dbname} on port {cfg.port} "
                     f"({cfg.socket_dir}): {str(exc).strip()}") from None


def conninfo(cfg: Config, dbname: str) -> str:
    from psycopg.conninfo import make_conninfo

    return make_conninfo(host=cfg.socket_dir, port=str(cfg.port), dbname=dbname)


def standby_skip(conn, log: JobLog) -> bool:
    """True (logged as "standby: skipped") when the server is a standby."""
    if conn.execute("SELECT pg_is_in_recovery()").fetchone()[0]:
        log.emit("standby", "skipped", detail="this server is a standby (pg_is_in_recovery()): "
                 "nothing to do here; the primary runs this job")
        return True
    return False


def sql_system_identifier(conn) -> str:
    return str(conn.execute("SELECT system_identifier FROM pg_control_system()").fetchone()[0])


def controldata_system_identifier(cfg: Config) -> str | None:
    try:
        proc = run([cfg.bin("pg_controldata"), "-D", cfg.data_directory], timeout=30)
    except OSError:
        return None
    found = re.search(r"Database system identifier:\s+(\d+)", proc.stdout)
    return found.group(1) if proc.returncode == 0 and found else None


COUNT_TABLES = """
SELECT format('%I.%I', n.nspname, c.relname)
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind = 'r'
  AND n.nspname NOT IN ('pg_catalog', 'information_schema')
  AND n.nspname !~ '^pg_(toast|temp_)'
  AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.classid = 'pg_class'::regclass
                  AND d.objid = c.oid AND d.deptype = 'e')
ORDER BY 1
"""


def row_counts(conn) -> dict[str, int]:
    """Exact count(*) of every user table (not extension members), by qualified name."""
    tables = [r[0] for r in conn.execute(COUNT_TABLES).fetchall()]
    return {t: conn.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in tables}


class Psql:
    """SQL through psql as the postgres OS user: root's way in (pg_hba lets only the postgres
    OS user in as postgres, by peer)."""

    def __init__(self, cfg: Config):
        self.cfg = cfg

    def __call__(self, sql: str, dbname: str = "postgres", timeout: float = 120) -> str:
        cmd = [self.cfg.bin("psql"), "-XAtq", "-v", "ON_ERROR_STOP=1", "-h",
               self.cfg.socket_dir, "-p", str(self.cfg.port), "-d", dbname, "-c", sql]
        if os.geteuid() == 0:
            cmd = ["runuser", "-u", OS_USER, "--", *cmd]
        proc = run(cmd, timeout=timeout, cwd="/")
        if proc.returncode != 0:
            raise Failed(f"psql: {sql}: {tail(proc.stderr, 3)}")
        return proc.stdout.strip()


# ---------------------------------------------------------------------------------------------
# S3

def make_s3_client(s3: S3Settings, log: JobLog | None = None):
    """boto3's client for the bucket. Credentials: boto3's chain (environment, instance
    profile), with ``credentials_file`` as the shared credentials file when it exists.
    ``ca_file``: the CA bundle that signed the endpoint's certificate (empty: the system's)."""
    try:
        import boto3
        import botocore
        from botocore.config import Config as BotoConfig
    except ImportError:
        raise Failed("boto3 is not installed (apt-get install python3-boto3)") from None

    if s3.credentials_file and os.path.exists(s3.credentials_file):
        os.environ["AWS_SHARED_CREDENTIALS_FILE"] = s3.credentials_file
    options = {"signature_version": "s3v4", "connect_timeout": 10, "read_timeout": 120,
               "s3": {"addressing_style": "path" if s3.endpoint_url else "auto"}}
    note = None
    try:
        config = BotoConfig(**options,
                            request_checksum_calculation=s3.request_checksum_calculation)
    except TypeError:
        config = BotoConfig(**options)
        note = (f"request_checksum_calculation={s3.request_checksum_calculation} ignored: "
                f"botocore {botocore.__version__} does not have it (it sends no CRC "
                "checksums by default)")
    if note and log is not None:
        log.emit("s3-client", "info", detail=note)
    session = boto3.session.Session(region_name=s3.region)
    return session.client("s3", endpoint_url=s3.endpoint_url or None, config=config,
                          verify=s3.ca_file or None)


def is_not_found(exc) -> bool:
    """A botocore ClientError for a key (or bucket) that is not there."""
    response = getattr(exc, "response", None) or {}
    code = str(response.get("Error", {}).get("Code", ""))
    status = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    return code in ("404", "NoSuchKey", "NotFound") or status == 404


class S3Store:
    """One host's dumps in the bucket, under ``{prefix}/{host}/{system_identifier}/dumps/``
    (base/ and wal/ beside it: the pre-pgBackRest layout, which retention removes)."""

    def __init__(self, s3: S3Settings, host: str, system_identifier: str, log: JobLog,
                 client=None, chunk_override: int | None = None):
        self.s3, self.bucket, self.log = s3, s3.bucket, log
        self.system_identifier = str(system_identifier)
        self.root = "/".join(p for p in (s3.prefix, host, self.system_identifier) if p) + "/"
        self.client = client or make_s3_client(s3, log)
        self.chunk_override = chunk_override

    def key(self, *parts: str) -> str:
        return self.root + "/".join(parts)

    def extra_args(self, sha256: str) -> dict:
        extra = {"ServerSideEncryption": self.s3.sse, "StorageClass": self.s3.storage_class,
                 "Metadata": {"sha256": sha256}}
        if self.s3.sse == "aws:kms" and self.s3.kms_key_id:
            extra["SSEKMSKeyId"] = self.s3.kms_key_id
        return extra

    def transfer_config(self, size: int):
        from boto3.s3.transfer import TransferConfig

        chunk = chunk_size(size, self.chunk_override)
        return TransferConfig(multipart_threshold=chunk, multipart_chunksize=chunk,
                              max_concurrency=4, use_threads=True)

    def head(self, key: str) -> dict | None:
        from botocore.exceptions import ClientError

        try:
            return self.client.head_object(Bucket=self.bucket, Key=key)
        except ClientError as exc:
            if is_not_found(exc):
                return None
            raise

    def check_object(self, key: str, size: int, sha256: str) -> None:
        head = self.head(key)
        if head is None:
            raise Failed(f"s3://{self.bucket}/{key}: not there after the upload")
        have_size = head.get("ContentLength")
        have_sha = (head.get("Metadata") or {}).get("sha256")
        if have_size != size or have_sha != sha256:
            raise Failed(f"s3://{self.bucket}/{key}: {have_size} bytes with sha256 {have_sha}, "
                         f"expected {size} bytes with sha256 {sha256}")

    def upload(self, path: Path, key: str, sha256: str, size: int) -> None:
        self.client.upload_file(str(path), self.bucket, key, ExtraArgs=self.extra_args(sha256),
                                Config=self.transfer_config(size))

    def put_via_temporary(self, path: Path, key: str, sha256: str, size: int) -> None:
        """Upload to tmp/<uuid>, check it, copy it server-side to ``key``, check that, delete
        the temporary key. On failure the temporary key and any multipart upload left under
        it are removed, and the error is raised again."""
        tmp = self.key("tmp", uuid.uuid4().hex)
        try:
            self.upload(path, tmp, sha256, size)
            self.check_object(tmp, size, sha256)
            self.client.copy({"Bucket": self.bucket, "Key": tmp}, self.bucket, key,
                             ExtraArgs={**self.extra_args(sha256),
                                        "MetadataDirective": "REPLACE"},
                             Config=self.transfer_config(size))
            self.check_object(key, size, sha256)
        except BaseException:
            self.cleanup_temporary(tmp)
            raise
        self.client.delete_object(Bucket=self.bucket, Key=tmp)

    def abort_multipart(self, prefix: str, older_than: datetime | None = None) -> int:
        """Abort unfinished multipart uploads under ``prefix`` (initiated before
        ``older_than``, when given)."""
        aborted = 0
        paginator = self.client.get_paginator("list_multipart_uploads")
        for page in paginator.paginate(Bucket=self.bucket, Prefix=prefix):
            for upload in page.get("Uploads", []) or []:
                if older_than is not None and upload.get("Initiated") and \
                        upload["Initiated"] >= older_than:
                    continue
                self.client.abort_multipart_upload(Bucket=self.bucket, Key=upload["Key"],
                                                   UploadId=upload["UploadId"])
                aborted += 1
        return aborted

    def cleanup_temporary(self, tmp: str) -> None:
        try:
            aborted = self.abort_multipart(tmp)
            self.client.delete_object(Bucket=self.bucket, Key=tmp)
            self.log.emit("cleanup", "ok", detail=f"{tmp}: temporary key removed"
                          + (f", {aborted} multipart upload(s) aborted" if aborted else ""))
        except Exception as exc:
            self.log.emit("cleanup", "failed",
                          detail=f"{tmp}: could not remove the temporary key or abort its "
                          f"multipart upload now (retention sweeps tmp/ later): "
                          f"{type(exc).__name__}: {exc}")

    def put_json(self, key: str, data: dict) -> None:
        body = (json.dumps(data, indent=2, sort_keys=True) + "\n").encode()
        digest = hashlib.sha256(body).hexdigest()
        self.client.put_object(Bucket=self.bucket, Key=key, Body=body,
                               ContentType="application/json", **self.extra_args(digest))
        self.check_object(key, len(body), digest)

    def get_json(self, key: str) -> dict | None:
        try:
            body = self.client.get_object(Bucket=self.bucket, Key=key)["Body"].read()
            data = json.loads(body)
        except ValueError:
            return None
        return data if isinstance(data, dict) else None

    def list(self, prefix: str, delimiter: str | None = None):
        paginator = self.client.get_paginator("list_objects_v2")
        kwargs = {"Bucket": self.bucket, "Prefix": prefix}
        if delimiter:
            kwargs["Delimiter"] = delimiter
        for page in paginator.paginate(**kwargs):
            yield from page.get("Contents", []) or []

    def delete_keys(self, keys: list[str]) -> int:
        """Batched DeleteObjects, at most 1000 keys a call; Failed on any per-key error."""
        deleted = 0
        for batch in batches(sorted(keys)):
            response = self.client.delete_objects(
                Bucket=self.bucket, Delete={"Objects": [{"Key": k} for k in batch],
                                            "Quiet": True})
            errors = response.get("Errors") or []
            if errors:
                raise Failed(f"delete_objects: {len(errors)} key(s) not deleted, e.g. "
                             f"{errors[0].get('Key')}: {errors[0].get('Message')}")
            deleted += len(batch)
        return deleted

    def download(self, key: str, dest: Path, size: int) -> None:
        self.client.download_file(self.bucket, key, str(dest),
                                  Config=self.transfer_config(size))

    def entries(self) -> list[dict]:
        """Dumps in S3: published (a verified manifest), bad (its manifest marked bad by
        ``verify``) or unpublished (files without a manifest: an upload that did not
        finish)."""
        out: list[dict] = []
        groups: dict[tuple, list[dict]] = {}
        for obj in self.list(self.key("dumps") + "/"):
            rest = obj["Key"][len(self.key("dumps")) + 1:]
            match = re.match(r"^([^/]+)/(\d{8}T\d{6}Z)\.(dump|sql|json)$", rest)
            if match:
                kind = "globals" if match.group(1) == GLOBALS else "dump"
                groups.setdefault((kind, match.group(1), match.group(2)), []).append(
                    {**obj, "name": f"{match.group(2)}.{match.group(3)}"})
        for (kind, database, label), objects in sorted(groups.items(),
                                                       key=lambda kv: kv[0][2]):
            manifest_key = self.key("dumps", database, f"{label}.json")
            has_manifest = any(o["Key"] == manifest_key for o in objects)
            manifest = (self.get_json(manifest_key) if has_manifest else None) or {}
            entry = _entry("s3", kind, database, label, manifest,
                           backup_state("s3", manifest))
            if not manifest:
                entry["size"] = sum(o.get("Size", 0) for o in objects)
            entry["keys"] = sorted(o["Key"] for o in objects)
            entry["manifest_key"] = manifest_key
            entry["location"] = f"s3://{self.bucket}/{manifest_key}"
            out.append(entry)
        return out


def open_store(cfg: Config, log: JobLog, conn=None, explicit: str | None = None,
               client=None) -> S3Store:
    """The S3 store of this cluster. Its system identifier: ``explicit``, else from SQL when
    connected, else pg_controldata on the data directory."""
    if cfg.s3 is None:
        raise ConfigError("no s3 section in the configuration")
    sysid = explicit or (sql_system_identifier(conn) if conn is not None else None) \
        or controldata_system_identifier(cfg)
    if not sysid:
        raise ConfigError(f"cannot tell the cluster's system identifier (no server, no "
                          f"readable {cfg.data_directory}): pass --system-identifier")
    return S3Store(cfg.s3, cfg.host, sysid, log, client=client)


def publish(store: S3Store, log: JobLog, files: list[tuple[Path, str, dict]],
            manifest_key: str, manifest: dict) -> None:
    """Each file to a temporary key, checked, copied to its key; then, only when every file
    is there, the manifest: what makes the backup published. Raises a logged Failed."""
    for path, key, meta in files:
        with log.stage("upload", detail=key) as info:
            store.put_via_temporary(path, key, meta["sha256"], meta["size"])
            info.bytes = meta["size"]
    with log.stage("publish", detail=manifest_key):
        for _path, key, meta in files:
            store.check_object(key, meta["size"], meta["sha256"])
        store.put_json(manifest_key, manifest)


def publish_entry(cfg: Config, store: S3Store, log: JobLog, entry: dict) -> None:
    """Publish a verified local dump and note it in its local manifest."""
    manifest = dict(entry["manifest"])
    manifest.pop("published", None)
    directory = Path(entry["location"]).parent
    files = [(directory / name, store.key("dumps", entry["database"], name), meta)
             for name, meta in sorted(manifest["files"].items())]
    manifest_key = store.key("dumps", entry["database"], f"{entry['label']}.json")
    local_manifest = directory / f"{entry['label']}.json"
    publish(store, log, files, manifest_key, manifest)
    manifest["published"] = {"time": iso(utcnow()),
                             "url": f"s3://{store.bucket}/{manifest_key}"}
    write_json(local_manifest, manifest)
    entry["manifest"], entry["published"], entry["published_bad"] = manifest, True, None


# ---------------------------------------------------------------------------------------------
# list (both programs)

def human(size) -> str:
    if size is None:
        return "-"
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return str(size)


def _table(rows: list[tuple]) -> None:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=False)) + "  " + r[-1])


def job_list(cfg: Config, args, log: JobLog) -> dict:
    """pgBackRest's backups in each configured repository (info) and the dumps, here and in
    S3 (with their state)."""
    backups, errors = [], {}
    try:
        with log.stage("pgbackrest-info") as info:
            stanza = pgbackrest_info(cfg)
            for repo in stanza.get("repo") or []:
                if repo["status"]["code"] != 0:
                    errors[f"repo{repo['key']}"] = repo["status"]["message"]
            for repo in cfg.pgbackrest.repos:
                backups += [backup_summary(b) for b in repo_backups(stanza, repo)]
            info.detail = f"{len(backups)} backup(s)"
    except Failed as exc:
        errors["pgbackrest"] = str(exc)
    dumps = local_entries(cfg)
    if cfg.s3 is not None and not args.local:
        try:
            with log.stage("s3-list") as info:
                store = open_store(cfg, log)
                found = store.entries()
                info.detail = f"s3://{store.bucket}/{store.root}: {len(found)} dump(s)"
                dumps += found
        except Failed as exc:
            errors["s3"] = str(exc)
    dumps.sort(key=lambda e: (e["label"], e["where"], e["kind"], e["database"] or ""))
    public = [{k: v for k, v in e.items() if k not in ("manifest", "paths", "keys")}
              for e in dumps]
    if args.json:
        print(json.dumps({"pgbackrest": backups, "dumps": public, "errors": errors},
                         indent=2, default=str))
        return {"count": len(backups) + len(dumps)}
    rows = [("REPO", "TYPE", "LABEL", "STOPPED", "SIZE", "IN REPO")]
    rows += [(f"repo{b['repo']}", b["type"], b["label"], b["stop"][:19], human(b["size"]),
              human(b["repo_size"])) for b in backups]
    _table(rows)
    print()
    rows = [("WHERE", "KIND", "DATABASE", "LABEL", "ENDED", "SIZE", "STATE")]
    for e in public:
        state = e["state"]
        if e["state"] == "bad" and e.get("bad"):
            state += f" since {str(e['bad'].get('time'))[:19]}"
        if e["where"] == "local" and e["published"]:
            state += ", published" + (" copy bad" if e.get("published_bad") else "")
        if e.get("error"):
            state += f" ({e['error'][:100 if e['state'] == 'bad' else 60]})"
        elif e.get("published_bad"):
            state += f" ({str(e['published_bad'].get('reason'))[:100]})"
        rows.append((e["where"], e["kind"], e["database"] or "-", e["label"],
                     (e["end_time"] or "-")[:19], human(e["size"]), state))
    _table(rows)
    for what, error in errors.items():
        print(f"({what}: {error})")
    return {"count": len(backups) + len(dumps)}
