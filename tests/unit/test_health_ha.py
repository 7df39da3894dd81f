"""pginfra-health's high-availability checks (pginfra_host/health/ha.py) and the "ha" key of its
configuration.

The grading is pure and fed /cluster answers of every shape: the recorded ones were produced by
Patroni 3.0.2's own ``patroni.utils.cluster_as_json`` (Debian's package) from members as its
``touch_member`` writes them (a streaming replica is "running" there; "streaming" from 3.0.4).
Then the checks run for real against HTTPS servers on 127.0.0.1 (http.server with ssl) serving
those answers, with certificates made here: a CA, a server certificate for the IP 127.0.0.1
(as IP and as DNS name, as pginfra's CA issues them), a client certificate; the etcd fakes
REQUIRE a client certificate, so a healthy answer proves it is sent. Last, the program itself
(throwaway_pg's entry point, Debian's /usr/bin/python3, as postgres when root) against them.
"""

from __future__ import annotations

import contextlib
import copy
import datetime
import ipaddress
import json
import os
import pwd
import shutil
import socket
import ssl
import subprocess
import tempfile
import threading
import time
from argparse import Namespace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from throwaway_pg import BIN, ENV, HOST_PYTHON

from pginfra_host import runner, util
from pginfra_host.health import checks, cli, ha
from pginfra_host.health.config import THRESHOLDS, HaSettings, validate_config
from pginfra_host.health.context import Context

PROGRAM = BIN / "pginfra-health"
PAIR = THRESHOLDS["replication_lag_mb"].default  # (50, 100) MB
MEMBERS = ("pgh1", "pgh2", "pgh3")


# ---------------------------------------------------------------------------------------------
# recorded /cluster answers (Patroni 3.0.2's cluster_as_json)

def _member(i: int, role: str, state: str, **extra) -> dict:
    return {"name": f"pgh{i}", "role": role, "state": state,
            "api_url": f"https://10.0.0.{i}:8008/patroni", "host": f"10.0.0.{i}",
            "port": 5432, **extra}


HEALTHY = {"members": [
    _member(1, "leader", "running", timeline=3),
    _member(2, "sync_standby", "running", timeline=3, lag=0),
    _member(3, "replica", "running", timeline=3, lag=1048576)]}
PAUSED = {"members": [
    _member(1, "leader", "running", timeline=3),
    _member(2, "sync_standby", "running", timeline=3, lag=0),
    _member(3, "replica", "running", timeline=3, lag=0)], "pause": True}
NO_LEADER = {"members": [  # pgh1 stopped, nobody took the leader key yet
    _member(1, "replica", "stopped", lag="unknown"),
    _member(2, "replica", "running", timeline=3, lag=1000000),
    _member(3, "replica", "running", timeline=3, lag=1000000)]}
REPLICA_STOPPED = {"members": [
    _member(1, "leader", "running", timeline=3),
    _member(2, "sync_standby", "running", timeline=3, lag=0),
    _member(3, "replica", "stopped", lag="unknown")]}
# Patroni 3.0.4 and later: a replica receiving WAL says so (the brief's example)
STREAMING = {"members": [
    _member(1, "leader", "running", timeline=3),
    _member(2, "sync_standby", "streaming", timeline=3, lag=0),
    _member(3, "replica", "streaming", timeline=3, lag=0)]}


def shape(base: dict, pause: bool | None = None, drop=(), **changes) -> dict:
    """``base`` with members dropped and member changes: pgh2={"lag": 5} (None: key removed)."""
    out = copy.deepcopy(base)
    out["members"] = [m for m in out["members"] if m["name"] not in drop]
    for m in out["members"]:
        for key, value in changes.get(m["name"], {}).items():
            if value is None:
                m.pop(key, None)
            else:
                m[key] = value
    if pause is not None:
        out.pop("pause", None)
        if pause:
            out["pause"] = True
    return out


def graded(cluster: dict, me: str = "pgh2", expected=MEMBERS, pair=PAIR) -> dict:
    return ha.grade_cluster(ha.parse_cluster(cluster), me, expected, pair)


# ---------------------------------------------------------------------------------------------
# grading /cluster

def test_a_healthy_cluster_names_the_leader_the_sync_standby_and_the_timeline():
    r = graded(HEALTHY)
    assert r["status"] == "ok", r["detail"]
    assert r["detail"] == ("leader pgh1, 2 replicas running (pgh2 sync), timeline 3, "
                           "the largest lag 1.00 MB (pgh3)")
    assert (r["value"], r["unit"], r["warning"], r["critical"]) == (1.0, "MB", 50, 100)
    assert r["data"]["leader"] == "pgh1" and r["data"]["replicas_streaming"] == 2
    assert r["data"]["max_lag_bytes"] == 1048576 and r["data"]["paused"] is False
    assert [m["name"] for m in r["data"]["members"]] == list(MEMBERS)
    # the same, graded on the leader itself, and as Patroni 3.0.4+ says it
    assert graded(HEALTHY, me="pgh1")["status"] == "ok"
    r = graded(STREAMING)
    assert r["status"] == "ok" and r["value"] == 0
    assert r["detail"] == "leader pgh1, 2 replicas streaming (pgh2 sync), timeline 3"


def test_synchronous_mode_without_a_synchronous_standby_warns():
    assert graded(HEALTHY)["status"] == "ok"
    no_sync = shape(HEALTHY, pgh2={"role": "replica"})
    assert graded(no_sync)["status"] == "ok"  # asynchronous: nothing to say
    r = ha.grade_cluster(ha.parse_cluster(no_sync), "pgh2", MEMBERS, PAIR, synchronous=True)
    assert r["status"] == "warning"
    assert "synchronous mode without a synchronous standby" in r["detail"]
    r = ha.grade_cluster(ha.parse_cluster(HEALTHY), "pgh2", MEMBERS, PAIR, synchronous=True)
    assert r["status"] == "ok"


FIB_TRIE = """Main:
  +-- 0.0.0.0/0 3 0 5
     +-- 10.77.60.0/24 2 0 2
        +-- 10.77.60.0/26 2 0 2
           |-- 10.77.60.0
              /24 link UNICAST
           |-- 10.77.60.10
              /32 host LOCAL
        |-- 10.77.60.200
           /32 host LOCAL
        |-- 10.77.60.255
           /32 link BROADCAST
     +-- 127.0.0.0/8 2 0 2
           |-- 127.0.0.1
              /32 host LOCAL
Local:
  +-- 0.0.0.0/0 3 0 5
"""


def test_the_addresses_this_host_holds_come_from_the_fib_trie(tmp_path):
    assert ha.local_ipv4(FIB_TRIE) == {"10.77.60.10", "10.77.60.200", "127.0.0.1"}
    trie = tmp_path / "fib_trie"
    trie.write_text(FIB_TRIE)
    assert ha.holds("10.77.60.200", str(trie)) is True
    assert ha.holds("10.77.60.255", str(trie)) is False  # a broadcast, not held
    assert ha.holds("10.77.60.200", str(tmp_path / "absent")) is None
    assert isinstance(ha.holds("127.0.0.1"), bool)  # this machine's own


def test_the_floating_address_belongs_on_the_leader_only():
    cluster = ha.parse_cluster(HEALTHY)
    vip = "10.0.0.50"
    assert ha.grade_cluster(cluster, "pgh1", MEMBERS, PAIR, vip=vip, holds_vip=True)[
        "status"] == "ok"
    assert ha.grade_cluster(cluster, "pgh2", MEMBERS, PAIR, vip=vip, holds_vip=False)[
        "status"] == "ok"
    on_replica = ha.grade_cluster(cluster, "pgh2", MEMBERS, PAIR, vip=vip, holds_vip=True)
    assert on_replica["status"] == "critical"
    assert "this replica holds the floating address 10.0.0.50" in on_replica["detail"]
    missing = ha.grade_cluster(cluster, "pgh1", MEMBERS, PAIR, vip=vip, holds_vip=False)
    assert missing["status"] == "warning"
    assert "this leader does not hold the floating address 10.0.0.50" in missing["detail"]
    # cannot tell, or no floating address: nothing said
    assert ha.grade_cluster(cluster, "pgh1", MEMBERS, PAIR, vip=vip, holds_vip=None)[
        "status"] == "ok"
    assert ha.grade_cluster(cluster, "pgh2", MEMBERS, PAIR, holds_vip=True)["status"] == "ok"


def test_no_leader_is_critical():
    r = graded(NO_LEADER)
    assert r["status"] == "critical"
    assert r["detail"].startswith("no leader: nothing accepts writes")
    assert "member(s) not streaming: pgh1 stopped" in r["detail"]
    assert r["data"]["leader"] is None
    # graded on the stopped member itself: it is named too
    r = graded(NO_LEADER, me="pgh1")
    assert r["status"] == "critical" and "this member pgh1 is stopped" in r["detail"]


def test_a_paused_cluster_is_a_warning():
    r = graded(PAUSED)
    assert r["status"] == "warning"
    assert r["detail"].startswith("paused (maintenance mode)")
    assert "leader pgh1, 2 replicas running" in r["detail"] and r["data"]["paused"] is True
    assert graded(shape(PAUSED, pause=False))["status"] == "ok"


def test_this_member_missing_is_critical_another_missing_a_warning():
    r = graded(shape(HEALTHY, drop=["pgh2"]))
    assert r["status"] == "critical"
    assert "this member pgh2 is not in the cluster" in r["detail"]
    r = graded(shape(HEALTHY, drop=["pgh3"]))
    assert r["status"] == "warning"
    assert r["detail"] == ("member(s) pgh3 absent from the cluster; leader pgh1, 1 replica "
                           "running (pgh2 sync), timeline 3")
    assert r["data"]["absent"] == ["pgh3"]
    # a member the inventory does not know is said, not graded
    r = graded(HEALTHY, expected=("pgh1", "pgh2"))
    assert r["status"] == "ok" and "member(s) pgh3 not in the inventory" in r["detail"]


def test_this_member_not_running_is_critical_another_a_warning():
    r = graded(shape(HEALTHY, pgh2={"state": "stopped", "lag": "unknown", "timeline": None}))
    assert r["status"] == "critical" and "this member pgh2 is stopped" in r["detail"]
    r = graded(REPLICA_STOPPED)
    assert r["status"] == "warning"
    assert r["detail"].startswith("member(s) not streaming: pgh3 stopped; leader pgh1, "
                                  "1 replica running (pgh2 sync), timeline 3")
    for state in ("crashed", "start failed", "starting", "in archive recovery", ""):
        r = graded(shape(HEALTHY, pgh3={"state": state}))
        assert r["status"] == "warning", state
        assert f"pgh3 {state or 'in no state'}" in r["detail"]
    # the leader's key held while its PostgreSQL is down (e.g. stopped while paused)
    r = graded(shape(PAUSED, pgh1={"state": "stopped", "timeline": None}))
    assert r["status"] == "critical" and "the leader pgh1 is stopped" in r["detail"]


@pytest.mark.parametrize("lag_mb, status", [(0, "ok"), (49.9, "ok"), (50, "warning"),
                                            (99, "warning"), (100, "critical"),
                                            (4096, "critical")])
def test_replica_lag_against_replication_lag_mb(lag_mb, status):
    lag = int(lag_mb * util.MiB)
    r = graded(shape(HEALTHY, pgh3={"lag": lag}))
    assert r["status"] == status and r["value"] == pytest.approx(lag_mb, abs=0.01)
    assert r["data"]["max_lag_bytes"] == lag
    if status != "ok":
        assert r["detail"].startswith(f"pgh3 is {lag_mb:.2f} MB behind the leader")
    # the thresholds are the configuration's
    assert graded(shape(HEALTHY, pgh3={"lag": lag}), pair=(5000, 6000))["status"] == "ok"


def test_unknown_lag_is_said_and_timelines_that_differ_are_a_warning():
    r = graded(shape(HEALTHY, pgh3={"lag": "unknown"}))
    assert r["status"] == "ok" and r["detail"].endswith("lag unknown for pgh3")
    assert r["value"] == 0
    r = graded(shape(HEALTHY, pgh1={"timeline": 4}, pgh2={"timeline": 4}))
    assert r["status"] == "warning"
    assert r["detail"].startswith("timelines differ: pgh3 3, pgh1 4, pgh2 4")
    # a member that did not say its timeline is not a difference
    assert graded(shape(HEALTHY, pgh3={"timeline": None}))["status"] == "ok"


def test_the_worst_problem_decides_and_all_are_named():
    r = graded(shape(PAUSED, drop=["pgh3"], pgh2={"lag": 200 * util.MiB}))
    assert r["status"] == "critical"
    assert r["detail"].split("; ")[:3] == [
        "paused (maintenance mode): Patroni neither fails over nor restarts PostgreSQL",
        "member(s) pgh3 absent from the cluster", "pgh2 is 200.00 MB behind the leader"]


def test_a_standby_leader_and_a_scheduled_switchover():
    cluster = shape(HEALTHY, pgh1={"role": "standby_leader"})
    cluster["scheduled_switchover"] = {"at": "2026-01-01T03:00:00+00:00", "from": "pgh1"}
    r = graded(cluster)
    assert r["status"] == "ok"
    assert r["detail"].startswith("leader pgh1 (standby leader), 2 replicas running")
    assert r["detail"].endswith("switchover scheduled at 2026-01-01T03:00:00+00:00")


@pytest.mark.parametrize("answer", [[], {}, {"members": {}}, {"members": [{"role": "leader"}]},
                                    {"members": [{"name": ""}]}, "members"])
def test_what_is_not_a_cluster_answer_is_refused(answer):
    with pytest.raises(ValueError, match="not Patroni's /cluster answer"):
        ha.parse_cluster(answer)


def test_an_empty_cluster_is_critical():
    r = graded({"members": []})
    assert r["status"] == "critical"
    assert "no leader" in r["detail"] and "this member pgh2 is not in the cluster" in r["detail"]
    assert "member(s) pgh1, pgh3 absent" in r["detail"]


# ---------------------------------------------------------------------------------------------
# grading etcd

E1, E2, E3 = "https://10.0.0.1:2379", "https://10.0.0.2:2379", "https://10.0.0.3:2379"


def test_etcd_all_healthy_a_minority_down_no_quorum():
    r = ha.grade_etcd({E1: None, E2: None, E3: None})
    assert r["status"] == "ok" and r["value"] == 3
    assert r["detail"] == "all 3 etcd members healthy (10.0.0.1:2379, 10.0.0.2:2379, " \
        "10.0.0.3:2379)"
    r = ha.grade_etcd({E1: None, E2: "connection refused", E3: None})
    assert r["status"] == "warning" and r["value"] == 2
    assert r["detail"] == ("1 of 3 etcd members down, quorum kept (2 healthy, 2 needed): "
                           "10.0.0.2:2379: connection refused")
    assert r["data"]["failed"] == {"10.0.0.2:2379": "connection refused"}
    r = ha.grade_etcd({E1: "no answer within 5 s", E2: "connection refused", E3: None})
    assert r["status"] == "critical"
    assert r["detail"] == ("2 of 3 etcd members down, no quorum (1 healthy, 2 needed: Patroni "
                           "demotes the leader): 10.0.0.1:2379: no answer within 5 s; "
                           "10.0.0.2:2379: connection refused")
    # half of an even number is no majority
    four = {E1: None, E2: None, E3: "connection refused", "https://10.0.0.4:2379": "x"}
    assert ha.grade_etcd(four)["status"] == "critical"
    assert ha.grade_etcd({E1: None})["status"] == "ok"
    assert ha.grade_etcd({E1: "connection refused"})["status"] == "critical"


def test_etcds_health_answers():
    assert ha.etcd_problem(200, {"health": "true"}) is None
    assert ha.etcd_problem(200, {"health": "true", "reason": ""}) is None
    assert ha.etcd_problem(503, {"health": "false"}) == "unhealthy (HTTP 503)"
    assert ha.etcd_problem(503, {"health": "false", "reason": "RAFT NO LEADER"}) == \
        "unhealthy (HTTP 503: RAFT NO LEADER)"
    assert ha.etcd_problem(404, {"message": "x"}) == "HTTP 404: not etcd's /health answer"
    assert ha.etcd_problem(200, ["health"]) == "HTTP 200: not etcd's /health answer"


# ---------------------------------------------------------------------------------------------
# the "ha" key

def _good_raw(**ha_changes) -> dict:
    ha_key = {"member": "pgh1", "members": list(MEMBERS),
              "rest_url": "https://10.0.0.1:8008",
              "etcd_endpoints": [E1, E2, E3],
              "cafile": "/etc/patroni/tls/patroni.ca.crt",
              "certfile": "/etc/patroni/tls/patroni.crt",
              "keyfile": "/etc/patroni/tls/patroni.key"}
    for key, value in ha_changes.items():
        if value is KeyError:
            del ha_key[key]
        else:
            ha_key[key] = value
    return {"host": "pgh1", "version": 15, "cluster": "main", "port": 5432,
            "data_directory": "/var/lib/postgresql/15/main",
            "wal_archive_dir": "/var/lib/postgresql/wal-archive",
            "state_dir": "/var/lib/pginfra/health", "query_timeout": 5, "run_timeout": 60,
            "pgbouncer": None, "backup": None, "textfile": None,
            "thresholds": {n: list(t.default) for n, t in THRESHOLDS.items()}, "ha": ha_key}


def test_the_ha_key_is_read_into_ha_settings():
    cfg = validate_config(_good_raw(rest_url="https://10.0.0.1:8008/"))
    assert cfg.ha == HaSettings(
        member="pgh1", members=MEMBERS, rest_url="https://10.0.0.1:8008",
        etcd_endpoints=(E1, E2, E3), cafile="/etc/patroni/tls/patroni.ca.crt",
        certfile="/etc/patroni/tls/patroni.crt", keyfile="/etc/patroni/tls/patroni.key")
    six = validate_config(_good_raw(rest_url="https://[fd00::1]:8008",
                                    etcd_endpoints=["https://[fd00::1]:2379"]))
    assert six.ha.rest_url == "https://[fd00::1]:8008"
    assert validate_config({**_good_raw(), "ha": None}).ha is None
    absent = _good_raw()
    del absent["ha"]
    assert validate_config(absent).ha is None
    # without it, the run leaves the HA checks out; asked for, they say why not
    args = Namespace(check=None)
    assert "patroni" not in cli.selected(validate_config(absent), args)
    off = ("pgbouncer", "backup_base", "backup_dump", "patroni", "etcd")  # all null here
    assert cli.selected(validate_config(absent), args) == [
        c for c in checks.CHECKS if c not in off]
    assert {"patroni", "etcd"} <= set(cli.selected(cfg, args))
    assert checks.not_configured(validate_config(absent), "etcd") == "ha"
    assert checks.not_configured(cfg, "etcd") is None
    assert {"patroni", "etcd"} <= checks.WITHOUT_SERVER
    assert "patroni" in THRESHOLDS["replication_lag_mb"].checks


BAD_HA = [
    ("https://10.0.0.1:8008", "key 'ha'"),
    ([], "key 'ha'"),
    ({**_good_raw()["ha"], "user": "patroni"}, "ha.user"),
    (_good_raw(member=KeyError)["ha"], "key 'ha.member' is missing"),
    (_good_raw(etcd_endpoints=KeyError)["ha"], "key 'ha.etcd_endpoints' is missing"),
    (_good_raw(member="pg h1")["ha"], "key 'ha.member'"),
    (_good_raw(member="pgh1\n")["ha"], "key 'ha.member'"),
    (_good_raw(member=1)["ha"], "key 'ha.member'"),
    (_good_raw(members=[])["ha"], "key 'ha.members'"),
    (_good_raw(members="pgh1")["ha"], "key 'ha.members'"),
    (_good_raw(members=["pgh1", "pgh1"])["ha"], "key 'ha.members'"),
    (_good_raw(members=["pgh2", "pgh3"])["ha"], "key 'ha.members': must include ha.member"),
    (_good_raw(rest_url="http://10.0.0.1:8008")["ha"], "key 'ha.rest_url'"),
    (_good_raw(rest_url="https://10.0.0.1:8008/patroni")["ha"], "key 'ha.rest_url'"),
    (_good_raw(rest_url="https://10.0.0.1")["ha"], "key 'ha.rest_url'"),
    (_good_raw(rest_url="https://10.0.0.1:80000")["ha"], "key 'ha.rest_url'"),
    (_good_raw(rest_url="https://u:p@10.0.0.1:8008")["ha"], "key 'ha.rest_url'"),
    (_good_raw(rest_url="https://10.0.0.1:8008?x=1")["ha"], "key 'ha.rest_url'"),
    (_good_raw(rest_url="https://:8008")["ha"], "key 'ha.rest_url'"),
    (_good_raw(rest_url="")["ha"], "key 'ha.rest_url'"),
    (_good_raw(rest_url=None)["ha"], "key 'ha.rest_url'"),
    (_good_raw(etcd_endpoints=[])["ha"], "key 'ha.etcd_endpoints'"),
    (_good_raw(etcd_endpoints=E1)["ha"], "key 'ha.etcd_endpoints'"),
    (_good_raw(etcd_endpoints=["10.0.0.1:2379"])["ha"], "key 'ha.etcd_endpoints[0]'"),
    (_good_raw(etcd_endpoints=[E1, "https://10.0.0.2:2379/v3"])["ha"],
     "key 'ha.etcd_endpoints[1]'"),
    (_good_raw(etcd_endpoints=[E1, E1 + "/"])["ha"], "key 'ha.etcd_endpoints': must not name"),
    (_good_raw(cafile="patroni.ca.crt")["ha"], "key 'ha.cafile'"),
    (_good_raw(certfile=None)["ha"], "key 'ha.certfile'"),
    (_good_raw(keyfile="/")["ha"], "key 'ha.keyfile'"),
    ({**_good_raw()["ha"], "vip": "10.0.0.50/24"}, "key 'ha.vip'"),
    ({**_good_raw()["ha"], "vip": 5}, "key 'ha.vip'"),
]


@pytest.mark.parametrize("ha_value, named", BAD_HA, ids=[n for _v, n in BAD_HA])
def test_a_bad_ha_key_is_refused_naming_it(ha_value, named):
    raw = {**_good_raw(), "ha": ha_value}
    with pytest.raises(runner.ConfigError) as caught:
        validate_config(raw)
    assert named in str(caught.value) and "\n" not in str(caught.value)


# ---------------------------------------------------------------------------------------------
# certificates and HTTPS servers on 127.0.0.1

def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _cert(subject: str, key, issuer_cert, issuer_key, *, ca=False, ip=None, usage=()):
    now = datetime.datetime.now(datetime.UTC)
    issuer = issuer_cert.subject if issuer_cert is not None else _name(subject)
    builder = (x509.CertificateBuilder().subject_name(_name(subject)).issuer_name(issuer)
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now - datetime.timedelta(hours=1))
               .not_valid_after(now + datetime.timedelta(days=2))
               .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
               .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                              critical=False)
               .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                   issuer_key.public_key()), critical=False))
    if ca:
        builder = builder.add_extension(x509.KeyUsage(
            digital_signature=True, content_commitment=False, key_encipherment=False,
            data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=True,
            encipher_only=False, decipher_only=False), critical=True)
    else:
        builder = builder.add_extension(x509.ExtendedKeyUsage(list(usage)), critical=False)
    if ip is not None:  # as pginfra's CA: the address as IP and as DNS name
        builder = builder.add_extension(x509.SubjectAlternativeName(
            [x509.IPAddress(ipaddress.ip_address(ip)), x509.DNSName(ip)]), critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


class Pki:
    """A CA, a server certificate for 127.0.0.1, a client certificate; and a rogue CA's server
    certificate for 127.0.0.1 (a server the check must not trust). Files in ``directory``."""

    def __init__(self, directory: Path):
        self.dir = directory
        server_usage = (ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH)
        ca_key = ec.generate_private_key(ec.SECP256R1())
        ca = _cert("pginfra test CA", ca_key, None, ca_key, ca=True)
        self.cafile = self._write("ca.crt", ca)
        for name, cn, usage in (("server", "127.0.0.1", server_usage),
                                ("client", "pginfra-health-client",
                                 (ExtendedKeyUsageOID.CLIENT_AUTH,))):
            key = ec.generate_private_key(ec.SECP256R1())
            cert = _cert(cn, key, ca, ca_key, ip="127.0.0.1" if name == "server" else None,
                         usage=usage)
            setattr(self, f"{name}_crt", self._write(f"{name}.crt", cert))
            setattr(self, f"{name}_key", self._write(f"{name}.key", key))
        rogue_key = ec.generate_private_key(ec.SECP256R1())
        rogue = _cert("rogue CA", rogue_key, None, rogue_key, ca=True)
        key = ec.generate_private_key(ec.SECP256R1())
        self.rogue_crt = self._write("rogue.crt", _cert("127.0.0.1", key, rogue, rogue_key,
                                                         ip="127.0.0.1", usage=server_usage))
        self.rogue_key = self._write("rogue.key", key)

    def _write(self, name: str, thing) -> Path:
        path = self.dir / name
        if isinstance(thing, x509.Certificate):
            path.write_bytes(thing.public_bytes(serialization.Encoding.PEM))
            path.chmod(0o644)
        else:
            path.write_bytes(thing.private_bytes(serialization.Encoding.PEM,
                                                 serialization.PrivateFormat.PKCS8,
                                                 serialization.NoEncryption()))
            path.chmod(0o600)
        return path

    def server_context(self, require_client: bool, rogue: bool = False) -> ssl.SSLContext:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        if rogue:
            context.load_cert_chain(self.rogue_crt, self.rogue_key)
        else:
            context.load_cert_chain(self.server_crt, self.server_key)
        context.load_verify_locations(self.cafile)
        context.verify_mode = ssl.CERT_REQUIRED if require_client else ssl.CERT_OPTIONAL
        return context

    def ha(self, rest_url: str, etcd: list[str], **changes) -> dict:
        return {"member": "pgh2", "members": list(MEMBERS), "rest_url": rest_url,
                "etcd_endpoints": etcd, "cafile": str(self.cafile),
                "certfile": str(self.client_crt), "keyfile": str(self.client_key), **changes}


class FakeServer:
    """An HTTPS server on 127.0.0.1 answering ``routes`` (path -> (status, JSON or bytes));
    ``clients``: the common names of the client certificates it was shown."""

    def __init__(self, context: ssl.SSLContext, routes: dict):
        self.routes, self.clients = routes, []
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 (http.server's name)
                peer = self.request.getpeercert()
                if peer:
                    fake.clients.append(dict(x[0] for x in peer["subject"])["commonName"])
                status, body = fake.routes.get(self.path, (404, {"message": "not found"}))
                data = body if isinstance(body, bytes) else json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.server.socket = context.wrap_socket(self.server.socket, server_side=True)
        self.url = f"https://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@contextlib.contextmanager
def silent_port():
    """A port that accepts TCP connections and never answers (a host that hangs)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(16)
        yield f"https://127.0.0.1:{s.getsockname()[1]}"


def closed_port() -> str:
    """A port nothing listens on (an etcd or Patroni that is down: connection refused)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"https://127.0.0.1:{s.getsockname()[1]}"


HEALTH_OK = (200, {"health": "true"})


@pytest.fixture(scope="module")
def pki():
    directory = Path(tempfile.mkdtemp(prefix="pginfra-health-ha-"))
    directory.chmod(0o755)  # the program runs as postgres
    try:
        yield Pki(directory)
    finally:
        shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture(scope="module")
def servers(pki):
    """A Patroni REST API (serving HEALTHY) and three etcd members (requiring a client
    certificate), all healthy; a test may change their routes (and puts them back)."""
    patroni = FakeServer(pki.server_context(require_client=False),
                         {"/cluster": (200, HEALTHY)})
    etcd = [FakeServer(pki.server_context(require_client=True), {"/health": HEALTH_OK})
            for _ in range(3)]
    try:
        yield patroni, etcd
    finally:
        for server in (patroni, *etcd):
            server.close()


@pytest.fixture
def fakes(servers):
    patroni, etcd = servers
    yield patroni, etcd
    patroni.routes.clear()
    patroni.routes["/cluster"] = (200, HEALTHY)
    for server in etcd:
        server.routes.clear()
        server.routes["/health"] = HEALTH_OK


def context_for(pki, rest_url: str, etcd: list[str], query_timeout: float = 3,
                deadline: float | None = None, **changes) -> Context:
    raw = {**_good_raw(), "host": "pgh2", "query_timeout": query_timeout,
           "ha": pki.ha(rest_url, etcd, **changes)}
    return Context(validate_config(raw, "/test/health.json"), deadline)


# ---------------------------------------------------------------------------------------------
# the checks against real HTTPS servers

def test_patroni_reads_the_rest_api_without_postgresql(pki, fakes):
    patroni, etcd = fakes
    ctx = context_for(pki, patroni.url, [e.url for e in etcd])
    r = checks.run_check(ctx, "patroni")
    assert r["status"] == "ok", r["detail"]
    assert r["detail"] == ("leader pgh1, 2 replicas running (pgh2 sync), timeline 3, "
                           "the largest lag 1.00 MB (pgh3)")
    assert not ctx.connected  # no PostgreSQL connection was even tried
    assert patroni.clients[-1] == "pginfra-health-client"
    patroni.routes["/cluster"] = (200, PAUSED)
    r = checks.run_check(ctx, "patroni")
    assert r["status"] == "warning" and r["detail"].startswith("paused (maintenance mode)")
    patroni.routes["/cluster"] = (200, NO_LEADER)
    assert checks.run_check(ctx, "patroni")["status"] == "critical"


def test_patroni_not_answering_is_unknown_with_the_reason(pki, fakes):
    patroni, etcd = fakes
    endpoints = [e.url for e in etcd]
    down = closed_port()
    r = ha.check_patroni(context_for(pki, down, endpoints))
    assert r["status"] == "unknown" and r["value"] is None
    assert r["detail"] == (f"Patroni's REST API did not answer GET {down}/cluster: "
                           "connection refused")
    patroni.routes["/cluster"] = (503, {"state": "stopped"})
    r = ha.check_patroni(context_for(pki, patroni.url, endpoints))
    assert r["status"] == "unknown" and r["detail"].endswith("/cluster: HTTP 503")
    patroni.routes["/cluster"] = (200, b"<html>proxy</html>")
    r = ha.check_patroni(context_for(pki, patroni.url, endpoints))
    assert r["status"] == "unknown" and "HTTP 200: not JSON" in r["detail"]
    patroni.routes["/cluster"] = (200, {"state": "running"})
    r = ha.check_patroni(context_for(pki, patroni.url, endpoints))
    assert r["status"] == "unknown" and "not Patroni's /cluster answer" in r["detail"]


def test_a_server_whose_certificate_the_ca_did_not_sign_is_not_trusted(pki):
    rogue = FakeServer(pki.server_context(require_client=False, rogue=True),
                       {"/cluster": (200, HEALTHY), "/health": HEALTH_OK})
    try:
        ctx = context_for(pki, rogue.url, [rogue.url])
        r = ha.check_patroni(ctx)
        assert r["status"] == "unknown"
        assert "TLS: the server's certificate: unable to get local issuer certificate" in \
            r["detail"]
        r = ha.check_etcd(ctx)
        assert r["status"] == "critical" and "TLS: the server's certificate" in r["detail"]
        assert rogue.clients == []
    finally:
        rogue.close()


def test_the_address_must_be_the_certificates(pki, fakes):
    patroni, _etcd = fakes
    # the certificate names 127.0.0.1, not localhost
    url = patroni.url.replace("127.0.0.1", "localhost")
    r = ha.check_patroni(context_for(pki, url, [patroni.url]))
    assert r["status"] == "unknown" and "TLS: the server's certificate: Hostname mismatch" in \
        r["detail"], r["detail"]


def test_a_request_that_hangs_is_bounded_by_query_timeout_and_the_deadline(pki, fakes):
    _patroni, etcd = fakes
    with silent_port() as silent:
        started = time.monotonic()
        r = ha.check_patroni(context_for(pki, silent, [e.url for e in etcd], query_timeout=1))
        assert time.monotonic() - started < 3
        assert r["status"] == "unknown" and r["detail"].endswith(": no answer within 1 s")
        # what is left of the run wins over query_timeout
        started = time.monotonic()
        r = ha.check_patroni(context_for(pki, silent, [e.url for e in etcd], query_timeout=30,
                                         deadline=time.monotonic() + 2))
        assert time.monotonic() - started < 4
        assert r["status"] == "unknown" and "no answer within" in r["detail"]


def test_missing_tls_files_are_unknown_naming_the_file(pki, fakes):
    patroni, etcd = fakes
    ctx = context_for(pki, patroni.url, [e.url for e in etcd], cafile="/nonexistent/ca.crt")
    for check in (ha.check_patroni, ha.check_etcd):
        r = check(ctx)
        assert r["status"] == "unknown"
        assert r["detail"].startswith("cannot load the CA /nonexistent/ca.crt: ")
    ctx = context_for(pki, patroni.url, [e.url for e in etcd], keyfile=str(pki.rogue_key))
    r = ha.check_patroni(ctx)
    assert r["status"] == "unknown"
    assert r["detail"].startswith(f"cannot load the client certificate {pki.client_crt} and "
                                  f"its key {pki.rogue_key}: TLS: ")


def test_etcd_requires_the_client_certificate_and_gets_it(pki, fakes):
    _patroni, etcd = fakes
    bare = ssl.create_default_context(cafile=pki.cafile)  # no client certificate
    problem = ha.probe_etcd(etcd[0].url, bare, 3)
    assert problem is not None and problem != "connection refused", problem
    assert etcd[0].clients == []
    context = ha.tls_context(HaSettings(
        member="pgh2", members=MEMBERS, rest_url="https://127.0.0.1:8008", etcd_endpoints=(),
        cafile=str(pki.cafile), certfile=str(pki.client_crt), keyfile=str(pki.client_key)))
    assert ha.probe_etcd(etcd[0].url, context, 3) is None
    assert etcd[0].clients == ["pginfra-health-client"]


def test_etcd_healthy_minority_down_majority_down(pki, fakes):
    patroni, etcd = fakes
    urls = [e.url for e in etcd]
    r = checks.run_check(ctx := context_for(pki, patroni.url, urls), "etcd")
    assert r["status"] == "ok" and r["value"] == 3, r["detail"]
    assert r["detail"] == "all 3 etcd members healthy (" + ", ".join(
        u.removeprefix("https://") for u in urls) + ")"
    assert not ctx.connected
    assert all(e.clients and set(e.clients) == {"pginfra-health-client"} for e in etcd)
    down = closed_port()
    r = ha.check_etcd(context_for(pki, patroni.url, [urls[0], down, urls[2]]))
    assert r["status"] == "warning" and r["value"] == 2
    assert r["detail"] == ("1 of 3 etcd members down, quorum kept (2 healthy, 2 needed): "
                           f"{down.removeprefix('https://')}: connection refused")
    etcd[2].routes["/health"] = (503, {"health": "false", "reason": "RAFT NO LEADER"})
    r = ha.check_etcd(context_for(pki, patroni.url, [urls[0], down, urls[2]]))
    assert r["status"] == "critical" and r["value"] == 1
    assert "no quorum (1 healthy, 2 needed: Patroni demotes the leader)" in r["detail"]
    assert r["detail"].endswith(f"{urls[2].removeprefix('https://')}: unhealthy (HTTP 503: "
                                "RAFT NO LEADER)")


def test_etcd_members_that_hang_are_asked_at_once(pki, fakes):
    patroni, etcd = fakes
    with silent_port() as one, silent_port() as two:
        started = time.monotonic()
        r = ha.check_etcd(context_for(pki, patroni.url, [one, two, etcd[0].url],
                                      query_timeout=1.5))
        elapsed = time.monotonic() - started
    assert elapsed < 2.9, elapsed  # in parallel: about one timeout, not two
    assert r["status"] == "critical"
    assert r["data"]["failed"] == {one.removeprefix("https://"): "no answer within 1.5 s",
                                   two.removeprefix("https://"): "no answer within 1.5 s"}


# ---------------------------------------------------------------------------------------------
# the program

def _program_missing() -> str | None:
    if not os.access(HOST_PYTHON, os.X_OK):
        return f"{HOST_PYTHON} is absent"
    if os.geteuid() == 0:
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            return "root without a postgres user: the program re-executes itself as postgres"
    return None


needs_program = pytest.mark.skipif(_program_missing() is not None,
                                   reason=_program_missing() or "")


def run_program(config: Path, *args) -> subprocess.CompletedProcess:
    cmd = [HOST_PYTHON, str(PROGRAM), "--config", str(config), *args]
    if os.geteuid() == 0:
        cmd = ["runuser", "-u", "postgres", "--", *cmd]
    return subprocess.run(cmd, capture_output=True, text=True, env=ENV, cwd="/", timeout=60)


def write_program_config(pki, name: str, ha_key) -> Path:
    raw = {**_good_raw(), "host": "pgh2", "query_timeout": 3, "run_timeout": 20,
           "state_dir": str(pki.dir / "state"), "ha": ha_key}
    path = pki.dir / f"health-{name}.json"
    path.write_text(json.dumps(raw))
    path.chmod(0o644)
    return path


@pytest.fixture(scope="module")
def postgres_owns_the_key(pki):
    """As on a host: the client key is postgres's, mode 0600."""
    if os.geteuid() == 0:
        for path in (pki.client_key, pki.client_crt, pki.cafile):
            shutil.chown(path, "postgres", "postgres")
    yield


@needs_program
def test_the_program_runs_both_checks_end_to_end(pki, fakes, postgres_owns_the_key):
    patroni, etcd = fakes
    config = write_program_config(pki, "ha", pki.ha(patroni.url, [e.url for e in etcd]))
    proc = run_program(config, "--json", "--check", "patroni", "--check", "etcd")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    report = json.loads(proc.stdout)
    assert [c["check"] for c in report["checks"]] == ["patroni", "etcd"]
    assert {c["check"]: c["status"] for c in report["checks"]} == {"patroni": "ok",
                                                                   "etcd": "ok"}
    assert report["checks"][0]["detail"].startswith("leader pgh1, 2 replicas running")
    assert all("pginfra-health-client" in e.clients for e in etcd)
    proc = run_program(config, "--check", "patroni", "--check", "etcd")
    assert proc.returncode == 0
    assert proc.stdout == "PGINFRA OK - 2 checks ok | patroni=1MB;50;100 etcd=3;;\n"
    # a paused cluster and an etcd member down: one Nagios line naming both
    patroni.routes["/cluster"] = (200, PAUSED)
    down = closed_port()
    config = write_program_config(pki, "ha-down", pki.ha(patroni.url, [etcd[0].url, down,
                                                                        etcd[2].url]))
    proc = run_program(config, "--check", "patroni", "--check", "etcd")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert proc.stdout.startswith(
        "PGINFRA WARNING - patroni: paused (maintenance mode): Patroni neither fails over "
        "nor restarts PostgreSQL; leader pgh1, 2 replicas running (pgh2 sync), timeline 3; "
        f"etcd: 1 of 3 etcd members down, quorum kept (2 healthy, 2 needed): "
        f"{down.removeprefix('https://')}: connection refused | ")


@needs_program
def test_the_program_without_ha_says_the_checks_are_not_configured(pki):
    config = write_program_config(pki, "no-ha", None)
    proc = run_program(config, "--json", "--check", "patroni", "--check", "etcd")
    assert proc.returncode == 3, proc.stdout + proc.stderr
    checks_ = {c["check"]: c for c in json.loads(proc.stdout)["checks"]}
    for name in ("patroni", "etcd"):
        assert checks_[name]["status"] == "unknown"
        assert checks_[name]["detail"] == ("not configured (\"ha\" is null or absent in "
                                           f"{config})")
