"""pginfra's host side: the programs that run on a database host (from cron, from the deploy,
by an operator), one package for the host's own ``/usr/bin/python3`` with Debian's
python3-psycopg and python3-boto3. It imports nothing else: never pyinfra, never the control
package ``pginfra``, which imports it (to plan with the programs' own code and to validate what
it writes for them).

On a host, the deploy's step 2 (pginfra/steps/programs.py) copies this package into the host
python3's site directory (/usr/local/lib/python3.11/dist-packages/pginfra_host) and writes, for
each program the host runs, an entry point of a few lines in /usr/local/lib/pginfra/ that
imports the program's module and calls its ``main()``. Cron and the steps call the entry points.

Where things are
----------------

The programs (``layout.PROGRAMS``: entry point name -> module)::

    apply_config.py   pginfra-apply-config: staged configuration checked on the running
                      server, reloaded, restarted only when needed, or put back
    backup.py         pginfra-backup: pgBackRest full/diff backups, verify, dumps, retention,
                      restore drills, list
    restore.py        pginfra-restore: a dump into a database, PITR, a standby rebuilt
    health/           pginfra-health: the health checks, one module per area (its __init__
                      maps it: the replication lag check is health/replication.py)
    maintenance.py    pginfra-maintenance: VACUUM, ANALYZE, REINDEX, refreshes by threshold
    migrate.py        pginfra-migrate: SQL bundles as tracked migrations (standard library
                      and psycopg only: the tests also upload it alone)

What they share::

    layout.py         where everything is on a host: the entry points, /etc/pginfra/*.json,
                      state, logs, cron, a cluster's unit, data and config directories
    runner.py         the one job runner: run as postgres, load the declared configuration,
                      the job's lock, JSON log lines, exit codes 0/1/2/75
    schema.py         checks for the JSON configurations; keys() derives a file's keys from
                      the dataclasses that declare it; load_json()
    durations.py      PostgreSQL's duration grammar (the deploy's settings use it too)
    util.py           time, atomic JSON files, checksums, commands with the C locale
    pg.py             connections over the Unix socket, Psql (root's way in as postgres)

The backup programs' own pieces::

    backup_config.py  /etc/pginfra/backup.json, declared (dataclasses) and validated
    pgbr.py           running pgBackRest and reading what it says (info, verify)
    dumps.py          logical dumps: labels, manifests, states, retention choices
    s3store.py        the S3 copies of dumps (boto3)
    catalog.py        what exists where: marking dumps bad, publishing, ``list``

Each configuration file is declared once, by its program: backup_config.Config,
health.config.HealthConfig (and THRESHOLDS, which the deploy's settings table reads) and
maintenance.Config. The deploy builds the file from the settings and passes it through the
program's ``validate_config`` while it plans (pginfra/programs.py: ``checked_config``), so it
cannot write a key the program does not know.

To add a program: a module with ``main(argv=None) -> int`` (use ``runner.run_job`` for the
user, configuration, lock, log and exit codes), a line in ``layout.PROGRAMS``, and its name in
``pginfra.programs.wanted_programs`` for the hosts that run it; cron lines go in the schedule
step (pginfra/steps/schedule.py). Unit tests run the entry points under Debian's python3 from
a copy of this package (tests/unit/throwaway_pg.py).
"""
