"""files/pginfra-apply-config: install, check, revert on any failure; a syntax error on a
throwaway PostgreSQL 15. The rest of the server side is proven end to end."""

import os

import pytest
from throwaway_pg import drop_cluster, needs_postgres, new_cluster

from pginfra_host import apply_config


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


class BrokenServer(FakeServer):
    """Fails the way a psql that cannot run, or this program's own crash, would."""

    def __init__(self, failing: str, exc: BaseException):
        super().__init__()
        self.failing, self.exc = failing, exc

    def rows(self, sql):
        if self.failing in sql:
            raise self.exc
        return super().rows(sql)


@pytest.mark.parametrize("failing, exc", [
    ("FROM pg_file_settings f", RuntimeError("invalid line 30 in postgresql-production.conf")),
    ("FROM pg_file_settings f", ValueError("the program's own bug")),
    ("pg_reload_conf", RuntimeError("connection lost")),
])
def test_any_failure_after_install_puts_the_previous_file_back(pair, failing, exc):
    staged, target = pair
    lines = []
    server = BrokenServer(failing, exc)
    assert apply_config.apply([pair], "15/main", server, log=lines.append) == 1
    assert target.read_text() == "work_mem = '4MB'\n"
    assert not staged.exists()
    assert not target.with_name("target.conf.pginfra-prev").exists()
    assert any("previous files restored" in line for line in lines)


def test_a_signal_puts_the_previous_file_back_and_still_stops_the_program(pair):
    staged, target = pair
    server = BrokenServer("FROM pg_file_settings f", KeyboardInterrupt("signal SIGTERM"))
    with pytest.raises(KeyboardInterrupt):
        apply_config.apply([pair], "15/main", server, log=lambda m: None)
    assert target.read_text() == "work_mem = '4MB'\n"


def test_a_failure_half_way_through_install_is_undone(tmp_path):
    first = (tmp_path / "a.staged", tmp_path / "a.conf")
    second = (tmp_path / "b.staged", tmp_path / "b.conf")
    first[0].write_text("new a\n")
    first[1].write_text("old a\n")
    second[1].write_text("old b\n")  # its staged file is missing
    lines = []
    assert apply_config.apply([first, second], "15/main", FakeServer(), log=lines.append) == 1
    assert any("b.staged is missing" in line for line in lines), lines
    assert first[1].read_text() == "old a\n"
    assert second[1].read_text() == "old b\n"


@needs_postgres
def test_a_syntax_error_on_a_real_server_is_refused_and_reverted(tmp_path):
    """A value with a newline in it, as a bad postgres_parameters once wrote (settings now
    refuse it): the running server reports the syntax error, the file is put back, and the
    server reads its configuration without error afterwards."""
    cluster = new_cluster()
    try:
        with open(cluster.data / "postgresql.conf", "a") as conf:
            conf.write("include_if_exists = 'production.conf'\n")
        target = cluster.data / "production.conf"
        target.write_text("work_mem = '4MB'\n")
        staged = cluster.root / "staged.conf"
        staged.write_text("work_mem = '8MB\nssl = off'\n")
        for path in (target, staged):
            os.chown(path, cluster.uid, cluster.gid)
        psql = apply_config.Psql(cluster.port, host=str(cluster.root))
        lines = []
        assert apply_config.apply([(staged, target)], "15/main", psql, log=lines.append) == 1
        assert target.read_text() == "work_mem = '4MB'\n"
        assert any("production.conf:1: syntax error" in line for line in lines), lines
        assert cluster.sql("SELECT count(*) FROM pg_file_settings WHERE error IS NOT NULL") \
            == "0"
    finally:
        drop_cluster(cluster)
