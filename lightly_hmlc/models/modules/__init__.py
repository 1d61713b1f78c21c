"""Feature-mask heads (G-HMLC's Gaussian mixture head, A-HMLC's attention head) and the memory bank."""

from lightly_hmlc.models.modules._gmm import (
    GaussianMixtureFit,
    fit_gaussian_mixture,
    select_n_components_bic,
)
from lightly_hmlc.models.modules.attention_mask_head import AttentionMaskHead
from lightly_hmlc.models.modules.feature_mask_head import FeatureMaskHead
from lightly_hmlc.models.modules.gmm_mask_head import GMMFeatureMaskHead
from lightly_hmlc.models.modules.memory_bank import HierarchicalMemoryBank

__all__ = [
    "AttentionMaskHead",
    "FeatureMaskHead",
    "GMMFeatureMaskHead",
    "GaussianMixtureFit",
    "HierarchicalMemoryBank",
    "fit_gaussian_mixture",
    "select_n_components_bic",
]
