"""The checks of storage and of the cluster's long-term health: disk_data and
disk_wal_archive (filesystem space and inodes used, like df; pg_wal's filesystem too when it
is another one), wraparound (the oldest transaction or multixact ID age, in % of 2^31) and
cache_hit_ratio (blocks found in shared buffers over all databases).
"""

from __future__ import annotations

import contextlib
import os

from pginfra_host import util
from pginfra_host.health.config import THRESHOLDS
from pginfra_host.health.context import Context
from pginfra_host.health.db import describe, query, query_one, settings
from pginfra_host.health.result import (
    CRITICAL,
    OK,
    WARNING,
    grade,
    more,
    result,
    rounded,
    worst,
)

XID_HORIZON = 2 ** 31
MIN_BLOCKS = 100_000  # cache_hit_ratio: below this (800 MB of reads) a cold cache is no signal


def fs_usage(path: str) -> dict:
    """Space and inodes used on ``path``'s filesystem, as df counts them."""
    st = os.statvfs(path)
    used = (st.f_blocks - st.f_bfree) * st.f_frsize
    avail = st.f_bavail * st.f_frsize
    inodes_used = st.f_files - st.f_ffree
    inode_total = inodes_used + st.f_favail
    return {"percent": 100.0 * used / (used + avail) if used + avail else 0.0,
            "used_bytes": used, "free_bytes": avail,
            "inodes_percent": 100.0 * inodes_used / inode_total if st.f_files else None}


def tree_bytes(path: str) -> tuple[int, list[str]]:
    """The bytes of the regular files under ``path``, and the directories under it this user
    cannot read. ``lost+found`` at the root of a filesystem is not one of them: mke2fs makes it
    root's, 0700, for fsck, on the device of ``postgres_wal_archive_device`` too."""
    total, todo, unreadable = 0, [path], []
    while todo:
        current = todo.pop()
        try:
            entries = os.scandir(current)
        except FileNotFoundError:
            continue
        except PermissionError:
            if not (os.path.basename(current) == "lost+found"
                    and os.path.ismount(os.path.dirname(current))):
                unreadable.append(current)
            continue
        with entries:
            for entry in entries:
                with contextlib.suppress(FileNotFoundError):
                    if entry.is_dir(follow_symlinks=False):
                        todo.append(entry.path)
                    elif entry.is_file(follow_symlinks=False):
                        total += entry.stat(follow_symlinks=False).st_size
    return total, sorted(unreadable)


def postgres_bytes(ctx: Context) -> tuple[int | None, str | None]:
    """(the databases' and pg_wal's bytes, None) or (None, why not)."""
    if ctx.conn is None:
        return None, "PostgreSQL did not answer"
    try:
        row = query_one(ctx.conn, """
            SELECT (SELECT sum(pg_catalog.pg_database_size(oid))
                    FROM pg_catalog.pg_database)::bigint AS databases,
                   (SELECT coalesce(sum(size), 0) FROM pg_catalog.pg_ls_waldir())::bigint
                       AS wal""")
    except Exception as exc:
        return None, describe(exc, ctx.cfg)
    return row["databases"] + row["wal"], None


def check_disk(ctx: Context, name: str, key: str, path: str) -> dict:
    """``path``'s filesystem in % used against disk_used_percent (inodes too; for the
    data directory, pg_wal's filesystem when it is another one); a missing directory:
    critical."""
    pair = ctx.th["disk_used_percent"]
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return result(name, CRITICAL, f"{key} {path} is missing", unit="%", pair=pair)
    if not os.path.isdir(path):
        return result(name, CRITICAL, f"{key} {path} is not a directory", unit="%",
                      pair=pair)
    usage = fs_usage(path)
    value = usage["percent"]
    statuses = [grade(value, pair)]
    notes = []
    if usage["inodes_percent"] is not None and grade(usage["inodes_percent"], pair) != OK:
        statuses.append(grade(usage["inodes_percent"], pair))
        notes.append(f"inodes {usage['inodes_percent']:.1f} % used")
    data = {"path": path, "free_bytes": usage["free_bytes"],
            "used_bytes": usage["used_bytes"],
            "inodes_percent": rounded(usage["inodes_percent"])}
    if name == "disk_data":
        size, why = postgres_bytes(ctx)
        data["bytes"] = size
        what = (f"PostgreSQL uses {util.human(size)}" if size is not None
                else f"sizes unknown ({why})")
        wal = os.path.join(path, "pg_wal")
        with contextlib.suppress(OSError):
            if os.stat(wal).st_dev != st.st_dev:
                wal_usage = fs_usage(wal)
                data["pg_wal"] = {"path": os.path.realpath(wal),
                                  "percent": rounded(wal_usage["percent"]),
                                  "free_bytes": wal_usage["free_bytes"]}
                statuses.append(grade(wal_usage["percent"], pair))
                notes.append(f"pg_wal's filesystem {wal_usage['percent']:.1f} % used, "
                             f"{util.human(wal_usage['free_bytes'])} free")
    else:
        size, unreadable = tree_bytes(path)
        data["bytes"], data["unreadable"] = size, unreadable
        what = f"the archive holds {util.human(size)}"
        if unreadable:  # pgBackRest, as postgres, cannot read them either
            statuses.append(WARNING)
            notes.append(f"{len(unreadable)} directory(ies) under it this check's user cannot "
                         f"read: {more(unreadable)} (pgBackRest cannot either)")
    detail = (f"{value:.1f} % of the filesystem of {path} used, "
              f"{util.human(usage['free_bytes'])} free; {what}")
    if notes:
        detail += "; " + "; ".join(notes)
    return result(name, worst(statuses), detail, value, "%", pair, data)


def check_disk_data(ctx: Context) -> dict:
    return check_disk(ctx, "disk_data", "data_directory", ctx.cfg.data_directory)


def check_disk_wal_archive(ctx: Context) -> dict:
    return check_disk(ctx, "disk_wal_archive", "wal_archive_dir", ctx.cfg.wal_archive_dir)


def check_wraparound(ctx: Context) -> dict:
    """The oldest transaction or multixact ID age of any database in % of 2^31
    (wraparound_percent)."""
    if ctx.conn is None:
        return ctx.not_answering("wraparound")
    pair = ctx.th["wraparound_percent"]
    rows = query(ctx.conn, """
        SELECT datname, pg_catalog.age(datfrozenxid)::bigint AS xid_age,
               pg_catalog.mxid_age(datminmxid)::bigint AS mxid_age
        FROM pg_catalog.pg_database""")
    ages = [(r["xid_age"], "transaction ID", r["datname"]) for r in rows]
    ages += [(r["mxid_age"], "multixact ID", r["datname"]) for r in rows]
    age, kind, db = max(ages, key=lambda a: a[0])
    value = 100.0 * age / XID_HORIZON
    freeze = settings(ctx.conn, "autovacuum_freeze_max_age",
                      "autovacuum_multixact_freeze_max_age")
    return result("wraparound", grade(value, pair),
                  f"the oldest: database {db}, {kind} age {age} ({value:.2f} % of 2^31)",
                  value, "%", pair,
                  {"database": db, "kind": kind, "age": age,
                   "max_xid_age": max(r["xid_age"] for r in rows),
                   "max_mxid_age": max(r["mxid_age"] for r in rows),
                   **{k: int(v) for k, v in freeze.items()}})


def check_cache_hit_ratio(ctx: Context) -> dict:
    """Blocks found in shared buffers / blocks needed over all databases
    (cache_hit_ratio, lower is worse); ok below MIN_BLOCKS."""
    if ctx.conn is None:
        return ctx.not_answering("cache_hit_ratio")
    pair = ctx.th["cache_hit_ratio"]
    row = query_one(ctx.conn, """
        SELECT coalesce(sum(blks_hit), 0)::bigint AS hit,
               coalesce(sum(blks_read), 0)::bigint AS read
        FROM pg_catalog.pg_stat_database""")
    total = row["hit"] + row["read"]
    value = row["hit"] / total if total else None
    data = {"blks_hit": row["hit"], "blks_read": row["read"]}
    if total < MIN_BLOCKS:
        return result("cache_hit_ratio", OK, f"too few reads to judge ({total} blocks "
                      f"since the statistics were reset)", value, "ratio", pair, data)
    lower_is_worse = THRESHOLDS["cache_hit_ratio"].lower_is_worse  # True
    return result("cache_hit_ratio", grade(value, pair, lower_is_worse),
                  f"{100 * value:.2f} % of {total} blocks found in shared buffers",
                  value, "ratio", pair, data)
