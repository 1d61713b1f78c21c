"""Class-balanced level terms (ours; issue 11 item 4): every class of a level weighs the same.

Ott et al. (arXiv 2510.00837) say their method "explicitly models ... imbalanced class
distribution at higher hierarchy levels". With the plain mean over anchors, a coarse
class that holds 90% of the batch decides 90% of the coarse term. With
``level_balance="class"`` the term of level ``l`` is instead

``T_l = 1/|C_l| sum_{c in C_l} 1/|A_c| sum_{i in A_c} loss_l(i)``

with ``C_l`` the level-``l`` classes (label prefixes down to ``l``) that have at least one
anchor and ``A_c`` the anchors of class ``c``. Equivalently every anchor is weighted by
``1 / (|C_l| |A_{c(i)}|)``. Memory rows are never anchors, so they count for neither
``|C_l|`` nor ``|A_c|``; rows with an unknown (``-1``) prefix or without a positive are no
anchors either.

Under ``gather_distributed`` the counts are those of the GLOBAL batch: the per-class
anchor counts and loss sums of every rank are summed in one all-reduce, so every rank
returns the global-batch value, and each rank's gradient share is its anchors' weighted
sum times the world size, so that DDP's gradient averaging gives the global-batch
gradient (as :func:`~lightly_hmlc.loss._gather.reduce_levels` does for the plain mean).
Nothing here synchronises host and device: class ids come from the fixed-shape
lexicographic sort of :func:`~lightly_hmlc.loss._levels.build_level_groups`, and the
counts from ``index_add`` over ``[levels * rows]`` slots (no ``torch.unique``).
"""

from __future__ import annotations

import torch
import torch.distributed as torch_dist
from lightly.utils import dist
from torch import Tensor

from lightly_hmlc.loss._gather import LossBatch, reduce_levels
from lightly_hmlc.loss._levels import build_level_groups

LEVEL_BALANCES = ("none", "class")


def check_level_balance(level_balance: str, reference_compatible: bool) -> str:
    """``level_balance`` if it is a known value that the mode supports; else a ValueError."""
    if level_balance not in LEVEL_BALANCES:
        raise ValueError(
            f"Unknown level_balance {level_balance!r}: use one of {list(LEVEL_BALANCES)} "
            "('none': mean over anchors; 'class': mean over each level's classes)."
        )
    if reference_compatible and level_balance != "none":
        raise ValueError(
            f"reference_compatible=True averages over anchors, as the reference code does: "
            f"level_balance={level_balance!r} is not part of it. Use level_balance='none', "
            "or reference_compatible=False for class-balanced level terms."
        )
    return level_balance


def reduce_level_terms(
    loss: Tensor, is_anchor: Tensor, batch: LossBatch, level_balance: str
) -> tuple[Tensor, Tensor]:
    """Per-level terms ``(share, value)`` as :func:`reduce_levels`, balanced if asked.

    Args:
        loss: ``[K, Na]`` per-anchor terms (0 where not an anchor); ``K`` is ``L`` or a
            multiple of it (several term sets stacked, each ``L`` levels, coarse to fine).
        is_anchor: ``[K, Na]`` which rows are anchors.
        batch: The loss batch the terms come from (its labels give the classes).
        level_balance: ``"none"`` (the mean over anchors) or ``"class"``.
    """
    if level_balance == "none":
        return reduce_levels(loss, is_anchor, batch.distributed)
    classes, num_classes = anchor_classes(batch)
    classes = classes.repeat(loss.shape[0] // classes.shape[0], 1)
    return reduce_levels_by_class(loss, is_anchor, classes, num_classes, batch.distributed)


def anchor_classes(batch: LossBatch) -> tuple[Tensor, int]:
    """``[L, Na]`` class id of every anchor at every level, ids below the returned bound.

    The ids come from the batch rows of all ranks only (memory rows are appended after
    them), so they are the same on every rank even if the memories differ.
    """
    world_size = dist.world_size() if batch.distributed else 1
    batch_rows = batch.anchors.shape[0] * world_size
    groups = build_level_groups(batch.contrast_labels[:batch_rows])
    return groups.ids[batch.anchor_index].t(), groups.num_groups


def reduce_levels_by_class(
    loss: Tensor, is_anchor: Tensor, classes: Tensor, num_classes: int, distributed: bool
) -> tuple[Tensor, Tensor]:
    """Per-level mean over classes of the mean over each class's anchors, exact across ranks.

    Args:
        loss: ``[K, Na]`` per-anchor terms.
        is_anchor: ``[K, Na]``.
        classes: ``[K, Na]`` class id of each anchor for each term, in ``[0, num_classes)``
            and the same on every rank for the same class.
        num_classes: The bound on the ids.
        distributed: Whether the anchors of other ranks count too.

    Returns:
        ``(share, value)``, both ``[K]``, as :func:`reduce_levels`. A term without any
        anchor contributes 0.
    """
    num_terms, num_anchors = loss.shape
    offsets = torch.arange(num_terms, device=loss.device).unsqueeze(1) * num_classes
    slots = (classes + offsets).flatten()  # one slot per (term, class)
    weight = is_anchor.to(loss.dtype)
    empty = torch.zeros(num_terms * num_classes, dtype=loss.dtype, device=loss.device)
    count = empty.index_add(0, slots, weight.flatten())
    if distributed:
        total = empty.index_add(0, slots, (loss.detach() * weight).flatten())
        stats = torch.stack([count, total])
        torch_dist.all_reduce(stats)  # the global batch's counts and sums, per class
        count, total = stats[0], stats[1]
    present = (count > 0).to(loss.dtype).view(num_terms, num_classes)
    num_present = present.sum(dim=1).clamp(min=1.0)  # |C_l|; 1 where no class (term 0)
    # 1 / (|C_l| |A_c(i)|) for every anchor, 0 for the other rows.
    class_size = count[slots].view(num_terms, num_anchors).clamp(min=1.0)
    anchor_weight = weight / (class_size * num_present.unsqueeze(1))
    local = (loss * anchor_weight).sum(dim=1)
    if not distributed:
        return local, local.detach()
    class_mean = total.view(num_terms, num_classes) / count.view(num_terms, num_classes).clamp(
        min=1.0
    )
    value = (class_mean * present).sum(dim=1) / num_present
    return local * dist.world_size(), value
