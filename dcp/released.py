"""Load prompts trained with the authors' released code (Dassl checkpoints; the keys read per
method: docs/methods.md, "Released checkpoints").

    model = build_method(cfg.method, clip, classnames)     # e.g. dcp with variant: released
    model.load_released("output/.../MultiModalPromptLearner/model.pth.tar-20")
    model.load_released("output/...")                       # a Dassl output folder works too

Dassl pickles its scheduler, which holds a `CosineAnnealingLR` and the `SGD` optimiser, so
the file is read with `torch.load(weights_only=True)` and exactly those classes allowed;
nothing else in it can run. Tensors may be fp16 (the released default); they become fp32.
"""
from __future__ import annotations

import collections
import re
import zipfile
from pathlib import Path
from typing import Callable, Dict, List, Tuple, Union

import torch
from torch import Tensor
from torch.optim.lr_scheduler import CosineAnnealingLR
from torch.optim.sgd import SGD

from .utils import CorruptFileError, verify_zip

ALLOWED_GLOBALS = [CosineAnnealingLR, SGD, collections.defaultdict, dict]

# Dassl's registered model name (the sub-folder of the output folder) per method.
FOLDERS = {"coop": "prompt_learner", "cocoop": "prompt_learner", "vpt": "prompt_learner",
           "ivlp": "VLPromptLearner", "maple": "MultiModalPromptLearner",
           "dcp": "MultiModalPromptLearner", "mudpt": "MultimodalDeepPromptTuning"}

# A key only one released family has, to say what a file that does not fit actually is.
SIGNATURES = [("prompt_learner.prompts_text", "DCP (CMPA)"),
              ("prompt_learner.compound_prompts_text.0", "MaPLe"),
              ("mudpt_prompt_learner.ctx", "MuDPT"),
              ("text_encoder.transformer.resblocks.1.VPT_shallow", "IVLP"),
              ("image_encoder.VPT", "VPT-deep"),
              ("meta_net.linear1.weight", "CoCoOp"),
              ("ctx", "CoOp")]

# DCP's CMPA module names in the released code -> ours (dcp/fusion/cmpa.py).
CMPA_NAMES = {"promt_attention_visual": "attn_v", "ln_pa_1_visual": "ln_1_v",
              "mlp_pa_visual": "mlp_v", "ln_pa_2_visual": "ln_2_v", "proj_t2v": "t2v",
              "proj_v2t": "v2t", "promt_attention_text": "attn_t", "ln_pa_1_text": "ln_1_t",
              "mlp_pa_text": "mlp_t", "ln_pa_2_text": "ln_2_t"}


class ReleasedCheckpointError(ValueError):
    """A released checkpoint that is missing, unreadable, or does not fit the model."""


def find_checkpoint(path: Union[str, Path], method: str) -> Path:
    """A `model.pth.tar-N` file, or the newest one in a Dassl output folder."""
    path = Path(path)
    if path.is_file():
        return path
    if not path.is_dir():
        raise ReleasedCheckpointError(f"released checkpoint not found: {path}")
    folder = FOLDERS.get(method, "")
    for d in (path, path / folder):
        files = sorted(d.glob("model.pth.tar-*"), key=lambda p: int(p.name.rsplit("-", 1)[1])
                       if p.name.rsplit("-", 1)[1].isdigit() else -1)
        if files:
            return files[-1]
        if (d / "model-best.pth.tar").is_file():
            return d / "model-best.pth.tar"
    raise ReleasedCheckpointError(
        f"no released checkpoint in {path}: expected {path}/{folder}/model.pth.tar-<epoch> "
        f"(Dassl's layout for method {method!r}) or a model.pth.tar-<epoch> file")


def read_state_dict(path: Union[str, Path]) -> Dict[str, Tensor]:
    """The `state_dict` of a Dassl checkpoint as fp32 tensors, read without running code."""
    try:
        if zipfile.is_zipfile(path):
            verify_zip(path)        # CRCs and size: torch.load itself checks neither
        with torch.serialization.safe_globals(ALLOWED_GLOBALS):
            ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except CorruptFileError as e:
        raise ReleasedCheckpointError(str(e)) from None
    except Exception as e:  # pickle, zip and weights-only errors all mean: not a usable file
        raise ReleasedCheckpointError(
            f"cannot read {path} as a checkpoint of the released code (only tensors and "
            f"{', '.join(c.__name__ for c in ALLOWED_GLOBALS)} are allowed): {e}") from None
    sd = ckpt.get("state_dict", ckpt) if isinstance(ckpt, dict) else None
    if not isinstance(sd, dict) or not all(isinstance(v, Tensor) for v in sd.values()):
        raise ReleasedCheckpointError(f"{path} holds no state dict of tensors")
    return {k: v.float() if v.is_floating_point() else v for k, v in sd.items()}


def _need(sd: Dict[str, Tensor], key: str) -> Tensor:
    if key not in sd:
        raise KeyError(key)
    return sd[key]


def _stack(sd: Dict[str, Tensor], pattern: str, first: int) -> List[Tensor]:
    """Tensors whose key matches `pattern` (one `{}` for an index >= first), by index."""
    rx = re.compile(re.escape(pattern).replace(r"\{\}", r"(\d+)") + "$")
    found = sorted((int(m.group(1)), v) for k, v in sd.items() if (m := rx.match(k)))
    return [v for i, v in found if i >= first]


def _linear(sd, src: str, dst: str) -> Dict[str, Tensor]:
    return {f"{dst}.weight": _need(sd, f"{src}.weight"), f"{dst}.bias": _need(sd, f"{src}.bias")}


def _bank(ours: Dict[str, Tensor], name: str, deep: List[Tensor]) -> None:
    if deep:
        ours[name] = torch.stack(deep)


def _coop(sd, model) -> Dict[str, Tensor]:
    ours = {"ctx": _need(sd, "ctx")}
    if model.opts.name == "cocoop":
        ours.update(_linear(sd, "meta_net.linear1", "meta_net.linear1"))
        ours.update(_linear(sd, "meta_net.linear2", "meta_net.linear2"))
    return ours


def _vision_vpt(sd, ours) -> None:
    ours["vision_ctx"] = _need(sd, "image_encoder.VPT")
    _bank(ours, "vision_deep", _stack(sd, "image_encoder.transformer.resblocks.{}.VPT_shallow", 1))


def _vpt(sd, model):
    ours: Dict[str, Tensor] = {}
    _vision_vpt(sd, ours)
    return ours


def _ivlp(sd, model):
    ours = {"ctx": _need(sd, "prompt_learner.ctx")}
    _bank(ours, "text_deep", _stack(sd, "text_encoder.transformer.resblocks.{}.VPT_shallow", 1))
    _vision_vpt(sd, ours)
    return ours


def _maple(sd, model):
    ours = {"ctx": _need(sd, "prompt_learner.ctx")}
    _bank(ours, "text_deep", _stack(sd, "prompt_learner.compound_prompts_text.{}", 0))
    ours.update(_linear(sd, "prompt_learner.proj", "fusion.proj.0"))
    j = 0
    while f"prompt_learner.compound_prompt_projections.{j}.weight" in sd:
        ours.update(_linear(sd, f"prompt_learner.compound_prompt_projections.{j}",
                            f"fusion.proj.{j + 1}"))
        j += 1
    return ours


def _dcp(sd, model):
    ours = {"ctx": _need(sd, "prompt_learner.prompts_text"),
            "vision_ctx": _need(sd, "prompt_learner.prompts_visual")}
    blocks = model.fusion.blocks
    for b in range(len(blocks)):
        i = 1 + b                       # block b of ours serves transformer block i
        if len(blocks) == 1:            # shared: the same tensors stand under every index
            i = min((int(m.group(1)) for k in sd
                     if (m := re.match(r"encoder\.resblocks\.(\d+)\.prompt_attn\.", k))),
                    default=1)
        src = f"encoder.resblocks.{i}.prompt_attn."
        for old, new in CMPA_NAMES.items():
            for k, v in sd.items():
                if k.startswith(src + old + "."):
                    ours[f"fusion.blocks.{b}.{new}." + k[len(src + old) + 1:]] = v
    return ours


def _mudpt(sd, model):
    ours = {"ctx": _need(sd, "mudpt_prompt_learner.ctx"),
            "text_deep": _need(sd, "mudpt_prompt_learner.deep_prompts"),
            "vision_ctx": _need(sd, "image_encoder.visual_ctx"),
            "vision_deep": _need(sd, "image_encoder.visual_ctx_deep_prompts")}
    ours.update(_linear(sd, "mudpt_prompt_learner.embed_projection", "fusion.w_e"))
    ours.update(_linear(sd, "mudpt_prompt_learner.deep_projections", "fusion.w_tv"))
    ours.update(_linear(sd, "image_encoder.visual_ctx_deep_projections", "fusion.w_vt"))
    return ours


CONVERTERS: Dict[str, Callable] = {"coop": _coop, "cocoop": _coop, "vpt": _vpt, "ivlp": _ivlp,
                                   "maple": _maple, "dcp": _dcp, "mudpt": _mudpt}


def _what_is(sd: Dict[str, Tensor]) -> str:
    for key, family in SIGNATURES:
        if key in sd:
            return f"it looks like a {family} checkpoint"
    return "it matches no released method"


def convert(model, sd: Dict[str, Tensor]) -> Dict[str, Tensor]:
    """A released state dict -> this model's `trainable_state_dict()` keys."""
    name = model.opts.name
    if name not in CONVERTERS:
        raise ReleasedCheckpointError(f"method {name!r} has no released checkpoint format; "
                                      f"supported: {', '.join(CONVERTERS)}")
    if name in ("dcp", "mudpt") and model.opts.variant != "released":
        raise ReleasedCheckpointError(
            f"checkpoints of the released {name.upper()} code load into `variant: released` "
            f"(this model is variant {model.opts.variant!r})")
    try:
        ours = CONVERTERS[name](sd, model)
    except KeyError as e:
        raise ReleasedCheckpointError(f"the file does not fit method {name!r}: key {e.args[0]!r} "
                                      f"is missing; {_what_is(sd)}") from None
    return ours


def load_released(model, path: Union[str, Path]) -> Path:
    """Load a released checkpoint into `model` (shapes checked); returns the file read."""
    file = find_checkpoint(path, model.opts.name)
    sd = read_state_dict(file)
    try:
        model.load_trainable_state_dict(convert(model, sd))
    except ValueError as e:
        raise ReleasedCheckpointError(f"{file}: {e}; {_what_is(sd)}") from None
    return file
