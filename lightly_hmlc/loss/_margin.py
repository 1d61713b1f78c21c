"""The hierarchy margin of :class:`SupConLoss`: a stronger push on negatives of other branches.

A coarse HMLC term does two things at once: it pushes the anchor away from the rows of
other coarse classes, and it pulls the anchor towards every row of its own coarse class,
also towards the other fine classes that the fine term pushes away. The margin keeps the
push and drops the pull: a negative that differs from the anchor at ``k`` coarser levels
enters the SupCon denominator as if its cosine similarity were ``k * margin`` higher, so
the loss only falls once it is pushed that much further away. Positives share the
anchor's whole path (``k = 0``), so their logits, and the fine term's positives, are
unchanged. The form is CosFace's additive cosine margin (Wang et al., CVPR 2018), scaled
by the tree distance instead of applied to the target class.
"""

from __future__ import annotations

from torch import Tensor

from lightly_hmlc.loss._levels import LevelGroups
from lightly_hmlc.loss._temperature import is_finite_non_negative


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
    groups: LevelGroups, anchor_index: Tensor, margin: float, temperature: float
) -> Tensor:
    """``[Na, Nc]`` logit offsets: ``margin / temperature`` per coarser level of difference.

    Args:
        groups: Prefix groups of the contrast rows' label paths ``[Nc, L]``, ``L >= 2``.
        anchor_index: ``[Na]`` position of each anchor among the contrast rows.
        margin: Cosine-similarity offset per coarser level.
        temperature: The loss's temperature (the logits are ``cosine / temperature``).

    A level counts only where both prefixes are known: an unknown coarse label is no
    evidence that two rows lie on different branches. The finest level never counts;
    there the fine term's own negatives are what SupCon already pushes.
    """
    coarse_ids = groups.ids[:, :-1]
    coarse_valid = groups.valid[:, :-1]
    differs = coarse_ids[anchor_index].unsqueeze(1) != coarse_ids.unsqueeze(0)
    known = coarse_valid[anchor_index].unsqueeze(1) & coarse_valid.unsqueeze(0)
    levels_apart = (differs & known).sum(dim=2)
    return levels_apart * (margin / temperature)
