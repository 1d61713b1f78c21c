import io
import os
import pickle
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pytest

from lightly_hmlc.data import extract_archive_once
from lightly_hmlc.data._io import load_pickle, read_idx


def _tar(path: Path, files: dict[str, bytes]) -> None:
    with tarfile.open(path, "w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def test_extract_once_and_again_when_archive_changes(tmp_path: Path) -> None:
    archive = tmp_path / "data.tar.gz"
    _tar(archive, {"data/a.txt": b"one"})
    out = extract_archive_once(archive, tmp_path / "cache")
    assert (out / "data" / "a.txt").read_bytes() == b"one"
    (out / "data" / "a.txt").write_bytes(b"edited")
    extract_archive_once(archive, tmp_path / "cache")
    assert (out / "data" / "a.txt").read_bytes() == b"edited"  # skipped: already extracted
    _tar(archive, {"data/a.txt": b"two!"})
    os.utime(archive, (1, 1))  # a different archive: size or mtime changed
    extract_archive_once(archive, tmp_path / "cache")
    assert (out / "data" / "a.txt").read_bytes() == b"two!"
    assert not list(out.glob(".extract-*"))  # no temporary folder left behind


def test_default_destination_is_the_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LIGHTLY_HMLC_CACHE", str(tmp_path / "cache"))
    archive = tmp_path / "thing.tgz"
    _tar(archive, {"x.txt": b"x"})
    assert extract_archive_once(archive) == tmp_path / "cache" / "thing"
    assert (tmp_path / "cache" / "thing" / "x.txt").is_file()


def test_zip_and_errors(tmp_path: Path) -> None:
    archive = tmp_path / "d.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("d/b.txt", "zip")
    assert (extract_archive_once(archive, tmp_path / "z") / "d" / "b.txt").read_text() == "zip"
    with pytest.raises(FileNotFoundError, match="not found"):
        extract_archive_once(tmp_path / "missing.tar.gz", tmp_path / "m")
    (tmp_path / "plain.tar.gz").write_bytes(b"not an archive")
    with pytest.raises(ValueError, match="not a tar or zip archive"):
        extract_archive_once(tmp_path / "plain.tar.gz", tmp_path / "p")


def test_unsafe_tar_member_is_refused(tmp_path: Path) -> None:
    archive = tmp_path / "evil.tar.gz"
    _tar(archive, {"../escaped.txt": b"x"})
    with pytest.raises(ValueError, match="unsafe member"):
        extract_archive_once(archive, tmp_path / "out")
    assert not (tmp_path / "escaped.txt").exists()


def test_read_idx_bad_header(tmp_path: Path) -> None:
    path = tmp_path / "x-idx1-ubyte"
    path.write_bytes(b"\x01\x02\x03\x04rest")
    with pytest.raises(OSError, match="x-idx1-ubyte.*idx header"):
        read_idx(path)


def test_read_idx_multi_byte_dtype(tmp_path: Path) -> None:
    path = tmp_path / "ints-idx2"
    array = np.arange(6, dtype=">i4").reshape(2, 3)
    path.write_bytes(b"\x00\x00\x0c\x02" + np.array([2, 3], ">u4").tobytes() + array.tobytes())
    assert read_idx(path).tolist() == [[0, 1, 2], [3, 4, 5]]


def test_load_pickle_normalises_keys_and_names(tmp_path: Path) -> None:
    path = tmp_path / "meta"
    path.write_bytes(pickle.dumps({b"label_names": [b"cat", b"dog"], "n": 2}))
    assert load_pickle(path) == {"label_names": ["cat", "dog"], "n": 2}
    path.write_bytes(b"garbage")
    with pytest.raises(OSError, match="Cannot read pickle file"):
        load_pickle(path)
    path.write_bytes(pickle.dumps([1, 2]))
    with pytest.raises(OSError, match="not a dict"):
        load_pickle(path)
