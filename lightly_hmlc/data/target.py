"""Target transform from a class index to its label path."""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

from lightly_hmlc.hierarchy import LabelHierarchy

__all__ = ["LabelPathTransform"]


class LabelPathTransform:
    """Maps a fine class index to its label path ``LongTensor [L]``, coarse to fine.

    Pass it as ``target_transform`` of a torchvision-style dataset, so that batches carry
    the ``[B, L]`` label paths the losses take; index ``i`` is ``class_names[i]`` (default
    ``hierarchy.leaves``).

    Examples:
        >>> LabelPathTransform(LabelHierarchy.cifar10(), ["airplane", "cat"])(1)
        tensor([0, 3])
    """

    def __init__(
        self,
        hierarchy: LabelHierarchy | str | os.PathLike[str],
        class_names: Sequence[str] | None = None,
    ) -> None:
        if not isinstance(hierarchy, LabelHierarchy):
            hierarchy = LabelHierarchy.load(hierarchy)
        names = list(hierarchy.leaves if class_names is None else class_names)
        if not names:
            raise ValueError("class_names is empty: pass the dataset's classes, e.g. ds.classes.")
        self.hierarchy = hierarchy
        self.class_names = names
        self.table = hierarchy.path_table(names)

    @property
    def num_levels(self) -> int:
        return int(self.table.shape[1])

    def __call__(self, index: int | np.integer | Tensor) -> Tensor:
        if isinstance(index, Tensor):
            if index.numel() != 1 or index.dtype.is_floating_point or index.dtype == torch.bool:
                raise ValueError(
                    f"Expected one integer class index, got a tensor of shape "
                    f"{tuple(index.shape)} and dtype {index.dtype}."
                )
            value = int(index.item())
        elif isinstance(index, int | np.integer) and not isinstance(index, bool):
            value = int(index)
        else:
            raise ValueError(f"Expected an integer class index, got {index!r}.")
        if not 0 <= value < len(self.class_names):
            raise ValueError(
                f"Class index {value} is out of range: the dataset has "
                f"{len(self.class_names)} classes (indices 0..{len(self.class_names) - 1}). "
                "Check that class_names matches the dataset's classes."
            )
        return self.table[value].clone()

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(num_classes={len(self.class_names)}, "
            f"num_levels={self.num_levels})"
        )
