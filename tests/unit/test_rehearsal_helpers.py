import os

import pytest

from pginfra import ROOT
from pginfra_lab import rehearsal
from pginfra_lab.rehearsal import (
    Lab,
    RehearsalError,
    free_subnet,
    host_names,
    overlapping_routes,
    parse_stat,
    plan_addresses,
    process_role,
    render_ssh_config,
    rootfs_key,
    security_mirror,
    sources_list,
    supervisor_command,
)


def test_host_names():
    assert host_names("pg", 3) == ["pg1", "pg2", "pg3"]


@pytest.mark.parametrize(("prefix", "count"), [("PG", 1), ("pg-", 1), ("averylongname", 1),
                                               ("pg", 0), ("pg", 51), ("1pg", 1)])
def test_host_names_refused(prefix, count):
    with pytest.raises(RehearsalError):
        host_names(prefix, count)


def test_plan_addresses():
    gateway, addresses = plan_addresses("10.77.0.0/24", ["pg1", "pg2"])
    assert gateway == "10.77.0.1"
    assert addresses == {"pg1": "10.77.0.10", "pg2": "10.77.0.11"}


@pytest.mark.parametrize("subnet", ["10.77.0.0/30", "fd00::/64", "10.77.0.1/24"])
def test_plan_addresses_refused(subnet):
    with pytest.raises((RehearsalError, ValueError)):
        plan_addresses(subnet, ["pg1"])


def test_overlapping_routes():
    routes = [
        {"dst": "default", "gateway": "192.0.2.1", "dev": "eth0"},
        {"dst": "192.0.2.0/24", "dev": "eth0"},
        {"dst": "10.77.0.0/16", "dev": "wg0"},
        {"dst": "10.77.0.0/24", "dev": "pginfra0"},
        {"dst": "fd00::/64", "dev": "eth0"},
    ]
    assert overlapping_routes("10.77.0.0/24", routes, "pginfra0") == ["10.77.0.0/16 dev wg0"]
    assert overlapping_routes("10.78.0.0/24", routes, "pginfra0") == []


def test_free_subnet_skips_what_routes_hold():
    routes = [{"dst": "default", "dev": "eth0"}, {"dst": "10.77.1.0/24", "dev": "pginfra-e2e"},
              {"dst": "10.77.2.0/23", "dev": "wg0"}, {"dst": "10.77.5.7", "dev": "tun0"}]
    assert free_subnet(routes) == "10.77.4.0/24"
    assert free_subnet(routes, first=5) == "10.77.6.0/24"
    assert free_subnet(routes, exclude=("10.77.4.0/24",)) == "10.77.6.0/24"
    assert free_subnet([]) == "10.77.1.0/24"
    with pytest.raises(RehearsalError, match="no free subnet"):
        free_subnet([{"dst": "10.77.0.0/16", "dev": "wg0"}])


def test_ssh_config_is_strict_and_uses_the_lab_key(tmp_path):
    text = render_ssh_config({"pg1": "10.77.0.10"}, tmp_path / "id", tmp_path / "kh")
    assert "Host pg1\n    HostName 10.77.0.10\n" in text
    assert f"IdentityFile {tmp_path / 'id'}" in text
    assert "StrictHostKeyChecking yes" in text
    assert f"UserKnownHostsFile {tmp_path / 'kh'}" in text


def test_rootfs_key_follows_what_is_asked_for():
    assert rootfs_key() == rootfs_key()
    assert rootfs_key(packages=("systemd",)) != rootfs_key()
    assert rootfs_key(mirror="http://mirror.example/debian") != rootfs_key()


def test_preflight_refuses_non_linux(monkeypatch, tmp_path):
    monkeypatch.setattr(rehearsal.platform, "system", lambda: "Darwin")
    with pytest.raises(RehearsalError, match="need Linux"):
        Lab(state_dir=tmp_path).preflight(["pg1"])


def test_preflight_refuses_non_root(monkeypatch, tmp_path):
    monkeypatch.setattr(rehearsal.platform, "system", lambda: "Linux")
    monkeypatch.setattr(rehearsal.os, "geteuid", lambda: 1000)
    with pytest.raises(RehearsalError, match="need root"):
        Lab(state_dir=tmp_path).preflight(["pg1"])


def test_preflight_names_missing_tools(monkeypatch, tmp_path):
    monkeypatch.setattr(rehearsal.platform, "system", lambda: "Linux")
    monkeypatch.setattr(rehearsal.os, "geteuid", lambda: 0)
    monkeypatch.setattr(rehearsal.shutil, "which",
                        lambda tool: None if tool == "debootstrap" else f"/usr/bin/{tool}")
    with pytest.raises(RehearsalError, match="missing tools: debootstrap"):
        Lab(state_dir=tmp_path).preflight(["pg1"])
    assert not (tmp_path / "hosts.json").exists()


def test_recorded_lab_refuses_other_settings(tmp_path):
    lab = Lab(state_dir=tmp_path, subnet="10.77.5.0/24", bridge="pgtest0", prefix="pgx")
    lab.save_state()
    again = Lab.default(state_dir=tmp_path)
    assert (again.subnet, again.bridge, again.prefix) == ("10.77.5.0/24", "pgtest0", "pgx")
    with pytest.raises(RehearsalError, match="uses subnet 10.77.5.0/24"):
        Lab.default(state_dir=tmp_path, subnet="10.77.6.0/24")


def test_an_exited_child_is_not_alive_even_before_it_is_reaped():
    import subprocess
    import time

    child = subprocess.Popen(["true"])
    time.sleep(0.3)  # exited, and a zombie until someone waits for it
    assert rehearsal._alive(child.pid) is False
    assert rehearsal._alive(1) is True


def test_a_host_this_lab_just_started_counts_as_running(tmp_path):
    """Between fork and exec /proc still shows the parent's command line: trust the Popen."""
    import subprocess

    lab = Lab(state_dir=tmp_path)
    lab._procs["pgz1"] = subprocess.Popen(["sleep", "2"])
    assert lab.is_running("pgz1")
    lab._procs["pgz1"].kill()
    lab._procs["pgz1"].wait()
    assert not lab.is_running("pgz1")


@pytest.mark.parametrize(("mirror", "security"), [
    ("http://deb.debian.org/debian", "http://deb.debian.org/debian-security"),
    ("http://deb.debian.org/debian/", "http://deb.debian.org/debian-security"),
    ("https://ftp.example/pub/debian", "https://ftp.example/pub/debian-security"),
    ("http://apt-cache:3142/mirror", "http://apt-cache:3142/debian-security"),
])
def test_security_mirror_is_next_to_the_mirror(mirror, security):
    assert security_mirror(mirror) == security


def test_sources_list_is_what_a_debian_12_install_writes():
    assert sources_list() == (
        "deb http://deb.debian.org/debian bookworm main\n"
        "deb http://deb.debian.org/debian bookworm-updates main\n"
        "deb http://deb.debian.org/debian-security bookworm-security main\n"
    )
    assert sources_list("http://m.example/debian").splitlines()[2] == (
        "deb http://m.example/debian-security bookworm-security main")


NSPAWN = ["systemd-nspawn", "--quiet", "-D", "/x/rootfs", "-M", "pg1", "--boot"]


@pytest.mark.parametrize(("argv", "role"), [
    (NSPAWN, ("nspawn", "pg1")),
    (["/usr/bin/systemd-nspawn", "-M", "pg12"], ("nspawn", "pg12")),
    (supervisor_command(NSPAWN), ("supervisor", "pg1")),
    (["/bin/sh", "-c", "something else", *NSPAWN], None),  # not our supervisor
    (["/bin/sh", "-c", rehearsal.SUPERVISOR, "sleep", "-M", "pg1"], None),
    (["systemd-nspawn", "-D", "/x", "--boot"], None),  # no machine name
    (["systemd-nspawn", "-D", "/x", "-M"], None),
    (["ssh", "-M", "pg1"], None),
    ([], None),
])
def test_process_role(argv, role):
    # /proc/PID/cmdline ends in a NUL, so its split ends in an empty word
    assert process_role([word.encode() for word in argv] + [b""]) == role


def test_parse_stat_survives_odd_command_names():
    assert parse_stat("4242 (a) (b c) S 17 4242 4242 0 -1 4194560 ...") == ("S", 17, 4242)
    assert parse_stat("7 (sh) Z 1 7 7 0") == ("Z", 1, 7)


def fake_nspawn(tmp_path, body: str):
    """A stand-in for systemd-nspawn (the supervisor runs whatever its first word names)."""
    path = tmp_path / "systemd-nspawn"
    path.write_text(f"#!/bin/sh\n{body}\n")
    path.chmod(0o755)
    return path


def test_the_supervisor_boots_again_on_133_only(tmp_path):
    """133 is nspawn's 'the container asked for a reboot': run it again; anything else ends."""
    import subprocess

    count = tmp_path / "count"
    nspawn = fake_nspawn(tmp_path, f"""echo boot "$@" >> {count}
[ $(wc -l < {count}) -lt 3 ] && exit 133
exit 7""")
    proc = subprocess.run(supervisor_command([str(nspawn), "-M", "pgz1"]), capture_output=True,
                          text=True, timeout=30)
    assert proc.returncode == 7
    assert count.read_text().splitlines() == ["boot -M pgz1"] * 3
    assert proc.stdout.count("booting it again") == 2
    # A poweroff (0) is not booted again.
    count.unlink()
    nspawn = fake_nspawn(tmp_path, f"echo boot >> {count}; exit 0")
    proc = subprocess.run(supervisor_command([str(nspawn), "-M", "pgz1"]), timeout=30)
    assert proc.returncode == 0
    assert count.read_text() == "boot\n"


def test_a_supervised_host_is_found_running_and_stop_host_ends_its_supervisor(tmp_path):
    """Through the pid recorded in hosts.json, as another process (the CLI) sees it."""
    import subprocess
    import time

    nspawn = fake_nspawn(tmp_path, "sleep 60")
    sup = subprocess.Popen(supervisor_command([str(nspawn), "-M", "pgzunit"]),
                           start_new_session=True)
    try:
        time.sleep(0.3)  # past exec: /proc shows the supervisor's own command line
        lab = Lab(state_dir=tmp_path, hosts={"pgzunit": {"address": "10.77.0.10",
                                                         "pid": sup.pid}})
        assert lab._supervisor_pids("pgzunit") == [sup.pid]
        assert lab.is_running("pgzunit")
        lab.hosts["pgzunit"]["pid"] = sup.pid + 100000  # not ours: not running
        assert not lab.is_running("pgzunit")
        lab.hosts["pgzunit"]["pid"] = sup.pid
        lab.stop_host("pgzunit", timeout=5)
        # SIGTERM to its process group: the supervisor and its nspawn, never booted again
        assert sup.wait(timeout=5) == -15
        assert not lab.is_running("pgzunit")
        assert lab._supervisor_pids("pgzunit") == []
    finally:
        if sup.poll() is None:
            os.killpg(sup.pid, 9)
            sup.wait()


def _locked_child(lock, log, hold: float):
    """A process that holds the lab lock for ``hold`` seconds, writing when it enters and leaves."""
    import subprocess
    import sys
    code = (
        "import sys, time\n"
        "from pathlib import Path\n"
        "from pginfra_lab.rehearsal import machine_lock\n"
        f"log = Path({str(log)!r})\n"
        f"with machine_lock(Path({str(lock)!r})):\n"
        "    log.write_text(log.read_text() + 'child in\\n')\n"
        "    print('held', flush=True)\n"
        f"    time.sleep({hold})\n"
        "    log.write_text(log.read_text() + 'child out\\n')\n"
    )
    return subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True,
                            cwd=ROOT)


def test_machine_lock_makes_a_second_process_wait_its_turn(tmp_path):
    lock, log = tmp_path / "lock", tmp_path / "log"
    log.write_text("")
    child = _locked_child(lock, log, hold=1.0)
    assert child.stdout.readline().strip() == "held"
    with rehearsal.machine_lock(lock):
        log.write_text(log.read_text() + "parent in\n")
    assert child.wait(timeout=30) == 0
    assert log.read_text().splitlines() == ["child in", "child out", "parent in"]


def test_machine_lock_is_reentrant_and_released_by_the_outermost_exit(tmp_path):
    import fcntl
    lock = tmp_path / "lock"
    # Nested: no deadlock. Another open file of the lock cannot take it meanwhile.
    with (rehearsal.machine_lock(lock), rehearsal.machine_lock(lock), open(lock) as other,
          pytest.raises(BlockingIOError)):
        fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)
    with open(lock) as other:  # released once the outer block ends
        fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)
