"""The loss batch: anchors and the contrast set, gathered over ranks, with memory rows.

- :func:`share_errors`: every rank raises the same ``ValueError`` when the batch of ANY
  rank is bad, instead of one rank raising while the others wait in a collective.
- :func:`gather_for_loss`: the local anchors, and the contrast set gathered from all
  ranks together with its labels.
- :func:`memory_batch`: memory rows (e.g. a :class:`HierarchicalMemoryBank`'s queue)
  appended to the contrast set. They are positives and negatives of the batch's anchors
  at every level, never anchors, as MoCo's queue (He et al., CVPR 2020) and the
  cross-batch memory of supervised metric learning. With masks, level ``h`` of a memory
  row is ``normalize(normalize(m) * memory_masks[:, h])``, as for batch rows.
- :func:`reduce_levels`: the per-level means over the anchors of all ranks.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.distributed as torch_dist
import torch.nn.functional as F
from lightly.utils import dist
from torch import Tensor

from lightly_hmlc.label_paths import check_label_paths


def reads_shapes(check_values: bool) -> bool:
    """Whether the loss may read a few values on the host to pick its shapes (the largest
    coarse group's size, the runs of shared hard masks): always with the value checks,
    and without them too except where no value can be read (inside a ``torch.compile``
    graph or a CUDA-graph capture). Without these reads the windows are whole rows,
    several times slower (``docs/METHOD.md``)."""
    if check_values:
        return True
    if torch.compiler.is_compiling():
        return False
    return not (torch.cuda.is_available() and torch.cuda.is_current_stream_capturing())


def mask_levels(features: Tensor, masks: Tensor) -> Tensor:
    """``normalize(z * masks[:, h])`` of every level: ``[N, L, D]`` from rows ``[N, D]``
    and checked masks ``[1 | N, L, D]``."""
    return F.normalize(features.unsqueeze(1) * masks, dim=2)


def share_errors(error: str | None, rows: int, device: torch.device) -> None:
    """Raises the same ``ValueError`` on every rank if any rank found a data error.

    Called by every rank of a ``gather_distributed`` loss after its local checks and
    before any other collective, so that a bad batch on one rank (NaN, labels below -1,
    a wrong shape, a different batch size) stops all ranks with one message, and no
    rank waits forever for a collective that a failed rank never enters. Costs one
    all-gather of two integers per call (a host-device synchronisation); the messages
    themselves are only exchanged when a rank failed.

    Args:
        error: This rank's error message, or ``None``.
        rows: This rank's number of rows (both views).
        device: The device of the collective (the embeddings' device).

    Raises:
        ValueError: On every rank, naming the failing rank(s), or the differing batch
            sizes.
    """
    world_size = dist.world_size()
    status = torch.tensor([rows, int(error is not None)], dtype=torch.long, device=device)
    gathered = [torch.zeros_like(status) for _ in range(world_size)]
    torch_dist.all_gather(gathered, status)
    table = torch.stack(gathered).tolist()
    if any(failed for _, failed in table):
        messages: list[str | None] = [None] * world_size
        torch_dist.all_gather_object(messages, error)
        details = [
            f"rank {rank} of {world_size}: {message}"
            for rank, message in enumerate(messages)
            if message is not None
        ]
        raise ValueError(
            "Bad loss inputs on "
            + ("; ".join(details) or "an unknown rank")
            + " (gather_distributed=True: every rank raises this error)."
        )
    sizes = [size for size, _ in table]
    if len(set(sizes)) != 1:
        raise ValueError(
            f"gather_distributed needs the same batch size on every rank, got "
            f"{[size // 2 for size in sizes]}. Use drop_last=True in the DataLoader "
            "(or a DistributedSampler with drop_last=True)."
        )


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
        same_levels: Per-level features whose levels are all equal (shared masks with
            equal rows): one similarity matrix serves every level.
        level_columns: ``(start, stop)`` per level: the only feature columns where the
            level's features can be nonzero (shared hard masks, their columns reordered
            so that every level's are one run), or ``None`` (all columns).
    """

    anchors: Tensor
    contrast: Tensor
    anchor_index: Tensor
    contrast_labels: Tensor
    sample_index: Tensor
    distributed: bool
    same_levels: bool = False
    level_columns: tuple[tuple[int, int], ...] | None = None


def gather_for_loss(features: Tensor, labels: Tensor, gather_distributed: bool) -> LossBatch:
    """Builds the anchors and the (gathered) contrast set.

    Args:
        features: ``[2B, ...]`` both views stacked, view 0 first.
        labels: ``[2B, L]`` the label paths of those rows.
        gather_distributed: Gather features AND labels from all ranks. Every rank must
            hold the same batch size (checked by :func:`share_errors`).
    """
    rows = features.shape[0]
    batch_size = rows // 2
    device = features.device
    local_index = torch.arange(rows, device=device)
    local_sample = local_index % batch_size
    world_size = dist.world_size() if gather_distributed else 1
    if world_size == 1:
        return LossBatch(features, features, local_index, labels, local_sample, False)
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

    For per-level embeddings (``features`` of shape ``[2B, L, D]``) the memory rows are
    per-level too, ``[K, L, D]``, each level normalised on its own.

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
    row_shape = tuple(features.shape[1:])  # (D,) or, for per-level embeddings, (L, D)
    if tuple(bank_features.shape[1:]) != row_shape:
        expected = ", ".join(str(size) for size in row_shape)
        raise ValueError(
            f"memory features must have shape [K, {expected}] (the shape of the loss's "
            f"rows), got {tuple(bank_features.shape)}."
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
    unit = F.normalize(bank_features.to(device=features.device, dtype=features.dtype), dim=-1)
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


def loss_batch(
    features: Tensor,
    labels: Tensor,
    masks: Tensor | None,
    memory: object,
    memory_masks: Tensor | None,
    gather_distributed: bool,
    check_values: bool = True,
) -> LossBatch:
    """The loss batch of the batch rows (all ranks) and the memory rows, masks applied.

    Args:
        features: ``[2B, D]`` normalised rows of ``cat([out0, out1])``.
        labels: ``[2B, L]`` their label paths.
        masks: ``None`` or checked batch masks ``[1 | 2B, L, D]``.
        memory: ``None`` or ``(features [K, D], labels [K, L])``.
        memory_masks: ``None`` or ``[1 | K, L, D]``; ``None`` reuses shared ``[1, L, D]``
            batch masks.
        gather_distributed: Gather the batch rows of all ranks (a memory bank with
            ``gather_distributed=True`` holds the same rows on every rank already).
        check_values: Check the memory's values too (a host synchronisation).

    Returns:
        Rows ``[N, D]`` without masks, else per-level features ``[N, L, D]``.

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
        # One set of masks for every row (or none): gather the rows, mask them after.
        batch = append_memory(gather_for_loss(features, labels, gather_distributed), bank)
        if masks is None:
            return batch
        # Shared hard masks are read on the host (a sync, see reads_shapes): equal rows
        # (a GMM head before its first fit: all ones) give equal levels, one similarity
        # matrix for all; else each level's matmul needs only its columns. (Masks come
        # with rows [N, D] only: prepare_inputs refuses them with per-level embeddings,
        # whose levels differ whatever the masks.)
        hard = reads_shapes(check_values) and not masks.requires_grad and _is_hard(masks)
        same_levels = hard and _equal_rows(masks)
        order, columns = _column_runs(masks) if hard and not same_levels else (None, None)
        rows, contrast_rows = batch.anchors, batch.contrast
        if order is not None:  # dot products do not depend on the order of the columns
            masks = masks[..., order]
            rows, contrast_rows = rows[..., order], contrast_rows[..., order]
        anchors = mask_levels(rows, masks)
        same = batch.anchors is batch.contrast
        contrast = anchors if same else mask_levels(contrast_rows, masks)
        return dataclasses.replace(
            batch,
            anchors=anchors,
            contrast=contrast,
            same_levels=same_levels,
            level_columns=columns,
        )
    # Per-row masks: gather the per-level features (they carry the masks' gradient).
    batch = gather_for_loss(mask_levels(features, masks), labels, gather_distributed)
    if bank is not None:
        assert memory_masks is not None
        batch = append_memory(batch, (mask_levels(bank[0], memory_masks), bank[1]))
    return batch


def _is_hard(masks: Tensor) -> bool:
    """Whether masks hold only zeros and ones."""
    return bool(((masks == 0) | (masks == 1)).all())


def _column_runs(
    masks: Tensor,
) -> tuple[Tensor | None, tuple[tuple[int, int], ...] | None]:
    """A column order of shared hard masks ``[1, L, D]`` in which every level's columns
    are one run, and the runs: ``(order or None when it is the identity, runs)``, or
    ``(None, None)`` when there is no such order or nothing to gain.

    Columns are sorted by the first and then the last level that uses them: nested masks
    (each level's columns contain the coarser ones') give prefixes, a partition gives
    blocks.
    """
    used = masks[0].bool()  # [L, D]
    num_levels, dim = used.shape
    levels = torch.arange(num_levels, device=masks.device).unsqueeze(1)
    first = torch.where(used, levels, num_levels).amin(dim=0)
    last = torch.where(used, levels, -1).amax(dim=0)
    order = torch.sort(first * (num_levels + 1) + last, stable=True).indices
    in_order = used[:, order]
    counts = in_order.sum(dim=1)
    starts = in_order.long().argmax(dim=1)
    runs = []
    for level, (start, count) in enumerate(zip(starts.tolist(), counts.tolist(), strict=True)):
        if count == 0 or not bool(in_order[level, start : start + count].all()):
            return None, None  # an empty level, or one that is not a run
        runs.append((start, start + count))
    if all(run == (0, dim) for run in runs):
        return None, None
    identity = bool((order == torch.arange(dim, device=order.device)).all())
    return (None if identity else order), tuple(runs)


def _equal_rows(masks: Tensor) -> bool:
    """Whether shared masks ``[1, L, D]`` are the same at every level."""
    return masks.shape[1] > 1 and bool((masks == masks[:, :1]).all())


def _memory_masks(
    masks: Tensor, memory_masks: Tensor | None, bank_features: Tensor, allow_sync: bool
) -> Tensor:
    """The memory rows' checked masks (the batch's own where they are the same)."""
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
