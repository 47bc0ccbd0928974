"""MaPLe's coupling: each block's vision prompt is a linear map of its text prompt."""
from __future__ import annotations

import copy
from typing import Tuple

from torch import nn

from ..registry import FUSIONS
from .base import PromptFusion, Prompts


@FUSIONS.register("maple")
class MapleCoupling(PromptFusion):
    """v_i = Linear_i(t_i): (n, Dt) -> (n, Dv), one Linear per prompted block; no visual
    parameters of its own. `proj[0]` is MaPLe's `proj`, `proj[j]` its
    `compound_prompt_projections[j-1]`. As in the released code, the deep Linears start as
    copies of one freshly initialised Linear (`_get_clones`); `proj[0]` has its own init."""
    supports = ("maple",)

    def __init__(self, dims):
        super().__init__(dims)
        self.require_coupled()
        first, deep = nn.Linear(dims.dt, dims.dv), nn.Linear(dims.dt, dims.dv)
        self.proj = nn.ModuleList([first] + [copy.deepcopy(deep) for _ in range(dims.depth - 1)])

    def forward(self, v: Prompts, t: Prompts) -> Tuple[Prompts, Prompts]:
        return [lin(t_i) for lin, t_i in zip(self.proj, t)], t
