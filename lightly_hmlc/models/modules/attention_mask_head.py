"""A-HMLC's feature-mask head: one small attention MLP per hierarchy level."""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightly_hmlc.models.modules._arguments import check_int, check_positive
from lightly_hmlc.models.modules.feature_mask_head import FeatureMaskHead

Gate = Literal["sigmoid", "softmax"]


class AttentionMaskHead(FeatureMaskHead):
    """Soft per-level feature masks from per-level attention MLPs (A-HMLC [0]).

    Level h's mask is ``gate((W2_h relu(W1_h x + b1_h) + b2_h) / temperature)`` of
    ``x = z / |z|``, so a feature may serve several levels; ``gate="softmax"`` gives
    ``D * softmax`` (mean 1). The output layer starts near zero, so the masks start near a
    constant and training starts as plain HMLC. Nested masks fix the finest level's mask at
    1 and make a coarser one the running maximum of the gates from the coarsest down.
    :meth:`regularization` is ``separation_weight`` times the mean pairwise cosine
    similarity of the levels' batch-mean masks.

    - [0] Ott et al., 2025, https://arxiv.org/abs/2510.00837

    Examples:
        >>> head = AttentionMaskHead(num_levels=3, dim=16, gate="softmax")
        >>> masks = head(torch.randn(4, 16))
        >>> masks.shape, torch.allclose(masks.mean(-1), torch.ones(4, 3))
        (torch.Size([4, 3, 16]), True)
    """

    def __init__(
        self,
        num_levels: int,
        dim: int,
        hidden_dim: int | None = None,
        *,
        gate: Gate = "sigmoid",
        temperature: float = 1.0,
        separation_weight: float = 0.0,
        normalize_input: bool = True,
        init_std: float = 1e-3,
        nested: bool = False,
    ) -> None:
        super().__init__(num_levels=num_levels, dim=dim)
        if hidden_dim is None:
            hidden_dim = max(8, dim // 4)
        check_int("hidden_dim", hidden_dim)
        if gate not in ("sigmoid", "softmax"):
            raise ValueError(f"gate must be 'sigmoid' or 'softmax', got {gate!r}.")
        check_positive("temperature", temperature, meaning="the gate logits are divided by it")
        check_positive(
            "separation_weight",
            separation_weight,
            allow_zero=True,
            meaning="0 disables the regulariser",
        )
        check_positive("init_std", init_std, allow_zero=True)
        if nested and num_levels < 2:
            raise ValueError(
                "nested=True needs at least 2 levels: with one level the finest level's mask "
                "is every dimension and there is nothing to learn; use nested=False."
            )
        self.hidden_dim = hidden_dim
        self.gate = gate
        self.temperature = temperature
        self.separation_weight = separation_weight
        self.normalize_input = normalize_input
        self.init_std = init_std
        self.nested = nested
        # Nested: the finest level's mask is 1 and has no MLP (unused, it would stall DDP).
        L, D, H = num_levels - int(nested), dim, hidden_dim
        self.weight1 = nn.Parameter(torch.empty(L, D, H))
        self.bias1 = nn.Parameter(torch.empty(L, H))
        self.weight2 = nn.Parameter(torch.empty(L, H, D))
        self.bias2 = nn.Parameter(torch.empty(L, D))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        bound = 1.0 / math.sqrt(self.dim)
        nn.init.uniform_(self.weight1, -bound, bound)
        nn.init.uniform_(self.bias1, -bound, bound)
        nn.init.normal_(self.weight2, std=self.init_std)
        nn.init.zeros_(self.bias2)

    def forward(self, z: Tensor, labels: Tensor | None = None) -> Tensor:
        """Masks [B, L, D], coarse to fine, of the projections ``z`` [B, D]."""
        self.check_inputs(z, labels)
        x = F.normalize(z, dim=1) if self.normalize_input else z
        x = x.to(self.weight1.dtype)  # autocast, if on, still picks the matmul precision
        hidden = torch.relu(torch.einsum("bd,ldh->blh", x, self.weight1) + self.bias1)
        logits = torch.einsum("blh,lhd->bld", hidden, self.weight2) + self.bias2
        if self.temperature != 1.0:  # the default 1 would cost a pass forward and back
            logits = logits / self.temperature
        if self.gate == "sigmoid":
            masks = torch.sigmoid(logits)
        else:
            masks = logits.shape[-1] * torch.softmax(logits, dim=-1)
        if not self.nested:
            return masks
        finest = masks.new_ones(masks.shape[0], 1, self.dim)
        return torch.cat([masks.cummax(dim=1).values, finest], dim=1)

    def regularization(self, masks: Tensor) -> Tensor:
        """The separation regulariser (0-dim) of ``masks`` [B | 1, L, D]."""
        L, D = self.num_levels, self.dim
        if masks.ndim != 3 or masks.shape[1:] != (L, D):
            raise ValueError(
                f"masks must have shape [B, {L}, {D}], got {tuple(masks.shape)}; "
                f"pass what forward() returned."
            )
        if self.separation_weight == 0 or L == 1:
            return masks.new_zeros(())
        unit = F.normalize(masks.mean(0), dim=-1)  # [L, D]
        similarity = unit @ unit.T
        rows, cols = torch.triu_indices(L, L, 1, device=masks.device)
        return self.separation_weight * similarity[rows, cols].mean()

    def extra_repr(self) -> str:
        return (
            f"{super().extra_repr()}, hidden_dim={self.hidden_dim}, "
            f"gate={self.gate!r}, temperature={self.temperature}, "
            f"separation_weight={self.separation_weight}, nested={self.nested}"
        )
