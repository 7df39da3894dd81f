"""What the benchmarks share: a rehearsal lab of their own with its own secrets and CA in a
temporary directory, on a subnet that is free on this machine, torn down whatever happens; the
command line, with the ``--short`` mode every benchmark has; and where the figures go.

``--short`` runs the same code on small data for a few seconds: the test suite runs every
benchmark that way (tests/e2e/test_benchmarks.py), so a change that breaks one is caught. Its
figures go to ``bench/results/NAME.short.json`` and mean nothing; the full mode's go to
``bench/results/NAME.json``."""

from __future__ import annotations

import argparse
import contextlib
import ipaddress
import json
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from pginfra.secrets import generate_missing  # noqa: E402
from pginfra_lab.rehearsal import Lab, free_subnet, machine_lock  # noqa: E402

BIN = Path(sys.executable).parent


def parse_args(parser: argparse.ArgumentParser, short: dict) -> argparse.Namespace:
    """``parser``'s arguments plus ``--short``, which sets the options in ``short`` (small data,
    a few seconds) unless they are given."""
    parser.add_argument("--short", action="store_true",
                        help="small data, a few seconds: the test suite's run (figures go to "
                             "bench/results/NAME.short.json)")
    args = parser.parse_args()
    if args.short:
        given = {arg.split("=")[0].lstrip("-").replace("-", "_") for arg in sys.argv[1:]}
        for key, value in short.items():
            if key not in given:
                setattr(args, key, value)
    return args


@contextlib.contextmanager
def bench_lab(bridge: str, prefix: str, roles: list[str], hosts: int = 1,
              **lab_options) -> Iterator[tuple[Lab, dict, Path]]:
    """Boot ``hosts`` hosts on a free subnet; yield the lab, the environment a deploy to it runs
    with, and the temporary directory (``control/`` in it holds the secrets file and the CA)."""
    with tempfile.TemporaryDirectory(prefix="pginfra-bench-") as tmp:
        control = Path(tmp) / "control"
        generate_missing([*roles, "backup_cipher_pass"], control / "secrets.yaml")
        os.environ["PGINFRA_SECRETS_FILE"] = str(control / "secrets.yaml")
        env = dict(os.environ, PGINFRA_REHEARSAL_DIR=f"{tmp}/lab",
                   PGINFRA_CA_DIR=str(control / "ca"))
        lab = None
        try:
            with machine_lock():  # another benchmark may be choosing a subnet right now
                lab_options.setdefault("subnet", free_subnet(first=2))
                lab = Lab(state_dir=Path(tmp) / "lab", bridge=bridge, prefix=prefix,
                          **lab_options)
                lab.up(hosts)
            yield lab, env, Path(tmp)
        finally:  # thrown away: no clean shutdown (an HA leader may wait on a standby gone)
            if lab is not None and lab.load_state():
                lab.down(fast=True)
            shutil.rmtree(control, ignore_errors=True)


def deploy_data_args(data: dict) -> list[str]:
    """``--data key=json`` arguments for pyinfra."""
    args = []
    for key, value in data.items():
        args += ["--data", f"{key}={json.dumps(value)}"]
    return args


def deploy(env: dict, data: dict) -> None:
    """The runbook on the bench lab with ``data`` over the rehearsal inventory's; stops the
    benchmark with pyinfra's output when it fails."""
    import subprocess

    proc = subprocess.run([str(BIN / "pyinfra"), "-y", "inventories/rehearsal.py",
                           "deploys/postgres.py", *deploy_data_args(data)], cwd=ROOT, env=env,
                          capture_output=True, text=True)
    if proc.returncode:
        raise SystemExit(f"the deploy failed:\n{proc.stdout[-3000:]}{proc.stderr[-3000:]}")


def host_sql(lab: Lab, node: str, query: str, db: str = "postgres",
             timeout: float = 3600) -> str:
    """Run SQL on ``node`` as the postgres superuser over its Unix socket; its output."""
    return lab.ssh(node, ["cd", "/tmp", "&&", "runuser", "-u", "postgres", "--", "psql",
                          "-XAtq", "-d", db, "-c", repr(query)], timeout=timeout).stdout.strip()


def address(lab: Lab, node: str) -> str:
    return lab.hosts[node]["address"]


def gateway(lab: Lab) -> str:
    """This machine's address on the lab's bridge, where the hosts reach it."""
    return str(next(ipaddress.ip_network(lab.subnet).hosts()))


def write_results(name: str, figures: dict, short: bool = False) -> None:
    out = ROOT / f"bench/results/{name}{'.short' if short else ''}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(figures, indent=2) + "\n")
    print(json.dumps(figures, indent=2))
