"""A dataset's samples with the label paths of another hierarchy."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from torch.utils.data import Dataset

from lightly_hmlc.data._base import check_classes_match
from lightly_hmlc.hierarchy import LabelHierarchy

__all__ = ["Relabeled"]


class Relabeled(Dataset[Any]):
    """Gives a dataset with ``classes`` and ``targets`` (a torchvision one, say) the label
    paths of a hierarchy whose leaves are its classes.

    Examples:
        >>> class Digits(Dataset):
        ...     classes, targets = ["one", "two", "three"], [0, 2, 1]
        ...     def __len__(self): return 3
        ...     def __getitem__(self, i): return torch.zeros(1), self.targets[i]
        >>> tree = LabelHierarchy.from_edges([("odd", "one"), ("odd", "three"), ("even", "two")])
        >>> Relabeled(Digits(), tree)[1][1].tolist()
        [1, 1]
    """

    def __init__(
        self,
        dataset: Any,
        hierarchy: LabelHierarchy,
        *,
        strict: bool = True,
        where: str = "the hierarchy",
    ) -> None:
        for attribute in ("classes", "targets"):
            if not hasattr(dataset, attribute):
                raise ValueError(
                    f"Relabeled needs a dataset with '{attribute}' (class names and the class "
                    f"index of each sample); {type(dataset).__name__} has none."
                )
        check_classes_match(dataset.classes, hierarchy, strict=strict, where=where)
        self.dataset = dataset
        self.hierarchy = hierarchy
        self.classes = list(dataset.classes)
        table = hierarchy.path_table(self.classes)
        self.label_paths: Tensor = table[torch.as_tensor(list(dataset.targets))]

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> tuple[Any, Tensor]:
        sample = self.dataset[index][0]
        return sample, self.label_paths[index].clone()
