import numpy as np
import pytest
import torch

from lightly_hmlc.data import LabelPathTransform
from lightly_hmlc.hierarchy import LabelHierarchy


def test_maps_index_in_dataset_order() -> None:
    h = LabelHierarchy.cifar10()
    # A dataset whose class order is not the hierarchy's leaf order.
    names = ["truck", "cat", "airplane"]
    transform = LabelPathTransform(h, names)
    for index, name in enumerate(names):
        assert torch.equal(transform(index), h.label_paths([name])[0])
    assert transform(0).dtype == torch.long
    assert transform(0).shape == (2,)
    assert transform.num_levels == 2


def test_accepts_numpy_and_tensor_indices_and_returns_copies() -> None:
    transform = LabelPathTransform(LabelHierarchy.cifar10())
    assert transform(np.int64(3)).tolist() == [0, 3]
    assert transform(torch.tensor(3)).tolist() == [0, 3]
    out = transform(3)
    out[0] = 99
    assert transform(3).tolist() == [0, 3]


def test_default_class_names_are_leaves() -> None:
    h = LabelHierarchy.mnist()
    transform = LabelPathTransform(h)
    assert torch.equal(torch.stack([transform(i) for i in range(10)]), h.leaf_paths)


def test_padding_for_shallow_leaves() -> None:
    h = LabelHierarchy({"cat": "animal", "animal": "thing", "rock": "thing"})
    assert LabelPathTransform(h, ["rock", "cat"])(0).tolist() == [0, 1, -1]


@pytest.mark.parametrize("bad", [-1, 3, 100])
def test_out_of_range_index(bad: int) -> None:
    transform = LabelPathTransform(LabelHierarchy.cifar10(), ["airplane", "cat", "dog"])
    with pytest.raises(ValueError, match=rf"Class index {bad} is out of range.*3 classes"):
        transform(bad)


@pytest.mark.parametrize("bad", [1.0, "1", True, torch.tensor([1, 2]), torch.tensor(1.0)])
def test_non_integer_index(bad: object) -> None:
    transform = LabelPathTransform(LabelHierarchy.cifar10())
    with pytest.raises(ValueError, match="integer"):
        transform(bad)  # type: ignore[arg-type]


def test_unknown_class_name() -> None:
    with pytest.raises(ValueError, match="not in the hierarchy"):
        LabelPathTransform(LabelHierarchy.cifar10(), ["airplane", "aeroplane"])


def test_hierarchy_from_file(tmp_path) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "tree.txt"
    path.write_text("animal cat\nanimal dog\nvehicle car\n")
    transform = LabelPathTransform(path, ["dog", "car"])
    assert transform(0).tolist() == [0, 2]
    assert transform(1).tolist() == [1, 0]


def test_works_as_torchvision_target_transform() -> None:
    from torch.utils.data import DataLoader, TensorDataset

    class Tiny(TensorDataset):
        def __init__(self) -> None:
            super().__init__(torch.zeros(4, 1), torch.tensor([0, 1, 2, 3]))
            self.target_transform = LabelPathTransform(LabelHierarchy.mnist(), ["0", "1", "2", "3"])

        def __getitem__(self, i):  # type: ignore[no-untyped-def]
            x, y = super().__getitem__(i)
            return x, self.target_transform(y)

    _, paths = next(iter(DataLoader(Tiny(), batch_size=4)))
    assert paths.tolist() == LabelHierarchy.mnist().label_paths([0, 1, 2, 3]).tolist()
