"""Fixed per-level blocks of the embedding (per-level projection heads) as a mask head."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from lightly_hmlc.models.modules.feature_mask_head import FeatureMaskHead


class BlockMaskHead(FeatureMaskHead):
    """Hard masks that give every hierarchy level a fixed block of the embedding.

    The baseline for feature identification: the embedding is cut into L contiguous blocks,
    coarse to fine (``block_sizes``, by default ``dim // L`` with the remainder to the
    finest), and level h sees its block, or blocks 0..h with ``nested=True``.

    Examples:
        >>> BlockMaskHead(num_levels=2, dim=5)(torch.randn(3, 5))[0].tolist()
        [[1.0, 1.0, 0.0, 0.0, 0.0], [0.0, 0.0, 1.0, 1.0, 1.0]]
    """

    masks: Tensor

    def __init__(
        self,
        num_levels: int,
        dim: int,
        block_sizes: Sequence[int] | None = None,
        nested: bool = False,
    ) -> None:
        super().__init__(num_levels, dim)
        if block_sizes is None:
            width = dim // num_levels
            if width < 1:
                raise ValueError(
                    f"dim={dim} is narrower than num_levels={num_levels}: every level needs "
                    "at least one dimension. Widen the projection."
                )
            block_sizes = [width] * (num_levels - 1) + [dim - width * (num_levels - 1)]
        sizes = list(block_sizes)
        if (
            len(sizes) != num_levels
            or any(isinstance(s, bool) or not isinstance(s, int) or s < 1 for s in sizes)
            or sum(sizes) != dim
        ):
            raise ValueError(
                f"block_sizes must be {num_levels} positive integers summing to dim={dim}, "
                f"got {block_sizes!r}."
            )
        self.block_sizes = sizes
        self.nested = bool(nested)
        level_of_dim = torch.repeat_interleave(torch.arange(num_levels), torch.tensor(sizes))
        levels = torch.arange(num_levels)[:, None]
        own = level_of_dim[None, :] <= levels if self.nested else level_of_dim[None, :] == levels
        self.register_buffer("masks", own.float().unsqueeze(0), persistent=False)

    def forward(self, z: Tensor, labels: Tensor | None = None) -> Tensor:
        self.check_inputs(z, labels)
        return self.masks.to(device=z.device, dtype=z.dtype)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, block_sizes={self.block_sizes}, nested={self.nested}"
