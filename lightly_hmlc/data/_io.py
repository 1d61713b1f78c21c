"""Readers shared by the dataset loaders: image files, pickles, idx files, image folders.

Nothing here downloads anything; every reader raises an error that names the file.
"""

from __future__ import annotations

import codecs
import functools
import gzip
import os
import pickle
import shutil
import struct
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from torchvision.datasets.folder import IMG_EXTENSIONS, find_classes
from torchvision.datasets.mnist import SN3_PASCALVINCENT_TYPEMAP, read_sn3_pascalvincent_tensor

__all__ = ["IMG_EXTENSIONS", "load_image", "load_pickle", "read_idx", "scan_image_folder"]


def load_image(path: str | os.PathLike[str], mode: str = "RGB") -> Image.Image:
    """Opens an image file fully and converts it to ``mode``, naming the file on an error.

    Images of more than 8 bits are rescaled to 8 (PIL would clip them at 255): integers
    within 0..65535 divided by 257, floats within 0..1 times 255, others stretched from
    their minimum and maximum.
    """
    try:
        with Image.open(path) as image:
            if image.mode.startswith(_WIDE_MODES) and not mode.startswith(_WIDE_MODES):
                return _to_8_bits(np.asarray(image)).convert(mode)
            return image.convert(mode)
    except FileNotFoundError:
        raise
    except (OSError, ValueError, SyntaxError) as error:
        raise OSError(
            f"Cannot read image file {str(path)!r}: {error}. Replace or delete the file."
        ) from error


# PIL modes of more than 8 bits per channel: I;16*, I (int32), F.
_WIDE_MODES = ("I", "F")


def _to_8_bits(pixels: np.ndarray) -> Image.Image:
    """A one-channel image of more than 8 bits as mode ``L``, by the rules of load_image."""
    values = pixels.astype(np.float64)
    if not np.isfinite(values).all():
        raise ValueError("the image holds NaN or Inf pixels")
    low, high = (float(values.min()), float(values.max())) if values.size else (0.0, 0.0)
    if pixels.dtype.kind in "iu" and low >= 0 and high <= 65535:
        scaled = values / 257
    elif pixels.dtype.kind == "f" and low >= 0 and high <= 1:
        scaled = values * 255
    elif high > low:
        scaled = (values - low) * (255 / (high - low))
    else:
        scaled = np.zeros_like(values)
    return Image.fromarray(np.clip(np.rint(scaled), 0, 255).astype(np.uint8))  # mode L


def scan_image_folder(
    root: str | os.PathLike[str], extensions: Sequence[str] = IMG_EXTENSIONS
) -> tuple[list[str], list[tuple[str, int]]]:
    """``(classes, [(path, class index)])`` of ``root/<class>/**/<image>``, as torchvision's
    ImageFolder lists them; a symlinked folder is scanned once per class, and never the
    root, a folder above it or another class.
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(
            f"Image folder {str(root)!r} not found. Expected a folder with one sub-folder "
            "per class, e.g. root/cat/001.jpg, root/dog/002.jpg."
        )
    try:
        found_classes, _ = find_classes(root)
    except FileNotFoundError:
        found_classes = []
    # Hidden folders (.ipynb_checkpoints, .DS_Store bundles) are not classes.
    classes = [name for name in found_classes if not name.startswith(".")]
    if not classes:
        raise FileNotFoundError(
            f"Image folder {str(root)!r} has no class sub-folders. Expected one sub-folder "
            "per class, e.g. root/cat/001.jpg, root/dog/002.jpg."
        )
    suffixes = tuple(ext.lower() for ext in extensions)
    class_to_idx = {name: index for index, name in enumerate(classes)}
    # Real folders no class may wander into through a link: the other classes' folders.
    class_folders = {os.path.realpath(os.path.join(root, name)) for name in classes}
    samples = [
        (path, class_to_idx[name])
        for name in classes
        for path in _files_in_folder(os.path.join(root, name), suffixes, root, class_folders)
    ]
    counts = np.bincount([index for _, index in samples], minlength=len(classes))
    empty = [name for name, count in zip(classes, counts, strict=True) if count == 0]
    if empty:
        raise FileNotFoundError(
            f"No image files ({', '.join(suffixes)}) in class folder(s) {empty[:20]} under "
            f"{str(root)!r}. Remove the empty folders or add images."
        )
    return classes, samples


def _files_in_folder(
    folder: str, suffixes: tuple[str, ...], root: Path, class_folders: set[str]
) -> list[str]:
    """The files under ``folder`` ending in ``suffixes``, sorted, links followed as above."""
    root_real = Path(os.path.realpath(root))
    seen = {*class_folders, os.path.realpath(folder)}
    listed: list[tuple[str, list[str]]] = []
    for parent, folders, files in os.walk(folder, followlinks=True):
        # Sorted, so that which of two paths to one real folder is kept is deterministic.
        unseen = []
        for name in sorted(folders):
            real = os.path.realpath(os.path.join(parent, name))
            if real not in seen and not root_real.is_relative_to(real):
                seen.add(real)
                unseen.append(name)
        folders[:] = unseen
        listed.append((parent, files))
    return [
        os.path.join(parent, name)
        for parent, files in sorted(listed)
        for name in sorted(files)
        if name.lower().endswith(suffixes)
    ]


def load_pickle(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Reads a (Python 2 or 3) pickle of a dict, refusing every global but numpy arrays'."""
    try:
        with open(path, "rb") as file:
            raw = _DataUnpickler(file, encoding="bytes").load()
    except FileNotFoundError:
        raise
    except _ForbiddenGlobal as error:
        raise OSError(
            f"Refused to load pickle file {str(path)!r}: it names the global "
            f"{error.name!r}, which a CIFAR python file never holds (only dicts, lists, "
            "numbers, bytes and numpy arrays), and unpickling it could run code. Nothing "
            "from it was imported or run. Use the official release (cifar-10-python.tar.gz "
            "or cifar-100-python.tar.gz from https://www.cs.toronto.edu/~kriz/cifar.html); "
            "for a copy you wrote yourself, store only those types."
        ) from None
    except Exception as error:  # unpickling can raise almost anything on a bad file
        raise OSError(f"Cannot read pickle file {str(path)!r}: {error}.") from error
    if not isinstance(raw, dict):
        raise OSError(f"Pickle file {str(path)!r} holds a {type(raw).__name__}, not a dict.")
    out: dict[str, Any] = {}
    for key, value in raw.items():
        name = key.decode("latin1") if isinstance(key, bytes) else str(key)
        if isinstance(value, list) and value and isinstance(value[0], bytes):
            value = [item.decode("latin1") for item in value]
        out[name] = value
    return out


class _ForbiddenGlobal(pickle.UnpicklingError):
    def __init__(self, name: str) -> None:
        super().__init__(f"global {name!r} is not allowed")
        self.name = name


@functools.cache
def _allowed_pickle_globals() -> dict[tuple[str, str], Any]:
    """The globals of pickled numpy arrays, under ``numpy.core`` and ``numpy._core``."""
    try:
        from numpy._core import multiarray, numeric
    except ImportError:  # pragma: no cover - numpy < 1.26
        from numpy.core import multiarray, numeric  # type: ignore[no-redef]
    allowed: dict[tuple[str, str], Any] = {
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        ("_codecs", "encode"): codecs.encode,
    }
    for core in ("numpy.core", "numpy._core"):
        allowed[(f"{core}.multiarray", "_reconstruct")] = multiarray._reconstruct
        allowed[(f"{core}.multiarray", "scalar")] = multiarray.scalar
        # getattr: numpy's type stubs do not list this private function.
        allowed[(f"{core}.numeric", "_frombuffer")] = getattr(numeric, "_frombuffer")  # noqa: B009
    return allowed


class _DataUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        allowed = _allowed_pickle_globals()
        if (module, name) not in allowed:
            raise _ForbiddenGlobal(f"{module}.{name}")
        return allowed[(module, name)]


def read_idx(path: str | os.PathLike[str]) -> np.ndarray:
    """Reads an idx file (MNIST's raw format), plain or ``.gz``, checking its header and size."""
    path = Path(path)
    if path.suffix != ".gz":
        return _read_plain_idx(path, path)
    # torchvision reads from a path, so a .gz is unpacked to a temporary file first.
    with tempfile.TemporaryDirectory() as tmp:
        plain = Path(tmp) / path.stem
        try:
            with gzip.open(path, "rb") as src, open(plain, "wb") as dst:
                shutil.copyfileobj(src, dst)
        except (OSError, EOFError) as error:
            raise OSError(f"Cannot decompress {str(path)!r}: {error}.") from error
        return _read_plain_idx(plain, path)


def _read_plain_idx(path: Path, shown: Path) -> np.ndarray:
    with open(path, "rb") as file:
        head = file.read(16)
    if len(head) < 4:
        raise OSError(f"{str(shown)!r} is too short to be an idx file.")
    zero, code, ndim = struct.unpack(">HBB", head[:4])
    if zero != 0 or code not in SN3_PASCALVINCENT_TYPEMAP or not 1 <= ndim <= 3:
        raise OSError(
            f"{str(shown)!r} does not start with an idx header of 1 to 3 dimensions (got "
            f"{head[:4]!r})."
        )
    if len(head) < 4 + 4 * ndim:
        raise OSError(f"{str(shown)!r} is too short for its {ndim}-dimensional idx header.")
    shape = struct.unpack(f">{ndim}I", head[4 : 4 + 4 * ndim])
    itemsize = SN3_PASCALVINCENT_TYPEMAP[code].itemsize
    expected = int(np.prod(shape)) * itemsize
    body = path.stat().st_size - 4 - 4 * ndim
    if body != expected:
        raise OSError(
            f"{str(shown)!r}: the header announces shape {shape} ({expected} bytes) but the "
            f"file holds {body} bytes; the file is truncated or corrupt."
        )
    return read_sn3_pascalvincent_tensor(str(path)).numpy()
