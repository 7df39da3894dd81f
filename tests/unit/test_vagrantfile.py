import shutil
import subprocess

import pytest

from pginfra import ROOT


@pytest.mark.skipif(shutil.which("vagrant") is None,
                    reason="vagrant is not installed (./dev.sh test installs Debian's vagrant)")
def test_vagrant_validate(tmp_path):
    shutil.copy(ROOT / "Vagrantfile", tmp_path / "Vagrantfile")
    proc = subprocess.run(["vagrant", "validate"], cwd=tmp_path, capture_output=True, text=True,
                          env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path),
                               "VAGRANT_HOME": str(tmp_path / ".vagrant.d")}, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "validated successfully" in proc.stdout
