"""A local S3-compatible endpoint (moto_server) for rehearsals, tests and benchmarks: on
loopback, or on a rehearsal lab's bridge address so its hosts can reach it. Never a patched
client: boto3 and pgBackRest talk to it as they would to S3.

    with local_s3("10.77.1.1", buckets=["backups"]) as endpoint:
        ...  # endpoint == "http://10.77.1.1:<free port>"
    with local_s3("10.77.1.1", buckets=["backups"], ca_dir=ca) as endpoint:
        ...  # "https://10.77.1.1:<port>", a certificate from the pginfra CA in ``ca``
        endpoint.stop()   # the endpoint goes away (connections refused) ...
        endpoint.start()  # ... and comes back, on the same port, with the same data

With ``ca_dir``, moto serves plain HTTP on loopback behind a small TLS terminator
(``python -m pginfra_lab.s3_local proxy``): moto's own TLS (werkzeug) drops connections without a
TLS close_notify, which pgBackRest (OpenSSL 3) rightly treats as an error. The certificate
names the address as an IP and as a DNS name, since pgBackRest 2.45 checks only DNS names.
"""

from __future__ import annotations

import contextlib
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

MOTO = Path(sys.executable).parent / "moto_server"


def free_port(address: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((address, 0))
        return s.getsockname()[1]


def client(endpoint: str, **kwargs):
    """A boto3 S3 client for the local endpoint (moto takes any key)."""
    import boto3

    if getattr(endpoint, "ca", None):
        kwargs.setdefault("verify", endpoint.ca)
    return boto3.client("s3", endpoint_url=str(endpoint), region_name="us-east-1",
                        aws_access_key_id="local", aws_secret_access_key="local", **kwargs)


class Endpoint(str):
    """The endpoint URL; with TLS, ``stop()`` and ``start()`` take it away and bring it back
    (the TLS terminator killed and started again; moto keeps its data), and ``ca`` is the CA
    certificate that signs it."""

    proxy: list[str] | None = None
    process: subprocess.Popen | None = None
    ca: str | None = None

    def start(self) -> None:
        if self.process is None or self.process.poll() is not None:
            self.process = subprocess.Popen(self.proxy)
            _wait_listening(self.proxy[4], int(self.proxy[5]), self.process)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)


def _wait_listening(address: str, port: int, proc: subprocess.Popen, timeout: float = 15):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        with contextlib.suppress(OSError), socket.create_connection((address, port), 0.5):
            return
        time.sleep(0.05)
    raise RuntimeError(f"the TLS terminator did not listen on {address}:{port}")


@contextlib.contextmanager
def local_s3(address: str = "127.0.0.1", buckets: tuple[str, ...] | list[str] = (),
             timeout: float = 30, ca_dir: str | Path | None = None) -> Iterator[Endpoint]:
    """Run moto_server on ``address`` and a free port until the block ends (with ``ca_dir``:
    on loopback, behind TLS on ``address``); create ``buckets``; yield the endpoint URL.
    Raises RuntimeError, with its output, if it does not start."""
    if not MOTO.exists():
        raise RuntimeError(f"{MOTO} is absent: install moto[server] (the test extra)")
    upstream = "127.0.0.1" if ca_dir else address
    port = free_port(upstream)
    with tempfile.TemporaryFile() as log:
        proc = subprocess.Popen([str(MOTO), "-H", upstream, "-p", str(port)], stdout=log,
                                stderr=subprocess.STDOUT)
        endpoint = Endpoint(f"http://{upstream}:{port}")
        try:
            deadline = time.monotonic() + timeout
            while True:
                try:
                    urllib.request.urlopen(endpoint + "/moto-api/", timeout=1).close()
                    break
                except OSError:
                    if proc.poll() is not None or time.monotonic() > deadline:
                        log.seek(0)
                        raise RuntimeError(f"moto_server did not start on {endpoint}: "
                                           f"{log.read()[-2000:]!r}") from None
                    time.sleep(0.1)
            s3 = client(endpoint)
            for bucket in buckets:
                s3.create_bucket(Bucket=bucket)
            if ca_dir:
                from pginfra.ca import ensure_ca, ensure_server_cert

                _, ca_cert = ensure_ca(ca_dir)
                key, cert = ensure_server_cert(f"s3-{address}", [address], [address],
                                               ca_dir=ca_dir)
                tls_port = free_port(address)
                endpoint = Endpoint(f"https://{address}:{tls_port}")
                endpoint.ca = str(ca_cert)
                endpoint.proxy = [sys.executable, "-m", "pginfra_lab.s3_local", "proxy", address,
                                  str(tls_port), str(port), str(cert), str(key)]
                endpoint.start()
            yield endpoint
        finally:
            if endpoint.proxy:
                endpoint.stop()
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()


def proxy(listen: str, port: int, upstream_port: int, cert: str, key: str) -> None:
    """Serve TLS on listen:port, relaying each connection to 127.0.0.1:upstream_port, and close
    the TLS side properly (close_notify) when the upstream closes."""
    import asyncio
    import ssl

    async def pipe(reader, writer):
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except (ConnectionError, ssl.SSLError):
            pass
        finally:
            with contextlib.suppress(Exception):
                writer.close()
                await writer.wait_closed()

    async def handle(client_reader, client_writer):
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", upstream_port)
        except OSError:
            client_writer.close()
            return
        await asyncio.gather(pipe(client_reader, writer), pipe(reader, client_writer))

    async def main():
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(cert, key)
        server = await asyncio.start_server(handle, listen, port, ssl=context)
        async with server:
            await server.serve_forever()

    asyncio.run(main())


if __name__ == "__main__" and sys.argv[1:2] == ["proxy"]:
    proxy(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5], sys.argv[6])
