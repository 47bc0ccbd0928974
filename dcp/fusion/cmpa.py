"""DCP's Cross-Modal Prompt Attention (docs/methods.md, "DCP").

Each tower's prompt states attend to themselves with the *other* tower's prompts as queries:

    v' = v + MHA_v(q=LN1_v(W_t2v t), k=v=LN1_v(v));   v' = v' + MLP_v(LN2_v(v'))
    t' = t + MHA_t(q=LN1_t(W_v2t v), k=t=LN1_t(t));   t' = t' + MLP_t(LN2_t(t'))
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Optional

import torch
from torch import Tensor, nn

from ..clip.model import LayerNorm, QuickGELU
from ..registry import FUSIONS
from .base import StateFusion


def _mlp(d: int) -> nn.Sequential:
    return nn.Sequential(OrderedDict([("c_fc", nn.Linear(d, 4 * d)), ("gelu", QuickGELU()),
                                      ("c_proj", nn.Linear(4 * d, d))]))


class CMPABlock(nn.Module):
    """One CMPA module (11,027,968 parameters at ViT-B/16)."""

    def __init__(self, dt: int, dv: int):
        super().__init__()
        self.attn_v = nn.MultiheadAttention(dv, dv // 64, batch_first=True)
        self.ln_1_v, self.mlp_v, self.ln_2_v = LayerNorm(dv), _mlp(dv), LayerNorm(dv)
        self.attn_t = nn.MultiheadAttention(dt, dt // 64, batch_first=True)
        self.ln_1_t, self.mlp_t, self.ln_2_t = LayerNorm(dt), _mlp(dt), LayerNorm(dt)
        self.t2v = nn.Linear(dt, dv)
        self.v2t = nn.Linear(dv, dt)

    def vision(self, v: Tensor, t: Tensor) -> Tensor:
        """v (B, n, Dv) queried by t (B or 1, n, Dt) -> v' (B, n, Dv)."""
        q = self.ln_1_v(self.t2v(t)).expand(v.shape[0], -1, -1)
        kv = self.ln_1_v(v)
        v = v + self.attn_v(q, kv, kv, need_weights=False)[0]
        return v + self.mlp_v(self.ln_2_v(v))

    def text(self, t: Tensor, v: Tensor) -> Tensor:
        """t (1, n, Dt) queried by v (1, n, Dv) -> t' (1, n, Dt)."""
        q = self.ln_1_t(self.v2t(v))
        kv = self.ln_1_t(t)
        t = t + self.attn_t(q, kv, kv, need_weights=False)[0]
        return t + self.mlp_t(self.ln_2_t(t))


class _CMPA(StateFusion):
    supports = ("dcp",)

    def __init__(self, dims, *, share: bool):
        super().__init__(dims)
        self.require_coupled()
        if not (dims.text_params and dims.vision_params):
            raise ValueError(f"{type(self).__name__} generates prompts from both towers' states: "
                             "it needs learned shallow prompts in both (text_params >= 1, "
                             "vision_params >= 1)")
        count = 1 if share else dims.depth - 1
        self.blocks = nn.ModuleList(CMPABlock(dims.dt, dims.dv) for _ in range(count))

    def block(self, i: int) -> CMPABlock:
        return self.blocks[0] if len(self.blocks) == 1 else self.blocks[i - 1]

    def _f32(self, x: Tensor) -> Tensor:
        return x.to(self.blocks[0].t2v.weight.dtype)


@FUSIONS.register("cmpa")
class CMPA(_CMPA):
    """This project's reading of the paper (docs/methods.md, "DCP", `variant: paper`): each
    image updates its own visual prompts; the text side is queried by the visual summary v_bar,
    the batch mean in training, the running mean `running_v` (P-1, n, Dv) at evaluation."""

    def __init__(self, dims, *, share: bool, momentum: float):
        super().__init__(dims, share=share)
        self.momentum = momentum
        self.register_buffer("running_v", torch.zeros(dims.depth - 1, dims.n_vision, dims.dv))

    def summary(self, i: int, v: Optional[Tensor]) -> Tensor:
        """v_bar for block i: (1, n, Dv)."""
        if self.training:
            if v is None:
                raise RuntimeError("CMPA needs the visual prompt states in training mode")
            v_bar = v.mean(dim=0)
            with torch.no_grad():
                self.running_v[i - 1].lerp_(v_bar.detach(), self.momentum)
            return v_bar[None]
        return self.running_v[i - 1][None]

    def text(self, i: int, t: Tensor, v: Optional[Tensor]) -> Tensor:
        return self.block(i).text(self._f32(t), self.summary(i, None if v is None else self._f32(v)))

    def vision(self, i: int, v: Tensor, t: Tensor) -> Tensor:
        return self.block(i).vision(self._f32(v), self._f32(t))


@FUSIONS.register("cmpa_released")
class CMPAReleased(_CMPA):
    """The released code (docs/methods.md, "DCP", `variant: released`): visual states pooled
    over the batch (`fusing`), the one result broadcast to every image; the fused text is never
    written back, so its half is not computed here (it could not change any output)."""
    batch_dependent = True          # an image's prediction depends on its test batch

    def __init__(self, dims, *, share: bool, fusing: str):
        super().__init__(dims, share=share)
        self.fusing = fusing

    def pool(self, x: Tensor) -> Tensor:
        """(N, n, D) -> (n, D) over the batch (or class) dimension."""
        if self.fusing == "mean":
            return x.mean(dim=0)
        if self.fusing == "max":
            return x.max(dim=0).values
        return x[0]

    def text(self, i: int, t: Tensor, v: Optional[Tensor]) -> None:
        return None

    def vision(self, i: int, v: Tensor, t: Tensor) -> Tensor:
        v, t = self._f32(v), self._f32(t)
        return self.block(i).vision(self.pool(v)[None], self.pool(t)[None])[0]   # (n, Dv)
