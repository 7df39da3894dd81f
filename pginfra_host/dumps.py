"""Logical dumps: labels, manifests and their states, local layout, verification, and the choices
of retention (pure functions). Whether a dump counts is decided in one place,
``is_good(manifest)``: its manifest says it was verified when it was taken, and ``verify`` has
not marked it "bad" since.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

from pginfra_host.backup_config import Config
from pginfra_host.util import iso, read_json, run, tail, utcnow

LABEL_RE = re.compile(r"^\d{8}T\d{6}Z$")


GLOBALS = "_globals"  # the directory and S3 "database" of pg_dumpall --globals-only


GLOBALS_END = "PostgreSQL database cluster dump complete"


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
                entries.append(entry_record("local", kind, db_dir.name, label, manifest, state,
                                      paths=sorted(paths), location=str(data)))
    return entries


def entry_record(where, kind, database, label, manifest, state, paths=None, location=None) -> dict:
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

