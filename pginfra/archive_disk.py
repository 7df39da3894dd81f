"""A block device of its own for the WAL archive (``postgres_wal_archive_device``).

The archive then survives a full root file system and a full root survives the archive: on a
VM, a second virtual disk; on a real host, a disk or a logical volume. pginfra makes an ext4 file
system only on a device that is blank (no file system, partition table or other signature), mounts
it on ``postgres_wal_archive_dir`` through ``/etc/fstab`` by UUID, and hands its root to postgres
(mode 0700). ``nofail``: a host whose archive disk is missing still boots and serves (archiving
fails, the health check says so, WAL waits in pg_wal), rather than stopping in emergency mode.

    problems = device_problems(settings.postgres_wal_archive_device, device_fact,
                               settings.postgres_wal_archive_dir, mount_fact)
    if needs_mount(...): server.shell(commands=[mount_script(...)])
"""

from __future__ import annotations

import shlex

FILESYSTEMS = ("ext4", "xfs")
MOUNT_OPTIONS = "defaults,noatime,nofail,x-systemd.device-timeout=30s"
LABEL = "pg-wal-archive"


def device_problems(device: str, found: dict, directory: str, mount: dict) -> list[str]:
    """Why pginfra would not mount ``device`` (the ``BlockDevice`` fact) on ``directory``
    (the ``Mountpoint`` fact), each naming the setting."""
    key = "postgres_wal_archive_device"
    if not found:
        return [f"{key}: {device} is not a block device on this host"]
    problems = []
    if found.get("type") == "rom":
        problems.append(f"{key}: {device} is a read-only device ({found['type']})")
    if found.get("children"):
        problems.append(f"{key}: {device} holds partitions: name the partition meant for the "
                        f"archive (e.g. {device}1), or wipe the partition table first")
    elsewhere = [m for m in found.get("mountpoints", []) if m != directory]
    if elsewhere:
        problems.append(f"{key}: {device} is mounted at {', '.join(elsewhere)}: pginfra takes "
                        "only a device nothing else uses")
    fstype = found.get("fstype", "")
    if fstype and fstype not in FILESYSTEMS:
        problems.append(f"{key}: {device} holds {fstype}, not a file system pginfra mounts "
                        f"({' or '.join(FILESYSTEMS)}); it makes one only on a blank device")
    elif not fstype and found.get("signatures"):
        problems.append(f"{key}: {device} is not blank (wipefs finds {found['signatures']}): "
                        "pginfra makes a file system only on a blank device; if nothing on it "
                        f"is wanted, 'wipefs -a {device}' first")
    source = mount.get("source", "")
    if source and source != found.get("path", device):
        problems.append(f"postgres_wal_archive_dir: {directory} is already mounted from "
                        f"{source}, not {device}")
    elif not source and mount.get("entries"):
        problems.append(f"postgres_wal_archive_dir: {directory} holds {mount['entries']} "
                        f"entries: mounting {device} over them would hide the archive; move "
                        "them onto the device first, or archive to a new directory")
    return problems


def fstab_entry(uuid: str, fstype: str) -> str:
    """What the ``Mountpoint`` fact reads back from a finished ``/etc/fstab`` line."""
    return f"UUID={uuid} {fstype} {MOUNT_OPTIONS}"


def needs_mount(found: dict, mount: dict) -> bool:
    """Whether the device is not yet the directory's file system, in fstab and postgres'."""
    if not found.get("uuid") or not mount:
        return True
    return (mount.get("source") != found.get("path")
            or mount.get("fstab") != fstab_entry(found["uuid"], found["fstype"])
            or mount.get("owner") != "postgres" or mount.get("mode") != "700")


def mount_script(device: str, directory: str, fstab: str = "/etc/fstab") -> str:
    """The shell commands that make it so: run as root, idempotent, and refusing (with a
    non-zero exit) a device that gained a signature since the plan."""
    dev, d, tab = shlex.quote(device), shlex.quote(directory), shlex.quote(fstab)
    new = shlex.quote(fstab + ".pginfra")
    return "\n".join([
        "set -eu",
        f'if [ -z "$(blkid -p -o value -s TYPE {dev} || true)" ]; then',
        f'  if [ -n "$(wipefs --no-act --noheadings {dev})" ]; then',
        f'    echo "{device} is not blank: nothing was made on it" >&2; exit 1',
        "  fi",
        f"  mkfs.ext4 -q -L {LABEL} {dev}",
        "fi",
        f"uuid=$(blkid -p -o value -s UUID {dev}); fstype=$(blkid -p -o value -s TYPE {dev})",
        'case "$fstype" in ext4|xfs) ;; *) '
        f'echo "{device} holds $fstype, not ext4 or xfs: not mounted" >&2; exit 1;; esac',
        'test -n "$uuid"',
        f"awk -v d={d} '$1 ~ /^#/ || $2 != d' {tab} > {new}",
        f'printf "UUID=%s %s %s %s 0 2\\n" "$uuid" {d} "$fstype" {MOUNT_OPTIONS} >> {new}',
        f"chmod 644 {new} && mv {new} {tab}",
        "if [ -d /run/systemd/system ]; then systemctl daemon-reload; fi",
        f"mkdir -p {d}",
        f"if ! mountpoint -q {d}; then mount --fstab {tab} {d}; fi",
        f"chown postgres:postgres {d} && chmod 0700 {d}",
    ])
