"""A-HMLC's feature-mask head: one small attention MLP per hierarchy level."""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightly_hmlc.models.modules._arguments import apply_gate, check_gate, check_int, check_positive
from lightly_hmlc.models.modules.feature_mask_head import FeatureMaskHead

Gate = Literal["sigmoid", "softmax"]


class AttentionMaskHead(FeatureMaskHead):
    """Soft per-level feature masks from per-level attention heads (A-HMLC).

    Ott et al. [0] replace G-HMLC's hard GMM masks by attention heads that produce one soft
    mask per level, so that a feature may serve several levels. Here each level h has its
    own two-layer MLP ``m_h(z) = gate(W2_h relu(W1_h x + b1_h) + b2_h)`` with x = z / |z|
    (``normalize_input``); all levels run in one batched ``einsum``. The choices below are
    ours (the paper's public text does not give them); see ``docs/METHOD.md``.

    - ``gate="sigmoid"``: elementwise gates in (0, 1).
    - ``gate="softmax"``: ``D * softmax`` over the dimensions, so each mask has mean 1.

    Initialisation: the output layer has tiny weights (``init_std``) and zero bias, so every
    mask starts near a constant (0.5 for sigmoid, 1 for softmax). The masked loss normalises
    ``z * m_h``, which a constant mask leaves unchanged: training starts as plain HMLC.

    ``nested=True`` is the soft form of G-HMLC's nested masks: the finest level's mask is 1
    everywhere (it sees every dimension, as in plain HMLC), and a coarser level's mask is
    the running maximum of the gates from the coarsest level down to it, so that
    ``m_0 <= m_1 <= ... <= m_{L-1} = 1``: a coarser level sees a soft subset of what a finer
    one sees. Only the L - 1 coarser levels have an MLP.

    Gradients flow through the masks into the head and into ``z``.
    :meth:`regularization` returns ``separation_weight`` times the mean pairwise cosine
    similarity between the levels' batch-mean masks (0 by default, and 0 for one level).

    - [0] Ott et al., 2025, https://arxiv.org/abs/2510.00837

    Examples:
        >>> torch.manual_seed(0)  # doctest: +ELLIPSIS
        <torch._C.Generator object at ...>
        >>> head = AttentionMaskHead(num_levels=3, dim=16, gate="softmax")
        >>> masks = head(torch.randn(4, 16))
        >>> masks.shape
        torch.Size([4, 3, 16])
        >>> torch.allclose(masks.mean(-1), torch.ones(4, 3))
        True
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
        """Builds the per-level attention MLPs.

        Args:
            num_levels: Number of hierarchy levels L.
            dim: Embedding width D.
            hidden_dim: Hidden width of each level's MLP (default ``max(8, dim // 4)``).
            gate: ``"sigmoid"`` (gates in (0, 1)) or ``"softmax"`` (D * softmax over the
                dimensions, mean 1).
            temperature: The gate logits are divided by it (> 0); lower is sharper.
            separation_weight: Weight (>= 0) of the regulariser that pushes the levels'
                masks apart; 0 disables it.
            normalize_input: Feed z / |z| to the MLPs, so the masks ignore the scale of z.
            init_std: Standard deviation (>= 0) of the output-layer weights at init; 0 makes
                all masks exactly constant at the start (levels then differ only through the
                loss gradients).
            nested: The finest level sees every dimension (mask 1) and each coarser level
                a soft subset of the next finer one's (running maximum of the gates,
                coarse to fine). Needs at least 2 levels.

        Raises:
            ValueError: If an argument is out of range.
        """
        super().__init__(num_levels=num_levels, dim=dim)
        if hidden_dim is None:
            hidden_dim = max(8, dim // 4)
        check_int("hidden_dim", hidden_dim)
        check_gate(gate)
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
        # Nested: the finest level's mask is fixed at 1, so it gets no MLP (an unused
        # parameter would also stall DistributedDataParallel).
        L, D, H = num_levels - int(nested), dim, hidden_dim
        self.weight1 = nn.Parameter(torch.empty(L, D, H))
        self.bias1 = nn.Parameter(torch.empty(L, H))
        self.weight2 = nn.Parameter(torch.empty(L, H, D))
        self.bias2 = nn.Parameter(torch.empty(L, D))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """First layer as ``nn.Linear``; output layer near zero, so masks start constant."""
        bound = 1.0 / math.sqrt(self.dim)
        nn.init.uniform_(self.weight1, -bound, bound)
        nn.init.uniform_(self.bias1, -bound, bound)
        nn.init.normal_(self.weight2, std=self.init_std)
        nn.init.zeros_(self.bias2)

    def forward(self, z: Tensor, labels: Tensor | None = None) -> Tensor:
        """Computes one soft mask per level and sample.

        Args:
            z: Projections of shape [B, D].
            labels: Ignored (validated if given); the masks depend on z only.

        Returns:
            Masks of shape [B, L, D], coarse -> fine.
        """
        self.check_inputs(z, labels)
        x = F.normalize(z, dim=1) if self.normalize_input else z
        x = x.to(self.weight1.dtype)  # autocast, if on, still picks the matmul precision
        hidden = torch.relu(torch.einsum("bd,ldh->blh", x, self.weight1) + self.bias1)
        logits = torch.einsum("blh,lhd->bld", hidden, self.weight2) + self.bias2
        masks = apply_gate(logits, self.gate, self.temperature)
        if not self.nested:
            return masks
        finest = masks.new_ones(masks.shape[0], 1, self.dim)
        return torch.cat([masks.cummax(dim=1).values, finest], dim=1)

    def regularization(self, masks: Tensor) -> Tensor:
        """``separation_weight`` times the mean pairwise cosine similarity of level masks.

        Args:
            masks: Output of :meth:`forward`, shape [B, L, D] (or [1, L, D]).

        Returns:
            A 0-dim tensor; zero when ``separation_weight`` is 0 or L is 1.
        """
        return mask_separation(masks, self.separation_weight, self.num_levels, self.dim)

    def extra_repr(self) -> str:
        return (
            f"{super().extra_repr()}, hidden_dim={self.hidden_dim}, "
            f"gate={self.gate!r}, temperature={self.temperature}, "
            f"separation_weight={self.separation_weight}, nested={self.nested}"
        )


def mask_separation(masks: Tensor, weight: float, num_levels: int, dim: int) -> Tensor:
    """``weight`` times the mean pairwise cosine similarity of the levels' batch-mean masks.

    The regulariser shared by the learned mask heads: it pushes the levels towards
    different dimensions (Ott et al., https://arxiv.org/abs/2510.00837, want each level's
    own features; the term is ours).

    Args:
        masks: Masks of shape [B, L, D] or [1, L, D].
        weight: Weight of the term (0 disables it).
        num_levels: L, checked against ``masks``.
        dim: D, checked against ``masks``.

    Returns:
        A 0-dim tensor; zero when ``weight`` is 0 or L is 1.

    Examples:
        >>> masks = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])  # disjoint levels
        >>> mask_separation(masks, 0.5, 2, 2)
        tensor(0.)
        >>> mask_separation(torch.ones(1, 2, 2), 0.5, 2, 2)  # identical levels
        tensor(0.5000)
    """
    if masks.ndim != 3 or masks.shape[1:] != (num_levels, dim):
        raise ValueError(
            f"masks must have shape [B, {num_levels}, {dim}], got {tuple(masks.shape)}; "
            f"pass what forward() returned."
        )
    if weight == 0 or num_levels == 1:
        return masks.new_zeros(())
    unit = F.normalize(masks.mean(0), dim=-1)  # [L, D]
    similarity = unit @ unit.T
    rows, cols = torch.triu_indices(num_levels, num_levels, 1, device=masks.device)
    return weight * similarity[rows, cols].mean()
