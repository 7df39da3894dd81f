"""pgBackRest's configuration as pginfra plans it (pginfra/pgbackrest.py): one host, a primary
with standbys (backups from a standby over TLS), a standby (the primary's repository over TLS),
S3 as the second repository; and every file accepted by the real pgBackRest 2.45."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from pginfra import pgbackrest as pgbr
from pginfra.settings import SettingsError, resolve
from pginfra.topology import plan


def host(name: str, nodes: dict | None = None, **data):
    settings = resolve(data, name)
    settings.cluster = nodes or {}
    settings.node = settings.cluster.get(name)
    return settings


def cluster(**data):
    hosts = {f"pg{i}": {"postgres_listen_addresses": ["localhost", f"10.0.0.{i}"], **data}
             for i in (1, 2, 3)}
    return plan(hosts, ["pg1"])


def options(pairs) -> dict:
    found: dict = {}
    for key, value in pairs:
        found.setdefault(key, []).append(value)
    return {k: v[0] if len(v) == 1 else v for k, v in found.items()}


def test_one_host_keeps_a_local_encrypted_repository_and_runs_no_tls_server():
    settings = host("db1")
    repo = options(pgbr.repo_options(settings, cpus=8))
    assert repo["repo1-path"] == "/var/lib/postgresql/wal-archive"
    assert repo["repo1-cipher-type"] == "aes-256-cbc" and repo["repo1-retention-full"] == "2"
    assert repo["archive-async"] == "y" and repo["process-max"] == "4"
    assert "repo2-type" not in repo
    assert not any(k.startswith("tls-server") for k, _ in pgbr.global_options(settings))
    assert options(pgbr.stanza_options(settings)) == {
        "pg1-path": "/var/lib/postgresql/15/main", "pg1-port": "5432"}
    assert pgbr.repos(settings) == [1]


def test_process_max_follows_the_cpus_unless_set():
    assert pgbr.process_max(host("db1"), 2) == 2
    assert pgbr.process_max(host("db1"), 12) == 6
    assert pgbr.process_max(host("db1"), 64) == 16
    assert pgbr.process_max(host("db1", backup_process_max=3), 64) == 3


def test_the_primary_backs_up_from_its_standbys_over_tls():
    nodes = cluster()
    settings = host("pg1", nodes)
    stanza = options(pgbr.stanza_options(settings))
    assert stanza["pg2-host"] == "10.0.0.2" and stanza["pg3-host"] == "10.0.0.3"
    assert stanza["pg2-host-type"] == "tls" and stanza["pg2-host-port"] == "8432"
    assert stanza["pg2-host-cert-file"] == pgbr.TLS["cert"]
    assert stanza["backup-standby"] == "y"
    glob = options(pgbr.global_options(settings))
    assert glob["tls-server-address"] == "10.0.0.1"
    assert glob["tls-server-auth"] == ["pg2=main", "pg3=main"]
    assert pgbr.backs_up_from_standby(settings)
    off = host("pg1", nodes, backup_from_standby=False)
    assert "backup-standby" not in options(pgbr.stanza_options(off))


def test_a_standby_reaches_the_primarys_repository_through_its_tls_server():
    settings = host("pg2", cluster())
    repo = options(pgbr.repo_options(settings, cpus=2))
    assert repo["repo1-host"] == "10.0.0.1" and repo["repo1-host-type"] == "tls"
    assert "repo1-cipher-type" not in repo  # the repository host decrypts
    assert "repo1-cipher-pass" not in pgbr.secrets_text(settings, "p" * 20, None, None)
    assert options(pgbr.global_options(settings))["tls-server-auth"] == ["pg1=main", "pg3=main"]
    assert "backup-standby" not in options(pgbr.stanza_options(settings))


def test_s3_is_the_second_repository_with_its_own_retention_and_no_secret_in_the_config():
    settings = host("db1", backup_s3_bucket="backups", backup_s3_keep_days=14,
                    backup_s3_endpoint_url="https://10.0.0.9:9443", backup_s3_ca_file="/ca.crt")
    repo = options(pgbr.repo_options(settings, cpus=2))
    assert repo["repo2-s3-endpoint"] == "10.0.0.9" and repo["repo2-storage-port"] == "9443"
    assert repo["repo2-s3-uri-style"] == "path" and repo["repo2-path"] == "/pginfra/db1"
    assert repo["repo2-storage-ca-file"] == pgbr.S3_CA
    assert repo["repo2-retention-full-type"] == "time" and repo["repo2-retention-full"] == "14"
    text = pgbr.stanza_text(settings, 2)
    secrets = pgbr.secrets_text(settings, "first-passphrase-xxxx", None, ("AKIA1", "s3cret"))
    assert "s3cret" not in text and "passphrase" not in text
    assert "repo2-s3-key-secret=s3cret" in secrets
    assert "repo2-cipher-pass=first-passphrase-xxxx" in secrets  # repo 1's when none of its own
    aws = host("db1", backup_s3_bucket="backups", backup_s3_region="eu-west-1")
    repo = options(pgbr.repo_options(aws, cpus=2))
    assert repo["repo2-s3-endpoint"] == "s3.eu-west-1.amazonaws.com"
    assert "repo2-s3-uri-style" not in repo
    assert "repo2-s3-key-type=auto" in pgbr.secrets_text(aws, "p" * 20, None, None)


def test_the_cluster_must_agree_on_what_the_stanza_shares():
    hosts = {f"pg{i}": {"postgres_listen_addresses": ["localhost", f"10.0.0.{i}"]}
             for i in (1, 2)}
    hosts["pg2"]["backup_s3_bucket"] = "other"
    with pytest.raises(SettingsError, match="backup_s3_bucket differs between hosts"):
        plan(hosts, ["pg1"])


@pytest.mark.skipif(shutil.which("pgbackrest") is None,
                    reason="pgbackrest is not installed on this machine (dev.sh installs it)")
@pytest.mark.parametrize("name", ["db1", "pg1", "pg2"])
def test_pgbackrest_itself_accepts_every_file(tmp_path, name):
    """pgBackRest 2.45 parses the three files: no unknown option, none in the wrong section.
    (It then fails for want of a repository or a host, which is not what this checks.)"""
    nodes = cluster(backup_s3_bucket="backups",
                    backup_s3_endpoint_url="https://127.0.0.1:9") if name != "db1" else None
    settings = host(name, nodes, **({} if nodes else {"backup_s3_bucket": "backups"}))
    (tmp_path / "conf.d").mkdir()
    (tmp_path / "pgbackrest.conf").write_text(
        pgbr.config_text(settings).replace(pgbr.LOG_DIR, str(tmp_path))
        .replace(pgbr.SPOOL, str(tmp_path)))
    (tmp_path / "conf.d" / "main.conf").write_text(
        pgbr.stanza_text(settings, 2).replace("/var/lib/postgresql/wal-archive", str(tmp_path)))
    (tmp_path / "conf.d" / "main-secrets.conf").write_text(
        pgbr.secrets_text(settings, "p" * 20, None, ("key", "secret")))
    common = ["pgbackrest", f"--config={tmp_path}/pgbackrest.conf",
              f"--config-include-path={tmp_path}/conf.d", "--stanza=main",
              "--log-level-console=error"]
    # the commands the deploy and the programs run, with the options they add
    for command in (["--io-timeout=1", "--db-timeout=1", "check"],
                    [*pgbr.local_only_flags(settings), "stanza-create"]):
        result = subprocess.run([*common, *command], capture_output=True, text=True,
                                timeout=60)
        output = result.stdout + result.stderr
        # 31 invalid option, 32 option invalid value, 37 option required, 29 option invalid
        assert result.returncode not in (29, 31, 32, 37), (command, output)
        assert "invalid option" not in output and "not valid for" not in output, output


def test_stanza_create_leaves_the_standbys_out():
    """Before the replication step a new standby is Debian's empty cluster, a second primary
    to pgBackRest: the primary's stanza-create resets every pg2.. option."""
    flags = pgbr.local_only_flags(host("pg1", cluster()))
    assert "--reset-pg2-host" in flags and "--reset-pg3-path" in flags
    assert not [f for f in flags if f.startswith("--reset-pg1")]
    assert pgbr.local_only_flags(host("db1")) == []


def _restart_with(tmp_path, restart_rc: int, active_after: int | None):
    """restart_server_command against a systemctl that fails the restart with ``restart_rc``
    and reports the unit active from its ``active_after``-th look (never with None)."""
    count = tmp_path / "looks"
    count.write_text("0")
    (tmp_path / "systemctl").write_text(f"""#!/bin/sh
case "$1" in
  restart) exit {restart_rc} ;;
  show) n=$(( $(cat {count}) + 1 )); echo $n > {count}
        if [ -n "{active_after or ''}" ] && [ $n -ge {active_after or 0} ]; then echo active
        else echo activating; fi ;;
esac
""")
    (tmp_path / "journalctl").write_text("#!/bin/sh\necho 'ERROR: [039]: unable to bind socket'\n")
    for tool in ("systemctl", "journalctl"):
        (tmp_path / tool).chmod(0o755)
    command = pgbr.restart_server_command(settle=3).replace("sleep 1", "sleep 0.05")
    return subprocess.run(["sh", "-c", command], capture_output=True, text=True,
                          env={"PATH": f"{tmp_path}:/usr/bin:/bin"})


def test_a_server_restart_that_works_at_once_waits_for_nothing(tmp_path):
    proc = _restart_with(tmp_path, 0, None)
    assert proc.returncode == 0 and proc.stdout == ""


def test_a_server_systemd_brings_back_passes_and_says_why_it_failed_first(tmp_path):
    proc = _restart_with(tmp_path, 1, 2)
    assert proc.returncode == 0
    assert "did not start at once" in proc.stdout and "unable to bind socket" in proc.stdout


def test_a_server_that_stays_down_fails_the_run_with_its_journal(tmp_path):
    proc = _restart_with(tmp_path, 1, None)
    assert proc.returncode == 1
    assert "unable to bind socket" in proc.stdout and "not active after 3 s" in proc.stdout
