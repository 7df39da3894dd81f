"""The fact batch answers exactly what pyinfra's own reads answer, in one command: checked on
this machine through pyinfra's @local connector, with real files."""

from __future__ import annotations

import os
import subprocess
import time

import pytest
from pyinfra.api import Config, Inventory, State
from pyinfra.api.connect import connect_all
from pyinfra.api.state import StateStage
from pyinfra.facts.files import Directory, File, FileContents, Sha1File
from pyinfra.facts.server import Command

from pginfra import factcache


def test_batch_lines_are_split_as_pyinfra_splits_them():
    requests = [(0, "printf 'a\\nb\\n'", None), (1, "printf 'no newline'", None),
                (2, "true", None), (3, "printf 'x\\n\\n'; exit 3", None),
                (4, "echo hi", "definitely-not-a-command-here"),
                (5, "printf '\\n\\nlast\\n\\n'", "sh"), (6, "printf 'x 1 2'", None)]
    out = subprocess.run(["sh", "-c", factcache.batch_script(requests)], capture_output=True,
                         text=True, check=True).stdout
    assert factcache.parse_batch(out.split("\n")) == {
        0: (True, ["a", "b"]), 1: (True, ["no newline"]), 2: (True, []),
        3: (False, ["x", ""]), 5: (True, ["", "", "last", ""]), 6: (True, ["x 1 2"])}


@pytest.fixture
def local(tmp_path, tmp_path_factory, monkeypatch):
    """pyinfra's state for @local, planning, with the hook installed and fact plans in tmp
    (beside tmp_path, not in it: saving them would change the directory the facts read)."""
    monkeypatch.setenv(factcache.PLAN_DIR_ENV, str(tmp_path_factory.mktemp("plans")))
    factcache.install()
    inventory = Inventory((["@local"], {}))
    state = State(inventory, Config())
    connect_all(state)
    state.current_stage = StateStage.Prepare
    host = inventory.get_host("@local")
    factcache._FETCHED.pop(host.name, None)
    factcache._READ.pop(host.name, None)
    factcache._PLAN_FILES.pop(host.name, None)
    commands = []
    original = host.run_shell_command

    def counting(*args, **kwargs):
        commands.append(args)
        return original(*args, **kwargs)

    monkeypatch.setattr(host, "run_shell_command", counting)
    yield host, commands
    factcache._FETCHED.pop(host.name, None)
    factcache._READ.pop(host.name, None)
    factcache._PLAN_FILES.pop(host.name, None)


def reads(host, tmp_path):
    (tmp_path / "f").write_text("one\ntwo\n")
    # Reading the file moves its atime under relatime (an atime not after the mtime is updated
    # on the next read): an atime set ahead of the mtime and ctime stays put, so two rounds of
    # reads see the same stat.
    ahead = time.time() + 3600
    for path in (tmp_path / "f", tmp_path):
        os.utime(path, (ahead, path.stat().st_mtime))
    return [
        host.get_fact(File, path=str(tmp_path / "f")),
        host.get_fact(File, path=str(tmp_path / "absent")),
        host.get_fact(Directory, path=str(tmp_path)),
        host.get_fact(Sha1File, path=str(tmp_path / "f")),
        host.get_fact(FileContents, path=str(tmp_path / "f")),
        host.get_fact(FileContents, path=str(tmp_path / "absent")),
    ]


def test_a_second_run_reads_the_same_facts_in_one_command(local, tmp_path):
    host, commands = local
    first = reads(host, tmp_path)
    assert len(commands) == 6  # no plan yet: one command a fact, as pyinfra reads them
    factcache.save_plans()
    assert factcache.plan_file(host).exists()

    commands.clear()
    factcache._READ.pop(host.name)
    assert factcache.prefetch(host) == 6
    assert len(commands) == 1
    second = reads(host, tmp_path)
    assert len(commands) == 1  # every answer came from the batch
    assert second == first
    assert second[4] == ["one", "two"] and second[1] is None


def test_facts_outside_the_batch_and_reads_after_a_change_go_to_the_host(local, tmp_path):
    host, commands = local
    reads(host, tmp_path)
    host.get_fact(Command, command="echo side-effects-maybe")
    factcache.save_plans()
    factcache._READ.pop(host.name)
    factcache.prefetch(host)
    commands.clear()
    assert host.get_fact(Command, command="echo side-effects-maybe") == "side-effects-maybe"
    assert len(commands) == 1  # Command is never batched
    assert host.get_fact(FileContents, path=str(tmp_path / "f")) == ["one", "two"]
    assert len(commands) == 1  # from the batch
    # An operation's command changes the host: from then on every fact is read afresh.
    host.run_shell_command(f"echo changed > {tmp_path / 'f'}")
    assert host.get_fact(FileContents, path=str(tmp_path / "f")) == ["changed"]
    assert len(commands) == 3


def test_a_read_with_secret_arguments_is_never_written_to_a_plan(local, tmp_path):
    host, _ = local
    host.get_fact(File, path=str(tmp_path), _env={"PGPASSWORD": "s3cret-Pass-1"})
    factcache.save_plans()
    plan = factcache.plan_file(host)
    assert not plan.exists() or "s3cret" not in plan.read_text()
