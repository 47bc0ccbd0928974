"""What every method is: a frozen CLIP plus a few learnable prompt tensors.

    model = build_method(cfg.method, clip, classnames, template="a photo of a {}.")
    logits = model(images)                    # (B, C); train mode: everything recomputed
    model.eval()
    with torch.no_grad():
        cache = model.precompute()            # all that does not depend on the image
        logits = model(images, cache)         # the same logits, far cheaper per batch

Switches, fixed for the model's life: `speedups=False` runs the reference path (77-token text,
nothing cached: the released code's computation, the same logits), `checkpointing=True`
recomputes block activations in the backward pass, `text_chunk` classes go through the text
tower at a time.
"""
from __future__ import annotations

import functools
import logging
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..clip.model import CLIP
from ..config import MethodOptions
from ..prompting import ClassTexts, duplicate_classnames, prompt_classname
from ..registry import METHODS

log = logging.getLogger(__name__)


class PromptModel(nn.Module):
    """Base of all methods. Subclasses set `Options` and implement `precompute`/`forward`."""

    Options = MethodOptions

    def __init__(self, clip: CLIP, classnames: Sequence[str], opts: MethodOptions,
                 template: str = "a photo of a {}.", *, speedups: bool = True,
                 checkpointing: bool = False, text_chunk: int = 512):
        super().__init__()
        _warn_duplicates(tuple(classnames))
        self.clip = clip.requires_grad_(False).eval()
        self.opts = opts
        self.classnames = [prompt_classname(c) for c in classnames]
        self.template = template
        self.speedups = speedups          # cut text to the longest EOS, cache (module docstring)
        self.checkpointing = checkpointing
        self.text_chunk = text_chunk      # classes per text-tower call

    def set_class_texts(self, texts: ClassTexts) -> None:
        """Keep the tokenised class prompts as (non-saved) buffers so they follow `.to()`."""
        self.register_buffer("text_tokens", texts.tokens, persistent=False)
        self.register_buffer("text_eot", texts.eot, persistent=False)

    @property
    def texts(self) -> ClassTexts:
        return ClassTexts(self.text_tokens, self.text_eot)

    def train(self, mode: bool = True):
        super().train(mode)
        self.clip.eval()          # the backbone stays frozen (BatchNorm statistics too)
        return self

    @property
    def dims(self) -> Dict[str, int]:
        """Widths read from the loaded CLIP: text Dt, vision Dv, joint E."""
        v = self.clip.visual
        dv = v.conv1.weight.shape[0] if hasattr(v, "class_embedding") else 0
        return {"dt": self.clip.ln_final.weight.shape[0], "dv": dv,
                "e": self.clip.text_projection.shape[1]}

    def frozen_image_features(self, images: Tensor) -> Tensor:
        """(B, 3, R, R) -> (B, E) through the unprompted image tower (no graph is kept)."""
        with torch.no_grad():
            return self.clip.encode_image(images)

    def logits(self, f_img: Tensor, f_txt: Tensor) -> Tensor:
        """exp(logit_scale) * cos similarity: (B, E) x (C, E) -> (B, C); (B, C, E) per image."""
        f_img = F.normalize(f_img.float(), dim=-1)
        f_txt = F.normalize(f_txt.float(), dim=-1)
        scale = self.clip.logit_scale.exp().float()
        if f_txt.dim() == 3:
            return scale * torch.einsum("be,bce->bc", f_img, f_txt)
        return scale * f_img @ f_txt.t()

    def precompute(self) -> Optional[Dict[str, Any]]:
        """Everything image-independent (class text features, fused prompts), or None."""
        return None

    def forward(self, images: Tensor, cache: Optional[Dict[str, Any]] = None) -> Tensor:
        """(B, 3, R, R) -> (B, C): the frozen image features against the cached class text
        features (zero-shot, CoOp; methods with prompts on the image side override this)."""
        cache = cache or self.precompute()
        return self.logits(self.frozen_image_features(images), cache["text"])

    # ---------------------------------------------------------------- checkpoints
    def trainable_state_dict(self) -> Dict[str, Tensor]:
        """Learned tensors and method buffers: everything except the frozen CLIP."""
        return {k: v for k, v in self.state_dict().items() if not k.startswith("clip.")}

    def load_trainable_state_dict(self, sd: Dict[str, Tensor]) -> None:
        own = self.trainable_state_dict()
        missing, extra = sorted(set(own) - set(sd)), sorted(set(sd) - set(own))
        bad = [k for k in own if k in sd and own[k].shape != sd[k].shape]
        if missing or extra or bad:
            raise ValueError(
                f"checkpoint does not fit method {self.opts.name!r}: missing {missing}, "
                f"unexpected {extra}, wrong shape "
                f"{[(k, tuple(sd[k].shape), tuple(own[k].shape)) for k in bad]}")
        self.load_state_dict(sd, strict=False)

    def load_released(self, path) -> None:
        """Load prompts trained with the authors' released code (see `dcp.released`)."""
        from ..released import load_released
        load_released(self, path)

    def trainable_parameters(self) -> List[nn.Parameter]:
        return [p for p in self.parameters() if p.requires_grad]

    def num_trainable(self) -> int:
        return sum(p.numel() for p in self.trainable_parameters())


@functools.lru_cache(maxsize=None)
def _warn_duplicates(classnames: Tuple[str, ...]) -> None:
    """Once per class list and process (a run builds its model several times); run.py refuses
    such names for users' data, ImageNet's published list has two pairs."""
    duplicates = duplicate_classnames(classnames)
    if duplicates:
        log.warning("class names equal in a prompt get the same text features; only the first "
                    "of each can be predicted: %s", "; ".join(
                        " = ".join(map(repr, d[:3])) for d in duplicates[:5])[:300])


def build_method(opts: MethodOptions, clip: CLIP, classnames: Sequence[str],
                 template: str = "a photo of a {}.", **switches) -> PromptModel:
    """Instantiate the method registered under `opts.name`; `switches`: speedups,
    checkpointing, text_chunk (see the module docstring)."""
    cls = METHODS.get(opts.name)
    if not isinstance(opts, cls.Options):
        raise TypeError(f"method {opts.name!r} expects {cls.Options.__qualname__}, "
                        f"got {type(opts).__qualname__}")
    return cls(clip, classnames, opts, template=template, **switches)
