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


def parse_ssh_config(text: str) -> dict[str, dict[str, str]]:
    """``vagrant ssh-config``'s output: each ``Host`` and its options (keys lower-cased).

    >>> parse_ssh_config("Host pg1\\n  HostName 192.168.121.5\\n  Port 22\\n")
    {'pg1': {'hostname': '192.168.121.5', 'port': '22'}}
    """
    hosts: dict[str, dict[str, str]] = {}
    current: dict[str, str] | None = None
    for line in text.splitlines():
        key, _, value = line.strip().partition(" ")
        if not key or key.startswith("#"):
            continue
        if key.lower() == "host":
            current = hosts.setdefault(value.strip(), {})
        elif current is not None:
            current.setdefault(key.lower(), value.strip().strip('"'))
    return hosts


def vagrant_hosts(names: list[str] | None = None, cwd: str | os.PathLike | None = None
                  ) -> list[tuple[str, dict]]:
    """
    pyinfra host entries for the running machines of the Vagrantfile (``names``: only those),
    named as Vagrant names them (pyinfra's ``@vagrant/NAME`` would give the host the name
    ``@vagrant/pg1``, which pginfra cannot use in certificate files and replication slots),
    reached as ``vagrant ssh-config`` says, with sudo.

    >>> vagrant_hosts(["pg1"])  # doctest: +SKIP
    [('pg1', {'ssh_hostname': '192.168.121.5', 'ssh_port': 22, 'ssh_user': 'vagrant', ...})]
    """
    import subprocess

    status = subprocess.run(["vagrant", "status", "--machine-readable"], cwd=cwd,
                            capture_output=True, text=True, check=False).stdout
    running = [fields[1] for fields in (line.split(",", 3) for line in status.splitlines())
               if len(fields) == 4 and fields[2] == "state" and fields[3] == "running"]
    unknown = [name for name in names or [] if name not in running]
    if unknown:
        raise PyinfraError(f"Vagrant machines not running: {', '.join(unknown)} (running: "
                           f"{', '.join(running) or 'none'}); 'pginfra vm up NAME' first")
    wanted = [name for name in running if not names or name in names]
    if not wanted:
        return []
    proc = subprocess.run(["vagrant", "ssh-config", *wanted], cwd=cwd, capture_output=True,
                          text=True, check=False)
    if proc.returncode != 0:
        raise PyinfraError(f"vagrant ssh-config failed: {proc.stderr.strip()[-500:]}")
    config = parse_ssh_config(proc.stdout)
    return [(name, {"ssh_hostname": config[name]["hostname"],
                    "ssh_port": int(config[name].get("port", 22)),
                    "ssh_user": config[name].get("user", "vagrant"),
                    "ssh_key": config[name].get("identityfile"),
                    "ssh_allow_agent": False, "ssh_look_for_keys": False,
                    "_sudo": True})
            for name in wanted if name in config]
