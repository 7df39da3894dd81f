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

from pginfra import ROOT

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
