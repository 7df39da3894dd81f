"""
Production inventory: an example to copy and edit.

    pyinfra inventories/prod.py deploys/postgres.py          # asks before changing anything
    pyinfra inventories/prod.py deploys/postgres.py --dry    # plan only

Each top-level list is a pyinfra group; a ``(hosts, data)`` tuple gives the group its data.
Host data overrides group data; ``--data key=value`` overrides both. Every key pginfra reads is in
docs/settings.md, and a typo stops the run before anything changes.

Adding a host is one entry: append ``("db3.example.com", {...})`` to ``postgres_servers``.
SSH settings (``ssh_user``, ``ssh_key``, ``ssh_port``...) are pyinfra's own connector data.
"""

# The primary: the server applications write to. Every other host of postgres_servers is its
# streaming standby (or, with postgres_upstream, a standby's). The host's own data is given
# once, in postgres_servers. Promoting a standby: README, "Promoting a standby".
primary = ["db1.example.com"]

postgres_servers = (
    [
        # Host data (the tuple's dict) overrides the group data below.
        # The server listens on the address the other servers (its standbys) reach it at.
        ("db1.example.com", {"ssh_hostname": "10.20.0.11",
                             "postgres_listen_addresses": ["localhost", "10.20.0.11"]}),
        ("db2.example.com", {"ssh_hostname": "10.20.0.12", "postgres_port": 5433,
                             "postgres_listen_addresses": ["localhost", "10.20.0.12"]}),
        # Add a host here, and it becomes a streaming standby of the primary, e.g.:
        # ("db3.example.com", {"ssh_hostname": "10.20.0.13",
        #                      "postgres_listen_addresses": ["localhost", "10.20.0.13"]}),
    ],
    {
        # Group data: applies to every host above.
        "ssh_user": "admin",
        "_sudo": True,
        "postgres_version": 15,
        "postgres_cluster": "main",
        "postgres_port": 5432,
        "postgres_locale": "C.UTF-8",
        "postgres_extra_packages": [],
        # SQL bundles (directories under sql/) per database; '*' is every managed database.
        # A pg_dump goes to pginfra_migrate_dump_dir before pending files are applied.
        "postgres_sql_bundles": {"*": ["baseline"]},
        # Streaming replication (docs/settings.md): commits wait for one standby's flush.
        "postgres_synchronous_standbys": "ANY 1 (db2.example.com)",
    },
)
