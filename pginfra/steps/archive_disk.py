"""Step: the WAL archive on a block device of its own (``postgres_wal_archive_device``)."""

from __future__ import annotations

from pyinfra import host
from pyinfra.api import deploy
from pyinfra.operations import server

from pginfra import archive_disk
from pginfra.facts import BlockDevice, Mountpoint
from pginfra.settings import Settings, SettingsError, database_hosts_only


@database_hosts_only()
@deploy("The WAL archive's own disk")
def mount_wal_archive(settings: Settings):
    """
    With ``postgres_wal_archive_device``: an ext4 file system on it when it is blank, mounted
    on ``postgres_wal_archive_dir`` through ``/etc/fstab`` by UUID (``nofail``: a missing disk
    does not stop the boot), its root postgres' with mode 0700; before the repository and the
    server use the directory. A device in use, not blank, or a directory already holding files
    is refused before anything changes. Without the setting, nothing.

    .. code:: python

        mount_wal_archive(load_settings())
    """
    device = settings.postgres_wal_archive_device
    if not device:
        return
    directory = settings.postgres_wal_archive_dir
    found = host.get_fact(BlockDevice, device=device)
    mount = host.get_fact(Mountpoint, path=directory)
    problems = archive_disk.device_problems(device, found, directory, mount)
    if problems:
        raise SettingsError("invalid inventory data for this host, nothing was changed:\n"
                            + "\n".join(f"  {settings.host_name}: {p}" for p in problems))
    if archive_disk.needs_mount(found, mount):
        what = "an ext4 file system, " if not found.get("fstype") else ""
        server.shell(name=f"{device}: {what}mounted on {directory} (fstab by UUID, postgres, "
                          "0700)",
                     commands=[archive_disk.mount_script(device, directory)])
