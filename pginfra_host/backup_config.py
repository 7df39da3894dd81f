"""/etc/pginfra/backup.json, declared and validated: what pginfra-backup and pginfra-restore
know (the cluster, pgBackRest's stanza and repositories, dumps, the S3 copies of dumps).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from pginfra_host import layout
from pginfra_host.layout import DEFAULT_SOCKET_DIR
from pginfra_host.runner import ConfigError
from pginfra_host.schema import (
    NAME,
    abspath,
    argv_list,
    check_declared,
    integer,
    load_json,
    require,
    string,
)

DEFAULT_CONFIG = layout.BACKUP_CONFIG


# The declaration: these dataclasses' fields are the file's keys (schema.keys), as the deploy's
# backups step writes them and validate_config reads them; "path" is the program's own.

@dataclass(frozen=True)
class S3Settings:
    """Where the dumps' off-site copies go (null: nowhere)."""
    bucket: str
    prefix: str
    region: str
    endpoint_url: str
    sse: str
    kms_key_id: str
    storage_class: str
    request_checksum_calculation: str
    keep_days: int
    credentials_file: str
    ca_file: str


@dataclass(frozen=True)
class PgBackRestSettings:
    """How pgBackRest is reached: its stanza, configuration, repositories."""
    stanza: str
    config: str
    repos: list[int]
    backup_standby: bool
    retention_full: int


@dataclass(frozen=True)
class Config:
    """/etc/pginfra/backup.json."""
    path: str  # the file it was read from (not a key)
    host: str
    version: int
    cluster: str
    port: int
    data_directory: str
    stop_command: list[str]
    start_command: list[str]
    wal_archive_dir: str
    backup_dir: str
    state_dir: str
    log_dir: str
    databases: list[str]
    keep_local_dumps: int
    pgbackrest: PgBackRestSettings
    s3: S3Settings | None
    socket_dir: str = DEFAULT_SOCKET_DIR
    # postgres_ha: any member may lead, so the jobs ask the server's role at each run
    ha: bool = False
    # this host holds repository 1 and runs pgBackRest's jobs (with ha: whatever its role now)
    repository_host: bool = True

    def bin(self, name: str) -> str:
        return layout.pg_bin(self.version, name)


_PREFIX = re.compile(r"^[A-Za-z0-9!_.*'()/-]{0,200}$")
_URL = re.compile(r"^https?://[A-Za-z0-9.:\[\]-]+(/[A-Za-z0-9._~/-]*)?$")
_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")


def _pgbackrest_settings(raw) -> PgBackRestSettings:
    require(isinstance(raw, dict), "pgbackrest", "must be an object", raw)
    check_declared(raw, PgBackRestSettings, prefix="pgbackrest.")
    repos = raw["repos"]
    require(isinstance(repos, list) and repos != [] and len(set(map(str, repos))) == len(repos),
          "pgbackrest.repos", "must be a non-empty list of distinct repository keys", repos)
    for i, repo in enumerate(repos):
        integer(f"pgbackrest.repos[{i}]", repo, 1, 256)
    require(isinstance(raw["backup_standby"], bool), "pgbackrest.backup_standby",
          "must be true or false", raw["backup_standby"])
    return PgBackRestSettings(
        stanza=string("pgbackrest.stanza", raw["stanza"], NAME, "a stanza name"),
        config=abspath("pgbackrest.config", raw["config"]),
        repos=list(repos), backup_standby=raw["backup_standby"],
        retention_full=integer("pgbackrest.retention_full", raw["retention_full"], 1, 1000))


def validate_config(raw, path: str = DEFAULT_CONFIG) -> Config:
    """The configuration, checked; ConfigError names the first bad key."""
    if not isinstance(raw, dict):
        raise ConfigError("the configuration must be a JSON object")
    check_declared(raw, Config)
    databases = raw["databases"]
    require(isinstance(databases, list) and len(set(map(str, databases))) == len(databases),
          "databases", "must be a list of distinct database names", databases)
    for i, db in enumerate(databases):
        require(isinstance(db, str) and 0 < len(db.encode()) <= 49 and "/" not in db
              and "\0" not in db and db not in (".", "..") and not db.startswith("_"),
              f"databases[{i}]", "must be a database name of 1..49 bytes, without '/' and "
              "not starting with '_'", db)
    pgbackrest = _pgbackrest_settings(raw["pgbackrest"])
    s3 = raw["s3"]
    settings = None
    if s3 is not None:
        require(isinstance(s3, dict), "s3", "must be an object or null", s3)
        check_declared(s3, S3Settings, prefix="s3.")
        sse = s3["sse"]
        require(sse in ("AES256", "aws:kms"), "s3.sse", "must be 'AES256' or 'aws:kms'", sse)
        string("s3.kms_key_id", s3["kms_key_id"], empty=True, what="a string")
        require(not s3["kms_key_id"] or sse == "aws:kms", "s3.kms_key_id",
              "may only be set with s3.sse 'aws:kms'", s3["kms_key_id"])
        check = s3["request_checksum_calculation"]
        require(check in ("when_required", "when_supported"), "s3.request_checksum_calculation",
              "must be 'when_required' or 'when_supported'", check)
        settings = S3Settings(
            bucket=string("s3.bucket", s3["bucket"], _BUCKET, "an S3 bucket name"),
            prefix=string("s3.prefix", s3["prefix"], _PREFIX, "a key prefix", empty=True)
            .strip("/"),
            region=string("s3.region", s3["region"], re.compile(r"^[a-z0-9-]{2,40}$"),
                        "a region name"),
            endpoint_url=string("s3.endpoint_url", s3["endpoint_url"], _URL,
                              "an http(s) URL or empty (AWS)", empty=True),
            sse=sse, kms_key_id=s3["kms_key_id"],
            storage_class=string("s3.storage_class", s3["storage_class"],
                               re.compile(r"^[A-Z_]{2,40}$"), "a storage class"),
            request_checksum_calculation=check,
            keep_days=integer("s3.keep_days", s3["keep_days"], 1, 36500),
            credentials_file=abspath("s3.credentials_file", s3["credentials_file"], empty=True),
            ca_file=abspath("s3.ca_file", s3["ca_file"], empty=True),
        )
    return Config(
        path=path,
        host=string("host", raw["host"], NAME, "a host name ([A-Za-z0-9._-], 1..63)"),
        version=integer("version", raw["version"], 10, 99),
        cluster=string("cluster", raw["cluster"], NAME, "a cluster name"),
        port=integer("port", raw["port"], 1, 65535),
        data_directory=abspath("data_directory", raw["data_directory"]),
        stop_command=argv_list("stop_command", raw["stop_command"]),
        start_command=argv_list("start_command", raw["start_command"]),
        wal_archive_dir=abspath("wal_archive_dir", raw["wal_archive_dir"]),
        backup_dir=abspath("backup_dir", raw["backup_dir"]),
        state_dir=abspath("state_dir", raw["state_dir"]),
        log_dir=abspath("log_dir", raw["log_dir"]),
        databases=list(databases),
        keep_local_dumps=integer("keep_local_dumps", raw["keep_local_dumps"], 1, 100000),
        pgbackrest=pgbackrest, s3=settings,
        socket_dir=abspath("socket_dir", raw.get("socket_dir", DEFAULT_SOCKET_DIR)),
        ha=_flag("ha", raw.get("ha", False)),
        repository_host=_flag("repository_host", raw.get("repository_host", True)),
    )


def _flag(key: str, value) -> bool:
    require(isinstance(value, bool), key, "must be true or false", value)
    return value


def load_config(path: str) -> Config:
    return load_json(path, validate_config)
