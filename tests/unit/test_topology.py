"""The cluster an inventory describes (pginfra.topology): who is the primary, who streams from
whom, and every inventory that is not one primary with standbys refused, naming the hosts."""

from __future__ import annotations

import pytest
from pyinfra.api import Inventory
from pyinfra.api.exceptions import PyinfraError
from pyinfra.context import ctx_inventory

from pginfra import topology
from pginfra.settings import SettingsError
from pginfra.topology import (
    Node,
    TopologyError,
    parse_sync,
    plan,
    replication_address,
    slot_name,
    sync_problem,
    synchronous_standby_names,
)

HEADER = "the inventory's cluster is not one primary with standbys, nothing was changed:\n"


def server(ip: str, **data) -> dict:
    """A host's data: it listens on localhost and ``ip``."""
    return {"postgres_listen_addresses": ["localhost", ip], **data}


def three(**extra: dict) -> dict[str, dict]:
    """pg1, pg2 and pg3 on 10.0.0.1-3, with extra data per host name."""
    hosts = {f"pg{i}": server(f"10.0.0.{i}") for i in (1, 2, 3)}
    for name, data in extra.items():
        hosts.setdefault(name, server("10.0.0.9")).update(data)
    return hosts


def refused(hosts: dict, group: list[str]) -> str:
    with pytest.raises(TopologyError) as err:
        plan(hosts, group)
    message = str(err.value)
    assert message.startswith(HEADER)
    return message


# -- plan: clusters that are one primary with standbys ---------------------------------------------


def test_one_primary_and_its_standbys():
    nodes = plan(three(pg2={"postgres_port": 5433}), ["pg1"])
    assert list(nodes) == ["pg1", "pg2", "pg3"]
    assert nodes["pg1"] == Node(name="pg1", role="primary", address="10.0.0.1", port=5432,
                                upstream=None, downstream=["pg2", "pg3"], former_primary="")
    assert nodes["pg2"] == Node(name="pg2", role="standby", address="10.0.0.2", port=5433,
                                upstream="pg1", downstream=[], former_primary="")
    assert (nodes["pg3"].role, nodes["pg3"].upstream, nodes["pg3"].address) == (
        "standby", "pg1", "10.0.0.3")


def test_the_primary_group_decides_not_the_order_of_the_hosts():
    nodes = plan(three(), ["pg3"])
    assert {n: node.role for n, node in nodes.items()} == {
        "pg1": "standby", "pg2": "standby", "pg3": "primary"}
    assert (nodes["pg1"].upstream, nodes["pg2"].upstream, nodes["pg3"].upstream) == (
        "pg3", "pg3", None)
    assert nodes["pg3"].downstream == ["pg1", "pg2"]


def test_a_standby_of_a_standby_is_a_cascade():
    nodes = plan(three(pg3={"postgres_upstream": "pg2"}), ["pg1"])
    assert nodes["pg3"].upstream == "pg2"
    assert nodes["pg3"].role == "standby"
    assert nodes["pg2"].downstream == ["pg3"]
    assert nodes["pg1"].downstream == ["pg2"]


def test_a_chain_of_cascades():
    hosts = three(pg3={"postgres_upstream": "pg2"}, pg4={"postgres_upstream": "pg3"})
    nodes = plan(hosts, ["pg1"])
    assert [nodes[n].upstream for n in ("pg1", "pg2", "pg3", "pg4")] == [
        None, "pg1", "pg2", "pg3"]
    assert [nodes[n].downstream for n in ("pg1", "pg2", "pg3", "pg4")] == [
        ["pg2"], ["pg3"], ["pg4"], []]


def test_a_single_host_without_a_primary_group_is_a_primary_and_needs_no_address():
    nodes = plan({"pg1": {}}, [])
    assert nodes == {"pg1": Node(name="pg1", role="primary", address="", port=5432)}


def test_a_single_host_named_primary_needs_no_address_either():
    nodes = plan({"db1": {"postgres_listen_addresses": ["localhost"]}}, ["db1"])
    assert (nodes["db1"].role, nodes["db1"].address, nodes["db1"].upstream) == (
        "primary", "", None)


def test_a_former_primary_that_is_gone_is_carried_on_the_node():
    hosts = {"pg2": server("10.0.0.2", postgres_former_primary="pg1"),
             "pg3": server("10.0.0.3")}
    nodes = plan(hosts, ["pg2"])
    assert nodes["pg2"].former_primary == "pg1"
    assert nodes["pg3"].former_primary == ""
    assert nodes["pg3"].upstream == "pg2"


def test_synchronous_standbys_of_the_primary_are_accepted():
    hosts = three(pg1={"postgres_synchronous_standbys": "FIRST 1 (pg2, pg3)"})
    assert plan(hosts, ["pg1"])["pg1"].downstream == ["pg2", "pg3"]


def test_synchronous_standbys_set_on_a_standby_are_not_its_own():
    # As group data every host has the value; only the primary's counts.
    hosts = three(pg2={"postgres_synchronous_standbys": "ANY 1 (pg9)"})
    assert plan(hosts, ["pg1"])["pg2"].upstream == "pg1"


def test_the_slot_of_a_node_is_its_sanitised_name():
    nodes = plan({"db1.example.com": server("10.0.0.1"), "DB-2": server("10.0.0.2")},
                 ["db1.example.com"])
    assert nodes["db1.example.com"].slot == "db1_example_com"
    assert nodes["DB-2"].slot == "db_2"


# -- plan: what is refused, naming the hosts -------------------------------------------------------


@pytest.mark.parametrize(("hosts", "group", "expected"), [
    pytest.param(three(), ["pg1", "pg2"],
                 "the primary group names 2 hosts (pg1, pg2): a cluster has one primary",
                 id="two-primaries"),
    pytest.param(three(), ["pg9"],
                 "the primary group names pg9, not in postgres_servers",
                 id="primary-not-a-server"),
    pytest.param(three(), [],
                 "3 servers (pg1, pg2, pg3) and no primary group: name the primary in a "
                 "group 'primary'",
                 id="no-primary-group"),
    pytest.param(three(pg2={"postgres_upstream": "pg9"}), ["pg1"],
                 "pg2: postgres_upstream: 'pg9' is not a host of postgres_servers",
                 id="upstream-unknown"),
    pytest.param(three(pg2={"postgres_upstream": "pg2"}), ["pg1"],
                 "pg2: postgres_upstream: a host cannot stream from itself",
                 id="upstream-itself"),
    pytest.param(three(pg2={"postgres_upstream": "pg3"}, pg3={"postgres_upstream": "pg2"}),
                 ["pg1"],
                 "pg2: postgres_upstream makes a loop: pg2 -> pg3 -> pg2 never reaches the "
                 "primary",
                 id="upstream-loop"),
    pytest.param(three(pg1={"postgres_upstream": "pg2"}), ["pg1"],
                 "pg1: postgres_upstream: 'pg2', but pg1 is the primary: a primary streams "
                 "from no one",
                 id="primary-with-upstream"),
    pytest.param(three(pg2={"postgres_replication_user": "repl"}), ["pg1"],
                 "postgres_replication_user differs between hosts (pg1='replicator', "
                 "pg2='repl', pg3='replicator'): it is one setting of the cluster",
                 id="replication-user-differs"),
    pytest.param({"db1": server("10.0.0.1"), "db-2": server("10.0.0.2"),
                  "db_2": server("10.0.0.3")}, ["db1"],
                 "db-2 and db_2 would share the replication slot 'db_2': rename one",
                 id="slot-collision"),
    pytest.param(three(pg2={"postgres_listen_addresses": ["localhost"]}), ["pg1"],
                 "pg2: postgres_replication_address: none given and no listen address or "
                 "ssh_hostname is an IP address other hosts can use",
                 id="no-address"),
    pytest.param({"pg2": server("10.0.0.2", postgres_former_primary="pg1"),
                  "pg1": server("10.0.0.1")}, ["pg2"],
                 "pg2: postgres_former_primary: pg1 is still in postgres_servers: a former "
                 "primary is one that is gone",
                 id="former-primary-still-here"),
    pytest.param(three(pg1={"postgres_synchronous_standbys": "ANY 1 (pg9)"}), ["pg1"],
                 "pg1: postgres_synchronous_standbys: pg9 is not a host of postgres_servers",
                 id="sync-unknown-host"),
    pytest.param(three(pg1={"postgres_synchronous_standbys": "ANY 1 (pg3)"},
                       pg3={"postgres_upstream": "pg2"}), ["pg1"],
                 "pg1: postgres_synchronous_standbys: pg3 does not stream from the primary pg1 "
                 "directly",
                 id="sync-cascade"),
])
def test_refused_naming_the_hosts(hosts, group, expected):
    assert f"\n  {expected}" in refused(hosts, group)


def test_a_single_server_in_a_primary_group_naming_another_host_is_refused():
    assert "the primary group names pg9, not in postgres_servers" in refused(
        {"pg1": {}}, ["pg9"])


def test_the_primary_group_problems_are_reported_together():
    message = refused(three(), ["pg1", "pg2", "pg8"])
    assert "the primary group names pg8, not in postgres_servers" in message
    assert "the primary group names 2 hosts (pg1, pg2)" in message


def test_every_problem_of_the_hosts_is_reported_at_once():
    hosts = three(pg2={"postgres_listen_addresses": ["localhost"], "postgres_upstream": "pg9"},
                  pg3={"postgres_listen_addresses": ["db3.example.com"],
                       "postgres_replication_user": "repl"})
    lines = refused(hosts, ["pg1"]).splitlines()[1:]
    assert [line.split(":")[0].strip() for line in lines] == [
        "pg2", "pg2", "pg3", "postgres_replication_user differs between hosts (pg1='replicator', "
        "pg2='replicator', pg3='repl')"]
    assert "pg2: postgres_upstream: 'pg9' is not a host" in lines[1]
    assert lines[2].startswith("  pg3: postgres_replication_address: none given")


def test_a_loop_is_reported_once():
    message = refused(three(pg2={"postgres_upstream": "pg3"}, pg3={"postgres_upstream": "pg2"}),
                      ["pg1"])
    assert message.count("makes a loop") == 1


def test_a_standby_hanging_off_a_loop_reports_the_loop_once():
    hosts = {"pg4": server("10.0.0.4", postgres_upstream="pg2"),
             **three(pg2={"postgres_upstream": "pg3"}, pg3={"postgres_upstream": "pg2"})}
    message = refused(hosts, ["pg1"])
    assert message.count("makes a loop") == 1
    assert "pg2 -> pg3 -> pg2 never reaches the primary" in message


def test_a_longer_loop_names_every_host_of_it():
    hosts = three(pg2={"postgres_upstream": "pg4"}, pg3={"postgres_upstream": "pg2"},
                  pg4={"postgres_upstream": "pg3"})
    message = refused(hosts, ["pg1"])
    assert "pg2: postgres_upstream makes a loop: pg2 -> pg4 -> pg3 -> pg2" in message
    assert message.count("makes a loop") == 1


def test_names_that_share_a_slot_only_after_63_bytes_collide():
    long_a, long_b = "a" * 63 + "x", "a" * 63 + "y"
    message = refused({"pg1": server("10.0.0.1"), long_a: server("10.0.0.2"),
                       long_b: server("10.0.0.3")}, ["pg1"])
    assert f"{long_a} and {long_b} would share the replication slot {'a' * 63!r}" in message


def test_the_same_replication_user_set_explicitly_everywhere_is_fine():
    hosts = {n: {**d, "postgres_replication_user": "repl"} for n, d in three().items()}
    assert plan(hosts, ["pg1"])["pg2"].upstream == "pg1"


def test_topology_error_is_a_settings_error():
    assert issubclass(TopologyError, SettingsError)
    assert issubclass(TopologyError, PyinfraError)
    with pytest.raises(SettingsError):
        plan(three(), [])


# -- replication_address ---------------------------------------------------------------------------


@pytest.mark.parametrize(("data", "expected"), [
    pytest.param({"postgres_replication_address": "192.168.7.7",
                  "postgres_listen_addresses": ["10.0.0.1"], "ssh_hostname": "10.9.9.9"},
                 "192.168.7.7", id="explicit-wins"),
    pytest.param({"postgres_listen_addresses": ["localhost", "127.0.0.1", "::1", "10.0.0.7",
                                                "10.0.0.8"]},
                 "10.0.0.7", id="first-non-loopback"),
    pytest.param({"postgres_listen_addresses": ["db1.example.com", "10.0.0.9"]},
                 "10.0.0.9", id="hostname-skipped"),
    pytest.param({"postgres_listen_addresses": ["*", "0.0.0.0", "::", "127.0.1.1"],
                  "ssh_hostname": "10.1.2.3"},
                 "10.1.2.3", id="wildcards-and-loopback-skipped"),
    pytest.param({"postgres_listen_addresses": ["localhost"], "ssh_hostname": "10.1.2.3"},
                 "10.1.2.3", id="ssh-hostname-fallback"),
    pytest.param({"ssh_hostname": "10.1.2.4"}, "10.1.2.4", id="default-listen-ssh-fallback"),
    pytest.param({"postgres_listen_addresses": ["10.0.0.5"], "ssh_hostname": "10.1.2.3"},
                 "10.0.0.5", id="listen-before-ssh"),
    pytest.param({"postgres_listen_addresses": ["localhost", "FD00:0::5"]},
                 "fd00::5", id="ipv6-normalised"),
    pytest.param({"postgres_listen_addresses": ["localhost"], "ssh_hostname": "db1.example.com"},
                 None, id="ssh-hostname-a-name"),
    pytest.param({"postgres_listen_addresses": ["localhost"], "ssh_hostname": "127.0.0.1"},
                 None, id="ssh-hostname-loopback"),
    pytest.param({"postgres_listen_addresses": ["localhost"], "ssh_hostname": None},
                 None, id="ssh-hostname-none"),
    pytest.param({}, None, id="defaults"),
])
def test_replication_address(data, expected):
    assert replication_address("pg1", data) == expected


# -- slot_name, parse_sync, sync_problem, synchronous_standby_names --------------------------------


@pytest.mark.parametrize(("name", "expected"), [
    ("pg2", "pg2"),
    ("db2.example.com", "db2_example_com"),
    ("DB-2", "db_2"),
    ("db_2", "db_2"),
    ("@docker/pg:1", "_docker_pg_1"),
    ("10.0.0.2", "10_0_0_2"),
    ("b" * 80, "b" * 63),
])
def test_slot_name(name, expected):
    assert slot_name(name) == expected


def test_slot_names_are_valid_postgres_slot_names():
    for name in ("Ünïcode-host", "a b c", "x" * 100, "@local"):
        slot = slot_name(name)
        assert len(slot.encode()) <= 63
        assert set(slot) <= set("abcdefghijklmnopqrstuvwxyz0123456789_"), slot


@pytest.mark.parametrize(("value", "expected"), [
    ("ANY 1 (pg2, pg3)", ("ANY", 1, ["pg2", "pg3"])),
    ("FIRST 2 (pg2,pg3, pg4)", ("FIRST", 2, ["pg2", "pg3", "pg4"])),
    ("  ANY 12 (db2.example.com)  ", ("ANY", 12, ["db2.example.com"])),
])
def test_parse_sync(value, expected):
    assert parse_sync(value) == expected


@pytest.mark.parametrize("value", [
    "ANY 0 (pg2)", "any 1 (pg2)", "ANY 1 pg2", "ANY 1 ()", "SOME 1 (pg2)", "pg2, pg3",
    "ANY 1 (pg2) (pg3)", "FIRST (pg2)", "",
])
def test_parse_sync_refuses(value):
    with pytest.raises(ValueError, match=r"is not 'ANY n \(host, \.\.\.\)' or 'FIRST n"):
        parse_sync(value)


@pytest.fixture
def cluster() -> dict[str, Node]:
    """pg1 the primary; pg2 and pg4 stream from it; pg3 from pg2 (a cascade)."""
    hosts = three(pg3={"postgres_upstream": "pg2"})
    hosts["pg4"] = server("10.0.0.4")
    return plan(hosts, ["pg1"])


@pytest.mark.parametrize(("value", "expected"), [
    ("ANY 1 (pg2, pg4)", None),
    ("FIRST 2 (pg2,pg4)", None),
    ("ANY 1 (pg9)", "pg9 is not a host of postgres_servers"),
    ("ANY 1 (pg2, pg3)", "pg3 does not stream from the primary pg1 directly, so it cannot "
                         "confirm its commits"),
    ("ANY 1 (pg1)", "pg1 does not stream from the primary pg1 directly, so it cannot confirm "
                    "its commits"),
    ("ANY 3 (pg2, pg4)", "ANY 3 of 2 standbys: commits would wait forever; name at least 3"),
    ("FIRST 2 (pg2)", "FIRST 2 of 1 standbys: commits would wait forever; name at least 2"),
    ("ANY 1 (pg2, pg2)", "a host is named twice in 'ANY 1 (pg2, pg2)'"),
    ("ANY 1 pg2", "'ANY 1 pg2' is not 'ANY n (host, ...)' or 'FIRST n (host, ...)'"),
])
def test_sync_problem(cluster, value, expected):
    assert sync_problem(value, cluster, "pg1") == expected


def test_a_cascaded_standby_may_be_synchronous_for_no_one_but_its_own_upstream(cluster):
    assert sync_problem("ANY 1 (pg3)", cluster, "pg2") is None


@pytest.mark.parametrize(("value", "expected"), [
    ("", ""),
    ("ANY 1 (pg2, db3.example.com)", 'ANY 1 ("pg2", "db3_example_com")'),
    ("FIRST 2 (pg2,PG-3)", 'FIRST 2 ("pg2", "pg_3")'),
])
def test_synchronous_standby_names(value, expected):
    assert synchronous_standby_names(value) == expected


def test_synchronous_standby_names_refuses_what_it_cannot_parse():
    with pytest.raises(ValueError, match="'pg2' is not"):
        synchronous_standby_names("pg2")


# -- current: the pyinfra inventory's cluster ------------------------------------------------------


def test_current_plans_the_servers_group_once_per_inventory(monkeypatch):
    monkeypatch.setattr(topology, "_CACHE", {})
    inventory = Inventory(
        (["pg1", ("pg2", {"postgres_listen_addresses": ["10.0.0.2"]}), "monitor"], {}),
        postgres_servers=([("pg1", {"postgres_listen_addresses": ["10.0.0.1"]}), "pg2"],
                          {"postgres_port": 5433}),
        primary=(["pg1"], {}),
    )
    with ctx_inventory.use(inventory):
        nodes = topology.current()
        assert topology.current() is nodes
    assert list(nodes) == ["pg1", "pg2"]  # "monitor" is no server
    assert (nodes["pg1"].role, nodes["pg1"].address, nodes["pg1"].port) == (
        "primary", "10.0.0.1", 5433)
    assert (nodes["pg2"].upstream, nodes["pg2"].address) == ("pg1", "10.0.0.2")


def test_current_without_a_servers_group_plans_every_host(monkeypatch):
    monkeypatch.setattr(topology, "_CACHE", {})
    inventory = Inventory((["pg1", "pg2"], {}))
    with ctx_inventory.use(inventory), pytest.raises(TopologyError,
                                                     match=r"2 servers \(pg1, pg2\)"):
        topology.current()


def test_a_link_local_address_is_not_where_others_reach_a_host():
    from pginfra.topology import replication_address

    data = {"postgres_listen_addresses": ["fe80::1", "localhost", "10.0.0.7"]}
    assert replication_address("pg1", data) == "10.0.0.7"


def test_a_host_streaming_from_itself_is_one_problem_not_a_loop_too():
    from pginfra.topology import TopologyError, plan

    data = {n: {"postgres_listen_addresses": [f"10.0.0.{i}"]} for i, n in
            enumerate(("pg1", "pg2"), 1)}
    data["pg2"]["postgres_upstream"] = "pg2"
    with pytest.raises(TopologyError) as caught:
        plan(data, ["pg1"])
    assert "pg2: postgres_upstream: a host cannot stream from itself" in str(caught.value)
    assert "loop" not in str(caught.value)
