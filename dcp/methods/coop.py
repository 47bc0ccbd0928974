"""Zero-shot CLIP, CoOp and CoCoOp: prompts in the text input only (docs/methods.md)."""
from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Dict, Optional

import torch
from torch import Tensor, nn

from ..config import MethodOptions
from ..prompting import (class_texts, encode_texts, init_embeddings, init_words, prompt_prefix,
                         static_step)
from ..registry import METHODS
from .base import PromptModel


@METHODS.register("zeroshot")
class ZeroShot(PromptModel):
    """CLIP with one hand-written template per dataset; nothing is learned."""

    @dataclass
    class Options(MethodOptions):
        name: str = "zeroshot"
        template: str = ""        # "" = the dataset's CoOp template, e.g. "a photo of a {}."

        def validate(self):
            if self.template and self.template.count("{}") != 1:
                raise ValueError(f"template must hold one {{}} where the class name goes, got "
                                 f"{self.template[:80]!r}")

    def __init__(self, clip, classnames, opts: Options, template="a photo of a {}.", **switches):
        super().__init__(clip, classnames, opts, template, **switches)
        self.set_class_texts(class_texts(self.classnames, opts.template or template))

    def precompute(self) -> Dict[str, Tensor]:
        return {"text": encode_texts(self.clip, self.texts, cut=self.speedups, chunk=self.text_chunk)}


@METHODS.register("coop")
class CoOp(PromptModel):
    """Learned context vectors replace the words before (around) the class name.

    end:    [SOS][ctx][class .][EOS];  middle: [SOS][ctx/2][class][ctx/2][.][EOS];
    front:  [SOS][class][ctx][.][EOS]. ctx: (n, Dt), or (C, n, Dt) class-specific.
    """

    @dataclass
    class Options(MethodOptions):
        name: str = "coop"
        n_ctx: int = 16
        init: str = ""                        # init words; n_ctx becomes their count
        class_token_position: str = "end"     # end | middle | front
        class_specific: bool = False          # one context per class (C, n, Dt)

        def validate(self):
            if self.class_token_position not in ("end", "middle", "front"):
                raise ValueError(f"class_token_position must be end, middle or front, "
                                 f"not {self.class_token_position!r}")
            if self.n_ctx < 1 and not self.init:
                raise ValueError("n_ctx must be >= 1")

    def __init__(self, clip, classnames, opts: Options, template="a photo of a {}.", **switches):
        super().__init__(clip, classnames, opts, template, **switches)
        n = len(init_words(opts.init)) or opts.n_ctx
        prefix, use_init = prompt_prefix(n, opts.init)
        self.set_class_texts(class_texts(self.classnames, prefix + " {}."))
        C, dt = len(self.classnames), self.dims["dt"]
        shape = (C, n, dt) if opts.class_specific else (n, dt)
        ctx = (init_embeddings(clip, opts.init, n).expand(shape).clone() if use_init
               else torch.randn(shape) * 0.02)
        self.ctx = nn.Parameter(ctx)
        self.register_buffer("order", self._order(opts.class_token_position, n), persistent=False)

    def _order(self, position: str, n: int) -> Tensor:
        """(C, 77) gather index turning the `end` layout into `middle` or `front`."""
        order = torch.arange(self.text_tokens.shape[1]).repeat(len(self.classnames), 1)
        if position == "end":
            return order
        name_lengths = class_texts(self.classnames, "{}").eot - 1     # tokens per class name
        for c, k in enumerate(name_lengths.tolist()):
            ctx, name = list(range(1, 1 + n)), list(range(1 + n, 1 + n + k))
            new = ctx[:n // 2] + name + ctx[n // 2:] if position == "middle" else name + ctx
            order[c, 1:1 + n + k] = torch.tensor(new)
        return order

    def embeddings(self) -> Tensor:
        """Class prompt embeddings without positions: (C, 77, Dt)."""
        emb = self.clip.token_embedding(self.text_tokens)
        ctx = self.ctx.to(emb.dtype).expand(emb.shape[0], -1, -1)
        emb = torch.cat([emb[:, :1], ctx, emb[:, 1 + ctx.shape[1]:]], dim=1)
        return emb.gather(1, self.order.unsqueeze(-1).expand_as(emb))

    def precompute(self) -> Dict[str, Tensor]:
        return {"text": encode_texts(self.clip, self.texts, cut=self.speedups, chunk=self.text_chunk,
                                     embeds=self.embeddings(), checkpoint=self.checkpointing)}


@METHODS.register("cocoop")
class CoCoOp(PromptModel):
    """Context conditioned on the image: ctx_i = ctx + meta_net(norm(f_img_i)).

    meta_net: Linear(E, E//16) - ReLU - Linear(E//16, Dt). The text tower runs once per
    image, so nothing can be cached across images.
    """

    @dataclass
    class Options(MethodOptions):
        name: str = "cocoop"
        n_ctx: int = 4
        init: str = "a photo of a"

    def __init__(self, clip, classnames, opts: Options, template="a photo of a {}.", **switches):
        super().__init__(clip, classnames, opts, template, **switches)
        n = len(init_words(opts.init)) or opts.n_ctx
        prefix, use_init = prompt_prefix(n, opts.init)
        self.set_class_texts(class_texts(self.classnames, prefix + " {}."))
        d = self.dims
        self.ctx = nn.Parameter(init_embeddings(clip, opts.init, n) if use_init
                                else torch.randn(n, d["dt"]) * 0.02)
        self.meta_net = nn.Sequential(OrderedDict([
            ("linear1", nn.Linear(d["e"], d["e"] // 16)),
            ("relu", nn.ReLU(inplace=True)),
            ("linear2", nn.Linear(d["e"] // 16, d["dt"])),
        ]))

    def forward(self, images: Tensor, cache: Optional[Dict[str, Any]] = None) -> Tensor:
        f_img = self.frozen_image_features(images)                           # (B, E)
        shift = self.meta_net(f_img.float() / f_img.float().norm(dim=-1, keepdim=True))
        ctx = self.ctx + shift[:, None]                                      # (B, n, Dt)
        f_txt = torch.stack([
            encode_texts(self.clip, self.texts, static_step(text=[c]), depth=1, cut=self.speedups,
                         chunk=self.text_chunk, checkpoint=self.checkpointing)
            for c in ctx])                                                   # (B, C, E)
        return self.logits(f_img, f_txt)
