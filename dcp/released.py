"""Load prompts trained with the authors' released code: Dassl checkpoints, read with
`torch.load(weights_only=True)` allowing exactly the classes Dassl pickles, fp16 tensors made
fp32 (the layout and the keys read per method: docs/methods.md, "Released checkpoints").

    model.load_released("output/.../MultiModalPromptLearner/model.pth.tar-20")
    model.load_released("output/...")                       # a Dassl output folder works too
"""
from __future__ import annotations

import collections
import re
from pathlib import Path
from typing import Dict, List, Union

import torch
from torch import Tensor
from torch.optim.lr_scheduler import CosineAnnealingLR
from torch.optim.sgd import SGD

from .utils import CorruptFileError, load_torch_file

ALLOWED_GLOBALS = [CosineAnnealingLR, SGD, collections.defaultdict, dict]

# Dassl's registered model name (the sub-folder of the output folder) per method.
FOLDERS = {"coop": "prompt_learner", "cocoop": "prompt_learner", "vpt": "prompt_learner",
           "ivlp": "VLPromptLearner", "maple": "MultiModalPromptLearner",
           "dcp": "MultiModalPromptLearner", "mudpt": "MultimodalDeepPromptTuning"}

# Our key <- the released key, per method. A key ending in "." is a linear layer (its weight
# and bias); "{i}" / "{j}" stack the tensors of blocks i >= 1 / items j >= 0 into one bank.
VPT_KEYS = [("vision_ctx", "image_encoder.VPT"),
            ("vision_deep", "image_encoder.transformer.resblocks.{i}.VPT_shallow")]
KEYS = {
    "coop": [("ctx", "ctx")],
    "cocoop": [("ctx", "ctx"), ("meta_net.linear1.", "meta_net.linear1."),
               ("meta_net.linear2.", "meta_net.linear2.")],
    "vpt": VPT_KEYS,
    "ivlp": [("ctx", "prompt_learner.ctx"),
             ("text_deep", "text_encoder.transformer.resblocks.{i}.VPT_shallow"), *VPT_KEYS],
    "maple": [("ctx", "prompt_learner.ctx"),          # + the projections (convert)
              ("text_deep", "prompt_learner.compound_prompts_text.{j}"),
              ("fusion.proj.0.", "prompt_learner.proj.")],
    "dcp": [("ctx", "prompt_learner.prompts_text"),      # + the CMPA modules (CMPA_NAMES)
            ("vision_ctx", "prompt_learner.prompts_visual")],
    "mudpt": [("ctx", "mudpt_prompt_learner.ctx"), ("text_deep", "mudpt_prompt_learner.deep_prompts"),
              ("vision_ctx", "image_encoder.visual_ctx"),
              ("vision_deep", "image_encoder.visual_ctx_deep_prompts"),
              ("fusion.w_e.", "mudpt_prompt_learner.embed_projection."),
              ("fusion.w_tv.", "mudpt_prompt_learner.deep_projections."),
              ("fusion.w_vt.", "image_encoder.visual_ctx_deep_projections.")]}

# DCP's CMPA module names in the released code -> ours (dcp/fusion/cmpa.py).
CMPA_NAMES = {"promt_attention_visual": "attn_v", "ln_pa_1_visual": "ln_1_v",
              "mlp_pa_visual": "mlp_v", "ln_pa_2_visual": "ln_2_v", "proj_t2v": "t2v",
              "proj_v2t": "v2t", "promt_attention_text": "attn_t", "ln_pa_1_text": "ln_1_t",
              "mlp_pa_text": "mlp_t", "ln_pa_2_text": "ln_2_t"}

# A key only one released family has, to say what a file that does not fit actually is.
SIGNATURES = [("prompt_learner.prompts_text", "DCP (CMPA)"),
              ("prompt_learner.compound_prompts_text.0", "MaPLe"), ("mudpt_prompt_learner.ctx", "MuDPT"),
              ("text_encoder.transformer.resblocks.1.VPT_shallow", "IVLP"),
              ("image_encoder.VPT", "VPT-deep"), ("meta_net.linear1.weight", "CoCoOp"), ("ctx", "CoOp")]


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
        files = sorted(d.glob("model.pth.tar-*"), key=_epoch)
        if files:
            return files[-1]
        if (d / "model-best.pth.tar").is_file():
            return d / "model-best.pth.tar"
    raise ReleasedCheckpointError(
        f"no released checkpoint in {path}: expected {path}/{folder}/model.pth.tar-<epoch> "
        f"(Dassl's layout for method {method!r}) or a model.pth.tar-<epoch> file")


def _epoch(file: Path) -> int:
    suffix = file.name.rsplit("-", 1)[1]
    return int(suffix) if suffix.isdigit() else -1


def read_state_dict(path: Union[str, Path]) -> Dict[str, Tensor]:
    """The `state_dict` of a Dassl checkpoint as fp32 tensors, read without running code."""
    try:
        ckpt = load_torch_file(path, allowed=ALLOWED_GLOBALS)
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


def _bank(sd: Dict[str, Tensor], pattern: str) -> List[Tensor]:
    """The tensors whose key matches `pattern`, by index ("{i}": blocks i >= 1, "{j}": j >= 0)."""
    index = "{i}" if "{i}" in pattern else "{j}"
    rx = re.compile(re.escape(pattern).replace(re.escape(index), r"(\d+)") + "$")
    found = sorted((int(m.group(1)), v) for k, v in sd.items() if (m := rx.match(k)))
    return [v for i, v in found if i >= (1 if index == "{i}" else 0)]


def convert(model, sd: Dict[str, Tensor]) -> Dict[str, Tensor]:
    """A released state dict -> this model's `trainable_state_dict()` keys."""
    name = model.opts.name
    if name not in KEYS:
        raise ReleasedCheckpointError(f"method {name!r} has no released checkpoint format; "
                                      f"supported: {', '.join(KEYS)}")
    if name in ("dcp", "mudpt") and model.opts.variant != "released":
        raise ReleasedCheckpointError(
            f"checkpoints of the released {name.upper()} code load into `variant: released` "
            f"(this model is variant {model.opts.variant!r})")
    rules = list(KEYS[name])
    if name == "maple":     # fusion.proj.{j + 1} <- compound_prompt_projections.{j}, j = 0, 1, ...
        j = 0
        while f"prompt_learner.compound_prompt_projections.{j}.weight" in sd:
            rules.append((f"fusion.proj.{j + 1}.", f"prompt_learner.compound_prompt_projections.{j}."))
            j += 1
    ours = {}
    try:
        for key, theirs in rules:
            if theirs.endswith("."):
                for param in ("weight", "bias"):
                    ours[key + param] = sd[theirs + param]
            elif "{" in theirs:
                bank = _bank(sd, theirs)
                if bank:
                    ours[key] = torch.stack(bank)
            else:
                ours[key] = sd[theirs]
    except KeyError as e:
        raise ReleasedCheckpointError(f"the file does not fit method {name!r}: key {e.args[0]!r} "
                                      f"is missing; {_what_is(sd)}") from None
    if name == "dcp":
        ours.update(_cmpa(sd, len(model.fusion.blocks), model.opts.share))
    return ours


def _cmpa(sd: Dict[str, Tensor], blocks: int, shared: bool) -> Dict[str, Tensor]:
    """DCP's CMPA modules: block b of ours serves transformer block i = b + 1 (the released
    modules at block 0 and at blocks >= P are not used); a shared one (share: true) is read
    from the lowest block that holds it."""
    lowest = min((int(m.group(1)) for k in sd
                  if (m := re.match(r"encoder\.resblocks\.(\d+)\.prompt_attn\.", k))), default=1)
    ours = {}
    for b in range(blocks):
        for old, new in CMPA_NAMES.items():
            src = f"encoder.resblocks.{lowest if shared else b + 1}.prompt_attn.{old}."
            ours.update({f"fusion.blocks.{b}.{new}.{k[len(src):]}": v
                         for k, v in sd.items() if k.startswith(src)})
    return ours


def _what_is(sd: Dict[str, Tensor]) -> str:
    for key, family in SIGNATURES:
        if key in sd:
            return f"it looks like a {family} checkpoint"
    return "it matches no released method"


def load_released(model, path: Union[str, Path]) -> Path:
    """Load a released checkpoint into `model` (shapes checked); returns the file read."""
    file = find_checkpoint(path, model.opts.name)
    sd = read_state_dict(file)
    try:
        model.load_trainable_state_dict(convert(model, sd))
    except ValueError as e:
        raise ReleasedCheckpointError(f"{file}: {e}; {_what_is(sd)}") from None
    return file
