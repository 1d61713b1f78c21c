from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from lightly_hmlc.data import (
    MODELNET40_GROUPS,
    ModelNet40Hierarchical,
    PointCloudAugment,
    TwoViewPointCloudTransform,
)

SHAPE_NAMES = (
    "airplane bathtub bed bench bookshelf bottle bowl car chair cone cup curtain desk door "
    "dresser flower_pot glass_box guitar keyboard lamp laptop mantel monitor night_stand person "
    "piano plant radio range_hood sink sofa stairs stool table tent toilet tv_stand vase "
    "wardrobe xbox"
).split()


def write_release(root: Path, sizes: dict[str, int], points: int = 2048) -> dict[str, tuple]:
    """Writes ply_data_<name>.h5 files and shape_names.txt in the official layout."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "shape_names.txt").write_text("\n".join(SHAPE_NAMES) + "\n")
    written = {}
    for i, (name, n) in enumerate(sizes.items()):
        rng = np.random.default_rng(i)
        data = rng.uniform(-1, 1, (n, points, 3)).astype(np.float32)
        label = rng.integers(0, 40, (n, 1)).astype(np.uint8)
        with h5py.File(root / f"ply_data_{name}.h5", "w") as h5:
            h5.create_dataset("data", data=data)
            h5.create_dataset("label", data=label)
        written[name] = (data, label)
    return written


def test_grouping_covers_every_category_once() -> None:
    grouped = [name for names in MODELNET40_GROUPS.values() for name in names]
    assert sorted(grouped) == sorted(SHAPE_NAMES)
    assert len(grouped) == len(set(grouped)) == 40
    h = ModelNet40Hierarchical.build_hierarchy()
    assert h.num_classes_per_level == [6, 40]
    assert h.leaves == sorted(SHAPE_NAMES)


def test_reads_h5_files_in_numeric_order(tmp_path: Path) -> None:
    folder = tmp_path / "modelnet40_ply_hdf5_2048"
    written = write_release(folder, {"train0": 3, "train1": 2, "train10": 4, "test0": 5})
    ds = ModelNet40Hierarchical(tmp_path, split="train", num_points=1024)  # parent folder
    assert [f.name for f in ds.files] == [f"ply_data_train{i}.h5" for i in (0, 1, 10)]
    assert len(ds) == 9
    labels = np.concatenate([written[k][1].reshape(-1) for k in ("train0", "train1", "train10")])
    assert ds.targets == labels.tolist()
    cloud, path = ds[3]
    assert cloud.dtype == torch.float32 and cloud.shape == (1024, 3)
    assert torch.equal(cloud, torch.from_numpy(written["train1"][0][0, :1024]))
    name = SHAPE_NAMES[int(labels[3])]
    h = ds.hierarchy
    assert path.tolist() == h.label_paths([name])[0].tolist()
    assert h.id_to_name(0, int(path[0])) == h.parent(name)
    test = ModelNet40Hierarchical(folder, split="test", num_points=512)
    assert len(test) == 5 and test[0][0].shape == (512, 3)


def test_user_hierarchy_file(tmp_path: Path) -> None:
    write_release(tmp_path, {"train0": 4})
    tree = tmp_path / "tree.txt"
    lines = [
        f"{'seat' if n in ('chair', 'sofa', 'stool', 'bench') else 'other'} {n}"
        for n in SHAPE_NAMES
    ]
    tree.write_text("\n".join(lines))
    ds = ModelNet40Hierarchical(tmp_path, hierarchy=tree)
    assert ds.hierarchy.level_names(0) == ["other", "seat"]
    bad = tmp_path / "bad.txt"
    bad.write_text("seat chair\nseat sofa\n")
    with pytest.raises(ValueError, match="category name.*missing from the hierarchy"):
        ModelNet40Hierarchical(tmp_path, hierarchy=bad)


def test_two_view_transform_and_collate(tmp_path: Path) -> None:
    write_release(tmp_path, {"train0": 6})
    ds = ModelNet40Hierarchical(
        tmp_path, num_points=1024, transform=TwoViewPointCloudTransform(num_points=256)
    )
    views, paths = next(iter(DataLoader(ds, batch_size=3)))
    assert len(views) == 2 and views[0].shape == (3, 256, 3)
    assert not torch.equal(views[0], views[1])
    assert paths.shape == (3, 2)


def test_missing_files_message(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError) as info:
        ModelNet40Hierarchical(tmp_path)
    message = str(info.value)
    assert "ply_data_train*.h5" in message and "shape_names.txt" in message
    assert "modelnet40_ply_hdf5_2048" in message


def test_invalid_arguments(tmp_path: Path) -> None:
    write_release(tmp_path, {"train0": 1}, points=100)
    with pytest.raises(ValueError, match="split"):
        ModelNet40Hierarchical(tmp_path, split="val")
    with pytest.raises(ValueError, match="num_points"):
        ModelNet40Hierarchical(tmp_path, num_points=0)
    with pytest.raises(ValueError, match="only 100 points"):
        ModelNet40Hierarchical(tmp_path, num_points=1024)


def test_augment_rotates_about_up_axis_only() -> None:
    cloud = torch.randn(500, 3)
    augment = PointCloudAugment(
        num_points=None,
        scale=(1.0, 1.0),
        jitter_sigma=0.0,
        max_dropout=0.0,
        generator=torch.Generator().manual_seed(0),
    )
    out = augment(cloud)
    # Same points (up to order), rotated about y: y and the xz-radius are preserved.
    assert out.shape == (500, 3)
    assert torch.allclose(out[:, 1].sort().values, cloud[:, 1].sort().values)
    radius = lambda p: p[:, [0, 2]].norm(dim=1).sort().values  # noqa: E731
    assert torch.allclose(radius(out), radius(cloud), atol=1e-5)
    assert not torch.allclose(out[:, 0].sort().values, cloud[:, 0].sort().values)


def test_augment_scale_jitter_dropout_and_resample() -> None:
    cloud = torch.rand(300, 3) + 1.0
    gen = torch.Generator().manual_seed(1)
    scaled = PointCloudAugment(
        num_points=None,
        rotate=False,
        scale=(2.0, 2.0),
        jitter_sigma=0.0,
        max_dropout=0.0,
        generator=gen,
    )(cloud)
    assert torch.allclose(scaled.sort(0).values, 2 * cloud.sort(0).values)
    flat = torch.ones(300, 3)
    jittered = PointCloudAugment(
        num_points=None,
        rotate=False,
        scale=(1.0, 1.0),
        jitter_sigma=1.0,
        jitter_clip=0.05,
        max_dropout=0.0,
        generator=gen,
    )(flat)
    noise = jittered - flat
    assert noise.abs().max() <= 0.05 + 1e-6 and noise.abs().min() > 0
    dropped = PointCloudAugment(
        num_points=1000,
        rotate=False,
        scale=(1.0, 1.0),
        jitter_sigma=0.0,
        max_dropout=0.9,
        generator=gen,
    )(cloud)
    # Upsampled to 1000 with repetition; every output point is an input point.
    assert dropped.shape == (1000, 3)
    assert (dropped[:, None] == cloud[None]).all(-1).any(1).all()
    # Dropout at a fixed size: dropped points are replaced by copies of kept ones.
    kept = PointCloudAugment(
        num_points=None,
        rotate=False,
        scale=(1.0, 1.0),
        jitter_sigma=0.0,
        max_dropout=0.9,
        generator=gen,
    )(cloud)
    assert kept.shape == (300, 3)
    assert (kept[:, None] == cloud[None]).all(-1).any(1).all()
    assert len(torch.unique(kept, dim=0)) < 300


def test_augment_is_reproducible_with_a_generator() -> None:
    cloud = torch.rand(2048, 3)
    a = PointCloudAugment(generator=torch.Generator().manual_seed(5))(cloud)
    b = PointCloudAugment(generator=torch.Generator().manual_seed(5))(cloud)
    assert torch.equal(a, b) and a.shape == (1024, 3)
    assert torch.equal(cloud, cloud.clone())  # input untouched


@pytest.mark.parametrize(
    "kwargs",
    [
        {"num_points": 0},
        {"up_axis": 3},
        {"scale": (0.0, 1.0)},
        {"scale": (2.0, 1.0)},
        {"jitter_sigma": -1.0},
        {"max_dropout": 1.0},
    ],
)
def test_augment_invalid_arguments(kwargs: dict) -> None:
    with pytest.raises(ValueError):
        PointCloudAugment(**kwargs)


def test_augment_rejects_bad_shapes() -> None:
    with pytest.raises(ValueError, match=r"\[P, 3\]"):
        PointCloudAugment()(torch.rand(10, 2))


def _rewrite(path: Path, name: str, values: np.ndarray) -> None:
    with h5py.File(path, "r+") as h5:
        del h5[name]
        h5.create_dataset(name, data=values)


def test_duplicate_shape_name_is_refused(tmp_path: Path) -> None:
    write_release(tmp_path, {"train0": 2})
    names = tmp_path / "shape_names.txt"
    names.write_text("\n".join([*SHAPE_NAMES[:-1], "chair"]) + "\n")  # 'chair' twice
    with pytest.raises(ValueError, match=r"shape_names\.txt.*\['chair'\] more than once"):
        ModelNet40Hierarchical(tmp_path)


def test_fractional_labels_are_refused_and_whole_floats_accepted(tmp_path: Path) -> None:
    written = write_release(tmp_path, {"train0": 3})
    file = tmp_path / "ply_data_train0.h5"
    labels = written["train0"][1].reshape(-1)
    _rewrite(file, "label", labels.astype(np.float32).reshape(-1, 1))
    assert ModelNet40Hierarchical(tmp_path).targets == labels.tolist()
    for bad in (2.5, np.nan):
        _rewrite(file, "label", np.array([[1.0], [bad], [3.0]], dtype=np.float32))
        with pytest.raises(ValueError, match=r"ply_data_train0\.h5.*not whole numbers"):
            ModelNet40Hierarchical(tmp_path)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_points_are_refused(tmp_path: Path, bad: float) -> None:
    written = write_release(tmp_path, {"train0": 3})
    data = written["train0"][0].copy()
    data[1, 5, 2] = bad
    _rewrite(tmp_path / "ply_data_train0.h5", "data", data)
    with pytest.raises(
        ValueError, match=r"ply_data_train0\.h5.*1 point cloud\(s\) hold NaN or Inf"
    ):
        ModelNet40Hierarchical(tmp_path)
