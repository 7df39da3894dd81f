"""Step: SQL hardening. Upload the bundles and the migration runner, then apply to each database
the bundles ``postgres_sql_bundles`` gives it, as tracked migrations.

What is pending is worked out here, on the control machine, from the database's migration
history (a fact) and the local ``sql/`` files: ``pyinfra --dry`` names the files that would run,
a database with nothing pending gets no operation at all, and an applied file edited since it
ran stops the deploy before any operation, on every host.
"""

from __future__ import annotations

import io
import shlex

from pyinfra import host
from pyinfra.api import deploy
from pyinfra.facts.server import Command
from pyinfra.operations import files, server

from pginfra import ha
from pginfra.facts import DatabaseHasTable, MigrationHistory
from pginfra.settings import Settings, SettingsError, database_hosts_only
from pginfra.sql_bundles import archive, bundles_for, databases_with_bundles, plan
from pginfra.templating import render_io
from pginfra_host import layout

RUNNER = layout.program("pginfra-migrate")
SQL_DIR = "/usr/local/share/pginfra/sql"
STAMP = ".bundles.sha256"  # the digest of the uploaded archive
EXAMPLE_DB = "community"
EXAMPLE_SEED = "examples/community/seed"


def migrate_command(settings: Settings, database: str, names: list[str]) -> str:
    """The runner's command line for applying ``names`` to ``database`` (no secrets in it:
    the runner connects as the postgres OS user over the Unix socket)."""
    args = ["runuser", "-u", "postgres", "--", RUNNER, "--dbname", database,
            "--port", str(settings.postgres_port),
            "--lock-timeout", settings.pginfra_migrate_lock_timeout,
            "--statement-timeout", settings.pginfra_migrate_statement_timeout,
            "--retries", str(settings.pginfra_migrate_retries), "--wait", "300"]
    if settings.pginfra_migrate_dump:
        args += ["--dump-dir", settings.pginfra_migrate_dump_dir,
                 "--keep-dumps", str(settings.pginfra_migrate_dump_keep)]
    return shlex.join([*args, "apply", *(f"{SQL_DIR}/{n}" for n in names)])


def seed_command(settings: Settings, owner: str) -> str:
    """Load the community example's schema and generated data, as the database owner, in one
    transaction."""
    seed = f"{SQL_DIR}/{EXAMPLE_SEED}"
    return shlex.join([
        "runuser", "-u", "postgres", "--", "env",
        f"PGOPTIONS=-c role={owner} "
        f"-c pginfra.example_users={settings.pginfra_example_community_users}",
        "psql", "-X", "-q", "-o", "/dev/null", "-v", "ON_ERROR_STOP=1",
        "--single-transaction", "-p", str(settings.postgres_port), "-d", EXAMPLE_DB,
        "-f", f"{seed}/schema.sql", "-f", f"{seed}/generate.sql"])


def pending_by_database(settings: Settings, new_cluster: bool = False) -> dict[str, list[str]]:
    """Database -> its pending files (``bundle/NNN_name.sql``); raises before any operation
    when an applied file has changed."""
    pending, changed = {}, []
    for database in databases_with_bundles(settings):
        names = bundles_for(settings, database)
        history = None if new_cluster else host.get_fact(
            MigrationHistory, database=database, port=settings.postgres_port)
        result = plan(history, names)
        changed += [f"{database}: {key}" for key in result["changed"]]
        if result["pending"]:
            pending[database] = result["pending"]
    if changed:
        raise SettingsError(
            f"{host.name}: applied SQL files have changed since they ran; nothing was changed "
            "(add a new file instead of editing an applied one, or roll it back first):\n"
            + "\n".join(f"  {c}" for c in changed))
    return pending


@database_hosts_only()
@deploy("SQL hardening")
def harden_databases(settings: Settings, new_cluster: bool = False):
    """
    Apply the SQL bundles of ``postgres_sql_bundles`` to each managed database with
    ``pginfra-migrate``: one runner per database at a time, lock_timeout and retries, preflight
    checks, a pg_dump first (``pginfra_migrate_dump``). With ``pginfra_example_community`` the
    example database is loaded with generated data first, so its hardening has work to do.

    .. code:: python

        harden_databases(load_settings())
    """
    if not settings.runs_bundles or not databases_with_bundles(settings):
        return  # none, or a standby: it replays what the primary applied
    pending = pending_by_database(settings, new_cluster)  # may refuse: before any operation
    # with postgres_ha every member keeps the bundles and the example's cron jobs (which do
    # nothing on a replica), and the leader, wherever it is now, applies them
    leads = ha.writes_here(settings, host.name)

    tar, digest = archive()
    on_host = host.get_fact(Command, f"cat {SQL_DIR}/{STAMP} 2>/dev/null || true")
    if (on_host or "").strip() != digest:
        files.put(name="Upload the SQL bundles", src=io.BytesIO(tar), dest=f"{SQL_DIR}.tar",
                  user="root", group="root", mode="0600")
        staged = shlex.quote(f"{SQL_DIR}.new")
        server.shell(name="Replace the SQL bundles on the host", commands=[
            f"rm -rf {staged} && mkdir -m 0755 {staged} && tar -xf {SQL_DIR}.tar -C {staged} "
            f"--no-same-owner && echo {digest} > {staged}/{STAMP} && chmod 0644 "
            f"{staged}/{STAMP} && rm -rf {SQL_DIR} && mv {staged} {SQL_DIR} && "
            f"rm -f {SQL_DIR}.tar"])
    if settings.pginfra_migrate_dump:
        files.directory(name="Directory of the dumps taken before migrations",
                        path=settings.pginfra_migrate_dump_dir, user="postgres",
                        group="postgres", mode="0700")

    if leads and settings.pginfra_example_community and (new_cluster or not host.get_fact(
            DatabaseHasTable, database=EXAMPLE_DB, table="public.users",
            port=settings.postgres_port)):
        owner = next(db["owner"] for db in settings.postgres_databases
                     if db["name"] == EXAMPLE_DB)
        server.shell(name=f"Load the community example into {EXAMPLE_DB} "
                     f"({settings.pginfra_example_community_users} users)",
                     commands=[seed_command(settings, owner)])

    if settings.pginfra_example_community:
        files.put(name="Cron jobs of the community example",
                  src=render_io("cron.d-pginfra-example-community.j2",
                                port=settings.postgres_port, database=EXAMPLE_DB,
                                # pginfra-maintenance refresh processes every database's queue
                                refresh_queue=not settings.maintenance_enabled),
                  dest="/etc/cron.d/pginfra-example-community", user="root", group="root",
                  mode="0644")
    else:
        files.file(name="No cron jobs of the community example",
                   path="/etc/cron.d/pginfra-example-community", present=False)

    for database, keys in pending.items() if leads else ():
        shown = ", ".join(keys[:6]) + (f", and {len(keys) - 6} more" if len(keys) > 6 else "")
        server.shell(name=f"Apply {len(keys)} SQL file(s) to {database}: {shown}",
                     commands=[migrate_command(settings, database,
                                               bundles_for(settings, database))])
