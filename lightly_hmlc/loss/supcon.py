"""Supervised contrastive loss (SupCon) for two views."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from lightly_hmlc.loss._batch import loss_batch, reads_shapes, reduce_levels
from lightly_hmlc.loss._features import prepare_inputs
from lightly_hmlc.loss._levels import (
    LevelGroups,
    aggregate_levels,
    build_level_groups,
    check_hierarchy_margin,
    check_temperature,
    level_statistics,
    positive_windows,
)


class SupConLoss(nn.Module):
    """Supervised contrastive loss of Khosla et al. [0], the L_out form (eq. 2).

    Every sample contributes two views. For an anchor, the positives are the other view
    of the same sample and both views of every other sample with the same label; all
    other rows are negatives. Embeddings are L2-normalised inside the loss, and the
    logits are computed in float32, also under autocast.

    Labels are ``[B]`` class ids, or ``[B, L]`` label paths, in which case two samples
    are positives when their whole paths are equal. ``-1`` marks an unknown label: such a
    sample is neither an anchor nor a positive (it stays a negative for the others).

    - [0] Supervised Contrastive Learning, Khosla et al., NeurIPS 2020,
      https://arxiv.org/abs/2004.11362

    Args:
        temperature: Scales the cosine similarities, ``> 0`` and finite.
        gather_distributed: Gather embeddings and labels from all ranks: the value is the
            global batch's on every rank, and so are the gradients after DDP averages.
            Every rank needs the same batch size.
        check_values: Check values as well as shapes (NaN/Inf, norms, labels below -1,
            the same error on every rank); ``False`` skips them, as in :class:`HMLCLoss`
            (with the margin it still reads the window width, except when compiled).
        hierarchy_margin: A cosine offset ``>= 0`` (default 0, off) for negatives on other
            branches of the label tree: a negative whose path differs from the anchor's
            at ``k`` levels above the finest enters the denominator as if it were ``k *
            hierarchy_margin`` more similar (``docs/METHOD.md``). Needs ``[B, L]`` paths
            with ``L >= 2``.

    Examples:
        >>> loss_fn = SupConLoss(temperature=0.1)
        >>> out0, out1 = torch.randn(8, 16), torch.randn(8, 16)
        >>> labels = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])
        >>> loss = loss_fn(out0, out1, labels)
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
        hierarchy_margin: float = 0.0,
    ) -> None:
        super().__init__()
        self.temperature = check_temperature(temperature)
        self.gather_distributed = gather_distributed
        self.check_values = check_values
        self.hierarchy_margin = check_hierarchy_margin(hierarchy_margin)

    def extra_repr(self) -> str:
        """The options, as ``print(loss)`` shows them."""
        text = (
            f"temperature={self.temperature}, gather_distributed={self.gather_distributed}, "
            f"check_values={self.check_values}"
        )
        return text + (f", hierarchy_margin={self.hierarchy_margin}" * (self.hierarchy_margin > 0))

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
            return_level_losses: Also return the detached ``[1]`` level term, as
                :class:`HMLCLoss` does.

        Returns:
            The scalar loss, or ``(loss, level_losses)`` with ``return_level_losses``.
        """
        paths, features, _ = prepare_inputs(
            out0, out1, labels, None, self.check_values, self.gather_distributed
        )
        batch = loss_batch(
            features, paths, None, memory, None, self.gather_distributed, self.check_values
        )
        paths = batch.contrast_labels
        if self.hierarchy_margin > 0 and paths.shape[1] < 2:
            raise ValueError(
                f"hierarchy_margin={self.hierarchy_margin} needs [B, L] label paths with "
                f"L >= 2 (coarse to fine), got {paths.shape[1]} level: with class ids alone "
                "no negative lies on another branch. Pass the label paths, or use "
                "hierarchy_margin=0."
            )
        groups = build_level_groups(paths)
        windows = margin = None
        if self.hierarchy_margin > 0:  # the finest level's offsets only
            windows = positive_windows(
                groups, batch.anchor_index, sync=reads_shapes(self.check_values)
            )
            margin = (
                self.hierarchy_margin / self.temperature,
                range(paths.shape[1] - 1, paths.shape[1]),
            )
        # The whole path is the class; a row that is entirely unknown stays unknown.
        known = ~(paths < 0).all(dim=1, keepdim=True)
        classes = LevelGroups(groups.ids[:, -1:], known, groups.num_groups)
        stats = level_statistics(
            batch.anchors,
            batch.contrast,
            batch.anchor_index,
            classes,
            self.temperature,
            windows,
            margin,
        )
        share, value = reduce_levels(stats.level_losses(), stats.is_anchor, batch.distributed)
        loss = aggregate_levels(share, value, "hmc", torch.ones_like(share))
        return (loss, value) if return_level_losses else loss
