"""Inventories load through pyinfra's own inventory loader, and their data validates."""

import json

import pytest
from pyinfra.api import State
from pyinfra.api.exceptions import PyinfraError
from pyinfra.context import ctx_state
from pyinfra_cli.inventory import make_inventory as _make_inventory

from pginfra import ROOT
from pginfra.settings import problems
from pginfra_lab.inventory import parse_ssh_config, rehearsal_hosts


def make_inventory(path, **kwargs):
    """Load an inventory file the way the pyinfra CLI does (it needs a State in context)."""
    with ctx_state.use(State()):
        return _make_inventory(path, **kwargs)


def test_prod_inventory_loads_and_validates():
    inventory = make_inventory(str(ROOT / "inventories/prod.py"), cwd=str(ROOT))
    hosts = list(inventory)
    assert [h.name for h in hosts][:1] == ["db1.example.com"]
    for host in hosts:
        assert problems(host.data.dict()) == [], host.name
    primary = inventory.get_host("db1.example.com")
    assert {"postgres_servers", "primary"} <= set(primary.groups)
    assert primary.data.postgres_port == 5432  # group data
    assert inventory.get_host("db2.example.com").data.postgres_port == 5433  # host data wins


def test_rehearsal_inventory_reads_the_lab(tmp_path, monkeypatch):
    (tmp_path / "hosts.json").write_text(json.dumps({
        "user": "root", "key": "/k/id_ed25519", "known_hosts": "/k/known_hosts",
        "subnet": "10.77.0.0/24",
        "hosts": {"pg2": {"address": "10.77.0.11"}, "pg1": {"address": "10.77.0.10"}},
    }))
    monkeypatch.setenv("PGINFRA_REHEARSAL_DIR", str(tmp_path))
    inventory = make_inventory(str(ROOT / "inventories/rehearsal.py"), cwd=str(ROOT))
    pg1 = inventory.get_host("pg1")
    assert pg1.data.ssh_hostname == "10.77.0.10"
    assert pg1.data.ssh_key == "/k/id_ed25519"
    assert pg1.data.ssh_strict_host_key_checking == "yes"
    assert [h.name for h in inventory] == ["pg1", "pg2"]


def test_rehearsal_inventory_without_a_lab_says_what_to_do(tmp_path):
    with pytest.raises(PyinfraError, match="run 'pginfra rehearsal up' first"):
        rehearsal_hosts(tmp_path)


def test_vagrant_inventory_names_the_vagrantfile_machines():
    text = (ROOT / "inventories/vagrant.py").read_text()
    vagrantfile = (ROOT / "Vagrantfile").read_text()
    assert 'NET = ENV.fetch("PGINFRA_VM_NET", "192.168.56")' in vagrantfile
    assert '_NET = os.environ.get("PGINFRA_VM_NET", "192.168.56")' in text
    for name, host in (("pg1", "11"), ("pg2", "12")):
        assert f'"{name}": f"{{_NET}}.{host}"' in text
        assert f'"{name}" => {{ ip: "#{{NET}}.{host}"' in vagrantfile


def test_vagrant_ssh_config_is_read_as_vagrant_writes_it():
    """What `vagrant ssh-config pg1 pg2` printed for two libvirt machines."""
    text = """Host pg1
  HostName 192.168.121.158
  User vagrant
  Port 22
  UserKnownHostsFile /dev/null
  StrictHostKeyChecking no
  PasswordAuthentication no
  IdentityFile /var/lib/pginfra/e2e-vm/vagrant/machines/pg1/libvirt/private_key
  IdentitiesOnly yes
  LogLevel FATAL
  PubkeyAcceptedKeyTypes +ssh-rsa
  HostKeyAlgorithms +ssh-rsa

Host pg2
  HostName 192.168.121.7
  User vagrant
  Port 2222
  IdentityFile "/root/my keys/pg2"
"""
    hosts = parse_ssh_config(text)
    assert hosts["pg1"]["hostname"] == "192.168.121.158"
    assert hosts["pg1"]["identityfile"].endswith("/machines/pg1/libvirt/private_key")
    assert hosts["pg2"] == {"hostname": "192.168.121.7", "user": "vagrant", "port": "2222",
                            "identityfile": "/root/my keys/pg2"}
