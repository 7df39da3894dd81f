"""pginfra-apply-config --rolling-restart (pginfra_host/rolling.py): which members restart, in
which order, and what the deploy asks Patroni to change in etcd. The restarts themselves run on
the HA lab (tests/e2e/test_ha.py)."""

from __future__ import annotations

import pytest

from pginfra import ha
from pginfra_host import apply_config, rolling

LEADER = {"Member": "db2", "Role": "Leader", "State": "running", "Pending restart": "*"}
SYNC = {"Member": "db3", "Role": "Sync Standby", "State": "running", "Pending restart": "*"}
REPLICA = {"Member": "db1", "Role": "Replica", "State": "running", "Pending restart": "*"}
QUIET = {"Member": "db4", "Role": "Replica", "State": "running"}


def test_replicas_restart_first_one_at_a_time_and_only_those_waiting():
    assert rolling.restart_order([LEADER, SYNC, REPLICA, QUIET]) == ["db1", "db3", "db2"]
    assert rolling.restart_order([LEADER, SYNC, QUIET], leader_first=True) == ["db2", "db3"]
    assert rolling.restart_order([QUIET]) == []


def test_a_member_that_does_not_come_back_stops_the_rolling_restart():
    with pytest.raises(RuntimeError, match="db3 did not come back within 0s"):
        rolling.wait_back("cfg", "db3", 0, look=lambda _: [], sleep=lambda _: None)


def test_only_what_differs_in_etcd_is_changed_and_a_shrink_turns_the_order():
    wanted = {"ttl": 30, "loop_wait": 10, "synchronous_mode": False,
              "postgresql": {"use_pg_rewind": True,
                             "parameters": {"max_connections": 300, "wal_level": "replica",
                                            "max_wal_senders": 8}}}
    current = {"ttl": 30, "loop_wait": 5, "synchronous_mode": "false", "maximum_lag": 7,
               "postgresql": {"use_pg_rewind": True,
                              "parameters": {"max_connections": "200", "wal_level": "replica",
                                             "max_wal_senders": "10"}}}
    sets, pgs, shrank = ha.dcs_changes(wanted, current)
    assert sets == ["loop_wait=10"]
    assert pgs == ["max_connections=300", "max_wal_senders=8"]
    assert shrank  # max_wal_senders 10 -> 8: the leader restarts first
    assert ha.dcs_changes(wanted, {**current, "loop_wait": 10, "postgresql": {
        "use_pg_rewind": True, "parameters": {"max_connections": "300",
                                              "wal_level": "replica",
                                              "max_wal_senders": "8"}}}) == ([], [], False)


def test_the_rolling_restart_is_a_mode_of_apply_config(capsys):
    with pytest.raises(SystemExit):
        apply_config.main(["--port", "5432"])  # neither pairs nor --rolling-restart
    assert "--rolling-restart" in capsys.readouterr().err
