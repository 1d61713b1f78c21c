"""HiConE per pair (``hce_form="pair"``) on masked features, without ``[L, N, N]`` pair losses.

With masks every level has its own similarities ``s_l``, so the one-matrix trick of the
unmasked form does not apply. The terms still need no per-pair maximum over levels:
with ``lse_l(i)`` the log-denominator and ``P_l(i)`` the positives of anchor ``i`` at
level ``l``, the pair loss is ``lse_l(i) - s_l(i, p)``, the anchor's worst pair at level
``l`` is ``lse_l(i) - min_{p in P_l(i)} s_l(i, p)``, its worst pair over the finer levels
is ``f_l(i)`` (a maximum over L values), and

``sum_{p in P_l(i)} max(lse_l(i) - s_l(i, p), f_l(i))
= sum_{P_l(i)} (lse_l(i) - s_l(i, p)) + sum_{P_l(i)} relu(s_l(i, p) - (lse_l(i) - f_l(i)))``.

The first sum comes from per-group sums of the level features; the relu sum and the
minimum are one pass each over level ``l``'s ``[Na, Nc]`` similarities. Values equal
``_hce``'s dense form (tests); at exact ties of a pair loss and the bound the gradient
goes to the pair loss (the relu's convention) where ``torch.maximum`` splits it.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from lightly_hmlc.loss._levels import LevelGroups
from lightly_hmlc.loss._masked_fast import level_inputs
from lightly_hmlc.loss._temperature import Temperature, level_temperature


def masked_pair_level_losses(
    anchors: Tensor,
    contrast: Tensor,
    anchor_index: Tensor,
    groups: LevelGroups,
    temperature: Temperature,
    masks: Tensor | None = None,
    allow_sync: bool = True,
) -> tuple[Tensor, Tensor, Tensor]:
    """``(constrained, unconstrained, is_anchor)``, each ``[L, Na]``, as ``_hce``'s.

    Args:
        anchors: ``[Na, D]`` normalised rows with shared ``masks [1, L, D]``, or
            ``[Na, L, D]`` per-level features (``masks=None``).
        contrast: ``[Nc, D]`` or ``[Nc, L, D]``, containing the anchors.
        anchor_index: ``[Na]`` position of each anchor in ``contrast``.
        groups: Prefix groups of the contrast rows.
        temperature: Softmax temperature: a float, or one per level (coarse to fine).
        masks: Shared masks of the ``[N, D]`` rows (``None`` for per-level features).
        allow_sync: Look for shared 0/1 masks (one host synchronisation).
    """
    with torch.autocast(device_type=anchors.device.type, enabled=False):
        log_denominator, level_features = level_inputs(
            anchors, contrast, anchor_index, temperature, masks, masks, allow_sync
        )
        return _constrained(log_denominator, level_features, anchor_index, groups, temperature)


def _constrained(
    log_denominator: Tensor,
    level_features: list[tuple[Tensor, Tensor]],
    anchor_index: Tensor,
    groups: LevelGroups,
    temperature: Temperature,
) -> tuple[Tensor, Tensor, Tensor]:
    num_anchors = log_denominator.shape[1]
    device, dtype = log_denominator.device, log_denominator.dtype
    rows = torch.arange(num_anchors, device=device)
    inf = torch.full((), math.inf, dtype=dtype, device=device)
    zero = torch.zeros((), dtype=dtype, device=device)
    similarities, positives, counts, means, smallest = [], [], [], [], []
    for level, (a, c) in enumerate(level_features):
        t = level_temperature(temperature, level)
        s = (a / t) @ c.t()  # [Na, Nc]; the anchor's own column stays finite
        ids, valid = groups.ids[:, level], groups.valid[:, level]
        positive = (ids[anchor_index].unsqueeze(1) == ids.unsqueeze(0)) & valid.unsqueeze(0)
        positive &= valid[anchor_index].unsqueeze(1)
        positive[rows, anchor_index] = torch.zeros((), dtype=torch.bool, device=device)
        count = positive.sum(dim=1).to(dtype)
        # The positives' similarity sum from per-group sums: no [Na, Nc] product.
        weight = valid.to(c.dtype).unsqueeze(1)
        sums = torch.zeros(groups.num_groups, c.shape[1], dtype=c.dtype, device=device)
        sums = sums.index_add(0, ids, c * weight)
        own = c[anchor_index] * valid[anchor_index].to(c.dtype).unsqueeze(1)
        positive_sum = (a * (sums[ids[anchor_index]] - own)).sum(dim=1) / t
        similarities.append(s)
        positives.append(positive)
        counts.append(count)
        means.append(positive_sum / count.clamp(min=1.0))
        smallest.append(torch.where(positive, s, inf).amin(dim=1))
    count = torch.stack(counts)
    is_anchor = count > 0
    unconstrained = log_denominator - torch.stack(means)  # [L, Na]
    # The anchor's worst pair per level, then over all finer levels (-inf: none).
    worst = torch.where(is_anchor, log_denominator - torch.stack(smallest), -inf)
    finer = torch.cummax(worst.flip(0), dim=0).values.flip(0)
    finer = torch.cat([finer[1:], (-inf).expand(1, num_anchors)])
    has_finer = finer > -inf
    constrained = []
    for level, (s, positive) in enumerate(zip(similarities, positives, strict=True)):
        threshold = torch.where(has_finer[level], log_denominator[level] - finer[level], zero)
        raised = torch.where(positive, torch.relu(s - threshold.unsqueeze(1)), zero).sum(dim=1)
        raised = torch.where(has_finer[level], raised, zero)
        constrained.append(unconstrained[level] + raised / count[level].clamp(min=1.0))
    constrained_terms = torch.where(is_anchor, torch.stack(constrained), zero)
    unconstrained = torch.where(is_anchor, unconstrained, zero).detach()
    return constrained_terms, unconstrained, is_anchor
