"""
Vagrant rehearsal: the machines of the top-level Vagrantfile, through pyinfra's vagrant connector
(it runs ``vagrant ssh-config`` for the addresses, user and key).

    vagrant up
    pyinfra -y inventories/vagrant.py deploys/postgres.py
    vagrant ssh-config > .vagrant/ssh-config
    pytest tests/host --hosts=pg1 --ssh-config=.vagrant/ssh-config

pg1 is the primary and pg2 its streaming standby, over the private network of the Vagrantfile.
"""

primary = ["@vagrant/pg1"]

postgres_servers = [
    ("@vagrant/pg1", {"postgres_listen_addresses": ["localhost", "192.168.56.11"]}),
    ("@vagrant/pg2", {"postgres_listen_addresses": ["localhost", "192.168.56.12"]}),
]
