"""ha_client_path: vip. keepalived on every member holds the floating address only while its own
Patroni leads; PgBouncer listens on it everywhere; the certificate names it; bad values are
refused before any operation; the rendered file passes the real ``keepalived --config-test``."""

from __future__ import annotations

import os
import subprocess

import pytest

from pginfra import vip
from pginfra.pgbouncer import listen_addresses
from pginfra.settings import SettingsError, resolve
from pginfra.templating import render
from pginfra.topology import TopologyError, plan

KEEPALIVED = "/usr/sbin/keepalived"
needs_keepalived = pytest.mark.skipif(
    not os.path.exists(KEEPALIVED),
    reason=f"{KEEPALIVED} is absent: Debian's keepalived package is not installed "
           "(./dev.sh setup installs it)")
VIP = {"postgres_ha": "patroni", "ha_client_path": "vip", "ha_vip": "10.0.0.50/24",
       "ha_vip_interface": "eth0"}


def cluster(**data):
    hosts = {f"db{i}": {**VIP, "postgres_listen_addresses": ["localhost", f"10.0.0.{i}"],
                        **data} for i in (1, 2, 3)}
    return hosts, plan(hosts, ["db1"])


def settings_of(hosts, nodes, name="db1"):
    settings = resolve(hosts[name], name)
    settings.cluster, settings.node = nodes, nodes[name]
    return settings


@pytest.mark.parametrize("data, message", [
    ({"ha_vip": ""}, "ha_vip: ha_client_path 'vip' needs ha_vip"),
    ({"ha_vip_interface": ""}, "ha_vip: ha_client_path 'vip' needs ha_vip"),
    ({"ha_vip": "10.0.0/24"}, "ha_vip: '10.0.0/24' is not an IPv4 address"),
    ({"ha_vip": "10.0.0.300/24"}, "ha_vip: '10.0.0.300/24' is not an IPv4 address"),
    ({"ha_vip": "10.0.0.0/24"}, "ha_vip: 10.0.0.0/24 is its network's own network address"),
    ({"ha_vip": "10.0.0.255/24"}, "ha_vip: 10.0.0.255/24 is its network's own broadcast"),
    ({"ha_vip": "127.0.0.5/8"}, "ha_vip: 127.0.0.5 cannot float between hosts"),
    ({"ha_vip_router_id": 0}, "ha_vip_router_id"),
    ({"ha_vip_router_id": 256}, "ha_vip_router_id"),
    ({"ha_vip_interface": "eth0; reboot"}, "ha_vip_interface: 'eth0; reboot' does not match"),
])
def test_a_bad_floating_address_is_refused_before_anything(data, message):
    with pytest.raises(SettingsError, match=message.replace("(", r"\(").replace(")", r"\)")):
        resolve({**VIP, **data}, "db1")


def test_the_floating_address_is_on_the_members_network_and_none_of_theirs():
    with pytest.raises(TopologyError, match="db2: ha_vip: 10.0.0.2 is db2's own address"):
        cluster(ha_vip="10.0.0.2/24")
    with pytest.raises(TopologyError, match=r"db1: ha_vip: db1 is at 10.0.0.1, outside "
                                            r"10.0.1.0/24"):
        cluster(ha_vip="10.0.1.50/24")
    hosts, _ = cluster()
    hosts["db3"]["ha_vip"] = "10.0.0.51/24"
    with pytest.raises(TopologyError, match="ha_vip differs between hosts"):
        plan(hosts, ["db1"])


def test_keepalived_holds_the_address_only_while_its_patroni_leads():
    hosts, nodes = cluster()
    settings = settings_of(hosts, nodes, "db2")
    assert vip.wanted(settings) and vip.address(settings) == "10.0.0.50"
    context = vip.keepalived_context(settings, "db2")
    assert context["own"] == "10.0.0.2" and context["peers"] == ["10.0.0.1", "10.0.0.3"]
    assert context["check"] == (
        "/usr/bin/curl --silent --fail --max-time 2 --request OPTIONS --cacert "
        "/etc/patroni/tls/patroni.ca.crt --output /dev/null https://10.0.0.2:8008/primary")
    text = render("keepalived.conf.j2", **context)
    assert text.startswith("# /etc/keepalived/keepalived.conf\n# Managed by pginfra")
    assert "virtual_router_id 51" in text and "state BACKUP" in text
    assert "unicast_src_ip 10.0.0.2" in text
    assert "unicast_peer {\n        10.0.0.1\n        10.0.0.3\n    }" in text
    assert "10.0.0.50/24 dev eth0" in text
    # the check has no weight: failing, the instance is FAULT and holds nothing
    assert "weight" not in text and "track_script {\n        pginfra_patroni_leads" in text
    assert not vip.wanted(resolve({"postgres_ha": "patroni"}, "db1"))
    assert vip.address(resolve({"postgres_ha": "patroni"}, "db1")) == ""


def test_pgbouncer_listens_on_the_floating_address_on_every_member():
    hosts, nodes = cluster()
    for name in hosts:
        assert listen_addresses(settings_of(hosts, nodes, name))[-1] == "10.0.0.50"
    hosts, nodes = cluster(pgbouncer_listen_addresses=["10.0.0.50"])
    assert listen_addresses(settings_of(hosts, nodes)) == ["10.0.0.50"]  # not twice
    assert listen_addresses(resolve({"postgres_listen_addresses": ["localhost", "10.0.0.1"]})) \
        == ["127.0.0.1", "10.0.0.1"]


def test_the_interface_must_be_on_the_floating_addresss_network():
    hosts, nodes = cluster()
    settings = settings_of(hosts, nodes)
    eth0 = {"eth0": {"ipv4": {"address": "10.0.0.1", "mask_bits": 24}}, "lo": {}}
    assert vip.interface_problem(settings, eth0) is None
    assert "has no interface 'eth0' (it has ens3, lo)" in vip.interface_problem(
        settings, {"ens3": eth0["eth0"], "lo": {}})
    assert "eth0 has no address in 10.0.0.0/24 (it has 192.168.1.5)" in vip.interface_problem(
        settings, {"eth0": {"ipv4": {"address": "192.168.1.5", "mask_bits": 24}}})
    held = {"eth0": {"ipv4": {"address": "192.168.1.5", "additional_ips": [
        {"address": "10.0.0.1", "mask_bits": 24}]}}}
    assert vip.interface_problem(settings, held) is None


def test_the_certificate_names_the_floating_address(monkeypatch):
    from pginfra.steps import tls

    hosts, nodes = cluster()

    class Host:
        name = "db1"
        data = {"ssh_hostname": "10.0.0.1"}

    monkeypatch.setattr(tls, "host", Host)
    dns, ips = tls.certificate_names(settings_of(hosts, nodes))
    assert "10.0.0.50" in ips and "10.0.0.1" in ips


@needs_keepalived
def test_keepalived_accepts_the_rendered_configuration(tmp_path):
    hosts, nodes = cluster()
    path = tmp_path / "keepalived.conf"
    path.write_text(render("keepalived.conf.j2", **vip.keepalived_context(
        settings_of(hosts, nodes), "db1")))
    ok = subprocess.run([KEEPALIVED, "--config-test", f"--use-file={path}"],
                        capture_output=True, text=True)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    # and refuses a broken one: the step's check before install means something
    path.write_text(path.read_text().replace("virtual_router_id 51", "virtual_router_id 951"))
    bad = subprocess.run([KEEPALIVED, "--config-test", f"--use-file={path}"],
                         capture_output=True, text=True)
    assert bad.returncode != 0, bad.stdout + bad.stderr

