"""postgres_ha: Patroni and etcd on a lab of three rehearsal hosts of its own (pgh1, pgh2,
pgh3), deployed by the runbook with synchronous mode and a short TTL; then HAProxy's routing,
a shared parameter changed with a rolling restart under writes, a switchover under writes
(counted on the client side), the leader's host killed under writes through HAProxy (nothing
the client saw committed is lost; the old leader rejoins through pg_rewind), a deploy and the
jobs after that failover, etcd losing one member and then two, and the leader's host rebooting.

The tests read the cluster as pginfra-health does: a member's REST API (``/cluster``), from here.
``patronictl list`` on a member picks an etcd endpoint itself, and may spend a probe's whole
timeout on a dead member's (why an earlier kill test saw no leader for 90 s: it had one in 20).

The tests are one story, in order: each starts from where the one before left the lab.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import time

import psycopg
import pytest
from conftest import BIN, STATE_DIR, Deploy, own_lab, record_timing, wait_for, why_failed

from pginfra import ROOT, ha
from pginfra_lab import clients
from pginfra_lab.rehearsal import Lab

LAB_DIR = STATE_DIR.parent / "e2e-ha"
CONTROL = STATE_DIR.parent / "e2e-ha-control"
LAB = {"state_dir": LAB_DIR, "bridge": "pginfra-e2eh", "prefix": "pgh"}
NAMES = ["pgh1", "pgh2", "pgh3"]
ROLES = ["postgres", "app", "pgbouncer_admin", "pgbouncer_auth", "replicator", "rewinder",
         "backup_cipher_pass", ha.REST_SECRET]
# synchronous mode, and failover within seconds: loop_wait + 2 x retry_timeout <= ttl
DATA = {"ha_synchronous_mode": True, "ha_ttl": 20, "ha_loop_wait": 4, "ha_retry_timeout": 8}
CONFIG = "/etc/patroni/15-main.yml"
HAPROXY_RW, HAPROXY_RO = 5000, 5001


@pytest.fixture(scope="module")
def lab():
    with own_lab(LAB, CONTROL, ROLES, hosts=3, first=40, timing="ha_lab_up_seconds") as lab:
        yield lab


def secret(name: str) -> str:
    from pginfra.secrets import _read_file

    return _read_file(CONTROL / "secrets.yaml")[name]


def deploy(lab: Lab, data: dict | None = None) -> Deploy:
    env = {**os.environ, "PGINFRA_REHEARSAL_DIR": str(lab.state_dir),
           "PGINFRA_SECRETS_FILE": str(CONTROL / "secrets.yaml"),
           "PGINFRA_CA_DIR": str(CONTROL / "ca"), "PGINFRA_REHEARSAL_HA": "patroni",
           "PGINFRA_REHEARSAL_DATA": json.dumps(DATA if data is None else data)}
    started = time.monotonic()
    proc = subprocess.run(
        [str(BIN / "pyinfra"), "-y", "--json", "inventories/rehearsal.py", "deploys/postgres.py"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=1200)
    return Deploy(proc.returncode, proc.stdout, proc.stderr, time.monotonic() - started)


def q(lab: Lab, name: str, query: str, db: str = "postgres", check: bool = True):
    proc = lab.ssh(name, ["runuser", "-u", "postgres", "--", "psql", "-XAtq", "-v",
                          "ON_ERROR_STOP=1", "-d", db, "-c", shlex.quote(query)], check=check)
    return proc.stdout.strip() if check else proc


def patronictl_members(lab: Lab, name: str) -> dict[str, dict]:
    """``patronictl list`` on a member, as an operator reads it."""
    proc = lab.ssh(name, ["runuser", "-u", "postgres", "--", "patronictl", "-c", CONFIG, "list",
                          "-f", "json"], check=False, timeout=30)
    if proc.returncode:
        return {}
    return {m["Member"]: m for m in json.loads(proc.stdout or "[]")}


def members(lab: Lab, name: str) -> dict[str, dict]:
    """The cluster as a member's Patroni sees it (its REST API's /cluster)."""
    return clients.members(lab.hosts[name]["address"], str(CONTROL / "ca" / "ca.crt"))


def leader(lab: Lab, ask: str) -> str | None:
    return next((n for n, m in members(lab, ask).items() if m["Role"] == "Leader"
                 and m["State"] == "running"), None)


def healthy(lab: Lab, ask: str, names: list[str]) -> bool:
    """One running leader, every other of ``names`` a running replica (Patroni 3.0 says
    "running" of a replica), one of them the synchronous standby, and the leader's server
    streaming to each of them."""
    found = members(lab, ask)
    if sorted(found) != sorted(names):
        return False
    leaders = [n for n in names if found[n]["Role"] == "Leader"]
    if len(leaders) != 1 or found[leaders[0]]["State"] != "running":
        return False
    if any(found[n]["Role"] not in ("Replica", "Sync Standby")
           or found[n]["State"] not in ("running", "streaming") for n in names
           if n != leaders[0]):
        return False
    # synchronous mode: a failover needs a synchronous standby named in etcd (Patroni promotes
    # no one while there is none: it could lack a commit); one is named a loop after a replica
    # streams again
    if DATA["ha_synchronous_mode"] and not any(found[n]["Role"] == "Sync Standby"
                                               for n in names):
        return False
    streaming = q(lab, leaders[0], "SELECT string_agg(application_name, ',' "
                  "ORDER BY application_name) "
                  "FROM pg_stat_replication WHERE state = 'streaming'", check=False)
    return streaming.returncode == 0 and streaming.stdout.strip() == ",".join(
        sorted(n for n in names if n != leaders[0]))


def Writer(lab: Lab, port: int = 5432) -> clients.Writer:  # noqa: N802 - it makes one
    """The application (pginfra_lab.clients.Writer) through the client path: every member in
    one connection string; ``port`` 5000 goes through each member's HAProxy."""
    return clients.Writer(clients.conninfo([lab.hosts[n]["address"] for n in NAMES], port,
                                           secret("app"), str(CONTROL / "ca" / "ca.crt")))


def missing_rows(lab: Lab, name: str, committed: list[int]) -> list[int]:
    have = {int(v) for v in q(lab, name, "SELECT id FROM ha_probe", db="app").split()}
    return [i for i in committed if i not in have]


def test_a_patroni_cluster_from_a_cold_start(lab):
    result = deploy(lab)
    assert result.returncode == 0, why_failed(result.stderr, lab=lab)
    record_timing("ha_cold_deploy_3_hosts_seconds", result.seconds)
    wait_for(lambda: healthy(lab, "pgh2", NAMES), "one leader and two streaming replicas",
             timeout=90)
    found = patronictl_members(lab, "pgh3")  # as an operator sees it
    assert found["pgh1"]["Role"] == "Leader" and found["pgh1"]["State"] == "running"
    assert sorted(found[n]["Role"] for n in ("pgh2", "pgh3")) in (
        ["Replica", "Sync Standby"], ["Sync Standby", "Sync Standby"])
    # Patroni runs the server now, not the cluster's own unit
    for name in NAMES:
        assert lab.ssh(name, ["systemctl", "is-enabled", "patroni@15-main"]).stdout.strip() \
            == "enabled"
        assert lab.ssh(name, ["systemctl", "is-active", "postgresql@15-main"],
                       check=False).stdout.strip() == "inactive"
    q(lab, "pgh1", f"{clients.CREATE}; GRANT INSERT, SELECT ON {clients.TABLE} TO app",
      db="app")


def test_etcd_has_three_members_over_tls_with_client_certificates(lab):
    address = lab.hosts["pgh1"]["address"]
    etcdctl = ["env", "ETCDCTL_API=3", "etcdctl", f"--endpoints=https://{address}:2379",
               f"--cacert={ha.PATRONI_TLS['ca']}", f"--cert={ha.PATRONI_TLS['cert']}",
               f"--key={ha.PATRONI_TLS['key']}"]
    listed = json.loads(lab.ssh("pgh1", [*etcdctl, "member", "list", "-w", "json"]).stdout)
    peers = sorted(u for m in listed["members"] for u in m["peerURLs"])
    assert peers == sorted(f"https://{lab.hosts[n]['address']}:2380" for n in NAMES)
    health = lab.ssh("pgh1", [*etcdctl, "endpoint", "health", "--cluster", "-w", "json"])
    assert [h["health"] for h in json.loads(health.stdout)] == [True] * 3
    # without a client certificate, and without TLS, etcd says nothing
    no_cert = lab.ssh("pgh1", ["env", "ETCDCTL_API=3", "etcdctl", "--dial-timeout=3s",
                               f"--endpoints=https://{address}:2379",
                               f"--cacert={ha.PATRONI_TLS['ca']}", "member", "list"],
                      check=False)
    assert no_cert.returncode != 0
    plain = lab.ssh("pgh1", ["env", "ETCDCTL_API=3", "etcdctl", "--dial-timeout=3s",
                             f"--endpoints=http://{address}:2379", "member", "list"],
                    check=False)
    assert plain.returncode != 0
    for name in NAMES:
        data = lab.ssh(name, ["stat", "-c", "'%U %a'", "/var/lib/etcd/pginfra"]).stdout.split()
        assert data == ["etcd", "700"]
        listening = lab.ssh(name, ["ss", "-Hltn"]).stdout
        own = lab.hosts[name]["address"]
        for port in (2379, 2380):
            assert f"{own}:{port} " in listening
            assert f"0.0.0.0:{port} " not in listening and f"127.0.0.1:{port} " not in listening


def test_patronis_files_api_and_secrets(lab):
    for name in NAMES:
        stat = lab.ssh(name, ["stat", "-c", "'%U %a'", CONFIG, ha.PATRONI_TLS["key"]]).stdout
        assert stat.split() == ["postgres", "600", "postgres", "600"]
    probe = ("import ssl,sys,urllib.request as u\n"
             "c=ssl.create_default_context(cafile=sys.argv[1]); c.check_hostname=False\n"
             "if len(sys.argv) > 4: c.load_cert_chain(sys.argv[4], sys.argv[5])\n"
             "r=u.Request(sys.argv[2], method=sys.argv[3])\n"
             "try: print(u.urlopen(r, context=c, timeout=5).status)\n"
             "except u.HTTPError as e: print(e.code)\n")

    def api(path, method="GET", host="pgh1", cert=False):
        url = f"https://{lab.hosts[host]['address']}:8008{path}"
        mine = [ha.PATRONI_TLS["cert"], ha.PATRONI_TLS["key"]] if cert else []
        return lab.ssh("pgh2", ["python3", "-c", shlex.quote(probe), ha.PATRONI_TLS["ca"], url,
                                method, *mine]).stdout.strip()

    assert api("/primary", host="pgh1") == "200"
    assert api("/primary", host="pgh2") == "503" and api("/replica", host="pgh2") == "200"
    # an unsafe method needs a client certificate from pginfra's CA, and the API's password
    assert api("/restart", "POST") == "403"
    assert api("/restart", "POST", cert=True) == "401"
    passwords = [secret(n) for n in ("postgres", "replicator", "rewinder", ha.REST_SECRET)]
    for name in NAMES:
        seen = lab.ssh(name, ["sh", "-c", shlex.quote(
            "ps -eo args; journalctl --no-pager -u patroni@15-main -u etcd; "
            "cat /var/log/postgresql/*.log /var/log/postgresql/*/* 2>/dev/null; true")]).stdout
        assert not [p for p in passwords if p in seen]


def connect(lab: Lab, name: str, port: int) -> psycopg.Connection:
    return psycopg.connect(
        host=lab.hosts[name]["address"], port=port, dbname="app", user="app",
        password=secret("app"), sslmode="verify-full", connect_timeout=5,
        sslrootcert=str(CONTROL / "ca" / "ca.crt"))


def test_haproxy_on_every_member_routes_to_the_leader_and_the_replicas(lab):
    for name in NAMES:
        assert lab.ssh(name, ["systemctl", "is-enabled", "haproxy"]).stdout.strip() == "enabled"
        listening = lab.ssh(name, ["ss", "-Hltn"]).stdout
        own = lab.hosts[name]["address"]
        assert f"{own}:{HAPROXY_RW} " in listening and f"0.0.0.0:{HAPROXY_RW} " not in listening
        stat = lab.ssh(name, ["stat", "-c", "'%U %G %a'", "/etc/haproxy/haproxy.cfg"]).stdout
        assert stat.split() == ["root", "haproxy", "640"]
    # whichever member a client calls, verify-full holds (each certificate names every
    # member: the leader's PgBouncer answers), read-write reaches the leader, read-only a
    # replica
    for name in NAMES:
        with connect(lab, name, HAPROXY_RW) as conn:
            assert conn.execute("SELECT pg_is_in_recovery()").fetchone()[0] is False
        with connect(lab, name, HAPROXY_RO) as conn:
            assert conn.execute("SELECT pg_is_in_recovery()").fetchone()[0] is True


def test_second_deploy_reports_no_changes(lab):
    again = deploy(lab)
    assert again.returncode == 0, why_failed(again.stderr, lab=lab)
    assert again.changed == [], again.changed
    record_timing("ha_second_deploy_seconds", again.seconds)


def test_a_bad_patroni_setting_is_refused_before_any_operation(lab):
    bad = deploy(lab, {**DATA, "ha_ttl": 24, "ha_loop_wait": 10})
    assert bad.returncode != 0
    said = bad.stderr + bad.stdout
    assert "nothing was changed" in said
    assert re.search(r"pgh[123]: ha_ttl: 24 s is too short for ha_loop_wait 10 s and "
                     r"ha_retry_timeout 8 s", said), said[-3000:]
    assert healthy(lab, "pgh1", NAMES)


def test_a_shared_parameter_changes_through_patroni_and_restarts_roll(lab):
    now = leader(lab, "pgh1")
    replicas = [n for n in NAMES if n != now]
    started = {n: q(lab, n, "SELECT pg_postmaster_start_time()") for n in NAMES}
    with Writer(lab) as writer:
        grown = deploy(lab, {**DATA, "postgres_max_connections": 250})
        time.sleep(1)
    assert grown.returncode == 0, why_failed(grown.stderr, lab=lab)
    record_timing("ha_rolling_restart_deploy_seconds", grown.seconds)
    assert any("shared configuration (patronictl edit-config)" in n for n in grown.changed)
    # etcd holds it (a file would be overridden by Patroni's command line)
    shown = lab.ssh(now, ["cd", "/tmp", "&&", "runuser", "-u", "postgres", "--", "patronictl",
                          "-c", CONFIG, "show-config"]).stdout
    assert re.search(r"max_connections: '?250'?\n", shown), shown
    after = {n: q(lab, n, "SELECT pg_postmaster_start_time()") for n in NAMES}
    assert all(after[n] != started[n] for n in NAMES), (started, after)
    assert all(q(lab, n, "SHOW max_connections") == "250" for n in NAMES)
    # one at a time, the replicas first, the leader last
    assert len(set(after.values())) == 3 and max(after[n] for n in replicas) < after[now]
    assert missing_rows(lab, now, writer.committed) == []
    print(f"rolling restart: {len(writer.committed)} committed, {writer.failures} failed")
    again = deploy(lab, {**DATA, "postgres_max_connections": 250})
    assert again.returncode == 0 and again.changed == [], again.changed
    # a shrink: the leader first (a replica must not have less than its primary)
    back = deploy(lab)
    assert back.returncode == 0, why_failed(back.stderr, lab=lab)
    assert q(lab, now, "SHOW max_connections") == "200"
    wait_for(lambda: healthy(lab, now, NAMES), "the cluster after the restarts", timeout=90)


def switch(lab: Lab, current: str, candidate: str) -> None:
    """patronictl switchover, as the README says, and wait until ``candidate`` leads and the
    cluster is whole again."""
    said = lab.ssh(current, ["cd", "/tmp", "&&", "runuser", "-u", "postgres", "--",
                             "patronictl", "-c", CONFIG, "switchover", "pginfra", "--leader",
                             current, "--candidate", candidate, "--force"], timeout=120).stdout
    assert "Successfully switched over" in said, said
    wait_for(lambda: leader(lab, candidate) == candidate, f"{candidate} to lead", timeout=60)


def test_switchover_under_writes(lab):
    # in synchronous mode only the synchronous standby may take over
    wait_for(lambda: healthy(lab, "pgh1", NAMES), "a synchronous standby", timeout=90)
    current = leader(lab, "pgh1")
    candidate = next(n for n, m in members(lab, "pgh1").items() if m["Role"] == "Sync Standby")
    with Writer(lab) as writer:
        started = time.monotonic()
        switch(lab, current, candidate)
        switched = time.monotonic()  # a commit after the switch: the pause has ended
        wait_for(lambda: writer.first_commit_after(switched), "writes on the new leader",
                 timeout=60)
        record_timing("ha_switchover_seconds", writer.resumed_after(started) - started)
        time.sleep(2)
    print(f"switchover: {len(writer.committed)} committed, {writer.failures} failed attempts")
    assert missing_rows(lab, candidate, writer.committed) == []
    wait_for(lambda: healthy(lab, candidate, NAMES), f"{current} back as a replica", timeout=90)


def test_failover_when_the_leaders_host_is_killed_under_writes(lab):
    wait_for(lambda: healthy(lab, "pgh1", NAMES), "a synchronous standby to fail over to",
             timeout=90)
    old = leader(lab, "pgh1")
    survivors = [n for n in NAMES if n != old]
    timeline = members(lab, survivors[0])[old]["TL"]
    with Writer(lab, port=HAPROXY_RW) as writer:  # HAProxy, PgBouncer, the leader
        killed = time.monotonic()
        lab.kill(old)  # no shutdown: its server, Patroni and etcd member die at once
        wait_for(lambda: leader(lab, survivors[0]) in survivors, "a new leader",
                 timeout=DATA["ha_ttl"] + 60)
        elected = time.monotonic() - killed
        wait_for(lambda: writer.first_commit_after(killed + 0.5), "writes on the new leader",
                 timeout=60)
        record_timing("ha_failover_seconds", writer.resumed_after(killed) - killed)
        time.sleep(2)
    new = leader(lab, survivors[0])
    print(f"failover: leader after {elected:.1f}s, {len(writer.committed)} committed, "
          f"{writer.failures} failed attempts")
    # synchronous mode: the new leader was the synchronous standby, so it has every commit
    # the client was told of
    assert missing_rows(lab, new, writer.committed) == []
    assert members(lab, new)[new]["TL"] == timeline + 1
    lab.boot(old)  # started again: Patroni finds a leader, rewinds and follows it
    wait_for(lambda: healthy(lab, new, NAMES), f"{old} back as a replica", timeout=120)
    journal = lab.ssh(old, ["journalctl", "-b", "--no-pager", "-u", "patroni@15-main"]).stdout
    assert "Lock owner: " + new in journal
    # it kept its data directory: rewound to the fork (Patroni rewinds a crashed leader), never
    # cloned anew
    assert "running pg_rewind from " + new in journal
    assert "bootstrap" not in journal.lower() and "clone" not in journal.lower()
    assert missing_rows(lab, old, writer.committed) == []
    q(lab, new, "CHECKPOINT")


def backup_job(lab: Lab, name: str, *args: str, program: str = "pginfra-backup") -> list[dict]:
    """Run one of pginfra's jobs on a member as cron does; its JSON lines (exit 0 asserted)."""
    proc = lab.ssh(name, ["cd", "/tmp", "&&", "runuser", "-u", "postgres", "--",
                          f"/usr/local/lib/pginfra/{program}", *args], check=False, timeout=300)
    assert proc.returncode == 0, (name, args, proc.stdout[-2000:], proc.stderr[-2000:])
    return [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]


def test_after_a_failover_the_deploy_and_the_jobs_follow_the_leader(lab):
    now = leader(lab, "pgh1")
    if now == "pgh1":  # the failover may have chosen the inventory's primary: move away
        wait_for(lambda: healthy(lab, "pgh1", NAMES), "a synchronous standby", timeout=90)
        now = next(n for n, m in members(lab, "pgh1").items() if m["Role"] == "Sync Standby")
        switch(lab, "pgh1", now)
    assert leader(lab, "pgh2") == now and now != "pgh1"  # the inventory's primary: a replica
    replicas = [n for n in NAMES if n != now]
    # a deploy after the failover writes on the leader: a role's change reaches every member
    roles = [{"name": "app_owner"},
             {"name": "app", "login": True, "connection_limit": 61, "member_of": ["app_owner"]},
             {"name": "community_owner"}]
    changed = deploy(lab, {**DATA, "postgres_roles": roles})
    assert changed.returncode == 0, why_failed(changed.stderr, lab=lab)
    assert any(n.endswith("| Create or change roles: app") for n in changed.changed), \
        changed.changed
    wait_for(lambda: all(q(lab, n, "SELECT rolconnlimit FROM pg_roles WHERE rolname = 'app'")
                         == "61" for n in NAMES), "the role's change on every member")
    back = deploy(lab)
    assert back.returncode == 0, why_failed(back.stderr, lab=lab)
    again = deploy(lab)
    assert again.returncode == 0 and again.changed == [], again.changed

    # every member has every job; on a replica the leader's jobs log "skipped" and exit 0
    for name in NAMES:
        cron = lab.ssh(name, ["cat", "/etc/cron.d/pginfra"]).stdout
        assert "pginfra-backup dump" in cron and "pginfra-maintenance vacuum" in cron
    for name in replicas:
        dump = backup_job(lab, name, "dump")
        assert [(e["stage"], e["status"]) for e in dump][0] == ("standby", "skipped")
        maintenance = backup_job(lab, name, "vacuum", program="pginfra-maintenance")
        assert {e["status"] for e in maintenance if e["stage"] != "end"} == {"skipped"}
    elsewhere = [n for n in replicas if n != "pgh1"][0]
    assert backup_job(lab, elsewhere, "diff")[0]["stage"] == "repository"  # skipped there
    dump = backup_job(lab, now, "dump")
    assert "ok" in {e["status"] for e in dump if e["stage"] != "end"}
    assert "skipped" not in {e["status"] for e in dump}
    # pgBackRest's repository stays on pgh1, now a replica: its backup finds the leader and
    # copies from a standby, on the new timeline
    timeline = members(lab, now)[now]["TL"]
    backup_job(lab, "pgh1", "diff")
    info = json.loads(lab.ssh("pgh1", ["cd", "/tmp", "&&", "runuser", "-u", "postgres", "--",
                                       "pgbackrest", "--stanza=main", "--output=json",
                                       "info"]).stdout)
    newest = info[0]["backup"][-1]
    assert newest["type"] == "diff" and int(newest["archive"]["start"][:8], 16) == timeline


def test_etcd_losing_one_member_keeps_the_leader_two_make_it_step_down(lab):
    current = leader(lab, "pgh1")
    others = [n for n in NAMES if n != current]
    lab.ssh(others[0], ["systemctl", "stop", "etcd"])
    time.sleep(DATA["ha_ttl"] + 5)
    assert leader(lab, current) == current
    assert q(lab, current, "SELECT pg_is_in_recovery()") == "f"
    lab.ssh(others[1], ["systemctl", "stop", "etcd"])
    # no majority: the leader cannot renew its key and demotes itself rather than risk a
    # second writer
    wait_for(lambda: q(lab, current, "SELECT pg_is_in_recovery()", check=False).stdout.strip()
             == "t", f"{current} to step down", timeout=DATA["ha_ttl"] + 60)
    for name in NAMES:
        assert q(lab, name, "SELECT pg_is_in_recovery()", check=False).stdout.strip() != "f"
    for name in others:
        lab.ssh(name, ["systemctl", "start", "etcd"])
    wait_for(lambda: healthy(lab, current, NAMES), "the cluster healed", timeout=120)
    with Writer(lab):
        pass  # writes are taken again


def test_a_member_that_reboots_comes_back_serving_where_it_listens(lab):
    """The leader's host reboots (a clean shutdown: Patroni hands the lead over on its way
    down); it comes back by itself as a replica, etcd, Patroni, PgBouncer, HAProxy and the
    role-change path unit started at boot, listening on its own address."""
    old = leader(lab, "pgh1")
    others = [n for n in NAMES if n != old]
    with Writer(lab, port=HAPROXY_RW) as writer:
        started = time.monotonic()
        lab.reboot(old)
        wait_for(lambda: leader(lab, others[0]) in others, "a leader while it reboots",
                 timeout=DATA["ha_ttl"] + 60)
        led = time.monotonic()  # a commit after a new leader leads: the pause has ended
        wait_for(lambda: writer.first_commit_after(led), "writes during the reboot",
                 timeout=60)
        record_timing("ha_leader_reboot_writes_again_seconds",
                      writer.resumed_after(started) - started)
        wait_for(lambda: healthy(lab, others[0], NAMES), f"{old} back as a replica",
                 timeout=180)
    new = leader(lab, others[0])
    assert missing_rows(lab, new, writer.committed) == []
    for unit in ("etcd", "patroni@15-main", "pgbouncer", "haproxy",
                 "pginfra-pgbouncer-follows-role.path"):
        assert lab.ssh(old, ["systemctl", "is-active", unit]).stdout.strip() == "active", unit
    own = lab.hosts[old]["address"]
    listening = lab.ssh(old, ["ss", "-Hltn"]).stdout
    for port in (5432, 6432, 2379, 2380, 8008, HAPROXY_RW, HAPROXY_RO):
        assert f"{own}:{port} " in listening, (port, listening)
    with connect(lab, old, HAPROXY_RW) as conn:  # its HAProxy finds the new leader
        assert conn.execute("SELECT pg_is_in_recovery()").fetchone()[0] is False
