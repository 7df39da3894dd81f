"""End to end: boot a rehearsal lab of our own, deploy to it with the real pyinfra CLI over SSH,
check the host with testinfra, deploy again, tear down. The lab is shared by the whole session.

It uses its own state directory, bridge, subnet and host names, so it never touches the lab that
``./dev.sh rehearse`` leaves running.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest

from pginfra import ROOT
from pginfra.secrets import generate_missing, password_for
from pginfra_lab.rehearsal import REQUIRED_TOOLS, Lab, free_subnet, plan_addresses

STATE_DIR = Path(os.environ.get("PGINFRA_E2E_DIR", "/var/lib/pginfra/e2e"))


def _subnet() -> str:
    """The subnet of an e2e lab an interrupted run left (the lab fixture takes it down and starts
    again on it), else the first free one from 10.77.1.0/24: the suite never depends on the
    machine being empty."""
    with contextlib.suppress(OSError, ValueError, KeyError):
        return json.loads((STATE_DIR / "hosts.json").read_text())["subnet"]
    if os.geteuid() != 0 or not shutil.which("ip"):
        return "10.77.1.0/24"  # the e2e tests are skipped here anyway
    return free_subnet(first=1)


E2E = {"state_dir": STATE_DIR, "subnet": _subnet(), "bridge": "pginfra-e2e", "prefix": "pgt"}
# The e2e lab's own secrets and CA, so the suite never touches the developer's .pginfra/.
SECRETS_FILE = E2E["state_dir"].parent / "e2e-control" / "secrets.yaml"
CA_DIR = E2E["state_dir"].parent / "e2e-control" / "ca"
BIN = Path(sys.executable).parent
# The control machine on the lab's bridge, and pgt1, the lab's first host.
GATEWAY, HOST = (lambda gw, hosts: (gw, hosts["pgt1"]))(*plan_addresses(E2E["subnet"], ["pgt1"]))
TIMINGS = ROOT / "bench/results/e2e-timings.json"


def _why_not_runnable() -> str | None:
    if platform.system() != "Linux":
        return "rehearsal hosts need Linux"
    if os.geteuid() != 0:
        return "rehearsal hosts need root"
    missing = [tool for tool in REQUIRED_TOOLS if not shutil.which(tool)]
    if missing:
        return f"not installed: {', '.join(missing)} (./dev.sh test installs them)"
    return None


def pytest_collection_modifyitems(config, items):
    reason = _why_not_runnable()
    for item in items:
        if "tests/e2e" in str(item.fspath):
            item.add_marker(pytest.mark.e2e)
            if reason:
                item.add_marker(pytest.mark.skip(reason=reason))
    # The whole VM rehearsal takes most of an hour under plain emulation: the suite runs its
    # short form, ./dev.sh test-vm (PGINFRA_E2E_VM=full) all of it.
    if os.environ.get("PGINFRA_E2E_VM") != "full":
        full = [item for item in items if item.get_closest_marker("vm_full")]
        if full:
            config.hook.pytest_deselected(items=full)
            items[:] = [item for item in items if not item.get_closest_marker("vm_full")]


@dataclass
class Deploy:
    returncode: int
    stdout: str
    stderr: str
    seconds: float

    @property
    def results(self) -> dict:
        return json.loads(self.stdout)["results"]

    @property
    def changed(self) -> list[str]:
        return [op["name"] for op in self.results["operations"] if op["success"]]


def control_env(lab: Lab, **extra: str) -> dict[str, str]:
    """The environment a deploy from the control machine runs with."""
    env = dict(os.environ, PGINFRA_REHEARSAL_DIR=str(lab.state_dir),
               PGINFRA_SECRETS_FILE=str(SECRETS_FILE), PGINFRA_CA_DIR=str(CA_DIR))
    env.update(extra)
    return env


def run_pyinfra(lab: Lab | None, *args: str, inventory: str = "inventories/rehearsal.py",
                deploy: str = "deploys/postgres.py", env: dict | None = None,
                timeout: float = 900) -> Deploy:
    env = env or control_env(lab)
    started = time.monotonic()
    proc = subprocess.run(
        [str(BIN / "pyinfra"), "-y", "--json", inventory, deploy, *args],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout,
    )
    return Deploy(proc.returncode, proc.stdout, proc.stderr, time.monotonic() - started)


def record_timing(name: str, seconds: float) -> None:
    TIMINGS.parent.mkdir(parents=True, exist_ok=True)
    data = json.loads(TIMINGS.read_text()) if TIMINGS.exists() else {}
    data[name] = round(seconds, 1)
    TIMINGS.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


@pytest.fixture(scope="session")
def lab():
    lab = Lab.default(**E2E)
    if lab.load_state():  # left over from an interrupted run: start clean
        lab.down()
        lab = Lab.default(**E2E)
    shutil.rmtree(SECRETS_FILE.parent, ignore_errors=True)
    generate_missing(["postgres", "app", "pgbouncer_admin", "pgbouncer_auth", "backup_cipher_pass"],
                     SECRETS_FILE)
    forward_before = Path("/proc/sys/net/ipv4/ip_forward").read_text()
    started = time.monotonic()
    lab.up(1)
    record_timing("lab_up_seconds", time.monotonic() - started)
    record_timing("host_boot_seconds", lab.hosts["pgt1"]["boot_seconds"])
    yield lab
    Lab.default(**E2E).down()
    shutil.rmtree(SECRETS_FILE.parent, ignore_errors=True)
    # The last lab down puts forwarding back as the first lab up found it.
    assert Path("/proc/sys/net/ipv4/ip_forward").read_text() == forward_before


@contextlib.contextmanager
def own_lab(lab_args: dict, control: Path, roles: list[str], hosts: int, first: int,
            timing: str = ""):
    """A lab of ``hosts`` rehearsal hosts for one test module (``lab_args``: its state_dir,
    bridge and prefix), on a free subnet from 10.77.``first``.0/24, with random secrets of
    ``roles`` in ``control``. A lab left over from an interrupted run goes first; the lab and
    its secrets go at the end. ``timing``: the name its boot time is recorded under."""
    with contextlib.suppress(Exception):
        if Lab.default(**lab_args).load_state():
            Lab.default(**lab_args).down()
    shutil.rmtree(control, ignore_errors=True)
    generate_missing(roles, control / "secrets.yaml")
    lab = Lab.default(**lab_args, subnet=free_subnet(first=first))
    started = time.monotonic()
    try:
        lab.up(hosts)
        if timing:
            record_timing(timing, time.monotonic() - started)
        yield lab
    finally:  # thrown away: no clean shutdown (an HA leader may wait on a standby gone)
        Lab.default(**lab_args).down(fast=True)
        shutil.rmtree(control, ignore_errors=True)


def why_failed(output: str, tail: int = 4000, lab: Lab | None = None) -> str:
    """What a failed pyinfra run printed, for an assertion: every operation in which a host
    failed (a host that fails drops out of the operations after it, so the tail alone may not
    name it), with ``lab`` the journal of every unit systemd said failed, then the tail."""
    blocks = re.split(r"\n(?=--> )", output)
    failing = [b for b in blocks if re.search(r"^\s*\[[^\]]+\] Error", b, re.M)]
    head = "\n".join(b[-2500:] for b in failing[:3])
    journals = ""
    if lab is not None:
        for name, unit in sorted(set(re.findall(
                r"\[([^\]]+)\] Job for (\S+) failed", output)))[:3]:
            try:
                text = lab.ssh(name, ["journalctl", "--no-pager", "-o", "short-precise", "-n",
                                      "40", "-u", unit], check=False, timeout=60).stdout
            except Exception as error:  # a host that is down: the run's output still counts
                text = f"(not read: {error})"
            journals += f"journal of {unit} on {name}:\n{text[-3000:]}\n"
    return ((f"failed operations:\n{head}\n...\n" if head else "") + journals
            + output[-tail:])


@pytest.fixture(scope="session")
def first_deploy(lab) -> Deploy:
    result = run_pyinfra(lab)
    assert result.returncode == 0, why_failed(result.stderr)
    record_timing("first_deploy_seconds", result.seconds)
    return result


def deploy_ok(lab: Lab, *args: str, env: dict | None = None) -> Deploy:
    """A deploy that must succeed."""
    result = run_pyinfra(lab, *args, env=env)
    assert result.returncode == 0, why_failed(result.stderr, lab=lab)
    return result


def sql(lab: Lab, query: str, db: str = "postgres", port: int = 5432) -> str:
    """Run SQL on pgt1 as the postgres superuser, over its Unix socket."""
    return lab.ssh("pgt1", ["runuser", "-u", "postgres", "--", "psql", "-XAtq", "-p", str(port),
                            "-d", db, "-c", repr(query)]).stdout.strip()


def client(password: str, port: int = 5432, user: str = "app", dbname: str = "app",
           sslmode: str = "verify-full", **kwargs) -> psycopg.Connection:
    """A client on the control machine, verifying the server against the lab's CA."""
    return psycopg.connect(host=HOST, port=port, dbname=dbname, user=user, password=password,
                           sslmode=sslmode, sslrootcert=str(CA_DIR / "ca.crt"),
                           connect_timeout=5, autocommit=True, **kwargs)


@pytest.fixture
def secret(monkeypatch):
    """``secret(role)``: a password from the e2e lab's own secrets file."""
    monkeypatch.setenv("PGINFRA_SECRETS_FILE", str(SECRETS_FILE))
    return password_for


def psql_session(lab: Lab, name: str, db: str = "postgres") -> subprocess.Popen:
    """A psql session on pgt1 as postgres (application_name ``name``) that runs what is written
    to its stdin, then waits, idle, for more: close it with ``.communicate(last_text)``."""
    return subprocess.Popen(
        ["ssh", "-F", str(lab.ssh_config), "pgt1", "--", "runuser", "-u", "postgres", "--",
         "env", f"PGAPPNAME={name}", "psql", "-XAtq", "-d", db],
        stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, text=True)


def send(proc: subprocess.Popen, text: str) -> None:
    proc.stdin.write(text)
    proc.stdin.flush()


def wait_for(probe, what: str, timeout: float = 30):
    """Poll ``probe`` until it returns something true, and return that."""
    deadline = time.monotonic() + timeout
    while not (found := probe()):
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.3)
    return found
