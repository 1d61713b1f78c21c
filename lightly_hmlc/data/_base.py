"""The common shape of every dataset of this package."""

from __future__ import annotations

import difflib
import unicodedata
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from lightly_hmlc.hierarchy import LabelHierarchy

__all__ = ["HierarchicalDataset", "check_classes_match"]


class HierarchicalDataset(Dataset[tuple[Any, Any]]):
    """Base class: a torchvision-style dataset whose target is a label path.

    ``dataset[i]`` is ``(transform(sample), target_transform(label_path))``, the label path
    a ``LongTensor [L]``, coarse to fine, ``-1`` for a level the class does not have.
    ``label_paths`` gives all ``[N, L]`` without loading a sample; ``classes``,
    ``class_to_idx`` and ``targets`` are as in torchvision. Subclasses pass the fine class
    of every sample and implement :meth:`load_sample`.

    Examples:
        >>> class Points(HierarchicalDataset):
        ...     def load_sample(self, index):
        ...         return torch.tensor([float(index)])
        >>> hierarchy = LabelHierarchy({"cat": "animal", "car": "vehicle"})
        >>> ds = Points(["cat", "car"], [0, 1, 1], hierarchy)
        >>> ds[2]
        (tensor([2.]), tensor([1, 0]))
    """

    def __init__(
        self,
        classes: Sequence[str],
        targets: Sequence[int] | np.ndarray,
        hierarchy: LabelHierarchy,
        transform: Callable[[Any], Any] | None = None,
        target_transform: Callable[[Tensor], Any] | None = None,
    ) -> None:
        self.classes = list(classes)
        self.class_to_idx = {name: i for i, name in enumerate(self.classes)}
        self.hierarchy = hierarchy
        self.transform = transform
        self.target_transform = target_transform
        self._path_table = hierarchy.path_table(self.classes)
        fine = torch.as_tensor(np.asarray(targets, dtype=np.int64))
        if fine.numel() and (int(fine.min()) < 0 or int(fine.max()) >= len(self.classes)):
            bad = fine[(fine < 0) | (fine >= len(self.classes))].unique()[:10].tolist()
            raise ValueError(
                f"{type(self).__name__}: class indices {bad} are out of range for "
                f"{len(self.classes)} classes; the label file does not match the class list."
            )
        self._fine = fine
        self.targets: list[int] = fine.tolist()

    @property
    def num_levels(self) -> int:
        return int(self._path_table.shape[1])

    @property
    def label_paths(self) -> Tensor:
        """``LongTensor [N, L]``: the label path of every sample."""
        return self._path_table[self._fine]

    def target_path(self, index: int) -> Tensor:
        """The label path of sample ``index``, before ``target_transform``."""
        return self._path_table[self._fine[index]].clone()

    def load_sample(self, index: int) -> Any:
        """Sample ``index`` before ``transform`` (a PIL image, a point cloud, ...)."""
        raise NotImplementedError

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int) -> tuple[Any, Any]:
        if not -len(self) <= index < len(self):
            raise IndexError(f"Index {index} out of range for a dataset of {len(self)} samples.")
        index = index % len(self)
        sample = self.load_sample(index)
        if self.transform is not None:
            sample = self.transform(sample)
        target: Any = self.target_path(index)
        if self.target_transform is not None:
            target = self.target_transform(target)
        return sample, target

    def extra_repr(self) -> str:
        return ""

    def __repr__(self) -> str:
        lines = [
            f"{type(self).__name__}(",
            f"  num_samples={len(self)},",
            f"  num_classes_per_level={self.hierarchy.num_classes_per_level},",
        ]
        extra = self.extra_repr()
        if extra:
            lines.append(f"  {extra},")
        if self.transform is not None:
            lines.append(f"  transform={self.transform!r},")
        lines.append(")")
        return "\n".join(lines)


def check_classes_match(
    classes: Sequence[str],
    hierarchy: LabelHierarchy,
    strict: bool = True,
    where: str = "",
    kind: str = "class",
) -> None:
    """Raises a ValueError listing how a dataset's classes and a hierarchy's leaves differ:
    classes missing from the hierarchy, inner nodes used as classes, and (if ``strict``)
    leaves without a class.
    """
    # The hierarchy stores names in Unicode NFC; folder names may be decomposed (macOS).
    classes = [unicodedata.normalize("NFC", name) for name in classes]
    known = set(hierarchy.classes)
    leaves = set(hierarchy.leaves)
    not_in_hierarchy = [name for name in classes if name not in known]
    inner = [name for name in classes if name in known and name not in leaves]
    unused = sorted(leaves - set(classes)) if strict else []
    if not (not_in_hierarchy or inner or unused):
        return
    parts = []
    if not_in_hierarchy:
        hints = []
        for name in not_in_hierarchy[:5]:
            close = difflib.get_close_matches(name, hierarchy.leaves, n=1)
            if close:
                hints.append(f"{name!r} -> {close[0]!r}?")
        parts.append(
            f"{len(not_in_hierarchy)} {kind} name(s) missing from the hierarchy: "
            f"{not_in_hierarchy[:20]}" + (f" (similar leaves: {', '.join(hints)})" if hints else "")
        )
    if inner:
        parts.append(f"inner node(s) used as {kind}: {inner[:20]}")
    if unused:
        parts.append(f"hierarchy leaves without a {kind}: {unused[:20]}")
    source = f" of {where!r}" if where else ""
    raise ValueError(
        f"The {kind} names{source} do not match the hierarchy's leaves: "
        + "; ".join(parts)
        + f". Fix: make every {kind} name a leaf of the hierarchy (a 'parent child' line "
        "in an edge-list file), put the data of an inner node into its leaves (or make "
        "that node a leaf), and remove leaves that have no data"
        + (" or pass strict=False to allow them" if strict else "")
        + "."
    )
