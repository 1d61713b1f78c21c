"""BlockMaskHead: fixed per-level blocks, partition or nested."""

from __future__ import annotations

import pytest
import torch

from lightly_hmlc.loss import HMLCLoss
from lightly_hmlc.models.modules.block_mask_head import BlockMaskHead


def test_partition_blocks_cover_every_dim_once() -> None:
    masks = BlockMaskHead(num_levels=3, dim=10)(torch.randn(4, 10))
    assert masks.shape == (1, 3, 10)
    assert masks.sum(dim=1).eq(1).all()  # each dim belongs to exactly one level
    assert masks[0].sum(dim=1).tolist() == [3.0, 3.0, 4.0]  # remainder to the finest


def test_nested_blocks_grow_towards_the_finest_level() -> None:
    masks = BlockMaskHead(num_levels=3, dim=6, block_sizes=[1, 2, 3], nested=True)(
        torch.randn(2, 6)
    )[0]
    assert masks.sum(dim=1).tolist() == [1.0, 3.0, 6.0]
    assert (masks[0] <= masks[1]).all() and (masks[1] <= masks[2]).all()


def test_masked_level_term_only_sees_its_block() -> None:
    # The coarse term must not change when only the fine block's values change.
    torch.manual_seed(0)
    head = BlockMaskHead(num_levels=2, dim=8)
    labels = torch.tensor([[0, 0], [0, 1], [1, 2], [1, 3]])
    z0, z1 = torch.randn(4, 8), torch.randn(4, 8)
    loss = HMLCLoss("hmc")
    z = torch.cat([z0, z1])
    masks = head(z, labels.repeat(2, 1))
    _, levels_a = loss(z0, z1, labels, masks=masks, return_level_losses=True)
    z0b, z1b = z0.clone(), z1.clone()
    z0b[:, 4:] += torch.randn(4, 4)
    _, levels_b = loss(z0b, z1b, labels, masks=masks, return_level_losses=True)
    assert torch.allclose(levels_a[0], levels_b[0])
    assert not torch.allclose(levels_a[1], levels_b[1])


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"num_levels": 3, "dim": 2}, "narrower"),
        ({"num_levels": 2, "dim": 4, "block_sizes": [1, 2]}, "summing"),
        ({"num_levels": 2, "dim": 4, "block_sizes": [0, 4]}, "positive"),
    ],
)
def test_bad_block_sizes_are_named(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        BlockMaskHead(**kwargs)


def test_repr_names_the_shape_and_the_blocks() -> None:
    assert repr(BlockMaskHead(num_levels=2, dim=5, nested=True)) == (
        "BlockMaskHead(num_levels=2, dim=5, block_sizes=[2, 3], nested=True)"
    )
