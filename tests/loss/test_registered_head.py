"""masked-hmlc: HMLC on any registered head, chosen by name."""

from __future__ import annotations

import pytest
import torch

from lightly_hmlc.loss import HMLCLoss
from lightly_hmlc.models.modules import BlockMaskHead
from lightly_hmlc.registry import UnknownComponentError, create_loss


def test_equals_the_chain_with_the_same_head() -> None:
    torch.manual_seed(0)
    labels = torch.tensor([[0, 0], [0, 1], [1, 2], [1, 2], [1, 3], [0, 0]])
    z0, z1 = torch.randn(6, 8), torch.randn(6, 8)
    loss_fn = create_loss(
        "masked-hmlc", head="block-mask", num_levels=2, dim=8, nested=True, temperature=0.2
    )
    head = BlockMaskHead(num_levels=2, dim=8, nested=True)
    masks = head(torch.cat([z0, z1]), labels.repeat(2, 1))
    expected = HMLCLoss("hmce", temperature=0.2)(z0, z1, labels, masks=masks)
    assert torch.allclose(loss_fn(z0, z1, labels), expected)


def test_unknown_head_lists_the_known_ones() -> None:
    with pytest.raises(UnknownComponentError, match="block-mask"):
        create_loss("masked-hmlc", head="nope", num_levels=2, dim=8)


def test_layer_penalty_as_explicit_weights() -> None:
    # Weights listed coarse to fine equal the same weights given as a callable.
    torch.manual_seed(0)
    labels = torch.tensor([[0, 0], [0, 1], [1, 2], [1, 2], [1, 3], [0, 0]])
    z0, z1 = torch.randn(6, 8), torch.randn(6, 8)
    listed = HMLCLoss("hmc", layer_penalty=[0.5, 1.0])(z0, z1, labels)
    called = HMLCLoss("hmc", layer_penalty=lambda k_inv: torch.tensor([0.5, 1.0]))(z0, z1, labels)
    assert torch.allclose(listed, called)
    _, levels = HMLCLoss("hmc")(z0, z1, labels, return_level_losses=True)
    finest_only = HMLCLoss("hmc", layer_penalty=[0.0, 1.0])(z0, z1, labels)
    assert torch.allclose(finest_only, levels[1])
    with pytest.raises(ValueError, match="same shape"):
        HMLCLoss("hmc", layer_penalty=[1.0, 2.0, 3.0])(z0, z1, labels)
