"""Fewer round trips: the facts a run will read, fetched from each host in one command.

A run that changes nothing spends its time on round trips: pyinfra reads every fact with a
remote command of its own (a no-op deploy of one host read 135 of them, 94 about single files),
one after another. This module remembers, on the control machine, which read-only facts each
host's last run read, and once the run holds the host's deploy lock it fetches them all in one
command. ``Host.get_fact`` then answers those from the batch; anything
else (a fact not read last time, a fact with side effects, a fact that failed) is read as
pyinfra always reads it.

Why the answers are the same: until pyinfra runs a command on a host that is not a fact's (an
operation's command, an upload, a ``python.call``), the host is as the batch found it, so a
batched answer is what a read would return. The first such command on any host drops every
host's batch (a change on one host can reach another: a role made on the primary is on its
standbys a moment later): every later fact is read afresh. pyinfra 3 reads most facts while
it runs the operations, one operation after another, so in a run that changes nothing every
one of them comes from the batch. Only facts known to be pure reads are batched
(``BATCHED``); the deploy lock guards the host against another pginfra run meanwhile.

    from pginfra import factcache

    factcache.install()            # once per process: the Host.get_fact hook
    factcache.prefetch(host)       # after taking the host's deploy lock
"""

from __future__ import annotations

import atexit
import base64
import copy
import hashlib
import json
import os
from pathlib import Path
from typing import Any

PLAN_DIR_ENV = "PGINFRA_FACT_PLAN_DIR"
_MARK = "@@pginfra-fact"


def plan_dir() -> Path:
    """Where the fact plans live: ``$PGINFRA_FACT_PLAN_DIR``, else ~/.cache/pginfra/facts."""
    given = os.environ.get(PLAN_DIR_ENV)
    if given:
        return Path(given)
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache) / "pginfra" / "facts"


def _batched() -> dict[str, type]:
    """Fact classes that only read, by "module.Class"."""
    from pyinfra.facts import deb, files, hardware, systemd

    from pginfra import facts as ours

    classes = [files.File, files.Directory, files.Link, files.Sha1File, files.FileContents,
               deb.DebPackages, systemd.SystemdEnabled, systemd.SystemdStatus,
               hardware.Memory, hardware.Cpus,
               ours.PostgresClusters, ours.PostgresRoles, ours.PostgresDatabases,
               ours.PostgresDatabaseState, ours.PostgresClusterData, ours.MigrationHistory,
               ours.DatabaseHasTable, ours.PathStates, ours.HostAddresses, ours.ResolvedNames,
               ours.AptSecuritySources, ours.Listeners, ours.PostgresListenAddresses,
               ours.ReplicationState]
    return {f"{c.__module__}.{c.__name__}": c for c in classes}


BATCHED: dict[str, type] = {}
# host name -> {key: (status, stdout lines)} fetched for this run; and the keys read this run.
_FETCHED: dict[str, dict[str, tuple[bool, list[str]]]] = {}
_READ: dict[str, dict[str, dict]] = {}
_PLAN_FILES: dict[str, Path] = {}
_READING: dict[str, int] = {}  # host name -> fact reads under way (their commands change nothing)
_installed = False


def _key(name: str, fact_kwargs: dict, executor: dict) -> str | None:
    try:
        return json.dumps([name, fact_kwargs, executor], sort_keys=True)
    except TypeError:
        return None  # not JSON: not batched


# Connection arguments that may carry secrets: a fact read with one is never batched, so
# nothing of it reaches a plan file.
_SECRET_ARGUMENTS = ("_stdin", "_sudo_password", "_su_password", "_env")


def _executor_kwargs(global_kwargs: dict) -> dict | None:
    from pyinfra.api.arguments import CONNECTOR_ARGUMENT_KEYS

    found = {k: v for k, v in global_kwargs.items() if k in CONNECTOR_ARGUMENT_KEYS}
    if any(found.get(k) for k in _SECRET_ARGUMENTS):
        return None
    return found


def plan_file(host) -> Path:
    """The plan of ``host``: named after its inventory name and SSH address."""
    ident = f"{host.name}|{host.data.get('ssh_hostname') or ''}|{host.data.get('ssh_port') or ''}"
    digest = hashlib.sha256(ident.encode()).hexdigest()[:16]
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in host.name)[:60]
    return plan_dir() / f"{safe}-{digest}.json"


def install() -> None:
    """Hook ``Host.get_fact`` (once per process): answer batched facts while planning."""
    global _installed
    if _installed:
        return
    from pyinfra.api.facts import ShortFactBase, _handle_fact_kwargs, _make_command
    from pyinfra.api.host import Host

    BATCHED.update(_batched())
    original = Host.get_fact

    def get_fact(self, name_or_cls, *args, **kwargs):
        cls = name_or_cls
        name = f"{getattr(cls, '__module__', '')}.{getattr(cls, '__name__', '')}"
        if name not in BATCHED or issubclass(cls, ShortFactBase) or self.state is None:
            return read(self, name_or_cls, *args, **kwargs)
        fact_kwargs, global_kwargs = _handle_fact_kwargs(self.state, self, cls, args, kwargs)
        fact_kwargs = {k: v for k, v in fact_kwargs.items() if k != "self"}
        executor = _executor_kwargs(global_kwargs)
        key = None if executor is None else _key(name, fact_kwargs, executor)
        if key is None:
            return read(self, name_or_cls, *args, **kwargs)
        _READ.setdefault(self.name, {})[key] = {
            "fact": name, "kwargs": fact_kwargs, "executor": executor}
        _PLAN_FILES.setdefault(self.name, plan_file(self))
        found = _FETCHED.get(self.name, {}).get(key)
        if found is None or not found[0]:
            return read(self, name_or_cls, *args, **kwargs)
        lines = found[1]
        fact = cls()
        _make_command(fact.command, dict(fact_kwargs))  # some facts keep their arguments
        return fact.process(copy.deepcopy(lines)) if lines else fact.default()

    def read(self, *args, **kwargs):
        """pyinfra's own read: its command is a fact's, not a change."""
        _READING[self.name] = _READING.get(self.name, 0) + 1
        try:
            return original(self, *args, **kwargs)
        finally:
            _READING[self.name] -= 1

    def changing(method):
        def run(self, *args, **kwargs):
            if not _READING.get(self.name):
                # This host may differ now, and through it another (a role created on the
                # primary reaches its standbys): every host reads afresh from here on.
                _FETCHED.clear()
            return method(self, *args, **kwargs)
        return run

    Host.get_fact = get_fact
    Host.run_shell_command = changing(Host.run_shell_command)
    Host.put_file = changing(Host.put_file)
    atexit.register(save_plans)
    _installed = True


def batch_script(requests: list[tuple[str, str, str | None]]) -> str:
    """One shell script for (key index, command, requires_command) triples: prints one line
    per fact, ``@@pginfra-fact INDEX STATUS BASE64-OF-STDOUT`` (status "missing" when the
    required command is not there)."""
    out = []
    for index, command, requires in requests:
        run = (f"out=$( ( {command} ) 2>/dev/null; printf 'x%d' $? ); rc=${{out##*x}}; "
               f"out=${{out%x*}}; printf '{_MARK} {index} %s ' \"$rc\"; "
               "printf '%s' \"$out\" | base64 -w0; echo")
        if requires:
            run = (f"if command -v {requires} >/dev/null 2>&1; then {run}; "
                   f"else echo '{_MARK} {index} missing'; fi")
        out.append(run)
    return "\n".join(out) + "\n"


def parse_batch(lines: list[str]) -> dict[int, tuple[bool, list[str]]]:
    """Index -> (status, stdout lines as pyinfra would have read them); missing commands are
    left out (pyinfra answers those with the fact's default, with its own logic)."""
    found = {}
    for line in lines:
        parts = line.split(" ")
        if len(parts) < 3 or parts[0] != _MARK or parts[2] == "missing":
            continue
        text = base64.b64decode(parts[3] if len(parts) > 3 else "").decode("utf-8", "replace")
        stdout = text.split("\n")
        if stdout and stdout[-1] == "":
            stdout.pop()
        found[int(parts[1])] = (parts[2] == "0", stdout)
    return found


def prefetch(host) -> int:
    """Fetch, in one command per set of connection arguments, every batched fact ``host``'s
    last run read; return how many were fetched."""
    from pyinfra.api import FactBase
    from pyinfra.api.command import StringCommand
    from pyinfra.api.facts import _make_command

    path = plan_file(host)
    try:
        plan = json.loads(path.read_text())
    except (OSError, ValueError):
        return 0
    groups: dict[str, list[dict]] = {}
    for item in plan if isinstance(plan, list) else []:
        if isinstance(item, dict) and item.get("fact") in BATCHED:
            groups.setdefault(json.dumps(item.get("executor", {}), sort_keys=True),
                              []).append(item)
    fetched = _FETCHED.setdefault(host.name, {})
    count = 0
    for executor_json, items in groups.items():
        requests, keys = [], []
        for item in items:
            fact = BATCHED[item["fact"]]()
            try:
                command = _make_command(fact.command, dict(item["kwargs"]))
                requires = _make_command(fact.requires_command, dict(item["kwargs"]))
            except TypeError:
                continue  # the fact's arguments changed since the plan was written
            if fact.shell_executable or type(fact).check_preconditions is not \
                    FactBase.check_preconditions:
                continue  # a fact that needs more than its command: read it the usual way
            command = command.get_raw_value() if isinstance(command, StringCommand) else command
            if requires is not None and not isinstance(requires, str):
                requires = requires.get_raw_value()
            keys.append(_key(item["fact"], item["kwargs"], item.get("executor", {})))
            requests.append((len(requests), command, requires or None))
        if not requests:
            continue
        _READING[host.name] = _READING.get(host.name, 0) + 1
        try:
            status, output = host.run_shell_command(
                StringCommand(batch_script(requests)), print_output=False,
                **json.loads(executor_json))
        finally:
            _READING[host.name] -= 1
        if not status:
            continue
        for index, result in parse_batch(output.stdout_lines).items():
            fetched[keys[index]] = result
            count += 1
    return count


def save_plans() -> None:
    """Write each host's plan: the batched facts its run read (at exit of the run)."""
    for name, read in _READ.items():
        path = _PLAN_FILES[name]
        try:
            path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            tmp = path.with_suffix(".tmp")
            tmp.write_text(json.dumps(list(read.values()), indent=1, sort_keys=True))
            tmp.replace(path)
        except OSError:
            pass  # the next run is slower, not wrong


def stats() -> dict[str, Any]:
    return {name: len(read) for name, read in _READ.items()}
