"""
Rehearsal hosts booted on this machine by ``pginfra rehearsal up``, reached over SSH with the
lab's own key and known_hosts, exactly as production hosts are reached.

    pginfra rehearsal up --hosts 3      # pg1 the primary, pg2 and pg3 its standbys
    pginfra secrets init postgres app pgbouncer_admin replicator backup_cipher_pass
                                        # random passwords, git-ignored
    pyinfra -y inventories/rehearsal.py deploys/postgres.py

``PGINFRA_REHEARSAL_HA=patroni`` deploys the hosts (three) as a Patroni cluster with etcd
(secrets also rewinder and patroni_restapi); ``PGINFRA_REHEARSAL_DATA`` (a JSON object) adds
settings for every host, such as ``{"ha_synchronous_mode": true}``.
``PGINFRA_REHEARSAL_ETCD=pg1,pg2,pg4`` names etcd's members (the group ``etcd``): a host there
and not in ``PGINFRA_REHEARSAL_HOSTS`` is one of etcd's own, with etcd and nothing else.
``PGINFRA_REHEARSAL_DIR`` chooses another lab (default /var/lib/pginfra/rehearsal);
``PGINFRA_REHEARSAL_HOSTS=pg1,pg2`` deploys to those hosts only (the others are not in the
inventory: a standby taken out); ``PGINFRA_REHEARSAL_PRIMARY=pg2`` names another primary.
"""

import json
import os

from pginfra_lab.inventory import rehearsal_hosts, rehearsal_lab

lab = rehearsal_lab()
_hosts = rehearsal_hosts(lab)

# The first host is the primary (or the one $PGINFRA_REHEARSAL_PRIMARY names, to rehearse a
# promotion); every other host becomes its streaming standby.
primary = [os.environ.get("PGINFRA_REHEARSAL_PRIMARY") or (_hosts[0][0] if _hosts else "")]

_data = {
    # An application as production would have one: an owner role that cannot log in, an
    # application role that can, and its database.
    "postgres_roles": [
        {"name": "app_owner"},
        {"name": "app", "login": True, "connection_limit": 50, "member_of": ["app_owner"]},
        {"name": "community_owner"},
    ],
    "postgres_databases": [
        {"name": "app", "owner": "app_owner", "connect": ["app"]},
        {"name": "community", "owner": "community_owner", "connect": ["app"]},
    ],
    # The worked example: the community system of the hardening guide, loaded with
    # generated data, then hardened as tracked migrations next to the baseline bundle that
    # every database gets.
    "pginfra_example_community": True,
    "postgres_sql_bundles": {"*": ["baseline"], "community": ["examples/community"]},
    # The lab network plays the application network: clients there may connect with TLS.
    "postgres_hba": [
        {"database": "app", "user": "app", "address": lab["subnet"],
         "comment": "the application, from the rehearsal lab network"},
    ],
    **({"postgres_ha": os.environ["PGINFRA_REHEARSAL_HA"]}
       if os.environ.get("PGINFRA_REHEARSAL_HA") else {}),
    **json.loads(os.environ.get("PGINFRA_REHEARSAL_DATA") or "{}"),
}

postgres_servers = (_hosts, _data)

# With PGINFRA_REHEARSAL_ETCD=pg1,pg2,pg4: etcd's members; those that are not database hosts
# (not in PGINFRA_REHEARSAL_HOSTS) run etcd and nothing else.
if os.environ.get("PGINFRA_REHEARSAL_ETCD"):
    _servers = {name for name, _ in _hosts}
    etcd = ([name if name in _servers else (name, data)
             for name, data in rehearsal_hosts(lab, "PGINFRA_REHEARSAL_ETCD")], _data)
