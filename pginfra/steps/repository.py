"""Step: pgBackRest's repositories, ready before the server archives into them. The next step
(configure) points ``archive_command`` at ``pgbackrest archive-push``; a segment PostgreSQL
cannot archive yet stays ``.ready`` in pg_wal, so the stanza is created first, here."""

from __future__ import annotations

import io
import shlex

from pyinfra import host
from pyinfra.api import deploy
from pyinfra.facts.hardware import Cpus
from pyinfra.operations import files, server, systemd

from pginfra import pgbackrest as pgbr
from pginfra.facts import PgBackRestRepos, PostgresClusters, ReplicationState
from pginfra.s3_access import ca_file, s3_keys
from pginfra.secrets import password_for
from pginfra.settings import Settings, SettingsError, database_hosts_only


def passphrases(settings: Settings, host_name: str) -> tuple[str, str | None]:
    """(repository 1's, repository 2's or None) from the secrets source; missing is an error
    before any operation: a repository encrypted with a lost passphrase is lost."""
    cipher = password_for(pgbr.CIPHER_SECRET)
    if not cipher:
        raise SettingsError(
            f"{host_name}: the secrets source has no {pgbr.CIPHER_SECRET!r}, the passphrase "
            "pgBackRest encrypts the repositories with (aes-256-cbc); add it to the secrets "
            f"file or PGINFRA_PASSWORD_{pgbr.CIPHER_SECRET.upper()}, and keep it safe: backups "
            "cannot be read without it; nothing was changed")
    if len(cipher) < 20:
        raise SettingsError(f"{host_name}: {pgbr.CIPHER_SECRET}: at least 20 characters, for "
                            "a key that guards every backup; nothing was changed")
    return cipher, password_for(pgbr.S3_CIPHER_SECRET)


@database_hosts_only()
@deploy("Backup repository (pgBackRest)")
def prepare_repository(settings: Settings):
    """
    Configure pgBackRest (``/etc/pgbackrest/pgbackrest.conf``, secrets in ``conf.d``, postgres
    0600), its repository directory (``postgres_wal_archive_dir``), with standbys its TLS server
    between the hosts, and on the primary create the stanza in every repository.

    .. code:: python

        prepare_repository(load_settings())
    """
    cipher, s3_cipher = passphrases(settings, host.name)  # may refuse: before any operation
    keys = s3_keys(settings, host.name)
    s3_ca = ca_file(settings, host.name)
    cpus = host.get_fact(Cpus) or 2

    files.directory(name="Directory /etc/pgbackrest", path=pgbr.CONFIG_DIR, user="root",
                    group="postgres", mode="0750")
    files.directory(name="Directory /etc/pgbackrest/conf.d", path=pgbr.INCLUDE_DIR,
                    user="root", group="postgres", mode="0750")
    config = files.put(name="pgBackRest's host options", dest=pgbr.CONFIG,
                       src=io.StringIO(pgbr.config_text(settings)),
                       user="root", group="postgres", mode="0640")
    stanza = files.put(name=f"pgBackRest stanza {pgbr.stanza(settings)}: repositories, servers",
                       dest=pgbr.stanza_config(settings),
                       src=io.StringIO(pgbr.stanza_text(settings, cpus)),
                       user="root", group="postgres", mode="0640")
    secrets = files.put(name="pgBackRest passphrases and S3 keys (postgres only)",
                        src=io.StringIO(pgbr.secrets_text(settings, cipher, s3_cipher, keys)),
                        dest=pgbr.secrets_path(settings), user="postgres", group="postgres",
                        mode="0600")
    if s3_ca:
        files.put(name="CA of the S3 endpoint", src=str(s3_ca), dest=pgbr.S3_CA, user="root",
                  group="root", mode="0644")
    else:
        files.file(name="No CA file for S3 (the host's CAs)", path=pgbr.S3_CA, present=False)
    for path, mode in ((settings.postgres_wal_archive_dir, "0700"), (pgbr.SPOOL, "0750"),
                       (pgbr.LOG_DIR, "0750")):
        files.directory(name=f"Directory {path}", path=path, user="postgres", group="postgres",
                        mode=mode)

    changed = [config, stanza, secrets]
    tls = pgbr.tls_server(settings)
    if tls:
        changed += _tls_files(settings)
    systemd.service(name="pgBackRest TLS server between the cluster's hosts"
                    if tls else "No pgBackRest TLS server (one host)",
                    service=pgbr.SERVER_UNIT, running=tls, enabled=tls)
    if tls and any(op.will_change for op in changed):
        server.shell(name="Restart pgBackRest's TLS server for its new configuration",
                     commands=[pgbr.restart_server_command()])

    if not settings.is_standby:
        _stanza(settings)


def _tls_files(settings: Settings) -> list:
    """The host's pgBackRest key and certificate from pginfra's CA: the CN is the host's name,
    which the other hosts' servers authorise; the address is a DNS name too, since pgBackRest
    2.45 checks only DNS names against the host it connects to."""
    from pginfra.ca import ensure_ca, ensure_server_cert

    _, ca_cert = ensure_ca()
    names = [settings.node.address, host.name]
    key, cert = ensure_server_cert(host.name, [settings.node.address], names,
                                   name="pgbackrest", client=True)
    files.directory(name="Directory of pgBackRest's TLS files", path=pgbr.TLS_DIR,
                    user="postgres", group="postgres", mode="0700")
    return [files.put(name=f"pgBackRest TLS {kind}", src=str(src), dest=pgbr.TLS[kind],
                      user="postgres", group="postgres", mode="0600" if kind == "key" else "0644")
            for kind, src in (("key", key), ("cert", cert), ("ca", ca_cert))]


def _stanza(settings: Settings) -> None:
    """stanza-create where a repository has none yet (idempotent in pgBackRest, but run only
    then, so a second deploy changes nothing). The server must answer: it is started by step 3."""
    repos = host.get_fact(PgBackRestRepos, stanza=pgbr.stanza(settings))
    missing = [n for n in pgbr.repos(settings) if repos.get(n, {}).get("status") not in (0, 2)]
    if not missing:
        return
    cluster = host.get_fact(PostgresClusters).get(
        f"{settings.postgres_version}/{settings.postgres_cluster}")
    if cluster is not None and cluster.get("status") != "online":
        return  # a host that is being rebuilt; the next run creates it
    if cluster is not None:
        state = host.get_fact(ReplicationState, data_directory=pgbr.data_directory(settings),
                              port=settings.postgres_port)
        if (state.get("server") or {}).get("in_recovery"):
            # a standby the inventory names primary: pgBackRest creates a stanza on a primary
            # only, so the backups step does it once the replication step has promoted it
            return
    server.shell(
        name=f"Create the pgBackRest stanza in repository {', '.join(map(str, missing))}",
        commands=["cd /tmp && " + shlex.join([
            "runuser", "-u", "postgres", "--", "pgbackrest", f"--stanza={pgbr.stanza(settings)}",
            "--log-level-console=warn", *pgbr.local_only_flags(settings), "stanza-create"])])
