"""pginfra.kernel and pginfra.archive_disk: a database host's kernel settings and the WAL
archive's own disk; the disk's facts and script run here against a real loop device."""

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from pginfra import archive_disk, kernel
from pginfra.facts import BlockDevice, Container, MemInfo, Mountpoint
from pginfra.server_config import server_parameters
from pginfra.settings import SettingsError, resolve
from pginfra.tuning import GB, MB


def test_huge_pages_follow_the_servers_shared_memory():
    assert kernel.huge_pages_for({"huge_pages": "off", "shared_buffers": "8GB"}) == 0
    # shared_buffers + 5% + 64 MB, in 2 MB pages
    assert kernel.huge_pages_for({"huge_pages": "try", "shared_buffers": "4GB"}) == 2183
    assert kernel.huge_pages_for({"huge_pages": "on", "shared_buffers": "65536"}) == \
        kernel.huge_pages_for({"huge_pages": "on", "shared_buffers": "512MB"}) == 301


def test_tuned_hosts_get_huge_pages_from_2gb_of_shared_buffers():
    settings = resolve({})
    small = server_parameters(settings, 2 * GB, 2)
    large = server_parameters(settings, 16 * GB, 4)
    assert kernel.huge_pages_for(small) == 0
    assert kernel.huge_pages_for(large) == 2183
    values = kernel.sysctl_values(1, 2, 90, kernel.huge_pages_for(large))
    assert values == {"vm.swappiness": "1", "vm.overcommit_memory": "2",
                      "vm.overcommit_ratio": "90", "vm.nr_hugepages": "2183"}
    assert "vm.nr_hugepages = 2183\n" in kernel.sysctl_text(values)
    # overcommit 0 (the kernel's heuristic) has no ratio to set
    assert kernel.sysctl_values(10, 0, 90, 0) == {"vm.swappiness": "10",
                                                  "vm.overcommit_memory": "0",
                                                  "vm.nr_hugepages": "0"}


def test_an_overcommit_limit_below_what_is_committed_is_refused():
    meminfo = {"MemTotal": 2 * GB, "SwapTotal": 0, "Committed_AS": 1200 * MB}
    assert kernel.overcommit_problem(meminfo, kernel.sysctl_values(1, 2, 90, 0)) is None
    problem = kernel.overcommit_problem(meminfo, kernel.sysctl_values(1, 2, 50, 0))
    assert problem.startswith("vm.overcommit_memory 2 with ratio 50% allows 1024 MB")
    assert "1200 MB already are" in problem
    # huge pages come out of the RAM overcommit counts
    assert kernel.commit_limit(meminfo, 90, 301) == (2 * GB - 301 * 2 * MB) * 90 // 100
    assert "more than half" in kernel.overcommit_problem(meminfo, kernel.sysctl_values(1, 0, 90,
                                                                                       600))
    assert kernel.overcommit_problem(meminfo, kernel.sysctl_values(1, 0, 50, 0)) is None


def test_kernel_settings_are_validated():
    for data, key in (({"kernel_overcommit_memory": 1}, "kernel_overcommit_memory"),
                      ({"kernel_overcommit_ratio": 20}, "kernel_overcommit_ratio"),
                      ({"kernel_swappiness": 101}, "kernel_swappiness"),
                      ({"postgres_wal_archive_device": "/etc/passwd"},
                       "postgres_wal_archive_device"),
                      ({"postgres_wal_archive_device": "/dev/x/../../etc/shadow"},
                       "postgres_wal_archive_device")):
        with pytest.raises(SettingsError, match=key):
            resolve(data)


def run_fact(fact, **kwargs):
    proc = subprocess.run(["sh", "-c", fact.command(**kwargs)], capture_output=True, text=True,
                          check=True)
    return fact.process(proc.stdout.splitlines())


def test_meminfo_and_container_facts_read_this_machine():
    found = run_fact(MemInfo())
    assert found["MemTotal"] > 256 * MB and "Committed_AS" in found
    assert isinstance(run_fact(Container()), str)


def blank(found: dict) -> dict:
    return {"path": "/dev/vdb", "type": "disk", "fstype": "", "uuid": "", "mountpoints": [],
            "children": 0, "signatures": "", **found}


@pytest.mark.parametrize("found, mount, problem", [
    ({}, {}, "/dev/vdb is not a block device on this host"),
    (blank({"mountpoints": ["/"]}), {}, "/dev/vdb is mounted at /: pginfra takes only"),
    (blank({"children": 2}), {}, "holds partitions: name the partition"),
    (blank({"fstype": "swap"}), {}, "holds swap, not a file system pginfra mounts"),
    (blank({"signatures": "dos"}), {}, "is not blank (wipefs finds dos)"),
    (blank({}), {"source": "/dev/vdc", "entries": 0}, "already mounted from /dev/vdc"),
    (blank({}), {"source": "", "entries": 3}, "holds 3 entries: mounting /dev/vdb over them"),
])
def test_devices_pginfra_would_not_take_are_refused(found, mount, problem):
    problems = archive_disk.device_problems("/dev/vdb", found, "/srv/wal", mount)
    assert len(problems) == 1 and problem in problems[0], problems


def test_a_blank_device_or_its_own_mount_is_taken():
    assert archive_disk.device_problems("/dev/vdb", blank({}), "/srv/wal", {}) == []
    mounted = blank({"fstype": "ext4", "uuid": "u", "mountpoints": ["/srv/wal"]})
    mount = {"source": "/dev/vdb", "fstab": archive_disk.fstab_entry("u", "ext4"),
             "owner": "postgres", "mode": "700", "entries": 5}
    assert archive_disk.device_problems("/dev/vdb", mounted, "/srv/wal", mount) == []
    assert not archive_disk.needs_mount(mounted, mount)
    assert archive_disk.needs_mount(mounted, {**mount, "mode": "755"})
    assert archive_disk.needs_mount(blank({}), {})


needs_loop = pytest.mark.skipif(
    os.geteuid() != 0 or not shutil.which("losetup") or not Path("/dev/loop-control").exists(),
    reason="needs root and loop devices (losetup) to make a real block device")


@pytest.fixture
def loop_device(tmp_path):
    image = tmp_path / "disk.img"
    with open(image, "wb") as handle:
        handle.truncate(64 * MB)
    device = subprocess.run(["losetup", "--find", "--show", str(image)], capture_output=True,
                            text=True, check=True).stdout.strip()
    yield device
    subprocess.run(["umount", "--lazy", str(tmp_path / "archive")], capture_output=True)
    subprocess.run(["losetup", "-d", device], check=True)


@needs_loop
def test_the_mount_script_makes_mounts_and_records_a_blank_device(tmp_path, loop_device):
    directory, fstab = str(tmp_path / "archive"), tmp_path / "fstab"
    fstab.write_text("# a comment\nUUID=x /other ext4 defaults 0 2\n"
                     f"/dev/old {directory} ext4 defaults 0 2\n")
    found = run_fact(BlockDevice(), device=loop_device)
    assert found == {"path": loop_device, "type": "loop", "fstype": "", "uuid": "",
                     "mountpoints": [], "children": 0, "signatures": ""}
    assert archive_disk.device_problems(loop_device, found, directory, {}) == []
    owner = "postgres" if shutil.which("pg_lsclusters") else "root"
    script = archive_disk.mount_script(loop_device, directory, str(fstab)).replace(
        "chown postgres:postgres", f"chown {owner}:{owner}")
    for _ in range(2):  # again: nothing made twice
        subprocess.run(["sh", "-c", script], check=True, capture_output=True)
    found = run_fact(BlockDevice(), device=loop_device)
    assert found["fstype"] == "ext4" and found["mountpoints"] == [directory]
    mount = run_fact(Mountpoint(), path=directory, fstab=str(fstab))
    assert mount == {"source": loop_device, "owner": owner, "mode": "700", "entries": 0,
                     "fstab": archive_disk.fstab_entry(found["uuid"], "ext4")}
    lines = fstab.read_text().splitlines()
    assert lines[:2] == ["# a comment", "UUID=x /other ext4 defaults 0 2"]  # others kept
    assert lines[2:] == [f"UUID={found['uuid']} {directory} ext4 {archive_disk.MOUNT_OPTIONS} 0 2"]
    if owner == "postgres":
        assert not archive_disk.needs_mount(found, mount)


@needs_loop
@pytest.mark.parametrize("what", ["dos", "swap"])
def test_the_mount_script_refuses_a_device_that_is_no_longer_blank(tmp_path, loop_device, what):
    """Between the plan and the run someone put a partition table or swap on it: nothing is
    made, nothing is mounted."""
    if what == "dos":
        with open(loop_device, "r+b") as disk:  # an MBR's boot signature: an empty DOS table
            disk.seek(510)
            disk.write(b"\x55\xaa")
        said = "is not blank: nothing was made on it"
    else:
        subprocess.run(["mkswap", loop_device], check=True, capture_output=True)
        said = "holds swap, not ext4 or xfs: not mounted"
    found = run_fact(BlockDevice(), device=loop_device)
    assert what in found["signatures"]
    assert archive_disk.device_problems(loop_device, found, str(tmp_path / "archive"), {})
    proc = subprocess.run(["sh", "-c", archive_disk.mount_script(
        loop_device, str(tmp_path / "archive"), str(tmp_path / "fstab"))],
        capture_output=True, text=True)
    assert proc.returncode == 1 and said in proc.stderr
    assert not (tmp_path / "fstab").exists()
    assert run_fact(BlockDevice(), device=loop_device)["mountpoints"] == []
