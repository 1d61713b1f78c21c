"""The hierarchy margin of :class:`SupConLoss` and the HMLC losses: a stronger push on
negatives of other branches.

A coarse HMLC term does two things at once: it pushes the anchor away from the rows of
other coarse classes, and it pulls the anchor towards every row of its own coarse class,
also towards the other fine classes that the fine term pushes away. The margin keeps the
push and drops the pull: a negative that differs from the anchor at ``k`` coarser levels
enters the SupCon denominator as if its cosine similarity were ``k * margin`` higher, so
the loss only falls once it is pushed that much further away. Positives share the
anchor's whole path (``k = 0``), so their logits, and the fine term's positives, are
unchanged. The form is CosFace's additive cosine margin (Wang et al., CVPR 2018), scaled
by the tree distance instead of applied to the target class.

In the HMLC losses every level's term gets the same offset, counting the levels coarser
than its own: the coarsest term has none, the finest has SupCon's.
"""

from __future__ import annotations

import torch
from torch import Tensor

from lightly_hmlc.loss._levels import LevelGroups
from lightly_hmlc.loss._temperature import Temperature, is_finite_non_negative, level_temperature


def check_hierarchy_margin(margin: object) -> float:
    """``margin`` as a float if it is a finite number ``>= 0``; else a ValueError naming the fix.

    Refuses booleans and strings, so that a mistyped option is named here rather than in
    a ``float()`` error.
    """
    if not is_finite_non_negative(margin):
        raise ValueError(
            f"hierarchy_margin must be finite and >= 0 (a cosine-similarity offset per "
            f"coarser level; 0 turns it off), got {margin!r}."
        )
    return float(margin)


def hierarchy_margin_bias(
    groups: LevelGroups,
    anchor_index: Tensor,
    margin: float,
    temperature: float,
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """``[Na, Nc]`` logit offsets of the finest level (SupCon's): ``margin / temperature``
    per coarser level of difference; see :func:`level_margin_bias`."""
    # Only the finest level's offsets: one sum over the coarser levels, no [L, Na, Nc].
    apart = _differs_above(groups, anchor_index, groups.ids.shape[1] - 1).sum(dim=2)
    return apart.to(torch.promote_types(dtype, torch.float32)) * (margin / temperature)


def _differs_above(groups: LevelGroups, anchor_index: Tensor, level: int) -> Tensor:
    """``[Na, Nc, level]``: at each level coarser than ``level``, whether both prefixes are
    known and differ."""
    ids, valid = groups.ids[:, :level], groups.valid[:, :level]
    differs = ids[anchor_index].unsqueeze(1) != ids.unsqueeze(0)
    return differs & valid[anchor_index].unsqueeze(1) & valid.unsqueeze(0)


def level_margin_bias(
    groups: LevelGroups,
    anchor_index: Tensor,
    margin: float,
    temperature: Temperature,
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """``[L, Na, Nc]`` logit offsets of every level's denominator.

    Level ``l``'s offset of a contrast row is ``k * margin / T_l``, ``k`` the number of
    levels coarser than ``l`` at which the row's prefix differs from the anchor's. The
    coarsest level has none; the finest is :class:`SupConLoss`'s margin. A level's own
    negatives (same coarser prefixes, another prefix at ``l``) keep ``k = 0``: there the
    level term's own push acts, as in SupCon.

    Args:
        groups: Prefix groups of the contrast rows' label paths ``[Nc, L]``, ``L >= 2``.
        anchor_index: ``[Na]`` position of each anchor among the contrast rows.
        margin: Cosine-similarity offset per coarser level.
        temperature: The loss's temperature, a float or one per level (the logits of
            level ``l`` are ``cosine / T_l``).
        dtype: The offsets' dtype (the logits'; float64 logits get float64 offsets).

    A level counts only where both prefixes are known: an unknown coarse label is no
    evidence that two rows lie on different branches.
    """
    dtype = torch.promote_types(dtype, torch.float32)  # margin / T is no half-precision value
    num_levels = groups.ids.shape[1]
    apart = _differs_above(groups, anchor_index, num_levels - 1).to(dtype).movedim(2, 0)
    # Level l counts the levels strictly coarser than it: a cumulative sum, 0 at the top.
    coarser_apart = torch.cat([torch.zeros_like(apart[:1]), torch.cumsum(apart, dim=0)])
    if isinstance(temperature, float):
        return coarser_apart * (margin / temperature)
    # Python scalars per level: a tensor of them would be a host-to-device copy per call.
    return torch.stack(
        [
            coarser_apart[level] * (margin / level_temperature(temperature, level))
            for level in range(num_levels)
        ]
    )
