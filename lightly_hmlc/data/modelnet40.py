"""ModelNet40 point clouds (the HDF5 release) with a coarse grouping of the 40 categories."""

from __future__ import annotations

import os
import re
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from lightly_hmlc.data._base import HierarchicalDataset, check_classes_match
from lightly_hmlc.hierarchy import LabelHierarchy
from lightly_hmlc.hierarchy.builtin import MODELNET40_GROUPS

__all__ = ["ModelNet40Hierarchical", "MODELNET40_GROUPS"]

_RELEASE_DIR = "modelnet40_ply_hdf5_2048"


class ModelNet40Hierarchical(HierarchicalDataset):
    """ModelNet40 point clouds from the PointNet HDF5 release, with a coarse level.

    Reads ``ply_data_{split}*.h5`` and ``shape_names.txt`` from ``root`` or
    ``root/modelnet40_ply_hdf5_2048/``. A sample is the first ``num_points`` points of a
    cloud, ``FloatTensor [num_points, 3]``. The default hierarchy groups the categories
    into 6 groups, :data:`MODELNET40_GROUPS`.

    Raises:
        FileNotFoundError: If the files are missing (says what to get and where).
        ValueError: On a bad argument, categories not in the hierarchy, or a corrupt file.

    Examples:
        >>> ds = ModelNet40Hierarchical("/path/to/modelnet40_ply_hdf5_2048")  # doctest: +SKIP
        >>> ds[0][0].shape, ds.hierarchy.num_classes_per_level  # doctest: +SKIP
        (torch.Size([1024, 3]), [6, 40])
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        split: str = "train",
        num_points: int = 1024,
        hierarchy: LabelHierarchy | str | os.PathLike[str] | None = None,
        transform: Callable[[Any], Any] | None = None,
        target_transform: Callable[[Tensor], Any] | None = None,
    ) -> None:
        if split not in ("train", "test"):
            raise ValueError(f"split must be 'train' or 'test', got {split!r}.")
        if isinstance(num_points, bool) or not isinstance(num_points, int) or num_points < 1:
            raise ValueError(f"num_points must be a positive integer, got {num_points!r}.")
        root = Path(root).expanduser()
        folder = root / _RELEASE_DIR if (root / _RELEASE_DIR).is_dir() else root
        files = _split_files(folder, split)
        names_file = folder / "shape_names.txt"
        if not files or not names_file.is_file():
            raise FileNotFoundError(
                f"ModelNet40 ({split}) not found in {str(folder)!r}: expected "
                f"ply_data_{split}*.h5 and shape_names.txt. Get the HDF5 point-cloud release "
                f"modelnet40_ply_hdf5_2048.zip (PointNet) and extract it so that "
                f"{str(root / _RELEASE_DIR)!r} holds these files."
            )
        classes = _read_shape_names(names_file)
        if hierarchy is None:
            hierarchy = self.build_hierarchy()
        elif not isinstance(hierarchy, LabelHierarchy):
            hierarchy = LabelHierarchy.load(hierarchy)
        check_classes_match(
            classes, hierarchy, strict=False, where=str(names_file), kind="category"
        )
        clouds, labels = _read_h5(files, num_points)
        self.root = folder
        self.split = split
        self.num_points = num_points
        self.files = files
        self.data = clouds
        super().__init__(classes, labels, hierarchy, transform, target_transform)

    @staticmethod
    def build_hierarchy() -> LabelHierarchy:
        return LabelHierarchy.modelnet40()

    def load_sample(self, index: int) -> Tensor:
        """The point cloud of sample ``index``, ``FloatTensor [num_points, 3]``."""
        return torch.from_numpy(self.data[index].copy())

    def extra_repr(self) -> str:
        """Root, split and points per cloud."""
        return f"root={str(self.root)!r}, split={self.split!r}, num_points={self.num_points}"


def _split_files(folder: Path, split: str) -> list[Path]:
    if not folder.is_dir():
        return []
    files = list(folder.glob(f"ply_data_{split}*.h5"))

    def number(path: Path) -> int:
        match = re.search(r"(\d+)\.h5$", path.name)
        return int(match.group(1)) if match else -1

    return sorted(files, key=lambda path: (number(path), path.name))


def _read_h5(files: list[Path], num_points: int) -> tuple[np.ndarray, np.ndarray]:
    try:
        import h5py
    except ImportError as error:  # pragma: no cover - h5py is in the benchmarks extra
        raise ImportError(
            "Reading ModelNet40 needs h5py: pip install h5py (or lightly_hmlc[benchmarks])."
        ) from error
    clouds, labels = [], []
    for path in files:
        try:
            with h5py.File(path, "r") as h5:
                missing = [key for key in ("data", "label") if key not in h5]
                if missing:
                    raise OSError(f"{str(path)!r} lacks the dataset(s) {missing}.")
                data = h5["data"]
                if data.ndim != 3 or data.shape[2] != 3:
                    raise OSError(f"{str(path)!r}: 'data' has shape {data.shape}, not (N, P, 3).")
                if data.shape[1] < num_points:
                    raise ValueError(
                        f"num_points={num_points} but {str(path)!r} has only {data.shape[1]} "
                        "points per cloud; lower num_points."
                    )
                cloud = np.asarray(data[:, :num_points], dtype=np.float32)
                if not np.isfinite(cloud).all():
                    bad = int((~np.isfinite(cloud)).any(axis=(1, 2)).sum())
                    raise ValueError(
                        f"{str(path)!r}: {bad} point cloud(s) hold NaN or Inf coordinates "
                        "(in the first num_points points); the file is corrupt. Replace it "
                        "or drop those clouds."
                    )
                clouds.append(cloud)
                labels.append(_integer_labels(np.asarray(h5["label"]).reshape(-1), path))
        except OSError as error:
            if str(path) in str(error):
                raise
            raise OSError(f"Cannot read HDF5 file {str(path)!r}: {error}.") from error
        if len(labels[-1]) != len(clouds[-1]):
            raise OSError(f"{str(path)!r}: {len(clouds[-1])} clouds but {len(labels[-1])} labels.")
    return np.concatenate(clouds), np.concatenate(labels)


def _read_shape_names(path: Path) -> list[str]:
    """The names of ``shape_names.txt``, one a line; a ValueError if one is listed twice."""
    # Lines end at \n, \r\n or \r only (str.splitlines also breaks at \v, \f, \x85...).
    text = path.read_text(encoding="utf-8").replace("\r\n", "\n").replace("\r", "\n")
    names = [name for name in (line.strip() for line in text.split("\n")) if name]
    repeated = sorted(name for name, count in Counter(names).items() if count > 1)
    if repeated:
        raise ValueError(
            f"{str(path)!r} lists {repeated} more than once; label i is the category on "
            "line i, so every name must appear once. Use the release's shape_names.txt."
        )
    return names


def _integer_labels(labels: np.ndarray, path: Path) -> np.ndarray:
    """``labels`` as int64; a ValueError naming the file if any is not a whole number."""
    if labels.dtype.kind in "iu":
        return labels.astype(np.int64)
    if labels.dtype.kind != "f":
        raise ValueError(f"{str(path)!r}: 'label' has dtype {labels.dtype}, not integers.")
    fractional = labels[labels != np.rint(labels)]  # NaN included
    if fractional.size == 0:
        return labels.astype(np.int64)  # whole numbers stored as floats
    raise ValueError(
        f"{str(path)!r}: 'label' holds {fractional.size} value(s) that are not whole "
        f"numbers, e.g. {fractional[:5].tolist()}; labels are category ids. The file is "
        "corrupt or not the ModelNet40 HDF5 release."
    )
