"""SQL bundles on the control machine: which apply to a database, whether they are well formed,
and what a database's migration history says is pending.

The host runs ``files/pginfra-migrate``; this module loads that same program to read bundles and
plan, so the control machine and the host never disagree about what is pending::

    from pginfra.sql_bundles import bundles_for, plan
    plan(history, bundles_for(settings, "app"))
    # {"applied": [...], "pending": ["baseline/010_views.sql"], "changed": []}
"""

from __future__ import annotations

import hashlib
import io
import re
import tarfile
from pathlib import Path
from types import ModuleType

from pginfra import ROOT
from pginfra.programs import host_program

SQL_ROOT = ROOT / "sql"
RUNNER = ROOT / "files" / "pginfra-migrate"
_BUNDLE = re.compile(r"[a-z0-9_-]+(/[a-z0-9_-]+)*")
_FILE = re.compile(r"\d{3}_[a-z0-9_]+(\.preflight|\.revert)?\.sql")


def runner() -> ModuleType:
    """``files/pginfra-migrate``, imported as a module."""
    return host_program("pginfra-migrate")


def check_bundle(name: str, root: Path = SQL_ROOT) -> str | None:
    """A problem with bundle ``name`` (a directory under sql/), or None."""
    if not _BUNDLE.fullmatch(name):
        return f"bundle {name!r} is not a path under sql/ (lowercase, digits, _ - /)"
    directory = root / name
    if not directory.is_dir():
        known = sorted({str(p.parent.relative_to(root))
                        for p in root.glob("**/[0-9][0-9][0-9]_*.sql")})
        return f"bundle {name!r}: no directory sql/{name} (bundles: {', '.join(known)})"
    files = sorted(directory.glob("*.sql"))
    if not any(not f.name.endswith((".preflight.sql", ".revert.sql")) for f in files):
        return f"bundle {name!r}: sql/{name} has no NNN_name.sql files"
    for f in files:
        if not _FILE.fullmatch(f.name):
            return f"bundle {name!r}: {f.name} is not named NNN_name[.preflight|.revert].sql"
        if f.name.endswith((".preflight.sql", ".revert.sql")):
            main = re.sub(r"\.(preflight|revert)\.sql$", ".sql", f.name)
            if not (directory / main).exists():
                return f"bundle {name!r}: {f.name} belongs to no {main}"
    return None


def check_bundles(mapping: dict) -> str | None:
    """Validator of ``postgres_sql_bundles``."""
    for database, names in mapping.items():
        basenames: dict[str, str] = {}
        for name in names:
            problem = check_bundle(name)
            if problem:
                return f"{database}: {problem}"
            base = name.rsplit("/", 1)[-1]
            if base in basenames:
                return (f"{database}: bundles {basenames[base]!r} and {name!r} share the name "
                        f"{base!r}, which the migration history keys on")
            basenames[base] = name
    return None


def archive(root: Path = SQL_ROOT) -> tuple[bytes, str]:
    """The bundles as one reproducible tar (root-owned, files 0644, directories 0755, no
    Markdown) and its SHA-256: the deploy uploads it only when the digest on the host differs,
    instead of checking every file over SSH."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for path in sorted(root.rglob("*")):
            if path.suffix == ".md" or "__pycache__" in path.parts:
                continue
            info = tarfile.TarInfo(str(path.relative_to(root)))
            info.uid = info.gid = 0
            info.uname = info.gname = "root"
            info.mtime = 0
            if path.is_dir():
                info.type, info.mode = tarfile.DIRTYPE, 0o755
                tar.addfile(info)
            else:
                data = path.read_bytes()
                info.size, info.mode = len(data), 0o644
                tar.addfile(info, io.BytesIO(data))
    data = buffer.getvalue()
    return data, hashlib.sha256(data).hexdigest()


def bundles_for(settings, database: str) -> list[str]:
    """The bundles that apply to ``database``, in order: those of '*' first."""
    mapping = settings.postgres_sql_bundles
    names = [*mapping.get("*", []), *mapping.get(database, [])]
    return list(dict.fromkeys(names))


def databases_with_bundles(settings) -> list[str]:
    """Managed databases with at least one bundle, in postgres_databases order."""
    return [db["name"] for db in settings.postgres_databases if bundles_for(settings, db["name"])]


def load(names: list[str], root: Path = SQL_ROOT) -> list:
    """The bundles' migrations, as the runner reads them."""
    return [runner().load_bundle(root / name) for name in names]


def plan(history: list[dict] | None, names: list[str], root: Path = SQL_ROOT) -> dict:
    """applied / pending / changed for ``names`` against history rows
    ``{"bundle", "name", "checksum"}`` (None: no history yet, everything is pending)."""
    applied = {(r["bundle"], r["name"]): r["checksum"] for r in history or []}
    return runner().plan_against(applied, load(names, root))
