"""The rehearsal command itself: idempotent up, status, ssh, refusals, and a clean down."""

import json
import subprocess

from conftest import BIN, E2E

from pginfra.rehearsal import Lab


def rehearsal(*args, state_dir, subnet=None, bridge=None, prefix=None, check=False):
    cmd = [str(BIN / "pginfra"), "rehearsal", f"--state-dir={state_dir}"]
    for flag, value in (("--subnet", subnet), ("--bridge", bridge), ("--prefix", prefix)):
        if value:
            cmd.append(f"{flag}={value}")
    proc = subprocess.run([*cmd, *args], capture_output=True, text=True, timeout=600)
    if check:
        assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc


def machine_snapshot() -> dict:
    links = sorted(link["ifname"] for link in json.loads(
        subprocess.check_output(["ip", "-j", "link"], text=True)))
    rules = subprocess.check_output(["iptables-save"], text=True)
    rules = sorted(line for line in rules.splitlines() if line and line[0] in "-:*"
                   and not line.startswith(":") and "COMMIT" not in line)
    with open("/proc/sys/net/ipv4/ip_forward") as f:
        forward = f.read().strip()
    return {"links": links, "rules": rules, "ip_forward": forward}


def test_up_is_idempotent_and_keeps_the_running_host(lab):
    pid = lab.hosts["pgt1"]["pid"]
    proc = rehearsal("up", state_dir=E2E["state_dir"], check=True)
    assert "pgt1 is already running" in proc.stdout
    assert Lab.default(**E2E).hosts["pgt1"]["pid"] == pid


def test_status_and_ssh(lab):
    rows = json.loads(rehearsal("status", "--json", state_dir=E2E["state_dir"],
                                check=True).stdout)
    assert rows == [{"name": "pgt1", "address": "10.77.1.10", "running": True, "ssh": True}]
    proc = rehearsal("ssh", "pgt1", "cat /proc/1/comm; hostname; systemctl is-system-running",
                     state_dir=E2E["state_dir"], check=True)
    assert proc.stdout.split() == ["systemd", "pgt1", "running"]


def test_host_has_its_own_network_namespace_and_reaches_the_mirror(lab):
    ours = subprocess.check_output(["readlink", "/proc/self/ns/net"], text=True).strip()
    theirs = lab.ssh("pgt1", ["readlink", "/proc/1/ns/net"]).stdout.strip()
    assert ours != theirs
    route = lab.ssh("pgt1", ["ip", "route", "show", "default"]).stdout
    assert "via 10.77.1.1 dev host0" in route


def assert_up_refused_without_change(tmp_path, subnet, message):
    """`up` of a new lab exits 2 with ``message`` and the machine is exactly as before."""
    before = machine_snapshot()
    proc = rehearsal("up", state_dir=tmp_path / "lab", subnet=subnet, bridge="pginfra-x",
                     prefix="pgx")
    assert proc.returncode == 2
    assert message in proc.stderr
    assert machine_snapshot() == before
    assert not (tmp_path / "lab").exists()


def test_name_taken_is_refused_before_anything_changes(tmp_path):
    subprocess.run(["ip", "link", "add", "vb-pgx1", "type", "bridge"], check=True)
    try:
        assert_up_refused_without_change(
            tmp_path, "10.77.7.0/24", "host name pgx1 is taken: interface vb-pgx1 exists")
    finally:
        subprocess.run(["ip", "link", "del", "vb-pgx1"], check=True)


def test_subnet_taken_is_refused_before_anything_changes(tmp_path):
    subprocess.run(["ip", "link", "add", "pgx-dummy", "type", "bridge"], check=True)
    subprocess.run(["ip", "addr", "add", "10.77.8.1/24", "dev", "pgx-dummy"], check=True)
    subprocess.run(["ip", "link", "set", "pgx-dummy", "up"], check=True)
    try:
        assert_up_refused_without_change(
            tmp_path, "10.77.8.0/24", "subnet 10.77.8.0/24 is taken: 10.77.8.0/24 dev pgx-dummy")
    finally:
        subprocess.run(["ip", "link", "del", "pgx-dummy"], check=True)


def test_a_second_lab_comes_up_and_down_leaves_the_machine_as_found(lab, tmp_path):
    state_dir = tmp_path / "lab"
    before = machine_snapshot()
    opts = {"state_dir": state_dir, "subnet": "10.77.9.0/24", "bridge": "pginfra-y",
            "prefix": "pgy"}
    try:
        rehearsal("up", "--hosts", "2", **opts, check=True)
        during = machine_snapshot()
        assert {"pginfra-y", "vb-pgy1", "vb-pgy2"} <= set(during["links"])
        assert any("pginfra-rehearsal:pginfra-y" in rule for rule in during["rules"])
        # The two hosts reach each other over the lab network.
        proc = rehearsal("ssh", "pgy1", "python3 -c \"import socket; "
                         "socket.create_connection(('10.77.9.11', 22), 5); print('ok')\"",
                         **opts, check=True)
        assert proc.stdout.strip() == "ok"
    finally:
        rehearsal("down", **opts, check=True)
    assert machine_snapshot() == before
    assert not state_dir.exists()
    # The root filesystem cache stays for the next lab.
    assert Lab(state_dir=state_dir).rootfs_dir().exists()


def test_non_root_is_refused_before_anything_changes(tmp_path):
    state_dir = tmp_path / "lab"
    before = machine_snapshot()
    proc = subprocess.run(
        ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", str(BIN / "pginfra"),
         "rehearsal", f"--state-dir={state_dir}", "up"],
        capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert "rehearsal hosts need root" in proc.stderr
    assert machine_snapshot() == before
    assert not state_dir.exists()
