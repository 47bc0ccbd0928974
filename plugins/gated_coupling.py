"""Example fusion plugin: IVLP's independent prompts plus a gated exchange between towers.

    v_i <- v_i + tanh(a_i) * W_tv t_i        t_i <- t_i + tanh(b_i) * W_vt v_i

The gates start at zero, so training starts from plain IVLP and learns how much to couple.
It needs a learned prompt in both towers at every prompted block, with the same n and depth:
that is IVLP and MuDPT (and the generic `deep` learner). MaPLe owns no visual prompts and DCP
learns only the block-0 prompts, so they are refused with an error naming this fusion.

    method: {name: ivlp, fusion: gated_coupling, depth: 9}
"""
from typing import Tuple

import torch
from torch import nn

from dcp.fusion import PromptFusion
from dcp.fusion.base import Prompts
from dcp.registry import FUSIONS


@FUSIONS.register("gated_coupling")
class GatedCoupling(PromptFusion):
    supports = ("ivlp", "mudpt", "deep")

    def __init__(self, dims):
        super().__init__(dims)
        self.require_coupled()           # needs n_ctx == n_ctx_vision, depth == depth_vision
        if dims.text_params < dims.depth or dims.vision_params < dims.depth_vision:
            raise ValueError("gated_coupling needs a learned prompt in both towers at every "
                             "prompted block (text_params and vision_params = depth)")
        self.w_tv = nn.Linear(dims.dt, dims.dv)
        self.w_vt = nn.Linear(dims.dv, dims.dt)
        self.gate_v = nn.Parameter(torch.zeros(dims.depth))
        self.gate_t = nn.Parameter(torch.zeros(dims.depth))

    def forward(self, v: Prompts, t: Prompts) -> Tuple[Prompts, Prompts]:
        """v[i]: (n, Dv), t[i]: (n, Dt) -> the same shapes, for every prompted block i."""
        v_out = [v_i + self.gate_v[i].tanh() * self.w_tv(t_i) for i, (v_i, t_i) in enumerate(zip(v, t))]
        t_out = [t_i + self.gate_t[i].tanh() * self.w_vt(v_i) for i, (v_i, t_i) in enumerate(zip(v, t))]
        return v_out, t_out
