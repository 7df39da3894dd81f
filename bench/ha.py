"""HA benchmark: how long a failover takes, what it loses, and what the client path costs.

    .venv/bin/python bench/ha.py [--failovers N] [--seconds S] [--settings NAME...] [--short]

On a lab of its own (pgf1, pgf2, pgf3; postgres_ha: patroni, HAProxy on every member):
  1. pgbench tps for ``--seconds`` (4 clients, one-row inserts), from this machine: straight to
     the leader's server (5432, the baseline) against the client path (a member's HAProxy,
     then the leader's PgBouncer), same run: the ratio is what the path costs;
  2. failovers: for each setting, ``--failovers`` times, one client writes through the client
     path (every member's HAProxy in one connection string) while the leader's host is killed
     (no shutdown); the time from the kill to the client's first commit on the new leader (p50
     and max), and the commits the client was told of that the new leader lacks (lost). The
     old leader's host boots again and the cluster is whole before the next kill. Settings:
     Patroni's defaults (ttl 30, loop_wait 10, retry_timeout 10) and tuned (20, 4, 8), both with
     synchronous_mode; tuned without it (asynchronous: commits may be lost).
Figures go to bench/results/ha.json (ha.short.json with --short: one failover, tuned and
synchronous only; ha.NAME+NAME.json with --settings), written also when a setting fails, with
what the settings before it gave. Nothing here is asserted: it is a measurement, not a test.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from common import BIN, ROOT, bench_lab, host_sql, parse_args, write_results

from pginfra_lab import clients

ROLES = ["postgres", "app", "pgbouncer_admin", "pgbouncer_auth", "replicator", "rewinder",
         "patroni_restapi"]
NAMES = ["pgf1", "pgf2", "pgf3"]
SETTINGS = {
    "default_sync": {"ha_ttl": 30, "ha_loop_wait": 10, "ha_retry_timeout": 10,
                     "ha_synchronous_mode": True},
    "tuned_sync": {"ha_ttl": 20, "ha_loop_wait": 4, "ha_retry_timeout": 8,
                   "ha_synchronous_mode": True},
    "tuned_async": {"ha_ttl": 20, "ha_loop_wait": 4, "ha_retry_timeout": 8,
                    "ha_synchronous_mode": False},
}
PGBENCH = "/usr/lib/postgresql/15/bin/pgbench"
SCRIPT = "INSERT INTO bench_tps (v) VALUES (1);\n"


def deploy(env: dict, data: dict) -> float:
    started = time.monotonic()
    proc = subprocess.run(
        [str(BIN / "pyinfra"), "-y", "inventories/rehearsal.py", "deploys/postgres.py"],
        cwd=ROOT, capture_output=True, text=True, timeout=1800,
        env={**env, "PGINFRA_REHEARSAL_HA": "patroni",
             "PGINFRA_REHEARSAL_DATA": json.dumps(data)})
    if proc.returncode:
        raise SystemExit(f"the deploy failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return time.monotonic() - started


def whole(lab, ca: str, synchronous: bool, timeout: float = 180) -> str:
    """Wait until one leader runs and the other two members run too, one of them the
    synchronous standby in synchronous mode (without one Patroni promotes no one); the
    leader's name."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for name in NAMES:
            found = clients.members(lab.hosts[name]["address"], ca)
            leaders = [n for n, m in found.items() if m["Role"] == "Leader"]
            sync = any(m["Role"] == "Sync Standby" for m in found.values())
            if (sorted(found) == NAMES and len(leaders) == 1 and (sync or not synchronous)
                    and all(m["State"] in ("running", "streaming") for m in found.values())):
                return leaders[0]
        time.sleep(1)
    raise SystemExit("the cluster did not become whole")


def pgbench_tps(lab, env: dict, address: str, port: int, seconds: int) -> float:
    """4 clients of one-row inserts for ``seconds``; the password from a 0600 passfile, never
    on a command line."""
    with tempfile.TemporaryDirectory() as tmp:
        passfile, script = Path(tmp) / "pgpass", Path(tmp) / "insert.sql"
        passfile.write_text(f"*:*:*:app:{env['APP_PASSWORD']}\n")
        passfile.chmod(0o600)
        script.write_text(SCRIPT)
        proc = subprocess.run(
            [PGBENCH, "-n", "-c", "4", "-j", "2", "-T", str(seconds), "-f", str(script),
             "-h", address, "-p", str(port), "-U", "app", "app"],
            capture_output=True, text=True, timeout=seconds + 120,
            env={**os.environ, "PGPASSFILE": str(passfile), "PGSSLMODE": "verify-full",
                 "PGSSLROOTCERT": env["CA"]})
    found = re.search(r"tps = ([0-9.]+) \(without initial connection time\)", proc.stdout)
    if proc.returncode or not found:
        raise SystemExit(f"pgbench to {address}:{port} failed: {proc.stderr[-2000:]}")
    return float(found.group(1))


class Stalled(Exception):
    """A failover after which no commit came."""


def failover(lab, env: dict, leader: str, synchronous: bool) -> dict:
    """Kill ``leader``'s host under writes; boot it again; the figures of one failover."""
    survivors = [n for n in NAMES if n != leader]
    path = clients.conninfo([lab.hosts[n]["address"] for n in NAMES], 5000,
                            env["APP_PASSWORD"], env["CA"])
    with clients.Writer(path) as writer:
        time.sleep(2)
        killed = time.monotonic()
        lab.kill(leader)
        deadline = killed + 180
        while time.monotonic() < deadline and not writer.first_commit_after(killed + 0.5):
            time.sleep(0.1)
        first = writer.first_commit_after(killed + 0.5)
        time.sleep(2)
    if first is None:
        views = {n: clients.members(lab.hosts[n]["address"], env["CA"]) for n in survivors}
        raise Stalled(f"no commit within 180 s of killing {leader}; the survivors' view of "
                      f"the cluster: {json.dumps(views)}")
    first = writer.resumed_after(killed)  # the end of the pause, not a commit in flight
    new = clients.leader(lab.hosts[survivors[0]]["address"], env["CA"]) or \
        clients.leader(lab.hosts[survivors[1]]["address"], env["CA"])
    have = {int(v) for v in host_sql(lab, new, f"SELECT id FROM {clients.TABLE}",
                                     db="app").split()}
    lost = [i for i in writer.committed if i not in have]
    lab.boot(leader)
    whole(lab, env["CA"], synchronous)
    return {"killed": leader, "new_leader": new, "seconds_to_first_commit": round(
        first - killed, 2), "committed": len(writer.committed), "lost": len(lost),
        "failed_attempts": writer.failures}


def measure(lab, env: dict, run: str, failovers: int, first: bool, figures: dict) -> None:
    """``failovers`` kills with the settings ``run`` (deployed first unless ``first``), into
    ``figures[run]`` as they come."""
    if not first:
        figures[f"deploy_{run}_s"] = round(deploy(env, SETTINGS[run]), 1)
    synchronous = SETTINGS[run]["ha_synchronous_mode"]
    done: list[dict] = []
    figures[run] = {"settings": SETTINGS[run], "failovers": done}
    for _ in range(failovers):
        leader = whole(lab, env["CA"], synchronous)
        done.append(failover(lab, env, leader, synchronous))
    seconds = [f["seconds_to_first_commit"] for f in done]
    figures[run].update({"p50_s": round(statistics.median(seconds), 2), "max_s": max(seconds),
                         "lost_total": sum(f["lost"] for f in done)})
    print(f"{run}: p50 {figures[run]['p50_s']} s, max {figures[run]['max_s']} s, "
          f"lost {figures[run]['lost_total']}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--failovers", type=int, default=5)
    parser.add_argument("--seconds", type=int, default=30)
    parser.add_argument("--settings", nargs="+", choices=list(SETTINGS),
                        help="measure only these settings, in this order (default: all)")
    args = parse_args(parser, {"failovers": 1, "seconds": 5})
    runs = args.settings or (["tuned_sync"] if args.short else list(SETTINGS))
    figures: dict = {"failovers_per_setting": args.failovers}
    name = "ha" if not args.settings else "ha." + "+".join(args.settings)  # a part: its own file
    with bench_lab("pginfra-bha", "pgf", ROLES, hosts=3) as (lab, env, tmp):
        from pginfra.secrets import _read_file

        control = tmp / "control"
        env = {**env, "APP_PASSWORD": _read_file(control / "secrets.yaml")["app"],
               "CA": str(control / "ca" / "ca.crt")}
        figures["cold_deploy_s"] = round(deploy(env, SETTINGS[runs[0]]), 1)
        leader = whole(lab, env["CA"], SETTINGS[runs[0]]["ha_synchronous_mode"])
        host_sql(lab, leader, f"{clients.CREATE}; GRANT INSERT, SELECT ON {clients.TABLE} TO app; "
                 "CREATE TABLE IF NOT EXISTS bench_tps (id bigserial, v int); "
                 "GRANT INSERT ON bench_tps TO app; "
                 "GRANT USAGE ON SEQUENCE bench_tps_id_seq TO app", db="app")
        other = next(n for n in NAMES if n != leader)
        direct = pgbench_tps(lab, env, lab.hosts[leader]["address"], 5432, args.seconds)
        through = pgbench_tps(lab, env, lab.hosts[other]["address"], 5000, args.seconds)
        figures["tps"] = {"direct_to_leader": direct, "client_path_haproxy_pgbouncer": through,
                          "ratio_client_path_to_direct": round(through / direct, 3)}
        for run in runs:
            try:
                measure(lab, env, run, args.failovers, first=run == runs[0], figures=figures)
            except (Stalled, SystemExit) as failed:  # keep what the settings before it gave
                figures[run] = {**figures.get(run, {}), "error": str(failed)}
                write_results(name, figures, args.short)
                raise SystemExit(f"{run}: {failed}") from None
    write_results(name, figures, args.short)


if __name__ == "__main__":
    main()
