"""File helpers shared by the dataset loaders: archives, image files, pickles, idx files.

Nothing here downloads anything; every reader raises an error that names the file.
"""

from __future__ import annotations

import codecs
import contextlib
import functools
import gzip
import os
import pickle
import shutil
import struct
import tarfile
import tempfile
import zipfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from torchvision.datasets.folder import IMG_EXTENSIONS, find_classes
from torchvision.datasets.mnist import SN3_PASCALVINCENT_TYPEMAP, read_sn3_pascalvincent_tensor
from torchvision.datasets.utils import extract_archive

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
    # torchvision's extract_archive does the extraction (it picks the opener by suffix).
    if zipfile.is_zipfile(archive):
        # zipfile itself never writes outside ``out``; refuse such a member instead of
        # silently renaming it.
        with zipfile.ZipFile(archive) as zf:
            for name in zf.namelist():
                if not (out / name).resolve().is_relative_to(out.resolve()):
                    raise ValueError(f"Archive {str(archive)!r} has an unsafe member {name!r}.")
    elif not tarfile.is_tarfile(archive):
        raise ValueError(
            f"{str(archive)!r} is not a tar or zip archive; give a .tar.gz, .tgz, .tar or "
            ".zip file."
        )
    elif not hasattr(tarfile, "data_filter"):  # pragma: no cover - Python < 3.10.12
        _check_tar_members(archive, out)
    try:
        with _tar_data_filter():
            extract_archive(archive, out)
    except tarfile.FilterError as error:
        raise ValueError(
            f"Archive {str(archive)!r} has an unsafe member ({error}); not extracted."
        ) from error
    except (RuntimeError, OSError, tarfile.TarError, zipfile.BadZipFile) as error:
        raise ValueError(
            f"Could not extract {str(archive)!r} ({error}); give a .tar.gz, .tgz, .tar.bz2, "
            ".tar.xz, .tar or .zip file whose name ends in its type."
        ) from error


@contextlib.contextmanager
def _tar_data_filter() -> Iterator[None]:
    """Makes tar extraction use the ``"data"`` filter while torchvision extracts.

    torchvision calls ``extractall`` without a filter, which before Python 3.14 trusts
    ``../`` paths and links (and warns on 3.12+). The class attribute is Python's
    documented way to set the default filter; it is restored afterwards. Checking the
    members in a pass of our own instead would read a .tar.gz twice (+5 s for CIFAR-10).
    """
    if not hasattr(tarfile, "data_filter"):  # pragma: no cover - checked before
        yield
        return
    missing = object()
    previous = tarfile.TarFile.__dict__.get("extraction_filter", missing)
    tarfile.TarFile.extraction_filter = staticmethod(tarfile.data_filter)  # type: ignore[assignment]
    try:
        yield
    finally:
        if previous is missing:
            del tarfile.TarFile.extraction_filter
        else:
            tarfile.TarFile.extraction_filter = previous  # type: ignore[assignment]


def _check_tar_members(archive: Path, out: Path) -> None:  # pragma: no cover - old Python
    with tarfile.open(archive) as tar:
        for member in tar.getmembers():
            resolved = (out / member.name).resolve()
            if not resolved.is_relative_to(out.resolve()) or member.issym() or member.islnk():
                raise ValueError(f"Archive {str(archive)!r} has an unsafe member {member.name!r}.")


def load_image(path: str | os.PathLike[str], mode: str = "RGB") -> Image.Image:
    """Opens an image file fully and converts it to ``mode``.

    Images of more than 8 bits per pixel (PIL modes ``I;16*``, ``I`` and ``F``: 16-bit
    PNG, TIFF and PGM files, 32-bit integer and float TIFFs) are rescaled to 8 bits
    first when ``mode`` is an 8-bit mode such as ``"RGB"`` or ``"L"``; PIL's own
    conversion clips them at 255, which turns a 16-bit photo almost all white. The
    rescaling is fixed per file, so the same file always gives the same pixels:

    - integer pixels within 0..65535 (every 16-bit file) are divided by 257 and rounded,
      which maps 0..65535 onto 0..255 (an 8-bit value ``v`` stored as ``257 v`` comes
      back as ``v``);
    - float pixels within 0..1 are multiplied by 255 and rounded;
    - other images (negative or larger values) are stretched from their own minimum and
      maximum to 0..255 (a constant image becomes 0).

    Raises:
        OSError: Naming the file when PIL cannot read it (corrupt or not an image), or a
            float image holds NaN or Inf.

    Examples:
        >>> import tempfile, pathlib, numpy as np
        >>> f = pathlib.Path(tempfile.mkdtemp()) / "depth.png"
        >>> Image.fromarray(np.array([[0, 257, 65535]], dtype=np.uint16)).save(f)
        >>> np.asarray(load_image(f, "L")).tolist()
        [[0, 1, 255]]
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


# PIL's modes of more than 8 bits per channel: I;16 (and its byte orders), I (int32), F.
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
    """Lists an ImageFolder tree ``root/<class>/**/<image>``.

    Classes are the sub-folders of ``root`` in sorted order (as in torchvision);
    images are found recursively, in sorted path order, and matched by extension
    (case-insensitive): the samples and their order are torchvision's ``ImageFolder``'s.
    Symlinked folders are followed (a class folder may link to images stored elsewhere),
    but each real folder is scanned once per class, and never the dataset root, a folder
    above it or another class's folder: a link back to a folder already scanned, such as
    a loop to a parent, adds no sample (torchvision follows it until the path is too
    long, listing the same images dozens of times).

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
    """The files under ``folder`` ending in one of ``suffixes`` (lower case), in sorted
    path order; symlinked folders are followed into each real folder once, but never
    into ``root``, a folder above it, or one of ``class_folders``."""
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
    """Reads a (Python 2 or 3) pickle of a dict; bytes keys and names become ``str``.

    The official CIFAR files are Python 2 pickles; read with ``encoding="bytes"``
    their keys are ``b"data"``, ``b"labels"``, ... Both spellings are accepted.

    Unpickling can run any code a file names, so only what CIFAR's python files need is
    allowed: dicts, lists, numbers, strings, bytes and numpy arrays (numpy's array
    reconstruction functions, ``ndarray``, ``dtype``, numpy scalars, and
    ``_codecs.encode``, which Python 3 uses for bytes in protocol 2). A file that names
    any other global is refused before that global is imported or called.

    Raises:
        OSError: Naming the file if it is not a pickle of a dict, or names a global
            outside that list (naming the global).

    Examples:
        >>> import pickle, tempfile, pathlib
        >>> f = pathlib.Path(tempfile.mkdtemp()) / "batches.meta"
        >>> _ = f.write_bytes(pickle.dumps({b"label_names": [b"cat", b"dog"]}, protocol=2))
        >>> load_pickle(f)
        {'label_names': ['cat', 'dog']}
    """
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
    """The globals that numpy arrays (and bytes under protocol 2) are pickled with.

    numpy 2 moved ``numpy.core`` to ``numpy._core``; pickles name either, whatever numpy
    wrote them, so both spellings map to the installed numpy's functions.
    """
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
    """An unpickler that resolves only :func:`_allowed_pickle_globals`."""

    def find_class(self, module: str, name: str) -> Any:
        allowed = _allowed_pickle_globals()
        if (module, name) not in allowed:
            raise _ForbiddenGlobal(f"{module}.{name}")
        return allowed[(module, name)]


def read_idx(path: str | os.PathLike[str]) -> np.ndarray:
    """Reads an idx file (the MNIST raw format), optionally gzip-compressed.

    The parse is torchvision's ``read_sn3_pascalvincent_tensor``; this function adds
    gzip support and checks the header and the size first, so that a bad file gives an
    error naming it (torchvision only asserts).

    Raises:
        OSError: Naming the file if its header is not a valid idx header or its size
            does not match the header (a truncated download).

    Examples:
        >>> import tempfile, pathlib, struct
        >>> f = pathlib.Path(tempfile.mkdtemp()) / "labels-idx1-ubyte"
        >>> _ = f.write_bytes(struct.pack(">HBBI", 0, 8, 1, 3) + bytes([7, 1, 4]))
        >>> read_idx(f).tolist()
        [7, 1, 4]
    """
    path = Path(path)
    if path.suffix != ".gz":
        return _read_plain_idx(path, path)
    # torchvision opens the path itself, so a compressed file is unpacked to a temporary
    # file first (MNIST's largest file is 47 MB).
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
