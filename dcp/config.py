"""Typed configuration: dataclasses filled from YAML plus dotted command-line overrides.

    cfg = load_config("configs/dcp_vitb16.yaml", ["optim.lr=0.002", "method.n_ctx=4"])

Unknown keys and wrong types raise `ConfigError` naming the dotted key. The `method` section
is typed by the chosen method: its `name` picks the options dataclass the method registered
(`METHODS.get(name).Options`), so `method.depth` is checked against that method's own fields.

Precedence, lowest first: the `_base_` chain of a file, the file, later `--cfg` files, then
`key=value` overrides. A source that sets a value explicitly also wins over the value another
key would derive: `optim.epochs` set without `optim.epochs_by_shots` replaces the per-shots
table of the sources below it (`DERIVED`). `data.image_size: 0` (the checkpoint's resolution)
and `method.fusion: ""` (chosen by `method.variant`) are derived only while left at that value.

YAML is read with `yaml.safe_load`'s rules, without aliases (so a small file cannot expand
into a huge one) and at most `MAX_YAML_BYTES` long.
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
DERIVED = {"optim.epochs": ("optim.epochs_by_shots", {})}   # explicit key -> (deriving key, off)


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
    crop_scale: List[float] = field(default_factory=lambda: [0.08, 1.0])  # training RandomResizedCrop area range (Dassl's INPUT.RRCROP_SCALE)

    def validate(self):
        if len(self.crop_scale) != 2 or not 0 < self.crop_scale[0] <= self.crop_scale[1] <= 1:
            raise ValueError(f"crop_scale is [min, max] with 0 < min <= max <= 1, got {self.crop_scale}")
        _choice("subsample", self.subsample, ("all", "base", "new"))
        _choice("fewshot_draw", self.fewshot_draw, ("auto", "dassl", "per_class"))
        _choice("on_bad_image", self.on_bad_image, ("fail", "skip"))
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


PRECISIONS = ("auto", "fp32", "amp", "fp16")


@dataclass
class Config:
    clip: str = "ViT-B/16"        # model name, "miniworld" (the shipped tiny CLIP), or an OpenAI-format checkpoint
    method: MethodOptions = field(default_factory=MethodOptions)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    seed: int = 1
    output: str = ""              # output root; "" = ./output
    precision: str = "auto"       # auto | fp32 | amp | fp16
    protocol: str = "fewshot"     # a registered protocol: fewshot | base2novel | cross_dataset | domain_generalization

    def validate(self):
        _choice("protocol", self.protocol, PROTOCOLS.names())
        _choice("precision", self.precision, PRECISIONS)


def _choice(key: str, value: str, allowed: Sequence[str]) -> None:
    if value not in allowed:
        raise ValueError(f"{key} must be one of {', '.join(allowed)}, not {short(value)}")


# --------------------------------------------------------------------------- machinery
def _type_name(tp) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(value: Any, tp, key: str):
    """Check/convert `value` to type `tp`; raise ConfigError naming `key`."""
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if origin is Union:
        if value is None and type(None) in typing.get_args(tp):
            return None
        for a in typing.get_args(tp):
            try:
                return _coerce(value, a, key) if a is not type(None) else None
            except ConfigError:
                pass
        raise ConfigError(f"{key}: expected {_type_name(tp)}, got {short(value)}")
    if origin in (list, List, tuple, Sequence):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {short(value)}")
        (inner,) = typing.get_args(tp)[:1] or (Any,)
        out = [_coerce(v, inner, f"{key}[{i}]") for i, v in enumerate(value)]
        return tuple(out) if origin is tuple else out
    if origin in (dict, Dict) or is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {short(value)}")
        return from_dict(tp, value, key) if is_dataclass(tp) else dict(value)
    expected = {bool: ((bool,), "true/false"), int: ((int,), "an integer"),
                float: ((int, float), "a number"), str: ((str,), "a string")}
    if tp not in expected:
        raise ConfigError(f"{key}: unsupported type {_type_name(tp)}")
    types, what = expected[tp]
    if not isinstance(value, types) or (isinstance(value, bool) and tp is not bool):
        raise ConfigError(f"{key}: expected {what}, got {short(value)}")
    return float(value) if tp is float else value


def from_dict(cls, data: Dict[str, Any], prefix: str = ""):
    """Build dataclass `cls` from a mapping; unknown keys and wrong types name the key."""
    hints = typing.get_type_hints(cls)
    known = {f.name: f for f in fields(cls) if f.init}
    kwargs = {}
    for k, v in data.items():
        key = f"{prefix}.{k}" if prefix else str(k)
        if k not in known:
            raise ConfigError(f"unknown key {short(key)}; valid keys here: {', '.join(sorted(known))}")
        kwargs[k] = _coerce(v, hints[k], key)
    obj = cls(**kwargs)
    check = getattr(obj, "validate", None)
    if callable(check):
        try:
            check()
        except ValueError as e:     # a message that starts with a field name names its key
            head = re.split(r"[\s=:(]", str(e), maxsplit=1)[0]
            sep = "." if prefix and head in known else ": "
            raise ConfigError(f"{prefix or cls.__name__}{sep}{e}") from None
    return obj


def to_dict(obj) -> Dict[str, Any]:
    """Plain nested dict of a config (for saving and for checkpoints)."""
    return dataclasses.asdict(obj)


def method_options_class(name: str):
    if name not in METHODS:
        raise ConfigError(f"method.name: unknown method {short(name)}; registered: "
                          f"{', '.join(METHODS.names())}")
    return METHODS.get(name).Options


def config_from_dict(data: Dict[str, Any]) -> Config:
    """The top-level Config, with the `method` section typed by the method's name."""
    data = dict(data or {})
    method = data.pop("method", None) or {}
    if not isinstance(method, dict):
        raise ConfigError(f"method: expected a mapping, got {short(method)}")
    cfg = from_dict(Config, data)
    name = method.get("name", cfg.method.name)
    if not isinstance(name, str):
        raise ConfigError(f"method.name: expected a string, got {short(name)}")
    cfg.method = from_dict(method_options_class(name), {**method, "name": name}, "method")
    return cfg


def parse_override(text: str):
    """'a.b=value' -> (['a', 'b'], value), the value parsed as YAML ('0.1', 'true', '[a, b]')."""
    if "=" not in text:
        raise ConfigError(f"override {short(text)} is not of the form key=value")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key or any(not part for part in key.split(".")):
        raise ConfigError(f"override {short(text)} has an empty key")
    try:
        value = _yaml(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return key.split("."), value


def _get(d: Dict[str, Any], key: str, default: Any = None) -> Any:
    for part in key.split("."):
        if not isinstance(d, dict) or part not in d:
            return default
        d = d[part]
    return d


def _set(data: Dict[str, Any], path: Sequence[str], value: Any, what: str) -> None:
    node = data
    for i, part in enumerate(path[:-1]):
        if node.get(part) is None:
            node[part] = {}
        node = node[part]
        if not isinstance(node, dict):
            raise ConfigError(f"{what}: {'.'.join(path[:i + 1])} is not a section")
    node[path[-1]] = value


def _explicit_wins(out: Dict[str, Any], given: Dict[str, Any]) -> None:
    """Switch off a derivation (DERIVED) that `given` overrides with an explicit value."""
    for key, (deriving, off) in DERIVED.items():
        if key in given and deriving not in given and _get(out, deriving):
            log.info("%s=%s given explicitly: %s (%s) is not used", key, short(given[key]),
                     deriving, short(_get(out, deriving)))
            _set(out, deriving.split("."), off, deriving)


def _flat(d: Dict[str, Any], prefix: str = "") -> Dict[str, Any]:
    out: Dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        out[key] = v
        if isinstance(v, dict):
            out.update(_flat(v, key + "."))
    return out


def _merge(a: Dict[str, Any], b: Dict[str, Any], top: bool = True) -> Dict[str, Any]:
    """`b` (a later file) over `a`, sections merged key by key; see DERIVED."""
    out = {k: _merge(v, {}, False) if isinstance(v, dict) else v for k, v in a.items()}
    for k, v in b.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _merge(out[k], v, False)
        elif not (isinstance(out.get(k), dict) and v is None):   # "method:" alone changes nothing
            out[k] = v
    if top:
        _explicit_wins(out, _flat(b))
    return out


def apply_overrides(data: Dict[str, Any], overrides: Sequence[str]) -> Dict[str, Any]:
    """`key=value` overrides over a config mapping: each replaces its key's value."""
    out = _merge(data, {})
    given: Dict[str, Any] = {}
    for text in overrides:
        path, value = parse_override(text)
        _set(out, path, value, f"override {short(text)}")
        given[".".join(path)] = value
    _explicit_wins(out, given)
    return out


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


def _yaml(text: str):
    return yaml.load(text, Loader=_NoAliasLoader)


def read_yaml(path: Union[str, Path], _seen: Sequence[Path] = ()) -> Dict[str, Any]:
    path = Path(path)
    try:
        if not path.is_file():
            raise ConfigError(f"config file not found: {path}")
        if path.stat().st_size > MAX_YAML_BYTES:
            raise ConfigError(f"{path}: {path.stat().st_size} bytes; a config file is at most "
                              f"{MAX_YAML_BYTES} bytes")
        text = path.read_text(encoding="utf-8")
    except OSError as e:            # unreadable, or a name too long
        raise ConfigError(f"cannot read config file {path}: {e.strerror or e}") from None
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: not valid YAML: {str(e)[:300]}") from None
    try:
        data = _yaml(text) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {str(e)[:300]}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping")
    base = data.pop("_base_", None)           # `_base_: other.yaml` (relative to this file)
    if base:
        parent = (path.parent / str(base)).resolve()
        if parent in _seen:
            raise ConfigError(f"{path}: _base_ chain loops back to {parent}")
        data = _merge(read_yaml(parent, [*_seen, parent]), data)
    return data


def load_config(path: Optional[Union[str, Path, Sequence[Union[str, Path]]]] = None,
                overrides: Sequence[str] = ()) -> Config:
    """Config from one YAML file or several (merged in order, later keys win) plus overrides."""
    paths = [path] if isinstance(path, (str, Path)) else list(path or [])
    data: Dict[str, Any] = {}
    for p in paths:
        data = _merge(data, read_yaml(p))
    return config_from_dict(apply_overrides(data, overrides))


def config_text(cfg: Config) -> str:
    """The config as YAML (what a run folder's config.yaml holds)."""
    return yaml.dump(to_dict(cfg), Dumper=_Dumper, sort_keys=False)
