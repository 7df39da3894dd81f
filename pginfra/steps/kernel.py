"""Step: the kernel settings of a database host (sysctl and the postgres user's limits)."""

from __future__ import annotations

from io import StringIO

from pyinfra import host, logger
from pyinfra.api import deploy
from pyinfra.facts.hardware import Cpus, Memory
from pyinfra.operations import files, server

from pginfra import kernel
from pginfra.facts import Container, MemInfo
from pginfra.server_config import cluster_floor, server_parameters
from pginfra.settings import Settings, SettingsError, database_hosts_only
from pginfra.tuning import MB


@database_hosts_only()
@deploy("Kernel settings of a database host")
def tune_kernel(settings: Settings):
    """
    ``/etc/sysctl.d/60-pginfra-postgres.conf`` (swappiness, overcommit, huge pages for the
    server's shared memory when its ``huge_pages`` is try or on), applied at once with
    ``sysctl -p``, and the postgres user's open-file limit in ``/etc/security/limits.d``. A
    container shares its machine's kernel: there the step only says it skips them. A value
    that would leave the host unable to start its programs (an overcommit limit below what
    is already committed, huge pages over half the RAM) is refused before anything changes.

    .. code:: python

        tune_kernel(load_settings())
    """
    files.put(name="The postgres user's open-file limit (login sessions)",
              src=StringIO(kernel.limits_text(settings.kernel_nofile)), dest=kernel.LIMITS_FILE,
              user="root", group="root", mode="644")
    container = host.get_fact(Container)
    if container:
        logger.info(f"{host.print_prefix}kernel settings are the machine's: this host is a "
                    f"container ({container}), {kernel.SYSCTL_FILE} is not written")
        return
    params = server_parameters(settings, host.get_fact(Memory) * MB, host.get_fact(Cpus),
                               cluster_floor(settings))
    values = kernel.sysctl_values(settings.kernel_swappiness, settings.kernel_overcommit_memory,
                                  settings.kernel_overcommit_ratio, kernel.huge_pages_for(params))
    problem = kernel.overcommit_problem(host.get_fact(MemInfo), values)
    if problem:
        raise SettingsError(f"kernel settings refused, nothing was changed:\n  "
                            f"{settings.host_name}: kernel_overcommit_ratio: {problem}")
    conf = files.put(name=f"{kernel.SYSCTL_FILE}: " + ", ".join(f"{k} {v}"
                                                                 for k, v in values.items()),
                     src=StringIO(kernel.sysctl_text(values)), dest=kernel.SYSCTL_FILE,
                     user="root", group="root", mode="644")
    server.shell(name="Apply the kernel settings now (sysctl -p)",
                 commands=[f"sysctl -q -p {kernel.SYSCTL_FILE}"], _if=conf.did_change)
