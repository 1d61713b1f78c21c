"""The hierarchy margin (SupConLoss, HMLCLoss, the masked losses) against plainly written loops."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lightly_hmlc.loss import HMLCLoss, ReferenceHMLCLoss, SupConLoss
from lightly_hmlc.loss.masked import (
    AHMLCLoss,
    GHMLCLoss,
    MaskedHMLCLoss,
    RegisteredHeadHMLCLoss,
)
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
    out0, out1 = torch.randn(4, 3), torch.randn(4, 3)
    with pytest.raises(ValueError, match=r"needs \[B, L\] label paths"):
        SupConLoss(hierarchy_margin=0.1)(out0, out1, torch.tensor([0, 0, 1, 1]))


def test_repr_shows_the_margin_only_when_set() -> None:
    assert "hierarchy_margin=0.2" in repr(SupConLoss(hierarchy_margin=0.2))
    assert "hierarchy_margin" not in repr(SupConLoss())


# --- The margin in HMLCLoss and the masked losses: every level's term gets it ---------


def _weighted(means: list[torch.Tensor], loss_type: str) -> torch.Tensor:
    """The package's aggregation of already constrained level means (exp weights, sum 1)."""
    if loss_type == "hce":
        return torch.stack(means).mean()
    weights = naive.penalty_weights(len(means), "exp")
    return naive.weighted_sum(weights, means) / sum(weights)


@pytest.mark.parametrize(("loss_type", "hce_form"), naive.LOSS_FORMS)
@pytest.mark.parametrize("branching", [[2, 3], [2, 2, 2]])
def test_hmlc_margin_matches_the_loop(loss_type: str, hce_form: str, branching: list[int]) -> None:
    out0, out1, labels = _batch(4, branching, unknown=0.3)
    loss_fn = HMLCLoss(loss_type, temperature=0.2, hce_form=hce_form, hierarchy_margin=0.3)
    expected = naive.hmlc(out0, out1, labels, loss_type, 0.2, hce_form=hce_form, margin=0.3)
    naive.assert_value_and_gradients_close(loss_fn(out0, out1, labels), expected, [out0, out1])


def test_hmlc_finest_term_is_supcon_with_the_margin() -> None:
    out0, out1, labels = _batch(5, [2, 3], unknown=0.0)
    finest_only = HMLCLoss("hmc", layer_penalty=[0.0, 1.0], hierarchy_margin=0.2)
    torch.testing.assert_close(
        finest_only(out0, out1, labels), SupConLoss(hierarchy_margin=0.2)(out0, out1, labels)
    )
    # The coarsest term has no coarser level, so no offset.
    coarsest_only = HMLCLoss("hmc", layer_penalty=[1.0, 0.0], hierarchy_margin=0.2)
    torch.testing.assert_close(
        coarsest_only(out0, out1, labels),
        HMLCLoss("hmc", layer_penalty=[1.0, 0.0])(out0, out1, labels),
    )


class _Masks(nn.Module):
    """The same masks every call: shared ``[1, L, D]`` or per row ``[2B, L, D]``."""

    def __init__(self, masks: torch.Tensor) -> None:
        super().__init__()
        self.masks = masks

    def forward(self, z: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        return self.masks


@pytest.mark.parametrize("hce_form", ["anchor_mean", "batch_mean"])
@pytest.mark.parametrize("kind", ["per_row", "nested", "equal_rows", "scattered", "partition"])
def test_masked_margin_matches_the_loop(hce_form: str, kind: str) -> None:
    out0, out1, labels = _batch(7, [2, 3], unknown=0.2)
    generator = torch.Generator().manual_seed(8)
    if kind == "per_row":  # soft masks, as A-HMLC's
        masks = torch.rand(28, 2, 6, generator=generator, dtype=torch.float64) + 0.2
    elif kind == "nested":  # hard nested masks, as G-HMLC's
        masks = torch.ones(1, 2, 6, dtype=torch.float64)
        masks[0, 0, 3:] = 0.0
    elif kind == "equal_rows":  # the same mask at every level (one matrix serves both)
        masks = torch.ones(1, 2, 6, dtype=torch.float64)
        masks[0, :, 4:] = 0.0
    elif kind == "scattered":  # nested, the coarse level's columns not leading
        masks = torch.ones(1, 2, 6, dtype=torch.float64)
        masks[0, 0, [0, 2, 3, 5]] = 0.0
    else:  # a partition of scattered columns (nested=False)
        masks = torch.zeros(1, 2, 6, dtype=torch.float64)
        masks[0, 0, [1, 4, 5]] = 1.0
        masks[0, 1, [0, 2, 3]] = 1.0
    loss_fn = MaskedHMLCLoss(
        _Masks(masks), "hmce", temperature=0.2, hce_form=hce_form, hierarchy_margin=0.3
    )
    z = naive.stacked_views(out0, out1)
    level_z = [F.normalize(z * masks[:, level], dim=1) for level in range(2)]
    form = "none" if hce_form == "batch_mean" else hce_form
    means = naive.hce_pair_level_means(level_z, labels, 0.2, form, margin=0.3)
    if hce_form == "batch_mean":
        means = [torch.stack(means[level:]).max() for level in range(2)]
    expected = _weighted(means, "hmce")
    naive.assert_value_and_gradients_close(loss_fn(out0, out1, labels), expected, [out0, out1])


def _seeded(loss_class: type[nn.Module], **kwargs: object) -> nn.Module:
    torch.manual_seed(0)  # the same head weights in every instance
    return loss_class(num_levels=2, dim=6, **kwargs)


@pytest.mark.parametrize("loss_class", [AHMLCLoss, GHMLCLoss])
def test_feature_identification_losses_take_the_margin_by_default(
    loss_class: type[nn.Module],
) -> None:
    out0, out1, labels = _batch(9, [2, 3], unknown=0.0)
    out0, out1 = out0.float(), out1.float()
    default, explicit = _seeded(loss_class), _seeded(loss_class, hierarchy_margin=0.2)
    without = _seeded(loss_class, hierarchy_margin=0.0)
    assert "hierarchy_margin=0.2" in repr(default)
    assert "hierarchy_margin=0.0" in repr(without)
    assert torch.equal(default(out0, out1, labels), explicit(out0, out1, labels))
    assert default(out0, out1, labels) > without(out0, out1, labels)


def test_masked_losses_without_a_measured_margin_default_to_none() -> None:
    # The margin was chosen for the GMM and attention heads only; the other heads and
    # the building block keep the margin-free loss until it is measured with them.
    assert RegisteredHeadHMLCLoss(num_levels=2, dim=6).hierarchy_margin == 0.0
    assert MaskedHMLCLoss(_Masks(torch.ones(1, 2, 6))).hierarchy_margin == 0.0


def test_hmlc_margin_combinations_name_the_fix() -> None:
    with pytest.raises(ValueError, match="finite and >= 0"):
        HMLCLoss(hierarchy_margin=-1.0)
    with pytest.raises(TypeError, match="hierarchy_margin"):
        ReferenceHMLCLoss(hierarchy_margin=0.1)  # type: ignore[call-arg]
    out0, out1 = torch.randn(4, 3), torch.randn(4, 3)
    with pytest.raises(ValueError, match="L >= 2"):
        HMLCLoss(hierarchy_margin=0.1)(out0, out1, torch.tensor([0, 0, 1, 1]))
    assert "hierarchy_margin=0.0" in repr(HMLCLoss())
