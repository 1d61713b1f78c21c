"""A label-aware FIFO memory bank: projected embeddings together with their label paths."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.distributed as torch_dist
from lightly.utils import dist
from torch import Tensor, nn

from lightly_hmlc.label_paths import check_label_paths
from lightly_hmlc.models.modules._arguments import check_int


class HierarchicalMemoryBank(nn.Module):
    """FIFO queue of projected embeddings and their label paths, for the contrastive losses.

    Like Lightly's ``MemoryBankModule`` for MoCo [0], but each row keeps its label path, so
    that the losses find its positives at every level. :meth:`forward` returns the filled
    rows from before the batch is enqueued: pass them as ``memory=``. The queue is a set of
    buffers; with ``gather_distributed`` every rank enqueues the batches of all ranks, and
    ``check_values`` rejects NaN features and bad labels (reading the device).

    - [0] He et al., Momentum Contrast, CVPR 2020, https://arxiv.org/abs/1911.05722

    Examples:
        >>> bank = HierarchicalMemoryBank(size=4, dim=2, num_levels=2)
        >>> labels = torch.tensor([[0, 0], [1, -1]])
        >>> for shift in (0, 1, 2, 3):
        ...     bank_z, bank_labels = bank(torch.randn(2, 2), labels + shift)
        >>> bank_labels.tolist()  # the queue before the last batch, oldest first
        [[1, 1], [2, 0], [2, 2], [3, 1]]
        >>> per_level = HierarchicalMemoryBank(size=4, dim=(2, 8), num_levels=2)
        >>> per_level(torch.randn(2, 2, 8), labels)[0].shape  # rows [K, L, D]
        torch.Size([0, 2, 8])
    """

    features: Tensor
    labels: Tensor
    ptr: Tensor
    num_filled: Tensor

    def __init__(
        self,
        size: int,
        dim: int | Sequence[int],
        num_levels: int,
        gather_distributed: bool = False,
        check_values: bool = True,
    ) -> None:
        super().__init__()
        # A row is [D], or (L, D) for per-level embeddings [B, L, D].
        row_shape = (dim,) if isinstance(dim, int) else tuple(dim)
        for name, value, meaning in (
            ("size", size, "the number of queued rows K"),
            *(("dim", d, "the width D of a row, or its shape (L, D)") for d in row_shape),
            ("num_levels", num_levels, "the depth of the label paths L"),
        ):
            check_int(name, value, meaning=meaning)
        if not 1 <= len(row_shape) <= 2:
            raise ValueError(f"dim must be D or (L, D), got {dim!r}.")
        self.size = size
        self.dim = dim
        self.row_shape = row_shape
        self.num_levels = num_levels
        self.gather_distributed = gather_distributed
        self.check_values = check_values
        self.register_buffer("features", torch.zeros(size, *row_shape))
        self.register_buffer("labels", torch.full((size, num_levels), -1, dtype=torch.long))
        self.register_buffer("ptr", torch.zeros(1, dtype=torch.long))
        self.register_buffer("num_filled", torch.zeros(1, dtype=torch.long))
        # Host copies of ptr and num_filled (no device sync per step), re-read on load.
        self._host_ptr = 0
        self._host_filled = 0
        self.register_load_state_dict_post_hook(_sync_host_counters)

    def forward(
        self, features: Tensor, labels: Tensor, update: bool = True
    ) -> tuple[Tensor, Tensor]:
        """The ``min(seen, K)`` filled rows ``(features, labels)`` from before this batch, oldest
        first; then enqueues the batch unless ``update=False``.
        """
        labels = self._check(features, labels)
        num_filled = self._host_filled
        # Oldest first: once the queue is full the oldest row is the one ptr points at.
        start = self._host_ptr if num_filled == self.size else 0
        order = (torch.arange(num_filled, device=self.features.device) + start) % self.size
        bank_features = self.features[order].detach()  # advanced indexing copies
        bank_labels = self.labels[order]
        if update:
            self._enqueue(features.detach(), labels)
        return bank_features, bank_labels

    @torch.no_grad()
    def reset(self) -> None:
        """Empties the queue."""
        self.labels.fill_(-1)
        self.features.zero_()
        self.ptr.zero_()
        self.num_filled.zero_()
        self._host_ptr = self._host_filled = 0

    def extra_repr(self) -> str:
        return (
            f"size={self.size}, dim={self.dim}, num_levels={self.num_levels}, "
            f"gather_distributed={self.gather_distributed}"
        )

    def _load_from_state_dict(
        self, state_dict: dict[str, Any], prefix: str, *args: Any, **kwargs: Any
    ) -> None:
        # Counters outside the queue would return duplicated or never-written rows.
        filled, ptr = state_dict.get(prefix + "num_filled"), state_dict.get(prefix + "ptr")
        if isinstance(filled, Tensor) and isinstance(ptr, Tensor):
            if filled.numel() == 1 and ptr.numel() == 1:
                _check_counters(int(filled), int(ptr), self.size)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def _check(self, features: Tensor, labels: Tensor) -> Tensor:
        if not isinstance(features, Tensor):
            raise ValueError(f"features must be a torch.Tensor, got {type(features).__name__}.")
        if tuple(features.shape[1:]) != self.row_shape:
            expected = ", ".join(str(size) for size in self.row_shape)
            raise ValueError(
                f"features must have shape [batch_size, {expected}], got "
                f"{tuple(features.shape)}. Pass the projections (or per-level embeddings) "
                "of the shape the bank was built with."
            )
        if not features.dtype.is_floating_point:
            raise ValueError(f"features must be floating point, got {features.dtype}.")
        labels = check_label_paths(
            labels,
            num_levels=self.num_levels,
            batch_size=features.shape[0],
            allow_class_ids=self.num_levels == 1,
            check_values=self.check_values,
        )
        if not self.check_values:
            return labels
        if not bool(torch.isfinite(features).all()):
            raise ValueError(
                "features contain NaN or Inf; a diverged step must not enter the queue."
            )
        return labels

    @torch.no_grad()
    def _enqueue(self, features: Tensor, labels: Tensor) -> None:
        if self.gather_distributed and dist.world_size() > 1:
            features, labels = _gather_rows(features, labels)
        features = features.to(device=self.features.device, dtype=self.features.dtype)
        labels = labels.to(device=self.labels.device, dtype=torch.long)
        rows = features.shape[0]
        if rows == 0:
            return
        if rows > self.size:  # only the newest K rows survive the batch
            features, labels = features[-self.size :], labels[-self.size :]
            rows = self.size
        ptr = self._host_ptr
        index = (torch.arange(rows, device=self.features.device) + ptr) % self.size
        self.features.index_copy_(0, index, features)
        self.labels.index_copy_(0, index, labels)
        self._host_ptr = (ptr + rows) % self.size
        self._host_filled = min(self._host_filled + rows, self.size)
        self.ptr.fill_(self._host_ptr)
        self.num_filled.fill_(self._host_filled)


def _check_counters(num_filled: int, ptr: int, size: int) -> None:
    if not 0 <= num_filled <= size:
        problem = f"num_filled={num_filled} is outside 0..{size}, the bank's size"
    elif not 0 <= ptr < size:
        problem = f"ptr={ptr} is outside 0..{size - 1}"
    elif num_filled < size and ptr != num_filled:
        problem = f"ptr={ptr} differs from num_filled={num_filled} in a queue not yet full"
    else:
        return
    raise ValueError(
        f"The memory bank's state_dict is inconsistent: {problem}. It comes from a bank "
        "of another size or was edited; load it into a bank built with the same size, "
        "or start with an empty queue (bank.reset())."
    )


def _sync_host_counters(module: nn.Module, incompatible_keys: object) -> None:
    if isinstance(module, HierarchicalMemoryBank):
        module._host_ptr = int(module.ptr)
        module._host_filled = int(module.num_filled)


def _gather_rows(features: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
    """All-gathers features and labels; every rank must send as many rows."""
    world_size = dist.world_size()
    rows = torch.tensor([features.shape[0]], device=features.device)
    sizes = [torch.zeros_like(rows) for _ in range(world_size)]
    torch_dist.all_gather(sizes, rows)
    if len({int(size) for size in sizes}) != 1:
        raise ValueError(
            f"gather_distributed needs the same batch size on every rank, got "
            f"{[int(size) for size in sizes]}. Use drop_last=True in the DataLoader."
        )
    gathered_features = [torch.empty_like(features) for _ in range(world_size)]
    torch_dist.all_gather(gathered_features, features.contiguous())
    gathered_labels = [torch.empty_like(labels) for _ in range(world_size)]
    torch_dist.all_gather(gathered_labels, labels.contiguous())
    return torch.cat(gathered_features), torch.cat(gathered_labels)
