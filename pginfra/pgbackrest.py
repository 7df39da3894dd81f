"""pgBackRest's configuration for one host of the cluster, planned from its settings: pure
functions, no operations.

pginfra runs pgBackRest (Debian's package) for WAL archiving, physical backups and PITR:

- repository 1 is local, in ``postgres_wal_archive_dir`` on the primary: a host without S3 still
  archives every WAL segment and keeps verified backups. Standbys reach it through the primary's
  pgBackRest TLS server (``repo1-host``), for ``archive-get`` and for rebuilding themselves;
- repository 2 is S3 when ``backup_s3_bucket`` is set, with its own retention (by time);
- both are encrypted on the client side (aes-256-cbc, passphrases from the secrets source,
  only in a postgres-owned 0600 file: pgBackRest refuses them on the command line);
- with standbys the primary lists them as ``pg2..pg8`` over TLS so backups copy their data
  files from a standby (``backup-standby``); every host runs ``pgbackrest server`` for that.

    >>> from pginfra.settings import resolve
    >>> text = stanza_text(resolve({}, "db1"), cpus=4)
    >>> "archive-async=y" in text and "repo1-path=/var/lib/postgresql/wal-archive" in text
    True
"""

from __future__ import annotations

import posixpath
from urllib.parse import urlsplit

from pginfra.settings import Settings
from pginfra_host import layout

CONFIG = "/etc/pgbackrest/pgbackrest.conf"
CONFIG_DIR = "/etc/pgbackrest"
INCLUDE_DIR = "/etc/pgbackrest/conf.d"
# Host-wide options in CONFIG; each cluster's (stanza's) own in conf.d, so several clusters of
# one host each keep theirs.


def stanza_config(settings: Settings) -> str:
    return f"{INCLUDE_DIR}/{stanza(settings)}.conf"


def secrets_path(settings: Settings) -> str:
    return f"{INCLUDE_DIR}/{stanza(settings)}-secrets.conf"



TLS_DIR = "/etc/pgbackrest/tls"
TLS = {"key": f"{TLS_DIR}/pgbackrest.key", "cert": f"{TLS_DIR}/pgbackrest.crt",
       "ca": f"{TLS_DIR}/ca.crt"}
S3_CA = "/etc/pgbackrest/s3-ca.crt"
SPOOL = "/var/spool/pgbackrest"
LOG_DIR = "/var/log/pgbackrest"
CIPHER = "aes-256-cbc"
# An unreachable S3 must not hold local archiving for minutes (8 tries of io-timeout each):
# archive-push gives up on a repository after this many seconds of silence, and retries later.
ARCHIVE_PUSH_IO_TIMEOUT = 20
ARCHIVE_GET_IO_TIMEOUT = 10  # a lost primary must not hold a standby's promotion for minutes
MAX_PG = 8  # pgBackRest's pg1..pg8
# The secrets source's names of the passphrases (repo 2 uses repo 1's when it has none).
CIPHER_SECRET = "backup_cipher_pass"
S3_CIPHER_SECRET = "backup_s3_cipher_pass"


def stanza(settings: Settings) -> str:
    """The stanza: the cluster's name in Debian's layout (``main``)."""
    return settings.postgres_cluster


def data_directory(settings: Settings) -> str:
    return layout.data_directory(*settings.pg_cluster)


def repos(settings: Settings) -> list[int]:
    """The repositories: 1 (local), and 2 when S3 is set."""
    return [1, 2] if settings.backup_s3_bucket else [1]


def process_max(settings: Settings, cpus: int) -> int:
    """``backup_process_max``, or half the CPUs (at least 2, at most 16): compression is the
    bottleneck, and the server keeps the other half."""
    if settings.backup_process_max:
        return settings.backup_process_max
    return max(2, min(16, cpus // 2))


def primary_name(settings: Settings) -> str:
    for node in settings.cluster.values():
        if node.role == "primary":
            return node.name
    return settings.host_name


def repo2_path(settings: Settings) -> str:
    """Where the cluster's S3 repository lives in the bucket: the prefix, then the name of the
    inventory's primary (one repository per cluster, shared by all its hosts)."""
    return "/" + posixpath.join(settings.backup_s3_prefix.strip("/"), primary_name(settings))


def s3_endpoint(settings: Settings) -> tuple[str, int | None]:
    """(host, port or None) of the S3 endpoint: the URL's, or AWS's for the region."""
    if not settings.backup_s3_endpoint_url:
        return f"s3.{settings.backup_s3_region}.amazonaws.com", None
    parts = urlsplit(settings.backup_s3_endpoint_url)
    return parts.hostname, parts.port


def peers(settings: Settings) -> list:
    """The other servers of the cluster, in a stable order."""
    return [n for name, n in sorted(settings.cluster.items()) if name != settings.host_name]


def tls_server(settings: Settings) -> bool:
    """Whether this host runs ``pgbackrest server``: in a cluster of more than one server."""
    return settings.replicated


def _tls_client(prefix: str, node, settings: Settings) -> list[tuple[str, str]]:
    return [(f"{prefix}-host", node.address), (f"{prefix}-host-type", "tls"),
            (f"{prefix}-host-port", str(settings.backup_tls_port)),
            (f"{prefix}-host-ca-file", TLS["ca"]), (f"{prefix}-host-cert-file", TLS["cert"]),
            (f"{prefix}-host-key-file", TLS["key"])]


def global_options(settings: Settings) -> list[tuple[str, str]]:
    """The host's [global] section: where pgBackRest logs and spools, and its TLS server."""
    opts = [("spool-path", SPOOL), ("log-path", LOG_DIR), ("log-level-console", "warn"),
            ("log-level-file", "info")]
    if tls_server(settings):
        opts += [("tls-server-address", settings.node.address),
                 ("tls-server-port", str(settings.backup_tls_port)),
                 ("tls-server-cert-file", TLS["cert"]), ("tls-server-key-file", TLS["key"]),
                 ("tls-server-ca-file", TLS["ca"])]
        # each peer authenticates with its certificate (CN: its inventory name)
        opts += [("tls-server-auth", f"{peer.name}={stanza(settings)}")
                 for peer in peers(settings)]
    return opts


def repo_options(settings: Settings, cpus: int) -> list[tuple[str, str]]:
    """The repositories and how backups run, for this cluster's [stanza] section; no secret."""
    opts: list[tuple[str, str]] = []
    standby = settings.is_standby
    primary = settings.cluster.get(primary_name(settings)) if standby else None
    if standby and primary is not None:
        # the primary's local repository, through its pgBackRest server
        opts += _tls_client("repo1", primary, settings)
        opts.append(("repo1-path", settings.postgres_wal_archive_dir))
    else:
        opts += [("repo1-type", "posix"), ("repo1-path", settings.postgres_wal_archive_dir),
                 ("repo1-cipher-type", CIPHER),
                 ("repo1-retention-full", str(settings.backup_retention_full)),
                 ("repo1-retention-diff", str(settings.backup_retention_diff))]
    if settings.backup_s3_bucket:
        host, port = s3_endpoint(settings)
        opts += [("repo2-type", "s3"), ("repo2-path", repo2_path(settings)),
                 ("repo2-s3-bucket", settings.backup_s3_bucket),
                 ("repo2-s3-endpoint", host), ("repo2-s3-region", settings.backup_s3_region)]
        if port:
            opts.append(("repo2-storage-port", str(port)))
        if settings.backup_s3_endpoint_url:
            opts.append(("repo2-s3-uri-style", "path"))
        if settings.backup_s3_ca_file:
            opts.append(("repo2-storage-ca-file", S3_CA))
        if settings.backup_s3_sse == "aws:kms" and settings.backup_s3_kms_key_id:
            opts.append(("repo2-s3-kms-key-id", settings.backup_s3_kms_key_id))
        opts += [("repo2-cipher-type", CIPHER),
                 ("repo2-retention-full-type", "time"),
                 ("repo2-retention-full", str(settings.backup_s3_keep_days)),
                 ("repo2-retention-diff", str(settings.backup_retention_diff))]
    opts += [("process-max", str(process_max(settings, cpus))),
             ("compress-type", settings.backup_compress_type),
             ("start-fast", "y"),
             ("archive-async", "y")]
    return opts


def stanza_options(settings: Settings) -> list[tuple[str, str]]:
    """The servers of the [stanza] section: this host's as pg1; on the primary, with backups
    from a standby, the standbys as pg2.. over TLS. With postgres_ha the repository host lists
    every other member whatever ``backup_from_standby`` says: pgBackRest finds the leader
    among them, wherever a failover put it."""
    opts = [("pg1-path", data_directory(settings)), ("pg1-port", str(settings.postgres_port))]
    if settings.is_standby or not (settings.backup_from_standby or settings.postgres_ha):
        return opts
    standbys = [n for n in peers(settings) if n.role == "standby"][:MAX_PG - 1]
    for i, node in enumerate(standbys, start=2):
        opts += _tls_client(f"pg{i}", node, settings)
        opts += [(f"pg{i}-path", data_directory(settings)), (f"pg{i}-port", str(node.port))]
    if standbys and settings.backup_from_standby:
        opts.append(("backup-standby", "y"))
    return opts


def local_only_flags(settings: Settings) -> list[str]:
    """Options that drop the standbys (pg2..) from one command: stanza-create runs before the
    replication step, when a new standby is still Debian's empty cluster, which pgBackRest
    would take for a second primary."""
    return [f"--reset-{key}" for key, _ in stanza_options(settings)
            if key.startswith("pg") and not key.startswith("pg1-")]


def backs_up_from_standby(settings: Settings) -> bool:
    return any(key == "backup-standby" for key, _ in stanza_options(settings))


def config_text(settings: Settings) -> str:
    """/etc/pgbackrest/pgbackrest.conf: the host's options."""
    from pginfra.templating import render

    return render("pgbackrest.conf.j2", global_options=global_options(settings))


def stanza_text(settings: Settings, cpus: int) -> str:
    """/etc/pgbackrest/conf.d/<stanza>.conf: the cluster's repositories and servers."""
    from pginfra.templating import render

    return render("conf.d-stanza.conf.j2", stanza=stanza(settings),
                  repo_options=repo_options(settings, cpus),
                  stanza_options=stanza_options(settings),
                  push_io_timeout=ARCHIVE_PUSH_IO_TIMEOUT,
                  get_io_timeout=ARCHIVE_GET_IO_TIMEOUT)


def secrets_text(settings: Settings, cipher_pass: str, s3_cipher_pass: str | None,
                 s3_keys: tuple[str, str] | None) -> str:
    """conf.d/<stanza>-secrets.conf: the passphrases and S3 keys (postgres, 0600)."""
    lines = ["# Managed by pginfra from its secrets source; postgres only (0600).",
             f"[{stanza(settings)}]"]
    if not settings.is_standby:
        lines.append(f"repo1-cipher-pass={cipher_pass}")
    if settings.backup_s3_bucket:
        lines.append(f"repo2-cipher-pass={s3_cipher_pass or cipher_pass}")
        if s3_keys:
            lines += [f"repo2-s3-key={s3_keys[0]}", f"repo2-s3-key-secret={s3_keys[1]}"]
        else:
            lines.append("repo2-s3-key-type=auto")  # the instance profile
    return "\n".join(lines) + "\n"


SERVER_UNIT = "pgbackrest.service"  # Debian's: `pgbackrest server` as postgres
SERVER_SETTLE_SECONDS = 20


def restart_server_command(unit: str = SERVER_UNIT, settle: int = SERVER_SETTLE_SECONDS) -> str:
    """Restart pgBackRest's TLS server and make sure it serves. Debian's unit calls a start
    failed when the server is gone 3 s after it began (``ExecStartPost``) and brings it back
    itself a second later (``Restart=always``): a start that failed once is given ``settle``
    seconds to become active, with the journal printed either way, so a server that keeps
    failing fails the run with its reason and one that came back does not."""
    active = f"[ \"$(systemctl show -p ActiveState --value {unit})\" = active ]"
    return (f"systemctl restart {unit} && exit 0; "
            f"echo '{unit} did not start at once; systemd restarts it:'; "
            f"journalctl --no-pager -n 15 -u {unit}; "
            f"i=0; while [ $i -lt {settle} ]; do sleep 1; i=$((i+1)); {active} && exit 0; done; "
            f"echo '{unit} is not active after {settle} s'; exit 1")


def archive_command(settings: Settings) -> str:
    return f"pgbackrest --stanza={stanza(settings)} archive-push %p"


def restore_command(settings: Settings) -> str:
    return f'pgbackrest --stanza={stanza(settings)} archive-get %f "%p"'
