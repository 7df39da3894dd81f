"""
Vagrant rehearsal: the running machines of the top-level Vagrantfile, reached as
``vagrant ssh-config`` says (address, user, key), the deploy run with sudo.

    .venv/bin/pginfra vm up pg1            # or plain `vagrant up` with VirtualBox
    .venv/bin/pyinfra -y inventories/vagrant.py deploys/postgres.py
    vagrant ssh-config pg1 > .vagrant/ssh-config
    .venv/bin/pytest tests/host --hosts=ssh://pg1 --ssh-config=.vagrant/ssh-config --sudo

pg1 is the primary, its WAL archive on the second disk the Vagrantfile gives it (/dev/vdb with
libvirt); pg2, when it runs, its streaming standby, over the private network of the
Vagrantfile. ``PGINFRA_VAGRANT_HOSTS=pg1`` (the default: the machines that run) chooses them;
``PGINFRA_VAGRANT_KNOWN_HOSTS=FILE`` keeps their host keys there (trusted at first use);
``PGINFRA_VAGRANT_DATA`` (a JSON object) adds settings for every host.
"""

import json
import os

from pginfra_lab.inventory import vagrant_hosts

_wanted = os.environ.get("PGINFRA_VAGRANT_HOSTS", "").replace(",", " ").split()
# A known_hosts of the rehearsal's own (each new VM makes new host keys), first use trusted.
_KNOWN_HOSTS = os.environ.get("PGINFRA_VAGRANT_KNOWN_HOSTS", "")
_NET = os.environ.get("PGINFRA_VM_NET", "192.168.56")  # the Vagrantfile's private network
_ADDRESSES = {"pg1": f"{_NET}.11", "pg2": f"{_NET}.12"}
_DISKS = {"pg1": "/dev/vdb"} if os.environ.get("VAGRANT_DEFAULT_PROVIDER", "libvirt") == \
    "libvirt" else {}

primary = ["pg1"]

postgres_servers = (
    [(name, {
        **ssh,
        "postgres_listen_addresses": ["localhost", _ADDRESSES[name]],
        **({"postgres_wal_archive_device": _DISKS[name]} if name in _DISKS else {}),
    }) for name, ssh in vagrant_hosts(_wanted or None) if name in _ADDRESSES],
    {
        **({"ssh_known_hosts_file": _KNOWN_HOSTS, "ssh_strict_host_key_checking": "accept-new"}
           if _KNOWN_HOSTS else {}),
        "postgres_roles": [
            {"name": "app_owner"},
            {"name": "app", "login": True, "connection_limit": 50, "member_of": ["app_owner"]},
        ],
        "postgres_databases": [{"name": "app", "owner": "app_owner", "connect": ["app"]}],
        "postgres_hba": [{"database": "app", "user": "app", "address": f"{_NET}.0/24",
                          "comment": "the application, from the Vagrant private network"}],
        "health_prometheus": True,
        **json.loads(os.environ.get("PGINFRA_VAGRANT_DATA") or "{}"),
    },
)
