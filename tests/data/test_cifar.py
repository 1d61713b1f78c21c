import os
import pickle
import re
import tarfile
from pathlib import Path
from typing import cast

import numpy as np
import pytest
import torch
from PIL import Image

from lightly_hmlc.data import CIFAR10Hierarchical, CIFAR100Hierarchical
from lightly_hmlc.hierarchy import LabelHierarchy

C100 = LabelHierarchy.cifar100()
C10_NAMES = [
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
]


def _images(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)


def _flat(images: np.ndarray) -> np.ndarray:
    """uint8 [N, 32, 32, 3] -> the official row layout [N, 3072] (R, G, B planes)."""
    return images.transpose(0, 3, 1, 2).reshape(len(images), -1)


def _dump(path: Path, obj: dict) -> None:
    with open(path, "wb") as file:
        pickle.dump(obj, file)


def write_cifar100(root: Path, fine: list[int], seed: int = 0, corrupt: bool = False) -> np.ndarray:
    """Writes cifar-100-python/{train,test,meta} as the official release (bytes keys)."""
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True)
    fine_names = C100.leaves  # the official fine_label_names are sorted
    coarse_names = C100.level_names(0)
    coarse = [coarse_names.index(cast(str, C100.parent(fine_names[f]))) for f in fine]
    if corrupt:
        coarse[0] = (coarse[0] + 1) % 20
    _dump(
        folder / "meta",
        {
            b"fine_label_names": [n.encode() for n in fine_names],
            b"coarse_label_names": [n.encode() for n in coarse_names],
        },
    )
    images = _images(len(fine), seed)
    for split in ("train", "test"):
        _dump(
            folder / split,
            {
                b"filenames": [f"img_{i}.png".encode() for i in range(len(fine))],
                b"batch_label": split.encode(),
                b"fine_labels": list(fine),
                b"coarse_labels": coarse,
                b"data": _flat(images),
            },
        )
    return images


def test_cifar100_reads_both_labels(tmp_path: Path) -> None:
    fine = [19, 29, 0, 11, 1, 86, 90, 28, 23, 31]  # cattle, dinosaur, apple, boy, ...
    images = write_cifar100(tmp_path, fine)
    ds = CIFAR100Hierarchical(tmp_path, train=True)
    assert len(ds) == 10
    assert ds.classes == C100.leaves
    assert ds.hierarchy == C100
    # Label path ids equal the files' fine_labels and coarse_labels.
    assert ds.label_paths[:, 1].tolist() == fine
    assert ds.label_paths[:, 0].tolist() == ds.coarse_targets
    image, path = ds[0]
    assert isinstance(image, Image.Image) and image.size == (32, 32)
    assert np.array_equal(np.asarray(image), images[0])
    assert path.tolist() == [ds.coarse_targets[0], 19]
    assert C100.id_to_name(0, int(path[0])) == "large_omnivores_and_herbivores"
    assert len(CIFAR100Hierarchical(tmp_path, train=False)) == 10


def test_cifar100_root_may_be_the_release_folder(tmp_path: Path) -> None:
    write_cifar100(tmp_path, [0, 1])
    assert len(CIFAR100Hierarchical(tmp_path / "cifar-100-python")) == 2


def test_cifar100_disagreeing_coarse_labels_raise(tmp_path: Path) -> None:
    write_cifar100(tmp_path, [19, 29, 0], corrupt=True)
    with pytest.raises(
        ValueError,
        match=r"'cattle' under 'medium_mammals' \(official: 'large_omnivores_and_herbivores'\)",
    ) as info:
        CIFAR100Hierarchical(tmp_path)
    assert "disagree with the official CIFAR-100 superclasses" in str(info.value)


def test_cifar100_fine_class_with_two_coarse_labels_raises(tmp_path: Path) -> None:
    folder = tmp_path / "cifar-100-python"
    write_cifar100(tmp_path, [0, 0])
    entry = pickle.loads((folder / "train").read_bytes())
    entry[b"coarse_labels"] = [4, 5]  # apple under two superclasses
    _dump(folder / "train", entry)
    with pytest.raises(ValueError, match="'apple' under both"):
        CIFAR100Hierarchical(tmp_path)


def test_cifar100_non_official_names_raise(tmp_path: Path) -> None:
    write_cifar100(tmp_path, [0])
    meta_path = tmp_path / "cifar-100-python" / "meta"
    meta = pickle.loads(meta_path.read_bytes())
    meta[b"fine_label_names"][0] = b"apples"
    _dump(meta_path, meta)
    with pytest.raises(ValueError, match="apples"):
        CIFAR100Hierarchical(tmp_path)


def test_cifar100_missing_folder_message(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError) as info:
        CIFAR100Hierarchical(tmp_path / "nowhere")
    message = str(info.value)
    assert "CIFAR-100 python version" in message
    assert str(tmp_path / "nowhere" / "cifar-100-python") in message
    assert "download=True" in message


def test_cifar100_download_uses_torchvision(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import torchvision

    calls = []

    def fake_cifar100(root: str, train: bool, download: bool) -> None:
        calls.append((root, train, download))
        write_cifar100(Path(root), [3, 4])

    monkeypatch.setattr(torchvision.datasets, "CIFAR100", fake_cifar100)
    ds = CIFAR100Hierarchical(tmp_path, download=True)
    assert calls == [(str(tmp_path), True, True)]
    assert len(ds) == 2
    # Without download=True nothing is fetched.
    calls.clear()
    CIFAR100Hierarchical(tmp_path)
    assert calls == []


def write_cifar10_batches(root: Path, per_batch: int = 3) -> tuple[np.ndarray, list[int]]:
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    _dump(folder / "batches.meta", {b"label_names": [n.encode() for n in C10_NAMES]})
    all_images, all_labels = [], []
    for i, name in enumerate([f"data_batch_{k}" for k in range(1, 6)] + ["test_batch"]):
        images = _images(per_batch, seed=i)
        labels = [(i * per_batch + j) % 10 for j in range(per_batch)]
        _dump(folder / name, {b"data": _flat(images), b"labels": labels})
        if name != "test_batch":
            all_images.append(images)
            all_labels.extend(labels)
    return np.concatenate(all_images), all_labels


def test_cifar10_python_batches(tmp_path: Path) -> None:
    images, labels = write_cifar10_batches(tmp_path)
    ds = CIFAR10Hierarchical(tmp_path)
    assert ds.layout == "python"
    assert len(ds) == 15 and ds.targets == labels
    assert ds.classes == C10_NAMES
    assert torch.equal(ds.label_paths, LabelHierarchy.cifar10().label_paths(labels))
    assert np.array_equal(np.asarray(ds[7][0]), images[7])
    assert len(CIFAR10Hierarchical(tmp_path, train=False)) == 3


def write_cifar10_tree(root: Path, per_class: int = 2, ext: str = ".jpg") -> None:
    for split in ("train", "test"):
        for c, name in enumerate(C10_NAMES):
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(per_class):
                Image.new("RGB", (32, 32), (c * 20, i * 50, 0)).save(folder / f"{i:04d}{ext}")


def test_cifar10_imagefolder_tree(tmp_path: Path) -> None:
    write_cifar10_tree(tmp_path / "cifar10-jpeg", ext=".png")
    for root in (tmp_path, tmp_path / "cifar10-jpeg"):  # found one level down, too
        ds = CIFAR10Hierarchical(root)
        assert ds.layout == "imagefolder"
        assert len(ds) == 20 and ds.classes == C10_NAMES
        image, path = ds[5]  # class 2 = bird, an animal
        assert path.tolist() == [0, 2]
        assert np.asarray(image)[0, 0].tolist() == [40, 50, 0]
    cached = CIFAR10Hierarchical(tmp_path, train=False, cache_in_memory=True)
    assert cached.data is not None and cached.data.shape == (20, 32, 32, 3)
    lazy = CIFAR10Hierarchical(tmp_path, train=False)
    assert all(np.array_equal(np.asarray(cached[i][0]), np.asarray(lazy[i][0])) for i in range(20))


def test_cifar10_from_archive_is_extracted_once(tmp_path: Path) -> None:
    write_cifar10_tree(tmp_path / "src" / "cifar10-jpeg", per_class=1)
    archive = tmp_path / "cifar10-jpeg.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(tmp_path / "src" / "cifar10-jpeg", arcname="cifar10-jpeg")
    cache = tmp_path / "cache"
    ds = CIFAR10Hierarchical(archive, extract_to=cache)
    assert len(ds) == 10 and ds.layout == "imagefolder"
    marker = next(cache.glob(".extracted-*"))
    first = marker.stat().st_mtime_ns
    sentinel = cache / "cifar10-jpeg" / "untouched"
    sentinel.write_text("x")
    ds = CIFAR10Hierarchical(archive, train=False, extract_to=cache)
    assert len(ds) == 10
    assert marker.stat().st_mtime_ns == first and sentinel.exists()  # not re-extracted


def test_cifar10_missing_message(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError) as info:
        CIFAR10Hierarchical(tmp_path)
    message = str(info.value)
    assert "cifar-10-batches-py" in message and "train" in message
    assert "download=True" in message


def test_cifar10_with_lightly_transform(tmp_path: Path) -> None:
    from lightly.transforms import SimCLRTransform
    from torch.utils.data import DataLoader

    write_cifar10_batches(tmp_path, per_batch=2)
    ds = CIFAR10Hierarchical(tmp_path, transform=SimCLRTransform(input_size=32))
    views, paths = next(iter(DataLoader(ds, batch_size=5)))
    assert len(views) == 2 and views[1].shape == (5, 3, 32, 32)
    assert paths.shape == (5, 2)


class _RunsCommand:
    """Unpickles by calling ``function(argument)``: what a malicious file can do."""

    def __init__(self, function: object, argument: str) -> None:
        self.function, self.argument = function, argument

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return self.function, (self.argument,)


@pytest.mark.parametrize("via", ["os.system", "builtins.exec"])
@pytest.mark.parametrize("protocol", [2, pickle.HIGHEST_PROTOCOL])
def test_cifar10_meta_that_runs_code_is_refused(tmp_path: Path, via: str, protocol: int) -> None:
    write_cifar10_batches(tmp_path)
    marker = tmp_path / "MARKER"
    payload = (
        _RunsCommand(os.system, f"touch {marker}")
        if via == "os.system"
        else _RunsCommand(exec, f"open({str(marker)!r}, 'w').close()")
    )
    meta = tmp_path / "cifar-10-batches-py" / "batches.meta"
    meta.write_bytes(pickle.dumps({b"label_names": payload}, protocol=protocol))
    with pytest.raises(OSError) as info:
        CIFAR10Hierarchical(tmp_path)
    assert not marker.exists()
    message = str(info.value)
    # The global as the file names it (protocol 2 spells builtins as Python 2's __builtin__).
    forbidden = r"'posix\.system'" if via == "os.system" else r"'(__builtin__|builtins)\.exec'"
    assert str(meta) in message and re.search(forbidden, message)
    assert "cifar-10-python.tar.gz" in message  # the fix


def test_cifar100_batch_that_runs_code_is_refused(tmp_path: Path) -> None:
    write_cifar100(tmp_path, [0, 1])
    marker = tmp_path / "MARKER"
    train = tmp_path / "cifar-100-python" / "train"
    entry = pickle.loads(train.read_bytes())
    entry[b"fine_labels"] = _RunsCommand(os.system, f"touch {marker}")
    train.write_bytes(pickle.dumps(entry, protocol=2))
    with pytest.raises(OSError, match="posix.system"):
        CIFAR100Hierarchical(tmp_path)
    assert not marker.exists()
