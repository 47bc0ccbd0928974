"""MuDPT's Injection Model (docs/methods.md, "MuDPT"): fuses the deep prompts of both towers."""
from __future__ import annotations

from typing import Tuple

import torch
from torch import nn

from ..registry import FUSIONS
from .base import PromptFusion, Prompts


@FUSIONS.register("injection")
class InjectionModel(PromptFusion):
    """The paper's modality-agnostic transformer, shared by all depths (this project's reading).

    Per depth i >= 1: s = [T_i ; W_in V_i] + modality embedding (2n, Dt) -> one post-norm
    TransformerEncoderLayer -> tokens :n through W_tv give T'_i (n, Dv), tokens n: through
    W_vt give V'_i (n, Dt). Text block i receives T_i + V'_i, vision block i V_i + T'_i.
    Block 0 is not fused.
    """
    supports = ("mudpt",)

    def __init__(self, dims):
        super().__init__(dims)
        self.require_coupled()
        dt, dv = dims.dt, dims.dv
        self.w_in = nn.Linear(dv, dt)
        self.modality = nn.Parameter(torch.randn(2, dt) * 0.02)
        self.encoder = nn.TransformerEncoderLayer(dt, dt // 64, 4 * dt, dropout=0.0,
                                                  activation="gelu", batch_first=True)
        self.w_tv = nn.Linear(dt, dv)
        self.w_vt = nn.Linear(dt, dt)

    def forward(self, v: Prompts, t: Prompts) -> Tuple[Prompts, Prompts]:
        n = self.dims.n_text
        if len(t) < 2:
            return v, t
        T, V = torch.stack(t[1:]), torch.stack(v[1:])                   # (P-1, n, Dt/Dv)
        mod = self.modality.repeat_interleave(n, dim=0)                  # (2n, Dt)
        s = self.encoder(torch.cat([T, self.w_in(V)], dim=1) + mod)      # (P-1, 2n, Dt)
        t_to_v, v_to_t = self.w_tv(s[:, :n]), self.w_vt(s[:, n:])
        return ([v[0]] + list(V + t_to_v)), ([t[0]] + list(T + v_to_t))


@FUSIONS.register("linear_injection")
class LinearInjection(PromptFusion):
    """The released code's injection: three Linears shared across depths.

    Block 0: V0 + W_e T0. Block i >= 1: text T_i + W_vt V_i, vision V_i + W_tv T_i.
    W_vt outputs the joint width E, so this needs E == Dt.
    """
    supports = ("mudpt",)

    def __init__(self, dims):
        super().__init__(dims)
        self.require_coupled()
        if dims.e != dims.dt:
            raise ValueError(f"MuDPT 'released' maps visual prompts to the joint width E={dims.e}, "
                             f"which must equal the text width Dt={dims.dt} (true for ViT-B/16, L/14)")
        self.w_e = nn.Linear(dims.dt, dims.dv)
        self.w_tv = nn.Linear(dims.dt, dims.dv)
        self.w_vt = nn.Linear(dims.dv, dims.e)

    def forward(self, v: Prompts, t: Prompts) -> Tuple[Prompts, Prompts]:
        v_out = [v[0] + self.w_e(t[0])] + [v_i + self.w_tv(t_i) for v_i, t_i in zip(v[1:], t[1:])]
        t_out = [t[0]] + [t_i + self.w_vt(v_i) for v_i, t_i in zip(v[1:], t[1:])]
        return v_out, t_out
