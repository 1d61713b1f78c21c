"""The single place that turns label paths into per-level positives and SupCon terms.

Every loss of the package (``SupConLoss``, ``HMLCLoss``, the masked losses) is built from
the parts in this module, so that a fix or a speed-up lands everywhere:

- :func:`build_level_groups`: label paths ``[N, L]`` -> prefix-group ids per level, from
  one lexicographic sort of the full paths (coarser groups are unions of finer ones, so
  the sorted paths give every level's groups at once), with no data-dependent shape.
- :func:`anchor_level_losses`: the supervised contrastive term of every anchor at every
  level from ONE similarity matrix (or one per level, for per-level masked features or
  per-level temperatures).
  Positives enter only through per-group sums of embeddings:
  ``sum_{p in P_l(i)} z_i . z_p = z_i . (S_{g_l(i)} - z_i)``, so no level needs an
  ``[N, N]`` positive mask.
- :func:`aggregate_levels`: the HMC / HCE / HMCE aggregation.

Distributed parts (one error decision for all ranks, gathering, exact means) are in
``_gather.py``; the checks of ``out0, out1, labels``, the rows every level sees and
``prepare_inputs``, every loss's entry, in ``_features.py``. Nothing here synchronises
host and device unless a value check is asked for: shapes are fixed, constants are made
on the device in the embeddings' dtype.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from lightly_hmlc.loss._gather import LossBatch, reduce_levels
from lightly_hmlc.loss._temperature import Temperature, level_logits, scale_levels

LOSS_TYPES = ("hmc", "hce", "hmce")

LayerPenalty = Callable[[Tensor], Tensor]

_PENALTIES: dict[str, LayerPenalty] = {
    "exp": torch.exp,
    "pow2": lambda x: torch.pow(2.0, x),
    "uniform": torch.ones_like,
}


def resolve_layer_penalty(layer_penalty: str | Sequence[float] | LayerPenalty) -> LayerPenalty:
    """The penalty function of a name (``exp``, ``pow2``, ``uniform``), a callable, or the
    weights themselves, coarse to fine (``[0.5, 1.0]``: the finest level counts twice)."""
    if callable(layer_penalty):
        return layer_penalty
    if isinstance(layer_penalty, list | tuple):
        return functools.partial(_fixed_weights, [float(w) for w in layer_penalty])
    if layer_penalty not in _PENALTIES:
        raise ValueError(
            f"Unknown layer_penalty {layer_penalty!r}: use one of {sorted(_PENALTIES)}, a list "
            "of weights (coarse to fine) or a callable mapping a float tensor to one."
        )
    return _PENALTIES[layer_penalty]


def _fixed_weights(weights: list[float], k_inverse: Tensor) -> Tensor:
    return torch.tensor(weights, dtype=k_inverse.dtype, device=k_inverse.device)


def describe_layer_penalty(layer_penalty: LayerPenalty) -> str:
    """How a resolved penalty reads in a loss's repr: ``'exp'``, ``[0.5, 1.0]``, a name.

    Examples:
        >>> describe_layer_penalty(resolve_layer_penalty("pow2"))
        "'pow2'"
        >>> describe_layer_penalty(resolve_layer_penalty([0.5, 1.0]))
        '[0.5, 1.0]'
    """
    for name, penalty in _PENALTIES.items():
        if layer_penalty is penalty:
            return repr(name)
    if isinstance(layer_penalty, functools.partial) and layer_penalty.func is _fixed_weights:
        return repr(layer_penalty.args[0])
    return getattr(layer_penalty, "__name__", None) or repr(layer_penalty)


def widen(features: Tensor) -> Tensor:
    """float16 / bfloat16 features as float32 (others unchanged): the logits and their
    log-sum-exps are always computed in float32 or wider, also under autocast."""
    return features.float() if features.dtype in (torch.float16, torch.bfloat16) else features


def layer_penalties(
    num_levels: int,
    layer_penalty: LayerPenalty,
    dtype: torch.dtype = torch.float64,
    device: torch.device | str | None = None,
    check: bool = True,
) -> Tensor:
    """lambda of every level, coarse to fine: ``layer_penalty(1 / k)`` with ``k = L - l``.

    ``k`` counts from the finest level (k = 1) up to the coarsest (k = L), as the layer
    index of the reference implementation does, so an increasing penalty favours finer
    levels. The weights are made on ``device`` in ``dtype`` (the embeddings' device and
    dtype, so that nothing is copied to the device per step and float64 stays float64).

    Args:
        num_levels: L.
        layer_penalty: The penalty function.
        dtype: Floating dtype of the weights.
        device: Their device.
        check: Raise a ValueError for weights that are not finite, negative, all zero
            or of the wrong shape (a host-device synchronisation on an accelerator).
    """
    k = torch.arange(num_levels, 0, -1, dtype=dtype, device=device)
    weights = layer_penalty(1.0 / k)
    if not isinstance(weights, Tensor) or weights.numel() != num_levels:
        raise ValueError(
            f"layer_penalty must map a [{num_levels}] tensor to a tensor of the same shape, "
            f"got {weights!r}."
        )
    weights = weights.to(dtype).reshape(-1)
    if not check:
        return weights
    if not bool(torch.isfinite(weights).all()):
        raise ValueError(
            f"layer_penalty must map a [{num_levels}] tensor to finite values of the same "
            f"shape, got {weights.tolist()}."
        )
    if bool((weights < 0).any()):
        raise ValueError(f"layer_penalty gave negative weights {weights.tolist()}.")
    if not bool((weights > 0).any()):
        raise ValueError(
            f"layer_penalty gave all-zero weights {weights.tolist()}: the weighted mean of "
            "the level terms is undefined. Give at least one level a weight > 0."
        )
    return weights


@dataclass(frozen=True)
class LevelGroups:
    """Prefix groups of label paths.

    Attributes:
        ids: ``[N, L]`` id of each row's label prefix at each level. Rows with the same
            id at level ``l`` agree from the root down to ``l``.
        valid: ``[N, L]`` whether the prefix down to level ``l`` is fully known (no -1).
        num_groups: An upper bound on the ids of every level (here the number of rows,
            so that no shape depends on the data).
    """

    ids: Tensor
    valid: Tensor
    num_groups: int


def build_level_groups(labels: Tensor) -> LevelGroups:
    """Prefix-group ids of every level from one lexicographic sort of the full paths.

    Sorted lexicographically, rows that share a prefix are contiguous: a new group at
    level ``l`` starts where a path differs from the previous one anywhere in columns
    ``0..l``. The ids are dense ranks in lexicographic order; ``-1`` is sorted like any
    value (``valid`` marks the known prefixes). No shape depends on the data, so nothing
    synchronises with the device; ``num_groups`` is the number of rows.

    Examples:
        >>> groups = build_level_groups(torch.tensor([[0, 1], [0, 2], [1, 3], [0, 1]]))
        >>> groups.ids.tolist()
        [[0, 0], [0, 1], [1, 2], [0, 0]]
    """
    num_rows, num_levels = labels.shape
    # Lexicographic order: stable sorts from the last column to the first.
    order = torch.arange(num_rows, device=labels.device)
    for level in range(num_levels - 1, -1, -1):
        order = order[torch.sort(labels[order, level], stable=True).indices]
    sorted_paths = labels[order]
    differs = sorted_paths[1:] != sorted_paths[:-1]
    new_group = torch.cumsum(differs.long(), dim=1) > 0
    sorted_ids = torch.cat(
        [new_group.new_zeros(1, num_levels, dtype=torch.long), new_group.long()], dim=0
    ).cumsum(dim=0)
    ids = torch.empty_like(sorted_ids).index_copy_(0, order, sorted_ids)
    valid = torch.cumprod((labels >= 0).long(), dim=1).bool()
    return LevelGroups(ids=ids, valid=valid, num_groups=num_rows)


def anchor_level_losses(
    anchors: Tensor,
    contrast: Tensor,
    anchor_index: Tensor,
    groups: LevelGroups,
    temperature: Temperature,
    include_in_denominator: Tensor | None = None,
    denominator_bias: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """The supervised contrastive term of every anchor at every level.

    For anchor ``i`` at level ``l`` with positives ``P_l(i)`` (contrast rows in the same
    valid prefix group, ``i`` itself excluded) the term is

    ``-1/|P_l(i)| sum_{p in P_l(i)} log( exp(s_ip) / sum_{a != i} exp(s_ia) )``

    with ``s = z z^T / temperature`` (the L_out form of Khosla et al. 2020, eq. 2).

    Args:
        anchors: ``[Na, D]`` (one similarity matrix shared by all levels) or
            ``[Na, L, D]`` (per-level features), L2-normalised.
        contrast: ``[Nc, D]`` or ``[Nc, L, D]``, L2-normalised, containing the anchors.
        anchor_index: ``[Na]`` position of each anchor in ``contrast``.
        groups: Prefix groups of the contrast rows (``valid`` marks who may be an anchor
            or a positive at each level).
        temperature: Softmax temperature: a float, or one per level (coarse to fine).
        include_in_denominator: Optional ``[Nc, L]`` bool: which contrast rows enter the
            denominator at each level (default: all).
        denominator_bias: Optional ``[Na, Nc]`` (every level) or ``[L, Na, Nc]`` (one
            per level) offsets added to the logits inside the denominator only (the
            hierarchy margin); a positive's own logit is unchanged.

    Returns:
        ``(loss, is_anchor)``, both ``[L, Na]``: the term of every anchor (0 where it is
        not an anchor) and whether it is an anchor (known label prefix and >= 1 positive).
    """
    # Autocast would run the similarity matmul in half precision: keep the logits float32.
    with torch.autocast(device_type=anchors.device.type, enabled=False):
        return _anchor_level_losses(
            widen(anchors),
            widen(contrast),
            anchor_index,
            groups,
            temperature,
            include_in_denominator,
            denominator_bias,
        )


def _anchor_level_losses(
    anchors: Tensor,
    contrast: Tensor,
    anchor_index: Tensor,
    groups: LevelGroups,
    temperature: Temperature,
    include_in_denominator: Tensor | None,
    denominator_bias: Tensor | None,
) -> tuple[Tensor, Tensor]:
    stats = level_statistics(
        anchors,
        contrast,
        anchor_index,
        groups,
        temperature,
        include_in_denominator,
        denominator_bias,
    )
    mean_positive_logit = stats.positive_logit_sum / stats.positive_count.clamp(min=1.0)
    loss = torch.where(
        stats.is_anchor,
        stats.log_denominator - mean_positive_logit,
        torch.zeros_like(mean_positive_logit),
    )
    return loss, stats.is_anchor


@dataclass(frozen=True)
class LevelStatistics:
    """What every level's SupCon term is made of, per anchor.

    Attributes:
        logits: ``[1 or L, Na, Nc]`` similarities / temperature, ``-inf`` in each
            anchor's own column (and in columns left out of the denominator).
        log_denominator: ``[L, Na]`` log-sum-exp of each anchor's logits.
        positive_logit_sum: ``[L, Na]`` sum of the logits over the anchor's positives.
        positive_count: ``[L, Na]`` number of positives.
        is_anchor: ``[L, Na]`` known prefix and at least one positive.
    """

    logits: Tensor
    log_denominator: Tensor
    positive_logit_sum: Tensor
    positive_count: Tensor
    is_anchor: Tensor


def level_statistics(
    anchors: Tensor,
    contrast: Tensor,
    anchor_index: Tensor,
    groups: LevelGroups,
    temperature: Temperature,
    include_in_denominator: Tensor | None = None,
    denominator_bias: Tensor | None = None,
) -> LevelStatistics:
    """The logits, denominators and positive sums of every anchor at every level.

    Positives enter through per-group sums of the contrast rows, so no ``[N, N]`` mask
    is built. Inputs as :func:`anchor_level_losses` (already float32 or wider).
    """
    num_levels = groups.ids.shape[1]
    num_anchors = anchors.shape[0]
    device = anchors.device
    # [1 or L, N, D]: a shared matrix for plain features, one per level for masked ones.
    anchor_feats = anchors.unsqueeze(0) if anchors.dim() == 2 else anchors.transpose(0, 1)
    contrast_feats = contrast.unsqueeze(0) if contrast.dim() == 2 else contrast.transpose(0, 1)
    # 1/temperature folded into the anchors (a float; see level_logits for per-level ones).
    logits = level_logits(anchor_feats, contrast_feats, temperature)
    rows = torch.arange(num_anchors, device=device)
    # In place is safe: bmm (and a per-level division) saves its inputs, not its output.
    # An anchor is never its own negative. A tensor value, not a Python scalar: no
    # host-to-device copy.
    logits[:, rows, anchor_index] = torch.full((), -math.inf, dtype=logits.dtype, device=device)
    if include_in_denominator is not None:
        keep = include_in_denominator.t().unsqueeze(1)  # [L, 1, Nc]
        logits = logits.masked_fill(~keep, -math.inf)
    if denominator_bias is not None:
        # Out of place: ``logits`` stays the plain similarities (the positives' logits).
        log_denominator = torch.logsumexp(logits + denominator_bias.to(logits.dtype), dim=2)
    else:
        log_denominator = torch.logsumexp(logits, dim=2)
    log_denominator = log_denominator.expand(num_levels, num_anchors)

    # Group sums of the contrast features, all levels at once: ids offset per level.
    level_offsets = torch.arange(num_levels, device=device).unsqueeze(1) * groups.num_groups
    flat_ids = groups.ids.t() + level_offsets  # [L, Nc]
    valid = groups.valid.t()  # [L, Nc]
    contrast_per_level = contrast_feats.expand(num_levels, -1, -1)  # [L, Nc, D]
    dim = contrast_per_level.shape[-1]
    # Unknown prefixes add zero rows (no boolean indexing: that would synchronise).
    valid_weight = valid.to(contrast_per_level.dtype)
    sums = torch.zeros(
        num_levels * groups.num_groups, dim, dtype=contrast_per_level.dtype, device=device
    ).index_add(
        0, flat_ids.flatten(), (contrast_per_level * valid_weight.unsqueeze(2)).flatten(0, 1)
    )
    counts = torch.zeros(
        num_levels * groups.num_groups, dtype=contrast_per_level.dtype, device=device
    ).index_add(0, flat_ids.flatten(), valid_weight.flatten())
    anchor_ids = flat_ids[:, anchor_index]  # [L, Na]
    anchor_valid = valid[:, anchor_index]
    anchor_per_level = anchor_feats.expand(num_levels, -1, -1)  # [L, Na, D]
    self_feats = contrast_per_level[:, anchor_index]  # the anchor's own contrast row
    positive_dot = (anchor_per_level * (sums[anchor_ids] - self_feats)).sum(-1)
    positive_count = counts[anchor_ids] - 1.0
    return LevelStatistics(
        logits=logits,
        log_denominator=log_denominator,
        positive_logit_sum=scale_levels(positive_dot, temperature),
        positive_count=positive_count,
        is_anchor=anchor_valid & (positive_count > 0),
    )


def level_terms(
    batch: LossBatch, temperature: Temperature, denominator_bias: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """Per-level SupCon terms of a loss batch: ``(share, value)`` as :func:`reduce_levels`."""
    loss, is_anchor = anchor_level_losses(
        batch.anchors,
        batch.contrast,
        batch.anchor_index,
        build_level_groups(batch.contrast_labels),
        temperature,
        denominator_bias=denominator_bias,
    )
    return reduce_levels(loss, is_anchor, batch.distributed)


def aggregate_levels(
    share: Tensor, value: Tensor, loss_type: str, weights: Tensor | None
) -> Tensor:
    """Combines the level terms (coarse to fine) into the HMC / HCE / HMCE loss.

    Args:
        share: ``[L]`` level terms carrying the gradient (see :func:`reduce_levels`).
        value: ``[L]`` detached global level terms; they decide the HCE maxima.
        loss_type: ``hmc`` (weighted sum), ``hce`` (each level at least as large as every
            finer level, i.e. the hierarchy constraint, then averaged) or ``hmce`` (both).
        weights: ``[L]`` level weights for ``hmc``/``hmce``; for ``hce`` the
            uniform weights ``1/L`` are used when ``None``.

    Returns:
        The loss. Its value is the global-batch loss; its gradient is this rank's share.
    """
    num_levels = share.shape[0]
    if loss_type in ("hce", "hmce"):
        # Level l takes the largest term among itself and all finer levels.
        _, reversed_index = torch.cummax(value.flip(0), dim=0)
        source = (num_levels - 1 - reversed_index).flip(0)
        share, value = share[source], value[source]
    if weights is None:
        weights = torch.full(
            (num_levels,), 1.0 / num_levels, dtype=share.dtype, device=share.device
        )
    weights = weights.to(device=share.device, dtype=share.dtype)
    total_share = (weights * share).sum()
    total_value = (weights * value).sum()
    return total_share + (total_value - total_share).detach()
