"""HiConE per positive pair: the hierarchy constraint of Zhang et al. as the paper states it.

Zhang et al. (CVPR 2022, https://arxiv.org/abs/2204.13207, the HiConE loss) apply the
constraint inside the sum over positive pairs: the loss of anchor ``i``'s pair
``(i, p)`` at level ``l`` is raised to the largest pair loss of the same anchor at the
finer levels,

``L_l(i, p) = max( l_l(i, p), max_{l' finer than l} max_{p' in P_l'(i)} l_l'(i, p') )``

with ``l_l(i, p) = -log( exp(s_l(i, p)) / sum_{a != i} exp(s_l(i, a)) )`` the SupCon pair
loss on level ``l``'s features. So a pair that shares fewer labels never costs less than
the worst pair of the same anchor that shares more. The finer-level maximum belongs to
the anchor, not to ``p``: it applies to every level-``l`` positive, also one that is not
a positive at the finer level, and an anchor without known finer labels (``-1``) or
without finer positives is not constrained.

Cost: no Python loop over anchors or pairs. Without masks one ``[Na, Nc]`` pass
(:func:`_pair_constrained_shared`, memory O(N^2)); with per-level masks a few
``[L, Na, Nc]`` tensors (:func:`_pair_constrained`, memory O(L N^2)).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from lightly_hmlc.loss._levels import LevelGroups, level_statistics, widen
from lightly_hmlc.loss._temperature import Temperature, level_logits

HCE_FORMS = ("pair", "same_pair", "anchor_mean", "batch_mean")


def pair_constrained_level_losses(
    anchors: Tensor,
    contrast: Tensor,
    anchor_index: Tensor,
    groups: LevelGroups,
    temperature: Temperature,
    form: str = "pair",
    logits: Tensor | None = None,
    log_denominator: Tensor | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """Per-anchor level terms with HiConE applied per positive pair.

    Args:
        anchors: ``[Na, D]`` (shared by all levels) or ``[Na, L, D]`` (per-level
            features), L2-normalised.
        contrast: ``[Nc, D]`` or ``[Nc, L, D]``, containing the anchors.
        anchor_index: ``[Na]`` position of each anchor in ``contrast``.
        groups: Prefix groups of the contrast rows.
        temperature: Softmax temperature: a float, or one per level (coarse to fine).
            Per-level temperatures make a pair's loss differ between levels also
            without masks, so they take the per-level (dense) form.
        form: What bounds a pair (the per-pair ``hce_form`` values). ``"pair"``: the
            anchor's largest finer pair loss. ``"same_pair"``: the SAME pair's losses
            at the finer levels where it is a positive; without masks a pair's loss is
            the same at every level, so this bound never binds and the terms are the
            plain ones. ``"anchor_mean"`` (ours): the anchor's largest finer level
            term, i.e. the mean of its pair losses at a finer level.
        logits: Optional ``[L, Na, Nc]`` similarities / temperature computed already
            (the shared-mask fast path of ``_masked_fast``); then the features only give
            the shapes.
        log_denominator: Optional ``[L, Na, 1]`` log-denominators of those logits.

    Returns:
        ``(constrained, unconstrained, is_anchor)``, each ``[L, Na]``: the mean over the
        anchor's positives of the constrained pair losses, the plain SupCon term (the
        mean of the unconstrained pair losses), both 0 where the row is not an anchor,
        and whether it is an anchor (known prefix and >= 1 positive).
    """
    # As for the group-sum terms: under autocast the logits stay float32.
    with torch.autocast(device_type=anchors.device.type, enabled=False):
        anchors, contrast = widen(anchors), widen(contrast)
        # The one-matrix shortcuts below need ONE temperature for every level.
        # The anchor-mean bound lifts finer pairs too, so the shortcut's linear
        # finer part does not hold: it takes the dense form, O(L N^2) memory.
        dense = anchors.dim() == 3 or logits is not None or form == "anchor_mean"
        if dense or not isinstance(temperature, float):
            return _pair_constrained(
                anchors,
                contrast,
                anchor_index,
                groups,
                temperature,
                form,
                logits,
                log_denominator,
            )
        if form == "same_pair":  # shared features: a pair costs the same at every level
            stats = level_statistics(anchors, contrast, anchor_index, groups, temperature)
            mean = stats.positive_logit_sum / stats.positive_count.clamp(min=1.0)
            plain = torch.where(
                stats.is_anchor, stats.log_denominator - mean, torch.zeros_like(mean)
            )
            return plain, plain.detach(), stats.is_anchor
        return _pair_constrained_shared(anchors, contrast, anchor_index, groups, temperature)


def margin_logits(
    anchors: Tensor,
    contrast: Tensor,
    anchor_index: Tensor,
    temperature: Temperature,
    denominator_bias: Tensor,
) -> tuple[Tensor, Tensor]:
    """``(logits [1 | L, Na, Nc], log_denominator [L, Na, 1])`` for
    :func:`pair_constrained_level_losses`, the denominators offset by
    ``denominator_bias [L, Na, Nc]`` (the hierarchy margin, ``_margin.py``).

    The logits stay the plain similarities (a pair's loss is ``log_denominator - s_ip``)
    and keep the anchor's own column finite, as the dense path expects.
    """
    with torch.autocast(device_type=anchors.device.type, enabled=False):
        anchors, contrast = widen(anchors), widen(contrast)
        anchor_feats = anchors.unsqueeze(0) if anchors.dim() == 2 else anchors.transpose(0, 1)
        contrast_feats = contrast.unsqueeze(0) if contrast.dim() == 2 else contrast.transpose(0, 1)
        logits = level_logits(anchor_feats, contrast_feats, temperature)
        rows = torch.arange(anchors.shape[0], device=anchors.device)
        offset = logits + denominator_bias.to(logits.dtype)  # out of place: [L, Na, Nc]
        offset[:, rows, anchor_index] = torch.full(
            (), -math.inf, dtype=logits.dtype, device=logits.device
        )
        return logits, torch.logsumexp(offset, dim=2, keepdim=True)


def _pair_constrained_shared(
    anchors: Tensor,
    contrast: Tensor,
    anchor_index: Tensor,
    groups: LevelGroups,
    temperature: float,
) -> tuple[Tensor, Tensor, Tensor]:
    """The same terms for features shared by all levels, from one ``[Na, Nc]`` matrix.

    With one similarity matrix ``s``, a pair's loss ``logden_i - s_ip`` is the same at
    every level, and the finer positives nest (``P_l'(i)`` is a subset of ``P_l(i)``
    for finer ``l'``), so the bound at level ``l`` is ``logden_i - m_l+1(i)`` with
    ``m_l+1(i)`` the smallest similarity among the positives of the level below, and

    ``sum_{p in P_l(i)} max(l(i, p), bound) = sum_{P_l(i)} l(i, p)
    + sum_{p in P_l(i)} relu(s_ip - m_l+1(i))``.

    On the finer positives the relu is linear (they are all >= m_l+1), so their part
    comes from the group sums of :func:`level_statistics`, and only the pairs whose
    deepest common level is exactly ``l`` need a per-pair relu. Every pair has one such
    level, so one scatter-min and one relu pass over the matrix serve every level.
    """
    num_levels = groups.ids.shape[1]
    num_anchors = anchors.shape[0]
    stats = level_statistics(anchors, contrast, anchor_index, groups, temperature)
    logits = stats.logits[0]  # [Na, Nc], -inf on the anchor's own column
    device, dtype = logits.device, logits.dtype

    # Deepest common known level of every pair, + 1 (0: not a positive at any level).
    # Prefix groups nest, so the number of levels where both rows are in the same
    # known group is that depth + 1.
    ids, valid = groups.ids, groups.valid
    bucket = torch.zeros(num_anchors, contrast.shape[0], dtype=torch.long, device=device)
    for level in range(num_levels):  # a loop over levels, never over samples
        same = ids[anchor_index, level].unsqueeze(1) == ids[:, level].unsqueeze(0)
        bucket += same & valid[anchor_index, level].unsqueeze(1) & valid[:, level].unsqueeze(0)
    rows = torch.arange(num_anchors, device=device)
    bucket[rows, anchor_index] = torch.zeros((), dtype=torch.long, device=device)

    # m_l(i): the smallest logit over the pairs whose deepest common level is >= l.
    table = torch.full((num_anchors, num_levels + 1), math.inf, dtype=dtype, device=device)
    smallest = table.scatter_reduce(1, bucket, logits, reduce="amin", include_self=False)
    smallest = smallest[:, 1:].flip(1).cummin(1).values.flip(1)  # [Na, L]
    inf = torch.full((num_anchors, 1), math.inf, dtype=dtype, device=device)
    finer_smallest = torch.cat([smallest[:, 1:], inf], dim=1)  # m_l+1(i); inf: none
    # The per-pair relu for the pairs whose deepest common level is exactly l (the
    # bucket-0 column, the non-positives and the anchor itself, is dropped; its logit
    # may be -inf, whose relu is 0).
    threshold = torch.cat([inf, finer_smallest], dim=1).gather(1, bucket)
    raised = torch.zeros_like(table).scatter_add(1, bucket, torch.relu(logits - threshold))

    count = stats.positive_count.t()  # [Na, L]
    total = stats.positive_logit_sum.t()
    zeros = torch.zeros_like(inf)
    finer_count = torch.cat([count[:, 1:], zeros], dim=1)
    finer_total = torch.cat([total[:, 1:], zeros], dim=1)
    has_finer = finer_count > 0
    zero = torch.zeros((), dtype=dtype, device=device)
    bound = torch.where(has_finer, finer_smallest, zero)  # never inf * 0
    lift = torch.where(has_finer, finer_total - finer_count * bound + raised[:, 1:], zero)
    divisor = count.clamp(min=1.0)
    is_anchor = stats.is_anchor.t()
    unconstrained = stats.log_denominator.t() - total / divisor
    constrained = torch.where(is_anchor, unconstrained + lift / divisor, zero).t()
    unconstrained = torch.where(is_anchor, unconstrained, zero).t().detach()
    return constrained, unconstrained, is_anchor.t()


def _pair_constrained(
    anchors: Tensor,
    contrast: Tensor,
    anchor_index: Tensor,
    groups: LevelGroups,
    temperature: Temperature,
    form: str = "pair",
    logits: Tensor | None = None,
    log_denominator: Tensor | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    num_anchors = anchors.shape[0]
    device = anchors.device
    if logits is None:
        anchor_feats = anchors.unsqueeze(0) if anchors.dim() == 2 else anchors.transpose(0, 1)
        contrast_feats = contrast.unsqueeze(0) if contrast.dim() == 2 else contrast.transpose(0, 1)
        logits = level_logits(anchor_feats, contrast_feats, temperature)
    rows = torch.arange(num_anchors, device=device)
    # An anchor is never its own negative. Its own column stays finite in pair_loss, so
    # products with the 0/1 positive mask below are never inf * 0.
    if log_denominator is None:
        denominator_logits = logits.clone()
        # A tensor value, not a Python scalar: no host-to-device copy.
        denominator_logits[:, rows, anchor_index] = torch.full(
            (), -math.inf, dtype=logits.dtype, device=device
        )
        log_denominator = torch.logsumexp(denominator_logits, dim=2, keepdim=True)
    pair_loss = log_denominator - logits  # [1 or L, Na, Nc]

    ids = groups.ids.t()  # [L, Nc]
    valid = groups.valid.t()
    anchor_ids, anchor_valid = ids[:, anchor_index], valid[:, anchor_index]  # [L, Na]
    positive = (anchor_ids.unsqueeze(2) == ids.unsqueeze(1)) & valid.unsqueeze(1)
    positive &= anchor_valid.unsqueeze(2)
    positive[:, rows, anchor_index] = torch.zeros((), dtype=torch.bool, device=device)
    weight = positive.to(pair_loss.dtype)
    count = weight.sum(dim=2)
    is_anchor = count > 0
    divisor = count.clamp(min=1.0)

    # The plain SupCon terms [L, Na]: reported, and, for anchor_mean, the bound itself
    # (so only then differentiated).
    with torch.set_grad_enabled(form == "anchor_mean" and torch.is_grad_enabled()):
        plain = (pair_loss * weight).sum(dim=2) / divisor
    no_pair = torch.full((), -math.inf, dtype=pair_loss.dtype, device=device)
    if form == "same_pair":
        # Each pair's own largest loss over the finer levels where it is a positive.
        own = torch.where(positive, pair_loss, no_pair)  # [L, Na, Nc]
        finer = torch.cummax(own.flip(0), dim=0).values.flip(0)  # levels >= l
        finer = torch.cat([finer[1:], no_pair.expand(1, *finer.shape[1:])])  # levels > l
    else:
        if form == "anchor_mean":  # the anchor's level term at every level
            level_bound = torch.where(is_anchor, plain, no_pair)  # [L, Na]
        else:  # the worst pair of every anchor at every level
            level_bound = torch.where(positive, pair_loss, no_pair).amax(dim=2)
        # ... then the largest of them over all finer levels.
        finer_max = torch.cummax(level_bound.flip(0), dim=0).values.flip(0)  # levels >= l
        finer = torch.cat([finer_max[1:], no_pair.expand(1, num_anchors)]).unsqueeze(2)
    constrained_pairs = torch.maximum(pair_loss, finer)
    constrained = (constrained_pairs * weight).sum(dim=2) / divisor
    return constrained, plain.detach(), is_anchor
