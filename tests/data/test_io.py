import collections
import io
import os
import pickle
import struct
import sys
import tarfile
import zipfile
from pathlib import Path
from typing import Any

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


# The pure-Python pickler, whose per-type dispatch table can be changed (typeshed omits it).
_PurePythonPickler: Any = getattr(pickle, "_Pickler")  # noqa: B009


class _Python2Pickler(_PurePythonPickler):
    """Writes ``bytes`` as Python 2 ``str`` (BINSTRING opcodes), as the CIFAR files do."""

    dispatch = _PurePythonPickler.dispatch.copy()

    def save_python2_str(self, obj: bytes) -> None:
        size = len(obj)
        if size < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([size]) + obj)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", size) + obj)
        self.memoize(obj)

    dispatch[bytes] = save_python2_str


def test_load_pickle_reads_python2_and_python3_cifar_files(tmp_path: Path) -> None:
    data = np.random.default_rng(0).integers(0, 256, (4, 3072), dtype=np.uint8)
    entry = {b"batch_label": b"training batch 1 of 5", b"labels": [3, 1, 4, 1], b"data": data}
    buffer = io.BytesIO()
    _Python2Pickler(buffer, protocol=2).dump(entry)
    # The official files were written by Python 2 with numpy 1: numpy.core, not numpy._core.
    python2 = buffer.getvalue().replace(b"numpy._core.multiarray", b"numpy.core.multiarray")
    assert b"numpy.core.multiarray\n_reconstruct" in python2 and b"_codecs" not in python2
    files = {"python2": python2}
    files.update({f"protocol{p}": pickle.dumps(entry, protocol=p) for p in range(2, 6)})
    for name, raw in files.items():
        (tmp_path / name).write_bytes(raw)
        loaded = load_pickle(tmp_path / name)
        assert loaded["labels"] == [3, 1, 4, 1] and loaded["batch_label"] == entry[b"batch_label"]
        assert loaded["data"].dtype == np.uint8 and np.array_equal(loaded["data"], data), name
    numpy_ints = {b"fine_labels": [np.int64(7), np.uint8(2)]}  # numpy scalars are data too
    (tmp_path / "scalars").write_bytes(pickle.dumps(numpy_ints, protocol=2))
    assert load_pickle(tmp_path / "scalars") == {"fine_labels": [7, 2]}


def test_load_pickle_refuses_other_globals_before_importing_them(tmp_path: Path) -> None:
    path = tmp_path / "meta"
    # A global of a module that is not imported yet (``this`` prints on import): refused
    # without importing it.
    assert "this" not in sys.modules
    path.write_bytes(b"\x80\x02cthis\ns\nq\x00)Rq\x01.")
    with pytest.raises(OSError, match="'this.s'") as info:
        load_pickle(path)
    assert str(path) in str(info.value)
    assert "this" not in sys.modules
    path.write_bytes(pickle.dumps({b"label_names": collections.OrderedDict()}, protocol=2))
    with pytest.raises(OSError, match="'collections.OrderedDict'"):
        load_pickle(path)


def test_symlink_loop_in_a_class_folder_adds_no_sample(tmp_path: Path) -> None:
    from PIL import Image

    from lightly_hmlc.data._io import scan_image_folder

    root = tmp_path / "images"
    for name in ["cat", "dog"]:
        (root / name).mkdir(parents=True)
    for i in range(9):
        Image.new("RGB", (2, 2)).save(root / "cat" / f"{i}.png")
    Image.new("RGB", (2, 2)).save(root / "dog" / "0.png")
    (root / "cat" / "loop").symlink_to(root / "cat", target_is_directory=True)
    classes, samples = scan_image_folder(root)  # torchvision: 369 cat samples
    assert [path for path, index in samples if index == 0] == [
        str(root / "cat" / f"{i}.png") for i in range(9)
    ]
    # A link to images stored elsewhere is followed, once per real folder.
    (tmp_path / "elsewhere").mkdir()
    Image.new("RGB", (2, 2)).save(tmp_path / "elsewhere" / "far.png")
    (root / "dog" / "a").symlink_to(tmp_path / "elsewhere", target_is_directory=True)
    (root / "dog" / "b").symlink_to(tmp_path / "elsewhere", target_is_directory=True)
    classes, samples = scan_image_folder(root)
    dog = [str(root / "dog" / "0.png"), str(root / "dog" / "a" / "far.png")]
    assert classes == ["cat", "dog"] and [path for path, index in samples if index == 1] == dog
    # Links to the dataset root, above it, or to another class's folder add nothing.
    (root / "cat" / "up").symlink_to(root, target_is_directory=True)
    (root / "dog" / "cats").symlink_to(root / "cat", target_is_directory=True)
    (root / "dog" / "disk").symlink_to(tmp_path.parent, target_is_directory=True)
    assert scan_image_folder(root) == (classes, samples)
