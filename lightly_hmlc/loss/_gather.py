"""The distributed parts of the losses: one error decision for all ranks, gathering, means.

- :func:`share_errors`: every rank raises the same ``ValueError`` when the batch of ANY
  rank is bad, instead of one rank raising while the others wait in a collective.
- :func:`gather_for_loss`: the local anchors, and the contrast set gathered from all
  ranks together with its labels.
- :func:`reduce_levels`: the per-level means over the anchors of all ranks.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as torch_dist
from lightly.utils import dist
from torch import Tensor


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
    """

    anchors: Tensor
    contrast: Tensor
    anchor_index: Tensor
    contrast_labels: Tensor
    sample_index: Tensor
    distributed: bool


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
