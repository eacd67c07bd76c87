"""Importing a user's own Python file (a python-flavor model class, a torch nn.Module class).

Each file is imported under a unique module name, so two models whose files share a name do not
replace each other, with its folder on sys.path while it runs, so it can import its neighbours.
"""

from __future__ import annotations

import importlib.util
import sys
import threading
import uuid
from pathlib import Path
from types import ModuleType

from berth.errors import ModelLoadError

# sys.path is process-wide: one import at a time may extend it.
_IMPORT_LOCK = threading.Lock()


def import_file(source: Path) -> ModuleType:
    """The module `source` defines, imported; a failing import is one ModelLoadError."""
    name = f"berth_user_model_{uuid.uuid4().hex}"
    spec = importlib.util.spec_from_file_location(name, source)
    if spec is None or spec.loader is None:
        raise ModelLoadError(f"{source} cannot be imported as Python; give a .py file")
    module = importlib.util.module_from_spec(spec)
    # Registered so dataclasses, pickle and typing can find the module by name.
    sys.modules[name] = module
    with _IMPORT_LOCK:
        sys.path.insert(0, str(source.parent))
        try:
            spec.loader.exec_module(module)
        except Exception as exc:
            sys.modules.pop(name, None)
            raise ModelLoadError(
                f"importing {source} failed ({type(exc).__name__}: {exc}); "
                "fix the error or install the packages the file imports"
            ) from exc
        finally:
            sys.path.remove(str(source.parent))
    return module


def forget(module: ModuleType) -> None:
    """Drop a module imported by `import_file` whose model could not be loaded."""
    sys.modules.pop(module.__name__, None)
