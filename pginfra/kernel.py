"""The kernel settings of a database host, from its settings and the server's parameters.

    >>> plan = sysctl_values(settings, params)        # {"vm.swappiness": "1", ...}
    >>> sysctl_text(plan)                              # /etc/sysctl.d/60-pginfra-postgres.conf

- ``vm.overcommit_memory = 2`` (with ``vm.overcommit_ratio``): the kernel refuses an allocation
  it cannot back instead of letting the OOM killer end the postmaster, which takes every session
  and a crash recovery with it (PostgreSQL's documentation, "Linux Memory Overcommit");
- ``vm.swappiness``: shared buffers and backends stay in RAM while the page cache gives way;
- ``vm.nr_hugepages``: when the server's ``huge_pages`` is ``try`` or ``on`` (pginfra's tuning
  sets ``try`` from 2 GB of shared_buffers) enough 2 MB pages for its shared memory, else 0 (the
  step runs before the server's configuration: pages are there before a restart wants them);
- the postgres user's open-file limit.

A container shares its machine's kernel: these are the machine's to set, and pginfra skips them
there with a message.
"""

from __future__ import annotations

import math

from pginfra.tuning import KB, MB, parse_size

SYSCTL_FILE = "/etc/sysctl.d/60-pginfra-postgres.conf"
LIMITS_FILE = "/etc/security/limits.d/60-pginfra-postgres.conf"
HUGE_PAGE = 2 * MB
# PostgreSQL's shared memory beyond shared_buffers: buffer descriptors, lock tables, WAL buffers,
# slots... about 5% of shared_buffers plus a fixed part (PostgreSQL 15 reports the exact figure,
# shared_memory_size_in_huge_pages, only for a running server or a stopped one with -C).
SHARED_OVERHEAD_FRACTION = 0.05
SHARED_OVERHEAD_FIXED = 64 * MB
# Committed memory must stay this far below the limit overcommit 2 sets, or forks fail.
COMMIT_HEADROOM = 0.8


def huge_pages_for(params: dict[str, str]) -> int:
    """2 MB pages for the server's shared memory, or 0 when ``huge_pages`` is off.

    >>> huge_pages_for({"huge_pages": "try", "shared_buffers": "4GB"})
    2183
    """
    if params.get("huge_pages", "try") not in ("try", "on"):
        return 0
    value = str(params.get("shared_buffers", "128MB")).strip()
    shared = int(value) * 8 * KB if value.isdigit() else parse_size(value)  # bare: 8 kB pages
    size = shared * (1 + SHARED_OVERHEAD_FRACTION) + SHARED_OVERHEAD_FIXED
    return math.ceil(size / HUGE_PAGE)


def sysctl_values(swappiness: int, overcommit_memory: int, overcommit_ratio: int,
                  huge_pages: int) -> dict[str, str]:
    """The sysctl keys pginfra sets, in file order."""
    values = {"vm.swappiness": str(swappiness), "vm.overcommit_memory": str(overcommit_memory)}
    if overcommit_memory == 2:
        values["vm.overcommit_ratio"] = str(overcommit_ratio)
    # Always, 0 included: pages reserved for a server that no longer wants them go back
    values["vm.nr_hugepages"] = str(huge_pages)
    return values


def sysctl_text(values: dict[str, str]) -> str:
    lines = ["# Managed by pginfra (kernel settings of a database host); edits are overwritten."]
    lines += [f"{key} = {value}" for key, value in values.items()]
    return "\n".join(lines) + "\n"


def limits_text(nofile: int) -> str:
    return ("# Managed by pginfra: the postgres user's limits in login sessions (sudo -u, su);\n"
            "# the service's own come from its systemd unit (LimitNOFILE).\n"
            f"postgres soft nofile {nofile}\npostgres hard nofile {nofile}\n")


def commit_limit(meminfo: dict[str, int], ratio: int, huge_pages: int) -> int:
    """Bytes the kernel lets be committed under ``vm.overcommit_memory = 2``: swap plus
    ``ratio`` percent of the RAM left after the huge pages."""
    ram = meminfo["MemTotal"] - huge_pages * HUGE_PAGE
    return meminfo.get("SwapTotal", 0) + ram * ratio // 100


def overcommit_problem(meminfo: dict[str, int], values: dict[str, str]) -> str | None:
    """Why these values would leave the host unable to start its programs, or None.

    >>> overcommit_problem({"MemTotal": 2 * GB, "Committed_AS": 1900 * MB},
    ...                    {"vm.overcommit_memory": "2", "vm.overcommit_ratio": "50"})
    'vm.overcommit_memory 2 with ratio 50% allows 1024 MB to be committed, and 1900 MB ...'
    """
    pages = int(values.get("vm.nr_hugepages", "0"))
    if pages * HUGE_PAGE > meminfo["MemTotal"] // 2:
        return (f"{pages} huge pages ({pages * HUGE_PAGE // MB} MB) would take more than half of "
                f"the host's {meminfo['MemTotal'] // MB} MB of RAM")
    if values.get("vm.overcommit_memory") != "2":
        return None
    ratio = int(values["vm.overcommit_ratio"])
    limit = commit_limit(meminfo, ratio, pages)
    committed = meminfo.get("Committed_AS", 0)
    if committed > limit * COMMIT_HEADROOM:
        return (f"vm.overcommit_memory 2 with ratio {ratio}% allows {limit // MB} MB to be "
                f"committed, and {committed // MB} MB already are: programs could no longer "
                f"start (raise kernel_overcommit_ratio, or set kernel_overcommit_memory 0)")
    return None

