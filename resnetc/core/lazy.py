"""Modules imported on first use, so that commands that never touch them do not pay for them at start-up.

`resnetc check` reads a spec and infers its shapes: no array is made, yet every op module names numpy for the
weights it would initialise. Importing numpy is a quarter of that command's time (measured: ~80 ms of ~300).
"""

from __future__ import annotations

import importlib.util
import sys
from types import ModuleType


def lazy_import(name: str) -> ModuleType:
    """`name`, imported now if it is already (or is not found, to fail as `import` would), else a module whose
    loading the standard library's LazyLoader defers to its first attribute access."""
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.find_spec(name)
    if spec is None or spec.loader is None:
        return importlib.import_module(name)
    loader = importlib.util.LazyLoader(spec.loader)
    spec.loader = loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    loader.exec_module(module)
    return module
