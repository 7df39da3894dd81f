import pytest

from pginfra import rehearsal
from pginfra.rehearsal import (
    Lab,
    RehearsalError,
    host_names,
    overlapping_routes,
    plan_addresses,
    render_ssh_config,
    rootfs_key,
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
