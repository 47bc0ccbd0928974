"""Typed configuration: dataclasses filled from YAML plus dotted command-line overrides.

    cfg = load_config("configs/dcp_vitb16.yaml", ["optim.lr=0.002", "method.n_ctx=4"])

The `method` section's class is the options dataclass of the method `method.name` names.
Precedence, derived values and the YAML rules: docs/design.md, "Configuration".
"""
from __future__ import annotations

import dataclasses
import logging
import math
import re
import typing
from dataclasses import dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Union

import yaml

from .registry import METHODS, PROTOCOLS

log = logging.getLogger(__name__)

MAX_YAML_BYTES = 1 << 20


def short(value: Any, limit: int = 80) -> str:
    """`repr(value)`, cut to `limit` characters (values from files go into error messages)."""
    text = repr(value)
    return text if len(text) <= limit else text[:limit - 5] + " ...>"


def cut(text: str, limit: int = 360) -> str:
    """`text` for a one-line message: each run of over 200 non-space characters (a huge value
    or path) cut in its middle, then the whole text to about `limit` characters."""
    text = re.sub(r"\S{201,}", lambda m: m.group()[:120] + " ... " + m.group()[-60:], str(text))
    return text if len(text) <= limit else text[:limit * 2 // 3] + " ... " + text[-(limit // 3 - 5):]


class ConfigError(ValueError):
    """A bad configuration; the message names the dotted key (cut short: values can be huge)."""

    def __init__(self, message: object = ""):
        super().__init__(cut(str(message)))


# --------------------------------------------------------------------------- sections
@dataclass
class MethodOptions:
    """Options shared by every method; each method subclasses this with its own fields."""
    name: str = "dcp"


@dataclass
class DataConfig:
    dataset: str = ""             # registered dataset name; "" = recognise from --data
    root: str = ""                # data root (folder that holds the dataset folders)
    shots: int = 16               # K images per class for training; 0 or -1 = all
    subsample: str = "all"        # all | base | new  (base-to-novel protocol)
    split_file: str = ""          # explicit split file, overrides the standard lookup
    fewshot_draw: str = "auto"    # dassl | per_class | auto (dassl for the benchmarks)
    image_size: int = 0           # 0 = the checkpoint's input resolution
    exif_transpose: bool = False  # apply EXIF orientation (Dassl and CLIP do not)
    num_workers: int = 2
    on_bad_image: str = "fail"    # fail | skip
    # training RandomResizedCrop area range (Dassl's INPUT.RRCROP_SCALE)
    crop_scale: List[float] = field(default_factory=lambda: [0.08, 1.0])

    def validate(self):
        if len(self.crop_scale) != 2 or not 0 < self.crop_scale[0] <= self.crop_scale[1] <= 1:
            raise ValueError(f"crop_scale is [min, max] with 0 < min <= max <= 1, got {self.crop_scale}")
        _choice("subsample", self.subsample, ("all", "base", "new"))
        _choice("fewshot_draw", self.fewshot_draw, ("auto", "dassl", "per_class"))
        _choice("on_bad_image", self.on_bad_image, ("fail", "skip"))
        if self.shots < -1:
            raise ValueError(f"shots={self.shots}: K >= 1 images per class, or 0 / -1 for all")
        for key in ("num_workers", "image_size"):
            if getattr(self, key) < 0:
                raise ValueError(f"{key}={getattr(self, key)}: must be >= 0")


@dataclass
class OptimConfig:
    lr: float = 0.002
    epochs: int = 10
    epochs_by_shots: Dict[int, int] = field(default_factory=dict)   # shots -> epochs (CoOp)
    batch_size: int = 4           # global batch (split over processes under DDP)
    momentum: float = 0.9
    weight_decay: float = 5e-4
    warmup_epochs: int = 1
    warmup_lr: float = 1e-5
    activation_checkpointing: bool = False   # recompute block activations in backward (less memory)

    def validate(self):
        for k, v in self.epochs_by_shots.items():
            if not (isinstance(k, int) and isinstance(v, int)) or isinstance(k, bool) or v < 0:
                raise ValueError(f"epochs_by_shots maps shots to epochs (integers), got "
                                 f"{short(k)}: {short(v)}")
        if self.epochs < 0 or self.batch_size < 1 or self.warmup_epochs < 0:
            raise ValueError("epochs and warmup_epochs must be >= 0, batch_size >= 1")
        for k in ("lr", "warmup_lr"):
            if not (math.isfinite(getattr(self, k)) and getattr(self, k) > 0):
                raise ValueError(f"{k} must be a finite number > 0, got {getattr(self, k)}")

    def epochs_for(self, shots: int) -> int:
        """Epochs for a K-shot run: `epochs_by_shots[K]` if listed, else `epochs`."""
        return self.epochs_by_shots.get(shots, self.epochs)

    def epochs_reason(self, shots: int) -> str:
        if shots in self.epochs_by_shots:
            return f"optim.epochs_by_shots[{shots}]"
        return "optim.epochs" + (f" (optim.epochs_by_shots has no entry for {shots} shots)"
                                 if self.epochs_by_shots else "")


@dataclass
class EvalConfig:
    batch_size: int = 16
    speedups: bool = True         # cut text, compute image-independent parts once per evaluation
    datasets: List[str] = field(default_factory=list)   # cross-dataset / domain targets

    def validate(self):
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")


@dataclass
class Config:
    clip: str = "ViT-B/16"        # model name, "miniworld" (the shipped tiny CLIP) or an OpenAI-format file
    method: MethodOptions = field(default_factory=MethodOptions)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    seed: int = 1
    output: str = ""              # output root; "" = ./output
    precision: str = "auto"       # auto | fp32 | amp | fp16
    protocol: str = "fewshot"     # registered: fewshot | base2novel | cross_dataset | domain_generalization

    def validate(self):
        _choice("protocol", self.protocol, PROTOCOLS.names())
        _choice("precision", self.precision, ("auto", "fp32", "amp", "fp16"))


def _choice(key: str, value: str, allowed: Sequence[str]) -> None:
    if value not in allowed:
        raise ValueError(f"{key} must be one of {', '.join(allowed)}, not {short(value)}")


# --------------------------------------------------------------------------- typing
SCALARS = {bool: ((bool,), "true/false"), int: ((int,), "an integer"),
           float: ((int, float), "a number"), str: ((str,), "a string")}


def _coerce(value: Any, tp, key: str):
    """`value` checked against the declared type `tp` (bool, int, float, str, Any, List, Dict,
    Optional or a dataclass); an int becomes a float where a float is declared."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is Any:
        return value
    if origin is Union and len(args) == 2 and type(None) in args:        # Optional[X]
        inner = next(a for a in args if a is not type(None))
        return None if value is None else _coerce(value, inner, key)
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {short(value)}")
        return [_coerce(v, args[0] if args else Any, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict or is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {short(value)}")
        return from_dict(tp, value, key) if is_dataclass(tp) else dict(value)
    if tp not in SCALARS:
        raise ConfigError(f"{key}: unsupported type {tp}")
    types, what = SCALARS[tp]
    if not isinstance(value, types) or (isinstance(value, bool) and tp is not bool):
        raise ConfigError(f"{key}: expected {what}, got {short(value)}")
    return float(value) if tp is float else value


def from_dict(cls, data: Dict[str, Any], prefix: str = ""):
    """Dataclass `cls` from a mapping, then its `validate()`; a bad key or value names the key."""
    hints = typing.get_type_hints(cls)
    known = [f.name for f in fields(cls) if f.init]
    kwargs = {}
    for k, v in data.items():
        key = f"{prefix}.{k}" if prefix else str(k)
        if k not in known:
            raise ConfigError(f"unknown key {short(key)}; valid keys here: {', '.join(sorted(known))}")
        kwargs[k] = _coerce(v, hints[k], key)
    obj = cls(**kwargs)
    if hasattr(obj, "validate"):
        try:
            obj.validate()
        except ValueError as e:     # a message that starts with a field name names its key
            head = re.split(r"[\s=:(]", str(e), maxsplit=1)[0]
            sep = "." if prefix and head in known else ": "
            raise ConfigError(f"{prefix or cls.__name__}{sep}{e}") from None
    return obj


def to_dict(obj) -> Dict[str, Any]:
    """Plain nested dict of a config (for saving and for checkpoints)."""
    return dataclasses.asdict(obj)


def config_from_dict(data: Dict[str, Any]) -> Config:
    """The top-level Config, with the `method` section typed by the method's name."""
    data = dict(data or {})
    method = data.pop("method", None) or {}
    if not isinstance(method, dict):
        raise ConfigError(f"method: expected a mapping, got {short(method)}")
    cfg = from_dict(Config, data)
    name = method.get("name", cfg.method.name)
    if not isinstance(name, str) or name not in METHODS:
        raise ConfigError(f"method.name: unknown method {short(name)}; registered: "
                          f"{', '.join(METHODS.names())}")
    cfg.method = from_dict(METHODS.get(name).Options, {**method, "name": name}, "method")
    return cfg


# --------------------------------------------------------------------------- sources
def _merge(a: Dict[str, Any], b: Dict[str, Any], top: bool = True) -> Dict[str, Any]:
    """`b` (a later file) over `a`, sections merged key by key; an explicit value wins."""
    out = dict(a)
    for k, v in b.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _merge(out[k], v, top=False)
        elif not (isinstance(out.get(k), dict) and v is None):   # "method:" alone changes nothing
            out[k] = v
    if top:
        _explicit_epochs(out, _flat(b))
    return out


def _flat(d: Dict[str, Any], prefix: str = "") -> Dict[str, Any]:
    """Nested mappings as {dotted key: value}, sections included."""
    out: Dict[str, Any] = {}
    for k, v in d.items():
        out[f"{prefix}{k}"] = v
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
    return out


def _explicit_epochs(out: Dict[str, Any], given: Dict[str, Any]) -> None:
    """`optim.epochs` that a later source gives ({dotted key: value}) without
    `optim.epochs_by_shots` switches off the table of the sources before it."""
    table = out["optim"].get("epochs_by_shots") if isinstance(out.get("optim"), dict) else None
    if "optim.epochs" in given and "optim.epochs_by_shots" not in given and table:
        log.info("optim.epochs=%s given explicitly: optim.epochs_by_shots (%s) is not used",
                 short(given["optim.epochs"]), short(table))
        out["optim"]["epochs_by_shots"] = {}


def _override(data: Dict[str, Any], text: str):
    """Set 'a.b=value' in `data` (the value read as YAML: '0.1', 'true', '[a, b]'); -> ('a.b', value)."""
    if "=" not in text:
        raise ConfigError(f"override {short(text)} is not of the form key=value")
    key, raw = text.split("=", 1)
    path = key.strip().split(".")
    if not all(path):
        raise ConfigError(f"override {short(text)} has an empty key")
    try:
        value = yaml.load(raw, Loader=_NoAliasLoader) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    node = data
    for i, part in enumerate(path[:-1]):
        if node.get(part) is None:
            node[part] = {}
        node = node[part]
        if not isinstance(node, dict):
            raise ConfigError(f"override {short(text)}: {'.'.join(path[:i + 1])} is not a section")
    node[path[-1]] = value
    return ".".join(path), value


class _NoAliasLoader(yaml.SafeLoader):
    """`yaml.SafeLoader` that refuses aliases (`*name`, also in merge keys `<<: *name`)."""

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            mark = self.peek_event().start_mark
            raise yaml.YAMLError(f"line {mark.line + 1}: YAML aliases (*name) are not allowed")
        return super().compose_node(parent, index)


class _Dumper(yaml.SafeDumper):
    """`yaml.SafeDumper` that quotes a string the loader would read as a number."""


# YAML 1.1 reads `1e-3` (no dot) as a string; read it as the number it means (as YAML 1.2 does).
for _cls in (_NoAliasLoader, _Dumper):
    _cls.add_implicit_resolver(
        "tag:yaml.org,2002:float", re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
        list("-+0123456789"))


def read_yaml(path: Union[str, Path], _seen: Sequence[Path] = ()) -> Dict[str, Any]:
    """A config file as a mapping, its `_base_` chain (relative to the file) merged under it."""
    path = Path(path)
    try:
        if not path.is_file():
            kind = "is a folder, not a config file" if path.is_dir() else "not found"
            raise ConfigError(f"config file {kind}: {path}")
        size = path.stat().st_size
        if size > MAX_YAML_BYTES:
            raise ConfigError(f"{path}: {size} bytes; a config file is at most {MAX_YAML_BYTES} bytes")
        data = yaml.load(path.read_text(encoding="utf-8"), Loader=_NoAliasLoader) or {}
    except OSError as e:            # unreadable, or a name too long
        raise ConfigError(f"cannot read config file {path}: {e.strerror or e}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not valid YAML: not UTF-8 text") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ConfigError(f"{path}: not valid YAML{where}: "
                          f"{getattr(e, 'problem', None) or str(e).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping")
    base = data.pop("_base_", None)
    if base:
        parent = (path.parent / str(base)).resolve()
        if parent in _seen:
            raise ConfigError(f"{path}: _base_ chain loops back to {parent}")
        data = _merge(read_yaml(parent, [*_seen, parent]), data)
    return data


def load_config(path: Optional[Union[str, Path, Sequence[Union[str, Path]]]] = None,
                overrides: Sequence[str] = ()) -> Config:
    """Config from one YAML file or several (merged in order, later keys win) plus `key=value`
    overrides, each replacing its key's value."""
    paths = [path] if isinstance(path, (str, Path)) else list(path or [])
    data: Dict[str, Any] = {}
    for p in paths:
        data = _merge(data, read_yaml(p))
    given: Dict[str, Any] = {}
    for text in overrides:
        key, value = _override(data, text)
        given[key] = value
    _explicit_epochs(data, given)
    return config_from_dict(data)


def config_text(cfg: Config) -> str:
    """The config as YAML (what a run folder's config.yaml holds)."""
    return yaml.dump(to_dict(cfg), Dumper=_Dumper, sort_keys=False)
