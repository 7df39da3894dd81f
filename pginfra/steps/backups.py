"""Step: backups. Install the backup and restore programs, their configuration and the S3
credentials of the dumps' copies; take a new host's first pgBackRest full backup (verified) and
dumps. Their cron jobs are written with the health and maintenance jobs by the next step
(pginfra/steps/health.py)."""

from __future__ import annotations

import io

from pyinfra import host
from pyinfra.api import deploy
from pyinfra.facts.server import Command
from pyinfra.operations import files, server

from pginfra import ha
from pginfra import pgbackrest as pgbr
from pginfra.facts import PgBackRestRepos
from pginfra.programs import checked_config
from pginfra.s3_access import credentials_text, s3_keys
from pginfra.settings import Settings, database_hosts_only
from pginfra.templating import render_io
from pginfra_host import layout

BIN = layout.BIN
CONFIG = f"{layout.CONFIG_DIR}/backup.json"
CREDENTIALS = f"{layout.CONFIG_DIR}/s3-credentials"
STATE_DIR = layout.BACKUP_STATE_DIR
LOG_DIR = layout.LOG_DIR


def backup_config(settings: Settings, host_name: str) -> dict:
    """What /etc/pginfra/backup.json tells the host programs."""
    version, cluster = settings.postgres_version, settings.postgres_cluster
    unit = layout.unit(*settings.pg_cluster)
    s3 = None
    if settings.backup_s3_bucket:
        s3 = {
            "bucket": settings.backup_s3_bucket,
            "prefix": settings.backup_s3_prefix,
            "region": settings.backup_s3_region,
            "endpoint_url": settings.backup_s3_endpoint_url,
            "sse": settings.backup_s3_sse,
            "kms_key_id": settings.backup_s3_kms_key_id,
            "storage_class": settings.backup_s3_storage_class,
            "request_checksum_calculation": settings.backup_s3_request_checksum_calculation,
            "keep_days": settings.backup_s3_keep_days,
            "credentials_file": CREDENTIALS,
            "ca_file": pgbr.S3_CA if settings.backup_s3_ca_file else "",
        }
    return {
        "host": host_name,
        "version": version,
        "cluster": cluster,
        "port": settings.postgres_port,
        "data_directory": pgbr.data_directory(settings),
        "stop_command": ["systemctl", "stop", unit],
        "start_command": ["systemctl", "start", unit],
        "wal_archive_dir": settings.postgres_wal_archive_dir,
        "backup_dir": settings.backup_dir,
        "state_dir": STATE_DIR,
        "log_dir": LOG_DIR,
        "databases": [db["name"] for db in settings.postgres_databases],
        "keep_local_dumps": settings.backup_keep_local_dumps,
        "pgbackrest": {
            "stanza": pgbr.stanza(settings),
            "config": pgbr.CONFIG,
            "repos": pgbr.repos(settings),
            "backup_standby": pgbr.backs_up_from_standby(settings),
            "retention_full": settings.backup_retention_full,
        },
        "s3": s3,
        "ha": bool(settings.postgres_ha),
        "repository_host": settings.repository_host,
    }


@database_hosts_only()
@deploy("Backups")
def install_backups(settings: Settings):
    """
    Install ``pginfra-backup`` and ``pginfra-restore`` with ``/etc/pginfra/backup.json``, the
    dumps' S3 credentials file (postgres, 0600), the dump and state directories and logrotate
    for ``/var/log/pginfra``; on a host whose repositories hold no backup yet, switch to a new
    WAL segment, prove archiving to every repository (``pgbackrest check``) and take the first
    full backup, verified. The jobs go into ``/etc/cron.d/pginfra`` in the next step.

    .. code:: python

        install_backups(load_settings())
    """
    credentials = credentials_text(s3_keys(settings, host.name))  # may refuse: before any op
    if not settings.backup_enabled:
        return  # the next step leaves the backup jobs out of /etc/cron.d/pginfra
    config = checked_config("pginfra-backup", backup_config(settings, host.name), host.name,
                            CONFIG)  # may refuse: before any op
    files.directory(name="Directory /etc/pginfra", path=layout.CONFIG_DIR, user="root",
                    group="root", mode="0755")
    files.put(name="Backup configuration", src=render_io("backup.json.j2", config=config),
              dest=CONFIG, user="root", group="postgres", mode="0640")
    if credentials:
        files.put(name="S3 credentials of the dumps' copies (readable by postgres only)",
                  src=io.StringIO(credentials), dest=CREDENTIALS, user="postgres",
                  group="postgres", mode="0600")
    else:
        files.file(name="No S3 credentials file", path=CREDENTIALS, present=False)

    for path in (settings.backup_dir, STATE_DIR):
        files.directory(name=f"Directory {path}", path=path, user="postgres", group="postgres",
                        mode="0700")
    if settings.postgres_ha:
        if settings.repository_host:
            _first_backup(settings)
        if ha.writes_here(settings, host.name):  # the leader, wherever it is now
            _first_dump()
        return
    if settings.is_standby:
        return
    _first_backup(settings)
    _first_dump()


def _first_backup(settings: Settings) -> None:
    # Point-in-time recovery needs a full backup to start from, and a restore of one database
    # a dump: a host gets its first of each now rather than at the first scheduled run, so
    # the health check's backup freshness is right from the start. On a host that archived
    # with basic_archive before, this is the migration's last step: everything after the
    # switch is in pgBackRest's archive, and its first backup is verified before the old
    # backups go (pginfra-backup retention removes them only then).
    repos = host.get_fact(PgBackRestRepos, stanza=pgbr.stanza(settings))
    empty = [n for n in pgbr.repos(settings) if not repos.get(n, {}).get("backups")]
    if empty:
        stanza = pgbr.stanza(settings)
        server.shell(
            name="First pgBackRest full backup, verified: point-in-time recovery works from now",
            commands=[f"cd /tmp && runuser -u postgres -- pgbackrest --stanza={stanza} "
                      "--log-level-console=warn stanza-create",  # a promoted standby's first
                      # a checkpoint first: right after a promotion, pg_control has the new
                      # timeline only once the end-of-recovery checkpoint is done
                      f"cd /tmp && runuser -u postgres -- psql -X -q -p {settings.postgres_port}"
                      " -c CHECKPOINT -c 'SELECT pg_switch_wal()' >/dev/null",
                      f"cd /tmp && runuser -u postgres -- pgbackrest --stanza={stanza} check",
                      *(f"cd /tmp && runuser -u postgres -- {BIN}/pginfra-backup full "
                        f"--repo {n} >/dev/null" for n in empty)])


def _first_dump() -> None:
    found = host.get_fact(Command, f"ls {STATE_DIR}/last-success 2>/dev/null || true")
    if "dump.json" not in (found or "").split():
        server.shell(name="First dumps, so a single database can be restored from now on",
                     commands=[f"cd /tmp && runuser -u postgres -- {BIN}/pginfra-backup dump "
                               ">/dev/null"])
