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

# The primary: the server applications write to. Its group lets later steps (replication, SQL
# hardening, backups) single it out; the host's own data is given once, in postgres_servers.
primary = ["db1.example.com"]

postgres_servers = (
    [
        # Host data (the tuple's dict) overrides the group data below.
        ("db1.example.com", {"ssh_hostname": "10.20.0.11"}),
        ("db2.example.com", {"ssh_hostname": "10.20.0.12", "postgres_port": 5433}),
        # Add a host here, e.g.:
        # ("db3.example.com", {"ssh_hostname": "10.20.0.13"}),
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
    },
)
