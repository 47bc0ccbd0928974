"""Typed configuration: dataclasses filled from YAML plus dotted command-line overrides.

    cfg = load_config("configs/dcp_vitb16.yaml", ["optim.lr=0.002", "method.n_ctx=4"])

Unknown keys and wrong types raise `ConfigError` naming the dotted key. The `method`
section is typed by the chosen method: its `name` picks the options dataclass the method
registered (`METHODS.get(name).Options`), so `method.depth` is checked against that method's
own fields. YAML is read with `yaml.safe_load` only.
"""
from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Union

import yaml


class ConfigError(ValueError):
    """A bad configuration; the message names the dotted key."""


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
    image_size: int = 0           # 0 = the checkpoint's input resolution
    num_workers: int = 2
    on_bad_image: str = "fail"    # fail | skip
    crop_scale: List[float] = field(default_factory=lambda: [0.08, 1.0])  # training RandomResizedCrop area range (Dassl's INPUT.RRCROP_SCALE)

    def validate(self):
        if len(self.crop_scale) != 2 or not 0 < self.crop_scale[0] <= self.crop_scale[1] <= 1:
            raise ValueError(f"crop_scale is [min, max] with 0 < min <= max <= 1, got {self.crop_scale}")


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
                raise ValueError(f"epochs_by_shots maps shots to epochs (integers), got {k!r}: {v!r}")
        if self.epochs < 0 or self.batch_size < 1 or self.warmup_epochs < 0:
            raise ValueError("epochs and warmup_epochs must be >= 0, batch_size >= 1")

    def epochs_for(self, shots: int) -> int:
        """Epochs for a K-shot run: `epochs_by_shots[K]` if listed, else `epochs`."""
        return self.epochs_by_shots.get(shots, self.epochs)


@dataclass
class EvalConfig:
    batch_size: int = 16
    speedups: bool = True         # cut text, compute image-independent parts once per evaluation
    datasets: List[str] = field(default_factory=list)   # cross-dataset / domain targets


PROTOCOLS = ("fewshot", "base2novel", "cross_dataset", "domain_generalization")
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
    protocol: str = "fewshot"     # fewshot | base2novel | cross_dataset | domain_generalization
    demo: bool = False            # offline demo: mini-world CLIP and task, zero-shot run first

    def validate(self):
        if self.protocol not in PROTOCOLS:
            raise ValueError(f"protocol must be one of {', '.join(PROTOCOLS)}, not {self.protocol!r}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, "
                             f"not {self.precision!r}")


# --------------------------------------------------------------------------- machinery
def _type_name(tp) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(value: Any, tp, key: str):
    """Check/convert `value` to type `tp`; raise ConfigError naming `key`."""
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if origin is Union:
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(value, a, key)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(f"{key}: expected {_type_name(tp)}, got {value!r}")
    if origin in (list, List, tuple, Sequence):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        (inner,) = typing.get_args(tp)[:1] or (Any,)
        out = [_coerce(v, inner, f"{key}[{i}]") for i, v in enumerate(value)]
        return tuple(out) if origin is tuple else out
    if origin in (dict, Dict):
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        return dict(value)
    if is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        return from_dict(tp, value, key)
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected true/false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected an integer, got {value!r}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise ConfigError(f"{key}: expected a number, got {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{key}: expected a string, got {value!r}")
    raise ConfigError(f"{key}: unsupported type {_type_name(tp)}")


def from_dict(cls, data: Dict[str, Any], prefix: str = ""):
    """Build dataclass `cls` from a mapping; unknown keys and wrong types name the key."""
    hints = typing.get_type_hints(cls)
    known = {f.name: f for f in fields(cls) if f.init}
    kwargs = {}
    for k, v in data.items():
        key = f"{prefix}.{k}" if prefix else str(k)
        if k not in known:
            raise ConfigError(f"unknown key {key!r}; valid keys here: {', '.join(sorted(known))}")
        kwargs[k] = _coerce(v, hints[k], key)
    obj = cls(**kwargs)
    check = getattr(obj, "validate", None)
    if callable(check):
        try:
            check()
        except ValueError as e:
            raise ConfigError(f"{prefix or cls.__name__}: {e}") from None
    return obj


def to_dict(obj) -> Dict[str, Any]:
    """Plain nested dict of a config (for saving and for checkpoints)."""
    return dataclasses.asdict(obj)


def method_options_class(name: str):
    from .registry import METHODS
    from . import methods  # noqa: F401  (registers the built-in methods)
    try:
        return METHODS.get(name).Options
    except KeyError as e:
        raise ConfigError(f"method.name: {e.args[0]}") from None


def config_from_dict(data: Dict[str, Any]) -> Config:
    """The top-level Config, with the `method` section typed by the method's name."""
    data = dict(data or {})
    method = dict(data.pop("method", None) or {})
    cfg = from_dict(Config, data)
    name = method.get("name", cfg.method.name)
    if not isinstance(name, str):
        raise ConfigError(f"method.name: expected a string, got {name!r}")
    cfg.method = from_dict(method_options_class(name), {**method, "name": name}, "method")
    return cfg


def parse_override(text: str):
    """'a.b=value' -> (['a', 'b'], value), the value parsed as YAML ('0.1', 'true', '[a, b]')."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} is not of the form key=value")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key or any(not part for part in key.split(".")):
        raise ConfigError(f"override {text!r} has an empty key")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return key.split("."), value


def merge_overrides(data: Dict[str, Any], overrides: Sequence[str]) -> Dict[str, Any]:
    data = _deepcopy(data)
    for text in overrides:
        path, value = parse_override(text)
        node = data
        for i, part in enumerate(path[:-1]):
            nxt = node.get(part)
            if nxt is None:
                nxt = node[part] = {}
            if not isinstance(nxt, dict):
                raise ConfigError(f"override {text!r}: {'.'.join(path[:i + 1])} is not a section")
            node = nxt
        node[path[-1]] = value
    return data


def _deepcopy(d):
    return {k: _deepcopy(v) if isinstance(v, dict) else v for k, v in d.items()}


def read_yaml(path: Union[str, Path]) -> Dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    with open(path, encoding="utf-8") as f:
        try:
            data = yaml.safe_load(f) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"{path}: not valid YAML: {e}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping")
    base = data.pop("_base_", None)           # `_base_: other.yaml` (relative to this file)
    if base:
        parent = read_yaml(path.parent / base)
        data = _merge(parent, data)
    return data


def _merge(a: Dict[str, Any], b: Dict[str, Any]) -> Dict[str, Any]:
    out = _deepcopy(a)
    for k, v in b.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def load_config(path: Optional[Union[str, Path, Sequence[Union[str, Path]]]] = None,
                overrides: Sequence[str] = ()) -> Config:
    """Config from one YAML file or several (merged in order, later keys win) plus overrides."""
    paths = [path] if isinstance(path, (str, Path)) else list(path or [])
    data: Dict[str, Any] = {}
    for p in paths:
        data = _merge(data, read_yaml(p))
    return config_from_dict(merge_overrides(data, overrides))


def save_config(cfg: Config, path: Union[str, Path]) -> None:
    from .utils import atomic_write_text
    atomic_write_text(path, yaml.safe_dump(to_dict(cfg), sort_keys=False))
