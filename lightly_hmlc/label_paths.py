"""The one check of the label-path contract ``[B, L]``, shared by losses, heads, sampler,
memory bank and metrics, so that the same mistake gives the same error everywhere.

A label path is a row of class ids, coarse to fine, ``-1`` for an unknown level. By
default only metadata is checked, which never waits for an accelerator; the value
checks read the tensor, so they are for labels from a user or a file.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

__all__ = ["check_label_paths"]


def check_label_paths(
    labels: Tensor,
    *,
    num_levels: int | None = None,
    batch_size: int | None = None,
    name: str = "labels",
    allow_class_ids: bool = False,
    check_values: bool = False,
    num_classes: Sequence[int] | None = None,
    known_prefix: bool = False,
    configured_by: str | None = None,
    row_hint: str = "pass one label path per sample.",
) -> Tensor:
    """Checks label paths and returns them as ``[B, L]`` int64, without a device sync.

    Args:
        labels: Integer tensor ``[B, L]``, or ``[B]`` class ids with ``allow_class_ids``.
        num_levels: The required L, or ``None``; ``configured_by`` says who set it.
        batch_size: The required B, or ``None``; ``row_hint`` says how to fix a mismatch.
        name: How the argument is called in the messages.
        check_values: Also check that ids are ``>= -1``, below ``num_classes`` if given,
            and, with ``known_prefix``, that no level is known below an unknown one.

    Examples:
        >>> check_label_paths(torch.tensor([2, 5]), allow_class_ids=True).tolist()
        [[2], [5]]
    """
    if not isinstance(labels, Tensor):
        raise ValueError(
            f"{name} must be a torch.Tensor of label paths [B, L], got {type(labels).__name__}; "
            "convert with torch.as_tensor(...)."
        )
    if labels.dtype.is_floating_point or labels.dtype.is_complex or labels.dtype == torch.bool:
        raise ValueError(
            f"{name} must be integers (class ids, -1 for unknown), got dtype {labels.dtype}. "
            f"Convert them with {name}.long()."
        )
    if labels.dim() == 1 and allow_class_ids:
        labels = labels.unsqueeze(1)
    if labels.dim() != 2:
        paths = "[B, L]" if num_levels is None else f"[B, L] with L={num_levels}"
        expected = f"[B] or {paths}" if allow_class_ids else f"{paths} (one label path per row)"
        raise ValueError(f"{name} must have shape {expected}, got {tuple(labels.shape)}.")
    if labels.shape[1] == 0:
        raise ValueError(f"{name} has no level (shape {tuple(labels.shape)}); L must be >= 1.")
    if num_levels is not None and labels.shape[1] != num_levels:
        configured = (
            f": {configured_by} was configured with num_levels={num_levels}"
            if configured_by
            else ""
        )
        raise ValueError(
            f"{name} has {labels.shape[1]} levels but {num_levels} are expected{configured}. "
            f"Pass label paths of the hierarchy's depth ([B, L] with L={num_levels}), coarse "
            "to fine, or change num_levels."
        )
    if batch_size is not None and labels.shape[0] != batch_size:
        raise ValueError(
            f"{name} has {labels.shape[0]} rows but {batch_size} are expected: {row_hint}"
        )
    labels = labels.long()
    if check_values:
        _check_values(labels, name, num_classes, known_prefix)
    elif num_classes is not None or known_prefix:
        raise ValueError(
            "num_classes and known_prefix are checked only with check_values=True; set it too."
        )
    return labels


def _check_values(
    labels: Tensor, name: str, num_classes: Sequence[int] | None, known_prefix: bool
) -> None:
    if labels.numel() == 0:
        return
    low = labels < -1
    if bool(low.any()):
        raise ValueError(
            f"{name} contain values below -1 (min {int(labels.min())}): use class ids >= 0, "
            "and -1 only for an unknown level."
        )
    if num_classes is not None:
        counts = list(num_classes)
        if len(counts) != labels.shape[1]:
            raise ValueError(
                f"num_classes has {len(counts)} entries but {name} has {labels.shape[1]} levels."
            )
        limit = torch.tensor(counts, device=labels.device)
        high = labels >= limit
        if bool(high.any()):
            level = int(high.any(0).nonzero()[0, 0])
            raise ValueError(
                f"{name} has class id {int(labels[:, level].max())} at level {level}, which "
                f"has {counts[level]} classes (ids 0..{counts[level] - 1}, -1 for unknown)."
            )
    if not known_prefix:
        return
    unknown = labels < 0
    after = unknown[:, :-1] & ~unknown[:, 1:]
    if bool(after.any()):
        row = int(after.any(1).nonzero()[0, 0])
        raise ValueError(
            f"Row {row} of {name}, {labels[row].tolist()}, has a known level after an "
            "unknown (-1) one; label paths must be known from the coarsest level down."
        )
