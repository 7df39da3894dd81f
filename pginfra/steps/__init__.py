"""The runbook's steps: each is a pyinfra ``@deploy`` in its own module, called in order by
``deploys/postgres.py`` with the host's validated settings."""

from pginfra.steps.cluster import create_cluster
from pginfra.steps.packages import install_packages
from pginfra.steps.service import run_service

__all__ = ["create_cluster", "install_packages", "run_service"]
