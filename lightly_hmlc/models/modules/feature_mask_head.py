"""The contract shared by all feature-mask heads (G-HMLC, A-HMLC and any third one)."""

from __future__ import annotations

from torch import Tensor, nn

from lightly_hmlc.label_paths import check_label_paths
from lightly_hmlc.models.modules._arguments import check_int


class FeatureMaskHead(nn.Module):
    """Base class of the heads that map projections to one feature mask per hierarchy level.

    Ott et al. [0] weight the embedding with a mask M_h before the level-h term of HMLC.
    A head is called once per step on both views and its masks go to the loss::

        masks = head(torch.cat([z0, z1]), labels.repeat(2, 1))
        loss = HMLCLoss()(z0, z1, labels, masks=masks) + head.regularization(masks)

    A new head implements :meth:`forward`, and optionally :meth:`regularization`.

    - [0] Ott et al., 2025, https://arxiv.org/abs/2510.00837

    Examples:
        >>> import torch
        >>> class AllOnes(FeatureMaskHead):
        ...     def forward(self, z, labels=None):
        ...         return z.new_ones(1, self.num_levels, self.dim)
        >>> AllOnes(num_levels=2, dim=4)(torch.randn(3, 4)).shape
        torch.Size([1, 2, 4])
    """

    num_levels: int
    dim: int

    def __init__(self, num_levels: int, dim: int) -> None:
        super().__init__()
        check_int("num_levels", num_levels, meaning="the depth of the label paths")
        check_int("dim", dim, meaning="the width of the projections z")
        self.num_levels = num_levels
        self.dim = dim

    def forward(self, z: Tensor, labels: Tensor | None = None) -> Tensor:
        """Float masks [B, L, D] or [1, L, D] (shared), coarse to fine, of projections ``z``
        [B, D] and label paths [B, L] or None.
        """
        raise NotImplementedError(f"{type(self).__name__} must implement forward().")

    def regularization(self, masks: Tensor) -> Tensor:
        """A 0-dim loss term from the masks (zero by default)."""
        return masks.new_zeros(())

    def extra_repr(self) -> str:
        return f"num_levels={self.num_levels}, dim={self.dim}"

    def check_inputs(self, z: Tensor, labels: Tensor | None = None) -> None:
        """Raises a ValueError unless ``z`` is [B, D] floating and ``labels`` [B, L] or None
        (shapes and dtypes only: no device sync).
        """
        if not isinstance(z, Tensor):
            raise ValueError(f"z must be a torch.Tensor of shape [B, {self.dim}], got {type(z)}.")
        if z.ndim != 2 or z.shape[1] != self.dim:
            raise ValueError(
                f"z must have shape [B, D] with D={self.dim} (the head's dim), got "
                f"{tuple(z.shape)}. Flatten the projections or build the head with the "
                f"projection width."
            )
        if not z.is_floating_point():
            raise ValueError(f"z must be a floating point tensor, got dtype {z.dtype}.")
        if labels is not None:
            check_label_paths(
                labels,
                num_levels=self.num_levels,
                batch_size=z.shape[0],
                configured_by="the head",
                row_hint="z and labels need the same batch size (with two views, pass "
                "labels.repeat(2, 1)).",
            )
