"""Supervised contrastive loss (SupCon) for two views."""

from __future__ import annotations

import dataclasses

import torch
from torch import Tensor, nn

from lightly_hmlc.loss._features import prepare_inputs
from lightly_hmlc.loss._gather import gather_for_loss, reduce_levels
from lightly_hmlc.loss._levels import aggregate_levels, build_level_groups, level_terms
from lightly_hmlc.loss._margin import check_hierarchy_margin, hierarchy_margin_bias
from lightly_hmlc.loss._memory import append_memory, check_memory
from lightly_hmlc.loss._supcon_in import check_supcon_form, in_level_losses
from lightly_hmlc.loss._temperature import check_temperature


class SupConLoss(nn.Module):
    """Supervised contrastive loss of Khosla et al. [0]: L_out (eq. 2, default) or L_in (eq. 3).

    Every sample contributes two views. For an anchor, the positives are the other view
    of the same sample and both views of every other sample with the same label; all
    other rows of the batch are negatives. Embeddings are L2-normalised inside the loss,
    and the logits are computed in float32, also under autocast.

    - [0] Supervised Contrastive Learning, Khosla et al., NeurIPS 2020,
      https://arxiv.org/abs/2004.11362

    Args:
        temperature: Scales the cosine similarities, ``> 0`` and finite.
        gather_distributed: Gather embeddings AND labels from all ranks before the loss,
            so that every rank contrasts against the global batch. The value equals the
            single-process loss on the global batch on every rank, and after DDP's
            gradient averaging so do the gradients. Every rank needs the same batch size.
        check_values: Check values as well as shapes (NaN/Inf, norms that over- or
            underflow, labels below -1, and the same error on every rank); ``False``
            skips these host-device synchronisations, as in :class:`HMLCLoss`.
        supcon_form: ``"out"`` (default): ``-1/|P| sum_p log(exp(s_ip) / sum_{a != i}
            exp(s_ia))``, the mean of the positives' log-probabilities; ``"in"``:
            ``-log(1/|P| sum_p exp(s_ip) / sum_{a != i} exp(s_ia))``, the log of their
            mean probability (``<=`` L_out; equal with one positive per anchor).
        hierarchy_margin: A cosine-similarity offset (``>= 0``; default 0, off) for
            negatives on other branches of the label tree: a negative whose label path
            differs from the anchor's at ``k`` levels above the finest enters the
            denominator as if its similarity were ``k * hierarchy_margin`` higher, so it
            is pushed further away than a negative of the anchor's own coarse class.
            Unlike a coarse HMLC term it pulls no other fine class towards the anchor
            (docs/METHOD.md, "The hierarchy margin"). Needs ``[B, L]`` label paths with
            ``L >= 2``, and ``supcon_form="out"``.

    Labels are ``[B]`` class ids, or ``[B, L]`` label paths, in which case two samples
    are positives when their whole paths are equal. ``-1`` marks an unknown label: such a
    sample is neither an anchor nor a positive (it stays a negative for the others).

    Raises:
        ValueError: If ``temperature`` is not finite and > 0, ``supcon_form`` is
            neither ``"out"`` nor ``"in"``, or ``hierarchy_margin`` is negative, not
            finite, or set with ``supcon_form="in"``; in ``forward``, if
            ``hierarchy_margin > 0`` and the labels are not ``[B, L]`` paths, ``L >= 2``.

    Examples:
        >>> loss_fn = SupConLoss(temperature=0.1)
        >>> out0, out1 = torch.randn(8, 16), torch.randn(8, 16)
        >>> labels = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])
        >>> loss = loss_fn(out0, out1, labels)
        >>> loss.shape
        torch.Size([])
        >>> _, level_losses = loss_fn(out0, out1, labels, return_level_losses=True)
        >>> level_losses.shape
        torch.Size([1])
        >>> paths = torch.tensor([[0, 0], [0, 0], [0, 1], [0, 1], [1, 2], [1, 2], [1, 3], [1, 3]])
        >>> margin_loss = SupConLoss(hierarchy_margin=0.1)(out0, out1, paths)
        >>> bool(margin_loss > SupConLoss()(out0, out1, paths))
        True
    """

    def __init__(
        self,
        temperature: float = 0.1,
        gather_distributed: bool = False,
        check_values: bool = True,
        supcon_form: str = "out",
        hierarchy_margin: float = 0.0,
    ) -> None:
        super().__init__()
        self.temperature = check_temperature("temperature", temperature)
        self.gather_distributed = gather_distributed
        self.check_values = check_values
        self.supcon_form = check_supcon_form(supcon_form)
        self.hierarchy_margin = check_hierarchy_margin(hierarchy_margin)
        if self.hierarchy_margin > 0 and self.supcon_form == "in":
            raise ValueError(
                "hierarchy_margin is defined for the L_out form only: use "
                "supcon_form='out' with it, or hierarchy_margin=0 with supcon_form='in'."
            )

    def extra_repr(self) -> str:
        """The options the loss keeps, as ``print(loss)`` shows them."""
        text = (
            f"temperature={self.temperature}, gather_distributed={self.gather_distributed}, "
            f"check_values={self.check_values}"
        )
        if self.supcon_form != "out":
            text += f", supcon_form={self.supcon_form!r}"
        if self.hierarchy_margin > 0:
            text += f", hierarchy_margin={self.hierarchy_margin}"
        return text

    def forward(
        self,
        out0: Tensor,
        out1: Tensor,
        labels: Tensor,
        memory: tuple[Tensor, Tensor] | None = None,
        return_level_losses: bool = False,
    ) -> Tensor | tuple[Tensor, Tensor]:
        """Computes the loss.

        Args:
            out0: ``[B, D]`` projections of the first view.
            out1: ``[B, D]`` projections of the second view.
            labels: ``[B]`` class ids or ``[B, L]`` label paths; ``-1`` is unknown.
            memory: Optional ``(features [K, D], labels [K] | [K, L])`` extra contrast
                rows, e.g. from :class:`~lightly_hmlc.models.modules.HierarchicalMemoryBank`:
                positives and negatives of the batch's anchors, never anchors.
            return_level_losses: Also return the detached level terms, shape ``[1]``
                (SupCon has one level), as :class:`HMLCLoss` does.

        Returns:
            The scalar loss, or ``(loss, level_losses)`` with ``return_level_losses``.
        """
        paths, features, _ = prepare_inputs(
            out0, out1, labels, None, self.check_values, self.gather_distributed
        )
        batch = gather_for_loss(features, paths, self.gather_distributed)
        bank = check_memory(memory, features, paths.shape[1], self.check_values)
        batch = append_memory(batch, bank)
        paths = batch.contrast_labels
        if self.hierarchy_margin > 0 and paths.shape[1] < 2:
            raise ValueError(
                f"hierarchy_margin={self.hierarchy_margin} needs [B, L] label paths with "
                f"L >= 2 (coarse to fine), got {paths.shape[1]} level: with class ids alone "
                "no negative lies on another branch. Pass the label paths, or use "
                "hierarchy_margin=0."
            )
        margin_bias = None
        if paths.shape[1] > 1:
            path_groups = build_level_groups(paths)
            if self.hierarchy_margin > 0:
                margin_bias = hierarchy_margin_bias(
                    path_groups,
                    batch.anchor_index,
                    self.hierarchy_margin,
                    self.temperature,
                    batch.contrast.dtype,
                )
            # The whole path is the class; ids are made after gathering, so that they
            # mean the same on every rank. A row that is entirely unknown stays unknown.
            unknown = (paths < 0).all(dim=1)
            paths = torch.where(unknown, -1, path_groups.ids[:, -1]).unsqueeze(1)
            batch = dataclasses.replace(batch, contrast_labels=paths)
        if self.supcon_form == "in":
            groups = build_level_groups(batch.contrast_labels)
            loss_in, is_anchor = in_level_losses(
                batch.anchors, batch.contrast, batch.anchor_index, groups, self.temperature
            )
            share, value = reduce_levels(loss_in, is_anchor, batch.distributed)
        else:
            share, value = level_terms(batch, self.temperature, margin_bias)
        loss = aggregate_levels(share, value, "hmc", weights=None)
        return (loss, value) if return_level_losses else loss
