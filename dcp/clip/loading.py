"""Load OpenAI CLIP by name (downloaded once, SHA-256 checked, cached) or from a local file:
OpenAI's TorchScript archive or a plain state dict, both read without running code from them.

    model, preprocess = load("ViT-B/16")             # or load("/data/ViT-B-16.pt")
    images = torch.stack([preprocess(im) for im in pil_images])   # (B, 3, R, R)
"""
from __future__ import annotations

import collections
import http.client
import io
import logging
import math
import os
import pickle
import re
import zipfile
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Tuple, Union
from urllib.request import urlopen

import torch
from PIL import Image
from torchvision import transforms

from dcp.clip.model import CLIP, build_model, convert_weights
from dcp.utils import CorruptFileError, Progress, atomic_path, sha256_file, verify_zip

log = logging.getLogger(__name__)

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

# OpenAI's published checkpoints; the folder before the file name is the file's SHA-256.
_BASE_URL = "https://openaipublic.azureedge.net/clip/models"
MODELS: Dict[str, str] = {
    "RN50": f"{_BASE_URL}/afeb0e10f9e5a86da6080e35cf09123aca3b358a0c3e3b6c78a7b63bc04b6762/RN50.pt",
    "RN101": f"{_BASE_URL}/8fa8567bab74a42d41c5915025a8e4538c3bdbe8804a470a72f30b0d94fab599/RN101.pt",
    "RN50x4": f"{_BASE_URL}/7e526bd135e493cef0776de27d5f42653e6b4c8bf9e0f653bb11773263205fdd/RN50x4.pt",
    "RN50x16": f"{_BASE_URL}/52378b407f34354e150460fe41077663dd5b39c54cd0bfd2b27167a4a06ec9aa/RN50x16.pt",
    "RN50x64": f"{_BASE_URL}/be1cfb55d75a9666199fb2206c106743da0f6468c9d327f3e0d0a543a9919d9c/RN50x64.pt",
    "ViT-B/32": f"{_BASE_URL}/40d365715913c9da98579312b702a82c18be219cc2a73407c4526f58eba950af/ViT-B-32.pt",
    "ViT-B/16": f"{_BASE_URL}/5806e77cd80f8b59890b7e101eabd078d9fb84e6937f9e85e4ecb61988df416f/ViT-B-16.pt",
    "ViT-L/14": f"{_BASE_URL}/b8cca3fd41ae0c99ba7e8951adf17d267cdb84cd88be6f7c2e0eca1737a03836/ViT-L-14.pt",
    "ViT-L/14@336px":
        f"{_BASE_URL}/3035c92b350959924f9f00213499208652fc7ea050643e8b385c2dac08641f02/ViT-L-14-336px.pt",
}

CACHE_ENV = "DCP_CLIP_CACHE"
_CHUNK = 1 << 20


class CheckpointError(RuntimeError):
    """A CLIP checkpoint that is missing, unreadable, corrupt or not a CLIP model."""


def available_models() -> List[str]:
    """Names `load` downloads: RN50, RN101, RN50x4, RN50x16, RN50x64, ViT-B/32, ViT-B/16, ..."""
    return list(MODELS)


def checkpoint_path(name: str, download_root: Union[str, Path, None] = None) -> Path:
    """The cache file of model `name` (e.g. ViT-B-16.pt) in `download_root`, else $DCP_CLIP_CACHE,
    else ~/.cache/clip: the folder and file names of OpenAI's package, so its downloads are found."""
    root = download_root or os.environ.get(CACHE_ENV) or "~/.cache/clip"
    return Path(root).expanduser() / MODELS[name].rsplit("/", 1)[1]


def download(name: str, download_root: Union[str, Path, None] = None) -> Path:
    """Path of model `name` in the cache, downloading it (atomically, SHA-256 checked) if the
    file is missing or has a wrong checksum."""
    url = MODELS[name]
    expected = url.rsplit("/", 2)[1]
    target = checkpoint_path(name, download_root)
    problem = "is not there"
    if target.exists():
        if not target.is_file():
            raise CheckpointError(f"{target} exists but is not a file; move it away so the "
                                  f"CLIP checkpoint {name} can be stored there")
        actual = sha256_file(target)
        if actual == expected:
            return target
        problem = f"has SHA-256 {actual}, expected {expected} (corrupt or incomplete)"
        log.warning("%s %s; downloading it again from %s", target, problem, url)
    else:
        log.info("downloading CLIP %s from %s to %s", name, url, target)
    try:
        with urlopen(url, timeout=60) as source, atomic_path(target) as tmp:
            size = int(source.headers.get("Content-Length") or 0)
            chunks = iter(lambda: source.read(_CHUNK), b"")
            with open(tmp, "wb") as out:
                out.writelines(Progress(chunks, desc=f"downloading {target.name}",
                                        total=math.ceil(size / _CHUNK) or None, unit="MiB"))
            actual = sha256_file(tmp)
            if actual != expected:
                raise CheckpointError(f"downloaded {url}, but its SHA-256 is {actual}, "
                                      f"expected {expected}; the transfer was corrupted, "
                                      f"try again (nothing was written to {target})")
    except (OSError, http.client.HTTPException) as e:
        raise CheckpointError(
            f"CLIP checkpoint {name}: {target} {problem}, and downloading {url} failed ({e}). "
            f"Fetch that file by hand and put it there (the folder is set by ${CACHE_ENV} or "
            "download_root), or pass a checkpoint file instead of the model name (--clip PATH)") from e
    return target


# ----------------------------------------------------------------------------- reading files

_STORAGE_DTYPES = {
    "DoubleStorage": torch.float64, "FloatStorage": torch.float32, "HalfStorage": torch.float16,
    "BFloat16Storage": torch.bfloat16, "LongStorage": torch.int64, "IntStorage": torch.int32,
    "ShortStorage": torch.int16, "CharStorage": torch.int8, "ByteStorage": torch.uint8,
    "BoolStorage": torch.bool,
}
# TorchScript writes typed lists and dicts through these helpers; each returns its first argument.
_JIT_PICKLE_HELPERS = {"build_intlist", "build_doublelist", "build_boollist",
                       "build_tensorlist", "restore_type_tag"}


class _ScriptRecord:
    """Inert stand-in for a pickled TorchScript object: `qualname` (its class) and `attrs`."""

    def __setstate__(self, state: Any) -> None:
        self.attrs = state if isinstance(state, dict) else {}


class _TorchScriptUnpickler(pickle.Unpickler):
    """Reads `<archive>/data.pkl`: tensors (storages from `<archive>/data/<key>`), containers
    and `__torch__.*` records; any other global is refused."""

    def __init__(self, zf: zipfile.ZipFile, prefix: str):
        super().__init__(io.BytesIO(zf.read(f"{prefix}/data.pkl")))
        self.zf, self.prefix = zf, prefix
        self.storages: Dict[str, torch.Tensor] = {}

    def find_class(self, module: str, name: str) -> Any:
        if module == "__torch__" or module.startswith("__torch__."):
            return type(name, (_ScriptRecord,), {"qualname": f"{module}.{name}"})
        if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
            return self.rebuild_tensor
        if (module, name) == ("collections", "OrderedDict"):
            return collections.OrderedDict
        if module == "torch" and name in _STORAGE_DTYPES:
            return _STORAGE_DTYPES[name]
        if module == "torch" and isinstance(getattr(torch, name, None), torch.dtype):
            return getattr(torch, name)
        if module == "torch.jit._pickle" and name in _JIT_PICKLE_HELPERS:
            return lambda value, *_: value
        raise CheckpointError(f"refused: data.pkl references {module}.{name}, which a "
                              "TorchScript CLIP archive never holds (only modules, tensors and "
                              "plain values); nothing from the file was run")

    def persistent_load(self, pid: Any) -> torch.Tensor:
        """('storage', dtype, key, location, numel) -> the storage as a flat tensor (CPU)."""
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"
                and isinstance(pid[1], torch.dtype)):
            raise pickle.UnpicklingError(f"unexpected persistent id {pid!r}")
        _, dtype, key, _location, numel = pid
        if key not in self.storages:
            raw = self.zf.read(f"{self.prefix}/data/{key}")
            itemsize = torch.empty((), dtype=dtype).element_size()
            if len(raw) != numel * itemsize:
                raise pickle.UnpicklingError(
                    f"storage data/{key} has {len(raw)} bytes, expected {numel} x {itemsize}")
            flat = torch.frombuffer(bytearray(raw), dtype=dtype) if raw else torch.empty(0, dtype=dtype)
            self.storages[key] = flat
        return self.storages[key]

    @staticmethod
    def rebuild_tensor(flat: torch.Tensor, offset: int, size: Tuple[int, ...],
                       stride: Tuple[int, ...], *_: Any) -> torch.Tensor:
        if all(n > 0 for n in size):
            last = offset + sum((n - 1) * s for n, s in zip(size, stride))
            if offset < 0 or last >= flat.numel():
                raise pickle.UnpicklingError(
                    f"tensor of size {tuple(size)} at offset {offset} overruns its storage "
                    f"of {flat.numel()} elements")
        return torch.empty(0, dtype=flat.dtype).set_(flat.untyped_storage(), offset, size, stride)


_CLASS = re.compile(r"^class (\w+)\((\w+)\):", re.M)
_NAMES = re.compile(r'"([^"]*)"')


def _module_layouts(zf: zipfile.ZipFile, prefix: str) -> Dict[str, Tuple[List[str], Optional[List[str]]]]:
    """Qualified module class name -> (parameter names, buffer names) from the archive's code
    files (`__parameters__ = [...]`, `__buffers__ = [...]`), read as text."""
    layouts = {}
    code_dir = f"{prefix}/code/"
    for entry in [n for n in zf.namelist() if n.startswith(code_dir) and n.endswith(".py")]:
        module = entry[len(code_dir):-3].replace("/", ".")
        parts = _CLASS.split(zf.read(entry).decode("utf-8"))   # [head, name, base, body, ...]
        for name, base, body in zip(parts[1::3], parts[2::3], parts[3::3]):
            if base == "Module":
                params = re.search(r"^\s*__parameters__ = (.*)", body, re.M)
                buffers = re.search(r"^\s*__buffers__ = (.*)", body, re.M)
                layouts[f"{module}.{name}"] = (_NAMES.findall(params[1]) if params else [],
                                               _NAMES.findall(buffers[1]) if buffers else None)
    return layouts


def _collect_state(record: _ScriptRecord, layouts: Dict, prefix: str,
                   out: Dict[str, torch.Tensor]) -> None:
    """Parameters, then buffers, then submodules (recursively), as `Module.state_dict` orders."""
    if record.qualname not in layouts:
        raise CheckpointError(f"module class {record.qualname} has no code in the archive")
    params, buffers = layouts[record.qualname]
    attrs = getattr(record, "attrs", {})
    if buffers is None:  # archives from before `__buffers__` was written: other tensors are buffers
        buffers = [k for k, v in attrs.items() if isinstance(v, torch.Tensor) and k not in params]
    for name in params + buffers:
        if isinstance(attrs.get(name), torch.Tensor):
            out[prefix + name] = attrs[name]
    for name, value in attrs.items():
        if isinstance(value, _ScriptRecord) and value.qualname in layouts:
            _collect_state(value, layouts, f"{prefix}{name}.", out)


def _torchscript_prefix(zf: zipfile.ZipFile) -> Optional[str]:
    """`<archive>` if the zip holds one `<archive>/data.pkl` and TorchScript's `constants.pkl`
    or `code/` beside it (torch.save's zips have neither), else None."""
    names = zf.namelist()
    tops = [n[:-len("/data.pkl")] for n in names if n.endswith("/data.pkl") and n.count("/") == 1]
    if len(tops) == 1 and (f"{tops[0]}/constants.pkl" in names
                           or any(n.startswith(f"{tops[0]}/code/") for n in names)):
        return tops[0]
    return None


def read_torchscript_state_dict(path: Union[str, Path]) -> Dict[str, torch.Tensor]:
    """State dict of a TorchScript archive (= `torch.jit.load(path).state_dict()`), run no code."""
    path = Path(path)
    try:
        with zipfile.ZipFile(path) as zf:
            prefix = _torchscript_prefix(zf)
            if prefix is None:
                raise CheckpointError("not a TorchScript archive (no single `<archive>/data.pkl`)")
            byteorder = f"{prefix}/byteorder"
            if byteorder in zf.namelist() and zf.read(byteorder).strip() != b"little":
                raise CheckpointError("big-endian archives are not supported")
            layouts = _module_layouts(zf, prefix)
            root = _TorchScriptUnpickler(zf, prefix).load()
            if not isinstance(root, _ScriptRecord):
                raise CheckpointError(f"data.pkl holds a {type(root).__name__}, not a module")
            state: Dict[str, torch.Tensor] = collections.OrderedDict()
            _collect_state(root, layouts, "", state)
    except CheckpointError as e:
        raise CheckpointError(f"{path}: {e}") from e
    except Exception as e:  # zip, zlib, pickle or tensor errors: the file is damaged
        raise CheckpointError(
            f"{path}: cannot read this TorchScript archive ({type(e).__name__}: {e}); the file "
            f"is corrupt or truncated: delete it and download it again") from e
    return state


def read_state_dict(path: Union[str, Path]) -> Dict[str, torch.Tensor]:
    """A CLIP checkpoint file (TorchScript archive or plain state dict) -> {name: tensor} (CPU),
    as stored (OpenAI's files hold fp16), without running code from the file."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise CheckpointError(f"{path}: no such file")
    if zipfile.is_zipfile(path):
        try:
            verify_zip(path)        # CRCs and size: torch.load itself checks neither
        except CorruptFileError as e:
            raise CheckpointError(str(e)) from None
        with zipfile.ZipFile(path) as zf:
            if _torchscript_prefix(zf) is not None:
                return read_torchscript_state_dict(path)
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        # torch's message suggests weights_only=False; show only the lines that say what is wrong
        lines = [line.strip() for line in str(e).splitlines() if line.strip()
                 and not any(w in line for w in ("weights_only", "Weights only", "documentation"))]
        refused = [line for line in lines if "GLOBAL" in line]
        if refused:
            raise CheckpointError(f"{path}: refused: it needs more than tensors to load "
                                  f"({refused[0]}), and no code is run from a checkpoint. Give "
                                  "OpenAI's TorchScript file or torch.save(model.state_dict())") from e
        reason = lines[0].split(". ")[0].rstrip(".") if lines else "unreadable"
        raise CheckpointError(
            f"{path}: cannot read it as a TorchScript archive or as a state dict saved with "
            f"torch.save ({type(e).__name__}: {reason}); the file is corrupt, truncated or of "
            f"another kind: delete it and download it again") from e
    if isinstance(obj, Mapping) and isinstance(obj.get("state_dict"), Mapping):
        obj = obj["state_dict"]
    expected = "expected a state dict (parameter name -> tensor) or {'state_dict': ...}"
    if not isinstance(obj, Mapping) or not obj:
        raise CheckpointError(f"{path}: {expected}, found {type(obj).__name__}")
    bad = [k for k, v in obj.items() if not (isinstance(k, str) and isinstance(v, torch.Tensor))]
    if bad:
        raise CheckpointError(f"{path}: entry {bad[0]!r} is not a tensor; {expected}")
    if all(k.startswith("module.") for k in obj):
        obj = {k[len("module."):]: v for k, v in obj.items()}
    return dict(obj)


# ----------------------------------------------------------------------------- model + transform

def _to_rgb(image: Image.Image) -> Image.Image:
    return image.convert("RGB")


def image_transform(resolution: int) -> Callable[[Image.Image], torch.Tensor]:
    """CLIP's preprocessing, PIL image -> (3, resolution, resolution) float tensor, in OpenAI's
    order: bicubic resize of the short side to `resolution`, centre crop, RGB, CLIP mean/std."""
    return transforms.Compose([
        transforms.Resize(resolution, interpolation=transforms.InterpolationMode.BICUBIC),
        transforms.CenterCrop(resolution),
        _to_rgb,
        transforms.ToTensor(),
        transforms.Normalize(CLIP_MEAN, CLIP_STD),
    ])


def load(name_or_path: Union[str, Path], device: Union[str, torch.device, None] = None,
         download_root: Union[str, Path, None] = None
         ) -> Tuple[CLIP, Callable[[Image.Image], torch.Tensor]]:
    """A frozen pretrained CLIP (eval mode, no gradients) and its image preprocessing.

    `name_or_path`: a name from `available_models()` (downloaded to the cache if needed),
    `miniworld` (the tiny CLIP of `dcp/miniworld/`) or a checkpoint file. `device`: default
    CUDA when available. On CPU the weights are fp32; on CUDA OpenAI's fp16 weights stay fp16.
    """
    device = torch.device(device if device is not None else
                          "cuda" if torch.cuda.is_available() else "cpu")
    if str(name_or_path) in MODELS:
        path = download(str(name_or_path), download_root)
    elif str(name_or_path) == "miniworld":
        from dcp.miniworld import CHECKPOINT as path
    elif Path(name_or_path).expanduser().is_file():
        path = Path(name_or_path).expanduser()
    else:
        raise CheckpointError(f"{str(name_or_path)[:200]!r} is neither a CLIP model name "
                              f"({', '.join(available_models())}, miniworld) nor an existing "
                              "checkpoint file")
    state_dict = read_state_dict(path)
    try:
        model = build_model(state_dict)
    except (KeyError, ValueError, RuntimeError) as e:
        detail = f"key {e} is missing" if isinstance(e, KeyError) else str(e)
        raise CheckpointError(f"{path}: not an OpenAI CLIP checkpoint: {detail}") from e
    model = model.to(device)
    if device.type == "cuda" and any(v.dtype == torch.float16 for v in state_dict.values()):
        convert_weights(model)
    model.requires_grad_(False).eval()
    log.info("loaded CLIP from %s (%s, input %dpx)", path, device, model.visual.input_resolution)
    return model, image_transform(model.visual.input_resolution)
