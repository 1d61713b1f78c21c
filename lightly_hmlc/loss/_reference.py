"""The level terms of the authors' public reference implementation of HMLC.

``HMLCLoss(reference_compatible=True)`` reproduces that code (Zhang et al., CVPR 2022,
https://arxiv.org/abs/2204.13207) instead of the paper's formula; see
:class:`~lightly_hmlc.loss.HMLCLoss` for the differences. This module holds the one part
that has no counterpart in the default mode: which rows take part in each level.
"""

from __future__ import annotations

import torch
from torch import Tensor

from lightly_hmlc.loss._levels import LevelGroups, anchor_level_losses, build_level_groups


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
            "reference_compatible=True does not support -1 (unknown) labels: the "
            "reference implementation has no notion of a missing level. Use the "
            "default mode, or fill in the labels."
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
    loss, _ = anchor_level_losses(
        features,
        features,
        torch.arange(num_rows, device=features.device),
        LevelGroups(groups.ids, taking_part, groups.num_groups),
        temperature,
        include_in_denominator=taking_part,
    )
    count = taking_part.sum(dim=0).to(loss.dtype)
    return loss.sum(dim=1) / count * (temperature / base_temperature)
