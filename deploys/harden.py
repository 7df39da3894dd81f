"""
Only the SQL step of the runbook: apply the SQL bundles of ``postgres_sql_bundles`` to the
databases of a host that ``deploys/postgres.py`` has already set up.

    pyinfra inventories/prod.py deploys/harden.py          # apply what is pending
    pyinfra inventories/prod.py deploys/harden.py --dry    # list the files that would run
"""

from pginfra.settings import load_settings
from pginfra.steps import harden_databases

settings = load_settings()  # 0. validate this host's inventory data

harden_databases(settings)  # 9. SQL bundles as tracked migrations
