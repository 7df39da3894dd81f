"""sql/baseline, read without a database: every file can be rolled back, says what it does, and
keeps the bundle's rules (objects owned by monitoring_owner, nothing for PUBLIC, SECURITY
DEFINER only with a pinned search_path). Its behaviour is proven in
tests/e2e/test_baseline_bundle.py."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from pginfra import ROOT
from pginfra.sql_bundles import runner

BUNDLE = ROOT / "sql/baseline"
MAIN = sorted(p for p in BUNDLE.glob("[0-9][0-9][0-9]_*.sql")
              if not p.name.endswith((".preflight.sql", ".revert.sql")))
ALL = sorted(BUNDLE.glob("*.sql"))
FUNCTION = re.compile(r"CREATE OR REPLACE FUNCTION (monitoring\.\w+)\((.*?)\$(\w*)\$", re.S)
VIEW = re.compile(r"CREATE OR REPLACE VIEW (monitoring\.\w+) WITH \(security_invoker = true\)")


def directives(text: str) -> set[str]:
    """The runner's own reading of a file's leading ``-- pginfra: word`` directives."""
    m = runner().Migration("baseline", Path("x.sql"), text)
    return {word for word in ("repeatable", "no-transaction") if m.directive(word)}


def revert(path: Path) -> Path:
    return runner().Migration("baseline", path, "").sibling("revert")


def test_the_bundle_is_there():
    assert [p.name for p in MAIN][0] == "001_schema.sql"
    assert len(MAIN) >= 4


@pytest.mark.parametrize("path", ALL, ids=lambda p: p.name)
def test_every_file_starts_by_saying_what_it_does(path):
    lines = [ln for ln in path.read_text().splitlines() if not re.match(r"--\s*pginfra:", ln)]
    comment = [ln for ln in lines[:3] if ln.startswith("-- ")]
    assert len(comment) >= 1 and len(comment[0]) > 20, f"{path.name}: start with a comment"


@pytest.mark.parametrize("path", ALL, ids=lambda p: p.name)
def test_no_file_needs_autocommit(path):
    assert "no-transaction" not in directives(path.read_text())


def test_views_and_functions_are_repeatable_and_the_schema_is_not():
    for path in MAIN:
        text = path.read_text()
        creates_code = bool(FUNCTION.search(text) or VIEW.search(text))
        assert ("repeatable" in directives(text)) == creates_code, path.name
        assert "CREATE TABLE" not in text or not creates_code, (
            f"{path.name}: tables belong in an ordinary file, not a repeatable one")


@pytest.mark.parametrize("path", [p for p in MAIN if FUNCTION.search(p.read_text())],
                         ids=lambda p: p.name)
def test_functions_are_owned_locked_down_and_reverted(path):
    text = path.read_text()
    dropped = revert(path).read_text()
    for name, header, _tag in FUNCTION.findall(text):
        assert f"ALTER FUNCTION {name}(" in text, f"{name}: not given to monitoring_owner"
        assert re.search(rf"REVOKE ALL ON FUNCTION [^;]*{re.escape(name)}\([^;]*FROM PUBLIC;",
                         text), f"{name}: EXECUTE not revoked from PUBLIC"
        assert f"{name}(" in dropped, f"{name}: not dropped by {revert(path).name}"
        assert "SET search_path = pg_catalog, pg_temp" in header, (
            f"{name}: every function pins its search_path")
    owners = re.findall(r"ALTER FUNCTION [^;]*? OWNER TO (\w+);", text)
    assert owners and set(owners) == {"monitoring_owner"}


@pytest.mark.parametrize("path", [p for p in MAIN if "CREATE OR REPLACE VIEW" in p.read_text()],
                         ids=lambda p: p.name)
def test_views_are_invoker_owned_commented_granted_and_reverted(path):
    text = path.read_text()
    dropped = revert(path).read_text()
    names = VIEW.findall(text)
    assert len(names) == text.count("CREATE OR REPLACE VIEW"), "every view is security_invoker"
    for name in names:
        assert f"ALTER VIEW {name} OWNER TO monitoring_owner;" in text, name
        assert f"COMMENT ON VIEW {name} IS" in text, name
        assert name in dropped, f"{name}: not dropped by {revert(path).name}"
    revoke = re.search(r"REVOKE ALL ON ([^;]*) FROM PUBLIC;", text).group(1)
    grant = re.search(r"GRANT SELECT ON ([^;]*) TO pg_monitor;", text).group(1)
    assert set(names) <= set(re.findall(r"monitoring\.\w+", revoke))
    assert set(names) == set(re.findall(r"monitoring\.\w+", grant))


def test_the_schema_file_keeps_the_role_and_hands_everything_to_it():
    text = (BUNDLE / "001_schema.sql").read_text()
    assert "CREATE ROLE monitoring_owner NOLOGIN NOINHERIT" in text
    assert "REVOKE ALL ON SCHEMA monitoring FROM PUBLIC;" in text
    tables = re.findall(r"CREATE TABLE IF NOT EXISTS (monitoring\.\w+)", text)
    assert tables
    for table in tables:
        assert f"ALTER TABLE {table} OWNER TO monitoring_owner;" in text, table
    undone = "\n".join(ln for ln in (BUNDLE / "001_schema.revert.sql").read_text().splitlines()
                       if not ln.startswith("--"))
    assert "DROP ROLE" not in undone  # other databases' schemas still belong to it
    assert "DROP SCHEMA IF EXISTS monitoring;" in undone  # no CASCADE: nothing else vanishes
