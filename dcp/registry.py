"""Name -> class registries filled by decorators (`@FUSIONS.register("cmpa")` on a class;
`FUSIONS.get("cmpa")`), and the plugin loader (docs/design.md, "Extending"). A registry imports
its built-in modules (named as strings) on first use, so this module imports nothing of the
package and no import cycle runs through it."""
from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import logging
import sys
from pathlib import Path
from typing import Iterable, List, Optional, Sequence

log = logging.getLogger(__name__)

CHECKOUT_PLUGINS = Path(__file__).resolve().parent.parent / "plugins"   # in a source checkout


class Registry:
    """A named table of classes (or factories); `builtins` are imported on first lookup."""

    def __init__(self, kind: str, builtins: Sequence[str] = ()):
        self.kind = kind
        self.builtins = list(builtins)
        self._items = {}

    def register(self, name: str):
        def add(obj):
            if name in self._items and self._items[name] is not obj:
                raise KeyError(f"{self.kind} {name!r} is already registered "
                               f"(by {self._items[name]!r})")
            self._items[name] = obj
            return obj
        return add

    def get(self, name: str):
        if name not in self:
            raise KeyError(f"unknown {self.kind} {name!r}; registered: {', '.join(self.names())}")
        return self._items[name]

    def names(self) -> List[str]:
        self._load_builtins()
        return sorted(self._items)

    def __contains__(self, name: str) -> bool:
        self._load_builtins()
        return name in self._items

    def _load_builtins(self) -> None:
        while self.builtins:
            importlib.import_module(self.builtins.pop(0))


METHODS = Registry("method", ["dcp.methods"])
FUSIONS = Registry("fusion module", ["dcp.fusion"])
DATASETS = Registry("dataset", ["dcp.data.datasets", "dcp.miniworld.data"])
PROTOCOLS = Registry("protocol", ["dcp.protocols"])

_loaded: set = set()        # plugin files and entry points imported so far


class PluginError(RuntimeError):
    """A plugin file or entry point that fails to import; the message names it."""


def _first_line(e: Exception) -> str:
    return (str(e).strip().splitlines() or [""])[0][:300]


def plugin_dirs() -> List[Path]:
    """`./plugins` and the checkout's `plugins/` (when the package runs from a checkout)."""
    return list(dict.fromkeys(d.resolve() for d in (Path.cwd() / "plugins", CHECKOUT_PLUGINS)
                              if d.is_dir()))


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
    done = []
    for path in map(Path.resolve, files):
        if path not in _loaded:
            name = f"dcp_plugin_{path.stem}_{abs(hash(str(path))) % 10**8}"
            spec = importlib.util.spec_from_file_location(name, path)
            sys.modules[name] = module = importlib.util.module_from_spec(spec)
            try:
                spec.loader.exec_module(module)
            except Exception as e:
                del sys.modules[name]
                raise PluginError(f"plugin {path} fails to import: "
                                  f"{type(e).__name__}: {_first_line(e)}") from e
            _loaded.add(path)
            done.append(str(path))
    for ep in importlib.metadata.entry_points(group="dcp.fusions") if entry_points else ():
        if f"entry point {ep.value}" not in _loaded:
            try:
                ep.load()
            except Exception as e:
                raise PluginError(f"plugin entry point {ep.name} = {ep.value} (group dcp.fusions) "
                                  f"fails to import: {type(e).__name__}: {_first_line(e)}") from e
            _loaded.add(f"entry point {ep.value}")
            done.append(f"entry point {ep.name} = {ep.value}")
    for item in done:
        log.debug("loaded plugin %s", item)
    return done
