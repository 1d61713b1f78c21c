"""SupConLoss(hierarchy_margin=m) against a plainly written per-anchor loop."""

from __future__ import annotations

import pytest
import torch

from lightly_hmlc.loss import SupConLoss
from tests.loss import naive


def _batch(seed: int, branching: list[int], unknown: float) -> tuple[torch.Tensor, ...]:
    generator = torch.Generator().manual_seed(seed)
    out0 = torch.randn(14, 6, generator=generator, dtype=torch.float64, requires_grad=True)
    out1 = torch.randn(14, 6, generator=generator, dtype=torch.float64, requires_grad=True)
    labels = naive.random_tree_labels(14, branching, generator, unknown)
    return out0, out1, labels


@pytest.mark.parametrize("branching", [[2, 3], [2, 2, 2]])
@pytest.mark.parametrize("margin", [0.05, 0.4])
def test_value_and_gradients_match_the_loop(branching: list[int], margin: float) -> None:
    # Unknown suffixes included: a partly known path is its own class, and only its
    # known coarser levels count towards the margin.
    out0, out1, labels = _batch(0, branching, unknown=0.3)
    ours = SupConLoss(temperature=0.2, hierarchy_margin=margin)(out0, out1, labels)
    expected = naive.supcon_hierarchy_margin(out0, out1, labels, 0.2, margin)
    naive.assert_value_and_gradients_close(ours, expected, [out0, out1])


def test_memory_rows_get_the_margin_too() -> None:
    out0, out1, labels = _batch(1, [2, 2], unknown=0.0)
    generator = torch.Generator().manual_seed(2)
    memory = (
        torch.randn(5, 6, generator=generator, dtype=torch.float64),
        naive.random_tree_labels(5, [2, 2], generator),
    )
    ours = SupConLoss(hierarchy_margin=0.2)(out0, out1, labels, memory=memory)
    expected = naive.supcon_hierarchy_margin(out0, out1, labels, 0.1, 0.2, memory)
    torch.testing.assert_close(ours.double(), expected)


def test_margin_raises_the_loss_only_where_branches_differ() -> None:
    out0, out1, labels = _batch(3, [2, 2], unknown=0.0)
    plain = SupConLoss()(out0, out1, labels)
    assert SupConLoss(hierarchy_margin=0.3)(out0, out1, labels) > plain
    # One coarse class: no negative is on another branch, so the margin changes nothing.
    one_branch = labels.clone()
    one_branch[:, 0] = 0
    torch.testing.assert_close(
        SupConLoss(hierarchy_margin=0.3)(out0, out1, one_branch),
        SupConLoss()(out0, out1, one_branch),
    )


def test_bad_margins_name_the_fix() -> None:
    with pytest.raises(ValueError, match="finite and >= 0"):
        SupConLoss(hierarchy_margin=-0.1)
    with pytest.raises(ValueError, match="finite and >= 0"):
        SupConLoss(hierarchy_margin=float("inf"))
    for not_a_number in (True, "0.1", float("nan")):
        with pytest.raises(ValueError, match="finite and >= 0"):
            SupConLoss(hierarchy_margin=not_a_number)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="L_out form only"):
        SupConLoss(hierarchy_margin=0.1, supcon_form="in")
    out0, out1 = torch.randn(4, 3), torch.randn(4, 3)
    with pytest.raises(ValueError, match=r"needs \[B, L\] label paths"):
        SupConLoss(hierarchy_margin=0.1)(out0, out1, torch.tensor([0, 0, 1, 1]))


def test_repr_shows_the_margin_only_when_set() -> None:
    assert "hierarchy_margin=0.2" in repr(SupConLoss(hierarchy_margin=0.2))
    assert "hierarchy_margin" not in repr(SupConLoss())
