"""MaPLe's coupling: each block's vision prompt is a linear map of its text prompt."""
from __future__ import annotations

from typing import Tuple

from torch import nn

from ..registry import FUSIONS
from .base import Fusion, Prompts


@FUSIONS.register("maple")
class MapleCoupling(Fusion):
    """v_i = Linear_i(t_i): (n, Dt) -> (n, Dv), one Linear per prompted block; no visual
    parameters of its own. `proj[0]` is MaPLe's `proj`, `proj[j]` its
    `compound_prompt_projections[j-1]`."""

    def __init__(self, dims, opts=None):
        super().__init__(dims, opts)
        self.require_coupled()
        self.proj = nn.ModuleList(nn.Linear(dims.dt, dims.dv) for _ in range(dims.depth))

    def forward(self, v: Prompts, t: Prompts) -> Tuple[Prompts, Prompts]:
        return [lin(t_i) for lin, t_i in zip(self.proj, t)], t
