"""Fusion modules: how the two towers' prompts are exchanged (the contract: `base.py`)."""
from .base import Dims, Fusion, NoFusion, PromptFusion, StateFusion, build_fusion, fusion_options
from .cmpa import CMPA, CMPABlock, CMPAReleased
from .injection import InjectionModel, LinearInjection
from .maple import MapleCoupling

__all__ = ["Dims", "Fusion", "PromptFusion", "StateFusion", "NoFusion", "build_fusion",
           "fusion_options", "CMPA", "CMPABlock", "CMPAReleased", "InjectionModel",
           "LinearInjection", "MapleCoupling"]
