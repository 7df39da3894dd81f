"""SQL hardening benchmark: the community example's hardening applied to a live database of at
least 1 GB while pgbench writes to the same tables, the safe way (pginfra-migrate and the bundle)
against the naive way (plain CREATE INDEX and ADD CONSTRAINT in one ``psql -f``).

    .venv/bin/python bench/harden.py [--users 90000] [--clients 8] [--before 60] [--after 30]
                                     [--short]

On a rehearsal host of its own (pgh1), deployed with the real runbook and the
community example loaded with --users users (90000 make about 1.1 GB); the baseline bundle is
applied by the deploy, the community bundle is not. The database is then copied, so both ways
start from the same data. For each way:
  1. pgbench writes (a new post, a reaction to it, an update of an old post, in one
     transaction, each by primary key) with
     --clients clients, in back-to-back 5-second runs with per-second logs, --before seconds
     before the apply starts (the baseline TPS) and --after seconds after it ends;
  2. a sampler records every 0.2 s the longest a pgbench statement has been waiting on a lock;
  3. figures: failed transactions, TPS during the apply as a ratio of TPS before it, the longest
     transaction latency and the longest lock wait during the apply, and the apply's duration.
Figures go to stdout and bench/results/harden.json. Nothing is asserted.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import time

from common import ROOT, bench_lab, deploy, host_sql, parse_args, write_results

from pginfra_lab.rehearsal import Lab

NODE = "pgh1"
SQL_DIR = "/usr/local/share/pginfra/sql"
RUNNER = "/usr/local/lib/pginfra/pginfra-migrate"
WORK = "/var/tmp/pginfra-bench-harden"  # the postgres user writes its logs here

# Writes whose cost does not depend on the indexes the hardening adds (lookups by primary key
# only), so the TPS measured during the apply shows the disruption, not a faster workload.
WRITE = r"""\set uid random(1, :users)
\set reactor random(1, :users)
\set pid random(1, :posts)
BEGIN;
INSERT INTO posts (user_id, body) VALUES (:uid, 'a post written during the benchmark')
    RETURNING id AS new_post \gset
INSERT INTO post_reactions (post_id, user_id, kind) VALUES (:new_post, :reactor, 'like');
UPDATE posts SET updated_at = now() WHERE id = :pid;
END;
"""

# The same constraints and indexes, the way the guide's database_hardening.sql did it.
NAIVE = """
ALTER TABLE user_community_stats ADD CONSTRAINT user_community_stats_pkey PRIMARY KEY (user_id);
ALTER TABLE user_community_stats ADD CONSTRAINT user_community_stats_user_fk
    FOREIGN KEY (user_id) REFERENCES users (id) ON DELETE CASCADE;
ALTER TABLE posts ADD CONSTRAINT posts_user_fk FOREIGN KEY (user_id) REFERENCES users (id);
ALTER TABLE post_reactions ADD CONSTRAINT post_reactions_post_fk
    FOREIGN KEY (post_id) REFERENCES posts (id) ON DELETE CASCADE;
ALTER TABLE post_reactions ADD CONSTRAINT post_reactions_user_fk
    FOREIGN KEY (user_id) REFERENCES users (id);
ALTER TABLE post_reactions ADD CONSTRAINT post_reactions_unique UNIQUE (post_id, user_id);
CREATE INDEX idx_posts_user_active_created ON posts (user_id, created_at DESC)
    WHERE deleted_at IS NULL;
CREATE INDEX idx_posts_user_created ON posts (user_id, created_at DESC);
CREATE INDEX idx_post_reactions_post_created ON post_reactions (post_id, created_at DESC);
CREATE INDEX idx_post_reactions_user_created ON post_reactions (user_id, created_at DESC);
CREATE INDEX idx_posts_id_user_deleted ON posts (id) INCLUDE (user_id) WHERE deleted_at IS NULL;
CREATE INDEX idx_stats_posts_today ON user_community_stats (posts_today) WHERE posts_today > 0;
"""
# ...followed by the bundle's function and view files, identical in both ways.
SHARED_FILES = ["050_summary_function.sql", "060_monitoring_functions.sql",
                "070_nightly_reset.sql", "080_activity_mv.sql", "090_maintenance.sql"]

LOAD = f"""set -u
cd /tmp
i=0
while [ ! -e {WORK}/stop ]; do
  runuser -u postgres -- pgbench -n -f {WORK}/write.sql -c "$1" -j 2 -T 5 \\
    -D users="$2" -D posts="$3" -l --aggregate-interval=1 --log-prefix={WORK}/logs/agg.$i \\
    "$4" > {WORK}/logs/out.$i 2>&1
  i=$((i+1))
done
"""
SAMPLE = f"""cd /tmp
while [ ! -e {WORK}/stop ]; do
  runuser -u postgres -- psql -XAtq -d "$1" -c "SELECT extract(epoch FROM now()),
    coalesce(max(extract(epoch FROM now() - query_start)), 0) FROM pg_stat_activity
    WHERE application_name = 'pgbench' AND wait_event_type = 'Lock'" >> {WORK}/lockwait
  sleep 0.2
done
"""


def deploy_example(env: dict, users: int) -> None:
    deploy(env, {
        "postgres_roles": [{"name": "community_owner"}],
        "postgres_databases": [{"name": "community", "owner": "community_owner"}],
        "pginfra_example_community": True,
        "pginfra_example_community_users": users,
        "postgres_sql_bundles": {"*": ["baseline"]},
        "pginfra_migrate_dump": False,
    })


def sql(lab: Lab, query: str, db: str = "postgres") -> str:
    return host_sql(lab, NODE, query, db, timeout=900)


def put(lab: Lab, path: str, text: str) -> None:
    lab.ssh(NODE, ["sh", "-c", f"'cat > {path}'"], input=text)


def run_way(lab: Lab, way: str, db: str, args) -> dict:
    users = int(sql(lab, "SELECT max(id) FROM users", db))
    posts = int(sql(lab, "SELECT max(id) FROM posts", db))
    lab.ssh(NODE, ["rm", "-rf", WORK, "&&", "mkdir", "-p", f"{WORK}/logs", "&&",
                   "chmod", "-R", "777", WORK])
    put(lab, f"{WORK}/write.sql", WRITE)
    put(lab, f"{WORK}/load.sh", LOAD)
    put(lab, f"{WORK}/sample.sh", SAMPLE)
    if way == "naive":
        shared = "".join(
            (ROOT / "sql/examples/community" / name).read_text() for name in SHARED_FILES)
        put(lab, f"{WORK}/naive.sql", NAIVE + shared)
        # as the guide ran it: psql -f, which goes on past an error
        apply = ["runuser", "-u", "postgres", "--", "psql", "-X", "-q", "-o", "/dev/null",
                 "-d", db, "-f", f"{WORK}/naive.sql"]
    else:
        apply = ["runuser", "-u", "postgres", "--", RUNNER, "--dbname", db, "apply",
                 f"{SQL_DIR}/baseline", f"{SQL_DIR}/examples/community"]
    ssh = ["ssh", "-F", str(lab.ssh_config), NODE, "--"]
    load = subprocess.Popen([*ssh, "sh", f"{WORK}/load.sh", str(args.clients), str(users),
                             str(posts), db], stdout=subprocess.DEVNULL)
    sampler = subprocess.Popen([*ssh, "sh", f"{WORK}/sample.sh", db],
                               stdout=subprocess.DEVNULL)
    try:
        time.sleep(args.before)
        start = float(lab.ssh(NODE, ["date", "+%s.%N"]).stdout)
        result = lab.ssh(NODE, ["cd", "/tmp", "&&", *apply], check=False, timeout=7200)
        end = float(lab.ssh(NODE, ["date", "+%s.%N"]).stdout)
        time.sleep(args.after)
    finally:
        lab.ssh(NODE, ["touch", f"{WORK}/stop"])
        load.wait(timeout=60)
        sampler.wait(timeout=60)
    return analyse(lab, way, db, start, end, result, args.before)


def analyse(lab: Lab, way: str, db: str, start: float, end: float, result, before: int) -> dict:
    aggregates = lab.ssh(NODE, ["sh", "-c", f"'cat {WORK}/logs/agg.*'"]).stdout
    outputs = lab.ssh(NODE, ["sh", "-c", f"'cat {WORK}/logs/out.*'"]).stdout
    lockwait = lab.ssh(NODE, ["cat", f"{WORK}/lockwait"], check=False).stdout
    rows = []
    for line in aggregates.splitlines():
        f = line.split()
        if len(f) >= 7:
            rows.append({"t": int(f[0]), "n": int(f[1]), "max_us": int(f[5]),
                         "failures": int(f[6])})
    warm = start - before + 5  # the first seconds of the first run warm caches up
    pre = [r for r in rows if warm <= r["t"] and r["t"] + 1 <= start]
    during = [r for r in rows if start <= r["t"] + 1 and r["t"] <= end]
    post = [r for r in rows if r["t"] > end + 1]
    aborted = len(re.findall(r"aborted in command", outputs))
    failed = sum(int(n) for n in re.findall(r"number of failed transactions: (\d+)", outputs))
    waits = [float(v) for t, v in (ln.split("|") for ln in lockwait.splitlines() if "|" in ln)
             if start <= float(t) <= end + 1]
    tps_before = sum(r["n"] for r in pre) / max(len(pre), 1)
    tps_during = sum(r["n"] for r in during) / max(end - start, 1e-9)
    return {
        "way": way,
        "apply_ok": result.returncode == 0 and "ERROR:" not in result.stderr,
        "apply_errors": re.findall(r"ERROR:  (.*)", result.stderr)
        + ([result.stderr.strip()[-500:]] if result.returncode else []),
        "apply_seconds": round(end - start, 1),
        "failed_transactions": failed + sum(r["failures"] for r in rows),
        "aborted_clients": aborted,
        "tps_before": round(tps_before, 1),
        "tps_during_apply": round(tps_during, 1),
        "tps_ratio_during_to_before": round(tps_during / tps_before, 3) if tps_before else None,
        "tps_after": round(sum(r["n"] for r in post) / max(len(post), 1), 1),
        "longest_transaction_during_apply_ms": round(max(
            (r["max_us"] for r in during), default=0) / 1000, 1),
        "longest_lock_wait_seen_s": round(max(waits, default=0.0), 2),
        "invalid_indexes_after": int(sql(lab, "SELECT count(*) FROM pg_index WHERE NOT "
                                          "indisvalid", db)),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--users", type=int, default=90000)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--before", type=int, default=60)
    parser.add_argument("--after", type=int, default=30)
    args = parse_args(parser, short={"users": 500, "clients": 2, "before": 7, "after": 2})

    figures: dict = {"users": args.users, "clients": args.clients}
    with bench_lab("pginfra-bh", "pgh", ["postgres", "pgbouncer_admin"]) as (
            lab, env, _):
        started = time.monotonic()
        deploy_example(env, args.users)
        figures["deploy_and_load_seconds"] = round(time.monotonic() - started, 1)
        figures["database_bytes"] = int(sql(lab, "SELECT pg_database_size('community')"))
        figures["database_size"] = sql(lab, "SELECT pg_size_pretty(pg_database_size("
                                            "'community'))")
        sql(lab, "CREATE DATABASE community_naive TEMPLATE community")
        sql(lab, "VACUUM ANALYZE", "community")
        sql(lab, "VACUUM ANALYZE", "community_naive")
        figures["safe"] = run_way(lab, "safe", "community", args)
        figures["naive"] = run_way(lab, "naive", "community_naive", args)
    write_results("harden", figures, args.short)
    return 0


if __name__ == "__main__":
    sys.exit(main())
