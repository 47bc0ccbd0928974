"""Shared test fixtures: OpenAI's reference CLIP (`clip-anytorch`) and tiny CLIP checkpoints in
OpenAI's exact key layout and file formats. Session fixtures are shared: do not mutate them."""
from __future__ import annotations

import importlib.util
import sys
import types
import warnings
from pathlib import Path
from typing import Dict

import pytest
import torch

# clip-anytorch 2.6.0 does `from pkg_resources import packaging` (only to compare torch
# versions), and setuptools>=81 no longer ships pkg_resources. Pinning an old setuptools would
# fight torch's own setuptools requirement and newer Pythons, so when pkg_resources is missing
# we register a stand-in exposing `packaging` (installed with pytest) before anything imports clip.
if importlib.util.find_spec("pkg_resources") is None:
    import packaging.version

    _shim = types.ModuleType("pkg_resources")
    _shim.packaging = packaging
    sys.modules["pkg_resources"] = _shim

# Tiny architectures with the real vocabulary and context length (so the real tokenizer works).
TINY_VIT = dict(embed_dim=32, image_resolution=32, vision_layers=2, vision_width=64,
                vision_patch_size=8, context_length=77, vocab_size=49408,
                transformer_width=64, transformer_heads=1, transformer_layers=2)
TINY_RN = dict(embed_dim=32, image_resolution=64, vision_layers=(1, 1, 1, 1), vision_width=8,
               vision_patch_size=None, context_length=77, vocab_size=49408,
               transformer_width=64, transformer_heads=1, transformer_layers=1)

# OpenAI's published architectures, as the arguments of OpenAI's `clip.model.CLIP`.
_ARGS = ("embed_dim", "image_resolution", "vision_layers", "vision_width", "vision_patch_size",
         "context_length", "vocab_size", "transformer_width", "transformer_heads",
         "transformer_layers")
OPENAI_ARCHITECTURES = {name: dict(zip(_ARGS, values)) for name, values in {
    "RN50": (1024, 224, (3, 4, 6, 3), 64, None, 77, 49408, 512, 8, 12),
    "RN101": (512, 224, (3, 4, 23, 3), 64, None, 77, 49408, 512, 8, 12),
    "RN50x4": (640, 288, (4, 6, 10, 6), 80, None, 77, 49408, 640, 10, 12),
    "RN50x16": (768, 384, (6, 8, 18, 8), 96, None, 77, 49408, 768, 12, 12),
    "RN50x64": (1024, 448, (3, 15, 36, 10), 128, None, 77, 49408, 1024, 16, 12),
    "ViT-B/32": (512, 224, 12, 768, 32, 77, 49408, 512, 8, 12),
    "ViT-B/16": (512, 224, 12, 768, 16, 77, 49408, 512, 8, 12),
    "ViT-L/14": (768, 224, 24, 1024, 14, 77, 49408, 768, 12, 12),
    "ViT-L/14@336px": (768, 336, 24, 1024, 14, 77, 49408, 768, 12, 12),
}.items()}


@pytest.fixture(scope="session")
def openai_clip():
    """OpenAI's reference implementation, the `clip` package of clip-anytorch."""
    import clip
    return clip


def openai_state_dict(arch: Dict, seed: int = 0) -> Dict[str, torch.Tensor]:
    """State dict of OpenAI's `clip.model.CLIP(**arch)` with every float tensor perturbed
    (so no LayerNorm/bias is trivially 1 or 0) and rounded to fp16-representable fp32 values
    (OpenAI's weights are fp16, and its `build_model` casts to fp16: exact round trip)."""
    from clip.model import CLIP
    torch.manual_seed(seed)
    sd = CLIP(**arch).state_dict()
    for name, value in sd.items():
        if not value.is_floating_point():
            continue
        if name.endswith("running_var"):
            value = torch.rand_like(value) + 0.5
        else:
            value = value + 0.05 * torch.randn_like(value)
        sd[name] = value.half().float()
    return sd


def save_openai_torchscript(state_dict: Dict[str, torch.Tensor], path: Path) -> Path:
    """Write `state_dict` the way OpenAI published CLIP: OpenAI's model in fp16 (its
    `build_model`), `input_resolution`/`context_length`/`vocab_size` as tensor buffers, traced
    with `forward`, `encode_image` and `encode_text`, saved as a TorchScript archive."""
    from clip.model import build_model
    model = build_model(dict(state_dict))
    res = model.visual.input_resolution
    for name, value in [("input_resolution", res), ("context_length", model.context_length),
                        ("vocab_size", model.vocab_size)]:
        if hasattr(model, name):
            delattr(model, name)
        model.register_buffer(name, torch.tensor(value))
    images = torch.zeros(2, 3, res, res, dtype=torch.float16)
    tokens = torch.zeros(2, model.context_length.item(), dtype=torch.long)
    tokens[:, 0], tokens[:, 1] = 49406, 49407
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace_module(model, {"forward": (images, tokens),
                                                "encode_image": (images,),
                                                "encode_text": (tokens,)}, check_trace=False)
        traced.save(str(path))
    return path


@pytest.fixture(scope="session")
def tiny_vit_state_dict(openai_clip) -> Dict[str, torch.Tensor]:
    """Tiny ViT CLIP (width 64, 2 layers, patch 8, 32 px; text width 64, 2 layers), OpenAI keys."""
    return openai_state_dict(TINY_VIT, seed=0)


@pytest.fixture(scope="session")
def tiny_rn_state_dict(openai_clip) -> Dict[str, torch.Tensor]:
    """Tiny ModifiedResNet CLIP (layers (1,1,1,1), width 8, 64 px), OpenAI keys."""
    return openai_state_dict(TINY_RN, seed=1)


@pytest.fixture(scope="session")
def tiny_vit_checkpoint(tiny_vit_state_dict, tmp_path_factory) -> Path:
    """The tiny ViT as an OpenAI-format TorchScript file (fp16 weights), for `--clip PATH`."""
    return save_openai_torchscript(tiny_vit_state_dict,
                                   tmp_path_factory.mktemp("clip") / "tiny-ViT.pt")


# --------------------------------------------------------------------------- run.py end to end
@pytest.fixture(scope="module")
def run():
    """run.py, imported as a module (its `main(argv)` is called in-process)."""
    import runfixtures as R
    return R.load_run()


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """(tiny CLIP state-dict file, tiny `folder` dataset), built once per test module."""
    import runfixtures as R
    base = tmp_path_factory.mktemp("tiny")
    return R.save_tiny_clip(base / "tiny-clip.pt"), R.make_folder_dataset(base / "data")
