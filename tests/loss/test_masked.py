from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightly_hmlc.loss import HMLCLoss
from lightly_hmlc.loss.masked import AHMLCLoss, GHMLCLoss, MaskedHMLCLoss
from tests.loss import naive


class FixedMaskHead(nn.Module):
    """Returns the same masks for every sample; optionally trainable."""

    def __init__(self, masks: Tensor, trainable: bool = False) -> None:
        super().__init__()
        self.masks = nn.Parameter(masks.clone(), requires_grad=trainable)

    def forward(self, z: Tensor, labels: Tensor | None = None) -> Tensor:
        return self.masks.unsqueeze(0)

    def regularization(self, masks: Tensor) -> Tensor:
        return masks.new_zeros(())


def _inputs(seed: int = 0) -> tuple[Tensor, Tensor, Tensor]:
    generator = torch.Generator().manual_seed(seed)
    out0 = torch.randn(10, 6, generator=generator, dtype=torch.float64)
    out1 = torch.randn(10, 6, generator=generator, dtype=torch.float64)
    return out0, out1, naive.random_tree_labels(10, [2, 3], generator, unknown=0.2)


@pytest.mark.parametrize("loss_type", ["hmc", "hce", "hmce"])
def test_all_ones_masks_equal_hmlc(loss_type: str) -> None:
    out0, out1, labels = _inputs()
    masked = MaskedHMLCLoss(FixedMaskHead(torch.ones(2, 6)), loss_type=loss_type)
    torch.testing.assert_close(masked(out0, out1, labels), HMLCLoss(loss_type)(out0, out1, labels))


@pytest.mark.parametrize("loss_type", ["hmc", "hce", "hmce"])
def test_level_terms_use_each_levels_masked_features(loss_type: str) -> None:
    out0, out1, labels = _inputs(1)
    masks = torch.tensor([[1.0, 1.0, 1.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.5, 1.0, 1.0, 2.0]])
    ours = MaskedHMLCLoss(FixedMaskHead(masks), loss_type=loss_type, temperature=0.3)(
        out0, out1, labels
    )
    z0, z1 = F.normalize(out0, dim=1), F.normalize(out1, dim=1)
    level_terms = []
    for level in range(2):
        per_level = naive.level_means(z0 * masks[level], z1 * masks[level], labels, 0.3)
        level_terms.append(per_level[level])
    if loss_type in ("hce", "hmce"):
        level_terms = [torch.stack(level_terms[level:]).max() for level in range(2)]
    weights = naive.penalty_weights(2, "exp")
    expected = (
        torch.stack(level_terms).mean()
        if loss_type == "hce"
        else sum(w * t for w, t in zip(weights, level_terms, strict=True)) / sum(weights)
    )
    torch.testing.assert_close(ours.double(), expected)


def test_gradients_flow_through_soft_masks_only() -> None:
    out0, out1, labels = _inputs(2)
    soft = FixedMaskHead(torch.rand(2, 6, dtype=torch.float64) + 0.5, trainable=True)
    MaskedHMLCLoss(soft)(out0, out1, labels).backward()
    assert soft.masks.grad is not None and soft.masks.grad.abs().sum() > 0


def test_wrong_mask_shape_is_reported() -> None:
    out0, out1, labels = _inputs()
    with pytest.raises(ValueError, match="mask head returned masks of shape"):
        MaskedHMLCLoss(FixedMaskHead(torch.ones(3, 6)))(out0, out1, labels)


def test_mask_head_must_be_a_module() -> None:
    with pytest.raises(ValueError, match="must be an nn.Module"):
        MaskedHMLCLoss(lambda z, labels: z)  # type: ignore[arg-type]


def test_ghmlc_trains_masks_and_passes_no_gradient_through_them() -> None:
    out0, out1, labels = _inputs(3)
    out0 = out0.float().requires_grad_(True)
    loss_fn = GHMLCLoss(num_levels=2, dim=6, refit_every=1, warmup_steps=0)
    loss = loss_fn(out0, out1.float(), labels)
    loss.backward()
    assert torch.isfinite(loss)
    assert loss_fn.last_masks is not None and not loss_fn.last_masks.requires_grad
    assert out0.grad is not None and torch.isfinite(out0.grad).all()


def test_ahmlc_head_gets_gradients() -> None:
    out0, out1, labels = _inputs(4)
    loss_fn = AHMLCLoss(num_levels=2, dim=6)
    loss_fn(out0.float(), out1.float(), labels).backward()
    grads = [p.grad for p in loss_fn.parameters()]
    assert grads and all(g is not None for g in grads)
    assert sum(float(g.abs().sum()) for g in grads if g is not None) > 0
