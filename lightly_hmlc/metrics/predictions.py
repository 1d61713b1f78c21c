"""Metrics of predicted label paths and leaf ids, aware of the hierarchy.

Label paths are ``[N, L]`` integer tensors, coarse to fine, with ``-1`` for an unknown
level (the contract of :class:`~lightly_hmlc.hierarchy.LabelHierarchy`). Leaf ids index
``hierarchy.leaves``; ``-1`` marks an unknown fine class.

The mistake-severity and hierarchical-distance metrics follow Bertinetto et al. [0]: the
distance between two classes is the height of their lowest common ancestor (LCA), as
returned by :meth:`LabelHierarchy.lca_height` (0 for the same class, ``L`` for classes
that share no ancestor below the implicit root).

- [0] Making Better Mistakes: Leveraging Class Hierarchies with Deep Networks,
  Bertinetto et al., CVPR 2020, https://arxiv.org/abs/1912.09393

All functions are pure torch and run on whatever device their inputs live on.
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
    """Top-1 accuracy at every level of a label path.

    At each level, samples whose true label is ``-1`` (unknown) are ignored. A level
    without a single known true label has no defined accuracy: its entry is ``NaN`` and a
    warning names the level.

    Args:
        pred_paths: Predicted label paths ``[N, L]`` (any integer values, ``-1`` allowed).
        true_paths: True label paths ``[N, L]``, ``-1`` for unknown.

    Returns:
        Float tensor ``[L]`` with the accuracy (in ``[0, 1]``) per level, coarse to fine.

    Raises:
        ValueError: If the shapes differ or the inputs are not 2-D integer tensors.

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
    """The leaf id of every label path, ``-1`` where the path is not a complete leaf path.

    A path is complete when it equals one row of ``hierarchy.leaf_paths`` (including its
    ``-1`` padding for leaves above the deepest level). Paths with an unknown fine class
    (for example ``[2, -1]`` where class 2 of level 0 has children) map to ``-1``.

    Args:
        paths: Label paths ``[N, L]``.
        hierarchy: The hierarchy the paths come from.

    Returns:
        Long tensor ``[N]`` of leaf ids, ``-1`` for incomplete paths.

    Examples:
        >>> h = LabelHierarchy({"cat": "animal", "dog": "animal", "car": "vehicle"})
        >>> leaf_ids_from_paths(torch.tensor([[0, 2], [1, 0], [0, -1]]), h).tolist()
        [2, 0, -1]
    """
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
    """The label paths implied by fine (leaf) predictions: each leaf's ancestors.

    Args:
        fine_pred_leaf_ids: Predicted leaf ids ``[N]``.
        hierarchy: The hierarchy whose leaves are predicted.

    Returns:
        Label paths ``[N, L]`` (``-1`` padded for leaves above the deepest level).

    Raises:
        ValueError: If an id is not a leaf id of ``hierarchy``.

    Examples:
        >>> h = LabelHierarchy({"cat": "animal", "dog": "animal", "car": "vehicle"})
        >>> paths_from_fine_predictions(torch.tensor([2, 0]), h).tolist()
        [[0, 2], [1, 0]]
    """
    return hierarchy.label_paths(_check_ids(fine_pred_leaf_ids, "fine_pred_leaf_ids"))


def implied_coarse_accuracy(
    fine_pred_leaf_ids: Tensor, true_paths: Tensor, hierarchy: LabelHierarchy
) -> Tensor:
    """Accuracy at every level implied by fine (leaf) predictions.

    A fine prediction implies a prediction at every coarser level (its ancestors); this
    is the per-level accuracy of those implied paths. Unknown (``-1``) true labels are
    ignored per level, as in :func:`per_level_accuracy`.

    Args:
        fine_pred_leaf_ids: Predicted leaf ids ``[N]``.
        true_paths: True label paths ``[N, L]``.
        hierarchy: The hierarchy of the labels.

    Returns:
        Float tensor ``[L]``; its last entry is the fine accuracy itself when every leaf
        sits at the deepest level.

    Examples:
        >>> h = LabelHierarchy({"cat": "animal", "dog": "animal", "car": "vehicle"})
        >>> true = h.label_paths(["cat", "cat", "car"])
        >>> pred = torch.tensor([h.leaf_id("cat"), h.leaf_id("dog"), h.leaf_id("cat")])
        >>> implied_coarse_accuracy(pred, true, h)
        tensor([0.6667, 0.3333])
    """
    pred_paths = paths_from_fine_predictions(fine_pred_leaf_ids, hierarchy)
    return per_level_accuracy(pred_paths.to(true_paths.device), true_paths)


def mistake_severity(
    pred_leaf_ids: Tensor, true_leaf_ids: Tensor, hierarchy: LabelHierarchy
) -> float:
    """Mean height of the lowest common ancestor over wrong top-1 predictions [0].

    Only the mistakes count, so the value says *how bad* the mistakes are, not how many
    there are. Samples with an unknown true leaf (``-1``) are ignored.

    - [0] Making Better Mistakes, Bertinetto et al., CVPR 2020,
      https://arxiv.org/abs/1912.09393

    Args:
        pred_leaf_ids: Predicted leaf ids ``[N]``.
        true_leaf_ids: True leaf ids ``[N]``, ``-1`` for unknown.
        hierarchy: The hierarchy that defines the LCA heights.

    Returns:
        The mean LCA height of the mistakes, between 1 and ``L``; ``0.0`` when there is
        no mistake (no NaN).

    Examples:
        >>> h = LabelHierarchy({"cat": "animal", "dog": "animal", "car": "vehicle"})
        >>> true = torch.tensor([h.leaf_id("cat")] * 3)
        >>> pred = torch.tensor([h.leaf_id(n) for n in ["cat", "dog", "car"]])
        >>> mistake_severity(pred, true, h)  # one mistake of height 1, one of height 2
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
    """Mean LCA height between the true class and each of the top-k predictions [0].

    The mean runs over samples and over the ``k`` predictions of each sample, correct
    ones included (they count 0). Samples with an unknown true leaf (``-1``) are ignored;
    if no sample is left, the value is undefined: ``NaN`` with a warning.

    - [0] Making Better Mistakes, Bertinetto et al., CVPR 2020,
      https://arxiv.org/abs/1912.09393

    Args:
        topk_leaf_ids: The ``k`` most likely leaf ids per sample, ``[N, k]``.
        true_leaf_ids: True leaf ids ``[N]``, ``-1`` for unknown.
        hierarchy: The hierarchy that defines the LCA heights.

    Returns:
        The mean LCA height, between 0 and ``L``.

    Examples:
        >>> h = LabelHierarchy({"cat": "animal", "dog": "animal", "car": "vehicle"})
        >>> cat, dog, car = (h.leaf_id(n) for n in ["cat", "dog", "car"])
        >>> topk = torch.tensor([[cat, dog], [car, cat]])
        >>> hierarchical_distance_at_k(topk, torch.tensor([cat, car]), h)  # (0+1+0+2)/4
        0.75
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
    """Normalised mutual information between a clustering and class labels.

    NMI = I(C; Y) / ((H(C) + H(Y)) / 2), the arithmetic normalisation, which equals
    ``sklearn.metrics.normalized_mutual_info_score`` with its default
    ``average_method="arithmetic"`` (including its conventions: 1.0 when both sides have
    a single group, 0.0 when the mutual information is 0). Samples whose label is
    negative (``-1``, unknown) are ignored. The result does not depend on the values of
    the ids, only on the partitions they induce.

    Args:
        cluster_ids: Cluster assignment ``[N]`` (any integers).
        labels: True labels ``[N]``, ``-1`` for unknown.

    Returns:
        NMI in ``[0, 1]``.

    Raises:
        ValueError: If the shapes differ or the inputs are not 1-D integer tensors.

    Examples:
        >>> normalized_mutual_info(torch.tensor([1, 1, 0, 0]), torch.tensor([0, 0, 1, 1]))
        1.0
        >>> normalized_mutual_info(torch.tensor([0, 1, 0, 1]), torch.tensor([0, 0, 1, 1]))
        0.0
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
