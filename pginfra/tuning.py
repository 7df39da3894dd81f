"""Server parameters computed from a host's RAM and CPUs, with pgtune's formulas.

    >>> tune(16 * GB, 4, "web", "ssd")["shared_buffers"]
    '4GB'

Values are PostgreSQL's own spelling (``'16MB'``, ``'0.9'``), ready for postgresql.conf.
"""

from __future__ import annotations

import math
import re

KB = 1024
MB = 1024 * KB
GB = 1024 * MB

PROFILES = ("web", "oltp", "mixed")
STORAGE = ("ssd", "hdd", "san")
DEFAULT_MAX_CONNECTIONS = {"web": 200, "oltp": 300, "mixed": 100}
WAL_SIZES = {"web": ("1GB", "4GB"), "oltp": ("2GB", "8GB"), "mixed": ("1GB", "4GB")}


def format_size(n_bytes: int) -> str:
    """PostgreSQL's memory spelling, in the largest unit that divides exactly.

    >>> format_size(4 * GB), format_size(16 * MB), format_size(20560 * KB)
    ('4GB', '16MB', '20560kB')
    """
    kb = n_bytes // KB
    if kb % (1024 * 1024) == 0:
        return f"{kb // (1024 * 1024)}GB"
    if kb % 1024 == 0:
        return f"{kb // 1024}MB"
    return f"{kb}kB"


_SIZE = re.compile(r"\s*(\d+)\s*(B|kB|MB|GB|TB)?\s*")
_UNITS = {None: KB, "B": 1, "kB": KB, "MB": MB, "GB": GB, "TB": 1024 * GB}


def parse_size(value: str | int, default_unit: str = "kB") -> int:
    """Bytes in a PostgreSQL memory value; a bare number is in ``default_unit``.

    >>> parse_size("4GB"), parse_size("128kB"), parse_size(8, "MB")
    (4294967296, 131072, 8388608)
    """
    if isinstance(value, int):
        return value * _UNITS[default_unit]
    match = _SIZE.fullmatch(str(value))
    if not match:
        raise ValueError(f"{value!r} is not a memory size such as 512MB or 4GB")
    number, unit = match.groups()
    return int(number) * _UNITS[unit or default_unit]


def tune(memory: int, cpus: int, profile: str = "web", storage: str = "ssd",
         max_connections: int | None = None) -> dict[str, str]:
    """Parameters for a host with ``memory`` bytes of RAM and ``cpus`` CPUs."""
    if profile not in PROFILES:
        raise ValueError(f"profile must be one of {', '.join(PROFILES)}, got {profile!r}")
    if storage not in STORAGE:
        raise ValueError(f"storage must be one of {', '.join(STORAGE)}, got {storage!r}")
    connections = max_connections or DEFAULT_MAX_CONNECTIONS[profile]
    memory_kb = memory // KB

    shared_buffers = memory_kb // 4
    effective_cache_size = memory_kb * 3 // 4
    maintenance_work_mem = min(memory_kb // 16, 2 * 1024 * 1024)
    wal_buffers = shared_buffers * 3 // 100
    wal_buffers = 16 * 1024 if wal_buffers > 14 * 1024 else max(wal_buffers, 32)

    params: dict[str, str] = {
        "max_connections": str(connections),
        "shared_buffers": format_size(shared_buffers * KB),
        "effective_cache_size": format_size(effective_cache_size * KB),
        "maintenance_work_mem": format_size(maintenance_work_mem * KB),
        "checkpoint_completion_target": "0.9",
        "wal_buffers": format_size(wal_buffers * KB),
        "default_statistics_target": "100",
        "random_page_cost": "4" if storage == "hdd" else "1.1",
        "effective_io_concurrency": {"ssd": "200", "hdd": "2", "san": "300"}[storage],
        "min_wal_size": WAL_SIZES[profile][0],
        "max_wal_size": WAL_SIZES[profile][1],
        "huge_pages": "try" if shared_buffers >= 2 * 1024 * 1024 else "off",
    }

    worker_processes = 8  # PostgreSQL's default
    if cpus >= 4:
        worker_processes = cpus
        per_gather = min(math.ceil(cpus / 2), 4)
        params.update(
            max_worker_processes=str(cpus),
            max_parallel_workers=str(cpus),
            max_parallel_workers_per_gather=str(per_gather),
            max_parallel_maintenance_workers=str(per_gather),
        )

    work_mem = (memory_kb - shared_buffers) // ((connections + worker_processes) * 3)
    if profile == "mixed":
        work_mem //= 2
    params["work_mem"] = format_size(max(work_mem, 4 * 1024) * KB)
    if profile in ("web", "oltp"):
        params["jit"] = "off"
    return params


def contradictions(params: dict[str, str], memory: int, replicas: int) -> list[str]:
    """Problems with a final parameter set, each a sentence naming the parameters involved."""
    found: list[str] = []

    def number(name: str, default: str) -> int | None:
        value = str(params.get(name, default)).strip()
        if not value.isdigit():
            found.append(f"{name} {value!r} is not a whole number")
            return None
        return int(value)

    senders = number("max_wal_senders", "10")
    connections = number("max_connections", "100")
    reserved = number("superuser_reserved_connections", "3")
    if params.get("wal_level") == "minimal" and params.get("archive_mode", "off") != "off":
        found.append("wal_level minimal cannot archive WAL: archive_mode must be off, or "
                     "wal_level replica or logical")
    if params.get("wal_level") == "minimal" and senders:
        found.append("wal_level minimal needs max_wal_senders 0")
    if "shared_buffers" in params:  # a bare number counts 8kB buffers
        value = str(params["shared_buffers"]).strip()
        try:
            shared = parse_size(value) * 8 if value.isdigit() else parse_size(value)
        except ValueError as exc:
            found.append(f"shared_buffers: {exc}")
        else:
            if shared >= memory:
                found.append(f"shared_buffers {value} is not smaller than the host's RAM "
                             f"({format_size(memory)})")
    if senders is not None and senders < replicas:
        found.append(f"max_wal_senders {senders} is below the {replicas} replicas planned "
                     "(postgres_replicas)")
    if connections is not None and reserved is not None and connections <= reserved:
        found.append("max_connections must exceed superuser_reserved_connections")
    return found
