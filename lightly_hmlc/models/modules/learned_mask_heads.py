"""Two more learned feature-mask heads: per-level query attention, and static masks.

Both follow the mask-head contract of :class:`FeatureMaskHead`
(``forward(z, labels=None) -> [B | 1, L, D]``, ``regularization(masks)``), so any masked
HMLC loss (Ott et al., https://arxiv.org/abs/2510.00837) takes them unchanged.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightly_hmlc.models.modules._arguments import apply_gate, check_gate, check_int, check_positive
from lightly_hmlc.models.modules.attention_mask_head import mask_separation
from lightly_hmlc.models.modules.feature_mask_head import FeatureMaskHead

__all__ = ["QueryAttentionMaskHead", "StaticMaskHead"]

StaticGate = Literal["sigmoid", "softmax"]


class QueryAttentionMaskHead(FeatureMaskHead):
    """Soft masks as attention of per-level learned queries over the feature dimensions.

    An attention reading of A-HMLC (Ott et al. [0]): the D dimensions of a projection are
    D tokens, and each hierarchy level h owns a learned query that attends over them.
    Token d carries its value and its identity,
    ``t_d = gelu(x_d * u_d + p_d)`` with learned value and dimension embeddings
    ``u, p`` of shape [D, E] and x = z / |z| (``normalize_input``); its key is
    ``k_d = W_k t_d``. Level h's mask is the attention distribution over the dimensions,
    scaled to mean 1 (the masked loss normalises ``z * m_h``, so only relative weights
    matter)::

        m_h = D * softmax_d(q_h . k_d / (sqrt(E) * temperature))

    The queries start at zero, so every mask starts exactly at 1 (plain HMLC [1]) and
    the levels separate through their loss gradients. The masks depend on z only (labels
    are validated and ignored) and are differentiable. :meth:`regularization` is the
    weighted mean pairwise cosine similarity of the levels' batch-mean masks (off by
    default), as in :class:`AttentionMaskHead`. Cost per sample: O(D * E * (E + L)).

    - [0] Ott et al., 2025, https://arxiv.org/abs/2510.00837
    - [1] Zhang et al., Use All The Labels, CVPR 2022, https://arxiv.org/abs/2204.13207

    Examples:
        >>> head = QueryAttentionMaskHead(num_levels=3, dim=16, embed_dim=8)
        >>> masks = head(torch.randn(4, 16))
        >>> masks.shape
        torch.Size([4, 3, 16])
        >>> torch.allclose(masks, torch.ones(4, 3, 16))  # zero queries: plain HMLC at init
        True
    """

    def __init__(
        self,
        num_levels: int,
        dim: int,
        embed_dim: int = 16,
        *,
        temperature: float = 1.0,
        separation_weight: float = 0.0,
        normalize_input: bool = True,
        query_init_std: float = 0.0,
    ) -> None:
        """Builds the dimension tokens, the key projection and the level queries.

        Args:
            num_levels: Number of hierarchy levels L.
            dim: Embedding width D (the number of tokens).
            embed_dim: Token width E (>= 1).
            temperature: The attention logits are divided by it (> 0); lower is sharper.
            separation_weight: Weight (>= 0) of the regulariser that pushes the levels'
                masks apart; 0 disables it.
            normalize_input: Build the tokens from z / |z|, so the masks ignore the scale.
            query_init_std: Standard deviation (>= 0) of the initial queries; 0 (default)
                makes every mask exactly 1 at the start.

        Raises:
            ValueError: If an argument is out of range.
        """
        super().__init__(num_levels=num_levels, dim=dim)
        check_int("embed_dim", embed_dim, meaning="token width")
        check_positive("temperature", temperature)
        check_positive("separation_weight", separation_weight, allow_zero=True)
        check_positive("query_init_std", query_init_std, allow_zero=True)
        self.embed_dim = embed_dim
        self.temperature = temperature
        self.separation_weight = separation_weight
        self.normalize_input = normalize_input
        self.query_init_std = query_init_std
        self.value_embedding = nn.Parameter(torch.empty(dim, embed_dim))
        self.dim_embedding = nn.Parameter(torch.empty(dim, embed_dim))
        self.key = nn.Linear(embed_dim, embed_dim, bias=False)
        self.queries = nn.Parameter(torch.empty(num_levels, embed_dim))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Unit-scale embeddings, ``nn.Linear`` keys, queries ``N(0, query_init_std^2)``."""
        # x_d of a unit vector is about 1 / sqrt(D): scale u so that x_d * u_d is O(1).
        nn.init.normal_(self.value_embedding, std=math.sqrt(self.dim))
        nn.init.normal_(self.dim_embedding)
        self.key.reset_parameters()
        nn.init.normal_(self.queries, std=self.query_init_std)

    def forward(self, z: Tensor, labels: Tensor | None = None) -> Tensor:
        """One attention distribution over the dimensions per level and sample.

        Args:
            z: Projections of shape [B, D].
            labels: Ignored (validated if given).

        Returns:
            Masks of shape [B, L, D] with mean 1 over D, coarse -> fine.
        """
        self.check_inputs(z, labels)
        x = F.normalize(z, dim=1) if self.normalize_input else z
        x = x.to(self.queries.dtype)
        tokens = F.gelu(x[..., None] * self.value_embedding + self.dim_embedding)  # [B, D, E]
        keys = self.key(tokens)
        logits = torch.einsum("bde,le->bld", keys, self.queries)
        logits = logits / (math.sqrt(self.embed_dim) * self.temperature)
        return self.dim * torch.softmax(logits, dim=-1)

    def regularization(self, masks: Tensor) -> Tensor:
        """``separation_weight`` times the mean pairwise cosine similarity of level masks."""
        return mask_separation(masks, self.separation_weight, self.num_levels, self.dim)

    def extra_repr(self) -> str:
        return (
            f"{super().extra_repr()}, embed_dim={self.embed_dim}, "
            f"temperature={self.temperature}, separation_weight={self.separation_weight}"
        )


class StaticMaskHead(FeatureMaskHead):
    """Learned per-level masks shared by all samples: a conditional-similarity baseline.

    Veit et al. [0] learn one fixed mask per notion of similarity over a shared embedding
    (Conditional Similarity Networks, CVPR 2017). Here each hierarchy level h has learned
    logits ``w_h`` of shape [D], and its mask ``m_h`` does not depend on the input: a
    baseline that tells how much of A-HMLC's gain (Ott et al. [1]) needs per-sample masks.

    - ``gate="sigmoid"``: ``m_h = sigmoid(w_h / temperature)``, elementwise in (0, 1).
    - ``gate="softmax"``: ``m_h = D * softmax(w_h / temperature)``, mean 1.

    The logits start at zero, so every mask starts constant (0.5 or 1): plain HMLC, since
    the loss normalises ``z * m_h``. Veit et al. also penalise the mask norm; with
    ``gate="sigmoid"`` the optional ``l1_weight`` adds ``l1_weight * mean(m)`` to push
    masks towards few dimensions (0 by default), next to the same separation term as the
    other learned heads.

    - [0] Veit, Belongie, Karaletsos, Conditional Similarity Networks, CVPR 2017,
      https://arxiv.org/abs/1603.07810
    - [1] Ott et al., 2025, https://arxiv.org/abs/2510.00837

    Examples:
        >>> head = StaticMaskHead(num_levels=2, dim=8, gate="softmax")
        >>> masks = head(torch.randn(5, 8))
        >>> masks.shape, bool((masks == 1).all())
        (torch.Size([1, 2, 8]), True)
    """

    def __init__(
        self,
        num_levels: int,
        dim: int,
        *,
        gate: StaticGate = "sigmoid",
        temperature: float = 1.0,
        separation_weight: float = 0.0,
        l1_weight: float = 0.0,
    ) -> None:
        """Builds the [L, D] mask logits, all zero.

        Args:
            num_levels: Number of hierarchy levels L.
            dim: Embedding width D.
            gate: ``"sigmoid"`` (gates in (0, 1)) or ``"softmax"`` (D * softmax, mean 1).
            temperature: The logits are divided by it (> 0).
            separation_weight: Weight (>= 0) of the level-separation regulariser.
            l1_weight: Weight (>= 0) of the mean-mask penalty; only with ``"sigmoid"``
                (softmax masks have mean 1 by construction).

        Raises:
            ValueError: If an argument is out of range.
        """
        super().__init__(num_levels=num_levels, dim=dim)
        check_gate(gate)
        check_positive("temperature", temperature)
        check_positive("separation_weight", separation_weight, allow_zero=True)
        check_positive("l1_weight", l1_weight, allow_zero=True)
        if l1_weight > 0 and gate == "softmax":
            raise ValueError(
                "l1_weight needs gate='sigmoid': softmax masks have mean 1 by construction, "
                "so the penalty would be a constant."
            )
        self.gate = gate
        self.temperature = temperature
        self.separation_weight = separation_weight
        self.l1_weight = l1_weight
        self.logits = nn.Parameter(torch.zeros(num_levels, dim))

    def forward(self, z: Tensor, labels: Tensor | None = None) -> Tensor:
        """Returns the learned masks; z and labels are only validated.

        Args:
            z: Projections of shape [B, D].
            labels: Ignored (validated if given).

        Returns:
            Masks of shape [1, L, D] (shared by all samples), coarse -> fine.
        """
        self.check_inputs(z, labels)
        return apply_gate(self.logits, self.gate, self.temperature).unsqueeze(0)

    def regularization(self, masks: Tensor) -> Tensor:
        """Separation term plus ``l1_weight * mean(masks)``."""
        term = mask_separation(masks, self.separation_weight, self.num_levels, self.dim)
        if self.l1_weight > 0:
            term = term + self.l1_weight * masks.mean()
        return term

    def extra_repr(self) -> str:
        return (
            f"{super().extra_repr()}, gate={self.gate!r}, "
            f"temperature={self.temperature}, separation_weight={self.separation_weight}, "
            f"l1_weight={self.l1_weight}"
        )
