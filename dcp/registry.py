"""Name -> class registries, filled by decorators, and the plugin loader.

    @FUSIONS.register("cmpa")
    class CMPA(Fusion): ...

    FUSIONS.get("cmpa")  # -> CMPA; an unknown name lists the registered ones

Every `plugins/*.py` of the project (and any file given with `--plugin`) is imported by
`load_plugins`, so a module that registers itself there is usable from a config with no
edit to the package.
"""
from __future__ import annotations

import importlib.util
import logging
import sys
from pathlib import Path
from typing import Callable, Dict, Iterable, Optional, TypeVar

log = logging.getLogger(__name__)
T = TypeVar("T")

PLUGIN_DIR = Path(__file__).resolve().parent.parent / "plugins"


class Registry:
    """A named table of classes (or factories)."""

    def __init__(self, kind: str):
        self.kind = kind
        self._items: Dict[str, object] = {}

    def register(self, name: str) -> Callable[[T], T]:
        def add(obj: T) -> T:
            if name in self._items and self._items[name] is not obj:
                raise KeyError(f"{self.kind} {name!r} is already registered "
                               f"(by {self._items[name]!r})")
            self._items[name] = obj
            return obj
        return add

    def get(self, name: str):
        if name not in self._items:
            raise KeyError(f"unknown {self.kind} {name!r}; registered: {', '.join(self.names())}")
        return self._items[name]

    def names(self) -> list:
        return sorted(self._items)

    def __contains__(self, name: str) -> bool:
        return name in self._items


METHODS = Registry("method")
FUSIONS = Registry("fusion module")
DATASETS = Registry("dataset")

_loaded: set = set()


def load_plugins(extra: Iterable[str] = (), plugin_dir: Optional[Path] = PLUGIN_DIR) -> list:
    """Import every `plugin_dir/*.py` and each extra file path; return the files imported.

    A file is imported once per process. A missing extra file is an error naming it.
    """
    files = sorted(plugin_dir.glob("*.py")) if plugin_dir and plugin_dir.is_dir() else []
    for p in extra:
        path = Path(p)
        if not path.is_file():
            raise FileNotFoundError(f"plugin file not found: {path}")
        files.append(path)
    done = []
    for path in files:
        path = path.resolve()
        if path.name.startswith("_") or path in _loaded:
            continue
        name = f"dcp_plugin_{path.stem}_{abs(hash(str(path))) % 10**8}"
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
        _loaded.add(path)
        done.append(path)
        log.debug("loaded plugin %s", path)
    return done
