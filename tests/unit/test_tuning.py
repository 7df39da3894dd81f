import pytest

from pginfra.tuning import GB, MB, contradictions, format_size, parse_size, tune


def test_golden_16gb_4cpu_web_ssd():
    params = tune(16 * GB, 4, "web", "ssd")
    assert params == {
        "max_connections": "200",
        "shared_buffers": "4GB",
        "effective_cache_size": "12GB",
        "maintenance_work_mem": "1GB",
        "checkpoint_completion_target": "0.9",
        "wal_buffers": "16MB",
        "default_statistics_target": "100",
        "random_page_cost": "1.1",
        "effective_io_concurrency": "200",
        "min_wal_size": "1GB",
        "max_wal_size": "4GB",
        "huge_pages": "try",
        "max_worker_processes": "4",
        "max_parallel_workers": "4",
        "max_parallel_workers_per_gather": "2",
        "max_parallel_maintenance_workers": "2",
        "work_mem": "20560kB",  # (16GB - 4GB) / ((200 + 4) * 3)
        "jit": "off",
    }


def test_golden_small_host_2gb_2cpu():
    params = tune(2 * GB, 2, "web", "ssd")
    assert params["shared_buffers"] == "512MB"
    assert params["effective_cache_size"] == "1536MB"
    assert params["maintenance_work_mem"] == "128MB"
    assert params["wal_buffers"] == "16MB"  # 3% is 15.4MB: pgtune rounds 14..16MB up to 16MB
    assert params["work_mem"] == "4MB"  # floor
    assert params["huge_pages"] == "off"
    assert "max_worker_processes" not in params  # fewer than 4 CPUs: PostgreSQL's defaults


def test_golden_tiny_host_wal_buffers_three_percent():
    params = tune(1 * GB, 1, "web", "ssd")
    assert params["shared_buffers"] == "256MB"
    assert params["wal_buffers"] == "7864kB"


def test_golden_large_oltp_hdd():
    params = tune(64 * GB, 16, "oltp", "hdd")
    assert params["shared_buffers"] == "16GB"
    assert params["effective_cache_size"] == "48GB"
    assert params["maintenance_work_mem"] == "2GB"  # capped
    assert params["work_mem"] == "53092kB"
    assert params["max_parallel_workers_per_gather"] == "4"  # capped
    assert (params["min_wal_size"], params["max_wal_size"]) == ("2GB", "8GB")
    assert (params["random_page_cost"], params["effective_io_concurrency"]) == ("4", "2")
    assert params["max_connections"] == "300"


def test_golden_mixed_halves_work_mem_and_keeps_jit():
    params = tune(8 * GB, 4, "mixed", "ssd")
    assert params["work_mem"] == "10082kB"
    assert params["max_connections"] == "100"
    assert "jit" not in params


def test_max_connections_override_feeds_work_mem():
    assert tune(16 * GB, 4, "web", max_connections=100)["work_mem"] == "40329kB"


@pytest.mark.parametrize("bad", [{"profile": "dw"}, {"storage": "nvme"}])
def test_unknown_profile_or_storage(bad):
    with pytest.raises(ValueError):
        tune(4 * GB, 2, **bad)


def test_sizes():
    assert format_size(3 * GB) == "3GB"
    assert format_size(1536 * MB) == "1536MB"
    assert parse_size("1536MB") == 1536 * MB
    assert parse_size("64") == 64 * 1024
    with pytest.raises(ValueError):
        parse_size("lots")


def test_contradictions():
    ok = tune(4 * GB, 2) | {"wal_level": "replica", "archive_mode": "on",
                            "max_wal_senders": "10"}
    assert contradictions(ok, 4 * GB, replicas=2) == []
    minimal = ok | {"wal_level": "minimal"}
    assert any("wal_level minimal cannot archive" in p for p in contradictions(minimal, 4 * GB, 0))
    big = ok | {"shared_buffers": "8GB"}
    assert any("shared_buffers 8GB" in p for p in contradictions(big, 4 * GB, 0))
    blocks = ok | {"shared_buffers": "1048576"}  # 8GB in 8kB buffers
    assert any("shared_buffers" in p for p in contradictions(blocks, 4 * GB, 0))
    few = ok | {"max_wal_senders": "2"}
    assert any("below the 3 replicas" in p for p in contradictions(few, 4 * GB, 3))
