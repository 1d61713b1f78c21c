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


# ------------------------------------------------ torchvision's own code (issue 10)
def test_image_extensions_and_scan_order_are_torchvision_s(tmp_path: Path) -> None:
    from PIL import Image
    from torchvision.datasets import ImageFolder
    from torchvision.datasets.folder import IMG_EXTENSIONS as TV_EXTENSIONS

    from lightly_hmlc.data._io import IMG_EXTENSIONS, scan_image_folder

    assert IMG_EXTENSIONS == TV_EXTENSIONS
    for rel in ["cat/b.jpg", "cat/a/x.PNG", "cat/a-b/y.jpg", "dog/1.jpeg", "dog/notes.txt"]:
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        if rel.endswith(".txt"):
            (tmp_path / rel).write_text("not an image")
        else:
            Image.new("RGB", (2, 2)).save(tmp_path / rel, format="PNG")
    (tmp_path / ".ipynb_checkpoints").mkdir()  # hidden: not a class
    classes, samples = scan_image_folder(tmp_path)
    assert classes == ["cat", "dog"]
    # Same files, same order and same class ids as torchvision's ImageFolder (which,
    # unlike us, would count the hidden folder as a class; move it out for the check).
    (tmp_path / ".ipynb_checkpoints").rmdir()
    assert samples == ImageFolder(str(tmp_path)).samples
    assert [Path(p).name for p, _ in samples] == ["b.jpg", "x.PNG", "y.jpg", "1.jpeg"]


def test_only_hidden_folders_is_no_class(tmp_path: Path) -> None:
    from lightly_hmlc.data._io import scan_image_folder

    (tmp_path / ".hidden").mkdir()
    with pytest.raises(FileNotFoundError, match="no class sub-folders"):
        scan_image_folder(tmp_path)


def test_read_idx_gz_matches_plain(tmp_path: Path) -> None:
    import gzip

    header = b"\x00\x00\x08\x03" + np.array([2, 2, 3], ">u4").tobytes()
    data = header + bytes(range(12))
    (tmp_path / "img-idx3-ubyte").write_bytes(data)
    (tmp_path / "img-idx3-ubyte.gz").write_bytes(gzip.compress(data))
    plain = read_idx(tmp_path / "img-idx3-ubyte")
    assert plain.shape == (2, 2, 3) and plain.dtype == np.uint8
    assert np.array_equal(read_idx(tmp_path / "img-idx3-ubyte.gz"), plain)
    (tmp_path / "short-idx3-ubyte.gz").write_bytes(gzip.compress(data[:-1]))
    with pytest.raises(OSError, match=r"short-idx3-ubyte\.gz.*truncated"):
        read_idx(tmp_path / "short-idx3-ubyte.gz")
    (tmp_path / "bad.gz").write_bytes(b"not gzip")
    with pytest.raises(OSError, match=r"Cannot decompress .*bad\.gz"):
        read_idx(tmp_path / "bad.gz")


def test_tar_link_out_of_the_destination_is_refused(tmp_path: Path) -> None:
    import tarfile as tf

    archive = tmp_path / "links.tar.gz"
    with tf.open(archive, "w:gz") as tar:
        info = tf.TarInfo("data/link")
        info.type = tf.SYMTYPE
        info.linkname = "/etc/passwd"
        tar.addfile(info)
    with pytest.raises(ValueError, match="unsafe member"):
        extract_archive_once(archive, tmp_path / "out")
    # The default filter of tarfile is restored afterwards.
    assert tf.TarFile.__dict__["extraction_filter"] is None


def test_archive_with_an_unknown_suffix_says_which_names_work(tmp_path: Path) -> None:
    archive = tmp_path / "data.archive"
    _tar(archive, {"data/a.txt": b"one"})
    with pytest.raises(ValueError, match="whose name ends in its type"):
        extract_archive_once(archive, tmp_path / "out")
