"""Name -> class registries, filled by decorators, and the plugin loader.

    @FUSIONS.register("cmpa")
    class CMPA(StateFusion): ...

    FUSIONS.get("cmpa")  # -> CMPA; an unknown name lists the registered ones

A registry imports its built-in modules (named as strings) on first use, so this module
imports nothing of the package and no import cycle runs through it. `load_plugins` imports
fusion modules from outside the package: `./plugins/*.py`, the `plugins/` folder of the
checkout this package sits in, files given with `--plugin`, and the entry points of the group
`dcp.fusions` (how a separate pip package adds one). See docs/design.md, "Extending".
"""
from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import logging
import sys
from pathlib import Path
from typing import Callable, Dict, Iterable, List, Optional, Sequence, TypeVar

log = logging.getLogger(__name__)
T = TypeVar("T")

CHECKOUT_PLUGINS = Path(__file__).resolve().parent.parent / "plugins"   # in a source checkout
ENTRY_POINT_GROUP = "dcp.fusions"


class Registry:
    """A named table of classes (or factories); `builtins` are imported on first lookup."""

    def __init__(self, kind: str, builtins: Sequence[str] = ()):
        self.kind = kind
        self.builtins = list(builtins)
        self._items: Dict[str, object] = {}

    def register(self, name: str) -> Callable[[T], T]:
        def add(obj: T) -> T:
            if name in self._items and self._items[name] is not obj:
                raise KeyError(f"{self.kind} {name!r} is already registered "
                               f"(by {self._items[name]!r})")
            self._items[name] = obj
            return obj
        return add

    def _load_builtins(self) -> None:
        while self.builtins:
            importlib.import_module(self.builtins.pop(0))

    def get(self, name: str):
        self._load_builtins()
        if name not in self._items:
            raise KeyError(f"unknown {self.kind} {name!r}; registered: {', '.join(self.names())}")
        return self._items[name]

    def names(self) -> List[str]:
        self._load_builtins()
        return sorted(self._items)

    def __contains__(self, name: str) -> bool:
        self._load_builtins()
        return name in self._items


METHODS = Registry("method", ["dcp.methods"])
FUSIONS = Registry("fusion module", ["dcp.fusion"])
DATASETS = Registry("dataset", ["dcp.data.datasets", "dcp.miniworld.data"])
PROTOCOLS = Registry("protocol", ["dcp.protocols"])

_loaded: set = set()


def plugin_dirs() -> List[Path]:
    """`./plugins` and the checkout's `plugins/` (when the package runs from a checkout)."""
    dirs = []
    for d in (Path.cwd() / "plugins", CHECKOUT_PLUGINS):
        if d.is_dir() and d.resolve() not in dirs:
            dirs.append(d.resolve())
    return dirs


def load_plugins(extra: Iterable[str] = (), dirs: Optional[Sequence[Path]] = None,
                 entry_points: bool = True) -> List[str]:
    """Import plugin files and entry points; return what was imported (each once per process).

    `dirs` (default `plugin_dirs()`): every `*.py` not starting with `_`; `extra`: more files
    (a missing one is an error naming it); `entry_points`: the group `dcp.fusions`.
    """
    files = [p for d in (plugin_dirs() if dirs is None else dirs) for p in sorted(Path(d).glob("*.py"))
             if not p.name.startswith("_")]
    for p in extra:
        if not Path(p).is_file():
            raise FileNotFoundError(f"plugin file not found: {p}")
        files.append(Path(p))
    done = [str(path) for path in map(Path.resolve, files) if _import_file(path)]
    if entry_points:
        for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
            if f"entry point {ep.value}" not in _loaded:
                ep.load()
                _loaded.add(f"entry point {ep.value}")
                done.append(f"entry point {ep.name} = {ep.value}")
    for item in done:
        log.debug("loaded plugin %s", item)
    return done


def _import_file(path: Path) -> bool:
    if path in _loaded:
        return False
    name = f"dcp_plugin_{path.stem}_{abs(hash(str(path))) % 10**8}"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    _loaded.add(path)
    return True
