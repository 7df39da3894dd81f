"""Helpers for inventory files."""

from __future__ import annotations

import json
import os
from pathlib import Path

from pyinfra.api.exceptions import PyinfraError


def rehearsal_lab(state_dir: str | os.PathLike | None = None) -> dict:
    """What ``pginfra rehearsal up`` recorded: subnet, hosts and their addresses, key paths."""
    from pginfra_lab.rehearsal import DEFAULT_STATE_DIR

    state_dir = Path(state_dir or os.environ.get("PGINFRA_REHEARSAL_DIR") or DEFAULT_STATE_DIR)
    state_file = state_dir / "hosts.json"
    if not state_file.exists():
        raise PyinfraError(
            f"no rehearsal hosts in {state_dir}: run 'pginfra rehearsal up' first"
        )
    return json.loads(state_file.read_text())


def rehearsal_hosts(lab: dict | str | os.PathLike | None = None,
                    variable: str = "PGINFRA_REHEARSAL_HOSTS") -> list[tuple[str, dict]]:
    """
    pyinfra host entries for the hosts of a rehearsal lab: SSH with the lab's key and
    known_hosts, and the server listening on the host's lab address too.
    ``$PGINFRA_REHEARSAL_HOSTS`` (names, comma or space separated; ``variable`` names another)
    keeps only those hosts.

    >>> rehearsal_hosts()  # doctest: +SKIP
    [('pg1', {'ssh_hostname': '10.77.0.10', 'ssh_user': 'root', ...})]
    """
    state = lab if isinstance(lab, dict) else rehearsal_lab(lab)
    only = os.environ.get(variable, "").replace(",", " ").split()
    unknown = [name for name in only if name not in state["hosts"]]
    if unknown:
        raise PyinfraError(f"{variable} names {', '.join(unknown)}: the lab has "
                           f"{', '.join(sorted(state['hosts']))}")
    return [
        (
            name,
            {
                "ssh_hostname": h["address"],
                "ssh_user": state["user"],
                "ssh_key": state["key"],
                "ssh_known_hosts_file": state["known_hosts"],
                "ssh_strict_host_key_checking": "yes",
                "ssh_allow_agent": False,
                "ssh_look_for_keys": False,
                "postgres_listen_addresses": ["localhost", h["address"]],
            },
        )
        for name, h in sorted(state["hosts"].items())
        if not only or name in only
    ]
