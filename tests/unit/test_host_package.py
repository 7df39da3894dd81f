"""The host side's shape: one package for the host's own python3 (the standard library and
Debian's python3-psycopg and python3-boto3, nothing of the control side), an entry point and a
``main`` per program, the docstring examples true, and configurations the deploy writes only
as the programs declare them."""

from __future__ import annotations

import ast
import doctest
import importlib
import pkgutil
import subprocess
import sys

import pytest
from throwaway_pg import BIN, ENV, HOST_PYTHON, postgres_missing

import pginfra_host
from pginfra import ROOT
from pginfra.programs import checked_config, entry_point, package_files
from pginfra.settings import SettingsError, resolve
from pginfra_host import layout

PACKAGE = ROOT / "pginfra_host"
HOST_MODULES = {"psycopg", "boto3", "botocore", "pginfra_host"}  # and the standard library
MODULES = sorted(m.name for m in pkgutil.walk_packages(pginfra_host.__path__, "pginfra_host.")
                 if not m.name.endswith(".__main__"))  # importing it runs the program


def imports(path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module.split(".")[0])
        elif isinstance(node, ast.Import):
            found.update(alias.name.split(".")[0] for alias in node.names)
    return found


def test_the_host_package_imports_the_standard_library_and_debians_modules_only():
    allowed = set(sys.stdlib_module_names) | HOST_MODULES
    for path in sorted(PACKAGE.rglob("*.py")):
        foreign = imports(path) - allowed
        assert not foreign, f"{path.relative_to(ROOT)} imports {sorted(foreign)}"
        assert "sys.path" not in path.read_text(), f"{path.name}: no path tricks"


def test_every_program_has_an_entry_point_and_a_main():
    assert set(layout.PROGRAMS) == {"pginfra-apply-config", "pginfra-backup", "pginfra-restore",
                                    "pginfra-health", "pginfra-maintenance", "pginfra-migrate"}
    for name, module in layout.PROGRAMS.items():
        assert callable(importlib.import_module(module).main), name
        text = entry_point(name)
        assert text.startswith("#!/usr/bin/python3\n") and len(text.splitlines()) <= 8
        assert f"from {module} import main" in text
    assert {str(p) for p in package_files()} >= {"__init__.py", "layout.py", "runner.py"}
    assert not any("__pycache__" in p.parts for p in package_files())


@pytest.mark.parametrize("module", MODULES)
def test_docstring_examples(module):
    failed, _ = doctest.testmod(importlib.import_module(module), optionflags=doctest.ELLIPSIS)
    assert failed == 0


@pytest.mark.skipif(postgres_missing() is not None, reason=postgres_missing() or "")
@pytest.mark.parametrize("name", sorted(layout.PROGRAMS))
def test_each_entry_point_runs_on_debians_python3(name):
    proc = subprocess.run([HOST_PYTHON, str(BIN / name), "--help"], capture_output=True,
                          text=True, env=ENV, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "usage:" in proc.stdout


def test_the_deploy_cannot_write_a_key_the_program_does_not_know():
    from pginfra.steps.backups import backup_config

    config = backup_config(resolve({}), "db1")
    assert checked_config("pginfra-backup", config, "db1", layout.BACKUP_CONFIG) is config
    with pytest.raises(SettingsError, match=r"db1: /etc/pginfra/backup.json: pginfra-backup "
                                            r"would refuse it: unknown key\(s\) 'keep_wal'"):
        checked_config("pginfra-backup", {**config, "keep_wal": 3}, "db1",
                       layout.BACKUP_CONFIG)
    with pytest.raises(SettingsError, match="key 'pgbackrest.repos'"):
        checked_config("pginfra-backup", {**config, "pgbackrest": {
            **config["pgbackrest"], "repos": []}}, "db1", layout.BACKUP_CONFIG)


def test_the_deploy_writes_health_and_maintenance_json_only_as_declared():
    from pginfra.steps.health import health_config, maintenance_config

    settings = resolve({})
    for program, build, path in (("pginfra-health", health_config, layout.HEALTH_CONFIG),
                                 ("pginfra-maintenance", maintenance_config,
                                  layout.MAINTENANCE_CONFIG)):
        config = build(settings, "db1")
        assert checked_config(program, config, "db1", path) is config
        with pytest.raises(SettingsError, match=rf"db1: {path}: {program} would refuse it: "
                                                r"unknown key\(s\) 'colour'"):
            checked_config(program, {**config, "colour": "red"}, "db1", path)
