"""The runbook against a real rehearsal host, through the real pyinfra CLI."""

import json
import re
import subprocess
import sys

from conftest import BIN, control_env, record_timing, run_pyinfra

from pginfra import ROOT
from pginfra.programs import entry_point


def test_first_deploy_changes_the_host(first_deploy):
    assert first_deploy.results["failed_hosts"] == []
    assert "Create the PostgreSQL cluster | Create cluster 15/main" in first_deploy.changed
    assert "Install PostgreSQL packages | Install PostgreSQL server packages" in (
        first_deploy.changed
    )


def test_a_container_leaves_kernel_settings_to_its_machine(lab, first_deploy):
    """The kernel is the machine's: the run says it skips them and writes no sysctl file; the
    postgres user's limits are the host's own and are set."""
    assert ("kernel settings are the machine's: this host is a container (systemd-nspawn)"
            in first_deploy.stderr)
    assert lab.ssh("pgt1", ["test", "-e", "/etc/sysctl.d/60-pginfra-postgres.conf"],
                   check=False).returncode == 1
    limits = lab.ssh("pgt1", ["cat", "/etc/security/limits.d/60-pginfra-postgres.conf"]).stdout
    assert "postgres hard nofile 65536" in limits


def test_host_state(lab, first_deploy):
    """tests/host, run by testinfra over SSH exactly as against production."""
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/host",
         "--hosts=ssh://pgt1", f"--ssh-config={lab.ssh_config}"],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
    )
    print(proc.stdout)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    # the summary line (the slowest tests' names, printed above it, may hold "failed")
    summary = proc.stdout.strip().splitlines()[-1]
    assert re.search(r"\d+ passed", summary) and not re.search(r"\d+ (failed|error)", summary)


def test_second_deploy_reports_no_changes(lab, first_deploy):
    second = run_pyinfra(lab)
    assert second.returncode == 0, second.stderr[-4000:]
    record_timing("second_deploy_seconds", second.seconds)
    assert second.changed == []
    assert second.results["totals"]["success"] == 0
    assert second.results["totals"]["no_change"] > 0


def test_typo_in_data_stops_before_any_operation(lab, first_deploy):
    result = run_pyinfra(lab, "--data", "postgres_prot=5433", "--data", "postgres_version=14")
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert "pgt1: postgres_prot: unknown setting; did you mean 'postgres_port'?" in output
    assert "pgt1: postgres_version: must be one of 15, got 14" in output
    assert "Beginning operation run" not in output
    assert "Starting operation" not in output


def test_bad_value_in_an_inventory_file_names_host_and_key(lab, first_deploy, tmp_path):
    inventory = tmp_path / "typo.py"
    inventory.write_text(
        "from pginfra_lab.inventory import rehearsal_hosts\n"
        "postgres_servers = ([h for h in rehearsal_hosts()], {'postgres_port': '5432x'})\n"
    )
    result = run_pyinfra(lab, inventory=str(inventory))
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert "pgt1: postgres_port: expected an integer, got '5432x'" in output
    assert "Starting operation" not in output


def test_dry_run_of_a_converged_host_plans_nothing(lab, first_deploy):
    proc = subprocess.run(
        [str(BIN / "pyinfra"), "--dry", "--json", "inventories/rehearsal.py",
         "deploys/postgres.py"],
        cwd=ROOT, env=control_env(lab), capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    payload = json.loads(proc.stdout)
    assert payload["results"] is None
    assert payload["plan"], "the dry run planned the runbook's operations"
    assert [op["name"] for op in payload["plan"] if op["hosts_with_change"]] == []


def deploy_with_secrets_file(lab, tmp_path, text, mode):
    path = tmp_path / "secrets.yaml"
    path.write_text(text)
    path.chmod(mode)
    result = run_pyinfra(lab, env=control_env(lab, PGINFRA_SECRETS_FILE=str(path)))
    return path, result, result.stdout + result.stderr


def test_missing_password_stops_before_any_operation(lab, first_deploy, tmp_path):
    # (the backup passphrase is there: without it, the repository step refuses first, below)
    _, result, output = deploy_with_secrets_file(
        lab, tmp_path, "passwords: {backup_cipher_pass: a-passphrase-of-32-characters-xx}\n",
        0o600)
    assert result.returncode != 0
    assert "pgt1: no password for role 'postgres'" in output
    assert "PGINFRA_PASSWORD_POSTGRES" in output
    assert "Starting operation" not in output


def test_missing_backup_passphrase_stops_before_any_operation(lab, first_deploy, tmp_path):
    _, result, output = deploy_with_secrets_file(lab, tmp_path, "passwords: {}\n", 0o600)
    assert result.returncode != 0
    assert "pgt1: the secrets source has no 'backup_cipher_pass'" in output
    assert "PGINFRA_PASSWORD_BACKUP_CIPHER_PASS" in output and "nothing was changed" in output
    assert "Starting operation" not in output


def test_secrets_file_readable_by_others_is_refused(lab, first_deploy, tmp_path):
    path, result, output = deploy_with_secrets_file(
        lab, tmp_path, "passwords: {postgres: not-shown-anywhere}\n", 0o644)
    assert result.returncode != 0
    assert f"chmod 600 {path}" in output
    assert "not-shown-anywhere" not in output
    assert "Starting operation" not in output


def test_an_older_host_layout_is_replaced_by_the_programs_step_alone(lab, first_deploy):
    """What pginfra left in /usr/local/lib/pginfra before the host package (the library beside
    whole programs, and its bytecode) goes, and the programs step is all that changes."""
    old = "/usr/local/lib/pginfra"
    lab.ssh("pgt1", ["sh", "-c", repr(
        f"printf '# the shared library of old\\n' > {old}/pginfra_backup_lib.py && "
        f"mkdir -p {old}/__pycache__ && touch {old}/__pycache__/pginfra_backup_lib.pyc && "
        f"printf '#!/usr/bin/python3\\n# a whole program of old\\n' > {old}/pginfra-health")])
    result = run_pyinfra(lab)
    assert result.returncode == 0, result.stderr[-4000:]
    assert result.changed, "the old files were not noticed"
    others = [name for name in result.changed if not name.startswith("pginfra's host programs |")]
    assert others == [], others
    listing = lab.ssh("pgt1", ["ls", "-A", old]).stdout.split()
    assert "pginfra_backup_lib.py" not in listing and "__pycache__" not in listing, listing
    assert lab.ssh("pgt1", ["cat", f"{old}/pginfra-health"]).stdout == entry_point("pginfra-health")
    again = run_pyinfra(lab)
    assert again.returncode == 0 and again.changed == [], again.changed
