"""Feature-mask heads: G-HMLC's Gaussian mixture head, A-HMLC's attention head, fixed blocks."""

from lightly_hmlc.models.modules._gmm import (
    GaussianMixtureFit,
    fit_gaussian_mixture,
    select_n_components_bic,
)
from lightly_hmlc.models.modules.attention_mask_head import AttentionMaskHead
from lightly_hmlc.models.modules.block_mask_head import BlockMaskHead
from lightly_hmlc.models.modules.feature_mask_head import FeatureMaskHead
from lightly_hmlc.models.modules.gmm_mask_head import GMMFeatureMaskHead

__all__ = [
    "AttentionMaskHead",
    "BlockMaskHead",
    "FeatureMaskHead",
    "GMMFeatureMaskHead",
    "GaussianMixtureFit",
    "fit_gaussian_mixture",
    "select_n_components_bic",
]
