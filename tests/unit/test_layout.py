"""The control side's shape: the runbook's steps lean on shared modules, never on each other,
and a host's paths come from one module (pginfra/layout.py)."""

from __future__ import annotations

import ast
from pathlib import Path

from pginfra import ROOT
from pginfra.settings import resolve
from pginfra_host import layout

STEPS = ROOT / "pginfra" / "steps"


def imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return found


def test_no_step_imports_another_step():
    for path in sorted(STEPS.glob("*.py")):
        if path.name == "__init__.py":
            continue
        steps = {m for m in imported_modules(path) if m.startswith("pginfra.steps")}
        assert not steps, f"{path.name} imports {sorted(steps)}: share a module instead"


def test_a_clusters_paths_come_from_the_layout():
    settings = resolve({"postgres_cluster": "reports", "postgres_port": 5433})
    assert layout.unit(*settings.pg_cluster) == "postgresql@15-reports"
    assert layout.data_directory(*settings.pg_cluster) == "/var/lib/postgresql/15/reports"
    assert layout.config_directory(*settings.pg_cluster) == "/etc/postgresql/15/reports"
    assert layout.program("pginfra-health") == "/usr/local/lib/pginfra/pginfra-health"


def test_no_step_spells_a_clusters_paths_itself():
    for path in sorted(STEPS.glob("*.py")):
        text = path.read_text()
        for spelled in ('f"/var/lib/postgresql/{', 'f"/etc/postgresql/{', 'f"postgresql@{',
                        '"/usr/local/lib/pginfra'):
            assert spelled not in text, f"{path.name} spells {spelled}...: use pginfra.layout"


def test_the_runtime_package_does_not_carry_the_lab():
    """pginfra_lab (rehearsal hosts, the local S3 endpoint and its moto) stays out of the
    runtime package: only the `pginfra rehearsal` and `pginfra vm` commands reach it, when
    they are run."""
    for path in sorted((ROOT / "pginfra").rglob("*.py")):
        modules = imported_modules(path)
        lab = {m for m in modules if m.startswith(("pginfra_lab", "moto"))}
        if path.name == "cli.py":
            assert lab <= {"pginfra_lab.rehearsal", "pginfra_lab.vm"}, lab
        else:
            assert not lab, f"{path.relative_to(ROOT)} imports {sorted(lab)}"
