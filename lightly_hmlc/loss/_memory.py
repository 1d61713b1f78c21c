"""Memory rows (e.g. a :class:`HierarchicalMemoryBank`'s queue) and masks in the level terms.

A memory is a tuple ``(features [K, D], labels [K, L])`` of extra contrast rows. They are
positives (at every level where their label prefix matches an anchor's) and negatives
for the batch's anchors, but never anchors themselves, as the queue of MoCo (He et al.,
CVPR 2020) and the cross-batch memory of supervised metric learning. With masks, level
``h`` of a memory row is ``normalize(normalize(m) * memory_masks[:, h])``, as for batch rows.
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from lightly_hmlc.label_paths import check_label_paths
from lightly_hmlc.loss._features import mask_levels
from lightly_hmlc.loss._gather import LossBatch, gather_for_loss

Memory = tuple[Tensor, Tensor]


class CheckedMemory(NamedTuple):
    """Memory rows that :func:`check_memory` has validated and normalised.

    A masked loss checks the memory before running its head on the rows; passing this on
    lets the level terms skip a second check (and its host synchronisation).
    """

    features: Tensor
    labels: Tensor


def check_memory(
    memory: object, features: Tensor, num_levels: int, check_values: bool = True
) -> CheckedMemory | None:
    """Validated memory rows: ``(normalised features [K, D], labels [K, L])``.

    An empty memory (``K = 0``, e.g. a bank's first step) is returned as ``None``. With
    ``check_values=False`` only shapes and dtypes are checked (no host synchronisation).
    A :class:`CheckedMemory` (this function's own result) is returned as it is.

    Raises:
        ValueError: Naming the problem (not a pair, shapes, dtype, NaN, labels < -1).
    """
    if memory is None or isinstance(memory, CheckedMemory):
        return memory
    if not isinstance(memory, (tuple, list)) or len(memory) != 2:
        raise ValueError(
            "memory must be a tuple (features [K, D], labels [K, L]), e.g. what "
            f"HierarchicalMemoryBank returns; got {type(memory).__name__}."
        )
    bank_features, bank_labels = memory
    if not isinstance(bank_features, Tensor) or not isinstance(bank_labels, Tensor):
        raise ValueError("memory must hold two torch.Tensors (features, labels).")
    dim = features.shape[1]
    if bank_features.dim() != 2 or bank_features.shape[1] != dim:
        raise ValueError(
            f"memory features must have shape [K, {dim}] (the projections' width), got "
            f"{tuple(bank_features.shape)}."
        )
    if not bank_features.dtype.is_floating_point:
        raise ValueError(f"memory features must be floating point, got {bank_features.dtype}.")
    # The package's one label-path check (it also rejects complex and bool labels);
    # values below -1 only with check_values, as they need a host sync.
    bank_labels = check_label_paths(
        bank_labels,
        num_levels=num_levels,
        batch_size=bank_features.shape[0],
        name="memory_labels",
        allow_class_ids=num_levels == 1,
        check_values=check_values,
    )
    if bank_features.shape[0] == 0:
        return None
    if check_values and not bool(torch.isfinite(bank_features).all()):
        raise ValueError("memory features contain NaN or Inf.")
    unit = F.normalize(bank_features.to(device=features.device, dtype=features.dtype), dim=1)
    return CheckedMemory(unit, bank_labels.to(device=features.device, dtype=torch.long))


def append_memory(batch: LossBatch, memory: Memory | None) -> LossBatch:
    """The loss batch with the memory rows appended to the contrast set (not to anchors)."""
    if memory is None:
        return batch
    bank_features, bank_labels = memory
    offset = batch.contrast.shape[0]  # sample ids are below the number of rows
    sample_index = torch.arange(bank_features.shape[0], device=bank_features.device) + offset
    return dataclasses.replace(
        batch,
        contrast=torch.cat([batch.contrast, bank_features.to(batch.contrast.dtype)]),
        contrast_labels=torch.cat([batch.contrast_labels, bank_labels]),
        sample_index=torch.cat([batch.sample_index, sample_index]),
    )


def memory_batch(
    features: Tensor,
    labels: Tensor,
    masks: Tensor | None,
    memory: object,
    memory_masks: Tensor | None,
    gather_distributed: bool,
    check_values: bool = True,
) -> tuple[LossBatch, Tensor | None]:
    """The loss batch of batch rows ∪ memory rows, and the masks shared by all its rows.

    Args:
        features: ``[2B, D]`` normalised rows of ``cat([out0, out1])``.
        labels: ``[2B, L]`` their label paths.
        masks: ``None`` or checked batch masks ``[1 | 2B, L, D]``.
        memory: ``None`` or ``(features [K, D], labels [K, L])``.
        memory_masks: ``None`` or ``[1 | K, L, D]``; ``None`` reuses shared ``[1, L, D]``
            batch masks.
        gather_distributed: Gather the batch rows of all ranks (the memory rows are not
            gathered: a bank with ``gather_distributed=True`` holds the same rows on
            every rank already).
        check_values: Check the memory's values too (a host synchronisation).

    Returns:
        ``(batch, shared_masks)``. With ``shared_masks`` (``[1, L, D]``, one set for
        every row) the batch holds ``[N, D]`` rows and the masks are still to be applied
        (so the shared-mask fast path can); otherwise the rows are ``[N, D]`` without
        masks, or ``[N, L, D]`` per-level features with the per-row masks applied.

    Raises:
        ValueError: For invalid memory or memory masks, or per-row batch masks with
            memory rows but no ``memory_masks``.
    """
    bank = check_memory(memory, features, labels.shape[1], check_values)
    if masks is None and memory_masks is not None:
        raise ValueError(
            "memory_masks were given without masks: pass the batch's masks too (or neither)."
        )
    if bank is not None and masks is not None:
        memory_masks = _memory_masks(masks, memory_masks, bank[0], check_values)
    if masks is None or (masks.shape[0] == 1 and (memory_masks is None or memory_masks is masks)):
        # One set of masks for every row (or none): gather z, mask later.
        batch = append_memory(gather_for_loss(features, labels, gather_distributed), bank)
        return batch, masks
    # Per-row masks: gather the per-level features (they carry the masks' gradient).
    level_features = mask_levels(features, masks)
    batch = gather_for_loss(level_features, labels, gather_distributed)
    if bank is not None:
        assert memory_masks is not None
        bank_levels = mask_levels(bank[0], memory_masks)
        batch = append_memory(batch, (bank_levels, bank[1]))
    return batch, None


def _memory_masks(
    masks: Tensor, memory_masks: Tensor | None, bank_features: Tensor, allow_sync: bool
) -> Tensor:
    rows, num_levels, dim = bank_features.shape[0], masks.shape[1], masks.shape[2]
    if memory_masks is None:
        if masks.shape[0] != 1:
            raise ValueError(
                f"The batch masks are per row ({masks.shape[0]} rows) but memory_masks is "
                f"None: pass memory_masks=[{rows} | 1, {num_levels}, {dim}] for the memory "
                "rows, e.g. mask_head(memory_features)."
            )
        return masks
    if memory_masks is masks:
        return masks
    if not isinstance(memory_masks, Tensor) or not memory_masks.dtype.is_floating_point:
        raise ValueError("memory_masks must be a floating point torch.Tensor.")
    if (
        memory_masks.dim() != 3
        or tuple(memory_masks.shape[1:]) != (num_levels, dim)
        or memory_masks.shape[0] not in (1, rows)
    ):
        raise ValueError(
            f"memory_masks has shape {tuple(memory_masks.shape)}; expected "
            f"[1 | {rows}, {num_levels}, {dim}] (shared | per memory row, levels, dim)."
        )
    if allow_sync and not bool(torch.isfinite(memory_masks).all()):
        raise ValueError("memory_masks contain NaN or Inf: check the mask head.")
    memory_masks = memory_masks.to(device=masks.device, dtype=masks.dtype)
    shared = memory_masks.shape[0] == 1 and masks.shape[0] == 1
    if allow_sync and shared and not (memory_masks.requires_grad or masks.requires_grad):
        if torch.equal(memory_masks, masks):  # the same hard masks: keep the fast path
            return masks
    return memory_masks
