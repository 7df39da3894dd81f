"""Every benchmark in bench/ runs in its short mode (small data, a few seconds, on a lab of its
own), so one that a change breaks is caught here rather than when someone needs its figures.
The figures themselves are never asserted; what a run must show is: it finished, and its
results hold the figures it exists for, with what the benchmark itself relies on (every client
connected, the recovery found the right rows, the second deploy changed nothing).

The short modes run two at a time (``PGINFRA_BENCH_PARALLEL``), longest first: most of each is
booting a lab and deploying to it from cold, and a lab waits on its hosts as much as it works,
so two side by side take about half the time one after the other does. Their labs take turns at
what labs share (``machine_lock``). Short figures mean nothing, so sharing the machine costs
nothing here; the full modes run alone, by hand."""

from __future__ import annotations

import json
import os
import subprocess
from concurrent.futures import Future, ThreadPoolExecutor

import pytest
from conftest import BIN

from pginfra import ROOT

pytestmark = pytest.mark.bench

# Longest first, so that the last one to start is a short one.
ORDER = ("replication", "ha", "backup", "health", "foundation", "harden", "pgbouncer")
PARALLEL = int(os.environ.get("PGINFRA_BENCH_PARALLEL", "2"))


def run_short(name: str) -> dict:
    results = ROOT / f"bench/results/{name}.short.json"
    results.unlink(missing_ok=True)
    proc = subprocess.run([str(BIN / "python"), f"bench/{name}.py", "--short"], cwd=ROOT,
                          capture_output=True, text=True, timeout=1800)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return json.loads(results.read_text())


@pytest.fixture(scope="module")
def runs(request) -> dict[str, Future]:
    """The short mode of every benchmark whose test was selected, started at once on a pool of
    ``PARALLEL``: each test waits for its own."""
    selected = {item.name.removeprefix("test_") for item in request.session.items
                if item.module is request.module}
    unknown = selected - set(ORDER)
    assert not unknown, f"add {sorted(unknown)} to ORDER"
    pool = ThreadPoolExecutor(max_workers=max(PARALLEL, 1), thread_name_prefix="bench")
    futures = {name: pool.submit(run_short, name) for name in ORDER if name in selected}
    yield futures
    pool.shutdown(wait=True)


def positive(*values) -> bool:
    return all(isinstance(v, int | float) and v > 0 for v in values)


def test_foundation(runs):
    figures = runs["foundation"].result()
    assert positive(figures["baseline_bare_apt_install_s"], figures["first_deploy_s"],
                    figures["ratio_first_deploy_to_baseline"],
                    figures["ratio_second_deploy_to_baseline"])
    assert figures["first_deploy_changed_ops"] > 0
    assert figures["second_deploy_changed_ops"] == 0


def test_pgbouncer(runs):
    figures = runs["pgbouncer"].result()
    capacity = figures["capacity"]
    assert capacity["client_failures"] == 0, capacity["first_failure"]
    assert capacity["clients_connected"] == capacity["clients_requested"]
    assert 0 < capacity["server_connections_peak"] <= capacity["clients_connected"]
    for mode in ("new_connection_per_transaction", "persistent_connections"):
        assert positive(*figures[mode].values()), figures[mode]


def test_backup(runs):
    figures = runs["backup"].result()
    baseline, pgbr = figures["baseline"], figures["pgbackrest"]
    for name in ("pg_basebackup_gzip", "pg_basebackup_lz4"):
        assert positive(baseline[name]["seconds"], baseline[name]["bytes"]), baseline[name]
    assert positive(baseline["untar_gzip"]["seconds"], baseline["untar_gzip"]["bytes_written"])
    for name in ("full_repo1", "pginfra_backup_full_repo1", "full_repo2_s3"):
        assert positive(pgbr[name]["seconds"], pgbr[name]["bytes"]), pgbr[name]
    assert pgbr["verify_repo1"]["ok"] and pgbr["verify_repo1"]["backups_verified"] > 0, \
        pgbr["verify_repo1"]
    assert positive(pgbr["verify_repo1"]["seconds"], pgbr["restore_empty_dir_repo1"]["seconds"],
                    pgbr["restore_empty_dir_repo1"]["bytes_written"])
    recovery = pgbr["pitr_repo1"]
    assert recovery["rows_as_of_target_only"] and recovery["batches"] == "1", recovery
    assert recovery["timeline"] > 1 and positive(recovery["seconds"]), recovery
    for name in ("gzip", "lz4"):
        assert positive(*figures[f"ratios_to_pg_basebackup_{name}"].values())
    assert positive(*figures["ratios_to_untar_gzip"].values())


def test_harden(runs):
    figures = runs["harden"].result()
    safe, naive = figures["safe"], figures["naive"]
    assert safe["apply_ok"], safe["apply_errors"]
    assert safe["invalid_indexes_after"] == 0
    assert positive(safe["tps_before"], naive["tps_before"])
    assert safe["tps_ratio_during_to_before"] is not None


def test_health(runs):
    figures = runs["health"].result()
    assert positive(figures["baseline_tps"], figures["health_back_to_back"]["runs"],
                    figures["health_back_to_back"]["tps_ratio_to_baseline"],
                    figures["health_capacity"]["seconds_ratio_after_to_before"])
    reindex = figures["reindex_concurrently_under_load"]
    assert reindex["exit_code"] == 0
    assert reindex["size_ratio_after_to_before"] < 1, reindex


def test_replication(runs):
    figures = runs["replication"].result()
    assert positive(figures["cold_1_host_s"], figures["noop_1_host_s"],
                    figures["cold_3_hosts_s"], figures["noop_3_hosts_s"],
                    figures["plain_pg_basebackup_s"], figures["deploy_rebuilding_standby_s"],
                    figures["tps_async"], figures["tps_sync_any_1"])
    assert figures["noop_changed_ops"] == 0
    assert figures["rebuild_changed_ops"] > 0  # the dropped standby was made again
    for run in ("lag_async", "lag_sync_any_1"):
        assert sorted(figures[run]) == ["pgq3", "pgq4"], figures[run]
        for lag in figures[run].values():
            assert lag["samples"] > 0 and lag["max_bytes"] >= lag["p50_bytes"] >= 0, lag


def test_ha(runs):
    figures = runs["ha"].result()
    tps = figures["tps"]
    assert positive(tps["direct_to_leader"], tps["client_path_haproxy_pgbouncer"])
    run = figures["tuned_sync"]
    assert len(run["failovers"]) == 1 and positive(run["p50_s"], run["max_s"])
    one = run["failovers"][0]
    assert one["new_leader"] != one["killed"] and one["committed"] > 0
    assert run["lost_total"] == 0  # synchronous mode: nothing the client saw committed is lost
