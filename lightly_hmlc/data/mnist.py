"""MNIST with digits grouped by stroke shape."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from torch import Tensor

from lightly_hmlc.data._base import HierarchicalDataset
from lightly_hmlc.data._io import read_idx
from lightly_hmlc.hierarchy import LabelHierarchy

__all__ = ["MNISTHierarchical"]

_IDX_NAMES = {
    True: ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    False: ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


class MNISTHierarchical(HierarchicalDataset):
    """MNIST with digits grouped by stroke shape, :meth:`LabelHierarchy.mnist`.

    Class names are ``"0"`` .. ``"9"``, so the class index is the digit. Reads an ``.npz``
    (``x_train``, ``y_train``, ``x_test``, ``y_test``), given or as ``<root>/mnist.npz``,
    else the idx files in ``<root>/MNIST/raw/``, ``<root>/raw/`` or ``<root>/``.

    Examples:
        >>> import tempfile, pathlib
        >>> f = pathlib.Path(tempfile.mkdtemp()) / "mnist.npz"
        >>> x, y = np.zeros((4, 28, 28), np.uint8), np.array([0, 1, 2, 3])
        >>> np.savez(f, x_train=x, y_train=y, x_test=x[:2], y_test=y[:2])
        >>> MNISTHierarchical(f)[1][1].tolist()
        [2, 1]
    """

    def __init__(
        self,
        root_or_file: str | os.PathLike[str],
        train: bool = True,
        transform: Callable[[Any], Any] | None = None,
        target_transform: Callable[[Tensor], Any] | None = None,
        image_mode: str = "RGB",
    ) -> None:
        if image_mode not in ("RGB", "L"):
            raise ValueError(
                f"image_mode must be 'RGB' (3 channels, for timm backbones) or 'L' (grey), "
                f"got {image_mode!r}."
            )
        source = Path(root_or_file).expanduser()
        self.source = source
        self.train = train
        self.image_mode = image_mode
        images, labels = _read_mnist(source, train)
        if images.ndim != 3 or images.dtype != np.uint8:
            raise OSError(
                f"MNIST images from {str(source)!r} have shape {images.shape} and dtype "
                f"{images.dtype}; expected uint8 [N, H, W]."
            )
        labels = np.asarray(labels).astype(np.int64).reshape(-1)
        if len(labels) != len(images):
            raise OSError(
                f"MNIST from {str(source)!r}: {len(images)} images but {len(labels)} labels."
            )
        self.data = np.ascontiguousarray(images)
        hierarchy = LabelHierarchy.mnist()
        super().__init__(
            [str(d) for d in range(10)], labels, hierarchy, transform, target_transform
        )

    def load_sample(self, index: int) -> Image.Image:
        """The PIL image of sample ``index`` in ``image_mode``."""
        image = Image.fromarray(self.data[index])
        return image.convert("RGB") if self.image_mode == "RGB" else image

    def extra_repr(self) -> str:
        """Source and split."""
        return f"source={str(self.source)!r}, train={self.train}, image_mode={self.image_mode!r}"


def _read_mnist(source: Path, train: bool) -> tuple[np.ndarray, np.ndarray]:
    split = "train" if train else "test"
    if source.is_file():
        if source.suffix != ".npz":
            raise ValueError(
                f"{str(source)!r} is a file but not an .npz archive: pass the .npz file or "
                "the folder holding the idx files."
            )
        return _read_npz(source, split)
    if (source / "mnist.npz").is_file():
        return _read_npz(source / "mnist.npz", split)
    image_name, label_name = _IDX_NAMES[train]
    searched = [source / "MNIST" / "raw", source / "raw", source]
    for folder in searched:
        for suffix in ("", ".gz"):
            image_file = folder / (image_name + suffix)
            label_file = folder / (label_name + suffix)
            if image_file.is_file() and label_file.is_file():
                return read_idx(image_file), read_idx(label_file)
    raise FileNotFoundError(
        f"MNIST ({split}) not found: no {str(source / 'mnist.npz')!r} and no "
        f"{image_name}[.gz] + {label_name}[.gz] in any of "
        f"{[str(folder) for folder in searched]}. Pass the path of an mnist.npz "
        "(keys x_train, y_train, x_test, y_test) or of a folder with the idx files; "
        "torchvision.datasets.MNIST(root, download=True) fetches the idx files into "
        "<root>/MNIST/raw when online."
    )


def _read_npz(path: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    with np.load(path, allow_pickle=False) as archive:
        keys = (f"x_{split}", f"y_{split}")
        missing = [key for key in keys if key not in archive.files]
        if missing:
            raise OSError(
                f"{str(path)!r} lacks {missing} (has {archive.files}); expected the keys "
                "x_train, y_train, x_test, y_test."
            )
        return archive[keys[0]], archive[keys[1]]
