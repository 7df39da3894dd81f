import re

import pytest

from pginfra.server_config import quote, render_sections, server_parameters
from pginfra.settings import SettingsError, resolve
from pginfra.templating import render
from pginfra.tuning import GB

FORBIDDEN_METHODS = re.compile(r"\b(trust|md5|password|ident)\s*$", re.M)


def test_parameters_combine_base_tuning_and_settings():
    params = server_parameters(resolve({"postgres_port": 5433}), 16 * GB, 4)
    assert params["shared_buffers"] == "4GB"
    assert params["port"] == "5433"
    assert params["archive_library"] == ""  # else PostgreSQL 15 ignores archive_command
    assert params["archive_command"] == "pgbackrest --stanza=main archive-push %p"
    assert params["restore_command"] == 'pgbackrest --stanza=main archive-get %f "%p"'
    assert params["log_min_duration_statement"] == "500ms"
    assert params["auto_explain.log_min_duration"] == "2000ms"
    assert params["password_encryption"] == "scram-sha-256"
    assert params["ssl_cert_file"] == "/etc/postgresql/15/main/tls/server.crt"
    assert params["unix_socket_permissions"] == "0770"


def test_inventory_parameters_win():
    settings = resolve({"postgres_parameters": {"shared_buffers": "2GB", "jit": True}})
    params = server_parameters(settings, 16 * GB, 4)
    assert (params["shared_buffers"], params["jit"]) == ("2GB", "on")


@pytest.mark.parametrize(("data", "fragment"), [
    ({"postgres_parameters": {"wal_level": "minimal"}}, "wal_level minimal cannot archive"),
    ({"postgres_parameters": {"shared_buffers": "32GB"}}, "not smaller than the host's RAM"),
    ({"postgres_replicas": 12}, "below the 12 replicas planned"),
])
def test_contradictions_stop_the_run(data, fragment):
    with pytest.raises(SettingsError, match=f"  db7: .*{fragment}"):
        server_parameters(resolve(data, "db7"), 16 * GB, 4)


def test_conf_template_mirrors_sections_and_quotes_values():
    params = server_parameters(resolve({"postgres_parameters": {"custom.note": "it's"}}),
                               16 * GB, 4)
    sections = [(t, [(n, quote(v)) for n, v in rows]) for t, rows in render_sections(params)]
    text = render("postgresql-production.conf.j2", path="/x.conf", host_name="pg1",
                  memory="16GB", cpus=4, profile="web", storage="ssd", sections=sections)
    assert "# -- Memory (tuned from RAM)\nshared_buffers = '4GB'\n" in text
    assert "custom.note = 'it''s'" in text
    assert text.count(" = ") == len(params)


def test_hba_has_no_weak_methods_and_rejects_the_rest():
    rules = [{"database": "app", "user": "app", "address": "10.20.0.0/16", "comment": "apps"}]
    text = render("pg_hba.conf.j2", path="/etc/x/pg_hba.conf", rules=rules, auth_query_user="")
    lines = [ln for ln in text.splitlines() if ln and not ln.startswith("#")]
    assert lines[0].split() == ["local", "all", "postgres", "peer"]
    assert ["hostssl", "app", "app", "10.20.0.0/16", "scram-sha-256"] in [
        ln.split() for ln in lines]
    assert lines[-1].split()[-1] == "reject"
    assert not FORBIDDEN_METHODS.search("\n".join(lines))
    assert not any(ln.split()[0] == "host" and ln.split()[-1] != "reject" for ln in lines)


def test_a_floor_raises_the_hot_standby_minimums_and_nothing_else():
    from pginfra.server_config import HOT_STANDBY_MINIMUMS, hot_standby_floor

    settings = resolve({})
    own = server_parameters(settings, memory=4 * 1024**3, cpus=2)
    floor = {"max_connections": 500, "max_worker_processes": 16, "max_wal_senders": 3,
             "max_prepared_transactions": 10, "max_locks_per_transaction": 128}
    raised = server_parameters(settings, memory=4 * 1024**3, cpus=2, floor=floor)
    assert raised["max_connections"] == "500"
    assert raised["max_worker_processes"] == "16"
    assert raised["max_wal_senders"] == own["max_wal_senders"] == "10"  # already above
    assert raised["max_prepared_transactions"] == "10"
    assert raised["max_locks_per_transaction"] == "128"
    assert {k: v for k, v in raised.items() if k not in HOT_STANDBY_MINIMUMS} == \
        {k: v for k, v in own.items() if k not in HOT_STANDBY_MINIMUMS}
    assert hot_standby_floor(raised) == {**floor, "max_wal_senders": 10}
    assert hot_standby_floor({}) == HOT_STANDBY_MINIMUMS
