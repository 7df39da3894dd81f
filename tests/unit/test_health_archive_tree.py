"""disk_wal_archive's walk of the archive as the check's user (postgres on a host): a directory
it cannot read is said, ext4's lost+found at the root of a filesystem (the archive on a device
of its own, postgres_wal_archive_device) is not. Run as nobody, on a real tmpfs mount."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from pginfra import ROOT

PYTHON3 = "/usr/bin/python3"
pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or not shutil.which("setpriv") or not shutil.which("mount")
    or not os.path.exists(PYTHON3),
    reason="needs root, setpriv and mount (util-linux) to walk a mount as another user, and "
           "the system's python3")


@pytest.fixture
def archive():
    """A 0755 place outside any 0700 folder: the package, and a tmpfs mounted as the archive."""
    base = Path(tempfile.mkdtemp(prefix="pginfra-tree-"))
    base.chmod(0o755)
    shutil.copytree(ROOT / "pginfra_host", base / "pkg" / "pginfra_host")
    mount = base / "wal-archive"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m,mode=0755", "tmpfs", str(mount)],
                   check=True)
    try:
        yield base, mount
    finally:
        subprocess.run(["umount", str(mount)], check=False)
        shutil.rmtree(base, ignore_errors=True)


def walk_as_nobody(base: Path, path: Path) -> list:
    code = ("import json, sys; from pginfra_host.health.storage import tree_bytes; "
            "print(json.dumps(tree_bytes(sys.argv[1])))")
    # the host's own Python, as on a host (this one's virtualenv may sit in a 0700 home)
    proc = subprocess.run(["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups",
                           PYTHON3, "-c", code, str(path)], capture_output=True,
                          text=True, env={"PYTHONPATH": str(base / "pkg")}, check=True)
    return json.loads(proc.stdout)


def test_lost_found_of_the_mount_is_not_a_problem_a_private_directory_is(archive):
    base, mount = archive
    (mount / "lost+found").mkdir(mode=0o700)
    (mount / "archive" / "main").mkdir(parents=True)
    (mount / "archive" / "main" / "seg").write_bytes(b"x" * 1000)
    for path in (mount / "archive", mount / "archive" / "main"):
        path.chmod(0o755)
    (mount / "archive" / "main" / "seg").chmod(0o644)
    assert walk_as_nobody(base, mount) == [1000, []]

    (mount / "archive" / "lost+found").mkdir(mode=0o700)  # not at a filesystem's root
    (mount / "private").mkdir(mode=0o700)
    assert walk_as_nobody(base, mount) == [
        1000, [str(mount / "archive" / "lost+found"), str(mount / "private")]]
