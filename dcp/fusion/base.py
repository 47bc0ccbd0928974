"""The fusion contract: how a deep-prompt method's two towers exchange prompts.

A fusion module is an `nn.Module` registered in `FUSIONS` and built by the deep-prompt learner
(`dcp/methods/deep.py`) through `build_fusion(name, dims, opts)`:

- `supports`: the method names it serves; any other method is refused at config time with
  an error naming the fusion and the method (e.g. MaPLe owns no visual prompts to fuse).
- `__init__(self, dims, *, <options>)`: `dims` (`Dims`) gives the widths and the prompt
  layout (which blocks own a learned prompt); a layout it cannot serve is a ValueError.
  Each keyword option is filled from the method option of the same name (DCP's `share`,
  `momentum`, `fusing`: their defaults live in the method's options, nowhere else), else
  from `method.fusion_args`; an unknown or missing option is a config error naming it.
- Parameters it creates are trained; buffers are saved in checkpoints.
- `batch_dependent = True` says an image's prediction depends on its test batch (DCP
  `released`); the test batch size then belongs to the run's setting.

It is one of two kinds, each called in three contexts; the learner makes every call:

**PromptFusion** acts on the learned prompt tensors (image-independent):
    forward(v, t) -> (v', t')
    v: depth_vision entries, v[i] (n_v, Dv) or None (no learned prompt at block i)
    t: depth entries,        t[i] (n_t, Dt) or None
    entry i of the result is what block i receives (None: keep the slots as block i-1 left
    them; at block 0: that tower gets no prompts).
  training: once per forward pass; evaluation: once per evaluation (`precompute`), or once
  per batch without the speed-ups. Same inputs, same outputs in all three.

**StateFusion** acts on the running prompt states before each block i = 1..depth-1
(block 0 receives the learned shallow prompts `ctx`, `vision_ctx`):
    text(i, t, v) -> t' or None      t (1, n, Dt): text prompt states after block i-1 (one
                                     row: identical for every class, the mask is causal)
                                     v (B, n, Dv) in training; None in eval mode, always,
                                     so the text side never depends on the test batch
    vision(i, v, t) -> v' or None    v (B, n, Dv), t (1, n, Dt) the text states *entering*
                                     block i; returns (B, n, Dv) or (n, Dv) (broadcast)
  training: both towers in lock-step, t' = text(i, t, v) and v' = vision(i, v, t);
  evaluation: text(i, t, None) once per evaluation on the prompt path [SOS, prompts] and
  vision(i, v, t) per batch with those cached states; without the speed-ups the same calls in
  lock-step per batch. None leaves the slots as the previous block left them.
`tests/test_fusion_contract.py` runs every registered fusion (plugins included) with every
method it supports through these contexts and checks the evaluation paths agree.
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

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
    text_params: int   # text blocks 0..text_params-1 have a learned prompt (t[i] not None)
    vision_params: int  # likewise vision (v[i] not None); 0 = the fusion makes them


class Fusion(nn.Module):
    """Base of both kinds (see the module docstring)."""
    supports: Tuple[str, ...] = ()
    batch_dependent = False

    def __init__(self, dims: Dims):
        super().__init__()
        self.dims = dims

    def require_coupled(self) -> None:
        """Check the towers can be paired block by block (same n and depth)."""
        d = self.dims
        if d.n_text != d.n_vision or d.depth != d.depth_vision or d.n_text < 1:
            raise ValueError(f"{type(self).__name__} pairs text and vision prompts block by block: "
                             f"it needs n_ctx == n_ctx_vision >= 1 and depth == depth_vision "
                             f"(got n {d.n_text}/{d.n_vision}, depth {d.depth}/{d.depth_vision})")


class PromptFusion(Fusion):
    def forward(self, v: Prompts, t: Prompts) -> Tuple[Prompts, Prompts]:
        raise NotImplementedError


class StateFusion(Fusion):
    def text(self, i: int, t: Tensor, v: Optional[Tensor]) -> Optional[Tensor]:
        raise NotImplementedError

    def vision(self, i: int, v: Tensor, t: Tensor) -> Optional[Tensor]:
        raise NotImplementedError


def fusion_options(name: str, opts) -> Dict[str, object]:
    """The keyword options of fusion `name` for method options `opts` (see the contract);
    a ValueError names the fusion, the method or the offending option."""
    cls = FUSIONS.get(name)
    if opts.name not in cls.supports:
        raise ValueError(f"fusion {name!r} does not support method {opts.name!r}; it supports: "
                         f"{', '.join(cls.supports) or 'nothing'} (see its docstring)")
    params = {p.name: p for p in list(inspect.signature(cls.__init__).parameters.values())[2:]
              if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)}
    args = opts.fusion_args
    unknown = sorted(set(args) - set(params))
    if unknown:
        raise ValueError(f"fusion_args: fusion {name!r} has no option {unknown[0]!r}; its "
                         f"options: {', '.join(params) or 'none'}")
    out = {}
    for key, p in params.items():
        if hasattr(opts, key) and key != "fusion_args":
            if key in args:
                raise ValueError(f"fusion_args.{key}: set method.{key} instead (one place for it)")
            out[key] = getattr(opts, key)
        elif key in args:
            out[key] = args[key]
        elif p.default is p.empty:
            raise ValueError(f"fusion {name!r} needs option {key!r}: give method.fusion_args.{key}")
    return out


def build_fusion(name: str, dims: Dims, opts) -> Fusion:
    return FUSIONS.get(name)(dims, **fusion_options(name, opts))


@FUSIONS.register("none")
class NoFusion(PromptFusion):
    """Independent prompts in each tower (VPT, IVLP)."""
    supports = ("vpt", "ivlp", "deep")

    def forward(self, v: Prompts, t: Prompts) -> Tuple[Prompts, Prompts]:
        return v, t
