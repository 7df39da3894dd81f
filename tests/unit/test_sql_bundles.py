"""SQL bundles on the control machine: every file passes squawk, bundles are well formed, the
bundle settings are validated, and the plan agrees with the runner's."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from pginfra.settings import SettingsError, resolve
from pginfra.sql_bundles import SQL_ROOT, bundles_for, check_bundle, plan, runner

SQL_FILES = sorted(SQL_ROOT.rglob("*.sql"))
BUNDLES = sorted({p.parent for p in SQL_FILES if re.match(r"\d{3}_", p.name)})
SQUAWK = str(Path(sys.executable).parent / "squawk")  # the test extra squawk-cli


def test_there_are_bundles_to_check():
    names = {str(b.relative_to(SQL_ROOT)) for b in BUNDLES}
    assert {"baseline", "examples/community"} <= names


def transactional(path: Path) -> bool:
    return not re.search(r"^--\s*pginfra:\s*no-transaction\s*$", path.read_text(), re.M)


@pytest.mark.parametrize("path", SQL_FILES, ids=lambda p: str(p.relative_to(SQL_ROOT)))
def test_every_sql_file_passes_squawk(path):
    if not Path(SQUAWK).exists():
        pytest.skip("squawk is not installed (pip install -e '.[test]' installs squawk-cli)")
    # Files that the runner wraps in one transaction are linted as such; the seed is loaded
    # with psql --single-transaction.
    flags = ["--assume-in-transaction"] if transactional(path) else []
    proc = subprocess.run([SQUAWK, "--pg-version", "15", "--reporter", "gcc", *flags, str(path)],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.parametrize("path", SQL_FILES, ids=lambda p: str(p.relative_to(SQL_ROOT)))
def test_a_rule_is_turned_off_only_per_statement_with_a_reason(path):
    lines = path.read_text().splitlines()
    for i, line in enumerate(lines):
        if "squawk-ignore" in line:
            assert re.fullmatch(r"-- squawk-ignore [a-z-]+(, [a-z-]+)*", line), (
                f"{path.name}:{i + 1}: only '-- squawk-ignore rule[, rule]' before a statement "
                "(no file-wide ignores)")
            before = "\n".join(lines[max(0, i - 3):i])
            assert "-- reason:" in before, f"{path.name}:{i + 1}: say why, on a line above"


@pytest.mark.parametrize("bundle", BUNDLES, ids=lambda p: str(p.relative_to(SQL_ROOT)))
def test_every_file_of_a_bundle_has_a_revert(bundle):
    for m in runner().load_bundle(bundle):
        assert m.sibling("revert").exists(), f"{m.name} has no revert file"


def test_every_step_of_the_community_example_has_preflight_checks():
    for m in runner().load_bundle(SQL_ROOT / "examples/community"):
        assert m.sibling("preflight").exists(), f"{m.name} has no preflight file"


def test_bundle_checks_name_the_problem(tmp_path):
    assert check_bundle("baseline") is None
    assert "no directory sql/basline" in check_bundle("basline")
    assert "bundles: " in check_bundle("basline")  # lists the ones there are
    assert "not a path under sql/" in check_bundle("../etc")
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "001_x.sql").write_text("SELECT 1;")
    (tmp_path / "b" / "002_y.revert.sql").write_text("SELECT 1;")
    assert "belongs to no 002_y.sql" in check_bundle("b", tmp_path)
    (tmp_path / "b" / "002_y.revert.sql").unlink()
    (tmp_path / "b" / "3_z.sql").write_text("SELECT 1;")
    assert "is not named NNN_name" in check_bundle("b", tmp_path)


def test_bundle_settings_are_validated_before_anything():
    ok = resolve({"postgres_databases": [{"name": "app", "owner": "app_owner"}],
                  "postgres_roles": [{"name": "app_owner"}],
                  "postgres_sql_bundles": {"*": ["baseline"], "app": ["examples/community"]}})
    assert bundles_for(ok, "app") == ["baseline", "examples/community"]
    assert bundles_for(ok, "other") == ["baseline"]
    with pytest.raises(SettingsError, match=r"postgres_sql_bundles: app: bundle 'basline'"):
        resolve({"postgres_sql_bundles": {"app": ["basline"]}})
    with pytest.raises(SettingsError, match="'reports' is not in postgres_databases"):
        resolve({"postgres_sql_bundles": {"reports": ["baseline"]}})
    with pytest.raises(SettingsError, match="must be a list of strings"):
        resolve({"postgres_sql_bundles": {"*": "baseline"}})
    with pytest.raises(SettingsError, match="add it to postgres_databases"):
        resolve({"pginfra_example_community": True})
    with pytest.raises(SettingsError, match="pginfra_migrate_lock_timeout"):
        resolve({"pginfra_migrate_lock_timeout": "1 second"})


def test_plan_matches_the_history(tmp_path):
    bundle = tmp_path / "b"
    bundle.mkdir()
    (bundle / "001_t.sql").write_text("CREATE TABLE t (id bigint);\n")
    (bundle / "002_v.sql").write_text("-- pginfra: repeatable\nCREATE VIEW v AS SELECT 1;\n")
    assert plan(None, ["b"], tmp_path)["pending"] == ["b/001_t.sql", "b/002_v.sql"]
    history = [{"bundle": "b", "name": m.name, "checksum": m.checksum}
               for m in runner().load_bundle(bundle)]
    assert plan(history, ["b"], tmp_path) == {
        "applied": ["b/001_t.sql", "b/002_v.sql"], "pending": [], "changed": []}
    (bundle / "001_t.sql").write_text("CREATE TABLE t (id bigint, x text);\n")
    (bundle / "002_v.sql").write_text("-- pginfra: repeatable\nCREATE VIEW v AS SELECT 2;\n")
    assert plan(history, ["b"], tmp_path) == {
        "applied": [], "pending": ["b/002_v.sql"], "changed": ["b/001_t.sql"]}


def test_the_migrate_command_carries_no_secret_and_the_dump_choice():
    from pginfra.steps.harden import migrate_command
    settings = resolve({"postgres_port": 5433})
    cmd = migrate_command(settings, "app", ["baseline"])
    assert "--port 5433" in cmd and "--dump-dir /var/backups/postgresql/pre-migrate" in cmd
    assert cmd.endswith("apply /usr/local/share/pginfra/sql/baseline")
    assert "password" not in cmd.lower() and "PGPASSWORD" not in cmd
    off = migrate_command(resolve({"pginfra_migrate_dump": False}), "app", ["baseline"])
    assert "--dump-dir" not in off

