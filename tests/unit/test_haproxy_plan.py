"""ha_client_path: haproxy. Every member's HAProxy listens where its PgBouncer does, passes TCP
to the leader's PgBouncer (read-write) or the replicas' (read-only), and learns who leads from
each member's Patroni REST API over TLS checked against pginfra's CA and the member's name. The
rendered file passes the real ``haproxy -c``; run for real, HAProxy follows a switchover."""

from __future__ import annotations

import contextlib
import http.server
import os
import socket
import socketserver
import ssl
import subprocess
import threading
import time

import pytest

from pginfra import haproxy
from pginfra.settings import SettingsError, resolve
from pginfra.templating import render
from pginfra.topology import plan

HAPROXY = "/usr/sbin/haproxy"
needs_haproxy = pytest.mark.skipif(
    not os.path.exists(HAPROXY),
    reason=f"{HAPROXY} is absent: Debian's haproxy package is not installed "
           "(./dev.sh test installs it)")


def cluster(n: int = 3, **data):
    hosts = {f"db{i}": {"postgres_ha": "patroni",
                        "postgres_listen_addresses": ["localhost", f"10.0.0.{i}"], **data}
             for i in range(1, n + 1)}
    return hosts, plan(hosts, ["db1"])


def settings_of(hosts, nodes, name="db1"):
    settings = resolve(hosts[name], name)
    settings.cluster, settings.node = nodes, nodes[name]
    return settings


def rendered(name="db1", hosts=None, **data) -> str:
    if hosts is None:
        hosts, nodes = cluster(**data)
    else:
        nodes = plan(hosts, ["db1"])
    context = haproxy.haproxy_config_context(settings_of(hosts, nodes, name), name, hosts)
    return render("haproxy.cfg.j2", **context)


def sections(text: str) -> dict[str, list[str]]:
    """``"listen pginfra_rw"`` -> its lines (stripped, without comments)."""
    out: dict[str, list[str]] = {}
    current = None
    for raw in text.splitlines():
        line = raw.split(" #", 1)[0].strip()
        if not line or line.startswith("#"):
            continue
        if raw[0].isspace():
            out[current].append(line)
        else:
            current = line
            out[current] = []
    return out


def test_haproxy_only_with_patroni_and_the_haproxy_client_path():
    hosts, nodes = cluster()
    assert haproxy.wanted(settings_of(hosts, nodes))
    assert not haproxy.wanted(resolve({}, "db1"))


def test_read_write_and_read_only_listen_where_pgbouncer_listens_in_tcp_mode():
    config = sections(rendered("db2"))
    assert list(config) == ["global", "defaults", "listen pginfra_rw", "listen pginfra_ro"]
    rw, ro = config["listen pginfra_rw"], config["listen pginfra_ro"]
    assert [line for line in rw if line.startswith("bind")] == [
        "bind 127.0.0.1:5000", "bind 10.0.0.2:5000"]
    assert [line for line in ro if line.startswith("bind")] == [
        "bind 127.0.0.1:5001", "bind 10.0.0.2:5001"]
    assert "mode tcp" in config["defaults"] and "option tcplog" in config["defaults"]
    assert "balance first" in rw and "balance leastconn" in ro
    # PgBouncer's own listen addresses win over the server's, as in pgbouncer.ini
    ports = sections(rendered(ha_haproxy_port_rw=7000, ha_haproxy_port_ro=7001,
                              pgbouncer_listen_addresses=["10.0.0.1", "10.0.0.2", "10.0.0.3"]))
    assert [line for line in ports["listen pginfra_rw"] if line.startswith("bind")] == [
        "bind 10.0.0.1:7000", "bind 10.0.0.2:7000", "bind 10.0.0.3:7000"]


def test_every_member_is_a_backend_at_its_pgbouncer():
    hosts, _ = cluster(pgbouncer_port=6433)
    hosts["db3"]["pgbouncer_port"] = 6434  # a member's own port
    config = sections(rendered(hosts=hosts))
    for name in ("listen pginfra_rw", "listen pginfra_ro"):
        servers = [line for line in config[name] if line.startswith("server ")]
        assert servers == ["server db1 10.0.0.1:6433 check verifyhost db1",
                           "server db2 10.0.0.2:6433 check verifyhost db2",
                           "server db3 10.0.0.3:6434 check verifyhost db3"]
    hosts, _ = cluster()
    hosts["db2"]["pgbouncer_enabled"] = False  # its server, then, on Patroni's listen address
    servers = [line for line in sections(rendered(hosts=hosts))["listen pginfra_rw"]
               if line.startswith("server db2")]
    assert servers == ["server db2 10.0.0.2:5432 check verifyhost db2"]


def test_a_pgbouncer_haproxy_cannot_reach_is_refused_before_anything():
    hosts, _ = cluster()
    hosts["db3"]["pgbouncer_listen_addresses"] = ["127.0.0.1"]
    with pytest.raises(SettingsError, match="db3: pgbouncer_listen_addresses: HAProxy reaches "
                                            "db3's PgBouncer at 10.0.0.3"):
        rendered(hosts=hosts)


def test_patroni_says_who_leads_over_tls_checked_against_pginfras_ca():
    config = sections(rendered(ha_rest_port=8443, ha_maximum_lag_on_failover=4194304))
    rw, ro = config["listen pginfra_rw"], config["listen pginfra_ro"]
    assert "option httpchk" in rw and "option httpchk" in ro
    assert "http-check send meth OPTIONS uri /primary" in rw
    assert "http-check send meth OPTIONS uri /replica?lag=4194304" in ro  # bytes, as Patroni's
    for listen in (rw, ro):
        assert "http-check expect status 200" in listen
        default = next(line for line in listen if line.startswith("default-server")).split()
        assert " ".join(default[1:]) == (
            f"port 8443 check-ssl verify required ca-file {haproxy.CA_FILE} inter 3s "
            "fastinter 1s fall 3 rise 2 on-marked-down shutdown-sessions")
    assert haproxy.CA_FILE == "/etc/haproxy/pginfra-ca.crt"


def test_timeouts_for_long_sessions_the_journal_and_no_stats_on_the_network():
    text = rendered()
    config = sections(text)
    defaults, glob = config["defaults"], config["global"]
    for line in ("timeout connect 4s", "timeout client 30m", "timeout server 30m",
                 "timeout check 3s", "option tcpka", "log global"):
        assert line in defaults
    assert "log /dev/log local0" in glob and "maxconn 2000" in glob
    assert "stats socket /run/haproxy/admin.sock mode 660 level admin" in glob
    assert "maxconn 1000" in config["listen pginfra_rw"]
    binds = [line for lines in config.values() for line in lines if line.startswith("bind")]
    assert len(binds) == 4 and "stats" not in " ".join(
        config["listen pginfra_rw"] + config["listen pginfra_ro"])
    assert text.startswith("# /etc/haproxy/haproxy.cfg\n# Managed by pginfra")


def test_bind_addresses():
    assert haproxy.bind_address("localhost", 5000) == "127.0.0.1:5000"
    assert haproxy.bind_address("fd00::1", 5000) == "[fd00::1]:5000"
    assert haproxy.bind_address("*", 5000) == "0.0.0.0:5000"


@needs_haproxy
def test_haproxy_accepts_the_rendered_configuration(tmp_path):
    from pginfra.ca import ensure_ca

    hosts, nodes = cluster()
    context = haproxy.haproxy_config_context(settings_of(hosts, nodes), "db1", hosts)
    context["ca_file"] = str(ensure_ca(tmp_path / "ca")[1])  # the host's copy of it
    path = tmp_path / "haproxy.cfg"
    path.write_text(render("haproxy.cfg.j2", **context))
    result = subprocess.run([HAPROXY, "-c", "-f", str(path)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Configuration file is valid" in result.stdout
    # and refuses a broken one: the step's check before install means something
    path.write_text(path.read_text().replace("balance first", "balance firsts"))
    assert subprocess.run([HAPROXY, "-c", "-f", str(path)], capture_output=True).returncode


# --- HAProxy run for real, members played on 127.0.0.1-3: a Patroni REST API (HTTPS, the
# certificate steps/ha.py makes) and a PgBouncer that says its name.

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class _Quiet:
    def handle_error(self, request, client_address):
        pass


def _patroni(name, address, port, roles, cert, key):
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_OPTIONS(self):  # what HAProxy sends; a GET would be refused (501)
            role = roles[name]
            ok = self.path == "/primary" if role == "leader" else self.path.startswith(
                "/replica?lag=")
            self.send_response(200 if ok else 503)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args):
            pass

    class Server(_Quiet, http.server.ThreadingHTTPServer):
        daemon_threads = True

    server = Server((address, port), Handler)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    return server


def _pgbouncer(name, address, port):
    class Handler(socketserver.BaseRequestHandler):
        def handle(self):
            self.request.sendall(name.encode())
            with contextlib.suppress(OSError):
                self.request.recv(1)  # the session lasts until the client leaves

    class Server(_Quiet, socketserver.ThreadingTCPServer):
        daemon_threads = True
        allow_reuse_address = True

    return Server((address, port), Handler)


def _who(port: int) -> str:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2) as s:
            return s.recv(16).decode() or "closed"
    except OSError as exc:
        return type(exc).__name__


def _until(what, timeout=20.0):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if what():
            return True
        time.sleep(0.2)
    return False


@needs_haproxy
@pytest.mark.skipif(os.geteuid() != 0, reason="HAProxy's chroot and user haproxy need root")
def test_haproxy_follows_the_leader_patroni_names(tmp_path):
    from pginfra.ca import ensure_ca, ensure_server_cert

    rw, ro, rest, pgbouncer = (_free_port() for _ in range(4))
    hosts = {f"db{i}": {"postgres_ha": "patroni", "postgres_listen_addresses": [f"127.0.0.{i}"],
                        "postgres_replication_address": f"127.0.0.{i}", "ha_rest_port": rest,
                        "pgbouncer_port": pgbouncer, "ha_haproxy_port_rw": rw,
                        "ha_haproxy_port_ro": ro} for i in (1, 2, 3)}
    nodes = plan(hosts, ["db1"])
    context = haproxy.haproxy_config_context(settings_of(hosts, nodes), "db1", hosts)
    ca_dir = tmp_path / "ca"
    context["ca_file"] = str(ensure_ca(ca_dir)[1])
    context["admin_socket"] = str(tmp_path / "admin.sock")
    config = tmp_path / "haproxy.cfg"
    config.write_text(render("haproxy.cfg.j2", **context))
    roles = {"db1": "leader", "db2": "replica", "db3": "replica"}
    servers = []
    for name, node in nodes.items():
        # Patroni's certificate as pginfra.steps.ha makes it; db3's names another host
        named = "db9" if name == "db3" else name
        key, cert = ensure_server_cert(named, [node.address], [node.address, named], ca_dir,
                                       name="ha", client=True)
        servers += [_patroni(name, node.address, rest, roles, cert, key),
                    _pgbouncer(name, node.address, pgbouncer)]
    for server in servers:
        threading.Thread(target=server.serve_forever, daemon=True).start()
    process = subprocess.Popen([HAPROXY, "-db", "-f", str(config)], stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True)
    try:
        assert _until(lambda: _who(rw) == "db1" and {_who(ro) for _ in range(6)} == {
            "db2"}), "read-write reaches the leader, read-only the replicas Patroni vouches for"
        held = socket.create_connection(("127.0.0.1", rw), timeout=2)
        assert held.recv(16) == b"db1"
        roles.update(db1="replica", db2="leader")  # a switchover
        assert _until(lambda: _who(rw) == "db2"), "read-write follows the new leader"
        held.settimeout(10)
        assert held.recv(16) == b"", "the demoted leader's clients are cut off"
        held.close()
        assert _until(lambda: {_who(ro) for _ in range(6)} == {"db1"})
        roles.update(db2="replica")  # no leader: read-write refuses, never a replica
        assert _until(lambda: _who(rw) in ("closed", "ConnectionResetError"))
    finally:
        process.terminate()
        output = process.communicate(timeout=10)[0]
        for server in servers:
            server.shutdown()
            server.server_close()
    assert "Layer7 check passed" in output, output  # TLS to Patroni, verified
    assert "pginfra_ro/db3 is DOWN, reason: Layer6 invalid response, info: \"Server " \
           "presented an SSL certificate different from the configured one\"" in output, output
