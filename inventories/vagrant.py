"""
Vagrant rehearsal: the machines of the top-level Vagrantfile, through pyinfra's vagrant connector
(it runs ``vagrant ssh-config`` for the addresses, user and key).

    vagrant up
    pyinfra -y inventories/vagrant.py deploys/postgres.py
    vagrant ssh-config > .vagrant/ssh-config
    pytest tests/host --hosts=pg1 --ssh-config=.vagrant/ssh-config

pg2 is there for replicas later; until then it is a second independent server.
"""

primary = ["@vagrant/pg1"]

postgres_servers = ["@vagrant/pg1", "@vagrant/pg2"]
