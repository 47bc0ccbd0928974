"""The one prompt mechanism every method uses (docs/methods.md, "Conventions").

CLIP is never forked: `run_towers` runs its frozen blocks one by one and, before each block
i < depth, asks a `step` function for the prompt tokens to put into the sequence:

    vision: [CLS, patches..., p_1..p_n]   appended at block 0 (after the positional embedding,
                                          before ln_pre), the last n tokens replaced later
    text:   [SOS, p_1..p_n, class words, '.', EOS, pad]   positions 1..n replaced; at block 0
                                          they replace token embeddings (positions added after)

    step(i, v, t) -> (v_new, t_new)
        v: current vision prompt states (B, n_v, Dv), t: text prompt states (C, n_t, Dt);
        None at block 0 and for a tower that is not run. A returned tensor of shape (n, D)
        is broadcast over the batch; None leaves the slots as they are (at block 0: no
        prompts in that tower).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, List, Optional, Sequence, Tuple

import torch
import torch.utils.checkpoint
from torch import Tensor

from .clip.model import CLIP
from .clip.tokenizer import tokenize

Step = Callable[[int, Optional[Tensor], Optional[Tensor]], Tuple[Optional[Tensor], Optional[Tensor]]]


def _fit(p: Tensor, batch: int, like: Tensor) -> Tensor:
    """(n, D), (1, n, D) or (batch, n, D) -> (batch, n, D) in `like`'s dtype."""
    p = p.to(like.dtype)
    return (p[None] if p.dim() == 2 else p).expand(batch, -1, -1)


def run_towers(clip: CLIP, images: Optional[Tensor] = None, text: Optional[Tensor] = None,
               step: Optional[Step] = None, depth: int = 0, checkpoint: bool = False
               ) -> Tuple[Optional[Tensor], Optional[Tensor]]:
    """Run CLIP's towers in lock-step with prompts written before blocks 0..depth-1.

    images: (B, 3, R, R); text: token embeddings WITHOUT positions (C, L, Dt).
    Returns the final token states: vision (B, 1+N+n_v, Dv) and text (C, L, Dt), or None.
    `checkpoint` recomputes each block in the backward pass instead of storing its
    activations (same gradients, far less memory, ~1/3 more compute).
    """
    checkpoint = checkpoint and torch.is_grad_enabled()
    v = clip.visual.embed(images) if images is not None else None
    t = text.to(clip.dtype) if text is not None else None
    n_v = n_t = 0
    if step is not None and depth > 0:
        pv, pt = step(0, None, None)
        if v is not None and pv is not None:
            n_v = pv.shape[-2]
            v = torch.cat([v, _fit(pv, v.shape[0], v)], dim=1)
        if t is not None and pt is not None:
            n_t = pt.shape[-2]
            t = torch.cat([t[:, :1], _fit(pt, t.shape[0], t), t[:, 1 + n_t:]], dim=1)
    if v is not None:
        v = clip.visual.ln_pre(v)
    if t is not None:
        t = t + clip.positional_embedding[: t.shape[1]].to(t.dtype)

    vblocks = clip.visual.transformer.resblocks if v is not None else []
    tblocks = clip.transformer.resblocks if t is not None else []
    for i in range(max(len(vblocks), len(tblocks))):
        if 0 < i < depth and step is not None and (n_v or n_t):
            pv, pt = step(i, v[:, -n_v:] if n_v else None, t[:, 1:1 + n_t] if n_t else None)
            if pv is not None and n_v:
                v = torch.cat([v[:, :-n_v], _fit(pv, v.shape[0], v)], dim=1)
            if pt is not None and n_t:
                t = torch.cat([t[:, :1], _fit(pt, t.shape[0], t), t[:, 1 + n_t:]], dim=1)
        if i < len(vblocks):
            v = _run(vblocks[i], v, checkpoint)
        if i < len(tblocks):
            t = _run(tblocks[i], t, checkpoint)
    return v, t


def _run(block, x: Tensor, checkpoint: bool) -> Tensor:
    if checkpoint:
        return torch.utils.checkpoint.checkpoint(block, x, use_reentrant=False)
    return block(x)


@dataclass
class ClassTexts:
    """Tokenised class prompts: tokens (C, 77) int64, eot (C,) EOS positions. `cut` is the
    shortest length that keeps every EOS (docs/methods.md, "Conventions": exact speed-ups)."""
    tokens: Tensor
    eot: Tensor

    @property
    def cut(self) -> int:
        return int(self.eot.max()) + 1


def class_texts(classnames: Sequence[str], template: str) -> ClassTexts:
    """Tokenise `template.format(name)` per class."""
    tokens = tokenize([template.format(prompt_classname(name)) for name in classnames])
    return ClassTexts(tokens, tokens.argmax(dim=-1))


def prompt_classname(name: str) -> str:
    """What a class name is in a prompt: underscores become spaces."""
    return name.replace("_", " ")


def duplicate_classnames(classnames: Sequence[str]) -> List[List[str]]:
    """Groups of class names that tokenise alike (case, '_' and runs of spaces ignored)."""
    groups: dict = {}
    for name in classnames:
        groups.setdefault(" ".join(prompt_classname(name).lower().split()), []).append(name)
    return [g for g in groups.values() if len(g) > 1]


def init_words(init: str) -> List[str]:
    """The words of an init phrase, `_` read as a space (as Dassl does before counting)."""
    return init.replace("_", " ").split()


def prompt_prefix(n: int, init: str, max_init_words: Optional[int] = None,
                  cut: bool = False) -> Tuple[str, bool]:
    """The text before the class name, and whether init words initialise the n slots
    (docs/methods.md, "Conventions": init words). `cut` keeps only the first n init words;
    with n = 0 the init words are plain fixed text."""
    words = init_words(init)
    if n == 0:
        return " ".join(words), False
    if words and n <= len(words) and (max_init_words is None or n <= max_init_words):
        return " ".join(words[:n] if cut else words), True
    return " ".join(["X"] * n), False


def init_embeddings(clip: CLIP, init: str, n: int) -> Tensor:
    """Token embeddings of the first n tokens of `init` (after SOS): (n, Dt), fp32."""
    ids = tokenize(" ".join(init_words(init)))[0, 1:1 + n].to(clip.token_embedding.weight.device)
    return clip.token_embedding(ids).detach().float().clone()


def encode_texts(clip: CLIP, texts: ClassTexts, step: Optional[Step] = None, depth: int = 0,
                 cut: bool = True, chunk: int = 512, embeds: Optional[Tensor] = None,
                 checkpoint: bool = False) -> Tensor:
    """Class text features (C, E), `chunk` classes at a time. `embeds` (C, L, Dt) replaces the
    token embeddings when a method builds them itself (CoOp)."""
    L = texts.cut if cut else texts.tokens.shape[1]
    feats = []
    for s in range(0, texts.tokens.shape[0], chunk):
        tok = texts.tokens[s:s + chunk, :L]
        x = clip.token_embedding(tok) if embeds is None else embeds[s:s + chunk, :L]
        _, t = run_towers(clip, text=x, step=step, depth=depth, checkpoint=checkpoint)
        feats.append(clip.text_head(t, texts.eot[s:s + chunk]))
    return torch.cat(feats)


def static_step(vision: Sequence[Optional[Tensor]] = (), text: Sequence[Optional[Tensor]] = ()) -> Step:
    """A step that writes fixed per-block prompts (None past the end of a list)."""
    def step(i, v, t):
        return (vision[i] if i < len(vision) else None), (text[i] if i < len(text) else None)
    return step
