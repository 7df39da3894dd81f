"""Foundation benchmark: what rehearsing and deploying cost, against the floor of a bare install.

    .venv/bin/python bench/foundation.py [--keep-rootfs-cache] [--short]

In one process, on rehearsal hosts of a lab of its own (pgb1, pgb2, on a free subnet):
  1. builds the debootstrap root filesystem from scratch into a temporary cache (not with
     --keep-rootfs-cache, which --short implies);
  2. boots two hosts;
  3. baseline: a bare ``apt-get update && apt-get install -y postgresql pgbouncer`` on pgb2;
  4. the first ``pyinfra deploys/postgres.py`` run on pgb1 (the whole runbook: server,
     TLS, configuration, roles, PgBouncer), then a second (no-op) run.
It prints wall times and the ratios of each deploy to the baseline, and writes them to
bench/results/foundation.json (foundation.short.json with --short). Nothing here is asserted:
it is a measurement, not a test.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from common import parse_args, write_results  # noqa: E402

from pginfra.secrets import generate_missing  # noqa: E402
from pginfra_lab.rehearsal import Lab, free_subnet, machine_lock  # noqa: E402

BIN = Path(sys.executable).parent


def timed(fn, *args, **kwargs) -> tuple[float, object]:
    started = time.monotonic()
    result = fn(*args, **kwargs)
    return time.monotonic() - started, result


def deploy(lab: Lab) -> dict:
    control = lab.state_dir.parent / "control"
    # pgb2 is the bare-install baseline, not a server of the inventory (it would be pgb1's
    # standby).
    env = dict(os.environ, PGINFRA_REHEARSAL_DIR=str(lab.state_dir),
               PGINFRA_SECRETS_FILE=str(control / "secrets.yaml"),
               PGINFRA_CA_DIR=str(control / "ca"), PGINFRA_REHEARSAL_HOSTS="pgb1")
    proc = subprocess.run(
        [str(BIN / "pyinfra"), "-y", "--json", "inventories/rehearsal.py",
         "deploys/postgres.py"],
        cwd=ROOT, env=env, capture_output=True, text=True, check=True,
    )
    return json.loads(proc.stdout)["results"]["totals"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--keep-rootfs-cache", action="store_true",
                        help="use the shared root filesystem cache instead of timing a build")
    args = parse_args(parser, short={"keep_rootfs_cache": True})

    figures: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="pginfra-bench-") as tmp:
        cache = Path("/var/cache/pginfra") if args.keep_rootfs_cache else Path(tmp) / "cache"
        lab = Lab(state_dir=Path(tmp) / "lab", cache_dir=cache, bridge="pginfra-bench",
                  prefix="pgb")
        generate_missing(["postgres", "app", "pgbouncer_admin", "backup_cipher_pass"],
                         Path(tmp) / "control" / "secrets.yaml")
        try:
            if not args.keep_rootfs_cache:
                figures["rootfs_build_s"], _ = timed(lab.build_rootfs)
            with machine_lock():  # another benchmark may be choosing a subnet right now
                lab.subnet = free_subnet(first=2)
                figures["lab_up_2_hosts_s"], _ = timed(lab.up, 2)
            figures["host_boot_s"] = lab.hosts["pgb1"]["boot_seconds"]

            bare = "export DEBIAN_FRONTEND=noninteractive; apt-get update -q >/dev/null && " \
                   "apt-get install -y -q postgresql pgbouncer >/dev/null"
            figures["baseline_bare_apt_install_s"], _ = timed(
                lab.ssh, "pgb2", ["sh", "-c", shlex.quote(bare)], timeout=900)
            figures["first_deploy_s"], first = timed(deploy, lab)
            figures["second_deploy_s"], second = timed(deploy, lab)
            figures["first_deploy_changed_ops"] = first["success"]
            figures["second_deploy_changed_ops"] = second["success"]
        finally:
            if lab.load_state():
                lab.down()

    base = figures["baseline_bare_apt_install_s"]
    figures["ratio_first_deploy_to_baseline"] = figures["first_deploy_s"] / base
    figures["ratio_second_deploy_to_baseline"] = figures["second_deploy_s"] / base
    write_results("foundation", {k: round(v, 3) for k, v in figures.items()}, args.short)
    return 0


if __name__ == "__main__":
    sys.exit(main())
