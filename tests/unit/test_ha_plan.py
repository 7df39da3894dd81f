"""postgres_ha: Patroni and etcd planned from the inventory. Bad settings are refused before
any operation; etcd's and Patroni's configuration follow from the same settings as the server's;
Patroni's configuration passes Patroni's own validator (the real patroni --validate-config)."""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess

import pytest
import yaml

from pginfra import ha
from pginfra.server_config import server_parameters
from pginfra.settings import SettingsError, resolve
from pginfra.steps.ha import REWIND_FUNCTIONS, rewind_role_sql
from pginfra.topology import TopologyError, etcd_only, plan

SECRETS = {"postgres": "p" * 24, "replicator": "r" * 24, "rewinder": "w" * 24,
           ha.REST_SECRET: "a" * 24}


def servers(n: int, **data):
    return {f"db{i}": {"postgres_ha": "patroni",
                       "postgres_listen_addresses": ["localhost", f"10.0.0.{i}"], **data}
            for i in range(1, n + 1)}


def cluster(n: int = 3, etcd: list[str] | None = None, **data):
    hosts = servers(n, **data)
    return hosts, plan(hosts, ["db1"], etcd)


def settings_of(hosts, nodes, name="db1"):
    settings = resolve(hosts[name], name)
    settings.cluster, settings.node = nodes, nodes[name]
    return settings


@pytest.mark.parametrize("data, message", [
    ({"ha_ttl": 20}, "ha_ttl: 20 s is too short for ha_loop_wait 10 s and ha_retry_timeout"),
    ({"ha_synchronous_mode_strict": True}, "only with ha_synchronous_mode: true"),
    ({"postgres_ha": "patroni", "ha_client_path": "vip"}, "ha_vip: ha_client_path 'vip' needs"),
    ({"postgres_ha": "patroni", "ha_rest_port": 6432},
     "ha_rest_port: port 6432 is already pgbouncer_port's"),
    ({"ha_rewind_user": "replicator"}, "ha_rewind_user: 'replicator' must be a role of its own"),
    ({"postgres_ha": "patroni", "postgres_former_primary": "db0"}, "Patroni promotes"),
    ({"postgres_ha": "yes"}, "postgres_ha: must be one of '', 'patroni'"),
    ({"ha_tll": 30}, "ha_tll: unknown setting; did you mean 'ha_ttl'?"),
])
def test_bad_patroni_settings_are_refused_before_anything(data, message):
    with pytest.raises(SettingsError, match=message.replace("(", r"\(").replace(")", r"\)")):
        resolve(data, "db1")


@pytest.mark.parametrize("n", [1, 2, 4])
def test_etcd_needs_an_odd_number_of_at_least_three_members(n):
    with pytest.raises(TopologyError, match=f"etcd needs 3 or 5 members .* gives {n}"):
        cluster(n)


def test_the_cluster_agrees_on_patroni_and_etcd_members_are_hosts_of_the_inventory():
    hosts, _ = cluster(3)
    hosts["db3"]["ha_ttl"] = 40
    with pytest.raises(TopologyError, match="ha_ttl differs between hosts"):
        plan(hosts, ["db1"])
    with pytest.raises(TopologyError, match="the etcd group names e1, not hosts of the inventory"):
        cluster(3, etcd=["db1", "db2", "e1"])
    hosts, _ = cluster(3)
    hosts["db3"]["postgres_upstream"] = "db2"
    with pytest.raises(TopologyError, match="db3: postgres_upstream: with postgres_ha"):
        plan(hosts, ["db1"])
    _, nodes = cluster(5, etcd=["db1", "db2", "db3"])
    assert [n.name for n in nodes.values() if n.etcd_member] == ["db1", "db2", "db3"]


def etcd_hosts(**data):
    return {f"e{i}": {"postgres_ha": "patroni", "ssh_hostname": f"10.0.1.{i}", **data}
            for i in (1, 2, 3)}


def test_etcd_on_hosts_of_its_own_runs_etcd_there_and_nothing_else():
    hosts = servers(2)
    own = etcd_hosts()
    nodes = plan(hosts, ["db1"], list(own), own)
    assert sorted(nodes) == ["db1", "db2"] and not any(n.etcd_member for n in nodes.values())
    settings = settings_of(hosts, nodes, "db2")
    settings.etcd_hosts = etcd_only(own)
    assert not settings.etcd_only
    assert ha.etcd_endpoints(settings) == [f"10.0.1.{i}:2379" for i in (1, 2, 3)]
    config = ha.patroni_config(settings, "db2", server_parameters(settings, 2 << 30, 2), SECRETS)
    assert config["etcd3"]["hosts"] == [f"10.0.1.{i}:2379" for i in (1, 2, 3)]
    member = resolve(own["e2"], "e2")
    member.cluster, member.etcd_hosts = nodes, etcd_only(own)
    member.node = member.etcd_hosts["e2"]
    assert member.etcd_only and not member.is_standby
    # no Patroni there: etcdctl uses etcd's own client certificate
    assert f"--cert={ha.ETCD_TLS['cert']}" in ha.etcdctl_command(member, "endpoint health")
    assert f"--cert={ha.PATRONI_TLS['cert']}" in ha.etcdctl_command(settings, "endpoint health")
    env = ha.etcd_environment(member, "e2")
    assert env["ETCD_LISTEN_PEER_URLS"] == "https://10.0.1.2:2380"
    assert env["ETCD_INITIAL_CLUSTER"] == ",".join(
        f"e{i}=https://10.0.1.{i}:2380" for i in (1, 2, 3))
    # a mix: one database host and two of etcd's own
    mixed = plan(hosts, ["db1"], ["db1", "e1", "e2"], {n: own[n] for n in ("e1", "e2")})
    assert [n for n, node in mixed.items() if node.etcd_member] == ["db1"]


def test_steps_pass_etcds_own_hosts_by():
    from pginfra.settings import database_hosts_only

    calls = []

    @database_hosts_only(default=False)
    def step(settings, flag=True):
        calls.append(flag)
        return "ran"

    own = etcd_hosts()
    member = resolve(own["e1"], "e1")
    member.node = etcd_only(own)["e1"]
    assert step(member) is False and calls == []
    hosts, nodes = cluster(3)
    assert step(settings_of(hosts, nodes), flag=False) == "ran" and calls == [False]


@pytest.mark.parametrize("change, message", [
    ({"ha_etcd_peer_port": 2390}, "ha_etcd_peer_port differs between hosts"),
    ({"ha_scope": "other"}, "ha_scope differs between hosts"),
    ({"postgres_ha": ""}, "postgres_ha differs between hosts"),
    ({"ssh_hostname": "etcd3.example.com"},
     "e3: postgres_replication_address: none given and ssh_hostname is not an IP"),
])
def test_etcds_own_hosts_agree_with_the_cluster(change, message):
    hosts = servers(2)
    own = etcd_hosts()
    own["e3"].update(change)
    with pytest.raises(TopologyError, match=message):
        plan(hosts, ["db1"], list(own), own)


def test_etcd_hosts_of_their_own_without_postgres_ha_are_refused():
    hosts = {"db1": {}}
    with pytest.raises(TopologyError, match="the etcd group names e1, e2, e3, not in "
                                            "postgres_servers, but postgres_ha is off"):
        plan(hosts, ["db1"], ["e1", "e2", "e3"], etcd_hosts(postgres_ha=""))


def test_etcd_listens_on_the_replication_address_only_with_tls_everywhere():
    hosts, nodes = cluster(3)
    env = ha.etcd_environment(settings_of(hosts, nodes, "db2"), "db2")
    assert env["ETCD_LISTEN_CLIENT_URLS"] == "https://10.0.0.2:2379"
    assert env["ETCD_LISTEN_PEER_URLS"] == "https://10.0.0.2:2380"
    assert env["ETCD_INITIAL_CLUSTER"] == ("db1=https://10.0.0.1:2380,db2=https://10.0.0.2:2380,"
                                           "db3=https://10.0.0.3:2380")
    assert env["ETCD_CLIENT_CERT_AUTH"] == env["ETCD_PEER_CLIENT_CERT_AUTH"] == "true"
    assert env["ETCD_ENABLE_V2"] == "false"
    assert env["ETCD_DATA_DIR"] == "/var/lib/etcd/pginfra"
    assert "127.0.0.1" not in " ".join(env.values())


def test_patroni_takes_its_parameters_from_the_same_settings():
    hosts, nodes = cluster(3, postgres_max_connections=300, ha_synchronous_mode=True)
    settings = settings_of(hosts, nodes)
    params = server_parameters(settings, 8 << 30, 4)
    config = ha.patroni_config(settings, "db1", params, SECRETS)
    dcs = config["bootstrap"]["dcs"]
    assert dcs["postgresql"]["parameters"]["max_connections"] == params["max_connections"] \
        == "300"
    assert dcs["synchronous_mode"] is True and dcs["postgresql"]["use_pg_rewind"] is True
    assert dcs["postgresql"]["use_slots"] is True
    assert "shared_buffers" not in dcs["postgresql"]["parameters"]  # per host: conf.d's
    # replicas stream only: never the old leader's diverged WAL from the archive
    assert params["restore_command"] == "" and "archive-push" in params["archive_command"]
    pg = config["postgresql"]
    assert pg["custom_conf"] == "/etc/postgresql/15/main/postgresql.conf"
    assert pg["parameters"]["hba_file"] == "/etc/postgresql/15/main/pg_hba.conf"
    assert pg["listen"] == "localhost,10.0.0.1:5432" and pg["connect_address"] == "10.0.0.1:5432"
    assert config["restapi"]["certfile"] == ha.PATRONI_TLS["cert"]
    assert config["restapi"]["authentication"] == {"username": "patroni",
                                                   "password": SECRETS[ha.REST_SECRET]}
    assert config["etcd3"]["protocol"] == "https" and config["etcd3"]["cert"]
    assert pg["authentication"]["rewind"]["username"] == "rewinder"
    assert pg["authentication"]["replication"]["sslmode"] == "verify-ca"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.skipif(shutil.which("patroni") is None,
                    reason="patroni is not installed (./dev.sh test installs Debian's)")
def test_patronis_own_validator_accepts_the_configuration(tmp_path):
    """Patroni 3.0.2's --validate-config also checks the addresses: the hosts are 127.0.0.2..4,
    and something listens where etcd would."""
    etcd_port = _free_port()
    data = {"postgres_port": _free_port(), "ha_rest_port": _free_port(),
            "ha_etcd_client_port": etcd_port}
    hosts = {f"db{i}": {"postgres_ha": "patroni", **data,
                        "postgres_listen_addresses": ["localhost", f"127.0.0.{i}"],
                        "postgres_replication_address": f"127.0.0.{i}"} for i in (2, 3, 4)}
    nodes = plan(hosts, ["db2"])
    settings = settings_of(hosts, nodes, "db2")
    config = ha.patroni_config(settings, "db2", server_parameters(settings, 4 << 30, 2),
                               SECRETS)
    path = tmp_path / "patroni.yml"
    with contextlib.ExitStack() as stack:
        for i in (2, 3, 4):
            listener = stack.enter_context(socket.socket())
            listener.bind((f"127.0.0.{i}", etcd_port))
            listener.listen()
        path.write_text(yaml.safe_dump(config))
        proc = subprocess.run(["patroni", "--validate-config", str(path)], capture_output=True,
                              text=True, timeout=60)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        bad = {**config, "bootstrap": {**config["bootstrap"], "dcs": {
            **config["bootstrap"]["dcs"], "ttl": "thirty"}}}
        path.write_text(yaml.safe_dump(bad))
        proc = subprocess.run(["patroni", "--validate-config", str(path)], capture_output=True,
                              text=True, timeout=60)
        assert proc.returncode != 0 and "ttl" in proc.stdout + proc.stderr


def test_the_rewind_role_reads_files_and_checkpoints_nothing_more():
    settings = resolve({"postgres_ha": "patroni"}, "db1")
    sql = rewind_role_sql(settings, "w" * 24, {})
    assert 'CREATE ROLE "rewinder" LOGIN' in sql and 'GRANT pg_checkpoint TO "rewinder"' in sql
    assert all(f'GRANT EXECUTE ON FUNCTION {f} TO "rewinder"' in sql for f in REWIND_FUNCTIONS)
    assert "SET log_statement = 'none'" in sql  # the verifier stays out of the server's log
    assert "NOSUPERUSER" in sql and "NOREPLICATION" in sql and "w" * 24 not in sql
    verifier = sql.split("PASSWORD '")[1].split("'")[0]
    assert verifier.startswith("SCRAM-SHA-256$")
    assert rewind_role_sql(settings, "w" * 24, {"rewinder": {"password": verifier}}) == ""
    changed = rewind_role_sql(settings, "x" * 24, {"rewinder": {"password": verifier}})
    assert "CREATE ROLE" not in changed and 'ALTER ROLE "rewinder"' in changed


def test_the_health_check_is_told_where_patroni_and_etcd_answer():
    from pginfra.programs import checked_config
    from pginfra.steps.health import health_config

    hosts, nodes = cluster(3)
    settings = settings_of(hosts, nodes, "db2")
    config = checked_config("pginfra-health", health_config(settings, "db2"), "db2",
                            "/etc/pginfra/health.json")
    assert config["ha"] == {
        "member": "db2", "members": ["db1", "db2", "db3"],
        "rest_url": "https://10.0.0.2:8008",
        "etcd_endpoints": [f"https://10.0.0.{i}:2379" for i in (1, 2, 3)],
        "cafile": ha.PATRONI_TLS["ca"], "certfile": ha.PATRONI_TLS["cert"],
        "keyfile": ha.PATRONI_TLS["key"], "synchronous": False, "vip": ""}
    assert health_config(resolve({}), "db1")["ha"] is None
    hosts, nodes = cluster(3, ha_client_path="vip", ha_vip="10.0.0.50/24",
                           ha_vip_interface="eth0")
    config = checked_config("pginfra-health", health_config(settings_of(hosts, nodes), "db1"),
                            "db1", "/etc/pginfra/health.json")
    assert config["ha"]["vip"] == "10.0.0.50"


def test_every_member_gets_the_jobs_and_the_repository_stays_on_the_primary():
    from pginfra import pgbackrest as pgbr
    from pginfra.programs import wanted_programs

    hosts, nodes = cluster(3, backup_from_standby=False)
    primary, member = settings_of(hosts, nodes, "db1"), settings_of(hosts, nodes, "db2")
    for settings in (primary, member):
        assert settings.runs_backups and settings.runs_maintenance
        assert {"pginfra-backup", "pginfra-maintenance"} <= set(wanted_programs(settings))
    assert primary.repository_host and not member.repository_host
    # the repository host knows every member, to find the leader wherever it is; without
    # backup_from_standby it copies from the leader
    keys = dict(pgbr.stanza_options(primary))
    assert keys["pg2-host"] == "10.0.0.2" and keys["pg3-host"] == "10.0.0.3"
    assert "backup-standby" not in keys
    assert "pg2-host" not in dict(pgbr.stanza_options(member))
