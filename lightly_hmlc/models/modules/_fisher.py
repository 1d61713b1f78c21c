"""G-HMLC's descriptors: the log Fisher ratio of every embedding dimension at every level."""

from __future__ import annotations

import torch
from torch import Tensor

_TINY = torch.finfo(torch.float64).tiny


def fisher_descriptors(
    class_keys: Tensor,
    num_classes: list[int],
    class_count: Tensor,
    class_sum: Tensor,
    level_sumsq: Tensor,
    *,
    fisher_floor: float = 1e-6,
) -> Tensor:
    """Clamped log Fisher ratio [D, L] (float64) of every dimension at every level.

    From the tables of :class:`~.prefix_statistics.LabelPrefixStatistics`. The
    between-class variance of level l > 0 is taken around each class's parent mean (what
    level l separates beyond level l - 1); level 0 uses the global mean.
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
