"""files/pginfra-apply-config: install, check, revert. The server side is proven end to end."""

import importlib.machinery
import importlib.util

import pytest

from pginfra import ROOT

loader = importlib.machinery.SourceFileLoader("apply_config",
                                              str(ROOT / "files/pginfra-apply-config"))
spec = importlib.util.spec_from_loader("apply_config", loader)
apply_config = importlib.util.module_from_spec(spec)
loader.exec_module(apply_config)


class FakeServer:
    """Answers the program's queries the way a server with ``errors`` in its files would."""

    def __init__(self, errors=(), pending=()):
        self.errors, self.pending, self.sql = list(errors), list(pending), []
        self.load_time = 0

    def rows(self, sql):
        self.sql.append(sql)
        if sql.startswith("SHOW server_version_num"):
            return [["150010"]]
        if "FROM pg_file_settings f" in sql:
            return self.errors
        if "pg_hba_file_rules" in sql or "pg_ident_file_mappings" in sql:
            return []
        if "FROM pg_file_settings WHERE name" in sql:
            return []
        if sql == "SELECT pg_reload_conf()":
            self.load_time += 1
            return [["t"]]
        if sql == "SELECT pg_conf_load_time()":
            return [[str(self.load_time)]]
        if "pending_restart" in sql:
            return [[p] for p in self.pending]
        raise AssertionError(sql)


@pytest.fixture
def pair(tmp_path):
    staged, target = tmp_path / "staged.conf", tmp_path / "target.conf"
    staged.write_text("work_mem = '8MB'\n")
    target.write_text("work_mem = '4MB'\n")
    return staged, target


def test_parse_pairs():
    assert apply_config.parse_pairs(["/a=/b"])[0][1].name == "b"
    with pytest.raises(ValueError):
        apply_config.parse_pairs(["/a"])


def test_good_file_is_installed_and_reloaded(pair):
    staged, target = pair
    server = FakeServer()
    assert apply_config.apply([pair], "15/main", server, log=lambda m: None) == 0
    assert target.read_text() == staged.read_text()
    assert "SELECT pg_reload_conf()" in server.sql
    assert not target.with_name("target.conf.pginfra-prev").exists()


def test_bad_file_is_reverted_and_staged_copy_dropped(pair):
    staged, target = pair
    server = FakeServer(errors=[[str(target), "1", "work_mem", "setting could not be applied"]])
    lines = []
    assert apply_config.apply([pair], "15/main", server, log=lines.append) == 1
    assert target.read_text() == "work_mem = '4MB'\n"
    assert not staged.exists()
    assert "SELECT pg_reload_conf()" not in server.sql
    assert any(f"{target}:1 (work_mem)" in line for line in lines)


def test_new_file_is_removed_on_refusal(tmp_path):
    staged, target = tmp_path / "s.conf", tmp_path / "new.conf"
    staged.write_text("x = 1\n")
    server = FakeServer(errors=[[str(target), "1", "x", "unrecognized configuration parameter"]])
    assert apply_config.apply([(staged, target)], "15/main", server, log=lambda m: None) == 1
    assert not target.exists()


def test_unchanged_file_neither_reloads_nor_restarts(pair):
    staged, target = pair
    target.write_text(staged.read_text())
    server = FakeServer()
    assert apply_config.apply([pair], "15/main", server, log=lambda m: None) == 0
    assert "SELECT pg_reload_conf()" not in server.sql
