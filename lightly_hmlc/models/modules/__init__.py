"""Feature-mask heads (G-HMLC's GMM head, A-HMLC's attention head, fixed blocks) and the
hierarchical memory bank.
"""

from lightly_hmlc.models.modules._gmm import EMOptions, GaussianMixtureFit, fit_gaussian_mixture
from lightly_hmlc.models.modules.attention_mask_head import AttentionMaskHead
from lightly_hmlc.models.modules.block_mask_head import BlockMaskHead
from lightly_hmlc.models.modules.feature_mask_head import FeatureMaskHead
from lightly_hmlc.models.modules.gmm_mask_head import GMMFeatureMaskHead
from lightly_hmlc.models.modules.memory_bank import HierarchicalMemoryBank
from lightly_hmlc.models.modules.prefix_statistics import LabelPrefixStatistics

__all__ = [
    "AttentionMaskHead",
    "BlockMaskHead",
    "EMOptions",
    "FeatureMaskHead",
    "GMMFeatureMaskHead",
    "GaussianMixtureFit",
    "HierarchicalMemoryBank",
    "LabelPrefixStatistics",
    "fit_gaussian_mixture",
]
