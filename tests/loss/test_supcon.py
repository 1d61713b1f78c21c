from __future__ import annotations

import pytest
import torch
from lightly.loss import NTXentLoss

from lightly_hmlc.loss import SupConLoss
from tests.loss import naive


@pytest.mark.parametrize("temperature", [0.1, 0.5])
def test_all_distinct_labels_equal_ntxent(temperature: float) -> None:
    out0, out1 = torch.randn(16, 8), torch.randn(16, 8)
    ours = SupConLoss(temperature=temperature)(out0, out1, torch.arange(16))
    lightly = NTXentLoss(temperature=temperature)(out0, out1)
    torch.testing.assert_close(ours, lightly)


def test_value_and_gradients_match_naive() -> None:
    generator = torch.Generator().manual_seed(0)
    out0 = torch.randn(12, 5, generator=generator, dtype=torch.float64, requires_grad=True)
    out1 = torch.randn(12, 5, generator=generator, dtype=torch.float64, requires_grad=True)
    labels = torch.randint(-1, 4, (12,), generator=generator)
    ours = SupConLoss(temperature=0.2)(out0, out1, labels)
    expected = naive.supcon(out0, out1, labels, 0.2)
    naive.assert_value_and_gradients_close(ours, expected, [out0, out1])


def test_label_paths_use_the_whole_path() -> None:
    out0, out1 = torch.randn(6, 4), torch.randn(6, 4)
    paths = torch.tensor([[0, 0], [0, 0], [0, 1], [1, 2], [1, -1], [1, -1]])
    flat = torch.tensor([0, 0, 1, 2, 3, 3])
    torch.testing.assert_close(SupConLoss()(out0, out1, paths), SupConLoss()(out0, out1, flat))


def test_unknown_labels_are_not_anchors_but_stay_negatives() -> None:
    out0, out1 = torch.randn(5, 4, dtype=torch.float64), torch.randn(5, 4, dtype=torch.float64)
    labels = torch.tensor([0, 0, 1, -1, -1])
    expected = naive.supcon(out0, out1, labels, 0.1)
    torch.testing.assert_close(SupConLoss()(out0, out1, labels).double(), expected)


def test_constructor_validation() -> None:
    with pytest.raises(ValueError, match="temperature must be > 0"):
        SupConLoss(temperature=-0.1)


def test_repr_names_the_settings() -> None:
    assert repr(SupConLoss(temperature=0.5, check_values=False)) == (
        "SupConLoss(temperature=0.5, gather_distributed=False, check_values=False)"
    )
