"""A throwaway PostgreSQL 15 cluster for unit tests of the host programs: initdb as postgres into a
temporary directory, its own port and socket directory, archiving with basic_archive into its
own archive directory, fsync off. Skipped (with the reason) where PostgreSQL 15, root or the
host's Python modules are missing.

``PgBackRestCluster`` archives with pgBackRest instead: a stanza of its own in a temporary
configuration (repo1 posix in the cluster's directory, encrypted with a passphrase kept in a
0600 conf.d file; spool, lock and log paths in that directory too).

The programs run as postgres, who may not enter the checkout (a clone in root's 0700 home): they
run from ``PROGRAMS``, a copy of ``pginfra_host/`` (with the entry points) and ``sql/``
in
made once per test session, with ``HOST_PYTHON``, Debian's ``/usr/bin/python3`` and its
python3-psycopg and python3-boto3, as on a host (``PGINFRA_TEST_PYTHON`` overrides it)."""

from __future__ import annotations

import atexit
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from pginfra import ROOT
from pginfra.programs import PACKAGE_DIR, entry_point
from pginfra_host import layout

PGBIN = Path("/usr/lib/postgresql/15/bin")
HOST_PYTHON = os.environ.get("PGINFRA_TEST_PYTHON", "/usr/bin/python3")
HOST_MODULES = ("psycopg", "boto3")  # Debian's python3-psycopg and python3-boto3
ENV = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
ENV.update(AWS_EC2_METADATA_DISABLED="true", AWS_CONFIG_FILE="/nonexistent",
           AWS_MAX_ATTEMPTS="2", LC_ALL="C.UTF-8")


def _copy_programs() -> Path:
    """The host package (in lib/), the programs' entry points as the deploy writes them (in
    bin/) and sql/, copied where every user can read them, removed when the session ends.
    PYTHONPATH names lib/ for the programs (and runuser keeps it), as a host's site directory
    holds the package."""
    top = Path(tempfile.mkdtemp(prefix="pginfra-programs-"))
    top.chmod(0o755)
    shutil.copytree(PACKAGE_DIR, top / "lib" / PACKAGE_DIR.name,
                    ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(ROOT / "sql", top / "sql")
    (top / "bin").mkdir(mode=0o755)
    for name in layout.PROGRAMS:
        (top / "bin" / name).write_text(entry_point(name))
        (top / "bin" / name).chmod(0o755)
    atexit.register(shutil.rmtree, top, ignore_errors=True)
    return top


PROGRAMS = _copy_programs()
BIN = PROGRAMS / "bin"
SQL = PROGRAMS / "sql"
# for the host's python3, run by the tests (ahead of what the caller had)
os.environ["PYTHONPATH"] = os.pathsep.join(
    p for p in (str(PROGRAMS / "lib"), os.environ.get("PYTHONPATH")) if p)
ENV["PYTHONPATH"] = os.environ["PYTHONPATH"]


def _host_modules_missing() -> str | None:
    if not os.access(HOST_PYTHON, os.X_OK):
        return f"{HOST_PYTHON} is absent"
    proc = subprocess.run([HOST_PYTHON, "-c", f"import {', '.join(HOST_MODULES)}"],
                          capture_output=True, text=True)
    if proc.returncode:
        return (f"{HOST_PYTHON} cannot import {' and '.join(HOST_MODULES)}: Debian's"
                " python3-psycopg and python3-boto3 are missing (./dev.sh test installs them)")
    return None


def postgres_missing() -> str | None:
    if not PGBIN.is_dir():
        return f"{PGBIN} is absent: PostgreSQL 15 is not installed"
    if os.geteuid() != 0:
        return "needs root: the throwaway cluster runs as postgres through runuser"
    try:
        pwd.getpwnam("postgres")
    except KeyError:
        return "there is no postgres user"
    return _host_modules_missing()


needs_postgres = pytest.mark.skipif(postgres_missing() is not None,
                                    reason=postgres_missing() or "")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def postgres_ids() -> tuple[int, int]:
    entry = pwd.getpwnam("postgres")
    return entry.pw_uid, entry.pw_gid


class Cluster:
    def __init__(self, root: Path):
        self.root, self.port = root, free_port()
        self.data, self.archive = root / "data", root / "archive"
        self.pg_log = root / "server.log"
        self.uid, self.gid = postgres_ids()

    def as_postgres(self, *cmd, check=True, **kw):
        return subprocess.run(["runuser", "-u", "postgres", "--", *map(str, cmd)], check=check,
                              capture_output=True, text=True, cwd="/", env=ENV, **kw)

    def archive_settings(self) -> str:
        return ("archive_library = 'basic_archive'\n"
                f"basic_archive.archive_directory = '{self.archive}'\n")

    def init(self) -> Cluster:
        self.archive.mkdir()
        shutil.chown(self.archive, self.uid, self.gid)
        # 1 MiB WAL segments: less to archive, ship and fetch than 16 MiB ones
        self.as_postgres(PGBIN / "initdb", "-D", self.data, "-N", "--auth-local=peer",
                         "--auth-host=reject", "-U", "postgres", "--wal-segsize=1")
        with open(self.data / "postgresql.conf", "a") as conf:
            conf.write(f"listen_addresses = ''\nunix_socket_directories = '{self.root}'\n"
                       f"port = {self.port}\narchive_mode = on\n{self.archive_settings()}"
                       "fsync = off\nshared_buffers = 16MB\n")
        self.start()
        return self

    @property
    def pg_ctl(self):
        return ["runuser", "-u", "postgres", "--", str(PGBIN / "pg_ctl"), "-D", str(self.data)]

    def start(self):
        subprocess.run([*self.pg_ctl, "-l", str(self.pg_log), "-w", "-t", "60", "start"],
                       check=True, capture_output=True, cwd="/")

    def stop(self):
        subprocess.run([*self.pg_ctl, "-m", "immediate", "-w", "stop"], capture_output=True,
                       cwd="/")

    def sql(self, query: str, db: str = "postgres") -> str:
        return self.as_postgres(PGBIN / "psql", "-XAtq", "-v", "ON_ERROR_STOP=1", "-h",
                                self.root, "-p", self.port, "-d", db, "-c", query).stdout.strip()

    def standby(self, name: str = "standby") -> Cluster:
        """A started streaming standby of this cluster (pg_basebackup -R) in a new temporary
        directory: its own port, socket directory, archive directory and cluster_name ``name``
        (its application_name on the primary). Drop it with drop_cluster()."""
        root = Path(tempfile.mkdtemp(prefix=f"pginfra-{name}-"))
        os.chown(root, self.uid, self.gid)
        standby = Cluster(root)
        standby.as_postgres(PGBIN / "pg_basebackup", "-h", self.root, "-p", self.port, "-D",
                            standby.data, "-R", "-X", "stream", "--checkpoint=fast")
        with open(standby.data / "postgresql.conf", "a") as conf:
            conf.write(f"port = {standby.port}\nunix_socket_directories = '{root}'\n"
                       f"cluster_name = '{name}'\n")
        standby.archive.mkdir()
        shutil.chown(standby.archive, self.uid, self.gid)
        standby.start()
        return standby

    def switch_wal(self) -> None:
        """Switch to a new segment and wait for the old one to be archived."""
        segment = self.sql("SELECT pg_walfile_name(pg_switch_wal())")
        deadline = time.monotonic() + 30
        while not (self.archive / segment).exists():
            assert time.monotonic() < deadline, f"{segment} was not archived"
            time.sleep(0.1)


PGBACKREST = shutil.which("pgbackrest") or "/usr/bin/pgbackrest"


def pgbackrest_missing() -> str | None:
    return postgres_missing() or (None if os.access(PGBACKREST, os.X_OK)
                                  else f"{PGBACKREST} is absent: apt-get install pgbackrest")


needs_pgbackrest = pytest.mark.skipif(pgbackrest_missing() is not None,
                                      reason=pgbackrest_missing() or "")


class PgBackRestCluster(Cluster):
    """The throwaway cluster archived by pgBackRest: stanza ``STANZA`` in the configuration
    ``pgbr_config`` (include path ``pgbr_include``), repo1 (posix) in ``archive``, cipher
    aes-256-cbc with the passphrase in the 0600 ``conf.d/secrets.conf``. archive_library is
    empty (with PG 15 it would otherwise win over archive_command)."""

    STANZA = "test"

    def __init__(self, root: Path):
        super().__init__(root)
        self.pgbr = root / "pgbackrest"
        self.archive = root / "repo1"  # repo1-path: the configuration's wal_archive_dir
        self.pgbr_config = self.pgbr / "pgbackrest.conf"
        self.pgbr_include = self.pgbr / "conf.d"

    def pgbr_options(self) -> list[str]:
        return [f"--config={self.pgbr_config}", f"--config-include-path={self.pgbr_include}",
                f"--stanza={self.STANZA}"]

    def archive_settings(self) -> str:
        command = " ".join([PGBACKREST, *self.pgbr_options(), "archive-push", "%p"])
        return f"archive_library = ''\narchive_command = '{command}'\n"

    def write_pgbackrest_config(self) -> None:
        for path in (self.pgbr, self.pgbr_include, *(self.pgbr / d for d in (
                "spool", "lock", "log"))):
            path.mkdir(mode=0o700, exist_ok=True)
            shutil.chown(path, self.uid, self.gid)
        self.pgbr_config.write_text(
            "[global]\n"
            f"repo1-type=posix\nrepo1-path={self.archive}\nrepo1-cipher-type=aes-256-cbc\n"
            "repo1-retention-full=2\nrepo1-retention-full-type=count\n"
            f"spool-path={self.pgbr}/spool\nlock-path={self.pgbr}/lock\n"
            f"log-path={self.pgbr}/log\nlog-level-console=warn\nlog-level-file=detail\n"
            "compress-type=lz4\ncompress-level=1\nstart-fast=y\narchive-async=n\n"
            "archive-timeout=30\n"
            f"\n[{self.STANZA}]\npg1-path={self.data}\npg1-port={self.port}\n"
            f"pg1-socket-path={self.root}\n")
        secrets = self.pgbr_include / "secrets.conf"
        secrets.write_text(f"[global]\nrepo1-cipher-pass={os.urandom(24).hex()}\n")
        secrets.chmod(0o600)
        for path in (self.pgbr_config, secrets):
            shutil.chown(path, self.uid, self.gid)

    def init(self) -> PgBackRestCluster:
        self.write_pgbackrest_config()
        super().init()
        self.pgbackrest("stanza-create")
        return self

    def pgbackrest(self, *args, check=True, **kw):
        """pgbackrest as postgres with this cluster's configuration and stanza."""
        return self.as_postgres(PGBACKREST, *self.pgbr_options(), *args, check=check, **kw)

    def standby(self, name: str = "standby") -> Cluster:
        """Cluster.standby, ready for pgBackRest: its own configuration ``pgbr_config`` (pg1 is
        the standby; the same repo1 and passphrase), and ``start_options`` for pg_ctl -o: its
        port, socket directory, cluster_name and primary_conninfo on the command line, since a
        pgBackRest restore replaces the files in the data directory (postgresql.conf and
        postgresql.auto.conf included: a Debian cluster keeps its configuration elsewhere)."""
        standby = super().standby(name)
        standby.start_options = (
            f"-p {standby.port} -k {standby.root} -c cluster_name={name} "
            f"-c 'primary_conninfo=host={self.root} port={self.port} user=postgres "
            f"application_name={name}'")
        pgbr = standby.root / "pgbackrest"
        shutil.copytree(self.pgbr_include, pgbr / "conf.d")
        for directory in ("spool", "lock", "log"):
            (pgbr / directory).mkdir()
        standby.pgbr_config = pgbr / "pgbackrest.conf"
        standby.pgbr_config.write_text(self.pgbr_config.read_text().replace(
            f"pg1-path={self.data}\npg1-port={self.port}\npg1-socket-path={self.root}\n",
            f"pg1-path={standby.data}\npg1-port={standby.port}\n"
            f"pg1-socket-path={standby.root}\n").replace(f"={self.pgbr}/", f"={pgbr}/"))
        subprocess.run(["chown", "-R", "postgres:postgres", str(pgbr)], check=True)
        return standby

    def switch_wal(self) -> None:
        """Switch to a new segment and wait for the archiver to report it archived."""
        segment = self.sql("SELECT pg_walfile_name(pg_switch_wal())")
        deadline = time.monotonic() + 30
        while self.sql("SELECT coalesce(last_archived_wal, '') FROM pg_stat_archiver") \
                < segment:
            assert time.monotonic() < deadline, f"{segment} was not archived"
            time.sleep(0.1)


def new_cluster(cls=None, prefix: str = "pginfra-test-"):
    """A started cluster of class ``cls`` (Cluster or a subclass) in a new temporary directory."""
    root = Path(tempfile.mkdtemp(prefix=prefix))
    os.chown(root, *postgres_ids())
    return (cls or Cluster)(root).init()


def drop_cluster(cluster) -> None:
    cluster.stop()
    shutil.rmtree(cluster.root, ignore_errors=True)
