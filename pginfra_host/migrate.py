"""Apply SQL bundles to a live database safely, as tracked migrations.

    pginfra-migrate --dbname app status sql/baseline [--json]
    pginfra-migrate --dbname app apply sql/baseline sql/examples/community
    pginfra-migrate --dbname app rollback sql/examples/community --to 020_reactions.sql

A bundle is a directory of ``NNN_name.sql`` files, applied in name order. Beside a file may
stand ``NNN_name.preflight.sql`` (queries that must return no rows before it runs) and
``NNN_name.revert.sql`` (what ``rollback`` runs). Directives in a file's leading comments:

    -- pginfra: repeatable       re-run whenever the file changes (views, functions)
    -- pginfra: no-transaction   run statement by statement in autocommit (CONCURRENTLY)

Every applied file is recorded in ``pginfra.migrations`` with its checksum. An applied ordinary
file whose checksum changed is refused. One runner works on a database at a time (a
session-level advisory lock); lock_timeout is set only once that lock is held, and a statement
that times out on a lock is retried with backoff. An ordinary file runs in one transaction: on
an error it rolls back and the run stops, naming the file, the line and the error. An INVALID
index left by a failed CREATE INDEX CONCURRENTLY is dropped concurrently and built again.

Exit codes: 0 done, 1 refused or failed (nothing half-applied), 2 bad usage or unreachable
database, 75 another runner holds the lock.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import psycopg
from psycopg import errors, sql

LOCK_KEY = "pginfra-migrate"
EXIT_LOCKED = 75
HISTORY = """
CREATE SCHEMA IF NOT EXISTS pginfra;
CREATE TABLE IF NOT EXISTS pginfra.migrations (
    bundle      text        NOT NULL,
    name        text        NOT NULL,
    checksum    text        NOT NULL,
    kind        text        NOT NULL,
    applied_at  timestamptz NOT NULL DEFAULT now(),
    duration_ms integer     NOT NULL,
    applied_by  text        NOT NULL DEFAULT current_user,
    PRIMARY KEY (bundle, name)
);
"""
CONCURRENT_INDEX = re.compile(
    r"CREATE\s+(?:UNIQUE\s+)?INDEX\s+CONCURRENTLY\s+(?:IF\s+NOT\s+EXISTS\s+)?"
    r"(?:(\w+)\.)?(\w+)", re.I)


class Refused(Exception):
    """The run stops; nothing of the file at hand was applied."""


class _NotYet(Exception):
    """A preflight query names an object that an earlier pending file creates."""


# undefined table, column, function, schema, object: created by an earlier pending file
NOT_YET = {"42P01", "42703", "42883", "3F000", "42704"}


@dataclass
class Migration:
    bundle: str
    path: Path
    text: str = field(repr=False)

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.text.encode()).hexdigest()

    def directive(self, word: str) -> bool:
        for line in self.text.splitlines():
            stripped = line.strip()
            if not stripped:
                continue
            if not stripped.startswith("--"):
                return False
            if re.fullmatch(rf"--\s*pginfra:\s*{word}\s*", stripped):
                return True
        return False

    @property
    def repeatable(self) -> bool:
        return self.directive("repeatable")

    @property
    def transactional(self) -> bool:
        return not self.directive("no-transaction")

    def sibling(self, kind: str) -> Path:
        return self.path.with_name(self.path.name[:-4] + f".{kind}.sql")


def load_bundle(directory: Path) -> list[Migration]:
    if not directory.is_dir():
        raise Refused(f"bundle {directory} is not a directory")
    files = sorted(p for p in directory.glob("*.sql")
                   if not p.name.endswith((".revert.sql", ".preflight.sql")))
    return [Migration(directory.name, p, p.read_text(encoding="utf-8")) for p in files]


def plan_against(applied: dict[tuple[str, str], str], bundles: list[list[Migration]]) -> dict:
    """Sort the bundles' files into applied, pending (new, or repeatable and changed) and
    changed (an applied ordinary file edited since it ran), given the history's checksums."""
    plan = {"applied": [], "pending": [], "changed": []}
    for bundle in bundles:
        for m in bundle:
            have = applied.get((m.bundle, m.name))
            key = f"{m.bundle}/{m.name}"
            if have is None or (have != m.checksum and m.repeatable):
                plan["pending"].append(key)
            elif have != m.checksum:
                plan["changed"].append(key)
            else:
                plan["applied"].append(key)
    return plan


def split_statements(text: str) -> list[tuple[int, str]]:
    """(line number, statement) for each statement, honouring quotes, dollar quotes and
    comments."""
    out: list[tuple[int, str]] = []
    i, start, n = 0, 0, len(text)
    while i < n:
        c = text[i]
        if text.startswith("--", i):
            i = text.find("\n", i)
            i = n if i < 0 else i
        elif text.startswith("/*", i):
            end = text.find("*/", i + 2)
            i = n if end < 0 else end + 2
        elif c in "'\"":
            end = i + 1
            while end < n:
                if text[end] == c and text.startswith(c * 2, end):
                    end += 2
                    continue
                if text[end] == c:
                    break
                end += 1
            i = end + 1
        elif c == "$" and (m := re.match(r"\$([A-Za-z_]\w*)?\$", text[i:])):
            tag = m.group(0)
            end = text.find(tag, i + len(tag))
            i = n if end < 0 else end + len(tag)
        elif c == ";":
            _add(out, text, start, i)
            start = i + 1
            i += 1
        else:
            i += 1
    _add(out, text, start, n)
    return out


def _add(out: list, text: str, start: int, end: int) -> None:
    chunk = text[start:end]
    lines = chunk.split("\n")
    body = "\n".join(ln for ln in lines if not ln.strip().startswith("--")).strip()
    if body:
        # the statement's line: its first line that is neither blank nor a comment
        skip = next(i for i, ln in enumerate(lines)
                    if ln.strip() and not ln.strip().startswith("--"))
        line = text.count("\n", 0, start) + 1 + skip
        out.append((line, chunk.strip()))


class Runner:
    def __init__(self, conn: psycopg.Connection, lock_timeout: str, statement_timeout: str,
                 retries: int, log=print, keep_dumps: int = 5):
        self.conn = conn
        self.keep_dumps = keep_dumps
        self.lock_timeout = lock_timeout
        self.statement_timeout = statement_timeout
        self.retries = retries
        self.log = log

    # locking and history
    def lock(self, wait_seconds: float) -> bool:
        deadline = time.monotonic() + wait_seconds
        while True:
            got = self.conn.execute("SELECT pg_try_advisory_lock(hashtext(%s))",
                                    (LOCK_KEY,)).fetchone()[0]
            if got:
                break
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.5)
        # Only now: waiting for the runner lock must not be cut short by lock_timeout.
        self.session_defaults()
        return True

    def session_defaults(self) -> None:
        """The runner's timeouts; restored after each file, which may SET its own."""
        self.conn.execute(sql.SQL("SET lock_timeout = {}").format(self.lock_timeout))
        self.conn.execute(sql.SQL("SET statement_timeout = {}").format(self.statement_timeout))

    def history(self, create: bool = True) -> dict[tuple[str, str], str]:
        """Applied files and their checksums. ``create=False`` only reads (status)."""
        if create:
            with self.conn.transaction():
                self.conn.execute(HISTORY)
        elif self.conn.execute("SELECT to_regclass('pginfra.migrations')").fetchone()[0] is None:
            return {}
        rows = self.conn.execute("SELECT bundle, name, checksum FROM pginfra.migrations")
        return {(b, n): c for b, n, c in rows}

    def plan(self, bundles: list[list[Migration]], create: bool = True) -> dict:
        return plan_against(self.history(create), bundles)

    # running
    def preflight(self, m: Migration, early: bool = False) -> bool:
        """Run the file's preflight queries; refuse it if any returns rows. ``early`` is the
        pass over every pending file before anything runs: a query on an object that an earlier
        pending file creates cannot run yet, so it is left for just before its file (False)."""
        path = m.sibling("preflight")
        if not path.exists():
            return True
        problems = []
        try:
            with self.conn.transaction():
                self.conn.execute("SET TRANSACTION READ ONLY")
                for line, query in split_statements(path.read_text(encoding="utf-8")):
                    body = query.rstrip(";")
                    try:
                        count = self.conn.execute(
                            f"SELECT count(*) FROM ({body}) AS q").fetchone()[0]
                    except psycopg.Error as exc:
                        if early and exc.sqlstate in NOT_YET:
                            raise _NotYet from None
                        raise Refused(f"{path.name}:{line}: the preflight query failed: "
                                      f"{exc.diag.message_primary or exc}") from None
                    if count:
                        cur = self.conn.execute(f"SELECT * FROM ({body}) AS q LIMIT 5")
                        names = [c.name for c in cur.description]
                        sample = "; ".join(
                            ", ".join(f"{k}={v}" for k, v in zip(names, row, strict=True))
                            for row in cur.fetchall())
                        problems.append(f"  {path.name}:{line}: {count} row(s) violate it; "
                                        f"first {min(count, 5)}: {sample}")
        except _NotYet:
            return False
        if problems:
            raise Refused(f"{m.bundle}/{m.name}: preflight checks failed, nothing was changed "
                          "(fix the data; pginfra never deletes or rewrites rows to fit):\n"
                          + "\n".join(problems))
        return True

    def _retrying(self, what: str, action) -> None:
        delay = 0.5
        for attempt in range(self.retries + 1):
            try:
                return action()
            except errors.LockNotAvailable:
                if attempt == self.retries:
                    raise
                self.log(f"pginfra-migrate: {what}: lock_timeout, retry {attempt + 1} of "
                         f"{self.retries} in {delay:.1f}s")
                time.sleep(delay)
                delay *= 2

    def run_file(self, m: Migration) -> None:
        started = time.monotonic()
        if m.transactional:
            def once() -> None:
                with self.conn.transaction():
                    self.conn.execute(m.text)
                    self._record(m, started)
            self._run_reporting(m, m.text, 1, lambda: self._retrying(m.name, once))
        else:
            for line, statement in split_statements(m.text):
                self.repair_invalid_index(statement)
                self._run_reporting(m, statement, line, lambda s=statement, n=line: (
                    self._retrying(f"{m.name}:{n}", lambda: self.conn.execute(s))))
            with self.conn.transaction():
                self._record(m, started)
        self.session_defaults()
        self.log(f"pginfra-migrate: applied {m.bundle}/{m.name} "
                 f"in {time.monotonic() - started:.2f}s")

    def _run_reporting(self, m: Migration, text: str, first_line: int, action) -> None:
        try:
            action()
        except psycopg.Error as exc:
            position = getattr(exc.diag, "statement_position", None)
            line = first_line
            statement = text
            if position:
                offset = int(position) - 1
                line = first_line + text.count("\n", 0, offset)
                start = text.rfind(";", 0, offset) + 1
                end = text.find(";", offset)
                statement = text[start:end if end >= 0 else len(text)]
            statement = " ".join(statement.split())[:200]
            raise Refused(f"{m.bundle}/{m.name}:{line}: {exc.diag.message_primary or exc}\n"
                          f"  statement: {statement}\n  rolled back; nothing of this file "
                          "was applied" if m.transactional else
                          f"{m.bundle}/{m.name}:{line}: {exc.diag.message_primary or exc}\n"
                          f"  statement: {statement}\n  the statements before it stand; "
                          "the file is not recorded and runs again next time") from None

    def _record(self, m: Migration, started: float) -> None:
        self.conn.execute(
            "INSERT INTO pginfra.migrations (bundle, name, checksum, kind, duration_ms) "
            "VALUES (%s, %s, %s, %s, %s) ON CONFLICT (bundle, name) DO UPDATE SET "
            "checksum = EXCLUDED.checksum, applied_at = now(), "
            "duration_ms = EXCLUDED.duration_ms, applied_by = current_user",
            (m.bundle, m.name, m.checksum,
             "repeatable" if m.repeatable else "transactional" if m.transactional
             else "no-transaction", int((time.monotonic() - started) * 1000)))

    def repair_invalid_index(self, statement: str) -> None:
        match = CONCURRENT_INDEX.search(statement)
        if not match:
            return
        schema, name = match.group(1), match.group(2)
        row = self.conn.execute(
            "SELECT n.nspname FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid "
            "JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.relname = %s "
            "AND NOT i.indisvalid AND (%s::text IS NULL OR n.nspname = %s)",
            (name, schema, schema)).fetchone()
        if row:
            self.log(f"pginfra-migrate: index {row[0]}.{name} is INVALID (a failed build); "
                     "dropping it concurrently to build it again")
            self.conn.execute(sql.SQL("DROP INDEX CONCURRENTLY IF EXISTS {}.{}").format(
                sql.Identifier(row[0]), sql.Identifier(name)))

    def apply(self, bundles: list[list[Migration]], dump_dir: Path | None, dbname: str) -> int:
        plan = self.plan(bundles)
        if plan["changed"]:
            raise Refused("applied files have changed since they ran; nothing was applied "
                          "(add a new file instead of editing an applied one):\n"
                          + "\n".join(f"  {k}" for k in plan["changed"]))
        pending = set(plan["pending"])
        if not pending:
            self.log("pginfra-migrate: nothing to apply")
            return 0
        todo = [m for bundle in bundles for m in bundle if f"{m.bundle}/{m.name}" in pending]
        # Every preflight that can run now runs before anything changes, dump included, and
        # every refusal is reported at once.
        deferred, refusals = set(), []
        for m in todo:
            try:
                if not self.preflight(m, early=True):
                    deferred.add(id(m))
            except Refused as exc:
                refusals.append(str(exc))
        if refusals:
            raise Refused("\n".join(refusals))
        if dump_dir is not None:
            info = self.conn.info
            dump_before(dbname, dump_dir, self.log, self.keep_dumps, info.host, info.port)
        for m in todo:
            if id(m) in deferred:
                self.preflight(m)
            self.run_file(m)
        return 0

    def rollback(self, bundle: list[Migration], to: str) -> int:
        applied = self.history()
        undo = [m for m in reversed(bundle) if m.name > to and (m.bundle, m.name) in applied]
        missing = [m.name for m in undo if not m.sibling("revert").exists()]
        if missing:
            raise Refused("no revert file for: " + ", ".join(missing) + "; nothing reverted")
        for m in undo:
            revert = Migration(m.bundle, m.sibling("revert"),
                               m.sibling("revert").read_text(encoding="utf-8"))
            if revert.transactional:
                with self.conn.transaction():
                    self._run_reporting(revert, revert.text, 1,
                                        lambda r=revert: self.conn.execute(r.text))
                    self.conn.execute("DELETE FROM pginfra.migrations WHERE bundle = %s "
                                      "AND name = %s", (m.bundle, m.name))
            else:
                for line, statement in split_statements(revert.text):
                    self._run_reporting(revert, statement, line,
                                        lambda s=statement: self.conn.execute(s))
                with self.conn.transaction():
                    self.conn.execute("DELETE FROM pginfra.migrations WHERE bundle = %s "
                                      "AND name = %s", (m.bundle, m.name))
            self.log(f"pginfra-migrate: reverted {m.bundle}/{m.name}")
        if not undo:
            self.log("pginfra-migrate: nothing to revert")
        return 0


def dump_before(dbname: str, dump_dir: Path, log, keep: int = 5, host: str | None = None,
                port: int | None = None) -> Path:
    """A logical dump of the database before pending files are applied; the newest ``keep``
    such dumps of the database are kept (0 keeps all)."""
    dump_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    target = dump_dir / f"{dbname}-{time.strftime('%Y%m%dT%H%M%S')}-before-migrate.dump"
    partial = target.with_suffix(".partial")
    where = [*(["-h", host] if host else []), *(["-p", str(port)] if port else [])]
    proc = subprocess.run(["pg_dump", "-Fc", *where, "-d", dbname, "-f", str(partial)],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        partial.unlink(missing_ok=True)
        raise Refused(f"pg_dump of {dbname} failed, nothing was applied: {proc.stderr.strip()}")
    partial.rename(target)
    log(f"pginfra-migrate: dumped {dbname} to {target} before applying")
    if keep:
        old = sorted(dump_dir.glob(f"{dbname}-*-before-migrate.dump"))[:-keep]
        for path in old:
            path.unlink()
            log(f"pginfra-migrate: removed the old dump {path}")
    return target


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Apply SQL bundles to a live database safely, as tracked migrations.",
        epilog="Exit codes: 0 done, 1 refused or failed, 2 usage or connection, 75 locked.")
    parser.add_argument("--dbname", required=True, help="database to work on")
    parser.add_argument("--host", default="/var/run/postgresql", help="socket dir or host")
    parser.add_argument("--port", type=int, default=5432)
    parser.add_argument("--lock-timeout", default="1s", help="per statement (default 1s)")
    parser.add_argument("--statement-timeout", default="30min",
                        help="per statement (default 30min; 0 means none)")
    parser.add_argument("--retries", type=int, default=5,
                        help="retries of a statement that hit lock_timeout (default 5)")
    parser.add_argument("--wait", type=float, default=0,
                        help="seconds to wait for another runner to finish (default 0: exit 75)")
    parser.add_argument("--dump-dir", type=Path,
                        help="take a pg_dump -Fc here before applying pending files")
    parser.add_argument("--keep-dumps", type=int, default=5,
                        help="dumps of this database kept in --dump-dir (default 5; 0: all)")
    sub = parser.add_subparsers(dest="command", required=True)
    st = sub.add_parser("status", help="applied, pending and changed files")
    st.add_argument("bundles", nargs="+", type=Path)
    st.add_argument("--json", action="store_true")
    ap = sub.add_parser("apply", help="apply pending files, in order")
    ap.add_argument("bundles", nargs="+", type=Path)
    rb = sub.add_parser("rollback", help="revert applied files after --to, newest first")
    rb.add_argument("bundle", type=Path)
    rb.add_argument("--to", required=True, help="the last file to keep (e.g. 010_x.sql)")
    args = parser.parse_args(argv)
    os.umask(0o077)  # the pre-migration dumps are the postgres user's alone

    try:
        conn = psycopg.connect(host=args.host, port=args.port, dbname=args.dbname,
                               autocommit=True, application_name="pginfra-migrate")
    except psycopg.Error as exc:
        print(f"pginfra-migrate: cannot connect to {args.dbname}: {exc}", file=sys.stderr)
        return 2
    runner = Runner(conn, args.lock_timeout, args.statement_timeout, args.retries,
                    keep_dumps=args.keep_dumps)
    try:
        with conn:
            if args.command == "status":  # reads only: no lock, no history table created
                plan = runner.plan([load_bundle(b) for b in args.bundles], create=False)
                if args.json:
                    print(json.dumps({"database": args.dbname, **plan}, indent=2))
                else:
                    for state in ("applied", "pending", "changed"):
                        for key in plan[state]:
                            print(f"{state:<8} {key}")
                return 1 if plan["changed"] else 0
            if not runner.lock(args.wait):
                print("pginfra-migrate: another runner is working on this database; "
                      "not starting", file=sys.stderr)
                return EXIT_LOCKED
            if args.command == "apply":
                return runner.apply([load_bundle(b) for b in args.bundles], args.dump_dir,
                                    args.dbname)
            return runner.rollback(load_bundle(args.bundle), args.to)
    except Refused as exc:
        print(f"pginfra-migrate: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
