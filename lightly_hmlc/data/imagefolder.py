"""Any ImageFolder tree plus a label hierarchy of any depth."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from torch import Tensor

from lightly_hmlc.data._base import HierarchicalDataset, check_classes_match
from lightly_hmlc.data._io import IMG_EXTENSIONS, load_image, scan_image_folder
from lightly_hmlc.hierarchy import LabelHierarchy

__all__ = ["HierarchicalImageFolder"]


class HierarchicalImageFolder(HierarchicalDataset):
    """An ImageFolder tree ``root/<fine class>/**/<image>`` with a label hierarchy of any depth.

    The sorted folder names are the fine classes and must be leaves of ``hierarchy`` (a
    ``LabelHierarchy`` or a hierarchy file); with ``strict`` every leaf needs a folder. The
    default loader reads images with PIL in ``image_mode``.

    Examples:
        >>> import tempfile, pathlib
        >>> from PIL import Image
        >>> root = pathlib.Path(tempfile.mkdtemp())
        >>> for name in ["cat", "dog", "car"]:
        ...     (root / name).mkdir()
        ...     Image.new("RGB", (8, 8)).save(root / name / "0.png")
        >>> tree = LabelHierarchy.from_nested({"animal": ["cat", "dog"], "vehicle": ["car"]})
        >>> HierarchicalImageFolder(root, tree).label_paths.tolist()
        [[1, 0], [0, 1], [0, 2]]
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        hierarchy: LabelHierarchy | str | os.PathLike[str],
        transform: Callable[[Any], Any] | None = None,
        target_transform: Callable[[Tensor], Any] | None = None,
        loader: Callable[[str], Any] | None = None,
        extensions: Sequence[str] = IMG_EXTENSIONS,
        image_mode: str = "RGB",
        strict: bool = True,
    ) -> None:
        root = Path(root).expanduser()
        if not root.is_dir():
            raise FileNotFoundError(
                f"Image folder {str(root)!r} not found. Pass a folder with one sub-folder per "
                "fine class, e.g. root/cat/001.jpg, root/dog/002.jpg."
            )
        if not isinstance(hierarchy, LabelHierarchy):
            hierarchy = LabelHierarchy.load(hierarchy)
        classes, samples = scan_image_folder(root, extensions)
        check_classes_match(classes, hierarchy, strict=strict, where=str(root), kind="class folder")
        self.root = root
        self.samples = samples
        self.imgs = samples  # torchvision's alias
        self.image_mode = image_mode
        self.loader = loader
        super().__init__(
            classes, [index for _, index in samples], hierarchy, transform, target_transform
        )

    def load_sample(self, index: int) -> Any:
        path = self.samples[index][0]
        if self.loader is None:
            return load_image(path, self.image_mode)
        try:
            return self.loader(path)
        except (OSError, ValueError, SyntaxError) as error:
            raise OSError(f"Cannot read image file {path!r}: {error}.") from error

    def extra_repr(self) -> str:
        """Root folder."""
        return f"root={str(self.root)!r}"
