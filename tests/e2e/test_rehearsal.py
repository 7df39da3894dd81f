"""The rehearsal command itself: idempotent up, status, ssh, refusals, and a clean down."""

import json
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from conftest import BIN, E2E, GATEWAY, HOST

from pginfra import ROOT
from pginfra_lab.rehearsal import BOOT_ID, Lab, free_subnet, plan_addresses


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
    assert rows == [{"name": "pgt1", "address": HOST, "running": True, "ssh": True}]
    proc = rehearsal("ssh", "pgt1", "cat /proc/1/comm; hostname; systemctl is-system-running",
                     state_dir=E2E["state_dir"], check=True)
    assert proc.stdout.split() == ["systemd", "pgt1", "running"]


def test_host_has_its_own_network_namespace_and_reaches_the_mirror(lab):
    ours = subprocess.check_output(["readlink", "/proc/self/ns/net"], text=True).strip()
    theirs = lab.ssh("pgt1", ["readlink", "/proc/1/ns/net"]).stdout.strip()
    assert ours != theirs
    route = lab.ssh("pgt1", ["ip", "route", "show", "default"]).stdout
    assert f"via {GATEWAY} dev host0" in route


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
            tmp_path, free_subnet(), "host name pgx1 is taken: interface vb-pgx1 exists")
    finally:
        subprocess.run(["ip", "link", "del", "vb-pgx1"], check=True)


def test_subnet_taken_is_refused_before_anything_changes(tmp_path):
    subnet = free_subnet()
    subprocess.run(["ip", "link", "add", "pgx-dummy", "type", "bridge"], check=True)
    subprocess.run(["ip", "addr", "add", subnet.replace(".0/", ".1/"), "dev", "pgx-dummy"],
                   check=True)
    subprocess.run(["ip", "link", "set", "pgx-dummy", "up"], check=True)
    try:
        assert_up_refused_without_change(
            tmp_path, subnet, f"subnet {subnet} is taken: {subnet} dev pgx-dummy")
    finally:
        subprocess.run(["ip", "link", "del", "pgx-dummy"], check=True)


def test_a_second_lab_comes_up_and_down_leaves_the_machine_as_found(lab, tmp_path):
    state_dir = tmp_path / "lab"
    before = machine_snapshot()
    # Whatever subnet is free on this machine: the user-facing command refuses a taken one.
    subnet = free_subnet()
    second = plan_addresses(subnet, ["pgy1", "pgy2"])[1]["pgy2"]
    opts = {"state_dir": state_dir, "subnet": subnet, "bridge": "pginfra-y", "prefix": "pgy"}
    try:
        rehearsal("up", "--hosts", "2", **opts, check=True)
        during = machine_snapshot()
        assert {"pginfra-y", "vb-pgy1", "vb-pgy2"} <= set(during["links"])
        assert any("pginfra-rehearsal:pginfra-y" in rule for rule in during["rules"])
        # The two hosts reach each other over the lab network.
        proc = rehearsal("ssh", "pgy1", "python3 -c \"import socket; "
                         f"socket.create_connection(('{second}', 22), 5); print('ok')\"",
                         **opts, check=True)
        assert proc.stdout.strip() == "ok"
    finally:
        rehearsal("down", **opts, check=True)
    assert machine_snapshot() == before
    assert not state_dir.exists()
    # The root filesystem cache stays for the next lab.
    assert Lab(state_dir=state_dir).rootfs_dir().exists()


def test_non_root_is_refused_before_anything_changes(tmp_path):
    """As nobody, who may not read the checkout (a clone in root's 0700 home): the command runs
    from a copy of the package that nobody can read, with Debian's python3 (what it imports
    for this is the standard library)."""
    state_dir = tmp_path / "lab"
    copy = Path(tempfile.mkdtemp(prefix="pginfra-nobody-"))
    try:
        copy.chmod(0o755)
        for package in ("pginfra", "pginfra_lab"):  # the runtime package and the lab's
            shutil.copytree(ROOT / package, copy / package)
        before = machine_snapshot()
        proc = subprocess.run(
            ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "/usr/bin/python3",
             "-m", "pginfra.cli", "rehearsal", f"--state-dir={state_dir}", "up"],
            capture_output=True, text=True, timeout=60, cwd="/",
            env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "PYTHONPATH": str(copy)})
    finally:
        shutil.rmtree(copy)
    assert proc.returncode == 2, proc.stderr
    assert "rehearsal hosts need root" in proc.stderr
    assert machine_snapshot() == before
    assert not state_dir.exists()


def test_a_host_reboots_soft_and_hard_like_a_machine(tmp_path):
    """In a lab of its own: `reboot` (systemctl reboot inside) and `reboot --hard` (a power cycle
    with no shutdown) each boot the host again, with the same address and root filesystem, again
    and again; `down` afterwards leaves the machine as found. The host carries Debian's updates
    and security sources, as an installed Debian 12 does, and reaches them."""
    state_dir = tmp_path / "lab"
    before = machine_snapshot()
    subnet = free_subnet(exclude=(E2E["subnet"],))  # never the one the shared lab will take
    address = plan_addresses(subnet, ["pgrb1"])[1]["pgrb1"]
    opts = {"state_dir": state_dir, "subnet": subnet, "bridge": "pginfra-rbt", "prefix": "pgrb"}

    def check_up(old_boot: str, marker: str) -> str:
        """The host is up on a new boot, at its address, on the same root filesystem."""
        lab = Lab.default(**opts)
        boot = lab.boot_id("pgrb1")
        assert boot and boot != old_boot
        rows = json.loads(rehearsal("status", "--json", **opts, check=True).stdout)
        assert rows == [{"name": "pgrb1", "address": address, "running": True, "ssh": True}]
        proc = lab.ssh("pgrb1", ["systemctl is-system-running; ip -4 -o addr show dev host0;"
                                f" cat /root/{marker}"])
        assert proc.stdout.splitlines()[0] == "running"
        assert f"inet {address}/" in proc.stdout
        assert proc.stdout.splitlines()[-1] == marker
        return boot

    try:
        rehearsal("up", **opts, check=True)
        lab = Lab.default(**opts)
        sources = lab.ssh("pgrb1", ["cat", "/etc/apt/sources.list"]).stdout
        assert "deb http://deb.debian.org/debian bookworm-updates main" in sources
        assert "deb http://deb.debian.org/debian-security bookworm-security main" in sources
        update = lab.ssh("pgrb1", ["apt-get", "update"], timeout=300).stdout
        assert "bookworm-updates InRelease" in update
        assert "bookworm-security InRelease" in update
        boot = lab.boot_id("pgrb1")
        supervisor = lab.hosts["pgrb1"]["pid"]

        # With the CLI: soft, then hard.
        lab.ssh("pgrb1", ["echo soft1 > /root/soft1; sync"])
        rehearsal("reboot", "pgrb1", **opts, check=True)
        boot = check_up(boot, "soft1")
        assert Lab.default(**opts).hosts["pgrb1"]["pid"] == supervisor  # booted again by it
        assert "asked for a reboot" in (state_dir / "hosts/pgrb1/console.log").read_text()
        lab.ssh("pgrb1", ["echo hard1 > /root/hard1; sync"])
        rehearsal("reboot", "pgrb1", "--hard", **opts, check=True)
        boot = check_up(boot, "hard1")
        assert Lab.default(**opts).hosts["pgrb1"]["pid"] != supervisor

        # With the Python API, twice more each: every reboot works after any other.
        lab = Lab.default(**opts)
        for n, hard in enumerate((False, True, True, False)):
            lab.ssh("pgrb1", [f"echo again{n} > /root/again{n}; sync"])
            assert lab.reboot("pgrb1", hard=hard) != boot
            boot = check_up(boot, f"again{n}")
            assert lab.is_running("pgrb1")

        # A reboot asked for inside the host, as a deploy would ask: booted again all the same,
        # and lab.ssh neither hangs nor fails on the shared connection to the old boot.
        lab.ssh("pgrb1", ["echo inside > /root/inside; sync; systemctl reboot"], check=False)
        deadline = time.monotonic() + 60
        while lab.ssh("pgrb1", ["cat", BOOT_ID], check=False, timeout=30).stdout.strip() in (
                boot, ""):
            assert time.monotonic() < deadline, "pgrb1 did not come back from its reboot"
            time.sleep(0.5)
        lab.wait_for_ssh("pgrb1")
        check_up(boot, "inside")
    finally:
        rehearsal("down", **opts, check=True)
    assert machine_snapshot() == before
    assert not state_dir.exists()
    assert not Lab(**opts)._supervisor_pids("pgrb1")
    assert not Lab(**opts)._nspawn_pids("pgrb1")
