"""
Rehearsal hosts booted on this machine by ``pginfra rehearsal up``, reached over SSH with the
lab's own key and known_hosts, exactly as production hosts are reached.

    pginfra rehearsal up --hosts 2
    pyinfra -y inventories/rehearsal.py deploys/postgres.py

``PGINFRA_REHEARSAL_DIR`` chooses another lab (default /var/lib/pginfra/rehearsal).
"""

from pginfra.inventory import rehearsal_hosts, rehearsal_lab

lab = rehearsal_lab()

postgres_servers = (
    rehearsal_hosts(lab),
    {
        # The lab network plays the application network: clients there may connect with TLS.
        "postgres_hba": [
            {"database": "all", "user": "all", "address": lab["subnet"],
             "comment": "the rehearsal lab network"},
        ],
    },
)
