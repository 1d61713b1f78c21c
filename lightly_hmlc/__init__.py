"""lightly_hmlc: hierarchical contrastive learning for Lightly pipelines on timm backbones.

The HMLC losses of Zhang et al. (CVPR 2022), and G-HMLC / A-HMLC of Ott et al.
(arXiv 2510.00837), as Lightly-style components. Importing the package registers the
CIFAR-stem backbones with timm (``timm.create_model("resnet18_cifar")``).
"""

from lightly_hmlc import data, metrics
from lightly_hmlc.hierarchy import LabelHierarchy
from lightly_hmlc.loss import (
    AHMLCLoss,
    GHMLCLoss,
    HMLCLoss,
    MaskedHMLCLoss,
    ReferenceHMLCLoss,
    RegisteredHeadHMLCLoss,
    SupConLoss,
)
from lightly_hmlc.models import DepthViewEncoder, create_backbone, render_depth_views
from lightly_hmlc.models.modules import (
    AttentionMaskHead,
    BlockMaskHead,
    FeatureMaskHead,
    GMMFeatureMaskHead,
    HierarchicalMemoryBank,
)
from lightly_hmlc.registry import (
    create_head,
    create_loss,
    list_components,
    register_head,
    register_loss,
)

__version__ = "0.1.0"

__all__ = [
    "AHMLCLoss",
    "AttentionMaskHead",
    "BlockMaskHead",
    "DepthViewEncoder",
    "FeatureMaskHead",
    "GHMLCLoss",
    "GMMFeatureMaskHead",
    "HMLCLoss",
    "HierarchicalMemoryBank",
    "LabelHierarchy",
    "MaskedHMLCLoss",
    "ReferenceHMLCLoss",
    "RegisteredHeadHMLCLoss",
    "SupConLoss",
    "create_backbone",
    "create_head",
    "create_loss",
    "data",
    "list_components",
    "metrics",
    "register_head",
    "register_loss",
    "render_depth_views",
]
