"""Metrics of predicted label paths and leaf ids, aware of the hierarchy.

Leaf ids index ``hierarchy.leaves``; ``-1`` marks an unknown level or leaf. Mistake
severity and hierarchical distance follow Bertinetto et al. [0], with the height of the
lowest common ancestor (:meth:`LabelHierarchy.lca_height`) as distance.

- [0] Making Better Mistakes, CVPR 2020, https://arxiv.org/abs/1912.09393
"""

from __future__ import annotations

import math
import warnings

import torch
from torch import Tensor

from lightly_hmlc.hierarchy import LabelHierarchy
from lightly_hmlc.label_paths import check_label_paths

__all__ = [
    "per_level_accuracy",
    "leaf_ids_from_paths",
    "paths_from_fine_predictions",
    "implied_coarse_accuracy",
    "mistake_severity",
    "hierarchical_distance_at_k",
    "normalized_mutual_info",
]


def per_level_accuracy(pred_paths: Tensor, true_paths: Tensor) -> Tensor:
    """Top-1 accuracy ``[L]`` at every level, ignoring unknown true labels (``NaN`` and a
    warning for a level without one).

    Examples:
        >>> pred = torch.tensor([[0, 1], [1, 2], [1, 3]])
        >>> true = torch.tensor([[0, 1], [1, 3], [0, -1]])
        >>> per_level_accuracy(pred, true)
        tensor([0.6667, 0.5000])
    """
    _check_paths(pred_paths, "pred_paths")
    _check_paths(true_paths, "true_paths")
    if pred_paths.shape != true_paths.shape:
        raise ValueError(
            f"pred_paths {tuple(pred_paths.shape)} and true_paths {tuple(true_paths.shape)} "
            "must have the same shape [N, L]."
        )
    known = true_paths >= 0
    correct = (pred_paths == true_paths) & known
    counts = known.sum(dim=0)
    acc = correct.sum(dim=0).float() / counts.clamp(min=1).float()
    empty = counts == 0
    if bool(empty.any()):
        levels = torch.nonzero(empty).flatten().tolist()
        warnings.warn(
            f"No sample has a known true label at level(s) {levels}: their accuracy is NaN.",
            stacklevel=2,
        )
        acc = acc.masked_fill(empty, float("nan"))
    return acc


def leaf_ids_from_paths(paths: Tensor, hierarchy: LabelHierarchy) -> Tensor:
    """The leaf id of every label path; ``-1`` for a path that is no leaf's."""
    _check_paths(paths, "paths")
    num_levels = hierarchy.num_levels
    if paths.shape[1] != num_levels:
        raise ValueError(
            f"paths have {paths.shape[1]} levels but the hierarchy has {num_levels}: "
            "use the label paths of this hierarchy."
        )
    table = hierarchy.leaf_paths.to(paths.device)
    # Mixed-radix code of a path (values shifted by 1 so that -1 becomes digit 0).
    radices = [n + 1 for n in hierarchy.num_classes_per_level]
    weights = torch.ones(num_levels, dtype=torch.long, device=paths.device)
    for level in range(num_levels - 2, -1, -1):
        weights[level] = weights[level + 1] * radices[level + 1]
    in_range = (paths >= -1).all(dim=1)
    for level, n in enumerate(hierarchy.num_classes_per_level):
        in_range &= paths[:, level] < n
    codes = ((paths.long().clamp(min=-1) + 1) * weights).sum(dim=1)
    table_codes = ((table + 1) * weights).sum(dim=1)
    sorted_codes, order = table_codes.sort()
    pos = torch.searchsorted(sorted_codes, codes).clamp(max=len(sorted_codes) - 1)
    found = (sorted_codes[pos] == codes) & in_range
    return torch.where(found, order[pos], torch.full_like(codes, -1))


def paths_from_fine_predictions(fine_pred_leaf_ids: Tensor, hierarchy: LabelHierarchy) -> Tensor:
    """The label paths ``[N, L]`` of predicted leaf ids ``[N]``: each leaf's ancestors."""
    return hierarchy.label_paths(_check_ids(fine_pred_leaf_ids, "fine_pred_leaf_ids"))


def implied_coarse_accuracy(
    fine_pred_leaf_ids: Tensor, true_paths: Tensor, hierarchy: LabelHierarchy
) -> Tensor:
    """Accuracy ``[L]`` of the label paths implied by fine (leaf) predictions."""
    pred_paths = paths_from_fine_predictions(fine_pred_leaf_ids, hierarchy)
    return per_level_accuracy(pred_paths.to(true_paths.device), true_paths)


def mistake_severity(
    pred_leaf_ids: Tensor, true_leaf_ids: Tensor, hierarchy: LabelHierarchy
) -> float:
    """Mean LCA height of the wrong top-1 predictions (``0.0`` without a mistake), ignoring
    unknown true leaves: how bad the mistakes are, not how many.

    Examples:
        >>> h = LabelHierarchy({"cat": "animal", "dog": "animal", "car": "vehicle"})
        >>> mistake_severity(torch.tensor([1, 2, 0]), torch.tensor([1, 1, 1]), h)
        1.5
    """
    pred = _check_ids(pred_leaf_ids, "pred_leaf_ids")
    true = _check_ids(true_leaf_ids, "true_leaf_ids")
    if pred.shape != true.shape:
        raise ValueError(
            f"pred_leaf_ids {tuple(pred.shape)} and true_leaf_ids {tuple(true.shape)} "
            "must have the same shape [N]."
        )
    wrong = (true >= 0) & (pred != true)
    if not bool(wrong.any()):
        return 0.0
    heights = hierarchy.lca_height(pred[wrong], true[wrong])
    return float(heights.double().mean())


def hierarchical_distance_at_k(
    topk_leaf_ids: Tensor, true_leaf_ids: Tensor, hierarchy: LabelHierarchy
) -> float:
    """Mean LCA height between the true leaf and each of the top-k predictions ``[N, k]``,
    ignoring unknown true leaves (``NaN`` and a warning when none is left).
    """
    if topk_leaf_ids.dim() != 2:
        raise ValueError(
            f"topk_leaf_ids must be [N, k], got shape {tuple(topk_leaf_ids.shape)}; for "
            "top-1 predictions use ids.unsqueeze(1)."
        )
    topk = _check_ids(topk_leaf_ids, "topk_leaf_ids")
    true = _check_ids(true_leaf_ids, "true_leaf_ids")
    if true.dim() != 1 or true.shape[0] != topk.shape[0]:
        raise ValueError(
            f"true_leaf_ids must be [N] with N = {topk.shape[0]} (the rows of "
            f"topk_leaf_ids), got shape {tuple(true.shape)}."
        )
    known = true >= 0
    if not bool(known.any()) or topk.shape[1] == 0:
        warnings.warn(
            "No sample with a known true leaf (or k = 0): hierarchical distance is NaN.",
            stacklevel=2,
        )
        return math.nan
    topk, true = topk[known], true[known]
    k = topk.shape[1]
    heights = hierarchy.lca_height(topk.reshape(-1), true.repeat_interleave(k))
    return float(heights.double().mean())


def normalized_mutual_info(cluster_ids: Tensor, labels: Tensor) -> float:
    """NMI of a clustering and labels, as sklearn's ``normalized_mutual_info_score`` (with
    its conventions), ignoring negative labels.

    Examples:
        >>> normalized_mutual_info(torch.tensor([1, 1, 0, 0]), torch.tensor([0, 0, 1, 1]))
        1.0
    """
    clusters = _check_ids(cluster_ids, "cluster_ids")
    truth = _check_ids(labels, "labels")
    if clusters.dim() != 1 or clusters.shape != truth.shape:
        raise ValueError(
            f"cluster_ids {tuple(clusters.shape)} and labels {tuple(truth.shape)} must both "
            "have shape [N]."
        )
    known = truth >= 0
    clusters, truth = clusters[known], truth[known]
    _, c_idx = torch.unique(clusters, return_inverse=True)
    _, y_idx = torch.unique(truth, return_inverse=True)
    num_c = int(c_idx.max()) + 1 if c_idx.numel() else 0
    num_y = int(y_idx.max()) + 1 if y_idx.numel() else 0
    if num_c == num_y and num_c <= 1:
        # Neither side splits the data: a perfect match, as in sklearn.
        return 1.0
    joint = torch.bincount(c_idx * num_y + y_idx, minlength=num_c * num_y)
    joint = joint.reshape(num_c, num_y).double()
    total = joint.sum()
    p_joint = joint / total
    p_c = p_joint.sum(dim=1, keepdim=True)
    p_y = p_joint.sum(dim=0, keepdim=True)
    nz = p_joint > 0
    mi = float((p_joint[nz] * (p_joint[nz] / (p_c @ p_y)[nz]).log()).sum())
    if mi <= 1e-15:
        return 0.0
    h_c = float(-(p_c[p_c > 0] * p_c[p_c > 0].log()).sum())
    h_y = float(-(p_y[p_y > 0] * p_y[p_y > 0].log()).sum())
    return min(max(mi / ((h_c + h_y) / 2), 0.0), 1.0)


def _check_paths(paths: Tensor, name: str) -> None:
    check_label_paths(paths, name=name)  # the package's one label-path check


def _check_ids(ids: Tensor, name: str) -> Tensor:
    if not isinstance(ids, Tensor):
        raise ValueError(f"{name} must be an integer tensor, got {type(ids).__name__}.")
    if ids.dtype.is_floating_point or ids.dtype.is_complex or ids.dtype == torch.bool:
        raise ValueError(
            f"{name} must hold integer ids, got dtype {ids.dtype}; take logits.argmax(-1) "
            "or logits.topk(k).indices first."
        )
    return ids.long()
