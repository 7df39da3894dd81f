"""The one job runner of the host programs: run as postgres (root re-executes), load and
validate the program's configuration, take the job's lock, log JSON lines, and turn the outcome
into the exit codes every program shares (0, 1 failed, 2 usage or configuration, 75 locked).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import pwd
import shutil
import sys
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

from pginfra_host.util import OS_USER, ensure_dir, iso, postgres_ids, utcnow, write_json

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_LOCKED = 0, 1, 2, 75


EXIT_CODES_HELP = ("Exit codes: 0 success; 1 a stage failed (what could safely be finished was); "
                   "2 bad usage or configuration; 75 another run of the same job holds its lock "
                   "(skipped, not a failure).")


class Failed(Exception):
    """A stage failed; the message names what and why. ``logged``: already in the log."""

    def __init__(self, message: str, logged: bool = False):
        super().__init__(message)
        self.logged = logged


class ConfigError(Exception):
    """Bad configuration or usage: exit 2."""


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
                          join_detail(info.detail, str(exc)))
            raise Failed(str(exc), logged=True) from exc
        except (KeyboardInterrupt, SystemExit):
            raise
        except Exception as exc:
            message = f"{type(exc).__name__}: {exc}"
            self.emit(stage, "failed", time.monotonic() - started, info.bytes,
                      join_detail(info.detail, message))
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


def join_detail(detail, message: str):
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


def reexec_as_postgres(argv: list[str]) -> None:
    """Root runs this job as postgres (peer authentication, files owned by postgres): the same
    entry point (``sys.argv[0]``, one of layout.PROGRAMS) with ``argv``."""
    runuser = shutil.which("runuser") or "/usr/sbin/runuser"
    try:
        pwd.getpwnam(OS_USER)
    except KeyError:
        raise ConfigError(f"there is no {OS_USER} user to run as") from None
    os.execv(runuser, ["runuser", "-u", OS_USER, "--", sys.executable,
                         os.path.realpath(sys.argv[0]), *argv])


def run_job(program: str, job: str, config_path: str, body, args, *, load, stream="stdout",
            lock: bool = True, last_success: bool = True, as_root: bool = False,
            argv: list[str] | None = None, print_result: bool = False,
            lock_name: str | None = None, log_class=None, end=None) -> int:
    """Load the configuration with ``load(path)`` (the program's declared loader: its
    ConfigError is exit 2), take the job's lock, run ``body(cfg, args, log)`` and turn the
    outcome into an exit code. ``body`` returns a dict for last-success (None: do not write
    it); a logged failure anywhere makes the exit code 1. ``print_result``: on success the
    dict is also printed to stdout as the last line (pitr's report). ``lock_name``: the lock,
    when jobs share one (default: ``job``). ``log_class``: a JobLog subclass. ``end(log, rc,
    result)``: the program's own (rc, status, detail) of the last line, "end" (for a job
    that locks each of its steps itself, say)."""
    name = os.path.basename(program)  # the program's name, for messages
    if os.geteuid() == 0 and not as_root:
        try:
            reexec_as_postgres(sys.argv[1:] if argv is None else argv)
        except ConfigError as exc:
            print(f"{name}: {exc}", file=sys.stderr)
            return EXIT_USAGE
    try:
        cfg = load(config_path)
    except ConfigError as exc:
        print(f"{name}: {exc}", file=sys.stderr)
        return EXIT_USAGE
    owner = postgres_ids() if os.geteuid() == 0 else None
    log = (log_class or JobLog)(job, cfg.log_dir, stream, owner)
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
        status, detail = (("ok", "finished") if rc == EXIT_OK
                          else ("failed", "finished with failures"))
        if end is not None:
            rc, status, detail = end(log, rc, result)
        log.emit("end", status, time.monotonic() - started, detail=detail)
        if print_result and rc == EXIT_OK and result is not None:
            print(json.dumps(result, default=str), flush=True)
        return rc
    finally:
        if fd is not None:
            os.close(fd)
        log.close()

