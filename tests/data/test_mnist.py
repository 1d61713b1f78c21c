import gzip
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from lightly_hmlc.data import MNISTHierarchical
from lightly_hmlc.hierarchy import LabelHierarchy


def _digits(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, 28, 28), dtype=np.uint8), rng.integers(0, 10, n).astype(
        np.uint8
    )


def _idx_bytes(array: np.ndarray) -> bytes:
    header = struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(np.uint8).tobytes()


def write_idx(folder: Path, gz: bool = False) -> dict[str, np.ndarray]:
    folder.mkdir(parents=True, exist_ok=True)
    x_train, y_train = _digits(12, 0)
    x_test, y_test = _digits(5, 1)
    files = {
        "train-images-idx3-ubyte": x_train,
        "train-labels-idx1-ubyte": y_train,
        "t10k-images-idx3-ubyte": x_test,
        "t10k-labels-idx1-ubyte": y_test,
    }
    for name, array in files.items():
        data = _idx_bytes(array)
        if gz:
            (folder / f"{name}.gz").write_bytes(gzip.compress(data))
        else:
            (folder / name).write_bytes(data)
    return {"x_train": x_train, "y_train": y_train, "x_test": x_test, "y_test": y_test}


def test_npz(tmp_path: Path) -> None:
    x, y = _digits(10, 0)
    np.savez(tmp_path / "mnist.npz", x_train=x, y_train=y, x_test=x[:3], y_test=y[:3])
    for source in (tmp_path / "mnist.npz", tmp_path):
        ds = MNISTHierarchical(source)
        assert len(ds) == 10 and ds.targets == y.tolist()
        assert ds.classes == [str(d) for d in range(10)]
        assert torch.equal(
            ds.label_paths, LabelHierarchy.mnist().label_paths(y.astype(int).tolist())
        )
        image, path = ds[4]
        assert image.mode == "RGB" and image.size == (28, 28)
        assert np.array_equal(np.asarray(image)[..., 1], x[4])
        assert torch.equal(path, ds.label_paths[4])
    assert len(MNISTHierarchical(tmp_path / "mnist.npz", train=False)) == 3


@pytest.mark.parametrize("gz", [False, True])
@pytest.mark.parametrize("sub", ["MNIST/raw", "raw", ""])
def test_idx_files(tmp_path: Path, gz: bool, sub: str) -> None:
    arrays = write_idx(tmp_path / sub if sub else tmp_path, gz=gz)
    train = MNISTHierarchical(tmp_path, image_mode="L")
    assert np.array_equal(train.data, arrays["x_train"])
    assert train.targets == arrays["y_train"].tolist()
    image, _ = train[2]
    assert image.mode == "L" and np.array_equal(np.asarray(image), arrays["x_train"][2])
    test = MNISTHierarchical(tmp_path, train=False)
    assert test.targets == arrays["y_test"].tolist()


def test_hierarchy_groups_digits_by_stroke() -> None:
    h = LabelHierarchy.mnist()
    groups = {d: h.parent(str(d)) for d in range(10)}
    assert {d for d, g in groups.items() if g == "loop"} == {0, 6, 8, 9}
    assert {d for d, g in groups.items() if g == "straight"} == {1, 4, 7}
    assert {d for d, g in groups.items() if g == "curve"} == {2, 3, 5}


def test_missing_files_message(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError) as info:
        MNISTHierarchical(tmp_path)
    message = str(info.value)
    assert "mnist.npz" in message and "train-images-idx3-ubyte" in message
    assert "download=True" in message


def test_truncated_idx_file_is_named(tmp_path: Path) -> None:
    write_idx(tmp_path)
    path = tmp_path / "train-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(OSError, match="train-images-idx3-ubyte.*truncated"):
        MNISTHierarchical(tmp_path)


def test_npz_missing_keys(tmp_path: Path) -> None:
    np.savez(tmp_path / "digits.npz", images=np.zeros((2, 28, 28), np.uint8))
    with pytest.raises(OSError, match="x_train"):
        MNISTHierarchical(tmp_path / "digits.npz")


def test_invalid_image_mode(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="image_mode"):
        MNISTHierarchical(tmp_path, image_mode="RGBA")


def test_real_mnist_npz(shared_data_file) -> None:  # type: ignore[no-untyped-def]
    path = shared_data_file("mnist.npz")
    train = MNISTHierarchical(path, train=True)
    test = MNISTHierarchical(path, train=False)
    assert len(train) == 60000 and len(test) == 10000
    assert train.data.shape == (60000, 28, 28) and train.data.dtype == np.uint8
    assert train.label_paths.shape == (60000, 2)
    # Every digit occurs, and the coarse level follows the documented stroke groups.
    counts = np.bincount(test.targets, minlength=10)
    assert (counts > 800).all()
    h = train.hierarchy
    assert h == LabelHierarchy.mnist()
    coarse_names = [h.id_to_name(0, int(c)) for c in train.label_paths[:50, 0]]
    expected = [h.parent(str(d)) for d in train.targets[:50]]
    assert coarse_names == expected
    image, path_ = train[0]
    assert image.mode == "RGB" and image.size == (28, 28)
    assert path_.tolist() == train.label_paths[0].tolist()
