"""An application for HA rehearsals (tests/e2e/test_ha.py, bench/ha.py): one client inserting
rows one at a time through the client path, counting on its side what the server confirmed, and
a member's view of the cluster from Patroni's REST API.

    with Writer(conninfo) as writer:
        ...  # kill the leader, switch over
    missing = [i for i in writer.committed if i not in rows_on_the_new_leader]
"""

from __future__ import annotations

import contextlib
import json
import ssl
import threading
import time
import urllib.request

TABLE = "ha_probe"
CREATE = (f"CREATE TABLE IF NOT EXISTS {TABLE} (id bigint PRIMARY KEY, "
          "at timestamptz DEFAULT now())")


def conninfo(addresses: list[str], port: int, password: str, cafile: str,
             dbname: str = "app", user: str = "app") -> str:
    """Every member in one connection string, target_session_attrs=read-write: libpq tries
    them in turn and keeps the one that takes writes (port 5432: the server itself; an HAProxy
    port: whichever server HAProxy sends it to; the floating address: its holder). TCP
    keepalives and tcp_user_timeout, as the README asks of clients: when a floating address
    moves, no one closes the connections to its old holder, and a client waiting for an
    answer there would wait for ever (the lab showed it)."""
    return (f"host={','.join(addresses)} port={port} dbname={dbname} user={user} "
            f"password={password} sslmode=verify-full sslrootcert={cafile} connect_timeout=2 "
            "target_session_attrs=read-write keepalives=1 keepalives_idle=2 "
            "keepalives_interval=1 keepalives_count=3 tcp_user_timeout=5000")


class Writer:
    """Inserts one row at a time (autocommit) until stopped, reconnecting after any error.
    ``committed`` holds every id the server confirmed, ``times`` when (monotonic)."""

    def __init__(self, conninfo: str):
        self.conninfo = conninfo
        self.committed: list[int] = []
        self.times: list[float] = []
        self.failures = 0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self):
        import psycopg

        n, conn = int(time.time() * 1000) * 1000, None  # ids of their own, run after run
        while not self.stop.is_set():
            try:
                if conn is None:
                    conn = psycopg.connect(self.conninfo, autocommit=True)
                n += 1
                conn.execute(f"INSERT INTO {TABLE} (id) VALUES (%s)", (n,))
                self.committed.append(n)
                self.times.append(time.monotonic())
            except psycopg.Error:
                self.failures += 1
                with contextlib.suppress(Exception):
                    conn.close()
                conn = None
                time.sleep(0.2)
        with contextlib.suppress(Exception):
            conn.close()

    def started(self, count: int = 20, timeout: float = 60) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and len(self.committed) <= count:
            time.sleep(0.1)
        return len(self.committed) > count

    def __enter__(self):
        self.thread.start()
        if not self.started():
            self.__exit__()
            raise RuntimeError(f"the writer committed nothing in 60 s ({self.failures} failed "
                               "attempts)")
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join(timeout=30)

    def first_commit_after(self, moment: float) -> float | None:
        return next((t for t in self.times if t > moment), None)

    def resumed_after(self, moment: float) -> float | None:
        """When commits resumed after the longest pause that began after ``moment`` (a kill,
        a switchover): the commit ending that pause; None before any commit follows one.
        Commits already in flight at ``moment`` land just after it: the pause is what counts.

            >>> w = Writer("")
            >>> w.times = [1.0, 1.1, 1.2, 1.25, 9.0, 9.1]
            >>> w.resumed_after(1.15)
            9.0
        """
        times = [t for t in self.times if t >= moment]
        before = [t for t in self.times if t < moment]
        if before:
            times.insert(0, before[-1])
        gaps = [(b - a, b) for a, b in zip(times, times[1:], strict=False)]
        return max(gaps)[1] if gaps else None


ROLES = {"leader": "Leader", "sync_standby": "Sync Standby", "replica": "Replica",
         "standby_leader": "Standby Leader"}


def members(address: str, cafile: str, port: int = 8008) -> dict[str, dict]:
    """The cluster as the member at ``address`` sees it (GET /cluster, verified with pginfra's
    CA), in patronictl's words: Role Leader / Sync Standby / Replica, State, TL. {} when it does
    not answer. Not ``patronictl list``: that picks an etcd endpoint itself, and may spend a
    probe's whole timeout on a dead member's."""
    context = ssl.create_default_context(cafile=cafile)
    try:
        with urllib.request.urlopen(f"https://{address}:{port}/cluster", context=context,
                                    timeout=3) as answer:
            found = json.load(answer)["members"]
    except (OSError, ValueError, KeyError):
        return {}
    return {m["name"]: {"Role": ROLES.get(m["role"], m["role"]), "State": m["state"],
                        "TL": m.get("timeline")} for m in found}


def leader(address: str, cafile: str, port: int = 8008) -> str | None:
    return next((n for n, m in members(address, cafile, port).items()
                 if m["Role"] == "Leader" and m["State"] == "running"), None)
