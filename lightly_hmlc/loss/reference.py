"""HMLC exactly as the authors' public reference implementation computes it."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from lightly_hmlc.loss._batch import gather_for_loss
from lightly_hmlc.loss._features import prepare_inputs
from lightly_hmlc.loss._levels import (
    LOSS_TYPES,
    LevelGroups,
    aggregate_levels,
    build_level_groups,
    check_temperature,
    level_statistics,
)
from lightly_hmlc.loss.hmlc import (
    LayerPenalty,
    describe_layer_penalty,
    layer_penalties,
    resolve_layer_penalty,
)


class ReferenceHMLCLoss(nn.Module):
    """HMLC as the public reference code of Zhang et al. [0] computes it.

    For reproducing published numbers. Given the same normalised features, it equals
    that code (which additionally needs an instance-id column; this loss adds it
    implicitly). It differs from the paper's formula, which :class:`HMLCLoss` follows, in
    four ways: after each level (finest first) only one sample per distinct label prefix
    is kept for the coarser levels (the first sample, in batch order, of the smallest
    label path under the prefix, because the reference re-orders the kept samples by
    label); each term is multiplied by ``temperature / base_temperature``; the hierarchy
    constraint acts on the batch-mean level terms; and the weighted sum is divided by
    ``L + 1`` (the label columns including the instance id). ``-1`` labels, masks and
    memory rows are not supported: the reference has none of them.

    - [0] Use All The Labels: A Hierarchical Multi-Label Contrastive Learning Framework,
      Zhang et al., CVPR 2022, https://arxiv.org/abs/2204.13207

    Args:
        loss_type: ``"hmc"``, ``"hce"`` or ``"hmce"``.
        temperature: Softmax temperature, ``> 0``.
        layer_penalty: As in :class:`HMLCLoss` (the reference's default is ``"pow2"``).
        base_temperature: The reference's base temperature.
        gather_distributed: As in :class:`HMLCLoss`.
        check_values: As in :class:`HMLCLoss`; also refuses ``-1`` labels.

    Examples:
        >>> loss_fn = ReferenceHMLCLoss("hmce", layer_penalty="pow2")
        >>> labels = torch.tensor([[0, 0], [0, 1], [1, 2], [1, 2]])
        >>> loss_fn(torch.randn(4, 8), torch.randn(4, 8), labels).dim()
        0
    """

    def __init__(
        self,
        loss_type: str = "hmce",
        temperature: float = 0.1,
        layer_penalty: str | Sequence[float] | LayerPenalty = "exp",
        base_temperature: float = 0.07,
        gather_distributed: bool = False,
        check_values: bool = True,
    ) -> None:
        super().__init__()
        if loss_type not in LOSS_TYPES:
            raise ValueError(f"Unknown loss_type {loss_type!r}: use one of {list(LOSS_TYPES)}.")
        self.loss_type = loss_type
        self.temperature = check_temperature(temperature)
        self.layer_penalty = resolve_layer_penalty(layer_penalty)
        self.base_temperature = check_temperature(base_temperature, "base_temperature")
        self.gather_distributed = gather_distributed
        self.check_values = check_values

    def extra_repr(self) -> str:
        """The options, as ``print(loss)`` shows them."""
        return (
            f"loss_type={self.loss_type!r}, temperature={self.temperature}, "
            f"layer_penalty={describe_layer_penalty(self.layer_penalty)}, "
            f"base_temperature={self.base_temperature}"
        )

    def forward(self, out0: Tensor, out1: Tensor, labels: Tensor) -> Tensor:
        """The loss of ``[B, D]`` projections of two views and ``[B, L]`` label paths."""
        paths, features, _ = prepare_inputs(
            out0, out1, labels, None, self.check_values, self.gather_distributed
        )
        batch = gather_for_loss(features, paths, self.gather_distributed)
        share = reference_level_terms(
            batch.contrast,
            batch.contrast_labels,
            batch.sample_index,
            self.temperature,
            self.base_temperature,
            self.check_values,
        )
        num_levels = share.shape[0]
        if self.loss_type == "hce":
            weights = torch.full_like(share, 1.0 / (num_levels + 1))
        else:
            penalties = layer_penalties(
                num_levels, self.layer_penalty, share.dtype, share.device, self.check_values
            )
            weights = penalties / (num_levels + 1)
        return aggregate_levels(share, share.detach(), self.loss_type, weights)


def reference_level_terms(
    features: Tensor,
    labels: Tensor,
    sample_index: Tensor,
    temperature: float,
    base_temperature: float,
    check_values: bool = True,
) -> Tensor:
    """Level terms of the reference implementation, on the global batch.

    Walking from the finest level up, the reference keeps one sample per distinct
    prefix of the previous (finer) level and re-orders the kept samples by label
    (its ``unique`` returns them in sorted order). The kept sample of a prefix is
    therefore the first sample, in batch order, of the lexicographically smallest
    full label path under that prefix; those rows take part in level ``l``.

    Args:
        features: ``[N, D]`` L2-normalised rows (both views of every sample).
        labels: ``[N, L]`` their label paths, coarse to fine.
        sample_index: ``[N]`` the sample of each row (both views share one).
        temperature: Softmax temperature.
        base_temperature: The reference's base temperature; every term is multiplied
            by ``temperature / base_temperature``.
        check_values: Reject ``-1`` labels (a host-device synchronisation).

    Returns:
        ``[L]`` the level terms, coarse to fine.

    Raises:
        ValueError: With ``check_values``, for ``-1`` (unknown) labels.
    """
    if check_values and bool((labels < 0).any()):
        raise ValueError(
            "ReferenceHMLCLoss does not support -1 (unknown) labels: the reference "
            "implementation has no notion of a missing level. Use HMLCLoss, or fill in "
            "the labels."
        )
    num_rows, num_levels = labels.shape
    groups = build_level_groups(labels)
    device = labels.device
    # Path ids are ranks in lexicographic order (build_level_groups sorts the paths).
    path_ids = groups.ids[:, -1]
    first_sample = torch.full(  # sample ids are < num_rows: it marks "none yet"
        (groups.num_groups,), num_rows, dtype=torch.long, device=device
    ).scatter_reduce(0, path_ids, sample_index, reduce="amin")
    is_first_of_path = first_sample[path_ids] == sample_index
    taking_part = torch.ones(num_rows, num_levels, dtype=torch.bool, device=device)
    for level in range(num_levels - 1):  # a loop over levels, never over samples
        finer_ids = groups.ids[:, level + 1]
        smallest_path = torch.full(
            (groups.num_groups,), groups.num_groups, dtype=torch.long, device=device
        ).scatter_reduce(0, finer_ids, path_ids, reduce="amin")
        taking_part[:, level] = is_first_of_path & (smallest_path[finer_ids] == path_ids)
    loss = level_statistics(
        features,
        features,
        torch.arange(num_rows, device=features.device),
        LevelGroups(groups.ids, taking_part, groups.num_groups),
        temperature,
        include_in_denominator=taking_part,
    ).level_losses()
    count = taking_part.sum(dim=0).to(loss.dtype)
    return loss.sum(dim=1) / count * (temperature / base_temperature)
