"""`vagrant validate` on the Vagrantfile. `--ignore-provider` checks everything but the provider
blocks, so no hypervisor plugin is needed on the machine that runs the suite; the broken copies
prove the check still fails."""

import shutil
import subprocess

import pytest

from pginfra import ROOT

pytestmark = pytest.mark.skipif(
    shutil.which("vagrant") is None,
    reason="vagrant is not installed (./dev.sh test installs Debian's vagrant)")


def validate(tmp_path, text: str) -> subprocess.CompletedProcess:
    (tmp_path / "Vagrantfile").write_text(text)
    return subprocess.run(["vagrant", "validate", "--ignore-provider"], cwd=tmp_path,
                          capture_output=True, text=True,
                          env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path),
                               "VAGRANT_HOME": str(tmp_path / ".vagrant.d")}, timeout=120)


def test_vagrant_validate(tmp_path):
    proc = validate(tmp_path, (ROOT / "Vagrantfile").read_text())
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "validated successfully" in proc.stdout


@pytest.mark.parametrize("old, new, message", [
    ("node.vm.hostname = name", "node.vm.hostnme = name", "shouldn't exist: hostnme"),
    ('config.vm.box = "debian/bookworm64"', 'config.vm.box = "debian/bookworm64', "syntax"),
])
def test_a_broken_vagrantfile_fails(tmp_path, old, new, message):
    text = (ROOT / "Vagrantfile").read_text()
    assert old in text
    proc = validate(tmp_path, text.replace(old, new))
    assert proc.returncode != 0
    assert message in (proc.stdout + proc.stderr).lower()
