"""Fusion modules: how the two towers' prompts are exchanged (see `base.py` for the interface)."""
from .base import Dims, Fusion, NoFusion
from .cmpa import CMPA, CMPABlock, CMPAReleased
from .injection import InjectionModel, LinearInjection
from .maple import MapleCoupling

__all__ = ["Dims", "Fusion", "NoFusion", "CMPA", "CMPABlock", "CMPAReleased",
           "InjectionModel", "LinearInjection", "MapleCoupling"]
