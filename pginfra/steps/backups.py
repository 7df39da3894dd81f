"""Step: backups. Install the backup and restore programs, their configuration, the S3
credentials (when the secrets source has them) and log rotation. Their cron jobs are written
with the health and maintenance jobs by the next step (pginfra/steps/health.py)."""

from __future__ import annotations

import io

from pyinfra import host
from pyinfra.api import deploy
from pyinfra.facts.server import Command
from pyinfra.operations import files, server

from pginfra import ROOT
from pginfra.secrets import password_for
from pginfra.settings import Settings, SettingsError
from pginfra.templating import render_io

BIN = "/usr/local/lib/pginfra"
CONFIG = "/etc/pginfra/backup.json"
CREDENTIALS = "/etc/pginfra/s3-credentials"
STATE_DIR = "/var/lib/pginfra/backup"
LOG_DIR = "/var/log/pginfra"
PROGRAMS = ("pginfra-backup", "pginfra-restore")
LIBRARY = "pginfra_backup_lib.py"
# The secrets source holds the S3 keys under these names (or PGINFRA_PASSWORD_S3_...).
S3_KEY_NAMES = ("s3_access_key_id", "s3_secret_access_key")


def backup_config(settings: Settings, host_name: str) -> dict:
    """What /etc/pginfra/backup.json tells the host programs."""
    version, cluster = settings.postgres_version, settings.postgres_cluster
    unit = f"postgresql@{version}-{cluster}"
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
        }
    return {
        "host": host_name,
        "version": version,
        "cluster": cluster,
        "port": settings.postgres_port,
        "data_directory": f"/var/lib/postgresql/{version}/{cluster}",
        "stop_command": ["systemctl", "stop", unit],
        "start_command": ["systemctl", "start", unit],
        "wal_archive_dir": settings.postgres_wal_archive_dir,
        "backup_dir": settings.backup_dir,
        "state_dir": STATE_DIR,
        "log_dir": LOG_DIR,
        "databases": [db["name"] for db in settings.postgres_databases],
        "keep_local_base": settings.backup_keep_local_base,
        "keep_local_dumps": settings.backup_keep_local_dumps,
        "s3": s3,
    }


def check_s3(settings: Settings, key_id: str, secret: str, host_name: str,
             timeout: float = 5) -> None:
    """Reach the bucket from the control machine with the keys the host will use, before any
    operation: a wrong endpoint, bucket or key is a clear error, not a failed backup later."""
    import boto3
    import botocore.config
    import botocore.exceptions

    client = boto3.client(
        "s3", region_name=settings.backup_s3_region,
        endpoint_url=settings.backup_s3_endpoint_url or None,
        aws_access_key_id=key_id, aws_secret_access_key=secret,
        config=botocore.config.Config(connect_timeout=timeout, read_timeout=timeout,
                                      retries={"max_attempts": 1}))
    where = settings.backup_s3_endpoint_url or f"AWS ({settings.backup_s3_region})"
    try:
        client.head_bucket(Bucket=settings.backup_s3_bucket)
    except botocore.exceptions.ClientError as exc:
        code = exc.response.get("Error", {}).get("Code", "?")
        raise SettingsError(
            f"{host_name}: backup_s3_bucket {settings.backup_s3_bucket!r} at {where}: "
            f"HeadBucket failed ({code}); check the bucket name and the S3 keys; nothing was "
            "changed") from None
    except botocore.exceptions.BotoCoreError as exc:
        raise SettingsError(
            f"{host_name}: backup_s3_endpoint_url {where} cannot be reached: {exc}; nothing "
            "was changed") from None


def s3_credentials(settings: Settings, host_name: str) -> str | None:
    """The credentials file's text, when the secrets source has both S3 keys; None to rely on
    the host's environment or instance profile. Half a pair is an error, before any change."""
    if not settings.backup_s3_bucket:
        return None
    key_id, secret = (password_for(name) for name in S3_KEY_NAMES)
    if bool(key_id) != bool(secret):
        raise SettingsError(
            f"{host_name}: the secrets source has only one of {', '.join(S3_KEY_NAMES)}; give "
            "both, or neither to use the host's environment or instance profile; nothing was "
            "changed")
    if not key_id:
        return None
    check_s3(settings, key_id, secret, host_name)
    return f"[default]\naws_access_key_id = {key_id}\naws_secret_access_key = {secret}\n"


@deploy("Backups")
def install_backups(settings: Settings):
    """
    Install ``pginfra-backup`` and ``pginfra-restore`` with ``/etc/pginfra/backup.json``, the
    S3 credentials file (postgres, 0600), the backup, state and log directories and logrotate
    for ``/var/log/pginfra``; take the first base backup and dumps of a new host. The jobs of
    ``backup_schedule_*`` go into ``/etc/cron.d/pginfra`` in the next step, with the others.

    .. code:: python

        install_backups(load_settings())
    """
    credentials = s3_credentials(settings, host.name)  # may refuse: before any operation
    if not settings.runs_backups:  # off, or a standby: the primary's backups are its own
        return  # the next step leaves the backup jobs out of /etc/cron.d/pginfra

    install_programs(PROGRAMS)

    files.directory(name="Directory /etc/pginfra", path="/etc/pginfra", user="root",
                    group="root", mode="0755")
    config = backup_config(settings, host.name)
    files.put(name="Backup configuration", src=render_io("backup.json.j2", config=config),
              dest=CONFIG, user="root", group="postgres", mode="0640")
    if credentials:
        files.put(name="S3 credentials (readable by postgres only)",
                  src=io.StringIO(credentials), dest=CREDENTIALS, user="postgres",
                  group="postgres", mode="0600")
    else:
        files.file(name="No S3 credentials file", path=CREDENTIALS, present=False)

    for path in (settings.backup_dir, STATE_DIR):
        files.directory(name=f"Directory {path}", path=path, user="postgres", group="postgres",
                        mode="0700")

    # Point-in-time recovery needs a base backup to start from, and a restore of one database
    # a dump: a new host gets its first of each now rather than at the first scheduled run, so
    # the health check's backup freshness is right from the start (a standby's run does
    # nothing).
    found = host.get_fact(Command, f"ls {STATE_DIR}/last-success 2>/dev/null || true")
    found = (found or "").split()
    for job, why in (("base", "point-in-time recovery works from now on"),
                     ("dump", "a single database can be restored from now on")):
        if f"{job}.json" not in found:
            server.shell(name=f"First {'base backup' if job == 'base' else 'dumps'}, so {why}",
                         commands=[f"cd /tmp && runuser -u postgres -- {BIN}/pginfra-backup "
                                   f"{job} >/dev/null"])


def install_programs(programs, shared: bool = True) -> None:
    """Put host programs (names under files/) into /usr/local/lib/pginfra. ``shared``: also
    what every one of them needs (the directory, their library, /var/log/pginfra and its
    rotation); the first step that installs programs in a run does it."""
    if shared:
        files.directory(name="Directory of pginfra's host programs", path=BIN, user="root",
                        group="root", mode="0755")
        files.put(name="Library of the host programs", src=str(ROOT / "files" / LIBRARY),
                  dest=f"{BIN}/{LIBRARY}", user="root", group="root", mode="0644")
        files.directory(name=f"Directory {LOG_DIR}", path=LOG_DIR, user="postgres",
                        group="adm", mode="0750")
        files.put(name=f"Log rotation of {LOG_DIR}", src=render_io("logrotate.d-pginfra.j2"),
                  dest="/etc/logrotate.d/pginfra", user="root", group="root", mode="0644")
    for program in programs:
        files.put(name=f"Program {program}", src=str(ROOT / "files" / program),
                  dest=f"{BIN}/{program}", user="root", group="root", mode="0755")
