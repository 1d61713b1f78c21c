"""Per-level attention pooling over a backbone's tokens: one learned query per level.

The lab's token-attention A-HMLC (suite method ``a-hmlc-tokens``). It lives in the suite,
not in the package: on validation it identified level-specific features on one data set
but lost accuracy against today's A-HMLC (``docs/lab-notebook.md``, token-attention
A-HMLC), so by the rule written before the runs it is not a product component. Any
per-level head works with the package's loss: ``HMLCLoss`` takes per-level embeddings
``[B, L, D]``.
"""

from __future__ import annotations

from timm.layers import AttentionPoolLatent
from torch import Tensor, nn


class LevelAttentionPool(nn.Module):
    """Per-level embeddings ``[B, L, C]`` from a backbone's tokens, by attention (A-HMLC).

    Level ``h``'s embedding is attention pooling of the backbone's tokens with its own
    learned query, so each level can read its own evidence from where it lies in the
    image (coarse levels the global shape, fine levels the details) instead of gating
    dimensions of one pooled vector. This is timm's ``AttentionPoolLatent`` (the pooling
    of SigLIP's and AIMv2's heads) with ``latent_len = L`` queries and no final pooling.
    Give the output, after a projection, to ``lightly_hmlc.HMLCLoss`` as per-level
    embeddings ``[B, L, D]``: level ``h``'s term contrasts embedding ``h``.

    The tokens are ``forward_features`` of any timm backbone: a CNN's feature map
    ``[B, C, H, W]`` is read as ``H * W`` tokens, a ViT's ``[B, N, C]`` is used as it is
    (its class and register tokens included). Ott et al. [0] describe A-HMLC as attention
    that captures hierarchy-specific features; attention over tokens is our reading of
    it.

    - [0] Feature Identification for Hierarchical Contrastive Learning, Ott et al.,
      arXiv 2510.00837

    Args:
        in_features: C, the width of the backbone's tokens (``model.num_features``).
        num_levels: L, the depth of the label paths: one query per level.
        num_heads: Attention heads; must divide ``in_features``.
        mlp_ratio: Width of the residual MLP after the attention, as a multiple of C;
            0 leaves it out.

    Examples:
        >>> import timm, torch
        >>> backbone = timm.create_model("resnet18", num_classes=0)
        >>> pool = LevelAttentionPool(backbone.num_features, num_levels=3)
        >>> tokens = backbone.forward_features(torch.randn(2, 3, 64, 64))  # [2, 512, 2, 2]
        >>> pool(tokens).shape
        torch.Size([2, 3, 512])
    """

    def __init__(
        self, in_features: int, num_levels: int, num_heads: int = 8, mlp_ratio: float = 1.0
    ) -> None:
        super().__init__()
        for name, value in (
            ("in_features", in_features),
            ("num_levels", num_levels),
            ("num_heads", num_heads),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}.")
        if in_features % num_heads:
            raise ValueError(
                f"num_heads={num_heads} must divide in_features={in_features}: pick a "
                f"divisor, e.g. num_heads={_largest_divisor(in_features, num_heads)}."
            )
        if not mlp_ratio >= 0:
            raise ValueError(f"mlp_ratio must be >= 0 (0: no MLP), got {mlp_ratio}.")
        self.in_features = in_features
        self.num_levels = num_levels
        self.attention = AttentionPoolLatent(
            in_features,
            num_heads=num_heads,
            mlp_ratio=mlp_ratio,
            latent_len=num_levels,
            pool_type="",  # keep one output per query (level)
        )

    def forward(self, tokens: Tensor) -> Tensor:
        """Per-level embeddings ``[B, L, C]`` of tokens ``[B, C, H, W]`` or ``[B, N, C]``."""
        if tokens.dim() == 4:
            if tokens.shape[1] != self.in_features:
                raise ValueError(
                    f"A feature map [B, C, H, W] needs C = in_features = {self.in_features}, "
                    f"got {tuple(tokens.shape)}; pass the backbone's forward_features output."
                )
            tokens = tokens.flatten(2).transpose(1, 2)
        if tokens.dim() != 3 or tokens.shape[2] != self.in_features:
            raise ValueError(
                f"tokens must have shape [B, N, {self.in_features}] or [B, "
                f"{self.in_features}, H, W] (the backbone's forward_features), got "
                f"{tuple(tokens.shape)}."
            )
        if tokens.shape[1] == 0:
            raise ValueError("tokens has no tokens (N = 0 or H * W = 0).")
        pooled: Tensor = self.attention(tokens)
        return pooled

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, num_levels={self.num_levels}"


def _largest_divisor(value: int, at_most: int) -> int:
    return max(d for d in range(1, at_most + 1) if value % d == 0)
