"""The host programs of ``files/``, imported on the control machine as modules, so the deploy
plans and validates with the programs' own code (and unit tests reach their functions).

    >>> host_program("pginfra-migrate").__name__
    'pginfra_migrate'
"""

from __future__ import annotations

import functools
import importlib.machinery
import importlib.util
import sys
from types import ModuleType

from pginfra import ROOT, layout

FILES = ROOT / "files"


@functools.cache
def host_program(name: str) -> ModuleType:
    """``files/<name>`` (no .py suffix) imported as module ``name`` with - turned into _; the
    library the programs share is importable beside it, as on the host."""
    if str(FILES) not in sys.path:
        sys.path.append(str(FILES))
    loader = importlib.machinery.SourceFileLoader(name.replace("-", "_"), str(FILES / name))
    spec = importlib.util.spec_from_loader(loader.name, loader)
    module = importlib.util.module_from_spec(spec)
    sys.modules[loader.name] = module  # dataclasses look their module up there
    loader.exec_module(module)
    return module


def install_programs(programs, shared: bool = True) -> None:
    """Put host programs (names under files/) into ``layout.BIN``. ``shared``: also what every
    one of them needs (the directory, their library, the log directory and its rotation); the
    first step that installs programs in a run does it."""
    from pyinfra.operations import files

    from pginfra.templating import render_io

    if shared:
        files.directory(name="Directory of pginfra's host programs", path=layout.BIN,
                        user="root", group="root", mode="0755")
        files.put(name="Library of the host programs", src=str(FILES / layout.LIBRARY),
                  dest=layout.program(layout.LIBRARY), user="root", group="root", mode="0644")
        files.directory(name=f"Directory {layout.LOG_DIR}", path=layout.LOG_DIR,
                        user="postgres", group="adm", mode="0750")
        files.put(name=f"Log rotation of {layout.LOG_DIR}",
                  src=render_io("logrotate.d-pginfra.j2"), dest="/etc/logrotate.d/pginfra",
                  user="root", group="root", mode="0644")
    for program in programs:
        files.put(name=f"Program {program}", src=str(FILES / program),
                  dest=layout.program(program), user="root", group="root", mode="0755")
