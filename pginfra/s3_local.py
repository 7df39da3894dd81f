"""A local S3-compatible endpoint (moto_server) for rehearsals, tests and benchmarks: on
loopback, or on a rehearsal lab's bridge address so its hosts can reach it. Never a patched
client: boto3 talks HTTP to it as it would to S3.

    with local_s3("10.77.1.1", buckets=["backups"]) as endpoint:
        ...  # endpoint == "http://10.77.1.1:<free port>"
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

    return boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                        aws_access_key_id="local", aws_secret_access_key="local", **kwargs)


@contextlib.contextmanager
def local_s3(address: str = "127.0.0.1", buckets: tuple[str, ...] | list[str] = (),
             timeout: float = 30) -> Iterator[str]:
    """Run moto_server on ``address`` and a free port until the block ends; create
    ``buckets``; yield the endpoint URL. Raises RuntimeError, with its output, if it does not
    start."""
    if not MOTO.exists():
        raise RuntimeError(f"{MOTO} is absent: install moto[server] (the test extra)")
    port = free_port(address)
    with tempfile.TemporaryFile() as log:
        proc = subprocess.Popen([str(MOTO), "-H", address, "-p", str(port)], stdout=log,
                                stderr=subprocess.STDOUT)
        endpoint = f"http://{address}:{port}"
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
            yield endpoint
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
