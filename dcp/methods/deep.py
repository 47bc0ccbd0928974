"""Deep prompts in one or both towers, exchanged by a registered fusion module.

One learner serves VPT, IVLP, MaPLe, MuDPT and DCP (and any plugin fusion): they differ only
in which prompts own parameters and which fusion module couples them (docs/methods.md).

    learned: text   ctx (n, Dt) for block 0, text_deep (text_params-1, n, Dt)
             vision vision_ctx (n_v, Dv),    vision_deep (vision_params-1, n_v, Dv)
    fusion:  a PromptFusion maps these per-block lists once per forward (once per evaluation);
             a StateFusion is asked before each block i >= 1 (the contract: dcp/fusion/base.py)
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple

import torch
from torch import Tensor, nn

from ..config import MethodOptions
from ..fusion import Dims, StateFusion, build_fusion, fusion_options
from ..prompting import (class_texts, encode_texts, init_embeddings, prompt_prefix, run_towers,
                         static_step)
from ..registry import METHODS
from .base import PromptModel


@dataclass
class DeepOptions(MethodOptions):
    name: str = "deep"
    variant: str = "paper"          # paper | released (where the released code differs)
    n_ctx: int = 2                  # text prompt tokens per block (0: text tower unprompted)
    n_ctx_vision: int = 2           # vision prompt tokens per block (0: vision unprompted)
    depth: int = 9                  # text blocks 0..depth-1 carry prompts
    depth_vision: int = -1          # vision blocks 0..depth_vision-1; -1 = depth
    text_params: int = -1           # blocks with learned text prompts of their own; -1 = depth
    vision_params: int = -1         # likewise for vision; 0 = made by the fusion module
    init: str = "a photo of a"      # init words for the text slots (n_ctx <= max_init_words)
    max_init_words: int = 4
    fusion: str = "none"            # registered fusion module
    fusion_args: Dict[str, Any] = field(default_factory=dict)   # options of a plugin fusion

    def validate(self):
        if self.variant not in ("paper", "released"):
            raise ValueError(f"variant must be 'paper' or 'released', not {self.variant!r}")
        for k in ("n_ctx", "n_ctx_vision", "depth"):
            if getattr(self, k) < 0:
                raise ValueError(f"{k}={getattr(self, k)}: must be >= 0")
        if (self.n_ctx or self.n_ctx_vision) and self.depth < 1:
            raise ValueError(f"depth={self.depth}: must be >= 1 (block 0 carries the prompts)")
        if self.n_ctx_vision > 0 and self.depth_vision == 0:
            raise ValueError("depth_vision=0: must be >= 1 (or -1 = depth) with vision prompts")
        try:
            fusion_options(self.fusion_name(), self)  # registered, supports this method, options
        except KeyError as e:
            raise ValueError(f"fusion: {e.args[0]}") from None

    def fusion_name(self) -> str:
        return self.fusion

    @property
    def cut_init(self) -> bool:
        """Keep only the first n init words in the prompt (MuDPT's released template)."""
        return False


@METHODS.register("deep")
class DeepPrompts(PromptModel):
    Options = DeepOptions

    def __init__(self, clip, classnames, opts: DeepOptions, template="a photo of a {}.", **switches):
        super().__init__(clip, classnames, opts, template, **switches)
        d = self.dims
        if not d["dv"] and opts.n_ctx_vision:
            raise ValueError(f"method {opts.name!r} puts prompts into a vision transformer; "
                             "this CLIP has a ResNet image tower (use a ViT checkpoint)")
        n, nv = opts.n_ctx, opts.n_ctx_vision
        depth = opts.depth if n else 0
        depth_v = (opts.depth if opts.depth_vision < 0 else opts.depth_vision) if nv else 0
        _check_depth(depth, len(clip.transformer.resblocks), "text", "depth")
        if nv:
            _check_depth(depth_v, len(clip.visual.transformer.resblocks), "vision",
                         "depth" if opts.depth_vision < 0 else "depth_vision")
        self.depth, self.depth_vision = depth, depth_v
        self._fixed_text = None

        prefix, use_init = prompt_prefix(n, opts.init, opts.max_init_words, opts.cut_init)
        self.set_class_texts(class_texts(self.classnames, prefix + " {}."))
        tp = depth if opts.text_params < 0 else min(opts.text_params, depth)    # 0 when n = 0
        vp = depth_v if opts.vision_params < 0 else min(opts.vision_params, depth_v)
        self.text_params, self.vision_params = tp, vp
        if tp:
            self.ctx = nn.Parameter(init_embeddings(clip, opts.init, n) if use_init
                                    else torch.randn(n, d["dt"]) * 0.02)
        if tp > 1:
            self.text_deep = nn.Parameter(torch.randn(tp - 1, n, d["dt"]) * 0.02)
        if vp:
            self.vision_ctx = nn.Parameter(torch.randn(nv, d["dv"]) * 0.02)
        if vp > 1:
            self.vision_deep = nn.Parameter(torch.randn(vp - 1, nv, d["dv"]) * 0.02)
        dims = Dims(d["dt"], d["dv"], d["e"], n, nv, depth, depth_v, tp, vp)
        self.fusion = build_fusion(opts.fusion_name(), dims, opts)

    def banks(self) -> Tuple[List[Optional[Tensor]], List[Optional[Tensor]]]:
        """The learned prompts per block: vision list (depth_vision), text list (depth)."""
        t = [self.ctx] if self.text_params else []
        t += list(self.text_deep) if self.text_params > 1 else []
        v = [self.vision_ctx] if self.vision_params else []
        v += list(self.vision_deep) if self.vision_params > 1 else []
        return (v + [None] * (self.depth_vision - len(v)), t + [None] * (self.depth - len(t)))

    @property
    def coupled(self) -> bool:
        return isinstance(self.fusion, StateFusion)

    def _text(self, text_prompts) -> Tensor:
        """Class text features (C, E) with these per-block text prompts."""
        if self.depth == 0:          # unprompted text tower (VPT): constant features, kept
            key = (self.text_tokens.device, self.clip.dtype)
            if self._fixed_text is None or self._fixed_text[0] != key:
                with torch.no_grad():
                    self._fixed_text = (key, encode_texts(self.clip, self.texts, cut=self.speedups,
                                                          chunk=self.text_chunk))
            return self._fixed_text[1]
        return encode_texts(self.clip, self.texts, static_step(text=text_prompts), self.depth,
                            cut=self.speedups, chunk=self.text_chunk, checkpoint=self.checkpointing)

    def _lockstep(self, images: Optional[Tensor]):
        """A StateFusion's towers in lock-step: the prompt path [SOS, slots] (its states are every
        class's: causal mask), beside the vision tower if `images` is given. Returns the final
        vision states and, per block, the text states entering it and the text prompts written."""
        t_in, t_out = [None], [self.ctx]

        def step(i, v, t):
            if i == 0:
                return self.vision_ctx, self.ctx
            t_in.append(t)
            t_out.append(self.fusion.text(i, t, v if self.training else None))
            return (None if v is None else self.fusion.vision(i, v, t)), t_out[-1]

        prompt_path = self.clip.token_embedding(self.text_tokens[:1, :1 + self.opts.n_ctx])
        v, _ = run_towers(self.clip, images, prompt_path, step, self.depth,
                          checkpoint=self.checkpointing)
        return v, t_in, t_out

    def precompute(self) -> Dict[str, Any]:
        """Image-independent parts: fused prompts (or the per-block text states the visual
        side queries) and the class text features (C, E)."""
        if not self.coupled:
            v, t = self.fusion(*self.banks())
            return {"vision": v, "text": self._text(t)}
        if self.training:
            raise RuntimeError("a StateFusion's text side depends on the batch in training "
                               "mode: call precompute() in eval mode")
        _, t_in, t_out = self._lockstep(None)
        return {"t_in": t_in, "text": self._text(t_out)}

    def forward(self, images: Tensor, cache: Optional[Dict[str, Any]] = None) -> Tensor:
        if self.coupled and cache is None:      # training, or evaluation without the speed-ups
            v, _, t_out = self._lockstep(images)
            return self.logits(self.clip.visual.head(v), self._text(t_out))
        cache = cache or self.precompute()
        if self.coupled:
            t_in = cache["t_in"]
            step = lambda i, v, t: ((self.vision_ctx, None) if i == 0
                                    else (self.fusion.vision(i, v, t_in[i]), None))
        else:
            step = static_step(vision=cache["vision"])
        v, _ = run_towers(self.clip, images, step=step, depth=self.depth_vision,
                          checkpoint=self.checkpointing)
        return self.logits(self.clip.visual.head(v), cache["text"])


def _check_depth(depth: int, blocks: int, tower: str, key: str) -> None:
    if depth > blocks:
        raise ValueError(f"method.{key}={depth} but this CLIP's {tower} tower has only {blocks} "
                         f"blocks: set method.{key}={blocks} (or fewer)")


# ---------------------------------------------------------------------- presets
@METHODS.register("vpt")
class VPT(DeepPrompts):
    @dataclass
    class Options(DeepOptions):
        """VPT-deep: vision prompts only; text = frozen "a photo of a {}."."""
        name: str = "vpt"
        n_ctx: int = 0
        n_ctx_vision: int = 8
        depth: int = 12


@METHODS.register("ivlp")
class IVLP(DeepPrompts):
    @dataclass
    class Options(DeepOptions):
        """Independent vision-language prompts (released config: n 2/2, depth 12/12)."""
        name: str = "ivlp"
        depth: int = 12


@METHODS.register("maple")
class MaPLe(DeepPrompts):
    @dataclass
    class Options(DeepOptions):
        """MaPLe: text prompts per block; vision prompts are Linear_i(text prompt_i)."""
        name: str = "maple"
        depth: int = 9
        vision_params: int = 0
        fusion: str = "maple"


@METHODS.register("mudpt")
class MuDPT(DeepPrompts):
    @dataclass
    class Options(DeepOptions):
        """MuDPT: deep prompts in both towers fused by the Injection Model (docs/methods.md)."""
        name: str = "mudpt"
        depth: int = 9
        fusion: str = ""            # "" = by variant: paper -> injection, released -> linear_injection

        def fusion_name(self) -> str:
            return self.fusion or {"paper": "injection", "released": "linear_injection"}[self.variant]

        @property
        def cut_init(self) -> bool:
            return self.variant == "released"      # "a photo {}." for n = 2


@METHODS.register("dcp")
class DCP(DeepPrompts):
    @dataclass
    class Options(DeepOptions):
        """DCP: shallow prompts T0/V0; CMPA generates every deeper prompt (docs/methods.md)."""
        name: str = "dcp"
        n_ctx: int = 16
        n_ctx_vision: int = 16
        depth: int = 10
        text_params: int = 1
        vision_params: int = 1
        fusion: str = ""            # "" = by variant: paper -> cmpa, released -> cmpa_released
        share: bool = True          # one CMPA module for all blocks (else one per block 1..P-1)
        fusing: str = "mean"        # released: pool over the batch with mean | max | first
        momentum: float = 0.1       # paper: running mean of the visual summary

        def validate(self):
            if self.fusing not in ("mean", "max", "first"):
                raise ValueError(f"fusing must be mean, max or first, not {self.fusing!r}")
            if not 0 < self.momentum <= 1:
                raise ValueError(f"momentum must be in (0, 1], got {self.momentum}")
            super().validate()

        def fusion_name(self) -> str:
            return self.fusion or {"paper": "cmpa", "released": "cmpa_released"}[self.variant]
