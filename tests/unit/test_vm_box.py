"""pginfra_lab.vm: the box's cache key and files, the accelerator verdict; the probe itself boots
the box's kernel for real in tests/e2e/test_vagrant_vm.py."""

import shutil

import pytest

from pginfra_lab import vm
from pginfra_lab.rehearsal import RehearsalError
from pginfra_lab.vm import (
    BOX_PACKAGES,
    PROBE_MARK,
    Machines,
    box_key,
    box_metadata,
    kernel_files,
    libvirt_driver,
    probe_verdict,
    vagrant_public_key,
)

BOOTED = f"[    1.2] Freeing unused kernel image memory\n[    1.3] {PROBE_MARK}\n"


def test_kvm_only_when_a_guest_really_ran_under_it():
    assert probe_verdict(BOOTED, None)[0] == "kvm"
    # /dev/kvm there, the guest silent after the firmware: emulation, and why
    assert probe_verdict("SeaBIOS (version 1.16.2)\n", BOOTED) == (
        "tcg", "plain emulation (TCG): under KVM the guest printed nothing past the firmware")
    assert probe_verdict(None, BOOTED) == ("tcg",
                                           "plain emulation (TCG): /dev/kvm is not usable here")
    with pytest.raises(RehearsalError, match="neither under KVM nor under TCG"):
        probe_verdict("", "Kernel panic - not syncing")
    assert (libvirt_driver("kvm"), libvirt_driver("tcg")) == ("kvm", "qemu")


def test_the_box_key_changes_with_what_the_box_is_built_from():
    assert box_key() == box_key()
    assert box_key() != box_key(packages=(*BOX_PACKAGES, "vim"))
    assert box_key() != box_key(cmdline="root=/dev/vda ro")
    assert box_key().startswith("bookworm-")
    assert box_metadata() == {"provider": "libvirt", "format": "qcow2", "virtual_size": 20}


def test_the_kernel_and_its_own_initramfs_are_taken(tmp_path):
    for name in ("vmlinuz-6.1.0-40-amd64", "vmlinuz-6.1.0-41-amd64",
                 "initrd.img-6.1.0-40-amd64", "initrd.img-6.1.0-41-amd64",
                 "initrd.img-6.1.0-41-amd64.dpkg-bak"):
        (tmp_path / name).write_text(name)
    assert kernel_files(tmp_path) == (tmp_path / "vmlinuz-6.1.0-41-amd64",
                                      tmp_path / "initrd.img-6.1.0-41-amd64")
    (tmp_path / "initrd.img-6.1.0-41-amd64").unlink()
    with pytest.raises(RehearsalError, match="no initramfs for kernel 6.1.0-41-amd64"):
        kernel_files(tmp_path)


def test_machines_of_a_test_are_kept_apart(tmp_path):
    env = Machines(dotfile=tmp_path / "vagrant", prefix="pginfra-e2e-").env()
    assert env["VAGRANT_DOTFILE_PATH"] == str(tmp_path / "vagrant")
    assert env["PGINFRA_VM_PREFIX"] == "pginfra-e2e-"
    assert env["PGINFRA_VM_CONSOLE_DIR"] == str(tmp_path)
    assert env["VAGRANT_DEFAULT_PROVIDER"] == "libvirt"
    assert env["PGINFRA_VM_DRIVER"] in ("kvm", "qemu")


@pytest.mark.skipif(shutil.which("vagrant") is None,
                    reason="vagrant is not installed (./dev.sh test installs Debian's vagrant)")
def test_vagrants_insecure_key_comes_from_debians_package():
    assert vagrant_public_key().startswith(("ssh-rsa ", "ssh-ed25519 "))


def _box_volume(stamp: int) -> str:
    return f"{vm.BOX_VOLUME_PREFIX}0_{stamp}_box.img"


def test_copies_of_the_box_no_machine_runs_on_go():
    pool = "/var/lib/libvirt/images/"
    volumes = {
        _box_volume(1796105378): None,
        _box_volume(1796110484): None,  # a machine made from an older box still runs on it
        "pginfra-e2e-pg1.img": pool + _box_volume(1796110484),
        "pginfra-e2e-pg1-vdb.qcow2": None,
        "someone-elses-box_vagrant_box_image_0_1_box.img": None,
    }
    assert vm.stale_box_volumes(volumes) == [_box_volume(1796105378)]
    assert vm.stale_box_volumes({"pginfra-e2e-pg1-vdb.qcow2": None}) == []
    assert vm.stale_box_volumes({}) == []
