"""Hierarchy-aware evaluation metrics.

- :mod:`~lightly_hmlc.metrics.predictions`: metrics of predicted label paths and leaf ids
  (per-level accuracy, implied coarse accuracy, mistake severity, hierarchical
  distance@k, NMI of a clustering).
- :mod:`~lightly_hmlc.metrics.embeddings`: metrics of an embedding against its label
  paths (per-level separation and explained variance, CPCC).
"""

from lightly_hmlc.metrics.embeddings import cpcc, level_separation
from lightly_hmlc.metrics.predictions import (
    hierarchical_distance_at_k,
    implied_coarse_accuracy,
    leaf_ids_from_paths,
    mistake_severity,
    normalized_mutual_info,
    paths_from_fine_predictions,
    per_level_accuracy,
)

__all__ = [
    "per_level_accuracy",
    "leaf_ids_from_paths",
    "paths_from_fine_predictions",
    "implied_coarse_accuracy",
    "mistake_severity",
    "hierarchical_distance_at_k",
    "normalized_mutual_info",
    "level_separation",
    "cpcc",
]
