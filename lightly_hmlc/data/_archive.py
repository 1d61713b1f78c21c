"""Extracting a dataset archive once, safely, into a cache folder."""

from __future__ import annotations

import contextlib
import os
import shutil
import tarfile
import tempfile
import zipfile
from collections.abc import Iterator
from pathlib import Path

from torchvision.datasets.utils import extract_archive

__all__ = ["default_cache_dir", "extract_archive_once"]


def default_cache_dir() -> Path:
    """``$LIGHTLY_HMLC_CACHE``, else ``$XDG_CACHE_HOME/lightly_hmlc``, or ``~/.cache/...``."""
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

    A marker in ``dest`` (default ``default_cache_dir() / <archive stem>``) records the
    archive's size and time, so a second call returns at once and a changed archive is
    extracted again. Extraction goes through a temporary folder, so an interrupted run
    leaves nothing half-done; members that would land outside ``dest`` are refused.
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
        # zipfile never writes outside ``out``; refuse such a member instead of renaming it.
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
    """Makes tar extraction use the ``"data"`` filter while torchvision (which passes none)
    extracts.
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
