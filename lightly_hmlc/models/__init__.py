"""timm backbones (with CIFAR-stem ResNets), point-cloud depth views, and the feature-mask
heads of G-HMLC and A-HMLC (:mod:`.modules`).
"""

from lightly_hmlc.models.backbones import create_backbone, feature_dim, load_checkpoint
from lightly_hmlc.models.point_cloud import DepthViewEncoder, render_depth_views

__all__ = [
    "DepthViewEncoder",
    "create_backbone",
    "feature_dim",
    "load_checkpoint",
    "render_depth_views",
]
