"""G-HMLC and A-HMLC: HMLC level terms computed on per-level feature masks."""

from __future__ import annotations

from typing import Any

import torch.nn.functional as F
from torch import Tensor, nn

from lightly_hmlc.loss._levels import LayerPenalty
from lightly_hmlc.loss.hmlc import HMLCLoss


class MaskedHMLCLoss(HMLCLoss):
    """HMLC with a feature-mask head in front of the level terms (Ott et al. [0]).

    The head maps the normalised projections ``z`` of both views (and, while training,
    their label paths) to per-level masks ``m_h``. Level ``h``'s supervised contrastive
    term is computed on ``normalize(z * m_h)``; the terms are aggregated exactly as in
    :class:`HMLCLoss` (``hmc``, ``hce`` or ``hmce``), and the head's regularisation term
    is added. With all-ones masks the loss equals :class:`HMLCLoss`. Gradients flow
    through soft masks; hard masks pass none. Any ``nn.Module`` following the mask-head
    contract works (``forward(z, labels) -> [B | 1, L, D]`` and
    ``regularization(masks) -> scalar``), so a new head needs no change here.

    The head is a submodule: a trainable head (A-HMLC) must be in the optimizer, e.g.
    keep the loss as an attribute of the LightningModule or pass
    ``loss_fn.parameters()`` to the optimizer.

    - [0] Feature Identification for Hierarchical Contrastive Learning, Ott et al.,
      arXiv 2510.00837

    Args:
        mask_head: The module that produces the per-level masks.
        loss_type, temperature, layer_penalty, num_levels, normalize_weights,
        gather_distributed: As in :class:`HMLCLoss`.

    Examples:
        >>> import torch
        >>> class OnesHead(nn.Module):
        ...     def forward(self, z, labels=None):
        ...         return torch.ones(1, 2, z.shape[1])
        ...     def regularization(self, masks):
        ...         return masks.new_zeros(())
        >>> loss_fn = MaskedHMLCLoss(OnesHead(), loss_type="hmce")
        >>> out0, out1 = torch.randn(4, 8), torch.randn(4, 8)
        >>> labels = torch.tensor([[0, 0], [0, 1], [1, 2], [1, 2]])
        >>> torch.allclose(loss_fn(out0, out1, labels), HMLCLoss("hmce")(out0, out1, labels))
        True
    """

    def __init__(
        self,
        mask_head: nn.Module,
        loss_type: str = "hmce",
        temperature: float = 0.1,
        layer_penalty: str | LayerPenalty = "exp",
        num_levels: int | None = None,
        normalize_weights: bool = True,
        gather_distributed: bool = False,
    ) -> None:
        super().__init__(
            loss_type=loss_type,
            temperature=temperature,
            layer_penalty=layer_penalty,
            num_levels=num_levels,
            normalize_weights=normalize_weights,
            gather_distributed=gather_distributed,
        )
        if not isinstance(mask_head, nn.Module):
            raise ValueError(
                f"mask_head must be an nn.Module, got {type(mask_head).__name__}: see "
                "lightly_hmlc.models.modules.FeatureMaskHead for the contract."
            )
        self.mask_head = mask_head
        self.last_masks: Tensor | None = None

    def _level_features(self, features: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
        masks = self.mask_head(features, labels)
        expected = (labels.shape[1], features.shape[1])
        if (
            masks.dim() != 3
            or tuple(masks.shape[1:]) != expected
            or masks.shape[0]
            not in (
                1,
                features.shape[0],
            )
        ):
            raise ValueError(
                f"The mask head returned masks of shape {tuple(masks.shape)}; expected "
                f"[{features.shape[0]} or 1, {expected[0]}, {expected[1]}] (batch, levels, "
                "dim). Check the head's num_levels and dim against the labels and "
                "the projection width."
            )
        self.last_masks = masks.detach()
        level_features = F.normalize(features.unsqueeze(1) * masks.to(features.dtype), dim=2)
        regularize = getattr(self.mask_head, "regularization", None)
        regularization = regularize(masks) if callable(regularize) else masks.new_zeros(())
        return level_features, regularization


class _HeadBuildingLoss(MaskedHMLCLoss):
    """A masked loss that builds its own head from ``num_levels``, ``dim`` and options."""

    def __init__(
        self,
        num_levels: int,
        dim: int,
        loss_type: str = "hmce",
        temperature: float = 0.1,
        layer_penalty: str | LayerPenalty = "exp",
        normalize_weights: bool = True,
        gather_distributed: bool = False,
        **head_kwargs: Any,
    ) -> None:
        super().__init__(
            self._build_head(num_levels=num_levels, dim=dim, **head_kwargs),
            loss_type=loss_type,
            temperature=temperature,
            layer_penalty=layer_penalty,
            num_levels=num_levels,
            normalize_weights=normalize_weights,
            gather_distributed=gather_distributed,
        )

    @staticmethod
    def _build_head(num_levels: int, dim: int, **head_kwargs: Any) -> nn.Module:
        raise NotImplementedError


class GHMLCLoss(_HeadBuildingLoss):
    """G-HMLC: HMLC on hard per-level masks picked by a Gaussian mixture (Ott et al.).

    Builds a :class:`~lightly_hmlc.models.modules.GMMFeatureMaskHead` and composes it
    with the HMLC level terms; see :class:`MaskedHMLCLoss`.

    Args:
        num_levels: L, the depth of the label paths.
        dim: D, the width of the projections.
        loss_type, temperature, layer_penalty, normalize_weights, gather_distributed:
            As in :class:`HMLCLoss`.
        **head_kwargs: Passed to ``GMMFeatureMaskHead`` (e.g. ``refit_every``).

    Examples:
        >>> import torch
        >>> loss_fn = GHMLCLoss(num_levels=2, dim=8)
        >>> labels = torch.tensor([[0, 0], [0, 1], [1, 2], [1, 2]])
        >>> loss = loss_fn(torch.randn(4, 8), torch.randn(4, 8), labels)
        >>> loss_fn.mask_head.masks.shape
        torch.Size([2, 8])
    """

    @staticmethod
    def _build_head(num_levels: int, dim: int, **head_kwargs: Any) -> nn.Module:
        from lightly_hmlc.models.modules.gmm_mask_head import GMMFeatureMaskHead

        return GMMFeatureMaskHead(num_levels=num_levels, dim=dim, **head_kwargs)


class AHMLCLoss(_HeadBuildingLoss):
    """A-HMLC: HMLC on soft per-level masks from attention heads (Ott et al.).

    Builds a :class:`~lightly_hmlc.models.modules.AttentionMaskHead` and composes it
    with the HMLC level terms; see :class:`MaskedHMLCLoss`. The head is trained jointly:
    include the loss's parameters in the optimizer.

    Args:
        num_levels: L, the depth of the label paths.
        dim: D, the width of the projections.
        loss_type, temperature, layer_penalty, normalize_weights, gather_distributed:
            As in :class:`HMLCLoss`.
        **head_kwargs: Passed to ``AttentionMaskHead`` (e.g. ``gate="softmax"``).

    Examples:
        >>> import torch
        >>> loss_fn = AHMLCLoss(num_levels=2, dim=8)
        >>> labels = torch.tensor([[0, 0], [0, 1], [1, 2], [1, 2]])
        >>> loss = loss_fn(torch.randn(4, 8), torch.randn(4, 8), labels)
        >>> loss.backward()
        >>> any(p.grad is not None for p in loss_fn.parameters())
        True
    """

    @staticmethod
    def _build_head(num_levels: int, dim: int, **head_kwargs: Any) -> nn.Module:
        from lightly_hmlc.models.modules.attention_mask_head import AttentionMaskHead

        return AttentionMaskHead(num_levels=num_levels, dim=dim, **head_kwargs)
