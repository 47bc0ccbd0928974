"""The interface of a fusion module: how prompts of the two towers are exchanged.

A fusion module is a registered `nn.Module` built as `Fusion(dims, opts)` (`dims`: the widths,
prompt lengths and depth; `opts`: the method's options, `opts.fusion_args` its own keywords).
It is one of two kinds:

- `kind = "params"`: acts on the learned prompt tensors, once per forward (once per
  evaluation): `forward(v, t) -> (v, t)` with `v`, `t` lists of per-block prompts,
  entry i of shape (n_v, Dv) / (n_t, Dt), or None where a tower has no prompt of its own
  at that block. The returned lists say what each block receives (None: leave the slots;
  at block 0: no prompts in that tower). MaPLe's coupling and MuDPT's injection are this kind.
- `kind = "states"`: acts on the running prompt states before each block i = 1..depth-1:
  `forward(i, v, t) -> (v', t')` with v: (B, n, Dv) the vision prompt states (or None when
  only the text side is computed) and t: (1, n, Dt) the text prompt states (identical for
  every class, so one row stands for all). Returns what to write back (None: nothing).
  DCP's CMPA is this kind. Block 0 always receives the learned shallow prompts.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional, Tuple

from torch import Tensor, nn

from ..registry import FUSIONS

Prompts = List[Optional[Tensor]]


@dataclass(frozen=True)
class Dims:
    dt: int           # text width
    dv: int           # vision width
    e: int            # joint embedding width
    n_text: int       # text prompt tokens per block
    n_vision: int     # vision prompt tokens per block
    depth: int        # text blocks 0..depth-1 carry prompts
    depth_vision: int  # vision blocks 0..depth_vision-1 carry prompts


class Fusion(nn.Module):
    kind = "params"

    def __init__(self, dims: Dims, opts=None):
        super().__init__()
        self.dims = dims

    def require_coupled(self) -> None:
        """Check the towers can be paired block by block (same n and depth)."""
        d = self.dims
        if d.n_text != d.n_vision or d.depth != d.depth_vision or d.n_text < 1:
            raise ValueError(f"{type(self).__name__} pairs text and vision prompts block by block: "
                             f"it needs n_ctx == n_ctx_vision >= 1 and depth == depth_vision "
                             f"(got n {d.n_text}/{d.n_vision}, depth {d.depth}/{d.depth_vision})")


@FUSIONS.register("none")
class NoFusion(Fusion):
    """Independent prompts in each tower (VPT, IVLP)."""

    def forward(self, v: Prompts, t: Prompts) -> Tuple[Prompts, Prompts]:
        return v, t
