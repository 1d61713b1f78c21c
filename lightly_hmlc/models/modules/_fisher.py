"""Per-dimension relevance descriptors for G-HMLC: log Fisher ratios per hierarchy level.

Pure functions of the running class statistics of
:class:`~lightly_hmlc.models.modules.prefix_statistics.LabelPrefixStatistics`. Each
embedding dimension d becomes a point in R^L whose coordinate l is the log Fisher ratio
(between-class / within-class variance) of d at level l; the GMM of G-HMLC (Ott et al.,
https://arxiv.org/abs/2510.00837) clusters these points. See ``docs/METHOD.md``.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

DescriptorNormalization = Literal["none", "center"]

_TINY = torch.finfo(torch.float64).tiny


def check_descriptor_options(descriptor_normalization: str, fisher_floor: float) -> None:
    """Raises a ValueError naming a descriptor option that is out of range."""
    if descriptor_normalization not in ("none", "center"):
        raise ValueError(
            f"descriptor_normalization must be 'none' or 'center', got "
            f"{descriptor_normalization!r}."
        )
    if not 0.0 < fisher_floor < 1.0:
        raise ValueError(f"fisher_floor must be in (0, 1), got {fisher_floor}.")


def fisher_descriptors(
    class_keys: Tensor,
    num_classes: list[int],
    class_count: Tensor,
    class_sum: Tensor,
    level_sumsq: Tensor,
    *,
    fisher_floor: float = 1e-6,
) -> Tensor:
    """Clamped log Fisher ratio of every dimension at every level.

    Args:
        class_keys: [L, C, L] label prefixes of the classes (padded with -1).
        num_classes: Classes in use per level (L ints).
        class_count: [L, C] (decayed) sample count per class.
        class_sum: [L, C, D] (decayed) sum of the projections per class.
        level_sumsq: [L, D] (decayed) sum of squared projections per level.
        fisher_floor: Ratios are clamped to ``[fisher_floor, 1 / fisher_floor]`` first.

    Returns:
        float64 tensor [D, L].

    Examples:
        >>> keys = torch.tensor([[[0], [1]]])  # one level, two classes
        >>> count = torch.tensor([[2.0, 2.0]], dtype=torch.float64)
        >>> sums = torch.tensor([[[0.0, 2.0], [4.0, 2.0]]], dtype=torch.float64)
        >>> sumsq = torch.tensor([[10.0, 6.0]], dtype=torch.float64)
        >>> ratios = fisher_descriptors(keys, [2], count, sums, sumsq).exp()[:, 0]
        >>> round(float(ratios[0]), 6), round(float(ratios[1]), 6)  # dim 1 separates nothing
        (2.0, 1e-06)
    """
    L, D = level_sumsq.shape
    desc = torch.empty(D, L, dtype=torch.float64, device=class_sum.device)
    for level in range(L):
        n = num_classes[level]
        counts = class_count[level, :n].to(torch.float64)
        sums = class_sum[level, :n].to(torch.float64)
        total = counts.sum()
        safe = counts.clamp_min(_TINY)
        ss_class = torch.where(counts[:, None] > 0, sums.square() / safe[:, None], 0).sum(0)
        if level > 0 and n > 0:
            parents = class_keys[level, :n, :level]
            _, group = torch.unique(parents, dim=0, return_inverse=True)
            # n groups at most; unused ones have zero count and add nothing (no device read).
            g_counts = counts.new_zeros(n).index_add_(0, group, counts)
            g_sums = sums.new_zeros(n, D).index_add_(0, group, sums)
            g_safe = g_counts.clamp_min(_TINY)
            ss_parent = torch.where(g_counts[:, None] > 0, g_sums.square() / g_safe[:, None], 0)
            ss_parent = ss_parent.sum(0)
        else:
            ss_parent = sums.sum(0).square() / total.clamp_min(_TINY)
        norm = total.clamp_min(_TINY)
        between = (ss_class - ss_parent).clamp_min(0) / norm
        within = (level_sumsq[level].to(torch.float64) - ss_class).clamp_min(0) / norm
        ratio = between / within.clamp_min(_TINY)
        desc[:, level] = ratio.clamp(fisher_floor, 1.0 / fisher_floor).log()
    return desc


def relevance_scores(descriptors: Tensor, normalization: DescriptorNormalization) -> Tensor:
    """The per-level scores used to match components to levels, [D, L].

    Args:
        descriptors: [D, L] log Fisher ratios.
        normalization: ``"none"`` keeps them; ``"center"`` subtracts each dimension's mean
            over levels (relative relevance).

    Returns:
        Tensor [D, L].

    Examples:
        >>> relevance_scores(torch.tensor([[1.0, 3.0]]), "center")
        tensor([[-1.,  1.]])
    """
    if normalization == "center":
        return descriptors - descriptors.mean(1, keepdim=True)
    return descriptors


def fit_points(descriptors: Tensor, normalization: DescriptorNormalization) -> Tensor:
    """The points the GMM clusters: the descriptors, or their free centered coordinates.

    Args:
        descriptors: [D, L] log Fisher ratios.
        normalization: ``"none"`` or ``"center"`` (see :func:`relevance_scores`).

    Returns:
        [D, L] for ``"none"`` (or L == 1), [D, L - 1] for ``"center"``.

    Examples:
        >>> fit_points(torch.tensor([[1.0, 3.0]]), "center")
        tensor([[-1.]])
    """
    if normalization == "center" and descriptors.shape[1] > 1:
        # The centered points live in an (L-1)-dim subspace: drop the dependent coordinate.
        return relevance_scores(descriptors, normalization)[:, :-1]
    return descriptors
