"""Streaming replication's planning on the control machine: the replication role and the slots
(pginfra.roles), a standby's server parameters and passfile (pginfra.server_config), and the
shell and SQL the replication step sends (pginfra.steps.replication).

The step's scripts run here under ``sh`` with stand-ins for runuser, install, systemctl,
pg_ctlcluster and sleep in a temporary directory; the role and slot SQL runs on a throwaway
PostgreSQL 15 cluster where one can be made (see throwaway_pg)."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
from pyinfra.context import ctx_host, ctx_inventory
from throwaway_pg import PGBIN, drop_cluster, needs_postgres, new_cluster

from pginfra.facts import PostgresRoles
from pginfra.roles import QUIET, REPLICATION_ATTRIBUTES, plan_replication_role, plan_slots
from pginfra.scram import make_verifier, verify
from pginfra.server_config import (
    passfile_path,
    passfile_text,
    primary_conninfo,
    server_parameters,
)
from pginfra.settings import SettingsError, resolve
from pginfra.steps.replication import (
    BUILD_RETRIES_CASCADE,
    _lsn,
    build_command,
    check_promotion,
    promote_command,
    psql,
    slot_changes,
    slots_sql,
    standby_needs_build,
    unit,
    wait_streaming_command,
)
from pginfra.topology import TopologyError, plan
from pginfra.tuning import GB

CONNINFO_TAIL = ("user=replicator application_name={slot} sslmode=verify-full "
                 "sslrootcert=/etc/postgresql/15/main/tls/ca.crt "
                 "passfile=/etc/postgresql/15/main/replication.pgpass connect_timeout=5 "
                 "keepalives_idle=30 keepalives_interval=10 keepalives_count=3")


def hosts(**extra: dict) -> dict[str, dict]:
    """pg1 (the primary), pg2 (its standby, port 5433) and pg3 (a standby of pg2)."""
    data = {
        "pg1": {"postgres_listen_addresses": ["localhost", "10.0.0.1"]},
        "pg2": {"postgres_listen_addresses": ["localhost", "10.0.0.2"], "postgres_port": 5433},
        "pg3": {"postgres_listen_addresses": ["localhost", "10.0.0.3"],
                "postgres_upstream": "pg2"},
    }
    for name, values in extra.items():
        data.setdefault(name, {}).update(values)
    return data


def node_settings(name: str, data: dict | None = None, primary: str = "pg1"):
    """The Settings of host ``name`` with its place in the cluster of ``data``."""
    data = hosts() if data is None else data
    settings = resolve(data[name], name)
    settings.cluster = plan(data, [primary])
    settings.node = settings.cluster[name]
    return settings


def role(**kw) -> dict:
    """A role as the PostgresRoles fact reports it, converged as the replication role."""
    have = {"login": True, "replication": True, "superuser": False, "createdb": False,
            "createrole": False, "inherit": False, "bypassrls": False, "connection_limit": -1,
            "password": "SCRAM-SHA-256$stored", "member_of": []}
    have.update(kw)
    return have


# -- plan_replication_role -------------------------------------------------------------------------


def test_a_missing_replication_role_is_created_with_its_verifier():
    verifier = make_verifier("Str0ng-replication", "replicator")
    assert plan_replication_role("replicator", None, verifier) == [
        'CREATE ROLE "replicator" WITH LOGIN REPLICATION NOSUPERUSER NOCREATEDB NOCREATEROLE '
        "NOINHERIT NOBYPASSRLS",
        f"ALTER ROLE \"replicator\" PASSWORD '{verifier}'",
    ]


def test_a_converged_replication_role_needs_no_statement():
    assert plan_replication_role("replicator", role(), "SCRAM-SHA-256$stored") == []


@pytest.mark.parametrize(("drift", "expected"), [
    ({"superuser": True}, 'ALTER ROLE "repl" WITH NOSUPERUSER'),
    ({"createdb": True}, 'ALTER ROLE "repl" WITH NOCREATEDB'),
    ({"createrole": True}, 'ALTER ROLE "repl" WITH NOCREATEROLE'),
    ({"inherit": True}, 'ALTER ROLE "repl" WITH NOINHERIT'),
    ({"bypassrls": True}, 'ALTER ROLE "repl" WITH NOBYPASSRLS'),
    ({"login": False}, 'ALTER ROLE "repl" WITH LOGIN'),
    ({"replication": False}, 'ALTER ROLE "repl" WITH REPLICATION'),
    ({"superuser": True, "createdb": True, "login": False, "replication": False},
     'ALTER ROLE "repl" WITH LOGIN REPLICATION NOSUPERUSER NOCREATEDB'),
])
def test_attributes_other_than_login_and_replication_are_taken_away(drift, expected):
    assert plan_replication_role("repl", role(**drift), "SCRAM-SHA-256$stored") == [expected]


def test_a_fact_without_replication_or_bypassrls_counts_as_neither():
    have = role()
    del have["replication"], have["bypassrls"]
    assert plan_replication_role("repl", have, "SCRAM-SHA-256$stored") == [
        'ALTER ROLE "repl" WITH REPLICATION']


def test_memberships_are_revoked():
    have = role(member_of=["app_rw", "pg_read_all_data"])
    assert plan_replication_role("repl", have, "SCRAM-SHA-256$stored") == [
        'REVOKE "app_rw" FROM "repl"', 'REVOKE "pg_read_all_data" FROM "repl"']


def test_every_change_at_once_in_order():
    have = role(superuser=True, password="SCRAM-SHA-256$old", member_of=["admins"])
    assert plan_replication_role("repl", have, "SCRAM-SHA-256$new") == [
        'ALTER ROLE "repl" WITH NOSUPERUSER',
        "ALTER ROLE \"repl\" PASSWORD 'SCRAM-SHA-256$new'",
        'REVOKE "admins" FROM "repl"',
    ]


@pytest.mark.parametrize("stored", ["SCRAM-SHA-256$old", None])
def test_the_password_changes_only_when_the_verifier_differs(stored):
    assert plan_replication_role("repl", role(password=stored), "SCRAM-SHA-256$new") == [
        "ALTER ROLE \"repl\" PASSWORD 'SCRAM-SHA-256$new'"]


def test_the_wanted_verifier_keeps_a_matching_one_and_never_carries_the_password():
    from pginfra.roles import wanted_verifiers

    stored = make_verifier("Replicate-2024!", "replicator")
    current = {"replicator": role(password=stored)}
    kept = wanted_verifiers({"replicator": "Replicate-2024!"}, current)["replicator"]
    assert kept == stored
    assert plan_replication_role("replicator", current["replicator"], kept) == []
    changed = wanted_verifiers({"replicator": "Another-pass-99"}, current)["replicator"]
    sql = plan_replication_role("replicator", current["replicator"], changed)
    assert sql == [f"ALTER ROLE \"replicator\" PASSWORD '{changed}'"]
    assert verify("Another-pass-99", changed)
    assert "Another-pass-99" not in sql[0]


def test_the_replication_attributes_are_login_and_replication_only():
    granted = [a for a in REPLICATION_ATTRIBUTES if not a.startswith("NO")]
    assert granted == ["LOGIN", "REPLICATION"]


# -- plan_slots ------------------------------------------------------------------------------------


@pytest.mark.parametrize(("wanted", "have", "keep", "expected"), [
    pytest.param(["pg2", "pg3"], [], [], (["pg2", "pg3"], []), id="create-missing"),
    pytest.param(["pg2", "pg3"], [{"name": "pg3"}, {"name": "pg4"}], [], (["pg2"], ["pg4"]),
                 id="create-and-drop"),
    pytest.param(["pg2"], [{"name": "pg2", "active": True, "wal_status": "reserved"}], [],
                 ([], []), id="converged"),
    pytest.param(["pg2"], [{"name": "pg2"}, {"name": "receivewal"}], ["receivewal"], ([], []),
                 id="kept"),
    pytest.param([], [{"name": "a"}, {"name": "b"}, {"name": "c"}], ["b"], ([], ["a", "c"]),
                 id="drop-all-but-kept"),
    pytest.param(["pg3", "pg2"], [{"name": "z"}, {"name": "y"}], ["nothing"],
                 (["pg3", "pg2"], ["z", "y"]), id="order-kept"),
])
def test_plan_slots(wanted, have, keep, expected):
    assert plan_slots(wanted, have, keep) == expected


# -- primary_conninfo and the passfile -------------------------------------------------------------


def test_a_standby_connects_to_its_upstream():
    assert primary_conninfo(node_settings("pg2")) == (
        "host=10.0.0.1 port=5432 " + CONNINFO_TAIL.format(slot="pg2"))


def test_a_cascaded_standby_connects_to_its_upstream_standby_at_that_ones_port():
    settings = node_settings("pg3")
    assert settings.postgres_port == 5432  # its own; the upstream's is 5433
    assert primary_conninfo(settings) == (
        "host=10.0.0.2 port=5433 " + CONNINFO_TAIL.format(slot="pg3"))


def test_conninfo_follows_the_cluster_and_replication_user_settings():
    data = {"db1.example.com": {"postgres_listen_addresses": ["10.0.0.1"]},
            "db2.example.com": {"postgres_listen_addresses": ["10.0.0.2"]}}
    for values in data.values():
        values.update(postgres_replication_user="streamer", postgres_cluster="prod")
    settings = node_settings("db2.example.com", data, primary="db1.example.com")
    conninfo = primary_conninfo(settings).split()
    assert "user=streamer" in conninfo
    assert "application_name=db2_example_com" in conninfo
    assert "sslrootcert=/etc/postgresql/15/prod/tls/ca.crt" in conninfo
    assert "passfile=/etc/postgresql/15/prod/replication.pgpass" in conninfo
    assert passfile_path(settings) == "/etc/postgresql/15/prod/replication.pgpass"


def test_a_primary_and_a_server_on_its_own_have_no_conninfo():
    assert primary_conninfo(node_settings("pg1")) == ""
    assert primary_conninfo(resolve({})) == ""


def test_the_conninfo_holds_no_password(monkeypatch):
    monkeypatch.setenv("PGINFRA_PASSWORD_REPLICATOR", "Sup3r-secret-value")
    conninfo = primary_conninfo(node_settings("pg2"))
    assert "password" not in conninfo
    assert "Sup3r-secret-value" not in conninfo


def _passfile_fields(line: str) -> list[str]:
    """A passfile line split as libpq does: ':' separates, '\\' escapes the next character."""
    fields, field, chars = [], "", iter(line.rstrip("\n"))
    for ch in chars:
        if ch == "\\":
            field += next(chars, "")
        elif ch == ":":
            fields.append(field)
            field = ""
        else:
            field += ch
    return [*fields, field]


@pytest.mark.parametrize(("password", "escaped"), [
    ("Plain-pass-123", "Plain-pass-123"),
    ("a:b", "a\\:b"),
    ("a\\b", "a\\\\b"),
    ("\\:", "\\\\\\:"),
    ("::\\\\", "\\:\\:\\\\\\\\"),
])
def test_passfile_escapes_colons_and_backslashes(password, escaped):
    settings = node_settings("pg2")
    text = passfile_text(settings, password)
    assert text == f"*:*:replication:replicator:{escaped}\n"
    assert _passfile_fields(text) == ["*", "*", "replication", "replicator", password]


def test_passfile_names_the_replication_user():
    data = hosts()
    for values in data.values():
        values["postgres_replication_user"] = "streamer"
    assert passfile_text(node_settings("pg2", data), "x") == "*:*:replication:streamer:x\n"


def test_a_password_with_a_line_break_is_refused_not_written_as_two_lines():
    with pytest.raises(SettingsError, match="pg2: the password of replicator holds a line "
                                            "break"):
        passfile_text(node_settings("pg2"), "Multi-line-pass-1\n")


# -- server_parameters on a standby and on a primary -----------------------------------------------


def sync_hosts(**extra) -> dict[str, dict]:
    """pg1, pg2, pg3, every one streaming from pg1, all with the same synchronous standbys
    (as group data)."""
    data = {f"pg{i}": {"postgres_listen_addresses": ["localhost", f"10.0.0.{i}"],
                       "postgres_synchronous_standbys": "FIRST 1 (pg2, pg3)", **extra}
            for i in (1, 2, 3)}
    return data


def test_a_standby_streams_from_its_upstream_through_its_slot():
    settings = node_settings("pg2", sync_hosts())
    params = server_parameters(settings, 16 * GB, 4)
    assert params["primary_conninfo"] == primary_conninfo(settings)
    assert params["primary_conninfo"].startswith("host=10.0.0.1 port=5432 user=replicator ")
    assert params["primary_slot_name"] == "pg2"
    assert params["synchronous_standby_names"] == ""  # group data, but not a standby's
    assert params["hot_standby"] == "on"
    assert params["hot_standby_feedback"] == "on"
    assert params["recovery_target_timeline"] == "latest"
    assert params["max_slot_wal_keep_size"] == "10GB"
    assert params["log_replication_commands"] == "on"


def test_the_primary_has_synchronous_standbys_and_no_upstream():
    params = server_parameters(node_settings("pg1", sync_hosts()), 16 * GB, 4)
    assert params["synchronous_standby_names"] == 'FIRST 1 ("pg2", "pg3")'
    assert params["primary_conninfo"] == ""
    assert params["primary_slot_name"] == ""
    assert params["log_replication_commands"] == "on"
    assert params["max_slot_wal_keep_size"] == "10GB"


def test_a_cascaded_standby_streams_from_the_standby_it_names():
    params = server_parameters(node_settings("pg3"), 16 * GB, 4)
    assert params["primary_conninfo"].startswith("host=10.0.0.2 port=5433 ")
    assert "application_name=pg3 " in params["primary_conninfo"]
    assert params["primary_slot_name"] == "pg3"


def test_an_asynchronous_primary_has_empty_synchronous_standby_names():
    params = server_parameters(node_settings("pg1"), 16 * GB, 4)
    assert params["synchronous_standby_names"] == ""


@pytest.mark.parametrize("name", ["pg1", "pg2"])
@pytest.mark.parametrize(("data", "feedback", "keep"), [
    ({}, "on", "10GB"),
    ({"postgres_hot_standby_feedback": False, "postgres_max_slot_wal_keep_size": "-1"},
     "off", "-1"),
    ({"postgres_max_slot_wal_keep_size": "512MB"}, "on", "512MB"),
])
def test_feedback_and_slot_wal_cap_follow_the_settings(name, data, feedback, keep):
    params = server_parameters(node_settings(name, sync_hosts(**data)), 16 * GB, 4)
    assert (params["hot_standby_feedback"], params["max_slot_wal_keep_size"]) == (feedback, keep)


def test_a_server_on_its_own_has_the_replication_parameters_of_a_primary():
    params = server_parameters(resolve({}), 16 * GB, 4)
    assert (params["primary_conninfo"], params["primary_slot_name"],
            params["synchronous_standby_names"]) == ("", "", "")
    assert params["log_replication_commands"] == "on"


def many_standbys(count: int, **extra) -> dict[str, dict]:
    data = {"pg0": {"postgres_listen_addresses": ["10.0.1.100"], **extra}}
    for i in range(1, count + 1):
        data[f"pg{i}"] = {"postgres_listen_addresses": [f"10.0.1.{i}"], **extra}
    return data


def test_senders_and_slots_grow_with_the_cluster_on_every_server():
    for name in ("pg0", "pg1"):  # the primary, and a standby that may be promoted
        params = server_parameters(node_settings(name, many_standbys(11), primary="pg0"),
                                   16 * GB, 4)
        assert params["max_wal_senders"] == "13"  # 11 others and a pg_basebackup
        assert params["max_replication_slots"] == "11"
    small = server_parameters(node_settings("pg0", many_standbys(2), primary="pg0"), 16 * GB, 4)
    assert (small["max_wal_senders"], small["max_replication_slots"]) == ("10", "10")


def test_max_wal_senders_set_below_the_standbys_is_refused():
    data = many_standbys(11, postgres_parameters={"max_wal_senders": "10"})
    settings = node_settings("pg0", data, primary="pg0")
    with pytest.raises(SettingsError, match=r"pg0: max_wal_senders 10 is below the 11 replicas"):
        server_parameters(settings, 16 * GB, 4)


# -- the replication step's helpers ----------------------------------------------------------------


@pytest.mark.parametrize(("text", "expected"), [
    ("0/0", 0),
    ("0/3000148", 0x3000148),
    ("16/B374D848", (0x16 << 32) + 0xB374D848),
    ("16/b374d848", (0x16 << 32) + 0xB374D848),
    ("FFFFFFFF/FFFFFFFF", 2**64 - 1),
    (None, -1),
    ("", -1),
])
def test_lsn(text, expected):
    assert _lsn(text) == expected


def test_lsn_orders_wal_positions():
    assert _lsn("1/0") > _lsn("0/FFFFFFFF") > _lsn("0/10") > _lsn("0/F") > _lsn(None)


def test_slots_sql_creates_reserving_wal_and_terminates_before_dropping():
    # drops first: a slot that lost its WAL is dropped and created again under its name
    assert slots_sql(["pg2"], ["pg4"]) == (
        "SELECT pg_terminate_backend(active_pid, 5000) FROM pg_replication_slots "
        "WHERE slot_name = 'pg4' AND active_pid IS NOT NULL;\n"
        "SELECT pg_drop_replication_slot('pg4');\n"
        "SELECT pg_create_physical_replication_slot('pg2', true);\n")


def test_slots_sql_quotes_names_as_literals():
    sql = slots_sql(["a'b"], ["c'd"])
    assert "pg_create_physical_replication_slot('a''b', true)" in sql
    assert "WHERE slot_name = 'c''d' AND" in sql
    assert "pg_drop_replication_slot('c''d')" in sql
    assert "'a'b'" not in sql and "'c'd'" not in sql


def test_slots_sql_drops_each_slot_after_its_own_walsender_is_gone():
    sql = slots_sql([], ["x", "y"]).splitlines()
    assert [line.split("(")[0] for line in sql] == [
        "SELECT pg_terminate_backend", "SELECT pg_drop_replication_slot",
        "SELECT pg_terminate_backend", "SELECT pg_drop_replication_slot"]
    assert "'x'" in sql[0] and "'x'" in sql[1] and "'y'" in sql[2] and "'y'" in sql[3]


def test_psql_and_unit():
    settings = node_settings("pg2")
    assert psql(settings) == ("runuser -u postgres -- psql -X -q -v ON_ERROR_STOP=1 -p 5433 "
                              "-d postgres --single-transaction")
    assert not psql(settings, atomic=False).endswith("--single-transaction")
    assert unit(settings) == "postgresql@15-main"


@pytest.fixture
def on_host():
    """pyinfra's ``host`` for helpers that name it in messages: a stand-in with a name."""

    def use(name: str):
        return ctx_host.use(SimpleNamespace(name=name))

    return use


def test_slot_changes_of_the_primary(on_host):
    data = hosts(pg4={"postgres_listen_addresses": ["10.0.0.4"]},
                 pg1={"postgres_replication_slots_keep": ["receivewal"]})
    settings = node_settings("pg1", data)
    have = {"slots": [{"name": "pg2"}, {"name": "gone"}, {"name": "receivewal"}]}
    with on_host("pg1"):
        name, sql = slot_changes(settings, have)
        assert (name, sql) == ("slots: drop gone, create pg4", slots_sql(["pg4"], ["gone"]))
        assert slot_changes(settings, {"slots": [{"name": "pg2"}, {"name": "pg4"}]}) == ("", "")
        assert slot_changes(settings, None)[0] == "slots: create pg2, create pg4"
        lost = {"slots": [{"name": "pg2", "wal_status": "lost"}, {"name": "pg4"},
                          {"name": "receivewal"}]}
        assert slot_changes(settings, lost) == ("slots: drop pg2, create pg2",
                                                slots_sql(["pg2"], ["pg2"]))


def test_slot_changes_of_a_cascade_upstream(on_host):
    with on_host("pg2"):
        assert slot_changes(node_settings("pg2"), None) == (
            "slots: create pg3", slots_sql(["pg3"], []))


# -- build_command, wait_streaming_command and promote_command, run with stand-ins -----------------


SHIMS = {
    # pg_basebackup fails the first $SHIM_FAILS times (leaving a partial copy behind), then
    # copies; psql prints $SHIM_PSQL.
    "runuser": r"""
echo "runuser $*" >> "$SHIM_LOG"
case "$*" in
*pg_basebackup*)
    n=$(( $(cat "$SHIM_COUNT" 2>/dev/null || echo 0) + 1 )); echo "$n" > "$SHIM_COUNT"
    dir=
    while [ $# -gt 0 ]; do [ "$1" = -D ] && dir=$2; shift; done
    if [ "$n" -le "${SHIM_FAILS:-0}" ]; then : > "$dir/partial"; exit 1; fi
    echo 15 > "$dir/PG_VERSION" ;;
*psql*) echo "${SHIM_PSQL:-}" ;;
esac
""",
    "install": r"""
for last; do :; done
case " $* " in *" -d "*) mkdir -p "$last" ;; *) : > "$last" ;; esac
""",
    "systemctl": r"""
echo "systemctl $*" >> "$SHIM_LOG"
[ "$1" != "${SHIM_SYSTEMCTL_FAIL:-none}" ]
""",
    "pg_ctlcluster": r"""
echo "pg_ctlcluster $*" >> "$SHIM_LOG"
[ -z "${SHIM_PG_CTLCLUSTER_FAIL:-}" ]
""",
    "sleep": 'echo "sleep $*" >> "$SHIM_LOG"\n',
}


@pytest.fixture
def run(tmp_path):
    """Run a script under sh with the stand-ins first on PATH; returns (process, log lines)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, body in SHIMS.items():
        (bin_dir / name).write_text("#!/bin/sh\n" + body)
        (bin_dir / name).chmod(0o755)
    log = tmp_path / "log"

    def go(script: str, **env):
        log.write_text("")
        (tmp_path / "count").unlink(missing_ok=True)
        proc = subprocess.run(
            ["sh", "-c", script], capture_output=True, text=True, timeout=120,
            env={**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}",
                 "SHIM_LOG": str(log), "SHIM_COUNT": str(tmp_path / "count"), **env})
        return proc, log.read_text().splitlines()

    return go


@pytest.fixture
def data_dir(tmp_path) -> Path:
    """A fresh, empty cluster's data directory (what a new standby is made over)."""
    data = tmp_path / "15" / "main"
    data.mkdir(parents=True)
    (data / "fresh-cluster").write_text("")
    return data


def basebackup_args(script: str) -> list[str]:
    line = next(ln for ln in script.splitlines() if "pg_basebackup" in ln and "then" in ln)
    return shlex.split(line.strip().removeprefix("if ").split("; then")[0])


def test_a_standby_of_the_primary_is_copied_through_its_slot():
    settings = node_settings("pg2")
    script = build_command(settings, "/var/lib/postgresql/15/main", cascade=False)
    args = basebackup_args(script)
    assert args[:5] == ["runuser", "-u", "postgres", "--", "pg_basebackup"]
    assert args[args.index("-d") + 1] == primary_conninfo(settings)
    assert args[args.index("-D") + 1] == "/var/lib/postgresql/15/main.pginfra-standby"
    assert args[args.index("-S") + 1] == "pg2"
    assert args[args.index("-X") + 1] == "stream"
    assert "-w" in args  # never prompts for a password
    assert "for i in $(seq 1 1); do" in script.splitlines()


def test_a_cascaded_standby_is_copied_without_a_slot_and_retried():
    settings = node_settings("pg3")
    script = build_command(settings, "/var/lib/postgresql/15/main", cascade=True)
    args = basebackup_args(script)
    assert "-S" not in args
    assert args[args.index("-d") + 1].startswith("host=10.0.0.2 port=5433 ")
    assert f"for i in $(seq 1 {BUILD_RETRIES_CASCADE}); do" in script.splitlines()
    assert "pg_basebackup from pg2 failed" in script


def test_the_build_command_carries_no_password(monkeypatch):
    monkeypatch.setenv("PGINFRA_PASSWORD_REPLICATOR", "Sup3r-secret-value")
    script = build_command(node_settings("pg2"), "/var/lib/postgresql/15/main", cascade=False)
    assert "Sup3r-secret-value" not in script
    assert "password" not in script.lower()


def test_the_swap_comes_only_after_a_successful_copy():
    lines = build_command(node_settings("pg2"), "/d/main", cascade=False).splitlines()
    assert lines[0] == "set -eu"
    checked = next(i for i, ln in enumerate(lines) if ln.startswith('[ -n "$ok" ] ||'))
    assert "exit 1" in lines[checked]
    for step in ("systemctl stop", "mv /d/main /d/main.pginfra-replaced",
                 "mv /d/main.pginfra-standby /d/main", "systemctl start"):
        assert next(i for i, ln in enumerate(lines) if ln.startswith(step)) > checked, step


def test_a_copy_replaces_the_data_directory_and_starts_a_standby(run, data_dir):
    leftover = Path(f"{data_dir}.pginfra-standby")
    leftover.mkdir()
    (leftover / "from-an-earlier-run").write_text("")
    proc, log = run(build_command(node_settings("pg2"), str(data_dir), cascade=False))
    assert proc.returncode == 0, proc.stderr
    assert sorted(p.name for p in data_dir.iterdir()) == ["PG_VERSION", "standby.signal"]
    assert not leftover.exists()
    assert not Path(f"{data_dir}.pginfra-replaced").exists()
    assert [ln for ln in log if ln.startswith("systemctl")] == [
        "systemctl stop postgresql@15-main", "systemctl start postgresql@15-main"]
    assert sum(ln.startswith("runuser") for ln in log) == 1


def test_a_failed_copy_leaves_the_data_directory_alone(run, data_dir):
    proc, log = run(build_command(node_settings("pg2"), str(data_dir), cascade=False),
                    SHIM_FAILS="1")
    assert proc.returncode == 1
    assert proc.stderr.strip() == "pg_basebackup from pg1 failed"
    assert [p.name for p in data_dir.iterdir()] == ["fresh-cluster"]
    assert not Path(f"{data_dir}.pginfra-standby").exists()
    assert not any(ln.startswith(("systemctl", "sleep")) for ln in log)


def test_a_cascade_retries_until_its_upstream_can_be_copied(run, data_dir):
    proc, log = run(build_command(node_settings("pg3"), str(data_dir), cascade=True),
                    SHIM_FAILS="2")
    assert proc.returncode == 0, proc.stderr
    assert sum(ln.startswith("runuser") for ln in log) == 3
    assert [ln for ln in log if ln.startswith("sleep")] == ["sleep 5", "sleep 5"]
    assert sorted(p.name for p in data_dir.iterdir()) == ["PG_VERSION", "standby.signal"]


def test_a_cascade_gives_up_after_its_retries(run, data_dir):
    proc, log = run(build_command(node_settings("pg3"), str(data_dir), cascade=True),
                    SHIM_FAILS="100000")
    assert proc.returncode == 1
    assert proc.stderr.strip() == "pg_basebackup from pg2 failed"
    assert sum(ln.startswith("runuser") for ln in log) == BUILD_RETRIES_CASCADE
    assert sum(ln.startswith("sleep") for ln in log) == BUILD_RETRIES_CASCADE - 1
    assert [p.name for p in data_dir.iterdir()] == ["fresh-cluster"]


def test_a_server_that_does_not_stop_keeps_its_data_directory(run, data_dir):
    proc, log = run(build_command(node_settings("pg2"), str(data_dir), cascade=False),
                    SHIM_SYSTEMCTL_FAIL="stop")
    assert proc.returncode != 0
    assert [p.name for p in data_dir.iterdir()] == ["fresh-cluster"]
    assert [ln for ln in log if ln.startswith("systemctl")] == [
        "systemctl stop postgresql@15-main"]


def test_waiting_for_streaming(run, on_host):
    settings = node_settings("pg2")
    with on_host("pg2"):
        script = wait_streaming_command(settings, seconds=3)
    assert "-p 5433 -c 'SELECT status FROM pg_stat_wal_receiver'" in script
    proc, log = run(script, SHIM_PSQL="streaming")
    assert proc.returncode == 0
    assert len(log) == 1 and log[0].startswith("runuser -u postgres -- psql -XAtq -p 5433")
    proc, log = run(script, SHIM_PSQL="startup")
    assert proc.returncode == 1
    assert proc.stderr.strip() == ("pg2 is not streaming from pg1 after 3s: see the server log "
                                   "in /var/log/postgresql/pginfra")
    assert sum(ln.startswith("runuser") for ln in log) == 3


def test_promoting(run):
    # pg_ctl does not wait (its 60 s may not be enough while restore_command still tries a
    # lost primary's repository): the script waits, for as long as it is told
    assert "pg_ctlcluster 15 main promote -- -W" in promote_command(node_settings("pg2"))
    assert "seq 1 300" in promote_command(node_settings("pg2"))
    script = promote_command(node_settings("pg2"), seconds=3)
    assert [ln for ln in script.splitlines() if ln.startswith("pg_ctlcluster")] == [
        "pg_ctlcluster 15 main promote -- -W"]
    assert "-p 5433 -c 'SELECT pg_is_in_recovery()'" in script
    proc, log = run(script, SHIM_PSQL="f")
    assert proc.returncode == 0
    assert log == ["pg_ctlcluster 15 main promote -- -W",
                   "runuser -u postgres -- psql -XAtq -p 5433 -c SELECT pg_is_in_recovery()"]
    proc, log = run(script, SHIM_PSQL="t")
    assert proc.returncode == 1
    assert proc.stderr.strip() == "still in recovery 3 s after pg_ctlcluster promote"
    assert sum(ln.startswith("runuser") for ln in log) == 3
    proc, log = run(script, SHIM_PG_CTLCLUSTER_FAIL="1")
    assert proc.returncode == 1
    assert log == ["pg_ctlcluster 15 main promote -- -W"]


# -- standby_needs_build and check_promotion: never wipe data, never two primaries -----------------


def server_state(**kw) -> dict:
    state = {"in_recovery": False, "system_identifier": "7301", "timeline": 1,
             "lsn": "0/3000148", "user_databases": 0, "user_tables": 0, "user_roles": 0,
             "receiver": None, "slots": []}
    state.update(kw)
    return state


@pytest.mark.parametrize(("state", "new_cluster", "upstream", "expected"), [
    (None, True, None, True),
    (None, False, None, True),
    ({"standby_signal": False, "server": server_state()}, False, None, True),
    ({"standby_signal": True, "server": None}, False, None, False),
    ({"standby_signal": True, "server": server_state(in_recovery=True)}, False,
     server_state(), False),
    ({"standby_signal": True, "server": server_state(in_recovery=True)}, False, None, False),
])
def test_standby_needs_build(on_host, state, new_cluster, upstream, expected):
    with on_host("pg2"):
        assert standby_needs_build(node_settings("pg2"), state, new_cluster, upstream) \
            is expected


@pytest.mark.parametrize(("state", "upstream", "fragment"), [
    ({"standby_signal": False, "server": None}, None,
     "pg2: the cluster 15 main does not answer and is no standby"),
    ({"standby_signal": True, "server": server_state(in_recovery=True)},
     server_state(system_identifier="9999"),
     "pg2 is a standby of another cluster (system identifier 7301; pg1's is 9999)"),
    ({"standby_signal": False, "server": server_state(user_databases=2, user_roles=3)}, None,
     "pg2 is named a standby of pg1 but holds a primary's data (2 databases, 3 roles)"),
    ({"standby_signal": False, "server": server_state(user_tables=1)}, None,
     "holds a primary's data (1 tables)"),
])
def test_standby_needs_build_never_wipes_data(on_host, state, upstream, fragment):
    with on_host("pg2"), pytest.raises(TopologyError) as err:
        standby_needs_build(node_settings("pg2"), state, False, upstream)
    assert fragment in str(err.value)
    assert "nothing was changed" in str(err.value)


class FakeHost:
    """Another host of the run, as check_promotion reads it: its data and ReplicationState."""

    def __init__(self, server=None, error=None, **data):
        self.server, self.error, self.data, self.asked = server, error, data, None

    def get_fact(self, fact, **kwargs):
        self.asked = kwargs
        if self.error:
            raise self.error
        return {"standby_signal": True, "server": self.server}


def promotion(others: dict[str, FakeHost]):
    """pg2 named the primary in place of pg1 (gone); pg3 and pg4 its standbys."""
    data = {name: {"postgres_listen_addresses": [f"10.0.0.{name[-1]}"]}
            for name in ("pg2", "pg3", "pg4")}
    data["pg2"]["postgres_former_primary"] = "pg1"
    settings = node_settings("pg2", data, primary="pg2")
    inventory = SimpleNamespace(get_host=lambda name, default=None: others.get(name, default))
    return settings, ctx_inventory.use(inventory)


ME = server_state(in_recovery=True, lsn="0/5000000")


def test_a_standby_named_primary_without_a_former_primary_is_not_promoted(on_host):
    data = {"pg2": {"postgres_listen_addresses": ["10.0.0.2"]},
            "pg3": {"postgres_listen_addresses": ["10.0.0.3"]}}
    with on_host("pg2"), pytest.raises(TopologyError, match="set postgres_former_primary"):
        check_promotion(node_settings("pg2", data, primary="pg2"), ME)


def test_a_standby_still_streaming_is_not_promoted(on_host):
    settings, inventory = promotion({})
    me = {**ME, "receiver": {"status": "streaming", "sender_host": "10.0.0.1",
                             "sender_port": 5432}}
    with on_host("pg2"), inventory, pytest.raises(TopologyError) as err:
        check_promotion(settings, me)
    assert "pg2: still streams from 10.0.0.1:5432, so pg1" in str(err.value)


@pytest.mark.parametrize("lsn", ["0/5000001", "0/6000000", "1/0"])
def test_a_standby_with_more_wal_stops_the_promotion(on_host, lsn):
    pg3 = FakeHost(server_state(in_recovery=True, lsn="0/4000000"))
    pg4 = FakeHost(server_state(in_recovery=True, lsn=lsn), postgres_port=5434)
    settings, inventory = promotion({"pg3": pg3, "pg4": pg4})
    with on_host("pg2"), inventory, pytest.raises(TopologyError) as err:
        check_promotion(settings, ME)
    assert (f"pg2: pg4 has WAL up to {lsn}, beyond pg2's 0/5000000: promoting pg2 would "
            "lose those commits") in str(err.value)
    assert pg4.asked == {"port": 5434, "data_directory": "/var/lib/postgresql/15/main"}


@pytest.mark.parametrize("pg3", [
    pytest.param(FakeHost(server_state(in_recovery=True, lsn="0/5000000")), id="same-wal"),
    pytest.param(FakeHost(server_state(in_recovery=True, lsn="0/4FFFFFF")), id="less-wal"),
    pytest.param(FakeHost(server_state(in_recovery=True, lsn="1/0", system_identifier="42")),
                 id="another-cluster"),
    pytest.param(FakeHost(None), id="down"),
    pytest.param(FakeHost(error=RuntimeError("ssh: no route to host")), id="unreachable"),
])
def test_promotion_goes_ahead(on_host, pg3):
    settings, inventory = promotion({"pg3": pg3})
    with on_host("pg2"), inventory:
        assert check_promotion(settings, {**ME, "receiver": {"status": "waiting"}}) is None
    assert pg3.asked is not None


# -- the role and slot SQL on a real server --------------------------------------------------------


@pytest.fixture(scope="module")
def pg():
    cluster = new_cluster(prefix="pginfra-replication-")
    try:
        yield cluster
    finally:
        drop_cluster(cluster)


def run_sql(pg, sql: str) -> None:
    pg.as_postgres(PGBIN / "psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "-h", pg.root, "-p",
                   pg.port, "-d", "postgres", input=sql)


def roles_of(pg) -> dict:
    return json.loads(pg.sql(PostgresRoles.sql))


def slots_of(pg) -> list[dict]:
    return json.loads(pg.sql(
        "SELECT coalesce(json_agg(json_build_object('name', slot_name, 'active', active) "
        "ORDER BY slot_name), '[]') FROM pg_replication_slots WHERE slot_type = 'physical'"))


@needs_postgres
def test_the_replication_role_converges_on_a_server(pg):
    verifier = make_verifier("Replicate-2024!", "replicator")
    statements = plan_replication_role("replicator", None, verifier)
    run_sql(pg, QUIET + "".join(f"{s};\n" for s in statements))
    have = roles_of(pg)["replicator"]
    assert (have["login"], have["replication"], have["superuser"], have["inherit"]) == (
        True, True, False, False)
    assert have["password"] == verifier
    assert plan_replication_role("replicator", have, verifier) == []

    run_sql(pg, "ALTER ROLE replicator SUPERUSER CREATEDB INHERIT; GRANT pg_monitor TO "
                "replicator;")
    drifted = plan_replication_role("replicator", roles_of(pg)["replicator"], verifier)
    assert drifted == ['ALTER ROLE "replicator" WITH NOSUPERUSER NOCREATEDB NOINHERIT',
                       'REVOKE "pg_monitor" FROM "replicator"']
    run_sql(pg, "".join(f"{s};\n" for s in drifted))
    assert plan_replication_role("replicator", roles_of(pg)["replicator"], verifier) == []


@needs_postgres
def test_slots_are_created_and_dropped_on_a_server_even_while_streaming(pg):
    run_sql(pg, slots_sql(["pg2", "pg3"], []))
    assert slots_of(pg) == [{"name": "pg2", "active": False}, {"name": "pg3", "active": False}]
    restart = pg.sql("SELECT restart_lsn IS NOT NULL FROM pg_replication_slots "
                     "WHERE slot_name = 'pg2'")
    assert restart == "t"  # WAL is reserved from the start

    target = pg.root / "receivewal"  # postgres may enter the cluster's directory
    target.mkdir()
    os.chown(target, pg.uid, pg.gid)
    receiver = subprocess.Popen(
        ["runuser", "-u", "postgres", "--", str(PGBIN / "pg_receivewal"), "-h", str(pg.root),
         "-p", str(pg.port), "-S", "pg3", "-D", str(target), "-n"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd="/")
    try:
        deadline = time.monotonic() + 30
        while {"name": "pg3", "active": True} not in slots_of(pg):
            assert receiver.poll() is None, "pg_receivewal ended"
            assert time.monotonic() < deadline, "pg_receivewal never used its slot"
            time.sleep(0.1)
        create, drop = plan_slots(["pg2"], slots_of(pg), [])
        assert (create, drop) == ([], ["pg3"])
        run_sql(pg, slots_sql(create, drop))  # pg3's walsender is terminated first
        assert slots_of(pg) == [{"name": "pg2", "active": False}]
        assert receiver.wait(timeout=30) != 0
    finally:
        if receiver.poll() is None:
            receiver.kill()
            receiver.wait()
        run_sql(pg, slots_sql([], [s["name"] for s in slots_of(pg)]))
