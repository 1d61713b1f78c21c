import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from lightly_hmlc.data import ShapesDataset


def _nearest_mean_predictions(
    train: ShapesDataset, test: ShapesDataset, level: int
) -> tuple[np.ndarray, np.ndarray]:
    x_train = train.data.reshape(len(train), -1).astype(np.float32) / 255
    x_test = test.data.reshape(len(test), -1).astype(np.float32) / 255
    y_train = train.label_paths[:, level].numpy()
    y_test = test.label_paths[:, level].numpy()
    means = np.stack([x_train[y_train == c].mean(0) for c in range(y_train.max() + 1)])
    dist = (x_test**2).sum(1, keepdims=True) - 2 * x_test @ means.T + (means**2).sum(1)
    return dist.argmin(1), y_test


def test_sample_is_pil_image_and_label_path() -> None:
    ds = ShapesDataset(num_samples=30, image_size=32, seed=1)
    image, path = ds[3]
    assert isinstance(image, Image.Image)
    assert image.size == (32, 32) and image.mode == "RGB"
    assert path.dtype == torch.long and path.shape == (3,)
    assert torch.equal(path, ds.label_paths[3])
    assert np.array_equal(np.asarray(image), ds.data[3])


def test_hierarchy_and_classes() -> None:
    ds = ShapesDataset(num_samples=24)
    h = ds.hierarchy
    assert h == ShapesDataset.build_hierarchy()
    assert h.num_classes_per_level == [3, 6, 12]
    assert h.level_names(0) == ["disc", "square", "triangle"]
    assert ds.classes == h.leaves
    # The label path of every sample matches its fine class name.
    for i in range(len(ds)):
        name = ds.classes[ds.targets[i]]
        family, fill, _ = name.split("_")
        path = ds.label_paths[i]
        assert h.id_to_name(0, int(path[0])) == family
        assert h.id_to_name(1, int(path[1])) == f"{family}_{fill}"
        assert h.id_to_name(2, int(path[2])) == name


def test_classes_are_balanced() -> None:
    ds = ShapesDataset(num_samples=12 * 7 + 5)
    counts = np.bincount(ds.targets, minlength=12)
    assert counts.max() - counts.min() <= 1
    assert counts.sum() == 12 * 7 + 5


def test_deterministic_for_a_seed() -> None:
    a = ShapesDataset(num_samples=64, seed=3)
    b = ShapesDataset(num_samples=64, seed=3)
    c = ShapesDataset(num_samples=64, seed=4)
    assert np.array_equal(a.data, b.data) and a.targets == b.targets
    assert not np.array_equal(a.data, c.data)


def test_train_and_test_streams_differ() -> None:
    train = ShapesDataset(num_samples=64, seed=0, split="train")
    test = ShapesDataset(num_samples=64, seed=0, split="test")
    assert not np.array_equal(train.data, test.data)
    assert train.targets != test.targets
    # No test image is a copy of a train image.
    flat_train = {bytes(x) for x in train.data.reshape(64, -1)}
    assert not any(bytes(x) in flat_train for x in test.data.reshape(64, -1))


def test_generation_renders_every_image_in_chunks() -> None:
    # More images than one rendering chunk (2048): every one is drawn, none left blank.
    ds = ShapesDataset(num_samples=2100, image_size=16)
    assert ds.data.shape == (2100, 16, 16, 3) and ds.data.dtype == np.uint8
    assert (ds.data.reshape(2100, -1).std(axis=1) > 0).all()


def test_other_image_sizes() -> None:
    ds = ShapesDataset(num_samples=12, image_size=64)
    assert ds[0][0].size == (64, 64)
    assert ds.data.shape == (12, 64, 64, 3)


def test_levels_are_learnable_and_harder_from_coarse_to_fine() -> None:
    train = ShapesDataset(num_samples=1200, seed=0, split="train")
    test = ShapesDataset(num_samples=600, seed=0, split="test")
    accuracy = []
    for level in range(3):
        pred, true = _nearest_mean_predictions(train, test, level)
        accuracy.append(float((pred == true).mean()))
    # Nearest class mean on raw pixels: well above chance at every level, harder level by
    # level, and no level solved by the pixels alone (hue only hints at the family).
    assert 0.6 < accuracy[0] < 0.9, accuracy  # chance: 1/3
    assert accuracy[0] > accuracy[1] > accuracy[2], accuracy
    assert 2 / 12 < accuracy[2] < 0.5, accuracy  # chance: 1/12
    # The hierarchy is visible: fine mistakes stay within the right coarse class far more
    # often than chance (3 of the 11 wrong classes share the coarse class).
    pred, true = _nearest_mean_predictions(train, test, 2)
    leaf_paths = train.hierarchy.leaf_paths
    wrong = pred != true
    same_coarse = (leaf_paths[pred[wrong], 0] == leaf_paths[true[wrong], 0]).float().mean()
    assert same_coarse > 0.5


def test_lightly_multiview_transform_and_dataloader() -> None:
    from lightly.transforms import SimCLRTransform

    transform = SimCLRTransform(input_size=32, gaussian_blur=0.0)
    ds = ShapesDataset(num_samples=8, transform=transform)
    views, paths = next(iter(DataLoader(ds, batch_size=4)))
    assert isinstance(views, list) and len(views) == 2
    assert views[0].shape == (4, 3, 32, 32)
    assert paths.shape == (4, 3) and paths.dtype == torch.long


def test_target_transform() -> None:
    ds = ShapesDataset(num_samples=12, target_transform=lambda path: int(path[-1]))
    assert ds[5][1] == ds.targets[5]


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"num_samples": 0}, "num_samples"),
        ({"image_size": 4}, "image_size"),
        ({"split": "val"}, "split"),
        ({"seed": -1}, "seed"),
    ],
)
def test_invalid_arguments(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        ShapesDataset(**kwargs)
