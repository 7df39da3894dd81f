"""Streaming replicas on a lab of three rehearsal hosts of its own (pgr1, pgr2, pgr3): the
inventory's primary and its standbys, a host added while pgbench writes, synchronous commits,
a standby taken out, a host with its own data refused, and a promotion drill.

The tests are one story, in order: each starts from where the one before left the lab.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
import time

import pytest
from conftest import BIN, STATE_DIR, Deploy, own_lab, record_timing, wait_for, why_failed

from pginfra import ROOT
from pginfra_lab.rehearsal import Lab

LAB_DIR = STATE_DIR.parent / "e2e-replication"
CONTROL = STATE_DIR.parent / "e2e-replication-control"
LAB = {"state_dir": LAB_DIR, "bridge": "pginfra-e2er", "prefix": "pgr"}
ROLES = ["postgres", "app", "pgbouncer_admin", "pgbouncer_auth", "replicator",
         "backup_cipher_pass"]


@pytest.fixture(scope="module")
def lab():
    with own_lab(LAB, CONTROL, ROLES, hosts=3, first=20,
                 timing="replication_lab_up_seconds") as lab:
        yield lab


def deploy(lab: Lab, hosts: str = "pgr1,pgr2,pgr3", primary: str = "", *args: str) -> Deploy:
    env = {**os.environ, "PGINFRA_REHEARSAL_DIR": str(lab.state_dir),
           "PGINFRA_SECRETS_FILE": str(CONTROL / "secrets.yaml"),
           "PGINFRA_CA_DIR": str(CONTROL / "ca"), "PGINFRA_REHEARSAL_HOSTS": hosts,
           "PGINFRA_REHEARSAL_PRIMARY": primary}
    started = time.monotonic()
    proc = subprocess.run(
        [str(BIN / "pyinfra"), "-y", "--json", "inventories/rehearsal.py", "deploys/postgres.py",
         *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    return Deploy(proc.returncode, proc.stdout, proc.stderr, time.monotonic() - started)


def deploy_ok(lab: Lab, *args, **kwargs) -> Deploy:
    result = deploy(lab, *args, **kwargs)
    assert result.returncode == 0, why_failed(result.stderr, lab=lab)
    return result


def q(lab: Lab, name: str, query: str, db: str = "postgres", check: bool = True) -> str:
    """SQL on a host as the postgres superuser, over its Unix socket."""
    proc = lab.ssh(name, ["runuser", "-u", "postgres", "--", "psql", "-XAtq", "-v",
                          "ON_ERROR_STOP=1", "-d", db, "-c", shlex.quote(query)], check=check)
    return proc.stdout.strip() if check else proc


def receiver(lab: Lab, name: str) -> list[str]:
    return q(lab, name, "SELECT status, sender_host, slot_name FROM pg_stat_wal_receiver"
             ).split("|")


def streaming_from(lab: Lab, name: str, upstream: str) -> bool:
    return receiver(lab, name) == ["streaming", lab.hosts[upstream]["address"], name]


def slots(lab: Lab, name: str) -> list[str]:
    return q(lab, name, "SELECT slot_name || ':' || active FROM pg_replication_slots "
             "ORDER BY 1").splitlines()


def said(result: Deploy, name: str, text: str) -> bool:
    """Whether the run's output has a line of ``name``'s saying ``text``."""
    plain = re.sub(r"\x1b\[[0-9;]*m", "", result.stderr)
    return any(name in line and text in line for line in plain.splitlines())


def host_checks(lab: Lab, name: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/host",
         f"--hosts=ssh://{name}", f"--ssh-config={lab.ssh_config}"],
        cwd=ROOT, capture_output=True, text=True, timeout=600)


def test_primary_and_standby_from_a_cold_start(lab):
    first = deploy_ok(lab, "pgr1,pgr2")
    record_timing("replication_cold_deploy_2_hosts_seconds", first.seconds)
    assert q(lab, "pgr1", "SELECT pg_is_in_recovery()") == "f"
    assert q(lab, "pgr2", "SELECT pg_is_in_recovery()") == "t"
    assert streaming_from(lab, "pgr2", "pgr1")
    assert slots(lab, "pgr1") == ["pgr2:true"]
    # over TLS, as the replication role, which can do nothing else
    assert q(lab, "pgr1", "SELECT r.usename, s.ssl, s.version FROM pg_stat_replication r "
             "JOIN pg_stat_ssl s USING (pid)") == "replicator|t|TLSv1.3"
    assert q(lab, "pgr1", "SELECT rolreplication, rolcanlogin, rolsuper, rolcreatedb, "
             "rolcreaterole, rolbypassrls, (SELECT count(*) FROM pg_auth_members "
             "WHERE member = r.oid) FROM pg_authid r WHERE rolname = 'replicator'"
             ) == "t|t|f|f|f|f|0"


@pytest.mark.parametrize("name", ["pgr1", "pgr2"])
def test_host_state_by_testinfra(lab, name):
    proc = host_checks(lab, name)
    assert proc.returncode == 0, proc.stdout[-4000:] + why_failed(proc.stderr)
    assert " passed" in proc.stdout


def test_a_row_written_on_the_primary_is_read_on_the_standby_which_refuses_writes(lab):
    q(lab, "pgr1", "CREATE TABLE IF NOT EXISTS public.repl_probe (id int PRIMARY KEY, v text)",
      db="app")
    q(lab, "pgr1", "INSERT INTO public.repl_probe VALUES (1, 'from pgr1')", db="app")
    wait_for(lambda: q(lab, "pgr2", "SELECT v FROM public.repl_probe WHERE id = 1", db="app")
             == "from pgr1", "the row on pgr2")
    refused = q(lab, "pgr2", "INSERT INTO public.repl_probe VALUES (2, 'x')", db="app",
                check=False)
    assert refused.returncode != 0
    assert "cannot execute INSERT in a read-only transaction" in refused.stderr
    # the standby's PgBouncer offers the primary's verifiers: the application logs in there
    users = lab.ssh("pgr2", ["cat", "/etc/pgbouncer/userlist.txt"]).stdout
    verifier = q(lab, "pgr1", "SELECT rolpassword FROM pg_authid WHERE rolname = 'app'")
    assert f'"app" "{verifier}"' in users


def test_a_third_host_joins_while_pgbench_writes(lab):
    lab.ssh("pgr1", ["runuser", "-u", "postgres", "--", "pgbench", "-q", "-i", "-s", "2", "app"])
    loop = ("rm -f /tmp/pgbench.stop /tmp/pgbench.log; "
            "while [ ! -e /tmp/pgbench.stop ]; do "
            "runuser -u postgres -- pgbench -n -c 4 -T 5 app >>/tmp/pgbench.log 2>&1 "
            "|| echo PGBENCH-FAILED >>/tmp/pgbench.log; done")
    bench = subprocess.Popen(["ssh", "-F", str(lab.ssh_config), "pgr1", "--", "sh", "-c",
                              shlex.quote(loop)], stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
    try:
        time.sleep(3)
        joined = deploy_ok(lab)
        record_timing("replication_add_third_host_seconds", joined.seconds)
        time.sleep(2)
    finally:
        lab.ssh("pgr1", ["touch", "/tmp/pgbench.stop"])
        bench.wait(timeout=60)
    log = lab.ssh("pgr1", ["cat", "/tmp/pgbench.log"]).stdout
    assert "PGBENCH-FAILED" not in log, log[-3000:]
    processed = [int(n) for n in re.findall(r"actually processed: (\d+)", log)]
    failed = [int(n) for n in re.findall(r"number of failed transactions: (\d+)", log)]
    assert len(processed) >= 3 and sum(processed) > 0, log[-2000:]
    assert failed and sum(failed) == 0, log[-2000:]
    assert streaming_from(lab, "pgr3", "pgr1")
    assert slots(lab, "pgr1") == ["pgr2:true", "pgr3:true"]
    # the row written before pgr3 existed is on both standbys now
    for standby in ("pgr2", "pgr3"):
        assert q(lab, standby, "SELECT v FROM public.repl_probe WHERE id = 1", db="app") \
            == "from pgr1"
    count = q(lab, "pgr1", "SELECT count(*) FROM pgbench_history", db="app")
    wait_for(lambda: q(lab, "pgr3", "SELECT count(*) FROM pgbench_history", db="app") == count,
             "pgr3 to replay pgbench's writes")


def test_second_run_changes_nothing_on_any_host(lab):
    again = deploy_ok(lab)
    record_timing("replication_noop_deploy_3_hosts_seconds", again.seconds)
    assert again.changed == [], again.changed
    proc = host_checks(lab, "pgr3")
    assert proc.returncode == 0, proc.stdout[-4000:] + why_failed(proc.stderr)


def test_a_synchronous_standby_holds_commits_until_it_is_back(lab):
    deploy_ok(lab, "pgr1,pgr2,pgr3", "", "--data", "postgres_synchronous_standbys=FIRST 1 (pgr2)")
    assert q(lab, "pgr1", "SHOW synchronous_standby_names") == 'FIRST 1 ("pgr2")'
    wait_for(lambda: q(lab, "pgr1", "SELECT sync_state FROM pg_stat_replication "
                       "WHERE application_name = 'pgr2'") == "sync", "pgr2 to be synchronous")
    lab.ssh("pgr2", ["systemctl", "stop", "postgresql@15-main"])
    writer = subprocess.Popen(
        ["ssh", "-F", str(lab.ssh_config), "pgr1", "--", "runuser", "-u", "postgres", "--",
         "psql", "-XAtq", "-d", "app", "-c",
         shlex.quote("INSERT INTO public.repl_probe VALUES (10, 'synchronous')")],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: q(lab, "pgr1", "SELECT count(*) FROM pg_stat_activity "
                           "WHERE wait_event = 'SyncRep'") == "1", "the commit to wait")
        time.sleep(2)
        assert writer.poll() is None, "the commit went through with its standby stopped"
        # the primary's health check names the standby of the inventory that is missing
        health = lab.ssh("pgr1", ["runuser", "-u", "postgres", "--",
                                  "/usr/local/lib/pginfra/pginfra-health", "--json", "--check",
                                  "replication"], check=False)
        assert health.returncode == 1, health.stdout
        assert "standby(s) pgr2 not streaming from this server" in health.stdout
        lab.ssh("pgr2", ["systemctl", "start", "postgresql@15-main"])
        out, err = writer.communicate(timeout=60)
        assert writer.returncode == 0, err
    finally:
        if writer.poll() is None:
            writer.kill()
        lab.ssh("pgr2", ["systemctl", "start", "postgresql@15-main"], check=False)
    assert q(lab, "pgr2", "SELECT v FROM public.repl_probe WHERE id = 10", db="app") \
        == "synchronous"
    deploy_ok(lab)  # back to asynchronous
    assert q(lab, "pgr1", "SHOW synchronous_standby_names") == ""


def test_a_standby_taken_out_of_the_inventory_loses_its_slot(lab):
    out = deploy_ok(lab, "pgr1,pgr2")
    assert slots(lab, "pgr1") == ["pgr2:true"]
    assert "Streaming replication | The primary's replication role and slots" in out.changed
    assert said(out, "pgr1", "streaming replication: slots: drop pgr3")
    # pgr3 may no longer connect: the primary's pg_hba.conf has no rule for it now
    hba = lab.ssh("pgr1", ["cat", "/etc/postgresql/15/main/pg_hba.conf"]).stdout
    assert lab.hosts["pgr3"]["address"] not in hba
    wait_for(lambda: q(lab, "pgr3", "SELECT count(*) FROM pg_stat_wal_receiver "
                       "WHERE status = 'streaming'") == "0", "pgr3 to stop streaming")


def test_a_host_with_its_own_data_is_refused_as_a_standby(lab):
    lab.ssh("pgr3", ["pg_ctlcluster", "15", "main", "promote"])
    wait_for(lambda: q(lab, "pgr3", "SELECT pg_is_in_recovery()") == "f", "pgr3 promoted")
    q(lab, "pgr3", "CREATE TABLE public.pgr3_own (v text); "
      "INSERT INTO public.pgr3_own VALUES ('mine')", db="app")
    refused = deploy(lab)
    assert refused.returncode != 0
    assert "pgr3 is named a standby of pgr1 but holds a primary's data" in refused.stderr
    assert "nothing was changed" in refused.stderr
    assert q(lab, "pgr3", "SELECT v FROM public.pgr3_own", db="app") == "mine"
    assert q(lab, "pgr3", "SELECT pg_is_in_recovery()") == "f"
    assert slots(lab, "pgr1") == ["pgr2:true"]
    # What the message says to do when the data is not needed, and pgr3 is a standby again.
    lab.ssh("pgr3", ["pg_dropcluster", "--stop", "15", "main"])
    deploy_ok(lab)
    assert streaming_from(lab, "pgr3", "pgr1")
    assert q(lab, "pgr3", "SELECT count(*) FROM pg_tables WHERE tablename = 'pgr3_own'",
             db="app") == "0"


def test_a_backup_taken_from_a_standby_restores(lab):
    """pgBackRest on the primary copies the data files from a standby (over its TLS server) and
    only starts and stops the backup on the primary; that backup restores, with its rows."""
    q(lab, "pgr1", "CREATE TABLE public.from_standby AS SELECT g AS id FROM "
      "generate_series(1, 1000) g", db="app")
    lab.ssh("pgr1", ["cd", "/tmp", "&&", "runuser", "-u", "postgres", "--",
                     "/usr/local/lib/pginfra/pginfra-backup", "full", "--repo", "1"],
            timeout=900)
    log = lab.ssh("pgr1", ["tail", "-n", "60", "/var/log/pgbackrest/main-backup.log"]).stdout
    assert "--backup-standby" in log and "replay on the standby reached" in log, log[-3000:]
    label = lab.ssh("pgr1", ["runuser", "-u", "postgres", "--", "pgbackrest", "--stanza=main",
                             "--repo=1", "--output=json", "info"]).stdout
    label = re.findall(r'"label":"([0-9F_DI-]+)"', label)[-1]
    scratch = "/var/lib/postgresql/restore-check"
    as_pg = ["runuser", "-u", "postgres", "--"]
    lab.ssh("pgr1", ["rm", "-rf", scratch])
    try:
        lab.ssh("pgr1", ["cd", "/tmp", "&&", *as_pg, "pgbackrest", "--stanza=main", "--repo=1",
                         f"--set={label}", f"--pg1-path={scratch}", "--type=immediate",
                         "--target-action=promote", "--archive-mode=off", "restore"],
                timeout=900)
        # recovery needs at least the primary's values of these (hot-standby minimums)
        minimums = "".join(
            f"{name} = {q(lab, 'pgr1', f'SHOW {name}')}\n"
            for name in ("max_connections", "max_worker_processes", "max_wal_senders",
                         "max_prepared_transactions", "max_locks_per_transaction"))
        conf = (f"port = 5499\nlisten_addresses = ''\nunix_socket_directories = '/tmp'\n"
                f"hba_file = '{scratch}/pg_hba.conf'\n{minimums}")
        for name, text in (("postgresql.conf", conf), ("pg_hba.conf", "local all all peer\n")):
            lab.ssh("pgr1", [*as_pg, "sh", "-c", shlex.quote(f"cat > {scratch}/{name}")],
                    input=text)
        lab.ssh("pgr1", ["cd", "/tmp", "&&", *as_pg, "/usr/lib/postgresql/15/bin/pg_ctl", "-D",
                         scratch, "-l", f"{scratch}/log", "-w", "-t", "120", "start"],
                timeout=300)
        assert wait_for(lambda: lab.ssh("pgr1", [*as_pg, "psql", "-XAtq", "-h", "/tmp", "-p",
                                                 "5499", "-d", "app", "-c", shlex.quote(
                                                     "SELECT count(*) FROM public.from_standby "
                                                     "WHERE NOT pg_is_in_recovery()")],
                                        check=False).stdout.strip() == "1000",
                        "the restored copy to answer, promoted, with the rows", timeout=120)
    finally:
        lab.ssh("pgr1", [*as_pg, "/usr/lib/postgresql/15/bin/pg_ctl", "-D", scratch, "-m",
                         "immediate", "stop"], check=False)
        lab.ssh("pgr1", ["rm", "-rf", scratch])


def test_a_standby_that_fell_too_far_behind_is_rebuilt_from_the_repository(lab):
    """pgr3 is stopped while the primary writes more WAL than its slot may keep: the slot loses
    it. The next deploy creates the slot again; pginfra-restore standby rebuilds pgr3 from the
    repository (delta: only the files that differ), and it streams again."""
    # a small cap on the slot, and no wal_keep_size holding the WAL for it either
    deploy_ok(lab, "pgr1,pgr2,pgr3", "", "--data", "postgres_max_slot_wal_keep_size=64MB",
              "--data", 'postgres_parameters={"wal_keep_size": "0"}')
    lab.ssh("pgr3", ["systemctl", "stop", "postgresql@15-main"])
    q(lab, "pgr1", "CREATE TABLE public.churn AS SELECT g AS id, repeat('x', 100) AS pad "
      "FROM generate_series(1, 600000) g", db="app")
    for _ in range(3):
        q(lab, "pgr1", "SELECT pg_switch_wal(); CHECKPOINT")
    wait_for(lambda: q(lab, "pgr1", "SELECT pg_switch_wal(); CHECKPOINT; SELECT wal_status "
                       "FROM pg_replication_slots WHERE slot_name = 'pgr3'").splitlines()[-1]
             == "lost",
             "pgr3's slot to lose its WAL", timeout=180)
    lab.ssh("pgr1", ["cd", "/tmp", "&&", "runuser", "-u", "postgres", "--",
                     "/usr/local/lib/pginfra/pginfra-backup", "full", "--repo", "1"],
            timeout=900)
    again = deploy_ok(lab)  # the default keep size again; the lost slot is created again
    assert said(again, "pgr1", "streaming replication: slots: drop pgr3, create pgr3")
    rebuilt = lab.ssh("pgr3", ["cd", "/tmp", "&&", "/usr/local/lib/pginfra/pginfra-restore",
                               "standby"], timeout=900)
    assert rebuilt.returncode == 0, rebuilt.stdout + rebuilt.stderr
    log = lab.ssh("pgr3", ["tail", "-n", "40", "/var/log/pgbackrest/main-restore.log"]).stdout
    assert "--delta" in log and "--type=standby" in log, log[-2000:]
    wait_for(lambda: streaming_from(lab, "pgr3", "pgr1"), "pgr3 to stream again", timeout=180)
    q(lab, "pgr1", "INSERT INTO public.repl_probe VALUES (30, 'after the rebuild')", db="app")
    wait_for(lambda: q(lab, "pgr3", "SELECT v FROM public.repl_probe WHERE id = 30", db="app")
             == "after the rebuild", "pgr3 to replay a new write")
    assert q(lab, "pgr3", "SELECT count(*) FROM public.churn", db="app") == "600000"
    q(lab, "pgr1", "DROP TABLE public.churn", db="app")


def test_promotion_drill(lab):
    q(lab, "pgr1", "CREATE TABLE public.drill AS SELECT g AS id FROM generate_series(1, 5000) g",
      db="app")
    committed = q(lab, "pgr1", "SELECT count(*), sum(id) FROM public.drill", db="app")
    # Named without saying the old primary is gone: refused.
    refused = deploy(lab, "pgr2,pgr3", "pgr2")
    assert refused.returncode != 0
    assert "postgres_former_primary" in refused.stderr
    # Said gone while it still streams to pgr2: refused.
    alive = deploy(lab, "pgr2,pgr3", "pgr2", "--data", "postgres_former_primary=pgr1")
    assert alive.returncode != 0
    assert "is alive" in alive.stderr
    assert q(lab, "pgr2", "SELECT pg_is_in_recovery()") == "t"

    lab.stop_host("pgr1")
    started = time.monotonic()
    promoted = deploy_ok(lab, "pgr2,pgr3", "pgr2", "--data", "postgres_former_primary=pgr1")
    record_timing("replication_promote_deploy_seconds", time.monotonic() - started)
    assert "Streaming replication | Promote the standby the inventory names primary" \
        in promoted.changed
    assert said(promoted, "pgr2", "streaming replication: promote it: it replaces pgr1")
    assert q(lab, "pgr2", "SELECT pg_is_in_recovery()") == "f"
    assert q(lab, "pgr2", "SELECT count(*), sum(id) FROM public.drill", db="app") == committed
    wait_for(lambda: streaming_from(lab, "pgr3", "pgr2"), "pgr3 to follow pgr2", timeout=60)
    q(lab, "pgr2", "INSERT INTO public.repl_probe VALUES (20, 'after the promotion')", db="app")
    wait_for(lambda: q(lab, "pgr3", "SELECT v FROM public.repl_probe WHERE id = 20", db="app")
             == "after the promotion", "pgr3 to replay the new primary's write")
    assert q(lab, "pgr3", "SELECT received_tli FROM pg_stat_wal_receiver") == "2"
    assert slots(lab, "pgr2") == ["pgr3:true"]
    again = deploy_ok(lab, "pgr2,pgr3", "pgr2", "--data", "postgres_former_primary=pgr1")
    assert again.changed == [], again.changed
