"""CIFAR-100 (fine and coarse labels from the files) and CIFAR-10 (vehicle / animal)."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from torch import Tensor

from lightly_hmlc.data._archive import extract_archive_once
from lightly_hmlc.data._base import HierarchicalDataset
from lightly_hmlc.data._io import load_image, load_pickle, scan_image_folder
from lightly_hmlc.hierarchy import LabelHierarchy

__all__ = ["CIFAR100Hierarchical", "CIFAR10Hierarchical"]

_CIFAR100_DIR = "cifar-100-python"
_CIFAR10_DIR = "cifar-10-batches-py"
_CIFAR10_TRAIN = [f"data_batch_{i}" for i in range(1, 6)]
_CIFAR10_TEST = ["test_batch"]


def _to_hwc(flat: Any, path: Path) -> np.ndarray:
    """Rows of 3072 bytes (R, G, B planes of 32x32) -> uint8 [N, 32, 32, 3]."""
    array = np.asarray(flat, dtype=np.uint8)
    if array.ndim != 2 or array.shape[1] != 3 * 32 * 32:
        raise OSError(
            f"{str(path)!r}: 'data' has shape {array.shape}, expected [N, 3072] (32x32 RGB "
            "planes); the file is not a CIFAR python batch."
        )
    return np.ascontiguousarray(array.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))


def _require(entry: dict[str, Any], keys: list[str], path: Path) -> None:
    missing = [key for key in keys if key not in entry]
    if missing:
        raise OSError(
            f"{str(path)!r} lacks the key(s) {missing} (has {sorted(entry)}); it is not an "
            "official CIFAR python file."
        )


class CIFAR100Hierarchical(HierarchicalDataset):
    """CIFAR-100 with its 20 superclasses, both labels read from the official files.

    Reads the python release in ``root`` or ``root/cifar-100-python/``. The files' fine ->
    coarse pairs are checked against :meth:`LabelHierarchy.cifar100`, so a relabelled copy
    fails loudly; the label path ``[coarse, fine]`` equals the files' labels.

    Examples:
        >>> ds = CIFAR100Hierarchical("/path/to/data")  # doctest: +SKIP
        >>> ds.hierarchy.id_to_name(0, int(ds[0][1][0]))  # doctest: +SKIP
        'fruit_and_vegetables'
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        train: bool = True,
        transform: Callable[[Any], Any] | None = None,
        target_transform: Callable[[Tensor], Any] | None = None,
        download: bool = False,
    ) -> None:
        root = Path(root).expanduser()
        if download:
            import torchvision

            torchvision.datasets.CIFAR100(str(root), train=train, download=True)
        folder = root if (root / "meta").is_file() else root / _CIFAR100_DIR
        split = "train" if train else "test"
        if not (folder / split).is_file() or not (folder / "meta").is_file():
            raise FileNotFoundError(
                f"CIFAR-100 not found: expected {str(folder / split)!r} and "
                f"{str(folder / 'meta')!r}. Get the CIFAR-100 python version "
                "(cifar-100-python.tar.gz from https://www.cs.toronto.edu/~kriz/cifar.html), "
                f"extract it so that the files lie in {str(root / _CIFAR100_DIR)!r}, or pass "
                "download=True when online."
            )
        meta = load_pickle(folder / "meta")
        _require(meta, ["fine_label_names", "coarse_label_names"], folder / "meta")
        entry = load_pickle(folder / split)
        _require(entry, ["data", "fine_labels", "coarse_labels"], folder / split)
        fine_names = [str(name) for name in meta["fine_label_names"]]
        coarse_names = [str(name) for name in meta["coarse_label_names"]]
        fine = np.asarray(entry["fine_labels"], dtype=np.int64)
        coarse = np.asarray(entry["coarse_labels"], dtype=np.int64)
        self.data = _to_hwc(entry["data"], folder / split)
        if not len(fine) == len(coarse) == len(self.data):
            raise OSError(
                f"{str(folder / split)!r}: {len(self.data)} images but {len(fine)} fine and "
                f"{len(coarse)} coarse labels; the file is truncated or corrupt."
            )
        for name, labels, names in (("fine", fine, fine_names), ("coarse", coarse, coarse_names)):
            if labels.size and (labels.min() < 0 or labels.max() >= len(names)):
                raise OSError(
                    f"{str(folder / split)!r}: {name} labels outside 0..{len(names) - 1}, "
                    f"the number of {name}_label_names in 'meta'."
                )
        self.coarse_targets: list[int] = coarse.tolist()
        hierarchy = _check_cifar100(fine, coarse, fine_names, coarse_names, folder / split)
        self.root = root
        self.train = train
        super().__init__(fine_names, fine, hierarchy, transform, target_transform)

    def load_sample(self, index: int) -> Image.Image:
        """The PIL image of sample ``index``."""
        return Image.fromarray(self.data[index])

    def extra_repr(self) -> str:
        """Root and split."""
        return f"root={str(self.root)!r}, train={self.train}"


def _check_cifar100(
    fine: np.ndarray, coarse: np.ndarray, fine_names: list[str], coarse_names: list[str], path: Path
) -> LabelHierarchy:
    """The official hierarchy, once every fine -> coarse pair of the files agrees with it."""
    official = LabelHierarchy.cifar100()
    unknown_fine = sorted(set(fine_names) - set(official.leaves))
    unknown_coarse = sorted(set(coarse_names) - set(official.level_names(0)))
    if unknown_fine or unknown_coarse:
        raise ValueError(
            f"CIFAR-100 meta file next to {str(path)!r} has class names that are not the "
            f"official ones: fine {unknown_fine[:10]}, coarse {unknown_coarse[:10]}. Use the "
            "official cifar-100-python release."
        )
    pairs: list[list[int]] = np.unique(np.stack([fine, coarse], 1), axis=0).tolist()
    parents: dict[str, str] = {}
    conflicts: list[str] = []
    wrong: list[str] = []
    for f, c in pairs:
        child, parent = fine_names[f], coarse_names[c]
        if child in parents:
            conflicts.append(f"{child!r} under both {parents[child]!r} and {parent!r}")
            continue
        parents[child] = parent
        if official.parent(child) != parent:
            wrong.append(f"{child!r} under {parent!r} (official: {official.parent(child)!r})")
    if conflicts or wrong:
        raise ValueError(
            f"The coarse labels of {str(path)!r} disagree with the official CIFAR-100 "
            f"superclasses: {'; '.join((conflicts + wrong)[:10])}"
            f"{' ...' if len(conflicts) + len(wrong) > 10 else ''}. The file is corrupt or "
            "relabelled; use the official cifar-100-python release."
        )
    # Every pair agrees with the official tree, so the files' hierarchy is (a part of) it.
    return official


class CIFAR10Hierarchical(HierarchicalDataset):
    """CIFAR-10 with the vehicle / animal hierarchy, :meth:`LabelHierarchy.cifar10`.

    ``root`` is the python release (``<root>/cifar-10-batches-py/`` or that folder), an
    ImageFolder tree ``<root>/{train,test}/<class>/`` (also one level down), or an archive
    of either, extracted once to ``extract_to``. ``cache_in_memory`` decodes an ImageFolder
    tree once, for faster epochs.

    Examples:
        >>> ds = CIFAR10Hierarchical("../shared/data/cifar10-jpeg.tar.gz")  # doctest: +SKIP
        >>> ds.classes[:3], ds.label_paths.shape  # doctest: +SKIP
        (['airplane', 'automobile', 'bird'], torch.Size([50000, 2]))
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        train: bool = True,
        transform: Callable[[Any], Any] | None = None,
        target_transform: Callable[[Tensor], Any] | None = None,
        download: bool = False,
        cache_in_memory: bool = False,
        extract_to: str | os.PathLike[str] | None = None,
    ) -> None:
        root = Path(root).expanduser()
        if root.is_file():
            root = extract_archive_once(root, extract_to)
        if download:
            import torchvision

            torchvision.datasets.CIFAR10(str(root), train=train, download=True)
        split = "train" if train else "test"
        self.root = root
        self.train = train
        self.data: np.ndarray | None = None
        self.samples: list[tuple[str, int]] = []
        hierarchy = LabelHierarchy.cifar10()
        batches = _find_cifar10_batches(root)
        if batches is not None:
            self.layout = "python"
            classes, targets = self._read_batches(batches, train)
        else:
            tree = _find_split_folder(root, split)
            if tree is None:
                raise FileNotFoundError(
                    f"CIFAR-10 not found under {str(root)!r}: expected the python format "
                    f"{str(root / _CIFAR10_DIR)!r} (data_batch_1..5, test_batch, batches.meta) "
                    f"or an ImageFolder tree {str(root / split / '<class>')!r}/*.jpg. Get "
                    "cifar-10-python.tar.gz from https://www.cs.toronto.edu/~kriz/cifar.html "
                    f"and extract it into {str(root)!r}, or pass download=True when online."
                )
            self.layout = "imagefolder"
            classes, self.samples = scan_image_folder(tree)
            targets = np.array([index for _, index in self.samples], dtype=np.int64)
            if cache_in_memory:
                self.data = np.stack([np.asarray(load_image(path)) for path, _ in self.samples])
        super().__init__(classes, targets, hierarchy, transform, target_transform)

    def _read_batches(self, folder: Path, train: bool) -> tuple[list[str], np.ndarray]:
        names = _CIFAR10_TRAIN if train else _CIFAR10_TEST
        missing = [name for name in [*names, "batches.meta"] if not (folder / name).is_file()]
        if missing:
            raise FileNotFoundError(
                f"CIFAR-10 folder {str(folder)!r} lacks {missing}; re-extract "
                "cifar-10-python.tar.gz or pass download=True when online."
            )
        meta = load_pickle(folder / "batches.meta")
        _require(meta, ["label_names"], folder / "batches.meta")
        images, labels = [], []
        for name in names:
            entry = load_pickle(folder / name)
            _require(entry, ["data", "labels"], folder / name)
            images.append(_to_hwc(entry["data"], folder / name))
            labels.append(np.asarray(entry["labels"], dtype=np.int64))
            if len(labels[-1]) != len(images[-1]):
                raise OSError(
                    f"{str(folder / name)!r}: {len(images[-1])} images but {len(labels[-1])} "
                    "labels; the file is truncated or corrupt."
                )
        self.data = np.concatenate(images)
        return [str(name) for name in meta["label_names"]], np.concatenate(labels)

    def load_sample(self, index: int) -> Image.Image:
        """The PIL image of sample ``index``."""
        if self.data is not None:
            return Image.fromarray(self.data[index])
        return load_image(self.samples[index][0])

    def extra_repr(self) -> str:
        """Root, split and layout."""
        return f"root={str(self.root)!r}, train={self.train}, layout={self.layout!r}"


def _find_cifar10_batches(root: Path) -> Path | None:
    for folder in (root / _CIFAR10_DIR, root):
        if (folder / "batches.meta").is_file():
            return folder
    return None


def _find_split_folder(root: Path, split: str) -> Path | None:
    if (root / split).is_dir():
        return root / split
    if root.is_dir():
        for child in sorted(root.iterdir()):
            if child.is_dir() and (child / split).is_dir():
                return child / split
    return None
