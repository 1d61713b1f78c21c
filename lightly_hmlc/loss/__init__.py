"""Hierarchical contrastive losses: SupCon, HMLC (HMC / HCE / HMCE), G-HMLC and A-HMLC."""

from lightly_hmlc.loss.hmlc import HMLCLoss
from lightly_hmlc.loss.masked import (
    AHMLCLoss,
    GHMLCLoss,
    MaskedHMLCLoss,
    RegisteredHeadHMLCLoss,
)
from lightly_hmlc.loss.reference import ReferenceHMLCLoss
from lightly_hmlc.loss.supcon import SupConLoss

__all__ = [
    "AHMLCLoss",
    "GHMLCLoss",
    "HMLCLoss",
    "MaskedHMLCLoss",
    "ReferenceHMLCLoss",
    "RegisteredHeadHMLCLoss",
    "SupConLoss",
]
