"""File helpers shared by the dataset loaders: archives, image files, pickles, idx files.

Nothing here downloads anything; every reader raises an error that names the file.
"""

from __future__ import annotations

import gzip
import os
import pickle
import shutil
import struct
import tarfile
import tempfile
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

IMG_EXTENSIONS: tuple[str, ...] = (
    ".jpg",
    ".jpeg",
    ".png",
    ".ppm",
    ".bmp",
    ".pgm",
    ".tif",
    ".tiff",
    ".webp",
)

__all__ = [
    "IMG_EXTENSIONS",
    "default_cache_dir",
    "extract_archive_once",
    "load_image",
    "load_pickle",
    "read_idx",
    "scan_image_folder",
]


def default_cache_dir() -> Path:
    """The folder where archives are extracted when no destination is given.

    ``$LIGHTLY_HMLC_CACHE`` if set, else ``$XDG_CACHE_HOME/lightly_hmlc``, else
    ``~/.cache/lightly_hmlc``.

    Examples:
        >>> isinstance(default_cache_dir(), Path)
        True
    """
    env = os.environ.get("LIGHTLY_HMLC_CACHE")
    if env:
        return Path(env)
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg) if xdg else Path.home() / ".cache"
    return base / "lightly_hmlc"


def _archive_stem(archive: Path) -> str:
    name = archive.name
    for suffix in (".tar.gz", ".tgz", ".tar.bz2", ".tar.xz", ".tar", ".zip"):
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return archive.stem


def extract_archive_once(
    archive: str | os.PathLike[str], dest: str | os.PathLike[str] | None = None
) -> Path:
    """Extracts a ``.tar(.gz|.bz2|.xz)``, ``.tgz`` or ``.zip`` archive once and reuses it.

    The archive's members land in ``dest``; a marker file records the archive's size and
    modification time, so a second call returns at once, and a changed archive is
    extracted again. Extraction goes through a temporary folder next to ``dest`` and is
    then moved in, so an interrupted run never leaves a half-extracted tree behind a
    marker, and parallel test workers do not trip over each other.

    Args:
        archive: The archive file.
        dest: Folder to extract into. Defaults to ``default_cache_dir() / <archive stem>``.

    Returns:
        The folder ``dest``, holding the archive's top-level members.

    Raises:
        FileNotFoundError: If the archive does not exist.
        ValueError: If the file is not a supported archive.

    Examples:
        >>> import tarfile, tempfile, pathlib, io
        >>> tmp = pathlib.Path(tempfile.mkdtemp())
        >>> with tarfile.open(tmp / "a.tar.gz", "w:gz") as tar:
        ...     info = tarfile.TarInfo("a/hello.txt"); data = b"hi"; info.size = len(data)
        ...     tar.addfile(info, io.BytesIO(data))
        >>> out = extract_archive_once(tmp / "a.tar.gz", tmp / "out")
        >>> (out / "a" / "hello.txt").read_text()
        'hi'
        >>> extract_archive_once(tmp / "a.tar.gz", tmp / "out") == out
        True
    """
    archive = Path(archive)
    if not archive.is_file():
        raise FileNotFoundError(f"Archive {str(archive)!r} not found.")
    dest = Path(dest) if dest is not None else default_cache_dir() / _archive_stem(archive)
    stat = archive.stat()
    stamp = f"{archive.resolve()}\n{stat.st_size}\n{int(stat.st_mtime)}\n"
    marker = dest / f".extracted-{archive.name}"
    if marker.is_file() and marker.read_text(encoding="utf-8") == stamp:
        return dest
    dest.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".extract-", dir=dest))
    try:
        _unpack(archive, tmp)
        if marker.is_file() and marker.read_text(encoding="utf-8") == stamp:
            return dest  # another process finished the same extraction meanwhile
        for member in sorted(tmp.iterdir()):
            target = dest / member.name
            if target.exists():
                # A previous (possibly different) extraction: replace it.
                if target.is_dir() and not target.is_symlink():
                    shutil.rmtree(target)
                else:
                    target.unlink()
            os.replace(member, target)
        marker.write_text(stamp, encoding="utf-8")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dest


def _unpack(archive: Path, out: Path) -> None:
    if zipfile.is_zipfile(archive):
        with zipfile.ZipFile(archive) as zf:
            for name in zf.namelist():
                resolved = (out / name).resolve()
                if not resolved.is_relative_to(out.resolve()):
                    raise ValueError(f"Archive {str(archive)!r} has an unsafe member {name!r}.")
            zf.extractall(out)
        return
    try:
        tar = tarfile.open(archive)
    except tarfile.TarError as error:
        raise ValueError(
            f"{str(archive)!r} is not a tar or zip archive ({error}); give a .tar.gz, .tgz, "
            ".tar or .zip file."
        ) from error
    with tar:
        if hasattr(tarfile, "data_filter"):
            try:
                tar.extractall(out, filter="data")
            except tarfile.FilterError as error:
                raise ValueError(
                    f"Archive {str(archive)!r} has an unsafe member ({error}); not extracted."
                ) from error
        else:  # pragma: no cover - Python < 3.10.12 without extraction filters
            for member in tar.getmembers():
                resolved = (out / member.name).resolve()
                if not resolved.is_relative_to(out.resolve()) or member.issym() or member.islnk():
                    raise ValueError(
                        f"Archive {str(archive)!r} has an unsafe member {member.name!r}."
                    )
            tar.extractall(out)


def load_image(path: str | os.PathLike[str], mode: str = "RGB") -> Image.Image:
    """Opens an image file fully and converts it to ``mode``.

    Raises:
        OSError: Naming the file when PIL cannot read it (corrupt or not an image).
    """
    try:
        with Image.open(path) as image:
            return image.convert(mode)
    except FileNotFoundError:
        raise
    except (OSError, ValueError, SyntaxError) as error:
        raise OSError(
            f"Cannot read image file {str(path)!r}: {error}. Replace or delete the file."
        ) from error


def scan_image_folder(
    root: str | os.PathLike[str], extensions: Sequence[str] = IMG_EXTENSIONS
) -> tuple[list[str], list[tuple[str, int]]]:
    """Lists an ImageFolder tree ``root/<class>/**/<image>``.

    Classes are the sub-folders of ``root`` in sorted order (as in torchvision);
    images are found recursively, in sorted path order, and matched by extension
    (case-insensitive).

    Returns:
        ``(classes, samples)`` with ``samples`` a list of ``(path, class index)``.

    Raises:
        FileNotFoundError: If ``root`` is not a folder, has no class folders, or a class
            folder holds no image.
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(
            f"Image folder {str(root)!r} not found. Expected a folder with one sub-folder "
            "per class, e.g. root/cat/001.jpg, root/dog/002.jpg."
        )
    classes = sorted(entry.name for entry in os.scandir(root) if entry.is_dir())
    classes = [name for name in classes if not name.startswith(".")]
    if not classes:
        raise FileNotFoundError(
            f"Image folder {str(root)!r} has no class sub-folders. Expected one sub-folder "
            "per class, e.g. root/cat/001.jpg, root/dog/002.jpg."
        )
    suffixes = tuple(ext.lower() for ext in extensions)
    samples: list[tuple[str, int]] = []
    empty: list[str] = []
    for index, name in enumerate(classes):
        found: list[str] = []
        for dirpath, dirnames, filenames in os.walk(root / name, followlinks=True):
            dirnames.sort()
            for filename in sorted(filenames):
                if filename.lower().endswith(suffixes):
                    found.append(os.path.join(dirpath, filename))
        if not found:
            empty.append(name)
        samples.extend((path, index) for path in found)
    if empty:
        raise FileNotFoundError(
            f"No image files ({', '.join(suffixes)}) in class folder(s) {empty[:20]} under "
            f"{str(root)!r}. Remove the empty folders or add images."
        )
    return classes, samples


def load_pickle(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Reads a (Python 2 or 3) pickle of a dict; bytes keys and names become ``str``.

    The official CIFAR files are Python 2 pickles; read with ``encoding="bytes"``
    their keys are ``b"data"``, ``b"labels"``, ... Both spellings are accepted.
    """
    try:
        with open(path, "rb") as file:
            raw = pickle.load(file, encoding="bytes")
    except FileNotFoundError:
        raise
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


_IDX_DTYPES: dict[int, np.dtype[Any]] = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}


def read_idx(path: str | os.PathLike[str]) -> np.ndarray:
    """Reads an idx file (the MNIST raw format), optionally gzip-compressed.

    Raises:
        OSError: Naming the file if its header is not a valid idx header.

    Examples:
        >>> import tempfile, pathlib, struct
        >>> f = pathlib.Path(tempfile.mkdtemp()) / "labels-idx1-ubyte"
        >>> _ = f.write_bytes(struct.pack(">HBBI", 0, 8, 1, 3) + bytes([7, 1, 4]))
        >>> read_idx(f).tolist()
        [7, 1, 4]
    """
    path = Path(path)
    opener: Any = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as file:
        data = file.read()
    if len(data) < 4:
        raise OSError(f"{str(path)!r} is too short to be an idx file.")
    zero, code, ndim = struct.unpack(">HBB", data[:4])
    if zero != 0 or code not in _IDX_DTYPES or ndim < 1:
        raise OSError(f"{str(path)!r} does not start with an idx header (got {data[:4]!r}).")
    shape = struct.unpack(f">{ndim}I", data[4 : 4 + 4 * ndim])
    dtype = _IDX_DTYPES[code]
    expected = int(np.prod(shape)) * dtype.itemsize
    body = data[4 + 4 * ndim :]
    if len(body) != expected:
        raise OSError(
            f"{str(path)!r}: the header announces shape {shape} ({expected} bytes) but the "
            f"file holds {len(body)} bytes; the file is truncated or corrupt."
        )
    array = np.frombuffer(body, dtype=dtype).reshape(shape)
    return array.astype(dtype.newbyteorder("="))
