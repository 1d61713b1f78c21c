"""The L_in form of SupCon (Khosla et al. 2020, eq. 3) per anchor and level (ours; issue 11).

Khosla et al. write two supervised contrastive losses. L_out (their eq. 2, the losses'
default, ``supcon_form="out"``) averages the log-probabilities of the positives:

``L_out(i) = -1/|P(i)| sum_{p in P(i)} log( exp(s_ip) / sum_{a != i} exp(s_ia) )``.

L_in (their eq. 3, ``supcon_form="in"``) averages the probabilities inside the log:

``L_in(i) = -log( 1/|P(i)| sum_{p in P(i)} exp(s_ip) / sum_{a != i} exp(s_ia) )
= lse_{a != i}(s_ia) - lse_{p in P(i)}(s_ip) + log |P(i)|``.

By Jensen's inequality ``L_in <= L_out``, with equality when every positive has the same
similarity (e.g. one positive). The log-sum-exp over the positives is not linear in the
embeddings, so the group sums of :func:`~lightly_hmlc.loss._levels.level_statistics`
cannot give it: every level needs one pass over its ``[Na, Nc]`` logits with the
level's positive mask (a loop over levels, never over samples; memory O(N^2) per level).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from lightly_hmlc.loss._features import mask_batch
from lightly_hmlc.loss._gather import LossBatch
from lightly_hmlc.loss._levels import LevelGroups, level_statistics, widen
from lightly_hmlc.loss._temperature import Temperature

SUPCON_FORMS = ("out", "in")


def check_supcon_form(supcon_form: str) -> str:
    """``supcon_form`` if it is ``"out"`` or ``"in"``; else a ValueError."""
    if supcon_form not in SUPCON_FORMS:
        raise ValueError(
            f"Unknown supcon_form {supcon_form!r}: use 'out' (Khosla et al.'s eq. 2, the "
            "mean of the positives' log-probabilities) or 'in' (eq. 3, the log of their "
            "mean probability)."
        )
    return supcon_form


def in_level_losses(
    anchors: Tensor,
    contrast: Tensor,
    anchor_index: Tensor,
    groups: LevelGroups,
    temperature: Temperature,
) -> tuple[Tensor, Tensor]:
    """The L_in term of every anchor at every level.

    Args:
        anchors: ``[Na, D]`` (shared by all levels) or ``[Na, L, D]`` (per-level
            features), L2-normalised.
        contrast: ``[Nc, D]`` or ``[Nc, L, D]``, containing the anchors.
        anchor_index: ``[Na]`` position of each anchor in ``contrast``.
        groups: Prefix groups of the contrast rows.
        temperature: A float, or one per level (coarse to fine).

    Returns:
        ``(loss, is_anchor)``, both ``[L, Na]``, as
        :func:`~lightly_hmlc.loss._levels.anchor_level_losses` (0 where not an anchor).
    """
    with torch.autocast(device_type=anchors.device.type, enabled=False):
        anchors, contrast = widen(anchors), widen(contrast)
        stats = level_statistics(anchors, contrast, anchor_index, groups, temperature)
        device = stats.logits.device
        rows = torch.arange(anchors.shape[0], device=device)
        no_logit = torch.full((), -math.inf, dtype=stats.logits.dtype, device=device)
        zero = torch.zeros((), dtype=stats.logits.dtype, device=device)
        positive_lse = []
        for level in range(groups.ids.shape[1]):  # a loop over levels, never over samples
            ids, valid = groups.ids[:, level], groups.valid[:, level]
            positive = (ids[anchor_index].unsqueeze(1) == ids.unsqueeze(0)) & valid.unsqueeze(0)
            positive &= valid[anchor_index].unsqueeze(1)
            positive[rows, anchor_index] = torch.zeros((), dtype=torch.bool, device=device)
            logits = stats.logits[min(level, stats.logits.shape[0] - 1)]
            masked = torch.where(positive, logits, no_logit)
            # A row without positives gets finite zeros: no NaN in the log-sum-exp's
            # gradient (its term is dropped below anyway).
            masked = torch.where(stats.is_anchor[level].unsqueeze(1), masked, zero)
            positive_lse.append(torch.logsumexp(masked, dim=1))
        loss = (
            stats.log_denominator
            - torch.stack(positive_lse)
            + torch.log(stats.positive_count.clamp(min=1.0))
        )
        return torch.where(stats.is_anchor, loss, zero), stats.is_anchor


def in_batch_losses(
    batch: LossBatch, masks: Tensor | None, groups: LevelGroups, temperature: Temperature
) -> tuple[Tensor, Tensor]:
    """:func:`in_level_losses` of a loss batch; shared masks ``[1, L, D]`` are applied
    first (``normalize(z * m_h)`` per level: no fast masked path for L_in)."""
    if masks is not None:
        batch = mask_batch(batch, masks)
    return in_level_losses(batch.anchors, batch.contrast, batch.anchor_index, groups, temperature)
