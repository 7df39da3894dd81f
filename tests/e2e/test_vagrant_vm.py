"""Vagrant VM rehearsal, end to end: the box built here from Debian's packages, ``vagrant up``
with libvirt (KVM when a guest really runs under it, TCG otherwise), the deploy through pyinfra's
vagrant connector, tests/host against the VM, and what only a VM shows: the tuning follows the
VM's own RAM, the kernel settings are set, the WAL archive lives on the VM's second disk, and
after a real reboot every service comes back and the health check is OK.

Its machines are its own: Vagrant state in /var/lib/pginfra/e2e-vm, libvirt domains named
pginfra-e2e-vm-*; a developer's `pginfra vm up` is not touched."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import record_timing, run_pyinfra, wait_for, why_failed

from pginfra import ROOT, archive_disk, kernel
from pginfra.facts import BlockDevice, Container, MemInfo
from pginfra.secrets import generate_missing
from pginfra.tuning import MB, tune
from pginfra_lab.vm import BOX_VOLUME_PREFIX, Machines, pool_volumes, stale_box_volumes

# Another state directory and network (PGINFRA_E2E_VM_DIR, PGINFRA_VM_NET) run a second copy
# beside the suite's: the whole rehearsal while the suite runs its short form.
STATE = Path(os.environ.get("PGINFRA_E2E_VM_DIR", "/var/lib/pginfra/e2e-vm"))
NET = os.environ.get("PGINFRA_VM_NET", "192.168.56")
MACHINES = Machines(dotfile=STATE / "vagrant", prefix=f"pginfra-{STATE.name}-")
SSH_CONFIG = STATE / "ssh_config"
HEALTH = "/usr/local/lib/pginfra/pginfra-health"
ARCHIVE = "/var/lib/postgresql/wal-archive"
VM_MEMORY = 2048 * MB  # the Vagrantfile's pg1
TOOLS = ("vagrant", "virsh", "libvirtd", "qemu-system-x86_64", "qemu-img", "mkfs.ext4",
         "debootstrap")


def _missing() -> list[str]:
    missing = [tool for tool in TOOLS if not shutil.which(tool)]
    plugin = subprocess.run(["vagrant", "plugin", "list"], capture_output=True, text=True,
                            check=False).stdout if "vagrant" not in missing else ""
    if "vagrant" not in missing and "vagrant-libvirt" not in plugin:
        missing.append("vagrant-libvirt")
    return missing


pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="libvirt VMs need root here"),
    pytest.mark.skipif(bool(shutil.which("vagrant") is None or _missing()),
                       reason="not installed: vagrant, vagrant-libvirt, libvirt or qemu "
                              "(./dev.sh test installs them)"),
]


def env() -> dict[str, str]:
    return {**MACHINES.env(), "PGINFRA_SECRETS_FILE": str(STATE / "secrets.yaml"),
            "PGINFRA_CA_DIR": str(STATE / "ca"), "PGINFRA_VAGRANT_HOSTS": "pg1",
            "PGINFRA_VAGRANT_KNOWN_HOSTS": str(STATE / "known_hosts")}


def deploy(*args: str, timeout: float = 3600, data: dict | None = None):
    return run_pyinfra(None, *args, inventory="inventories/vagrant.py",
                       env={**env(), "PGINFRA_VAGRANT_DATA": json.dumps(data or {})},
                       timeout=timeout)


def on_vm(command: str, check: bool = True, timeout: float = 300) -> subprocess.CompletedProcess:
    """A command as root on pg1, over SSH as Vagrant reaches it."""
    proc = subprocess.run(["ssh", "-F", str(SSH_CONFIG), "-o", "ConnectTimeout=10",
                           "-o", "BatchMode=yes", "pg1", f"sudo sh -c {shlex.quote(command)}"],
                          capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"{command}: {proc.returncode} {proc.stderr[-2000:]}")
    return proc


FORWARD = Path("/proc/sys/net/ipv4/ip_forward")


def virsh(*args: str) -> str:
    return subprocess.run(["virsh", "-c", "qemu:///system", *args], capture_output=True,
                          text=True, check=False).stdout


def libvirt_networks() -> set[str]:
    """libvirt's active networks (none before libvirtd runs)."""
    return set(virsh("net-list", "--name").split()) if shutil.which("virsh") else set()


# A developer iterating on this module: PGINFRA_E2E_VM_KEEP=1 keeps the machine at the end and
# takes a running one at the start (as left by the last run), instead of a new one each time.
KEEP = os.environ.get("PGINFRA_E2E_VM_KEEP") == "1"


def _running() -> bool:
    proc = MACHINES.vagrant("status", "--machine-readable", "pg1", check=False, capture=True)
    return ",state,running" in proc.stdout


@pytest.fixture(scope="module")
def vm():
    if KEEP and (STATE / "secrets.yaml").exists() and _running():
        MACHINES.ssh_config(["pg1"], SSH_CONFIG)
        yield {"accel": MACHINES.accel, "reused": True}
        return
    if (STATE / "vagrant").exists():  # an interrupted run's machine
        MACHINES.destroy()
    shutil.rmtree(STATE, ignore_errors=True)
    STATE.mkdir(parents=True, mode=0o700)
    generate_missing(["postgres", "app", "pgbouncer_admin", "pgbouncer_auth",
                      "backup_cipher_pass"], STATE / "secrets.yaml")
    # libvirt's NAT networks turn IP forwarding on: the machine gets back what it had
    forward_before = FORWARD.read_text()
    networks_before = libvirt_networks()
    try:
        timings = MACHINES.up(["pg1"])
        for key, value in timings.items():
            if key.endswith("_seconds") and value:
                record_timing(f"vm_{key}_{timings['accel']}", value)
        MACHINES.ssh_config(["pg1"], SSH_CONFIG)
        print(f"VM accelerator: {timings['accel']}", file=sys.stderr)
        yield timings
    finally:
        if not KEEP:
            MACHINES.destroy()
            shutil.rmtree(STATE, ignore_errors=True)
            for network in libvirt_networks() - networks_before:  # the ones Vagrant made
                virsh("net-destroy", network)
                virsh("net-undefine", network)
            FORWARD.write_text(forward_before)


def test_the_box_copy_a_machine_runs_on_is_never_pruned(vm):
    """Read from libvirt's real pool: pg1's disk has a copy of the box as its backing file, and
    that copy is not one of those a rebuilt box's ``vagrant box add`` removes."""
    volumes = pool_volumes()
    disk = volumes[f"{MACHINES.prefix}pg1.img"]
    assert disk and Path(disk).name.startswith(BOX_VOLUME_PREFIX), volumes
    assert Path(disk).name not in stale_box_volumes(volumes)


def run_fact(fact, **kwargs):
    """A pginfra fact read on the VM with its own command, as a deploy reads it."""
    return fact.process(on_vm(fact.command(**kwargs)).stdout.splitlines())


def test_the_vm_has_its_own_ram_cpus_disk_and_kernel(vm):
    """The short form the suite runs (the rest: ./dev.sh test-vm): the box boots under the
    accelerator the probe chose, reached over SSH as Vagrant's user with sudo, with the RAM, CPUs
    and second disk of the Vagrantfile, as a VM and not a container, as pginfra's facts see it."""
    assert vm["accel"] in ("kvm", "tcg")
    ram = run_fact(MemInfo())["MemTotal"]
    assert VM_MEMORY * 0.85 < ram <= VM_MEMORY
    assert on_vm("nproc").stdout.strip() == "2"
    assert on_vm("systemd-detect-virt", check=False).stdout.strip() in ("kvm", "qemu")
    assert run_fact(Container()) == ""  # kernel settings are this host's own to set
    disk = run_fact(BlockDevice(), device="/dev/vdb")
    assert disk["type"] == "disk" and disk["fstype"] == "" and disk["mountpoints"] == []
    assert archive_disk.device_problems("/dev/vdb", disk, ARCHIVE, {}) == []
    root = run_fact(BlockDevice(), device="/dev/vda")
    assert archive_disk.device_problems("/dev/vda", root, ARCHIVE, {}) == [
        "postgres_wal_archive_device: /dev/vda is mounted at /: pginfra takes only a device "
        "nothing else uses"]


@pytest.fixture(scope="module")
def deployed(vm):
    first = deploy()
    assert first.returncode == 0, why_failed(first.stderr)
    if not vm.get("reused"):  # a machine kept from the last run is deployed already
        record_timing(f"vm_first_deploy_seconds_{vm['accel']}", first.seconds)
    return first


@pytest.mark.vm_full
def test_a_second_deploy_changes_nothing(vm, deployed):
    second = deploy()
    assert second.returncode == 0, why_failed(second.stderr)
    assert second.changed == []
    record_timing(f"vm_noop_deploy_seconds_{vm['accel']}", second.seconds)


@pytest.mark.vm_full
def test_host_checks_pass_on_the_vm(deployed):
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/host",
         "--hosts=ssh://pg1", f"--ssh-config={SSH_CONFIG}", "--sudo",
         # one SSH connection for all checks: each new one costs seconds under emulation
         f"--ssh-extra-args=-o ControlMaster=auto -o ControlPersist=120s "
         f"-o ControlPath={STATE}/cm-%C"],
        cwd=ROOT, capture_output=True, text=True, timeout=1800)
    assert proc.returncode == 0, proc.stdout[-5000:] + proc.stderr[-2000:]


@pytest.mark.vm_full
def test_the_tuning_follows_the_vms_ram_not_the_machines(deployed):
    ram = int(on_vm("awk '/^MemTotal/ {print $2}' /proc/meminfo").stdout) * 1024
    assert VM_MEMORY * 0.85 < ram <= VM_MEMORY  # the VM's own, less what its kernel keeps
    cpus = int(on_vm("nproc").stdout)
    wanted = tune(round(ram / MB) * MB, cpus)["shared_buffers"]  # pyinfra's Memory fact rounds
    shown = on_vm("runuser -u postgres -- psql -XAtc 'SHOW shared_buffers'").stdout.strip()
    assert shown == wanted
    with open("/proc/meminfo") as meminfo:  # this machine's RAM would give far more
        machine = int(meminfo.readline().split()[1]) * 1024
    if machine > 2 * VM_MEMORY:
        assert shown != tune(machine, cpus)["shared_buffers"]


@pytest.mark.vm_full
def test_kernel_settings_are_set_on_a_vm(deployed):
    values = on_vm("sysctl -n vm.swappiness vm.overcommit_memory vm.overcommit_ratio").stdout
    assert values.split() == ["1", "2", "90"]
    assert on_vm("test -f /etc/sysctl.d/60-pginfra-postgres.conf").returncode == 0
    # The server runs with the limit of its unit (a login session gets it from limits.d).
    pid = on_vm("head -1 /var/lib/postgresql/15/main/postmaster.pid").stdout.strip()
    limits = on_vm(f"cat /proc/{pid}/limits").stdout
    assert any(line.startswith("Max open files") and line.split()[3:5] == ["65536", "65536"]
               for line in limits.splitlines()), limits
    assert on_vm("runuser -u postgres -- sh -c 'ulimit -n'").stdout.strip() == "65536"


def archive_state() -> dict:
    found = on_vm(f"findmnt --json --output SOURCE,FSTYPE --mountpoint {ARCHIVE} || true").stdout
    fs = json.loads(found)["filesystems"][0] if found.strip() else {}
    owner = on_vm(f"stat -c '%U %a' {ARCHIVE}").stdout.split()
    return {**fs, "owner": owner}


@pytest.mark.vm_full
def test_the_wal_archive_lives_on_its_own_disk(deployed):
    assert archive_state() == {"source": "/dev/vdb", "fstype": "ext4",
                               "owner": ["postgres", "700"]}
    fstab = on_vm("cat /etc/fstab").stdout
    assert f" {ARCHIVE} ext4 defaults,noatime,nofail" in fstab
    # WAL reaches it: a segment switched now is in pgBackRest's archive on /dev/vdb
    before = int(on_vm(f"find {ARCHIVE} -type f -name '0000*' | wc -l").stdout)
    on_vm("runuser -u postgres -- psql -XAtc 'SELECT pg_switch_wal()' "
          "-c 'CHECKPOINT' -c 'SELECT pg_switch_wal()'")
    wait_for(lambda: int(on_vm(f"find {ARCHIVE} -type f -name '0000*' | wc -l").stdout) > before,
             "a WAL segment archived on the archive disk", timeout=120)


def serving() -> dict:
    units = ("postgresql@15-main", "pgbouncer", "cron", "prometheus-postgres-exporter",
             "prometheus-node-exporter")
    proc = on_vm("systemctl is-active " + " ".join(units), check=False, timeout=60)
    state = dict(zip(units, proc.stdout.split(), strict=False))
    if set(state.values()) != {"active"}:
        return {}
    listening = {line.split()[3] for line in on_vm("ss -Hltn").stdout.splitlines()}
    return {"units": state, "listening": listening}


@pytest.mark.vm_full
def test_the_vm_comes_back_serving_after_a_reboot(vm, deployed):
    old_boot = on_vm("cat /proc/sys/kernel/random/boot_id").stdout.strip()
    started = time.monotonic()
    on_vm("systemctl reboot", check=False, timeout=60)

    def rebooted():
        proc = subprocess.run(["ssh", "-F", str(SSH_CONFIG), "-o", "ConnectTimeout=5",
                               "-o", "BatchMode=yes", "pg1", "cat /proc/sys/kernel/random/boot_id"],
                              capture_output=True, text=True, timeout=60)
        return proc.returncode == 0 and proc.stdout.strip() not in ("", old_boot)

    wait_for(rebooted, "pg1 booted again", timeout=600)
    state = wait_for(serving, "PostgreSQL, PgBouncer, cron and the exporters", timeout=600)
    assert {f"{NET}.11:5432", f"{NET}.11:6432", "127.0.0.1:5432"} <= state["listening"]

    def healthy():
        proc = on_vm(f"{HEALTH} --json", check=False, timeout=180)
        return proc.returncode == 0 and json.loads(proc.stdout.strip().splitlines()[-1])

    wait_for(healthy, "the health check OK", timeout=300)
    record_timing(f"vm_reboot_to_healthy_seconds_{vm['accel']}", time.monotonic() - started)
    assert archive_state()["source"] == "/dev/vdb"  # mounted again, from fstab
    values = on_vm("sysctl -n vm.swappiness vm.overcommit_memory").stdout.split()
    assert values == ["1", "2"]  # from /etc/sysctl.d at boot


def meminfo() -> dict[str, int]:
    return run_fact(MemInfo())


@pytest.mark.vm_full
def test_huge_pages_are_reserved_for_a_server_that_wants_them(deployed):
    """huge_pages try (pginfra's tuning sets it from 2 GB of shared_buffers; the VM has less, so
    asked for here): the pages are reserved before the server restarts, and it maps its shared
    memory from them; off again, they go back to the VM."""
    shared = on_vm("runuser -u postgres -- psql -XAtc 'SHOW shared_buffers'").stdout.strip()
    pages = kernel.huge_pages_for({"huge_pages": "try", "shared_buffers": shared})
    result = deploy(data={"postgres_parameters": {"huge_pages": "try"}})
    assert result.returncode == 0, why_failed(result.stderr)
    assert on_vm("sysctl -n vm.nr_hugepages").stdout.strip() == str(pages)
    found = meminfo()  # the counts as they are, sizes in bytes
    assert found["HugePages_Total"] == pages
    in_use = found["HugePages_Total"] - found["HugePages_Free"] + found["HugePages_Rsvd"]
    assert in_use > 0, found  # the server's shared memory is in huge pages
    assert on_vm("runuser -u postgres -- psql -XAtc 'SHOW huge_pages'").stdout.strip() == "try"
    back = deploy()
    assert back.returncode == 0, why_failed(back.stderr)
    assert on_vm("sysctl -n vm.nr_hugepages").stdout.strip() == "0"
    assert meminfo()["HugePages_Total"] == 0


@pytest.mark.vm_full
def test_a_device_in_use_is_refused_before_anything_changes(deployed):
    """The root disk as the archive device: refused at planning, naming host and key."""
    before = on_vm("md5sum /etc/fstab").stdout
    bad = deploy("--data", "postgres_wal_archive_device=/dev/vda", timeout=1200)
    assert bad.returncode != 0
    said = bad.stderr
    assert "postgres_wal_archive_device: /dev/vda is mounted at /" in said, said[-3000:]
    assert "pg1" in said and "nothing was changed" in said
    assert on_vm("md5sum /etc/fstab").stdout == before
