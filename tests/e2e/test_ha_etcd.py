"""postgres_ha with etcd on a host of its own and a floating address: a lab of three rehearsal
hosts (pge1, pge2, pge3) where pge1 and pge2 are the database hosts (postgres_servers), the
inventory's group etcd is pge1, pge2 and pge3, and clients find the leader by
``ha_client_path: vip`` (keepalived puts the floating address on the leader's interface; its
PgBouncer answers there). pge3 gets etcd and nothing else of the runbook. The floating address
follows a switchover and a failover (pge3's etcd makes the majority that elects the new leader);
losing pge3 keeps the leader, losing pge3 and another member makes it step down (pge3 votes),
and the cluster heals when they come back.

The tests are one story, in order: each starts from where the one before left the lab.
"""

from __future__ import annotations

import ipaddress
import json
import os
import subprocess
import time

import psycopg
import pytest
from conftest import BIN, STATE_DIR, Deploy, own_lab, record_timing, wait_for, why_failed

from pginfra import ROOT, ha
from pginfra_lab import clients
from pginfra_lab.rehearsal import Lab

LAB_DIR = STATE_DIR.parent / "e2e-ha-etcd"
CONTROL = STATE_DIR.parent / "e2e-ha-etcd-control"
LAB = {"state_dir": LAB_DIR, "bridge": "pginfra-e2ee", "prefix": "pge"}
SERVERS, ETCD_ONLY = ["pge1", "pge2"], "pge3"
ROLES = ["postgres", "app", "pgbouncer_admin", "pgbouncer_auth", "replicator", "rewinder",
         "backup_cipher_pass", ha.REST_SECRET]
TIMING = {"ha_ttl": 20, "ha_loop_wait": 4, "ha_retry_timeout": 8}
CONFIG = "/etc/patroni/15-main.yml"
PGBOUNCER = 6432


def data(lab: Lab) -> dict:
    """The HA settings of this lab: the floating address is the lab network's .200."""
    network = ipaddress.ip_network(lab.subnet)
    return {**TIMING, "ha_client_path": "vip", "ha_vip": f"{network[200]}/{network.prefixlen}",
            "ha_vip_interface": "host0"}


def floating(lab: Lab) -> str:
    return data(lab)["ha_vip"].split("/")[0]


@pytest.fixture(scope="module")
def lab():
    with own_lab(LAB, CONTROL, ROLES, hosts=3, first=60) as lab:
        yield lab


def deploy(lab: Lab, etcd: str = "pge1,pge2,pge3") -> Deploy:
    env = {**os.environ, "PGINFRA_REHEARSAL_DIR": str(lab.state_dir),
           "PGINFRA_SECRETS_FILE": str(CONTROL / "secrets.yaml"),
           "PGINFRA_CA_DIR": str(CONTROL / "ca"), "PGINFRA_REHEARSAL_HA": "patroni",
           "PGINFRA_REHEARSAL_HOSTS": ",".join(SERVERS), "PGINFRA_REHEARSAL_ETCD": etcd,
           "PGINFRA_REHEARSAL_DATA": json.dumps(data(lab))}
    started = time.monotonic()
    proc = subprocess.run(
        [str(BIN / "pyinfra"), "-y", "--json", "inventories/rehearsal.py", "deploys/postgres.py"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=1200)
    return Deploy(proc.returncode, proc.stdout, proc.stderr, time.monotonic() - started)


def members(lab: Lab, name: str) -> dict[str, dict]:
    return clients.members(lab.hosts[name]["address"], str(CONTROL / "ca" / "ca.crt"))


def whole(lab: Lab, leader: str = "pge1") -> bool:
    found = members(lab, "pge2")
    other = next(n for n in SERVERS if n != leader)
    return (sorted(found) == SERVERS and found[leader]["Role"] == "Leader"
            and found[leader]["State"] == "running"
            and found[other]["State"] in ("running", "streaming"))


def holders(lab: Lab) -> list[str]:
    """The hosts whose interface holds the floating address now."""
    return [n for n in SERVERS if f" {floating(lab)}/" in lab.ssh(
        n, ["ip", "-o", "-4", "addr", "show", "host0"], check=False).stdout]


def writer(lab: Lab) -> clients.Writer:
    """The application, calling the floating address only (PgBouncer's port)."""
    return clients.Writer(clients.conninfo([floating(lab)], PGBOUNCER, secret("app"),
                                           str(CONTROL / "ca" / "ca.crt")))


def secret(name: str) -> str:
    from pginfra.secrets import _read_file

    return _read_file(CONTROL / "secrets.yaml")[name]


def leading(lab: Lab) -> str | None:
    found = members(lab, "pge2")
    if sorted(found) != SERVERS:
        return None
    return next((n for n, m in found.items() if m["Role"] == "Leader"
                 and m["State"] == "running"), None)


def etcdctl(lab: Lab, *args: str, on: str = "pge1", check: bool = True):
    endpoints = ",".join(f"https://{lab.hosts[n]['address']}:2379" for n in (*SERVERS, ETCD_ONLY))
    return lab.ssh(on, ["env", "ETCDCTL_API=3", "etcdctl", "--command-timeout=5s",
                        f"--endpoints={endpoints}", f"--cacert={ha.PATRONI_TLS['ca']}",
                        f"--cert={ha.PATRONI_TLS['cert']}", f"--key={ha.PATRONI_TLS['key']}",
                        *args], check=check, timeout=60)


def test_etcd_on_a_host_of_its_own_serves_the_database_hosts(lab):
    result = deploy(lab)
    assert result.returncode == 0, why_failed(result.stderr, lab=lab)
    record_timing("ha_etcd_own_host_cold_deploy_seconds", result.seconds)
    wait_for(lambda: whole(lab), "pge1 leading, pge2 its replica", timeout=90)
    listed = json.loads(etcdctl(lab, "member", "list", "-w", "json").stdout)
    assert sorted(m["name"] for m in listed["members"]) == ["pge1", "pge2", "pge3"]
    health = json.loads(etcdctl(lab, "endpoint", "health", "-w", "json").stdout)
    assert [h["health"] for h in health] == [True] * 3
    # Patroni on the database hosts is told of all three members
    config = lab.ssh("pge2", ["cat", "/etc/patroni/15-main.yml"]).stdout
    assert f"{lab.hosts[ETCD_ONLY]['address']}:2379" in config


def test_the_floating_address_is_on_the_leader_and_reaches_its_pgbouncer(lab):
    wait_for(lambda: holders(lab) == ["pge1"], "the floating address on pge1", timeout=60)
    for name in SERVERS:
        assert lab.ssh(name, ["systemctl", "is-enabled", "keepalived"]).stdout.strip() \
            == "enabled"
        # PgBouncer listens there on every member, held or not (ip_nonlocal_bind)
        assert f"{floating(lab)}:{PGBOUNCER} " in lab.ssh(name, ["ss", "-Hltn"]).stdout
    assert lab.ssh("pge1", ["stat", "-c", "'%U %a'", "/etc/keepalived/keepalived.conf"]
                   ).stdout.split() == ["root", "600"]
    with psycopg.connect(host=floating(lab), port=PGBOUNCER, dbname="app", user="app",
                         password=secret("app"), sslmode="verify-full", connect_timeout=5,
                         sslrootcert=str(CONTROL / "ca" / "ca.crt")) as conn:
        assert conn.execute("SELECT pg_is_in_recovery()").fetchone()[0] is False
        conn.execute(f"{clients.CREATE}")
    lab.ssh("pge1", ["runuser", "-u", "postgres", "--", "psql", "-XAtq", "-d", "app", "-c",
                     f"'GRANT INSERT, SELECT ON {clients.TABLE} TO app'"])
    # the health check knows where the address belongs: here on the leader, not on a replica
    for name in SERVERS:
        said = lab.ssh(name, ["/usr/local/lib/pginfra/pginfra-health", "--json", "--check",
                              "patroni"], check=False, timeout=120).stdout.strip()
        patroni = json.loads(said.splitlines()[-1])["checks"][0]
        assert patroni["status"] == "ok", patroni
        assert patroni["data"]["holds_vip"] is (name == "pge1"), patroni


def test_the_floating_address_follows_a_switchover_under_writes(lab):
    with writer(lab) as app:
        started = time.monotonic()
        said = lab.ssh("pge1", ["cd", "/tmp", "&&", "runuser", "-u", "postgres", "--",
                                "patronictl", "-c", CONFIG, "switchover", "pginfra", "--leader",
                                "pge1", "--candidate", "pge2", "--force"], timeout=120).stdout
        assert "Successfully switched over" in said, said
        wait_for(lambda: holders(lab) == ["pge2"], "the floating address on pge2", timeout=60)
        moved = time.monotonic()  # a commit after the address moved: the pause has ended
        wait_for(lambda: app.first_commit_after(moved), "writes through it again", timeout=60)
        record_timing("ha_vip_switchover_writes_again_seconds",
                      app.resumed_after(started) - started)
    wait_for(lambda: whole(lab, "pge2"), "pge1 a replica of pge2", timeout=90)
    have = {int(v) for v in lab.ssh("pge2", ["runuser", "-u", "postgres", "--", "psql", "-XAtq",
                                             "-d", "app", "-c",
                                             f"'SELECT id FROM {clients.TABLE}'"]).stdout.split()}
    assert [i for i in app.committed if i not in have] == []


def test_the_floating_address_follows_a_failover_elected_with_the_etcd_hosts_vote(lab):
    """pge2, the leader, is killed: pge1 and pge3's etcd members make the majority that lets
    pge1 take the leader key; keepalived then moves the address to pge1."""
    with writer(lab) as app:
        killed = time.monotonic()
        lab.kill("pge2")
        wait_for(lambda: holders(lab) == ["pge1"], "the floating address on pge1",
                 timeout=TIMING["ha_ttl"] + 60)
        wait_for(lambda: app.first_commit_after(killed + 0.5), "writes through it again",
                 timeout=60)
        record_timing("ha_vip_failover_writes_again_seconds", app.resumed_after(killed) - killed)
    lab.boot("pge2")
    wait_for(lambda: whole(lab, "pge1"), "pge2 back as pge1's replica", timeout=180)
    assert holders(lab) == ["pge1"]
    # booted, pge2 runs keepalived, and its PgBouncer binds the address it does not hold
    # (ip_nonlocal_bind from /etc/sysctl.d at boot)
    for unit in ("keepalived", "pgbouncer", "etcd"):
        assert lab.ssh("pge2", ["systemctl", "is-active", unit]).stdout.strip() == "active", unit
    assert f"{floating(lab)}:{PGBOUNCER} " in lab.ssh("pge2", ["ss", "-Hltn"]).stdout


def test_the_etcd_host_runs_etcd_and_nothing_else(lab):
    own = lab.hosts[ETCD_ONLY]["address"]
    assert lab.ssh(ETCD_ONLY, ["systemctl", "is-enabled", "etcd"]).stdout.strip() == "enabled"
    listening = lab.ssh(ETCD_ONLY, ["ss", "-Hltn"]).stdout
    for port in (2379, 2380):
        assert f"{own}:{port} " in listening
        assert f"0.0.0.0:{port} " not in listening and f"127.0.0.1:{port} " not in listening
    assert lab.ssh(ETCD_ONLY, ["stat", "-c", "'%U %a'", "/var/lib/etcd/pginfra",
                               ha.ETCD_TLS["key"]]).stdout.split() == ["etcd", "700",
                                                                       "etcd", "600"]
    installed = lab.ssh(ETCD_ONLY, ["dpkg-query", "-W", "-f", "'${Package} ${Status}\\n'"]
                        ).stdout
    present = {line.split()[0] for line in installed.splitlines() if "installed" in line}
    assert {"etcd-server", "etcd-client"} <= present
    assert not present & {"postgresql-15", "patroni", "pgbouncer", "haproxy", "pgbackrest"}
    for path in ("/etc/pginfra", "/etc/patroni", "/etc/cron.d/pginfra", "/etc/postgresql"):
        assert lab.ssh(ETCD_ONLY, ["test", "-e", path], check=False).returncode != 0, path


def test_second_deploy_reports_no_changes(lab):
    again = deploy(lab)
    assert again.returncode == 0, why_failed(again.stderr, lab=lab)
    assert again.changed == [], again.changed


def test_an_etcd_group_without_a_majority_is_refused_before_any_operation(lab):
    bad = deploy(lab, etcd="pge1,pge2")  # two members: no majority survives a loss
    assert bad.returncode != 0
    said = bad.stderr + bad.stdout
    assert "etcd needs 3 or 5 members" in said, said[-3000:]
    assert "Starting operation" not in said


def test_losing_the_etcd_host_keeps_the_leader_losing_another_member_too_does_not(lab):
    lab.kill(ETCD_ONLY)  # no shutdown: its etcd member is gone at once
    time.sleep(TIMING["ha_ttl"] * 2)  # two TTLs: the leader key was renewed without pge3
    assert whole(lab), members(lab, "pge2")
    lab.ssh("pge2", ["systemctl", "stop", "etcd"])  # one member of three left: no quorum
    wait_for(lambda: lab.ssh("pge1", ["runuser", "-u", "postgres", "--", "psql", "-XAtc",
                                      "'SELECT pg_is_in_recovery()'"],
                             check=False).stdout.strip() != "f",
             "the leader steps down without etcd's majority", timeout=TIMING["ha_ttl"] + 60)
    lab.ssh("pge2", ["systemctl", "start", "etcd"])
    lab.boot(ETCD_ONLY)  # etcd starts at boot and rejoins
    wait_for(lambda: etcdctl(lab, "endpoint", "health", check=False).returncode == 0,
             "etcd healthy with its three members", timeout=120)
    wait_for(lambda: leading(lab) in SERVERS, "a leader again", timeout=120)
    assert lab.ssh(ETCD_ONLY, ["systemctl", "is-active", "etcd"]).stdout.strip() == "active"
