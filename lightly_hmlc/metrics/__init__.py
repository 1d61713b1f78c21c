"""Hierarchy-aware metrics of predictions (:mod:`.predictions`) and of embeddings
(:mod:`.embeddings`).
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
