"""Validation of the streaming replication settings (pginfra.settings): each value checked on
its own, and the replication user against the other roles."""

from __future__ import annotations

import pytest

from pginfra.settings import SettingsError, problems, resolve
from pginfra.topology import parse_sync


def refused(data: dict, host: str = "db7") -> str:
    with pytest.raises(SettingsError) as err:
        resolve(data, host)
    message = str(err.value)
    assert message.startswith("invalid inventory data, nothing was changed:\n")
    return message


# -- postgres_replication_user ---------------------------------------------------------------------


OWN_ROLE = ("must be a role of its own (REPLICATION and LOGIN only), not postgres, a pg_ role "
            "or one of postgres_roles")


@pytest.mark.parametrize("user", ["postgres", "pg_x", "pg_monitor", "app", "public", "none"])
def test_the_replication_user_must_be_a_role_of_its_own(user):
    message = refused({"postgres_replication_user": user,
                       "postgres_roles": [{"name": "app", "login": True}]})
    assert f"  db7: postgres_replication_user: {user!r} {OWN_ROLE}" in message


def test_a_role_of_its_own_is_accepted():
    settings = resolve({"postgres_replication_user": "streamer",
                        "postgres_roles": [{"name": "app", "login": True}]})
    assert settings.postgres_replication_user == "streamer"
    assert resolve({}).postgres_replication_user == "replicator"


def test_the_replication_user_may_not_be_a_group_role_either():
    message = refused({"postgres_replication_user": "readers",
                       "postgres_roles": [{"name": "readers"},
                                          {"name": "app", "login": True,
                                           "member_of": ["readers"]}]})
    assert f"postgres_replication_user: 'readers' {OWN_ROLE}" in message


@pytest.mark.parametrize("user", ["Replicator", "repl-1", "repl$", "1repl", "", "r" * 64])
def test_the_replication_user_is_a_plain_name(user):
    assert [p.split(":")[0] for p in problems({"postgres_replication_user": user})] == [
        "postgres_replication_user"]
    assert "does not match" in refused({"postgres_replication_user": user})


# -- postgres_synchronous_standbys -----------------------------------------------------------------


@pytest.mark.parametrize("value", [
    "",
    "ANY 1 (pg2)",
    "FIRST 2 (pg2, pg3)",
    "ANY 1 (pg2,pg3)",
    "ANY 10 (db2.example.com, @docker/pg3, 10.0.0.4)",
])
def test_synchronous_standbys_accepted(value):
    assert problems({"postgres_synchronous_standbys": value}) == []
    assert resolve({"postgres_synchronous_standbys": value}).postgres_synchronous_standbys \
        == value
    if value:  # what the pattern lets through, the topology can read
        assert parse_sync(value)[2]


@pytest.mark.parametrize("value", [
    "ANY 0 (pg2)",
    "ANY 01 (pg2)",
    "any 1 (pg2)",
    "ANY 1 pg2",
    "ANY 1 ()",
    "ANY 1 (pg2 pg3)",
    "ANY 1 (pg2,  pg3)",
    "ANY 1 (pg2),",
    "2 (pg2, pg3)",
    "pg2, pg3",
    "*",
    "ANY 1 (pg2) ",
])
def test_synchronous_standbys_refused(value):
    message = refused({"postgres_synchronous_standbys": value})
    assert f"  db7: postgres_synchronous_standbys: {value!r} does not match" in message


# -- postgres_max_slot_wal_keep_size ---------------------------------------------------------------


@pytest.mark.parametrize("value", ["10GB", "-1", "512MB", "1TB", "64GB"])
def test_max_slot_wal_keep_size_accepted(value):
    assert resolve({"postgres_max_slot_wal_keep_size": value}).postgres_max_slot_wal_keep_size \
        == value


@pytest.mark.parametrize("value", ["10 GB", "0", "10", "10gb", "10kB", "-2", "010GB", "0GB",
                                   "", "unlimited"])
def test_max_slot_wal_keep_size_refused(value):
    message = refused({"postgres_max_slot_wal_keep_size": value})
    assert f"  db7: postgres_max_slot_wal_keep_size: {value!r} does not match" in message


def test_max_slot_wal_keep_size_must_be_a_string():
    assert problems({"postgres_max_slot_wal_keep_size": 10}) == [
        "postgres_max_slot_wal_keep_size: expected a string, got 10"]


# -- postgres_replication_address ------------------------------------------------------------------


@pytest.mark.parametrize("value", ["", "10.0.0.5", "192.168.1.10", "fd00::5", "2001:db8::1"])
def test_replication_address_accepted(value):
    assert resolve({"postgres_replication_address": value}).postgres_replication_address == value


@pytest.mark.parametrize(("value", "problem"), [
    ("10.0.0.300", "'10.0.0.300' is not an IP address"),
    ("10.0.0", "'10.0.0' is not an IP address"),
    ("1.2.3.4.5", "'1.2.3.4.5' is not an IP address"),
    ("fd00:::5", "'fd00:::5' is not an IP address"),
    ("db1.example.com", "'db1.example.com' does not match"),
    ("10.0.0.0/24", "'10.0.0.0/24' does not match"),
    ("localhost", "'localhost' does not match"),
    (" 10.0.0.5", "' 10.0.0.5' does not match"),
])
def test_replication_address_must_be_an_ip(value, problem):
    assert f"  db7: postgres_replication_address: {problem}" in refused(
        {"postgres_replication_address": value})


# -- postgres_upstream, postgres_former_primary, postgres_replication_slots_keep -------------------


@pytest.mark.parametrize("key", ["postgres_upstream", "postgres_former_primary"])
@pytest.mark.parametrize(("value", "ok"), [
    ("", True), ("pg1", True), ("db1.example.com", True), ("@docker/pg1", True),
    ("pg 1", False), ("pg1;rm", False), ("pg1\n", False),
])
def test_host_names(key, value, ok):
    assert (problems({key: value}) == []) is ok


@pytest.mark.parametrize(("value", "ok"), [
    ([], True), (["receivewal", "backup_2"], True), (["s" * 63], True),
    (["s" * 64], False), (["Receivewal"], False), (["wal-1"], False), ([""], False),
    ("receivewal", False), ([1], False),
])
def test_replication_slots_keep(value, ok):
    assert (problems({"postgres_replication_slots_keep": value}) == []) is ok


def test_hot_standby_feedback_is_a_boolean():
    assert resolve({}).postgres_hot_standby_feedback is True
    assert problems({"postgres_hot_standby_feedback": "on"}) == [
        "postgres_hot_standby_feedback: expected true or false, got 'on'"]


def test_replication_problems_are_reported_together():
    message = refused({"postgres_replication_address": "db1.local",
                       "postgres_max_slot_wal_keep_size": "0",
                       "postgres_synchronous_standbys": "pg2"})
    assert [line.split(":")[1].strip() for line in message.splitlines()[1:]] == [
        "postgres_max_slot_wal_keep_size", "postgres_replication_address",
        "postgres_synchronous_standbys"]


# -- what postgres_parameters may not set ----------------------------------------------------------


@pytest.mark.parametrize(("name", "value"), [
    ("synchronous_standby_names", "FIRST 1 (nobody)"),
    ("primary_conninfo", "host=10.0.0.9 user=postgres password=secret"),
    ("primary_slot_name", "other"),
])
def test_postgres_parameters_cannot_override_the_topology(name, value):
    found = problems({"postgres_parameters": {name: value}})
    assert len(found) == 1 and found[0].startswith(f"postgres_parameters: {name}: cannot be set")
