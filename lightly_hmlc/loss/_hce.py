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

Cost: one ``[L, Na, Nc]`` tensor of pair losses (``Na`` anchors, ``Nc`` contrast rows, L
levels), i.e. memory O(L N^2), computed in a few vectorised passes; no Python loop over
anchors or pairs.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from lightly_hmlc.loss._levels import LevelGroups

HCE_FORMS = ("pair", "batch_mean")


def pair_constrained_level_losses(
    anchors: Tensor,
    contrast: Tensor,
    anchor_index: Tensor,
    groups: LevelGroups,
    temperature: float,
) -> tuple[Tensor, Tensor, Tensor]:
    """Per-anchor level terms with HiConE applied per positive pair.

    Args:
        anchors: ``[Na, D]`` (shared by all levels) or ``[Na, L, D]`` (per-level
            features), L2-normalised.
        contrast: ``[Nc, D]`` or ``[Nc, L, D]``, containing the anchors.
        anchor_index: ``[Na]`` position of each anchor in ``contrast``.
        groups: Prefix groups of the contrast rows.
        temperature: Softmax temperature.

    Returns:
        ``(constrained, unconstrained, is_anchor)``, each ``[L, Na]``: the mean over the
        anchor's positives of the constrained pair losses, the plain SupCon term (the
        mean of the unconstrained pair losses), both 0 where the row is not an anchor,
        and whether it is an anchor (known prefix and >= 1 positive).
    """
    # As for the group-sum terms: under autocast the logits stay float32.
    with torch.autocast(device_type=anchors.device.type, enabled=False):
        low = (torch.float16, torch.bfloat16)
        return _pair_constrained(
            anchors.float() if anchors.dtype in low else anchors,
            contrast.float() if contrast.dtype in low else contrast,
            anchor_index,
            groups,
            temperature,
        )


def _pair_constrained(
    anchors: Tensor,
    contrast: Tensor,
    anchor_index: Tensor,
    groups: LevelGroups,
    temperature: float,
) -> tuple[Tensor, Tensor, Tensor]:
    num_anchors = anchors.shape[0]
    device = anchors.device
    anchor_feats = anchors.unsqueeze(0) if anchors.dim() == 2 else anchors.transpose(0, 1)
    contrast_feats = contrast.unsqueeze(0) if contrast.dim() == 2 else contrast.transpose(0, 1)
    logits = torch.bmm(anchor_feats / temperature, contrast_feats.transpose(1, 2))
    rows = torch.arange(num_anchors, device=device)
    # An anchor is never its own negative. Its own column stays finite in pair_loss, so
    # products with the 0/1 positive mask below are never inf * 0.
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

    # The worst pair of every anchor at every level, then the worst of all finer levels.
    no_pair = torch.full((), -math.inf, dtype=pair_loss.dtype, device=device)
    level_max = torch.where(positive, pair_loss, no_pair).amax(dim=2)  # [L, Na]
    finer_max = torch.cummax(level_max.flip(0), dim=0).values.flip(0)  # levels >= l
    finer_max = torch.cat([finer_max[1:], no_pair.expand(1, num_anchors)])  # levels > l
    constrained_pairs = torch.maximum(pair_loss, finer_max.unsqueeze(2))
    constrained = (constrained_pairs * weight).sum(dim=2) / divisor
    with torch.no_grad():  # only reported, never differentiated
        unconstrained = (pair_loss * weight).sum(dim=2) / divisor
    return constrained, unconstrained, is_anchor
