"""The lab's per-level attention pooling over a backbone's tokens (``a-hmlc-tokens``)."""

from __future__ import annotations

import pytest
import torch
from level_pool import LevelAttentionPool

from lightly_hmlc.loss import HMLCLoss


def test_level_attention_pool_gives_one_trainable_embedding_per_level() -> None:
    pool = LevelAttentionPool(16, num_levels=3, num_heads=4)
    feature_map = torch.randn(2, 16, 4, 4)
    out = pool(feature_map)
    assert out.shape == (2, 3, 16)
    # A feature map and its tokens give the same embeddings; each level differs.
    torch.testing.assert_close(pool(feature_map.flatten(2).transpose(1, 2)), out)
    assert not torch.allclose(out[:, 0], out[:, 1])
    loss = HMLCLoss("hmce")(
        out, pool(torch.randn(2, 16, 4, 4)), torch.tensor([[0, 0, 0], [0, 1, 1]])
    )
    loss.backward()
    assert pool.attention.latent.grad is not None and pool.attention.latent.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="num_heads=5 must divide in_features=16"):
        LevelAttentionPool(16, num_levels=3, num_heads=5)
    with pytest.raises(ValueError, match=r"tokens must have shape \[B, N, 16\]"):
        pool(torch.randn(2, 5, 8))
