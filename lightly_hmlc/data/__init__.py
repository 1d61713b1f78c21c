"""Datasets that return ``(sample, label_path)``, the label-path target transform, and the
hierarchy-aware batch sampler.
"""

from lightly_hmlc.data._archive import extract_archive_once
from lightly_hmlc.data._base import HierarchicalDataset, check_classes_match
from lightly_hmlc.data.cifar import CIFAR10Hierarchical, CIFAR100Hierarchical
from lightly_hmlc.data.imagefolder import HierarchicalImageFolder
from lightly_hmlc.data.mnist import MNISTHierarchical
from lightly_hmlc.data.modelnet40 import MODELNET40_GROUPS, ModelNet40Hierarchical
from lightly_hmlc.data.point_cloud_transforms import PointCloudAugment, TwoViewPointCloudTransform
from lightly_hmlc.data.relabeled import Relabeled
from lightly_hmlc.data.sampler import HierarchicalBatchSampler
from lightly_hmlc.data.shapes import ShapesDataset
from lightly_hmlc.data.target import LabelPathTransform

__all__ = [
    "CIFAR10Hierarchical",
    "CIFAR100Hierarchical",
    "HierarchicalBatchSampler",
    "HierarchicalDataset",
    "HierarchicalImageFolder",
    "LabelPathTransform",
    "MNISTHierarchical",
    "MODELNET40_GROUPS",
    "ModelNet40Hierarchical",
    "PointCloudAugment",
    "Relabeled",
    "ShapesDataset",
    "TwoViewPointCloudTransform",
    "check_classes_match",
    "extract_archive_once",
]
