"""Rehearsal hosts: Debian 12 machines booted on this machine with systemd-nspawn.

A *lab* is a set of hosts sharing one bridge and one small subnet. Each host is a copy of a cached
debootstrap root filesystem, booted with systemd as PID 1 in its own network namespace (a veth
pair whose machine side is enslaved to the lab's bridge), and reached over SSH with a key made for
the lab, exactly as a production host is reached.

    lab = Lab.default()
    lab.up(hosts=1)      # idempotent: running hosts are kept
    lab.status()
    lab.reboot("pg1")    # as a machine reboots (hard=True: a power cycle, no shutdown)
    lab.down()           # stops hosts, removes veths, bridge, NAT rules and host directories

What inventories and testinfra need is written into the lab's state directory:
``hosts.json`` (names, addresses, user, key), ``ssh_config`` and ``known_hosts``.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import ipaddress
import json
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

SUITE = "bookworm"
MIRROR = "http://deb.debian.org/debian"
# What a rehearsal host needs to boot, be reached over SSH and be driven by pyinfra.
ROOTFS_PACKAGES = (
    "systemd", "systemd-sysv", "dbus", "openssh-server", "sudo", "python3",
    "iproute2", "ca-certificates", "procps", "less", "locales",
)
REQUIRED_TOOLS = (
    "debootstrap", "systemd-nspawn", "ip", "iptables", "iptables-save", "ssh", "ssh-keygen",
)
NAME_RE = re.compile(r"[a-z][a-z0-9]{0,10}")  # nspawn names the veth vb-NAME (15 chars max)
IPT_COMMENT = "pginfra-rehearsal"
IP_FORWARD = Path("/proc/sys/net/ipv4/ip_forward")
IP_FORWARD_RECORD = Path("/run/pginfra-rehearsal.ip_forward")  # the value before any lab
# Shared SSH connections; a socket path must stay under 108 bytes, so not in the state directory.
SSH_CONTROL_DIR = Path("/run/pginfra-ssh")
# Held while a lab changes what all labs share (see machine_lock).
MACHINE_LOCK = Path("/run/pginfra-rehearsal.lock")
# nspawn's exit status when the container asked for a reboot (with --keep-unit it does not boot
# the container again itself, it leaves that to its service manager: here, the supervisor).
EXIT_REBOOT = 133
# The supervisor of a host: ``/bin/sh -c SUPERVISOR systemd-nspawn ARGS...`` runs nspawn ($0 and
# its arguments) again each time it exits 133, and exits with nspawn's status otherwise.
SUPERVISOR = (
    f'while :; do "$0" "$@"; rc=$?; [ "$rc" -eq {EXIT_REBOOT} ] || exit "$rc"; '
    'echo "rehearsal: the host asked for a reboot; booting it again"; done'
)
# Each boot of a container gets its own (nspawn mounts a fresh one over the kernel's).
BOOT_ID = "/proc/sys/kernel/random/boot_id"

DEFAULT_STATE_DIR = Path(os.environ.get("PGINFRA_REHEARSAL_DIR", "/var/lib/pginfra/rehearsal"))
DEFAULT_CACHE_DIR = Path(os.environ.get("PGINFRA_CACHE_DIR", "/var/cache/pginfra"))


class RehearsalError(Exception):
    """A rehearsal command cannot go on; nothing was changed by the failing step."""


def say(message: str) -> None:
    print(f"rehearsal: {message}", flush=True)


def run(cmd: list[str], check: bool = True, **kwargs) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, text=True, capture_output=True, **kwargs)
    if check and proc.returncode != 0:
        output = proc.stderr.strip() or proc.stdout.strip()
        raise RehearsalError(f"{' '.join(cmd)} failed ({proc.returncode}): {output}")
    return proc


# -- pure helpers (unit-tested) ------------------------------------------------------------------


def host_names(prefix: str, count: int) -> list[str]:
    """``host_names("pg", 2) == ["pg1", "pg2"]``; refuses names nspawn cannot use."""
    if count < 1 or count > 50:
        raise RehearsalError(f"--hosts must be between 1 and 50, got {count}")
    names = [f"{prefix}{i}" for i in range(1, count + 1)]
    for name in names:
        if not NAME_RE.fullmatch(name):
            raise RehearsalError(
                f"host name {name!r} is not usable: lower-case letters and digits, starting with a"
                " letter, at most 11 characters (the veth is named vb-NAME)"
            )
    return names


def plan_addresses(subnet: str, names: list[str]) -> tuple[str, dict[str, str]]:
    """The gateway (first address) and one address per host, from the 10th address on."""
    net = ipaddress.ip_network(subnet, strict=True)
    if net.version != 4:
        raise RehearsalError(f"subnet {subnet} must be IPv4")
    hosts = list(net.hosts())
    if len(hosts) < 10 + len(names):
        raise RehearsalError(f"subnet {subnet} is too small for {len(names)} hosts")
    return str(hosts[0]), {name: str(hosts[9 + i]) for i, name in enumerate(names)}


def overlapping_routes(subnet: str, routes: list[dict], own_bridge: str) -> list[str]:
    """Routes (``ip -j route`` entries) that overlap ``subnet`` and are not the lab's own."""
    net = ipaddress.ip_network(subnet)
    clashes = []
    for route in routes:
        dst = route.get("dst", "")
        if dst in ("default", "") or route.get("dev") == own_bridge:
            continue
        try:
            other = ipaddress.ip_network(dst, strict=False)
        except ValueError:
            continue
        if other.version == net.version and other.overlaps(net):
            clashes.append(f"{dst} dev {route.get('dev', '?')}")
    return clashes


_lock_guard = threading.RLock()
_lock_held = {"file": None, "depth": 0}


@contextlib.contextmanager
def machine_lock(path: Path | None = None):
    """Hold this machine's lab lock: labs brought up or down at the same time (the benchmarks'
    short modes run side by side) take turns choosing a free subnet and making its bridge, its
    NAT rules, the record of ip_forward and the root filesystem cache. Reentrant in a process;
    a blocking ``flock`` between processes, released when the holder exits however it exits.

        with machine_lock():
            lab = Lab(subnet=free_subnet(first=2), ...)
            lab.up(3)            # takes the lock again: no deadlock
    """
    with _lock_guard:
        if _lock_held["depth"] == 0:
            _lock_held["file"] = open(path or MACHINE_LOCK, "a")  # noqa: SIM115 - closed below
            fcntl.flock(_lock_held["file"], fcntl.LOCK_EX)
        _lock_held["depth"] += 1
        try:
            yield
        finally:
            _lock_held["depth"] -= 1
            if _lock_held["depth"] == 0:
                _lock_held["file"].close()  # closing its only descriptor releases the flock
                _lock_held["file"] = None


def free_subnet(routes: list[dict] | None = None, first: int = 1,
                exclude: tuple[str, ...] = ()) -> str:
    """The first ``10.77.N.0/24`` (N from ``first``) that no route of this machine overlaps and
    that is not in ``exclude``: a subnet for a lab that must not depend on the machine being
    empty (tests, benchmarks). Every running lab routes its subnet to its bridge, so a running
    lab's subnet is never chosen. ``routes`` are ``ip -j route`` entries (read if not given)."""
    if routes is None:
        routes = json.loads(run(["ip", "-j", "route"]).stdout)
    for n in range(first, 255):
        subnet = f"10.77.{n}.0/24"
        if subnet not in exclude and not overlapping_routes(subnet, routes, own_bridge=""):
            return subnet
    raise RehearsalError("no free subnet in 10.77.0.0/16")


def render_ssh_config(hosts: dict[str, str], key: Path, known_hosts: Path,
                      control_dir: Path | None = None) -> str:
    """OpenSSH client configuration for the hosts: strict host keys, the lab's key only, and
    connection sharing so that testinfra's many small commands reuse one connection."""
    control_dir = control_dir or SSH_CONTROL_DIR
    blocks = []
    for name, address in hosts.items():
        blocks.append(
            f"Host {name}\n"
            f"    HostName {address}\n"
            "    User root\n"
            f"    IdentityFile {key}\n"
            "    IdentitiesOnly yes\n"
            f"    UserKnownHostsFile {known_hosts}\n"
            "    StrictHostKeyChecking yes\n"
            "    BatchMode yes\n"
            "    ConnectTimeout 5\n"
            "    ServerAliveInterval 5\n"
            "    ServerAliveCountMax 3\n"
            "    ControlMaster auto\n"
            f"    ControlPath {control_dir}/cm-%C\n"
            "    ControlPersist 60\n"
            "    LogLevel ERROR\n"
        )
    return "\n".join(blocks)


def security_mirror(mirror: str = MIRROR) -> str:
    """The security archive next to a mirror: ``http://deb.debian.org/debian`` gives
    ``http://deb.debian.org/debian-security``, ``http://host/pub/debian`` gives
    ``http://host/pub/debian-security``, any other path ``http://host/debian-security``."""
    parts = urlsplit(mirror)
    path = parts.path.rstrip("/")
    path = path + "-security" if path.endswith("/debian") else "/debian-security"
    return f"{parts.scheme}://{parts.netloc}{path}"


def sources_list(mirror: str = MIRROR, suite: str = SUITE) -> str:
    """/etc/apt/sources.list as a Debian 12 install writes it: the release, its updates and the
    security archive (debootstrap writes only the first)."""
    return (
        f"deb {mirror} {suite} main\n"
        f"deb {mirror} {suite}-updates main\n"
        f"deb {security_mirror(mirror)} {suite}-security main\n"
    )


def supervisor_command(nspawn: list[str]) -> list[str]:
    """``nspawn`` (a systemd-nspawn command line) under the supervisor that boots the container
    again when it reboots, as a machine does; a poweroff or a kill stops it."""
    return ["/bin/sh", "-c", SUPERVISOR, *nspawn]


def process_role(argv: list[bytes]) -> tuple[str, str] | None:
    """``("nspawn", NAME)`` or ``("supervisor", NAME)`` for the command line (``/proc/PID/cmdline``
    split on NUL) of a host's nspawn or supervisor, ``None`` for any other process."""
    if argv[:3] == [b"/bin/sh", b"-c", SUPERVISOR.encode()]:
        role, argv = "supervisor", argv[3:]
    else:
        role = "nspawn"
    if not argv or not argv[0].endswith(b"systemd-nspawn") or b"-M" not in argv[:-1]:
        return None
    name = argv[argv.index(b"-M") + 1].decode(errors="replace")
    return (role, name) if name else None


def parse_stat(text: str) -> tuple[str, int, int]:
    """State, parent pid and process group of a ``/proc/PID/stat`` line (the command name, in
    parentheses, may hold spaces and parentheses itself)."""
    fields = text.rpartition(")")[2].split()
    return fields[0], int(fields[1]), int(fields[2])


def rootfs_key(packages: tuple[str, ...] = ROOTFS_PACKAGES, suite: str = SUITE,
               mirror: str = MIRROR) -> str:
    """Cache key of a root filesystem: changes whenever what debootstrap is asked for changes."""
    digest = hashlib.sha256(" ".join((suite, mirror, *sorted(packages))).encode()).hexdigest()
    return f"{suite}-{digest[:12]}"


def require_root_on_linux() -> None:
    """Every rehearsal command needs both; say so before touching anything."""
    if platform.system() != "Linux":
        raise RehearsalError(f"rehearsal hosts need Linux, this is {platform.system()}")
    if os.geteuid() != 0:
        raise RehearsalError("rehearsal hosts need root (debootstrap, nspawn, veth, iptables)")


def _alive(pid: int) -> bool:
    """Whether ``pid`` still runs. Reaps it when it is our own child (a zombie is not alive)."""
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return parse_stat(stat)[0] != "Z"


def _state(pid: int) -> str:
    """A process's state letter and command (D: in the kernel, uninterruptible), for errors."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return "gone"
    return f"{parse_stat(stat)[0]} {stat.partition('(')[2].rpartition(')')[0]}"


def _children(parents: list[int]) -> list[int]:
    """The live children of ``parents``."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            state, ppid, _ = parse_stat((proc / "stat").read_text())
        except (OSError, ValueError, IndexError):
            continue
        if ppid in parents and state != "Z":
            found.append(int(proc.name))
    return found


def _pgrp(pid: int) -> int | None:
    try:
        return parse_stat(Path(f"/proc/{pid}/stat").read_text())[2]
    except (OSError, ValueError, IndexError):
        return None


def _kill(pid: int, sig: int, group: bool = False) -> None:
    with contextlib.suppress(ProcessLookupError):
        (os.killpg if group else os.kill)(pid, sig)


# -- the lab -------------------------------------------------------------------------------------


@dataclass
class Lab:
    state_dir: Path = DEFAULT_STATE_DIR
    cache_dir: Path = DEFAULT_CACHE_DIR
    subnet: str = "10.77.0.0/24"
    bridge: str = "pginfra0"
    prefix: str = "pg"
    mirror: str = MIRROR
    hosts: dict[str, dict] = field(default_factory=dict)  # name -> {address, pid}
    # nspawn processes this object started: name -> Popen (between fork and exec a child's
    # /proc cmdline is still ours, so only the Popen knows it is alive).
    _procs: dict[str, subprocess.Popen] = field(default_factory=dict, repr=False)

    @classmethod
    def default(cls, **overrides) -> Lab:
        """The lab recorded in the state directory, or a new one with the given settings."""
        state_dir = Path(overrides.pop("state_dir", DEFAULT_STATE_DIR))
        lab = cls(state_dir=state_dir, **{k: v for k, v in overrides.items() if v is not None})
        recorded = lab.load_state()
        if recorded:
            for key in ("subnet", "bridge", "prefix"):
                wanted = overrides.get(key)
                if wanted is not None and wanted != recorded[key]:
                    raise RehearsalError(
                        f"the lab in {state_dir} uses {key} {recorded[key]}, not {wanted}:"
                        " run 'down' first, or use another --state-dir"
                    )
                setattr(lab, key, recorded[key])
            lab.hosts = recorded["hosts"]
        return lab

    # paths
    @property
    def state_file(self) -> Path:
        return self.state_dir / "hosts.json"

    @property
    def key(self) -> Path:
        return self.state_dir / "id_ed25519"

    @property
    def known_hosts(self) -> Path:
        return self.state_dir / "known_hosts"

    @property
    def ssh_config(self) -> Path:
        return self.state_dir / "ssh_config"

    def host_dir(self, name: str) -> Path:
        return self.state_dir / "hosts" / name

    def rootfs_dir(self) -> Path:
        return self.cache_dir / "rootfs" / rootfs_key(mirror=self.mirror)

    # state
    def load_state(self) -> dict | None:
        if not self.state_file.exists():
            return None
        return json.loads(self.state_file.read_text())

    def save_state(self) -> None:
        recorded = self.load_state() or {}
        recorded.update(
            subnet=self.subnet, bridge=self.bridge, prefix=self.prefix, hosts=self.hosts,
            user="root", key=str(self.key), known_hosts=str(self.known_hosts),
            ssh_config=str(self.ssh_config),
        )
        self.state_dir.mkdir(parents=True, exist_ok=True)
        tmp = self.state_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(recorded, indent=2, sort_keys=True) + "\n")
        tmp.replace(self.state_file)

    # checks made before anything changes
    def preflight(self, names: list[str]) -> None:
        require_root_on_linux()
        missing = [tool for tool in REQUIRED_TOOLS if not shutil.which(tool)]
        if missing:
            raise RehearsalError(
                f"missing tools: {', '.join(missing)} (apt-get install debootstrap"
                " systemd-container iptables iproute2 openssh-client)"
            )
        if not re.fullmatch(r"[a-z][a-z0-9-]{0,14}", self.bridge):
            raise RehearsalError(f"bridge name {self.bridge!r} is not a usable interface name")
        links = {link["ifname"]: link for link in json.loads(run(["ip", "-j", "link"]).stdout)}
        bridge = links.get(self.bridge)
        if bridge and not self.load_state():
            raise RehearsalError(f"interface {self.bridge} already exists and is not this lab's")
        routes = json.loads(run(["ip", "-j", "route"]).stdout)
        clashes = overlapping_routes(self.subnet, routes, self.bridge)
        if clashes:
            raise RehearsalError(f"subnet {self.subnet} is taken: {'; '.join(clashes)}")
        for name in names:
            if name in self.hosts and self.is_running(name):
                continue
            if f"vb-{name}" in links:
                raise RehearsalError(f"host name {name} is taken: interface vb-{name} exists")
            if self._nspawn_pids(name) or self._supervisor_pids(name):
                raise RehearsalError(f"host name {name} is taken: a container {name} runs")

    # building blocks
    def build_rootfs(self) -> Path:
        """debootstrap a Debian 12 root once; later calls return the cached copy."""
        target = self.rootfs_dir()
        if (target / ".pginfra-complete").exists():
            return target
        work = target.with_name(target.name + ".partial")
        shutil.rmtree(work, ignore_errors=True)
        work.parent.mkdir(parents=True, exist_ok=True)
        say(f"building the Debian 12 root filesystem in {target} (debootstrap, once)")
        started = time.monotonic()
        run([
            "debootstrap", "--variant=minbase", f"--include={','.join(ROOTFS_PACKAGES)}",
            SUITE, str(work), self.mirror,
        ])
        # Per-host identity is made when a host is created, never shared through the cache.
        for path in (work / "etc/ssh").glob("ssh_host_*"):
            path.unlink()
        (work / "etc/machine-id").write_text("")
        (work / "etc/default/locale").write_text("LANG=C.UTF-8\n")
        (work / "etc/systemd/system/multi-user.target.wants").mkdir(parents=True, exist_ok=True)
        (work / "etc/systemd/system/multi-user.target.wants/systemd-networkd.service").symlink_to(
            "/lib/systemd/system/systemd-networkd.service"
        )
        # A container has no use for a login prompt on its console.
        (work / "etc/systemd/system/console-getty.service").symlink_to("/dev/null")
        (work / ".pginfra-complete").write_text(f"{time.monotonic() - started:.1f}\n")
        work.rename(target)
        say(f"root filesystem built in {time.monotonic() - started:.0f}s")
        return target

    def ensure_key(self) -> None:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        os.chmod(self.state_dir, 0o700)
        if not self.key.exists():
            run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "pginfra-rehearsal",
                 "-f", str(self.key)])

    def ensure_network(self, gateway: str) -> None:
        prefixlen = ipaddress.ip_network(self.subnet).prefixlen
        links = {link["ifname"] for link in json.loads(run(["ip", "-j", "link"]).stdout)}
        if self.bridge not in links:
            say(f"creating bridge {self.bridge} with {gateway}/{prefixlen}")
            run(["ip", "link", "add", self.bridge, "type", "bridge"])
        addrs = json.loads(run(["ip", "-j", "addr", "show", "dev", self.bridge]).stdout)
        have = {a["local"] for entry in addrs for a in entry.get("addr_info", [])}
        if gateway not in have:
            run(["ip", "addr", "add", f"{gateway}/{prefixlen}", "dev", self.bridge])
        run(["ip", "link", "set", self.bridge, "up"])

        # The first lab up records the machine's value for the last lab down to restore; a
        # per-lab record would restore another lab's "1" when labs overlap.
        if not IP_FORWARD_RECORD.exists():
            IP_FORWARD_RECORD.write_text(IP_FORWARD.read_text())
        IP_FORWARD.write_text("1\n")
        for rule in self._iptables_rules():
            if run(["iptables", *rule[:2], "-C", *rule[2:]], check=False).returncode != 0:
                run(["iptables", *rule[:2], "-A", *rule[2:]])

    def _iptables_rules(self) -> list[list[str]]:
        comment = ["-m", "comment", "--comment", f"{IPT_COMMENT}:{self.bridge}"]
        return [
            ["-t", "nat", "POSTROUTING", "-s", self.subnet, "!", "-d", self.subnet,
             "-j", "MASQUERADE", *comment],
            ["-t", "filter", "FORWARD", "-i", self.bridge, "-j", "ACCEPT", *comment],
            ["-t", "filter", "FORWARD", "-o", self.bridge, "-j", "ACCEPT", *comment],
        ]

    def create_host(self, name: str, address: str, gateway: str) -> Path:
        """Copy the cached root and give it its own identity, address and authorised key."""
        root = self.host_dir(name) / "rootfs"
        if root.exists():
            return root
        partial = root.with_name("rootfs.partial")
        shutil.rmtree(partial, ignore_errors=True)
        partial.parent.mkdir(parents=True, exist_ok=True)
        run(["cp", "-a", "--reflink=auto", str(self.build_rootfs()), str(partial)])
        (partial / ".pginfra-complete").unlink()
        prefixlen = ipaddress.ip_network(self.subnet).prefixlen
        (partial / "etc/hostname").write_text(f"{name}\n")
        (partial / "etc/hosts").write_text(
            f"127.0.0.1\tlocalhost\n127.0.1.1\t{name}\n::1\tlocalhost ip6-localhost ip6-loopback\n"
        )
        (partial / "etc/systemd/network/10-host0.network").write_text(
            f"[Match]\nName=host0\n\n[Network]\nAddress={address}/{prefixlen}\n"
            f"Gateway={gateway}\nLinkLocalAddressing=no\nIPv6AcceptRA=no\n"
        )
        resolv = partial / "etc/resolv.conf"
        if resolv.is_symlink() or resolv.exists():
            resolv.unlink()
        shutil.copyfile("/etc/resolv.conf", resolv)
        (partial / "etc/apt/sources.list").write_text(sources_list(self.mirror))
        ssh_dir = partial / "root/.ssh"
        ssh_dir.mkdir(mode=0o700, exist_ok=True)
        shutil.copyfile(self.key.with_suffix(".pub"), ssh_dir / "authorized_keys")
        os.chmod(ssh_dir / "authorized_keys", 0o600)
        host_key = partial / "etc/ssh/ssh_host_ed25519_key"
        run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", f"root@{name}",
             "-f", str(host_key)])
        partial.rename(root)
        return root

    def start_host(self, name: str) -> int:
        """Boot a host under its supervisor (which boots it again when it reboots); returns the
        supervisor's pid, the leader of a process group of its own that holds nspawn too."""
        root = self.host_dir(name) / "rootfs"
        log = open(self.host_dir(name) / "console.log", "ab")  # noqa: SIM115 (kept by the child)
        proc = subprocess.Popen(
            supervisor_command(
                ["systemd-nspawn", "--quiet", "-D", str(root), "-M", name, "--boot",
                 "--register=no", "--keep-unit", f"--network-bridge={self.bridge}",
                 "--console=read-only"]),
            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()
        self._procs[name] = proc
        return proc.pid

    def _pids(self, name: str, role: str) -> list[int]:
        pids = []
        for proc in Path("/proc").iterdir():
            if not proc.name.isdigit():
                continue
            try:
                argv = (proc / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if process_role(argv) == (role, name) and _alive(int(proc.name)):
                pids.append(int(proc.name))
        return pids

    def _nspawn_pids(self, name: str) -> list[int]:
        return self._pids(name, "nspawn")

    def _supervisor_pids(self, name: str) -> list[int]:
        return self._pids(name, "supervisor")

    def is_running(self, name: str) -> bool:
        """Whether the host is powered: its supervisor runs (between two boots of a reboot, too).
        A recorded pid that is nspawn itself is a host an older pginfra booted."""
        proc = self._procs.get(name)
        if proc is not None:
            return proc.poll() is None
        pid = self.hosts.get(name, {}).get("pid")
        return bool(pid) and (pid in self._supervisor_pids(name) or pid in self._nspawn_pids(name))

    def wait_for_ssh(self, name: str, timeout: float = 90, shared: bool = True) -> None:
        deadline = time.monotonic() + timeout
        last = ""
        while time.monotonic() < deadline:
            if not self.is_running(name):
                raise RehearsalError(
                    f"{name} stopped while booting; see {self.host_dir(name) / 'console.log'}"
                )
            proc = self.ssh(name, ["systemctl", "is-system-running", "--wait"], check=False,
                            shared=shared)
            state = proc.stdout.strip()
            if proc.returncode == 0 or state in ("running", "degraded"):
                if state == "degraded":
                    failed = self.ssh(name, ["systemctl", "--failed", "--no-legend"],
                                      check=False, shared=shared)
                    say(f"{name} booted degraded: {failed.stdout.strip()}")
                return
            last = proc.stderr.strip() or state
            time.sleep(0.5)
        raise RehearsalError(f"{name} did not answer over SSH within {timeout:.0f}s: {last}")

    def ssh(self, name: str, command: list[str], check: bool = True, timeout: float = 120,
            input: str | None = None, shared: bool = True) -> subprocess.CompletedProcess:
        """Run ``command`` on a host (the remote shell joins the words); ``input`` is its stdin.
        ``shared=False`` connects afresh, neither using nor leaving a shared connection (one
        made to a boot that has ended would hang until its keepalives give up)."""
        private = [] if shared else ["-o", "ControlMaster=no", "-o", "ControlPath=none"]
        return run(["ssh", "-F", str(self.ssh_config), *private, name, "--", *command],
                   check=check, timeout=timeout, input=input)

    def close_ssh(self, name: str) -> None:
        """End the shared SSH connection to a host, if one is open."""
        if self.ssh_config.exists():
            run(["ssh", "-F", str(self.ssh_config), "-O", "exit", name], check=False, timeout=30)

    def write_access_files(self) -> None:
        SSH_CONTROL_DIR.mkdir(mode=0o700, exist_ok=True)
        addresses = {name: h["address"] for name, h in self.hosts.items()}
        self.ssh_config.write_text(render_ssh_config(addresses, self.key, self.known_hosts))
        lines = []
        for name, h in self.hosts.items():
            pub = (self.host_dir(name) / "rootfs/etc/ssh/ssh_host_ed25519_key.pub").read_text()
            key_type, key_data = pub.split()[:2]
            lines.append(f"{h['address']} {key_type} {key_data}")
            lines.append(f"{name} {key_type} {key_data}")
        self.known_hosts.write_text("\n".join(lines) + "\n")

    # commands
    def up(self, count: int = 1) -> dict[str, dict]:
        names = host_names(self.prefix, count)
        with machine_lock():  # the checks and what labs share, as one step
            self.preflight(names)
            gateway, addresses = plan_addresses(self.subnet, names)
            self.ensure_key()
            self.build_rootfs()
            self.ensure_network(gateway)
            for name in names:
                self.hosts.setdefault(name, {"address": addresses[name], "pid": None})
                self.hosts[name]["address"] = addresses[name]
                self.create_host(name, addresses[name], gateway)
            self.save_state()
        self.write_access_files()
        for name in names:
            if self.is_running(name):
                say(f"{name} is already running at {self.hosts[name]['address']}")
                continue
            say(f"booting {name} at {self.hosts[name]['address']}")
            started = time.monotonic()
            self.hosts[name]["pid"] = self.start_host(name)
            self.save_state()
            self.wait_for_ssh(name)
            self.hosts[name]["boot_seconds"] = round(time.monotonic() - started, 1)
            self.save_state()
            say(f"{name} is up over SSH after {time.monotonic() - started:.1f}s")
        return self.hosts

    def stop_host(self, name: str, timeout: float = 30) -> None:
        """Power a host off cleanly (SIGKILL after ``timeout``). The supervisor goes with the
        first signal, so that nothing boots the host again."""
        proc = self._procs.pop(name, None)
        supervisors = self._supervisor_pids(name)
        for pid in supervisors:  # the supervisor's group: itself and its nspawn, if one runs
            _kill(pid, signal.SIGTERM, group=True)  # nspawn asks systemd inside to power off
        pids = self._nspawn_pids(name)
        for pid in pids:
            if _pgrp(pid) not in supervisors:  # booted by an older pginfra, or orphaned
                _kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while pids and time.monotonic() < deadline:
            pids = [pid for pid in pids if _alive(pid)]
            time.sleep(0.2)
        if pids:
            console = self.host_dir(name) / "console.log"
            tail = console.read_text(errors="replace").splitlines()[-5:] if console.exists() else []
            say(f"{name} did not power off within {timeout:.0f}s; killing it. Console: "
                + " | ".join(line.strip() for line in tail))
            self._pull_plug(name)
        if proc is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=5)

    def _pull_plug(self, name: str, timeout: float = 90) -> None:
        """Stop a host at once, with no shutdown inside: SIGKILL to its supervisor's group
        (supervisor and nspawn) and to the container's init (nspawn's child; the kernel then
        kills every process of the container, which nspawn's death alone would leave running).
        Returns once they are gone and so is the veth, with the container's network namespace."""
        proc = self._procs.pop(name, None)
        supervisors = self._supervisor_pids(name)
        nspawns = self._nspawn_pids(name)
        inits = _children(nspawns)  # before nspawn dies: then they are no one's children
        for pid in supervisors:
            _kill(pid, signal.SIGKILL, group=True)
        for pid in nspawns + inits:
            _kill(pid, signal.SIGKILL)
        if proc is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=5)
        deadline = time.monotonic() + timeout
        link = f"vb-{name}"
        while time.monotonic() < deadline:
            alive = [pid for pid in supervisors + nspawns + inits if _alive(pid)]
            alive += self._nspawn_pids(name)
            veth = run(["ip", "link", "show", link], check=False).returncode == 0
            if not alive and not veth:
                return
            if not alive:
                # The kernel frees a dead container's network namespace, and its end of the
                # veth, in a work queue of its own, which a loaded machine may run a minute or
                # more later; the veth goes now (deleting one end deletes the pair).
                run(["ip", "link", "del", link], check=False)
            time.sleep(0.1)
        states = {pid: _state(pid) for pid in supervisors + nspawns + inits if _alive(pid)}
        raise RehearsalError(f"{name} did not stop within {timeout:.0f}s of SIGKILL: still "
                             f"there: {states or 'no process'}, veth {link} "
                             f"{'present' if veth else 'gone'}")

    def kill(self, name: str) -> None:
        """A host's power cut: killed at once, no shutdown inside (a fault for failover tests).
        ``boot`` starts it again."""
        require_root_on_linux()
        self.close_ssh(name)
        self._pull_plug(name)

    def boot(self, name: str, timeout: float = 120) -> None:
        """Boot a host that ``kill`` or ``stop_host`` stopped, on its own root filesystem, and
        wait for SSH."""
        require_root_on_linux()
        if self.is_running(name):
            raise RehearsalError(f"{name} is running already")
        self.hosts[name]["pid"] = self.start_host(name)
        self.save_state()
        self.wait_for_ssh(name, timeout=timeout, shared=False)

    def boot_id(self, name: str, shared: bool = True) -> str:
        """The host's boot id: a new one on every boot."""
        return self.ssh(name, ["cat", BOOT_ID], shared=shared, timeout=30).stdout.strip()

    def reboot(self, name: str, hard: bool = False, timeout: float = 120) -> str:
        """Reboot a host and wait until it is up again: a new boot id, SSH answering and systemd
        running. Soft is ``systemctl reboot`` inside (the supervisor boots it again); hard is a
        power cycle: killed with no shutdown (see _pull_plug) and booted again on the same root
        filesystem. Returns the new boot id."""
        require_root_on_linux()
        if name not in self.hosts:
            raise RehearsalError(f"no rehearsal host named {name!r}")
        if not self.is_running(name):
            raise RehearsalError(f"{name} is not running; 'up' boots it")
        if not hard and self._procs.get(name) is None and not self._supervisor_pids(name):
            raise RehearsalError(f"{name} was booted by an older pginfra, with nothing to boot it"
                                 " again: 'reboot --hard' it once")
        started = time.monotonic()
        old = self.boot_id(name, shared=False)
        self.close_ssh(name)  # it would outlive this boot, and hang whoever used it next
        if hard:
            say(f"power-cycling {name} (no shutdown)")
            self._pull_plug(name)
            self.hosts[name]["pid"] = self.start_host(name)
            self.save_state()
        else:
            say(f"rebooting {name}")
            try:  # sshd may go before the answer does: 255 then
                proc = self.ssh(name, ["systemctl", "reboot"], check=False, shared=False,
                                timeout=30)
            except subprocess.TimeoutExpired:
                proc = None
            if proc is not None and proc.returncode not in (0, 255):
                raise RehearsalError(f"systemctl reboot on {name} failed ({proc.returncode}): "
                                     f"{proc.stderr.strip() or proc.stdout.strip()}")
        new = self._wait_for_new_boot(name, old, started + timeout)
        self.close_ssh(name)  # one opened by someone else to the old boot is dead by now
        kind = "hard" if hard else "soft"
        say(f"{name} is up again after {time.monotonic() - started:.1f}s ({kind} reboot)")
        return new

    def _wait_for_new_boot(self, name: str, old: str, deadline: float) -> str:
        last = ""
        while True:
            if not self.is_running(name):
                raise RehearsalError(
                    f"{name} stopped while rebooting; see {self.host_dir(name) / 'console.log'}"
                )
            try:
                proc = self.ssh(name, ["cat", BOOT_ID], check=False, shared=False, timeout=15)
            except subprocess.TimeoutExpired:
                proc = None
            now = proc.stdout.strip() if proc is not None and proc.returncode == 0 else ""
            if now and now != old:
                break
            last = "the old boot still answers" if now else (
                proc.stderr.strip() if proc is not None else "ssh timed out")
            if time.monotonic() > deadline:
                raise RehearsalError(f"{name} did not come back from its reboot: {last}")
            time.sleep(0.5)
        self.wait_for_ssh(name, timeout=max(deadline - time.monotonic(), 10), shared=False)
        return now

    def down(self, fast: bool = False) -> None:
        """Stop every host (cleanly; ``fast``: at once, for a lab thrown away, where a clean
        shutdown may wait on a synchronous standby already gone) and remove the lab."""
        require_root_on_linux()
        recorded = self.load_state()
        if recorded is None:
            say(f"no lab recorded in {self.state_dir}; nothing to do")
            return
        for name in list(self.hosts):
            say(f"stopping {name}" + (" (at once)" if fast else ""))
            self.close_ssh(name)
            if fast:
                self._pull_plug(name)
            else:
                self.stop_host(name)  # its supervisor first: nothing boots it again
            link = f"vb-{name}"
            if run(["ip", "link", "show", link], check=False).returncode == 0:
                run(["ip", "link", "del", link])
        with machine_lock():  # "the last lab down" must not race another lab coming up
            for rule in self._iptables_rules():
                while run(["iptables", *rule[:2], "-C", *rule[2:]],
                          check=False).returncode == 0:
                    run(["iptables", *rule[:2], "-D", *rule[2:]])
            if run(["ip", "link", "show", self.bridge], check=False).returncode == 0:
                run(["ip", "link", "del", self.bridge])
            other_labs = IPT_COMMENT in run(["iptables-save", "-t", "nat"]).stdout
            if IP_FORWARD_RECORD.exists() and not other_labs:  # the last lab down restores it
                IP_FORWARD.write_text(IP_FORWARD_RECORD.read_text())
                IP_FORWARD_RECORD.unlink()
            if not other_labs:
                with contextlib.suppress(OSError):  # left in place while a connection lingers
                    SSH_CONTROL_DIR.rmdir()
        shutil.rmtree(self.state_dir)
        self.hosts = {}
        say("lab removed; the root filesystem cache stays in " + str(self.rootfs_dir().parent))

    def status(self) -> list[dict]:
        rows = []
        for name, h in self.hosts.items():
            running = self.is_running(name)
            reachable = running and self.ssh(name, ["true"], check=False,
                                             timeout=15).returncode == 0
            rows.append({"name": name, "address": h["address"], "running": running,
                         "ssh": reachable})
        return rows


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(
        prog="pginfra rehearsal",
        description="Boot Debian 12 rehearsal hosts on this machine (systemd-nspawn, reached "
                    "over SSH) and tear them down again.",
    )
    parser.add_argument("--state-dir", type=Path, default=DEFAULT_STATE_DIR,
                        help="where the lab keeps hosts, key, ssh_config (default %(default)s)")
    parser.add_argument("--subnet", help="IPv4 subnet of the lab (default 10.77.0.0/24)")
    parser.add_argument("--bridge", help="bridge interface name (default pginfra0)")
    parser.add_argument("--prefix", help="host name prefix: pg gives pg1, pg2... (default pg)")
    sub = parser.add_subparsers(dest="command", required=True)
    up = sub.add_parser("up", help="build, boot and wait for hosts (idempotent)")
    up.add_argument("--hosts", type=int, default=1, help="how many hosts (default 1)")
    sub.add_parser("down", help="stop hosts and remove everything the lab made")
    status = sub.add_parser("status", help="list hosts, addresses and whether SSH answers")
    status.add_argument("--json", action="store_true", help="print JSON")
    ssh = sub.add_parser("ssh", help="open a shell, or run a command, on a host")
    ssh.add_argument("name")
    ssh.add_argument("cmd", nargs=argparse.REMAINDER)
    reboot = sub.add_parser("reboot", help="reboot a host and wait until it is up again")
    reboot.add_argument("name")
    reboot.add_argument("--hard", action="store_true",
                        help="a power cycle: kill it with no shutdown, then boot it again")
    args = parser.parse_args(argv)

    try:
        require_root_on_linux()  # the state directory itself is root's
        lab = Lab.default(state_dir=args.state_dir, subnet=args.subnet, bridge=args.bridge,
                          prefix=args.prefix)
        if args.command == "up":
            lab.up(args.hosts)
            say(f"inventory data: {lab.state_file}; ssh config: {lab.ssh_config}")
        elif args.command == "down":
            lab.down()
        elif args.command == "status":
            rows = lab.status()
            if args.json:
                print(json.dumps(rows, indent=2))
            elif not rows:
                print("no rehearsal hosts")
            for row in [] if args.json else rows:
                print(f"{row['name']:<12} {row['address']:<15} "
                      f"{'running' if row['running'] else 'stopped':<8} "
                      f"ssh {'ok' if row['ssh'] else 'down'}")
        elif args.command == "reboot":
            lab.reboot(args.name, hard=args.hard)
        elif args.command == "ssh":
            if args.name not in lab.hosts:
                raise RehearsalError(f"no rehearsal host named {args.name!r}")
            os.execvp("ssh", ["ssh", "-F", str(lab.ssh_config), args.name, *args.cmd])
    except RehearsalError as exc:
        print(f"rehearsal: error: {exc}", file=sys.stderr)
        return 2
    return 0
