"""Prompt-learning methods, each registered by name in `dcp.registry.METHODS`.

    zeroshot, coop, cocoop           text-input prompts        (coop.py)
    vpt, ivlp, maple, mudpt, dcp     deep prompts + a fusion   (deep.py)
"""
from .base import PromptModel, build_method
from .coop import CoCoOp, CoOp, ZeroShot
from .deep import DCP, IVLP, MaPLe, MuDPT, VPT, DeepPrompts

__all__ = ["PromptModel", "build_method", "ZeroShot", "CoOp", "CoCoOp", "DeepPrompts",
           "VPT", "IVLP", "MaPLe", "MuDPT", "DCP"]
