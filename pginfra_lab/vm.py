"""Vagrant VM rehearsals: a Debian 12 libvirt box built here, and ``vagrant up`` with libvirt.

The rehearsal containers share this machine's kernel; a VM has its own kernel, memory, CPUs and
disks, so it shows what a container cannot (kernel settings, the RAM the tuning must follow, a
second disk for the WAL archive, a real reboot). Nothing is downloaded but Debian's packages:

    pginfra vm box      # debootstrap a Debian 12 disk image with a kernel, once (cached)
    pginfra vm probe    # KVM if a guest kernel really runs under it, plain emulation (TCG) if not
    pginfra vm up       # libvirtd (started here when systemd is not PID 1), then ``vagrant up``
    pginfra vm down     # ``vagrant destroy``

The box boots its kernel directly (libvirt's ``<kernel>``/``<initrd>``, the files beside the box
in the cache), so its disk needs no partition table and no boot loader: it is one ext4 file
system made from the debootstrap directory by ``mkfs.ext4 -d``, with no loop device and no
mount. The ``vagrant`` user takes Vagrant's well-known insecure key, which Vagrant replaces with
a key of its own at the first ``vagrant up``, as with any public box.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import xml.etree.ElementTree as ET
from pathlib import Path

from pginfra_lab.rehearsal import (
    DEFAULT_CACHE_DIR,
    MIRROR,
    SUITE,
    RehearsalError,
    require_root_on_linux,
    run,
    sources_list,
)

BOX_NAME = "pginfra/bookworm64"
VIRSH = ["virsh", "-c", "qemu:///system"]  # the system libvirtd that Vagrant uses
# What a VM needs beyond a container: a kernel and its initramfs, udev, and a DHCP client on the
# first interface (libvirt's management network), which Vagrant's Debian guest support drives
# through ifupdown for the private network.
BOX_PACKAGES = (
    "systemd", "systemd-sysv", "dbus", "udev", "kmod", "openssh-server", "sudo", "python3",
    "iproute2", "ca-certificates", "procps", "less", "locales", "linux-image-amd64",
    "initramfs-tools", "ifupdown", "isc-dhcp-client", "e2fsprogs",
)
DISK_GB = 20  # sparse: the image holds what the file system holds
BOX_REVISION = 2  # raised whenever configure_root changes what a box holds
KERNEL_CMDLINE = "root=/dev/vda rw console=ttyS0 net.ifnames=0 panic=10"
# Where Vagrant's own public key lives in Debian's vagrant package.
VAGRANT_KEYS = Path("/usr/share/rubygems-integration/all/gems")
ACCELS = ("kvm", "tcg")
PROBE_MARK = "Run /init as init process"  # the kernel has mounted its initramfs and runs it
PROBE_SECONDS = 15.0  # TCG reaches PROBE_MARK in 2-12 s here, KVM (when it works) in 1


def say(message: str) -> None:
    print(f"vm: {message}", flush=True)


def box_key(packages: tuple[str, ...] = BOX_PACKAGES, suite: str = SUITE,
            mirror: str = MIRROR, cmdline: str = KERNEL_CMDLINE) -> str:
    """Cache key of a box: changes whenever what it is built from changes."""
    text = " ".join((suite, mirror, cmdline, str(DISK_GB), str(BOX_REVISION), *sorted(packages)))
    return f"{suite}-{hashlib.sha256(text.encode()).hexdigest()[:12]}"


def box_metadata(disk_gb: int = DISK_GB) -> dict:
    """vagrant-libvirt's box format: one qcow2 image, ``box.img``."""
    return {"provider": "libvirt", "format": "qcow2", "virtual_size": disk_gb}


def vagrant_public_key(root: Path = VAGRANT_KEYS) -> str:
    """Vagrant's insecure public key, from the installed vagrant package."""
    found = sorted(root.glob("vagrant-*/keys/vagrant.pub"))
    if not found:
        raise RehearsalError(f"Vagrant's insecure key is not under {root}: apt-get install vagrant")
    return found[-1].read_text().strip() + "\n"


def probe_verdict(kvm_output: str | None, tcg_output: str | None) -> tuple[str, str]:
    """Which accelerator to use from what a guest kernel printed under each (None: not tried).

    KVM only when its guest really reached ``PROBE_MARK``: on some machines /dev/kvm exists and
    the guest hangs right after the BIOS, printing nothing."""
    if kvm_output is not None and PROBE_MARK in kvm_output:
        return "kvm", "a guest kernel ran under KVM"
    if tcg_output is not None and PROBE_MARK in tcg_output:
        why = ("/dev/kvm is not usable here" if kvm_output is None
               else "under KVM the guest printed nothing past the firmware")
        return "tcg", f"plain emulation (TCG): {why}"
    raise RehearsalError("a guest kernel ran neither under KVM nor under TCG"
                         + (f"; TCG printed: {tcg_output[-400:]!r}" if tcg_output else ""))


def libvirt_driver(accel: str) -> str:
    """vagrant-libvirt's domain type: ``kvm`` or ``qemu`` (TCG)."""
    return {"kvm": "kvm", "tcg": "qemu"}[accel]


def kernel_files(boot: Path) -> tuple[Path, Path]:
    """The newest kernel in ``boot`` and its own initramfs (not a ``.dpkg-bak`` beside it)."""
    kernels = sorted(boot.glob("vmlinuz-*"))
    if not kernels:
        raise RehearsalError(f"no kernel in {boot}")
    version = kernels[-1].name.removeprefix("vmlinuz-")
    initrd = boot / f"initrd.img-{version}"
    if not initrd.exists():
        raise RehearsalError(f"no initramfs for kernel {version} in {boot}")
    return kernels[-1], initrd


class Box:
    """The cached box: ``box.img``, ``vmlinuz``, ``initrd.img`` and the ``.box`` for Vagrant."""

    def __init__(self, cache_dir: Path = DEFAULT_CACHE_DIR, mirror: str = MIRROR):
        self.mirror = mirror
        self.dir = cache_dir / "vm" / box_key(mirror=mirror)

    @property
    def kernel(self) -> Path:
        return self.dir / "vmlinuz"

    @property
    def initrd(self) -> Path:
        return self.dir / "initrd.img"

    @property
    def box_file(self) -> Path:
        return self.dir / "pginfra-bookworm64.box"

    def complete(self) -> bool:
        return (self.dir / ".pginfra-complete").exists()

    def build(self) -> Path:
        """debootstrap, configure, ``mkfs.ext4 -d``, qcow2, the ``.box``: once."""
        require_root_on_linux()
        if self.complete():
            return self.dir
        for tool in ("debootstrap", "mkfs.ext4", "qemu-img"):
            if not shutil.which(tool):
                raise RehearsalError(f"{tool} is missing (apt-get install debootstrap e2fsprogs"
                                     " qemu-utils)")
        key = vagrant_public_key()
        work = self.dir.with_name(self.dir.name + ".partial")
        shutil.rmtree(work, ignore_errors=True)
        root = work / "root"
        root.mkdir(parents=True)
        started = time.monotonic()
        say(f"building the Debian 12 box in {self.dir} (debootstrap, once)")
        run(["debootstrap", "--variant=minbase", f"--include={','.join(BOX_PACKAGES)}",
             SUITE, str(root), self.mirror])
        configure_root(root, key, self.mirror)
        kernel, initrd = kernel_files(root / "boot")
        shutil.copy2(kernel, work / "vmlinuz")
        shutil.copy2(initrd, work / "initrd.img")
        raw = work / "root.raw"
        with open(raw, "wb") as disk:
            disk.truncate(DISK_GB * 1024 ** 3)
        run(["mkfs.ext4", "-q", "-F", "-L", "root", "-d", str(root), str(raw)])
        run(["qemu-img", "convert", "-O", "qcow2", str(raw), str(work / "box.img")])
        raw.unlink()
        shutil.rmtree(root)
        (work / "metadata.json").write_text(json.dumps(box_metadata()) + "\n")
        with tarfile.open(work / self.box_file.name, "w") as tar:
            for name in ("metadata.json", "box.img"):
                tar.add(work / name, arcname=name)
        (work / "box.img").unlink()  # Vagrant keeps its own copy from the .box
        seconds = time.monotonic() - started
        (work / ".pginfra-complete").write_text(f"{seconds:.1f}\n")
        if self.dir.exists():
            shutil.rmtree(self.dir)
        work.rename(self.dir)
        say(f"box built in {seconds:.0f}s: {self.box_file}")
        return self.dir

    def build_seconds(self) -> float | None:
        marker = self.dir / ".pginfra-complete"
        return float(marker.read_text()) if marker.exists() else None


def configure_root(root: Path, vagrant_key: str, mirror: str = MIRROR) -> None:
    """What makes the debootstrap directory a box: its disk, network, console, users, keys."""
    (root / "etc/fstab").write_text("LABEL=root / ext4 defaults,errors=remount-ro 0 1\n")
    (root / "etc/hostname").write_text("debian\n")
    (root / "etc/hosts").write_text("127.0.0.1 localhost\n127.0.1.1 debian\n")
    (root / "etc/apt/sources.list").write_text(sources_list(mirror))
    (root / "etc/default/locale").write_text("LANG=C.UTF-8\n")
    (root / "etc/network/interfaces").write_text(
        "source /etc/network/interfaces.d/*\n\nauto lo\niface lo inet loopback\n\n"
        "allow-hotplug eth0\niface eth0 inet dhcp\n")
    # Each VM makes its own identity at its first boot, none comes from the cache.
    (root / "etc/machine-id").write_text("")
    for path in (root / "etc/ssh").glob("ssh_host_*"):
        path.unlink()
    dropin = root / "etc/systemd/system/ssh.service.d"
    dropin.mkdir(parents=True, exist_ok=True)
    (dropin / "host-keys.conf").write_text(
        "[Service]\n# the box ships no host keys: each VM makes its own at its first boot,\n"
        "# before Debian's own check of the configuration (which needs them)\n"
        "ExecStartPre=\nExecStartPre=/usr/bin/ssh-keygen -A\nExecStartPre=/usr/sbin/sshd -t\n")
    (root / "etc/ssh/sshd_config.d").mkdir(parents=True, exist_ok=True)
    (root / "etc/ssh/sshd_config.d/vagrant.conf").write_text("UseDNS no\n")
    chroot = ["chroot", str(root)]
    run([*chroot, "useradd", "--create-home", "--shell", "/bin/bash", "--user-group", "vagrant"])
    run([*chroot, "passwd", "--lock", "root"])
    sudoers = root / "etc/sudoers.d/vagrant"
    sudoers.write_text("vagrant ALL=(ALL) NOPASSWD: ALL\n")
    sudoers.chmod(0o440)
    ssh_dir = root / "home/vagrant/.ssh"
    ssh_dir.mkdir(mode=0o700)
    (ssh_dir / "authorized_keys").write_text(vagrant_key)
    (ssh_dir / "authorized_keys").chmod(0o600)
    run([*chroot, "chown", "-R", "vagrant:vagrant", "/home/vagrant/.ssh"])
    # A kernel for a virtio disk and network whatever the build machine has (not "dep").
    (root / "etc/initramfs-tools/conf.d/pginfra.conf").write_text("MODULES=most\n")
    run([*chroot, "update-initramfs", "-u", "-k", "all"])
    run([*chroot, "apt-get", "clean"])


# -- the accelerator probe ------------------------------------------------------------------------


def _boot_kernel(box: Box, accel: str, seconds: float = PROBE_SECONDS) -> str:
    """Boot the box's kernel under ``accel`` with no disk until ``PROBE_MARK`` or ``seconds``;
    what it printed on its serial console."""
    cmd = ["qemu-system-x86_64", "-accel", accel, "-m", "256", "-nographic", "-no-reboot",
           "-kernel", str(box.kernel), "-initrd", str(box.initrd),
           "-append", "console=ttyS0 panic=-1", "-serial", "stdio", "-monitor", "none"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL)
    os.set_blocking(proc.stdout.fileno(), False)
    output = b""
    deadline = time.monotonic() + seconds
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            chunk = proc.stdout.read() or b""
            output += chunk
            if PROBE_MARK.encode() in output:
                break
            time.sleep(0.1)
        output += proc.stdout.read() or b""
    finally:
        proc.kill()
        proc.wait()
    return output.decode(errors="replace")


def probe(box: Box, record: Path | None = None) -> tuple[str, str]:
    """KVM when a guest kernel really runs under it, TCG otherwise; recorded for the
    Vagrantfile (``accel`` beside the box)."""
    if not shutil.which("qemu-system-x86_64"):
        raise RehearsalError("qemu-system-x86_64 is missing (apt-get install qemu-system-x86)")
    kvm = None
    if os.access("/dev/kvm", os.R_OK | os.W_OK):
        kvm = _boot_kernel(box, "kvm")
    tcg = None if kvm is not None and PROBE_MARK in kvm else _boot_kernel(box, "tcg")
    accel, why = probe_verdict(kvm, tcg)
    (record or box.dir / "accel").write_text(accel + "\n")
    return accel, why


# -- libvirt without systemd ----------------------------------------------------------------------


def _running(name: str) -> bool:
    return run(["pgrep", "-x", name], check=False).returncode == 0


def ensure_libvirtd() -> None:
    """libvirtd and virtlogd running, and a ``default`` storage pool for Vagrant's images.

    Where systemd runs the machine, its units start them; where it does not (a container, this
    project's CI), they are started here as daemons."""
    for tool in ("libvirtd", "virtlogd", "virsh"):
        if not shutil.which(tool):
            raise RehearsalError(f"{tool} is missing (apt-get install libvirt-daemon-system "
                                 "libvirt-clients qemu-system-x86 dnsmasq-base)")
    systemd = Path("/run/systemd/system").is_dir()
    for daemon in ("virtlogd", "libvirtd"):
        if _running(daemon):
            continue
        if systemd:
            run(["systemctl", "start", f"{daemon}.service"])
        else:
            say(f"starting {daemon} (systemd is not PID 1 here)")
            run([daemon, "--daemon"])
    deadline = time.monotonic() + 30
    while run([*VIRSH, "version"], check=False).returncode != 0:
        if time.monotonic() > deadline:
            raise RehearsalError("libvirtd does not answer on qemu:///system")
        time.sleep(0.5)
    pools = run([*VIRSH, "pool-list", "--all", "--name"]).stdout.split()
    if "default" not in pools:
        Path("/var/lib/libvirt/images").mkdir(parents=True, exist_ok=True)
        run([*VIRSH, "pool-define-as", "default", "dir",
             "--target", "/var/lib/libvirt/images"])
    info = run([*VIRSH, "pool-info", "default"]).stdout
    if "running" not in info:
        run([*VIRSH, "pool-start", "default"])


def add_box(box: Box) -> None:
    """``vagrant box add`` the local box (again when it was rebuilt)."""
    listed = run(["vagrant", "box", "list", "--machine-readable"], check=False).stdout
    home = os.environ.get("VAGRANT_HOME") or str(Path.home() / ".vagrant.d")
    stamp = box.dir / f".added-{hashlib.sha256(home.encode()).hexdigest()[:12]}"  # per home
    if BOX_NAME in listed and stamp.exists():
        return
    run(["vagrant", "box", "add", "--force", "--name", BOX_NAME, str(box.box_file)], timeout=900)
    stamp.write_text(f"{time.time():.0f}\n")
    prune_box_volumes()  # the next machine up uploads this box afresh


BOX_VOLUME_PREFIX = BOX_NAME.replace("/", "-VAGRANTSLASH-") + "_vagrant_box_image_"


def stale_box_volumes(volumes: dict[str, str | None]) -> list[str]:
    """The copies of the box in libvirt's pool that no machine runs on. Vagrant's libvirt
    provider uploads the box into the pool (``..._vagrant_box_image_0_<stamp>_box.img``, 764 MB
    here) the first time a machine comes up from it and never removes one, so every rebuilt box
    left its old copy behind. ``volumes``: every volume of the pool, name -> the path of its
    backing file (None without one); a machine's disk has its box's copy as backing file.

        stale_box_volumes({"pginfra-VAGRANTSLASH-bookworm64_vagrant_box_image_0_1_box.img": None,
                           "pginfra-e2e-vm-pg1.img": None})
        # -> ["pginfra-VAGRANTSLASH-bookworm64_vagrant_box_image_0_1_box.img"]
    """
    used = {Path(backing).name for backing in volumes.values() if backing}
    return sorted(name for name in volumes
                  if name.startswith(BOX_VOLUME_PREFIX) and name not in used)


def pool_volumes(pool: str = "default") -> dict[str, str | None]:
    """Every volume of libvirt's ``pool``: name -> the path of its backing file, or None."""
    volumes = {}
    for line in run([*VIRSH, "vol-list", pool, "--details"]).stdout.splitlines()[2:]:
        if line.strip():
            name = line.split()[0]
            xml = run([*VIRSH, "vol-dumpxml", "--pool", pool, name]).stdout
            backing = ET.fromstring(xml).find("backingStore/path")
            volumes[name] = backing.text if backing is not None else None
    return volumes


def prune_box_volumes(pool: str = "default") -> list[str]:
    """Delete the copies of the box no machine runs on from libvirt's ``pool`` (see
    stale_box_volumes), when a rebuilt box is added: they hold the old box. The names deleted.
    A failure is said and left: it never stops a VM from coming up."""
    try:
        stale = stale_box_volumes(pool_volumes(pool))
        for name in stale:
            say(f"removing an old copy of the box from libvirt's pool {pool}: {name}")
            run([*VIRSH, "vol-delete", "--pool", pool, name])
        return stale
    except (RehearsalError, ET.ParseError, subprocess.SubprocessError, OSError) as error:
        say(f"old copies of the box were not removed from libvirt's pool {pool}: {error}")
        return []


def project_dir() -> Path:
    return Path(__file__).resolve().parent.parent


def recorded_accel(box: Box) -> str | None:
    path = box.dir / "accel"
    return path.read_text().strip() if path.exists() else None


class Machines:
    """The Vagrantfile's machines under libvirt, run from the project folder.

    ``dotfile`` (Vagrant's ``.vagrant`` state) and ``prefix`` (libvirt's domain names) let a
    test keep its machines apart from a developer's."""

    def __init__(self, box: Box | None = None, dotfile: Path | None = None,
                 prefix: str | None = None):
        self.box = box or Box()
        self.dotfile = dotfile
        self.prefix = prefix

    @property
    def accel(self) -> str:
        return recorded_accel(self.box) or "tcg"

    def env(self) -> dict[str, str]:
        """What ``vagrant`` (and pyinfra's vagrant connector) run with."""
        env = {**os.environ, "PGINFRA_VM_BOX_DIR": str(self.box.dir),
               "PGINFRA_VM_DRIVER": libvirt_driver(self.accel),
               "VAGRANT_DEFAULT_PROVIDER": "libvirt"}
        if self.dotfile:
            env["VAGRANT_DOTFILE_PATH"] = str(self.dotfile)
            env["PGINFRA_VM_CONSOLE_DIR"] = str(self.dotfile.parent)  # its serial consoles
        if self.prefix:
            env["PGINFRA_VM_PREFIX"] = self.prefix
        return env

    def vagrant(self, *args: str, timeout: float = 3600, check: bool = True,
                capture: bool = False) -> subprocess.CompletedProcess:
        proc = subprocess.run(["vagrant", *args], cwd=project_dir(), env=self.env(), text=True,
                              timeout=timeout, capture_output=capture)
        if check and proc.returncode != 0:
            said = (proc.stderr or proc.stdout or "")[-2000:] if capture else ""
            raise RehearsalError(f"vagrant {' '.join(args)} failed ({proc.returncode}) {said}")
        return proc

    def up(self, machines: list[str]) -> dict:
        """Box, probe, libvirtd, ``vagrant up``: the accelerator and the seconds each took."""
        require_root_on_linux()
        timings: dict = {}
        built = self.box.complete()
        self.box.build()
        timings["box_build_seconds"] = self.box.build_seconds() if not built else 0.0
        if recorded_accel(self.box) is None:
            started = time.monotonic()
            accel, why = probe(self.box)
            timings["probe_seconds"] = round(time.monotonic() - started, 1)
            say(f"accelerator: {accel} ({why})")
        else:
            say(f"accelerator: {self.accel} (probed before; rm {self.box.dir / 'accel'} to probe "
                "again)")
        timings["accel"] = self.accel
        ensure_libvirtd()
        add_box(self.box)
        started = time.monotonic()
        self.vagrant("up", "--provider", "libvirt", *machines)
        timings["vagrant_up_seconds"] = round(time.monotonic() - started, 1)
        return timings

    def destroy(self, machines: list[str] | None = None) -> None:
        ensure_libvirtd()
        self.vagrant("destroy", "-f", *(machines or []))

    def ssh_config(self, machines: list[str], target: Path) -> Path:
        """``vagrant ssh-config`` into ``target`` (for testinfra and plain ssh)."""
        out = self.vagrant("ssh-config", *machines, capture=True, timeout=300).stdout
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=target.parent)
        with os.fdopen(fd, "w") as handle:
            handle.write(out)
        os.replace(tmp, target)
        return target


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(
        prog="pginfra vm",
        description="Vagrant VM rehearsals with libvirt, from a Debian 12 box built here.")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("box", help="build the box (debootstrap, once; cached)")
    sub.add_parser("probe", help="KVM or plain emulation (TCG): boot a guest kernel and see")
    up_cmd = sub.add_parser("up", help="box, probe, libvirtd, vagrant up")
    up_cmd.add_argument("machines", nargs="*", help="Vagrantfile machines (default: all)")
    down = sub.add_parser("down", help="vagrant destroy -f")
    down.add_argument("machines", nargs="*")
    args = parser.parse_args(argv)
    box = Box()
    try:
        require_root_on_linux()
        if args.command == "box":
            box.build()
        elif args.command == "probe":
            box.build()
            accel, why = probe(box)
            print(f"{accel}: {why}")
        elif args.command == "up":
            print(json.dumps(Machines(box).up(args.machines)))
        elif args.command == "down":
            Machines(box).destroy(args.machines)
    except RehearsalError as exc:
        print(f"vm: error: {exc}", file=sys.stderr)
        return 2
    return 0
