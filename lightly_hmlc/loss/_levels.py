"""The single place that turns label paths into per-level positives and SupCon terms.

Every loss of the package (``SupConLoss``, ``HMLCLoss``, the masked losses) is built from
the parts in this module, so that a fix or a speed-up lands everywhere:

- :func:`validate_inputs`: the checks every loss applies to ``out0, out1, labels``.
- :func:`build_level_groups`: label paths ``[N, L]`` -> prefix-group ids per level, from
  one ``torch.unique`` over the full paths (coarser groups are unions of finer ones, so
  the sorted unique paths give every level's groups at once).
- :func:`gather_for_loss`: the local anchors, and the contrast set gathered from all
  ranks together with its labels.
- :func:`anchor_level_losses`: the supervised contrastive term of every anchor at every
  level from ONE similarity matrix (or one per level, for per-level masked features).
  Positives enter only through per-group sums of embeddings:
  ``sum_{p in P_l(i)} z_i . z_p = z_i . (S_{g_l(i)} - z_i)``, so no level needs an
  ``[N, N]`` positive mask.
- :func:`reduce_levels` and :func:`aggregate_levels`: the per-level means (exact across
  ranks) and the HMC / HCE / HMCE aggregation.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.distributed as torch_dist
import torch.nn.functional as F
from lightly.utils import dist
from torch import Tensor

LOSS_TYPES = ("hmc", "hce", "hmce")

LayerPenalty = Callable[[Tensor], Tensor]

_PENALTIES: dict[str, LayerPenalty] = {
    "exp": torch.exp,
    "pow2": lambda x: torch.pow(2.0, x),
    "uniform": torch.ones_like,
}


def resolve_layer_penalty(layer_penalty: str | LayerPenalty) -> LayerPenalty:
    """Returns the penalty function for a name (``exp``, ``pow2``, ``uniform``) or a callable."""
    if callable(layer_penalty):
        return layer_penalty
    if layer_penalty not in _PENALTIES:
        raise ValueError(
            f"Unknown layer_penalty {layer_penalty!r}: use one of {sorted(_PENALTIES)} or a "
            "callable mapping a float tensor to a float tensor."
        )
    return _PENALTIES[layer_penalty]


def layer_penalties(num_levels: int, layer_penalty: LayerPenalty) -> Tensor:
    """lambda of every level, coarse to fine: ``layer_penalty(1 / k)`` with ``k = L - l``.

    ``k`` counts from the finest level (k = 1) up to the coarsest (k = L), as the layer
    index of the reference implementation does, so an increasing penalty favours finer
    levels.
    """
    k = torch.arange(num_levels, 0, -1, dtype=torch.float32)
    weights = layer_penalty(1.0 / k).to(torch.float32).reshape(-1)
    if weights.shape != (num_levels,) or not bool(torch.isfinite(weights).all()):
        raise ValueError(
            f"layer_penalty must map a [{num_levels}] tensor to finite values of the same "
            f"shape, got {weights.tolist()}."
        )
    if bool((weights < 0).any()):
        raise ValueError(f"layer_penalty gave negative weights {weights.tolist()}.")
    return weights


def validate_inputs(
    out0: Tensor, out1: Tensor, labels: Tensor, num_levels: int | None = None
) -> Tensor:
    """Checks the two views and the labels; returns labels as ``[B, L]`` int64.

    Raises:
        ValueError: Naming the problem (dimensions, batch sizes, dtype, depth, non-finite
            values, empty batch, labels below -1) and how to fix it.
    """
    for name, out in (("out0", out0), ("out1", out1)):
        if not isinstance(out, Tensor):
            raise ValueError(f"{name} must be a torch.Tensor, got {type(out).__name__}.")
        if out.dim() != 2:
            raise ValueError(
                f"{name} must have shape [batch_size, dim], got {tuple(out.shape)}. Flatten "
                "the projections (e.g. out.flatten(1)) before the loss."
            )
        if not out.dtype.is_floating_point:
            raise ValueError(f"{name} must be a floating point tensor, got {out.dtype}.")
    if out0.shape != out1.shape:
        raise ValueError(
            f"out0 and out1 must have the same shape (one row per sample and view), got "
            f"{tuple(out0.shape)} and {tuple(out1.shape)}."
        )
    batch_size = out0.shape[0]
    if batch_size == 0:
        raise ValueError("The batch is empty: out0 and out1 have no rows.")
    if out0.shape[1] == 0:
        raise ValueError("The embeddings have width 0.")
    if not isinstance(labels, Tensor):
        raise ValueError(f"labels must be a torch.Tensor, got {type(labels).__name__}.")
    if labels.dtype.is_floating_point or labels.dtype.is_complex or labels.dtype == torch.bool:
        raise ValueError(
            f"labels must be integers (class ids, -1 for unknown), got dtype {labels.dtype}. "
            "Convert them with labels.long()."
        )
    if labels.dim() == 1:
        labels = labels.unsqueeze(1)
    if labels.dim() != 2:
        raise ValueError(
            f"labels must have shape [batch_size] or [batch_size, num_levels], got "
            f"{tuple(labels.shape)}."
        )
    if labels.shape[0] != batch_size:
        raise ValueError(
            f"labels has {labels.shape[0]} rows but the embeddings have {batch_size}: "
            "pass one label path per sample (not per view)."
        )
    if labels.shape[1] == 0:
        raise ValueError("labels has no level (shape [B, 0]).")
    if num_levels is not None and labels.shape[1] != num_levels:
        raise ValueError(
            f"labels has {labels.shape[1]} levels but the loss was configured with "
            f"num_levels={num_levels}. Pass label paths of the hierarchy's depth, coarse "
            "to fine, or change num_levels."
        )
    if bool((labels < -1).any()):
        raise ValueError(
            f"labels contain values below -1 (min {int(labels.min())}): use class ids >= 0, "
            "and -1 only for an unknown level."
        )
    if not bool(torch.isfinite(out0).all()) or not bool(torch.isfinite(out1).all()):
        raise ValueError(
            "The embeddings contain NaN or Inf. Check the model's outputs (e.g. a diverged "
            "training step or a too-large learning rate)."
        )
    return labels.to(device=out0.device, dtype=torch.long)


@dataclass(frozen=True)
class LevelGroups:
    """Prefix groups of label paths.

    Attributes:
        ids: ``[N, L]`` id of each row's label prefix at each level. Rows with the same
            id at level ``l`` agree from the root down to ``l``.
        valid: ``[N, L]`` whether the prefix down to level ``l`` is fully known (no -1).
        num_groups: An upper bound on the ids of every level (the number of distinct
            full label paths).
    """

    ids: Tensor
    valid: Tensor
    num_groups: int


def build_level_groups(labels: Tensor) -> LevelGroups:
    """Prefix-group ids of every level from one grouped pass over the full paths.

    ``torch.unique(dim=0)`` sorts the distinct paths lexicographically, so rows that share
    a prefix are contiguous: a new group at level ``l`` starts where a path differs from
    the previous one anywhere in columns ``0..l``.

    Examples:
        >>> groups = build_level_groups(torch.tensor([[0, 1], [0, 2], [1, 3], [0, 1]]))
        >>> groups.ids.tolist()
        [[0, 0], [0, 1], [1, 2], [0, 0]]
    """
    unique_paths, inverse = torch.unique(labels, dim=0, sorted=True, return_inverse=True)
    num_levels = labels.shape[1]
    differs = unique_paths[1:] != unique_paths[:-1]
    new_group = torch.cumsum(differs.long(), dim=1) > 0
    offsets = torch.cat(
        [new_group.new_zeros(1, num_levels, dtype=torch.long), new_group.long()], dim=0
    ).cumsum(dim=0)
    valid = torch.cumprod((labels >= 0).long(), dim=1).bool()
    return LevelGroups(ids=offsets[inverse], valid=valid, num_groups=int(unique_paths.shape[0]))


@dataclass(frozen=True)
class LossBatch:
    """Anchors and contrast set of one loss call.

    Attributes:
        anchors: ``[Na, D]`` or ``[Na, L, D]`` local features (both views stacked).
        contrast: ``[Nc, D]`` or ``[Nc, L, D]`` features of all ranks.
        anchor_index: ``[Na]`` position of every anchor in ``contrast``.
        contrast_labels: ``[Nc, L]`` label paths of the contrast rows.
        sample_index: ``[Nc]`` global sample id of each contrast row (both views of one
            sample share it).
        distributed: Whether the contrast set spans several ranks.
    """

    anchors: Tensor
    contrast: Tensor
    anchor_index: Tensor
    contrast_labels: Tensor
    sample_index: Tensor
    distributed: bool


def gather_for_loss(features: Tensor, labels: Tensor, gather_distributed: bool) -> LossBatch:
    """Builds the anchors and the (gathered) contrast set.

    Args:
        features: ``[2B, ...]`` both views stacked, view 0 first.
        labels: ``[2B, L]`` the label paths of those rows.
        gather_distributed: Gather features AND labels from all ranks. Every rank must
            hold the same batch size.
    """
    rows = features.shape[0]
    batch_size = rows // 2
    device = features.device
    local_index = torch.arange(rows, device=device)
    local_sample = local_index % batch_size
    world_size = dist.world_size() if gather_distributed else 1
    if world_size == 1:
        return LossBatch(features, features, local_index, labels, local_sample, False)
    sizes = [torch.zeros(1, dtype=torch.long, device=device) for _ in range(world_size)]
    torch_dist.all_gather(sizes, torch.tensor([rows], dtype=torch.long, device=device))
    if len({int(size) for size in sizes}) != 1:
        raise ValueError(
            f"gather_distributed needs the same batch size on every rank, got "
            f"{[int(size) // 2 for size in sizes]}. Use drop_last=True in the DataLoader "
            "(or a DistributedSampler with drop_last=True)."
        )
    rank = dist.rank()
    contrast = torch.cat(dist.gather(features), dim=0)
    gathered_labels = [torch.empty_like(labels) for _ in range(world_size)]
    torch_dist.all_gather(gathered_labels, labels.contiguous())
    sample_index = torch.cat([local_sample + r * batch_size for r in range(world_size)])
    return LossBatch(
        anchors=features,
        contrast=contrast,
        anchor_index=local_index + rank * rows,
        contrast_labels=torch.cat(gathered_labels, dim=0),
        sample_index=sample_index,
        distributed=True,
    )


def anchor_level_losses(
    anchors: Tensor,
    contrast: Tensor,
    anchor_index: Tensor,
    groups: LevelGroups,
    temperature: float,
    include_in_denominator: Tensor | None = None,
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
        temperature: Softmax temperature.
        include_in_denominator: Optional ``[Nc, L]`` bool: which contrast rows enter the
            denominator at each level (default: all).

    Returns:
        ``(loss, is_anchor)``, both ``[L, Na]``: the term of every anchor (0 where it is
        not an anchor) and whether it is an anchor (known label prefix and >= 1 positive).
    """
    # Autocast would run the similarity matmul in half precision: keep the logits float32.
    with torch.autocast(device_type=anchors.device.type, enabled=False):
        return _anchor_level_losses(
            anchors.float() if anchors.dtype in (torch.float16, torch.bfloat16) else anchors,
            contrast.float() if contrast.dtype in (torch.float16, torch.bfloat16) else contrast,
            anchor_index,
            groups,
            temperature,
            include_in_denominator,
        )


def _anchor_level_losses(
    anchors: Tensor,
    contrast: Tensor,
    anchor_index: Tensor,
    groups: LevelGroups,
    temperature: float,
    include_in_denominator: Tensor | None,
) -> tuple[Tensor, Tensor]:
    num_levels = groups.ids.shape[1]
    num_anchors = anchors.shape[0]
    device = anchors.device
    # [1 or L, N, D]: a shared matrix for plain features, one per level for masked ones.
    anchor_feats = anchors.unsqueeze(0) if anchors.dim() == 2 else anchors.transpose(0, 1)
    contrast_feats = contrast.unsqueeze(0) if contrast.dim() == 2 else contrast.transpose(0, 1)
    # 1/temperature folded into the anchors: one fewer pass over the [Na, Nc] logits.
    logits = torch.bmm(anchor_feats / temperature, contrast_feats.transpose(1, 2))
    rows = torch.arange(num_anchors, device=device)
    # In place is safe: bmm saves its inputs, not its output, for the backward pass.
    logits[:, rows, anchor_index] = -math.inf  # an anchor is never its own negative
    if include_in_denominator is not None:
        keep = include_in_denominator.t().unsqueeze(1)  # [L, 1, Nc]
        logits = logits.masked_fill(~keep, -math.inf)
    log_denominator = torch.logsumexp(logits, dim=2)
    log_denominator = log_denominator.expand(num_levels, num_anchors)

    # Group sums of the contrast features, all levels at once: ids offset per level.
    level_offsets = torch.arange(num_levels, device=device).unsqueeze(1) * groups.num_groups
    flat_ids = groups.ids.t() + level_offsets  # [L, Nc]
    valid = groups.valid.t()  # [L, Nc]
    contrast_per_level = contrast_feats.expand(num_levels, -1, -1)  # [L, Nc, D]
    dim = contrast_per_level.shape[-1]
    sums = torch.zeros(
        num_levels * groups.num_groups, dim, dtype=contrast_per_level.dtype, device=device
    ).index_add(0, flat_ids[valid], contrast_per_level[valid])
    counts = torch.zeros(num_levels * groups.num_groups, device=device).index_add(
        0, flat_ids[valid], torch.ones_like(flat_ids[valid], dtype=torch.float32)
    )
    anchor_ids = flat_ids[:, anchor_index]  # [L, Na]
    anchor_valid = valid[:, anchor_index]
    anchor_per_level = anchor_feats.expand(num_levels, -1, -1)  # [L, Na, D]
    self_feats = contrast_per_level[:, anchor_index]  # the anchor's own contrast row
    positive_dot = (anchor_per_level * (sums[anchor_ids] - self_feats)).sum(-1)
    positive_count = counts[anchor_ids] - 1.0
    is_anchor = anchor_valid & (positive_count > 0)
    mean_positive_logit = positive_dot / (temperature * positive_count.clamp(min=1.0))
    loss = torch.where(
        is_anchor, log_denominator - mean_positive_logit, torch.zeros_like(mean_positive_logit)
    )
    return loss, is_anchor


def reduce_levels(loss: Tensor, is_anchor: Tensor, distributed: bool) -> tuple[Tensor, Tensor]:
    """Per-level mean over anchors, exact across ranks.

    Returns:
        ``(share, value)``, both ``[L]``. ``value`` is the detached per-level mean over
        the anchors of ALL ranks. ``share`` carries the gradient: its mean over ranks is
        ``value``, so DDP's gradient averaging gives the global-batch gradient. A level
        without any anchor contributes 0.
    """
    local_sum = loss.sum(dim=1)
    local_count = is_anchor.sum(dim=1).to(local_sum.dtype)
    if not distributed:
        share = local_sum / local_count.clamp(min=1.0)
        return share, share.detach()
    stats = torch.stack([local_sum.detach(), local_count])
    torch_dist.all_reduce(stats)
    global_sum, global_count = stats[0], stats[1].clamp(min=1.0)
    share = local_sum * dist.world_size() / global_count
    return share, global_sum / global_count


def level_terms(batch: LossBatch, temperature: float) -> tuple[Tensor, Tensor]:
    """Per-level SupCon terms of a loss batch: ``(share, value)`` as :func:`reduce_levels`."""
    loss, is_anchor = anchor_level_losses(
        batch.anchors,
        batch.contrast,
        batch.anchor_index,
        build_level_groups(batch.contrast_labels),
        temperature,
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
        weights = torch.full((num_levels,), 1.0 / num_levels, device=share.device)
    weights = weights.to(device=share.device, dtype=share.dtype)
    total_share = (weights * share).sum()
    total_value = (weights * value).sum()
    return total_share + (total_value - total_share).detach()


def apply_masks(features: Tensor, masks: Tensor, num_levels: int, source: str = "masks") -> Tensor:
    """Per-level masked features ``normalize(z * masks[:, h])``, shape ``[2B, L, D]``."""
    return F.normalize(features.unsqueeze(1) * check_masks(features, masks, num_levels, source), 2)


def check_masks(features: Tensor, masks: Tensor, num_levels: int, source: str = "masks") -> Tensor:
    """Validated masks ``[1 | 2B, L, D]`` in the features' dtype (``[B]`` masks repeated).

    Args:
        features: ``[2B, D]`` L2-normalised rows of ``cat([out0, out1])``.
        masks: ``[1, L, D]`` (shared by all rows), ``[B, L, D]`` (per sample, used for
            both views) or ``[2B, L, D]`` (per row of ``cat([out0, out1])``).
        num_levels: L, the depth of the label paths.
        source: How the error message names the masks.

    Raises:
        ValueError: If ``masks`` is not a floating point tensor of one of those shapes.
    """
    rows, dim = features.shape
    if not isinstance(masks, Tensor):
        raise ValueError(f"{source} must be a torch.Tensor, got {type(masks).__name__}.")
    if not masks.dtype.is_floating_point:
        raise ValueError(
            f"{source} must be a floating point tensor, got {masks.dtype}: convert hard "
            "masks with masks.float()."
        )
    if (
        masks.dim() != 3
        or tuple(masks.shape[1:]) != (num_levels, dim)
        or masks.shape[0] not in (1, rows // 2, rows)
    ):
        raise ValueError(
            f"{source} has shape {tuple(masks.shape)}; expected [1 | {rows // 2} | {rows}, "
            f"{num_levels}, {dim}] (shared | per sample | per row of cat([out0, out1]), "
            "levels, dim). Check the head's num_levels and dim against the labels and the "
            "projection width."
        )
    if masks.shape[0] == rows // 2 and rows // 2 != 1:
        masks = masks.repeat(2, 1, 1)  # one mask per sample serves both of its views
    return masks.to(device=features.device, dtype=features.dtype)


def normalize_features(out0: Tensor, out1: Tensor) -> Tensor:
    """Both views stacked, L2-normalised, in float32 or wider (also under autocast)."""
    dtype = torch.promote_types(out0.dtype, torch.float32)
    with torch.autocast(device_type=out0.device.type, enabled=False):
        return F.normalize(torch.cat([out0, out1], dim=0).to(dtype), dim=1)
