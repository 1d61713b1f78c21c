"""An explicit instance level below the finest label level (ours; issue 11 item 2).

With ``instance_weight = w > 0`` the HMLC losses add the NT-Xent (SimCLR) term of an
instance level below the finest: anchor ``i``'s only positive is the other view of the
same sample, ``i'``,

``L_inst = mean_i [ -log( exp(s_ii') / sum_{a != i} exp(s_ia) ) ]``,

computed on the same logits as the finest label level (its features, with masks its
masked features, and its temperature), so the denominator holds every contrast row but
the anchor itself, memory rows included. The instance ids are the loss batch's sample
ids: both views of a sample share one, they are unique across ranks under
``gather_distributed`` (rank ``r``'s samples are ``r * B ... r * B + B - 1``), and memory
rows get ids of their own, so they are never instance positives. Every batch row is an
anchor (its other view is always there); ``level_balance="class"`` would weigh every
instance class (two anchors each) equally, which is the plain mean, so it is not applied.

The term enters the aggregation as one more weighted level,

``(sum_l lambda_l L_l + w L_inst) / (Z + w)``

with ``Z = sum_l lambda_l`` (``normalize_weights=True``) or ``Z = L``
(``normalize_weights=False``; for ``hce`` every ``lambda_l = 1``, so ``Z = L`` either
way). It is not constrained by HiConE and does not bound the coarser levels: the label
levels' constraint is computed as without it.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from lightly_hmlc.loss._gather import LossBatch, reduce_levels
from lightly_hmlc.loss._levels import anchor_level_losses, build_level_groups, layer_penalties
from lightly_hmlc.loss._temperature import is_finite_non_negative


def check_instance_weight(instance_weight: object) -> float:
    """``instance_weight`` as a float if it is a finite number >= 0; else a ValueError."""
    if not is_finite_non_negative(instance_weight):
        raise ValueError(
            f"instance_weight must be a finite number >= 0, got {instance_weight!r}: 0 "
            "(default) keeps the instance level implicit, w > 0 adds the NT-Xent term of "
            "the other view with weight w relative to the level weights."
        )
    return float(instance_weight)


def hmlc_weights(
    loss: Any, num_levels: int, dtype: torch.dtype, device: torch.device | str | None
) -> tuple[Tensor | None, Tensor | None]:
    """An HMLC loss's ``[L]`` level weights (``None``: uniform) and its instance weight.

    ``loss`` is an ``HMLCLoss`` (or masked loss): its ``loss_type``, ``layer_penalty``,
    ``normalize_weights``, ``reference_compatible``, ``instance_weight`` and
    ``check_values`` decide. The instance weight is ``None`` without an instance term.
    """
    if loss.loss_type == "hce" and loss.reference_compatible:
        weights = torch.full((num_levels,), 1.0 / (num_levels + 1), dtype=dtype, device=device)
        return weights, None
    penalties = None
    if loss.loss_type != "hce":
        penalties = layer_penalties(
            num_levels, loss.layer_penalty, dtype, device, check=loss.check_values
        )
        if loss.reference_compatible:
            return penalties / (num_levels + 1), None
    return level_and_instance_weights(
        penalties, num_levels, loss.normalize_weights, loss.instance_weight, dtype, device
    )


def level_and_instance_weights(
    penalties: Tensor | None,
    num_levels: int,
    normalize_weights: bool,
    instance_weight: float,
    dtype: torch.dtype,
    device: torch.device | str | None,
) -> tuple[Tensor | None, Tensor | None]:
    """The ``[L]`` label-level weights and the instance level's weight (``None``: none).

    Args:
        penalties: ``lambda_l``, coarse to fine; ``None`` for ``hce`` (uniform weights).
        num_levels: L.
        normalize_weights: Divide by ``sum(lambda)`` rather than by ``L``.
        instance_weight: ``w``; 0 gives the weights of a loss without the instance level
            (``None`` for ``hce``'s uniform mean, as :func:`aggregate_levels` takes it).
        dtype: Floating dtype of the weights.
        device: Their device.
    """
    if instance_weight == 0:
        if penalties is None:
            return None, None
        return (penalties / penalties.sum() if normalize_weights else penalties / num_levels), None
    if penalties is None:  # hce: lambda_l = 1, so sum(lambda) = L
        penalties = torch.ones(num_levels, dtype=dtype, device=device)
        divisor = torch.full((), num_levels + instance_weight, dtype=dtype, device=device)
    elif normalize_weights:
        divisor = penalties.sum() + instance_weight
    else:
        divisor = torch.full((), num_levels + instance_weight, dtype=dtype, device=device)
    return penalties / divisor, instance_weight / divisor


def instance_terms(
    batch: LossBatch, masks: Tensor | None, temperature: float
) -> tuple[Tensor, Tensor]:
    """``(share, value)``, both ``[1]``: the NT-Xent term of the loss batch.

    Args:
        batch: The loss batch (``[N, D]`` rows or ``[N, L, D]`` per-level features).
        masks: Shared masks ``[1, L, D]`` still to apply to ``[N, D]`` rows, or ``None``.
        temperature: The finest level's temperature.
    """
    anchors, contrast = batch.anchors, batch.contrast
    if anchors.dim() == 3:  # per-level features: the finest level's
        anchors, contrast = anchors[:, -1], contrast[:, -1]
    elif masks is not None:
        finest = masks[:, -1]
        same_rows = anchors is contrast
        anchors = F.normalize(anchors * finest, dim=1)
        contrast = anchors if same_rows else F.normalize(contrast * finest, dim=1)
    instances = build_level_groups(batch.sample_index.unsqueeze(1))
    loss, is_anchor = anchor_level_losses(
        anchors, contrast, batch.anchor_index, instances, temperature
    )
    return reduce_levels(loss, is_anchor, batch.distributed)


def add_instance_term(
    loss: Tensor,
    level_losses: Tensor,
    weight: Tensor,
    batch: LossBatch,
    masks: Tensor | None,
    temperature: float,
) -> tuple[Tensor, Tensor]:
    """``loss + weight * L_inst`` and the level losses with ``L_inst`` appended last.

    The value is the global batch's; the gradient is this rank's share, as for the
    level terms (see :func:`~lightly_hmlc.loss._gather.reduce_levels`).
    """
    share, value = instance_terms(batch, masks, temperature)
    weight = weight.to(device=share.device, dtype=share.dtype)
    term = weight * (share[0] + (value[0] - share[0]).detach())
    return loss + term, torch.cat([level_losses, value.to(level_losses.dtype)])
