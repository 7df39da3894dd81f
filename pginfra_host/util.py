"""Small helpers every host program uses: UTC time in ISO form, directories and atomic JSON
files, checksums, running a command with the C locale, sizes for people.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import pwd
import subprocess
import tempfile
from datetime import UTC, datetime
from pathlib import Path

OS_USER = "postgres"


KiB, MiB, GiB, TiB = 1 << 10, 1 << 20, 1 << 30, 1 << 40


def utcnow() -> datetime:
    return datetime.now(UTC)


def iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="microseconds").replace(
        "+00:00", "Z")


def parse_time(text: str) -> datetime:
    moment = datetime.fromisoformat(text)
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


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


def human(size) -> str:
    if size is None:
        return "-"
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return str(size)

